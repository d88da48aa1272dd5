// Inverted dropout with a counter-based mask (detail::DropoutMask): backward regenerates the mask
// from the (seed, counter) that forward reserved.
#include <algorithm>

#include "nn/nn_internal.h"

namespace lorafit::nn {

namespace {

constexpr const char* kOp = "Dropout";

// y = x * mask, split across threads for big tensors (each chunk starts at its own offset).
void apply_mask(float* y, const float* x, int64_t n, const detail::DropoutMask& mask) {
  constexpr int64_t kChunk = 1 << 14;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (chunks > 4)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t b = c * kChunk, len = std::min(kChunk, n - b);
    mask.apply(y + b, x + b, b, len);
  }
}

}  // namespace

Tensor Dropout::forward(Context& ctx, const Tensor& x) {
  NN_CHECK(p >= 0.0f && p < 1.0f, kOp, "p must be in [0, 1), got " + std::to_string(p));
  NN_CHECK(x.defined() && x.dtype() == DType::F32, kOp, detail::desc("x", x) + ", expected F32");
  shape_ = x.shape();
  active_ = ctx.training && p > 0.0f;
  if (!active_) return x;  // identity: no copy
  const int64_t n = x.numel();
  seed_ = ctx.seed;
  counter_ = ctx.take_rng(detail::DropoutMask::counters_for(n));
  Tensor y = ctx.alloc(x.shape());
  apply_mask(y.f32(), x.f32(), n, detail::DropoutMask(seed_, counter_, p));
  return y;
}

Tensor Dropout::backward(Context& ctx, const Tensor& dy) {
  NN_CHECK(dy.defined() && dy.dtype() == DType::F32 && dy.shape() == shape_, kOp,
           detail::desc("dy", dy) + ", expected F32" + tensor::shape_str(shape_));
  if (!active_) return dy;
  // forward was: y[i] = x[i] * mask[i]  ->  dx[i] = dy[i] * mask[i], same (seed, counter)
  Tensor dx = ctx.alloc(dy.shape());
  apply_mask(dx.f32(), dy.f32(), dy.numel(), detail::DropoutMask(seed_, counter_, p));
  return dx;
}

}  // namespace lorafit::nn
