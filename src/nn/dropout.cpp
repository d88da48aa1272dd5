// Inverted dropout with a counter-based mask: element i of a call that reserved counters
// [c, c + n) is kept iff random_uniform(seed, c + i) >= p, so backward regenerates the mask.
#include "nn/nn_internal.h"

namespace lorafit::nn {

namespace {

constexpr const char* kOp = "Dropout";

// y[i] = x[i] * factor(i); factor = 0 or 1/(1-p).
void apply_mask(float* y, const float* x, int64_t n, uint64_t seed, uint64_t counter, float p) {
  const float scale = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i)
    y[i] = x[i] * detail::dropout_factor(seed, counter + static_cast<uint64_t>(i), p, scale);
}

}  // namespace

Tensor Dropout::forward(Context& ctx, const Tensor& x) {
  detail::check(p >= 0.0f && p < 1.0f, kOp, "p must be in [0, 1), got " + std::to_string(p));
  detail::check(x.defined() && x.dtype() == DType::F32, kOp, detail::desc("x", x) +
                                                                 ", expected F32");
  shape_ = x.shape();
  active_ = ctx.training && p > 0.0f;
  if (!active_) return x;  // identity: no copy
  const int64_t n = x.numel();
  seed_ = ctx.seed;
  counter_ = ctx.take_rng(static_cast<uint64_t>(n));
  Tensor y = ctx.alloc(x.shape());
  apply_mask(y.f32(), x.f32(), n, seed_, counter_, p);
  return y;
}

Tensor Dropout::backward(Context& ctx, const Tensor& dy) {
  detail::check(dy.defined() && dy.dtype() == DType::F32 && dy.shape() == shape_, kOp,
                detail::desc("dy", dy) + ", expected F32" + tensor::shape_str(shape_));
  if (!active_) return dy;
  // forward was: y[i] = x[i] * mask[i]  ->  dx[i] = dy[i] * mask[i], same (seed, counter)
  Tensor dx = ctx.alloc(dy.shape());
  apply_mask(dx.f32(), dy.f32(), dy.numel(), seed_, counter_, p);
  return dx;
}

}  // namespace lorafit::nn
