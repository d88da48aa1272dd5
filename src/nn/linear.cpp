// Linear: y = x Wᵀ + b, W [out, in] in F32, or (frozen) F16/BF16/Q8_0/Q4_0/Q4_1/Q4_K/Q5_K/Q6_K/NF4 multiplied
// through fp32 tiles of rows (DESIGN.md decision 2: no full dequantized copy is kept); under
// --compute-dtype bf16 a frozen dense weight has one BF16 copy, a quantized one BF16 tiles.
#include <algorithm>
#include <atomic>
#include <mutex>
#include <vector>

#include "lorafit/quant.h"
#include "nn/nn_internal.h"

namespace lorafit::nn {

namespace {

constexpr const char* kOp = "Linear";

// Rows [r0, r1) of w [out, in] (F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K or NF4) as fp32
// into dst [r1 - r0, in].
// Block types store whole blocks per row, so row r starts at byte r · nbytes(in).
void weight_rows_to_f32(const Tensor& w, int64_t r0, int64_t r1, float* dst) {
  const int64_t in = w.dim(1);
  if (w.dtype() == DType::NF4) {  // bitsandbytes 4-bit: the statistics live beside the codes
    tensor::dequantize_4bit_tensor(w, r0 * in, (r1 - r0) * in, dst);
    return;
  }
  const auto* base = static_cast<const uint8_t*>(w.raw());
  tensor::dequantize_row(w.dtype(),
                         base + static_cast<size_t>(r0) * tensor::dtype_nbytes(w.dtype(), in), dst,
                         (r1 - r0) * in);
}

bool weight_dtype_supported(DType t) {
  return t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::Q8_0 ||
         t == DType::Q4_0 || t == DType::Q4_1 || t == DType::Q4_K || t == DType::Q5_K ||
         t == DType::Q6_K || t == DType::NF4;
}

// Rows of W per fp32 tile: about 16 MiB of tile. Each tile is one GEMM that packs x again, so
// small tiles (the first choice was 256 KiB, to stay in L2) made SmolLM2's lm_head 435 small GEMMs
// that spent 12% of the step packing x and kept a second core mostly idle; 16 MiB tiles gave
// +16% on one thread and 1.8x instead of 1.2x on two (docs/BENCHMARKS.md).
int64_t tile_rows(int64_t in, int64_t out) {
  return std::clamp<int64_t>((4 * 1024 * 1024) / std::max<int64_t>(in, 1), 1, out);
}

// The fp32 tile, kept per thread between calls: a fresh std::vector per product would zero up to
// 16 MiB (and map fresh pages) on every forward and backward of every quantized Linear.
float* tile_buffer(int64_t floats) {
  thread_local std::vector<float> buf;
  if (buf.size() < static_cast<size_t>(floats)) buf.resize(static_cast<size_t>(floats));
  return buf.data();
}

// The BF16 tile of a quantized weight under --compute-dtype bf16, kept per thread like the fp32
// one (the codes are dequantized to fp32 rows, then rounded to BF16).
uint16_t* bf16_tile_buffer(int64_t n) {
  thread_local std::vector<uint16_t> buf;
  if (buf.size() < static_cast<size_t>(n)) buf.resize(static_cast<size_t>(n));
  return buf.data();
}

// Bumped by weights_changed(): every BF16 copy made under an older generation is stale.
std::atomic<uint64_t> g_weight_generation{0};

}  // namespace

void weights_changed() { g_weight_generation.fetch_add(1, std::memory_order_relaxed); }
uint64_t weight_generation() { return g_weight_generation.load(std::memory_order_relaxed); }

struct Linear::Bf16Copy {
  std::mutex mu;
  const void* src = nullptr;  // the weight storage it was made from
  uint64_t generation = 0;
  std::vector<uint16_t> w;  // [out, in]
};

bool Linear::uses_bf16() const {
  const DType t = weight.value.dtype();
  return kernels::compute_dtype() == kernels::ComputeDtype::BF16 && !weight.trainable &&
         (t == DType::F32 || t == DType::F16 || t == DType::BF16);
}

bool Linear::uses_bf16_tiles() const {
  const DType t = weight.value.dtype();
  return kernels::compute_dtype() == kernels::ComputeDtype::BF16 && !weight.trainable &&
         tensor::dtype_is_quantized(t) && weight_dtype_supported(t);
}

const uint16_t* Linear::bf16_weight() const {
  const Tensor& w = weight.value;
  if (w.dtype() == DType::BF16) return static_cast<const uint16_t*>(w.raw());
  if (!bf16_) bf16_ = std::make_shared<Bf16Copy>();
  Bf16Copy& c = *bf16_;
  std::lock_guard<std::mutex> lock(c.mu);
  const uint64_t gen = g_weight_generation.load(std::memory_order_relaxed);
  const size_t n = static_cast<size_t>(out_ * in_);
  if (c.src != w.raw() || c.generation != gen || c.w.size() != n) {
    c.w.resize(n);
    if (w.dtype() == DType::F32) {
      kernels::f32_to_bf16(w.f32(), c.w.data(), out_ * in_);
    } else {  // F16: through fp32 tiles of rows
      const int64_t tr = tile_rows(in_, out_);
      float* tile = tile_buffer(tr * in_);
      for (int64_t r0 = 0; r0 < out_; r0 += tr) {
        const int64_t r1 = std::min(out_, r0 + tr);
        weight_rows_to_f32(w, r0, r1, tile);
        kernels::f32_to_bf16(tile, c.w.data() + r0 * in_, (r1 - r0) * in_);
      }
    }
    c.src = w.raw();
    c.generation = gen;
  }
  return c.w.data();
}

Linear::Linear(int64_t in_features, int64_t out_features, bool has_bias)
    : in_(in_features), out_(out_features) {
  lorafit::check(in_features > 0 && out_features > 0, kOp,
                 "in_features and out_features must be positive, got " +
                     std::to_string(in_features) + " and " + std::to_string(out_features));
  weight.value = Tensor::zeros({out_features, in_features});
  if (has_bias) bias.value = Tensor::zeros({out_features});
}

void Linear::parameters(const std::string& prefix, NamedParameters& out) {
  out.emplace_back(prefix + "weight", &weight);
  if (has_bias()) out.emplace_back(prefix + "bias", &bias);
}

Tensor Linear::forward(Context& ctx, const Tensor& x) {
  const Tensor& w = weight.value;
  NN_CHECK(w.defined() && w.ndim() == 2 && w.dim(0) == out_ && w.dim(1) == in_, kOp,
           detail::desc("weight", w) + ", expected [" + std::to_string(out_) + ", " +
               std::to_string(in_) + "]");
  NN_CHECK(weight_dtype_supported(w.dtype()), kOp,
           std::string("weight dtype ") + tensor::dtype_name(w.dtype()) +
               " is not supported yet (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K, NF4)");
  NN_CHECK(x.defined() && x.dtype() == DType::F32 && x.ndim() >= 1 && x.dim(-1) == in_, kOp,
           detail::desc("x", x) + ", expected F32[..., " + std::to_string(in_) + "] for weight " +
               w.str());
  if (has_bias())
    NN_CHECK(
        bias.value.dtype() == DType::F32 && bias.value.ndim() == 1 && bias.value.dim(0) == out_,
        kOp, detail::desc("bias", bias.value) + ", expected F32[" + std::to_string(out_) + "]");
  const int64_t n = x.numel() / in_;
  Tensor y = ctx.alloc(detail::with_last(x.shape(), out_));
  Tensor x2 = x.view({n, in_});
  Tensor y2 = y.view({n, out_});
  if (n > 0) {
    matmul_weight(x2, y2);  // y [n, out] = x [n, in] · Wᵀ
    if (has_bias()) kernels::add_bias(y2, bias.value);
  }
  for (LinearAdapter* a : adapters)
    if (a->active()) a->forward(ctx, *this, x, y);  // y += the adapter's part
  x_ = x;
  return y;
}

Tensor Linear::backward(Context& ctx, const Tensor& dy, bool need_input_grad) {
  NN_CHECK(x_.defined(), kOp, "backward called before forward");
  NN_CHECK(
      dy.defined() && dy.dtype() == DType::F32 && dy.shape() == detail::with_last(x_.shape(), out_),
      kOp,
      detail::desc("dy", dy) + ", expected F32" +
          tensor::shape_str(detail::with_last(x_.shape(), out_)));
  const int64_t n = x_.numel() / in_;
  Tensor dy2 = dy.view({n, out_});
  // Active adapters, last to first, each with the gradient of its output: what reaches the ones
  // before it and x Wᵀ is its upstream_grad (dy itself, or DoRA's k ⊙ dy).
  std::vector<std::pair<LinearAdapter*, Tensor>> active;
  Tensor g = dy;
  for (auto it = adapters.rbegin(); it != adapters.rend(); ++it) {
    if (!(*it)->active()) continue;
    active.emplace_back(*it, g);
    g = (*it)->upstream_grad(ctx, g);
    NN_CHECK(g.shape() == dy.shape(), kOp, "an adapter's upstream gradient is " + g.str());
  }
  Tensor dyw = g.view({n, out_});
  // forward was: y = x Wᵀ + b (+ adapters)
  if (weight.trainable && n > 0)
    kernels::gemm(dyw, true, x_.view({n, in_}), false, weight.grad, 1.0f, 1.0f);  // dW += dywᵀ x
  if (has_bias() && bias.trainable && n > 0) kernels::bias_backward(dy2, bias.grad);  // db += Σ dy
  if (!need_input_grad) {
    for (auto& [a, ga] : active) a->backward(ctx, *this, ga, nullptr);
    return Tensor();
  }
  Tensor dx = ctx.alloc(x_.shape());
  Tensor dx2 = dx.view({n, in_});
  if (n == 0) return dx;
  matmul_weight_t(dyw, dx2);  // dx [n, in] = dyw [n, out] · W [out, in]
  for (auto& [a, ga] : active) a->backward(ctx, *this, ga, &dx);  // dx += adapter path
  return dx;
}

void Linear::matmul_weight(const Tensor& x, Tensor& y, float beta) const {
  const Tensor& w = weight.value;
  const int64_t n = x.numel() / in_;
  NN_CHECK(x.numel() == n * in_ && y.numel() == n * out_, kOp,
           "matmul_weight: " + detail::desc("x", x) + " and " + detail::desc("y", y) +
               " do not fit weight " + w.str());
  if (n == 0) return;
  Tensor x2 = x.view({n, in_});
  Tensor y2 = y.view({n, out_});
  if (uses_bf16()) {  // y = x · Wᵀ + beta · y in BF16, fp32 sums
    kernels::gemm_bf16_raw(true, n, out_, in_, x2.f32(), in_, bf16_weight(), in_, beta, y2.f32(),
                           out_);
    return;
  }
  if (w.dtype() == DType::F32) {
    kernels::gemm(x2, false, w, true, y2, 1.0f, beta);  // y = x · Wᵀ + beta · y
    return;
  }
  // y[:, r0:r1] = x · W[r0:r1]ᵀ, one fp32 (or BF16) tile of W at a time.
  const bool bf16 = uses_bf16_tiles();
  int64_t tr = tile_rows(in_, out_);
  float* tile = tile_buffer(tr * in_);
  uint16_t* btile = bf16 ? bf16_tile_buffer(tr * in_) : nullptr;
  for (int64_t r0 = 0; r0 < out_; r0 += tr) {
    int64_t r1 = std::min(out_, r0 + tr);
    weight_rows_to_f32(w, r0, r1, tile);
    if (bf16) {
      kernels::f32_to_bf16(tile, btile, (r1 - r0) * in_);
      kernels::gemm_bf16_raw(true, n, r1 - r0, in_, x2.f32(), in_, btile, in_, beta,
                             y2.f32() + r0, out_);
    } else {
      kernels::gemm_raw(false, true, n, r1 - r0, in_, 1.0f, x2.f32(), in_, tile, in_, beta,
                        y2.f32() + r0, out_);
    }
  }
}

void Linear::matmul_weight_t(const Tensor& dy, Tensor& dx, float beta) const {
  const Tensor& w = weight.value;
  const int64_t n = dy.numel() / out_;
  NN_CHECK(dy.numel() == n * out_ && dx.numel() == n * in_, kOp,
           "matmul_weight_t: " + detail::desc("dy", dy) + " and " + detail::desc("dx", dx) +
               " do not fit weight " + w.str());
  if (n == 0) return;
  Tensor dy2 = dy.view({n, out_});
  Tensor dx2 = dx.view({n, in_});
  if (uses_bf16()) {  // dx = dy · W + beta · dx in BF16, fp32 sums
    kernels::gemm_bf16_raw(false, n, in_, out_, dy2.f32(), out_, bf16_weight(), in_, beta,
                           dx2.f32(), in_);
    return;
  }
  if (w.dtype() == DType::F32) {
    kernels::gemm(dy2, false, w, false, dx2, 1.0f, beta);  // dx = dy · W + beta · dx
    return;
  }
  // dx = Σ_tiles dy[:, r0:r1] · W[r0:r1]
  const bool bf16 = uses_bf16_tiles();
  int64_t tr = tile_rows(in_, out_);
  float* tile = tile_buffer(tr * in_);
  uint16_t* btile = bf16 ? bf16_tile_buffer(tr * in_) : nullptr;
  for (int64_t r0 = 0; r0 < out_; r0 += tr) {
    int64_t r1 = std::min(out_, r0 + tr);
    weight_rows_to_f32(w, r0, r1, tile);
    const float b = r0 == 0 ? beta : 1.0f;
    if (bf16) {
      kernels::f32_to_bf16(tile, btile, (r1 - r0) * in_);
      kernels::gemm_bf16_raw(false, n, in_, r1 - r0, dy2.f32() + r0, out_, btile, in_, b,
                             dx2.f32(), in_);
    } else {
      kernels::gemm_raw(false, false, n, in_, r1 - r0, 1.0f, dy2.f32() + r0, out_, tile, in_, b,
                        dx2.f32(), in_);
    }
  }
}

void Linear::weight_rows(int64_t r0, int64_t r1, float* dst) const {
  const Tensor& w = weight.value;
  NN_CHECK(0 <= r0 && r0 <= r1 && r1 <= out_, kOp,
           "weight_rows [" + std::to_string(r0) + ", " + std::to_string(r1) + ") outside " + w.str());
  if (w.dtype() == DType::F32) {
    std::copy(w.f32() + r0 * in_, w.f32() + r1 * in_, dst);
    return;
  }
  NN_CHECK(weight_dtype_supported(w.dtype()), kOp,
           std::string("weight dtype ") + tensor::dtype_name(w.dtype()) +
               " is not supported yet (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K, NF4)");
  weight_rows_to_f32(w, r0, r1, dst);
}

}  // namespace lorafit::nn
