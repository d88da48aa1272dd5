// Embedding: out[i, :] = table[ids[i], :].
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
  detail::check(w.defined() && w.ndim() == 2, kOp, detail::desc("weight", w) + ", expected [V, C]");
  detail::check(ids.defined() && ids.dtype() == DType::I32, kOp,
                detail::desc("ids", ids) + ", expected I32[...]");
  const int64_t n = ids.numel(), vocab = w.dim(0), c = w.dim(1);
  Shape out_shape = ids.shape();
  out_shape.push_back(c);
  Tensor out = ctx.alloc(out_shape);
  Tensor out2 = out.view({n, c});
  if (w.dtype() == DType::F32) {
    kernels::embedding_forward(w, ids, out2);
  } else {
    // Frozen F16/BF16 table: convert only the rows we gather.
    detail::check(w.dtype() == DType::F16 || w.dtype() == DType::BF16, kOp,
                  std::string("weight dtype ") + tensor::dtype_name(w.dtype()) +
                      " is not supported (F32, F16, BF16)");
    const int32_t* id = ids.i32();
    for (int64_t i = 0; i < n; ++i) {
      detail::check(id[i] >= 0 && id[i] < vocab, kOp,
                    "id " + std::to_string(id[i]) + " at " + std::to_string(i) +
                        " is out of range [0, " + std::to_string(vocab) + ")");
      const uint16_t* src = w.u16() + static_cast<int64_t>(id[i]) * c;
      float* dst = out2.f32() + i * c;
      if (w.dtype() == DType::F16)
        tensor::f16_to_f32_n(src, dst, c);
      else
        tensor::bf16_to_f32_n(src, dst, c);
    }
  }
  ids_ = ids;
  return out;
}

void Embedding::backward(Context& ctx, const Tensor& dy) {
  detail::check(ids_.defined(), kOp, "backward called before forward");
  const int64_t c = weight.value.dim(1);
  Shape want = ids_.shape();
  want.push_back(c);
  detail::check(dy.defined() && dy.dtype() == DType::F32 && dy.shape() == want, kOp,
                detail::desc("dy", dy) + ", expected F32" + tensor::shape_str(want));
  // forward was: out[i, :] = table[ids[i], :]  ->  dtable[ids[i], :] += dout[i, :]
  if (weight.trainable) kernels::embedding_backward(dy.view({ids_.numel(), c}), ids_, weight.grad);
}

}  // namespace lorafit::nn
