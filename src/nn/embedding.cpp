// Embedding: out[i, :] = table[ids[i], :].
#include "lorafit/quant.h"
#include "nn/nn_internal.h"

namespace lorafit::nn {

namespace {
constexpr const char* kOp = "Embedding";
}

Embedding::Embedding(int64_t vocab, int64_t dim) {
  lorafit::check(vocab > 0 && dim > 0, kOp,
                 "vocab and dim must be positive, got " + std::to_string(vocab) + " and " +
                     std::to_string(dim));
  weight.value = Tensor::zeros({vocab, dim});
}

void Embedding::parameters(const std::string& prefix, NamedParameters& out) {
  out.emplace_back(prefix + "weight", &weight);
}

Tensor Embedding::forward(Context& ctx, const Tensor& ids) {
  const Tensor& w = weight.value;
  NN_CHECK(w.defined() && w.ndim() == 2, kOp, detail::desc("weight", w) + ", expected [V, C]");
  NN_CHECK(ids.defined() && ids.dtype() == DType::I32, kOp,
           detail::desc("ids", ids) + ", expected I32[...]");
  const int64_t n = ids.numel(), vocab = w.dim(0), c = w.dim(1);
  Shape out_shape = ids.shape();
  out_shape.push_back(c);
  Tensor out = ctx.alloc(out_shape);
  Tensor out2 = out.view({n, c});
  if (w.dtype() == DType::F32) {
    kernels::embedding_forward(w, ids, out2);
  } else {
    // Frozen F16/BF16/quantized table: convert only the rows we gather.
    const DType t = w.dtype();
    NN_CHECK(t == DType::F16 || t == DType::BF16 || t == DType::Q8_0 || t == DType::Q4_0 ||
                 t == DType::Q4_1 || t == DType::Q4_K || t == DType::Q5_K || t == DType::Q6_K,
             kOp,
             std::string("weight dtype ") + tensor::dtype_name(t) +
                 " is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K)");
    const auto* base = static_cast<const uint8_t*>(w.raw());
    const size_t row_bytes = tensor::dtype_nbytes(t, c);
    const int32_t* id = ids.i32();
    for (int64_t i = 0; i < n; ++i) {
      NN_CHECK(id[i] >= 0 && id[i] < vocab, kOp,
               "id " + std::to_string(id[i]) + " at " + std::to_string(i) +
                   " is out of range [0, " + std::to_string(vocab) + ")");
      tensor::dequantize_row(t, base + static_cast<size_t>(id[i]) * row_bytes, out2.f32() + i * c,
                             c);
    }
  }
  ids_ = ids;
  return out;
}

void Embedding::backward(Context& ctx, const Tensor& dy) {
  NN_CHECK(ids_.defined(), kOp, "backward called before forward");
  const int64_t c = weight.value.dim(1);
  Shape want = ids_.shape();
  want.push_back(c);
  NN_CHECK(dy.defined() && dy.dtype() == DType::F32 && dy.shape() == want, kOp,
           detail::desc("dy", dy) + ", expected F32" + tensor::shape_str(want));
  // forward was: out[i, :] = table[ids[i], :]  ->  dtable[ids[i], :] += dout[i, :]
  if (weight.trainable) kernels::embedding_backward(dy.view({ids_.numel(), c}), ids_, weight.grad);
}

}  // namespace lorafit::nn
