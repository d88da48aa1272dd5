// Helpers shared by every test folder: NaN-propagating error aggregates and the one
// finite-difference harness (central differences) that gradient checks use.
//
// Aggregates: `worst = std::max(worst, err)` keeps `worst` when err is NaN, so a NaN output would
// pass `EXPECT_LT(worst, tol)`. nan_max (and the max_abs* helpers built on it) make a NaN the
// result instead, and `EXPECT_LT(NaN, tol)` fails.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "lorafit/tensor.h"

namespace test_util {

// max(m, v), but a NaN in either is the result (std::max(m, NaN) returns m).
inline double nan_max(double m, double v) {
  if (std::isnan(m)) return m;
  return v <= m ? m : v;  // false for v = NaN: NaN wins
}

// Largest |a - b| over all elements (shapes must match: a mismatch is a test failure and +inf).
// With `mask` [B, T] (I32) defined, only entries whose [b, t] is nonzero count (a and b are
// [B, T, ...]). NaN propagates.
inline double max_abs_diff(const lorafit::tensor::Tensor& a, const lorafit::tensor::Tensor& b,
                           const lorafit::tensor::Tensor& mask = lorafit::tensor::Tensor()) {
  EXPECT_EQ(a.shape(), b.shape()) << a.str() << " vs " << b.str();
  if (a.shape() != b.shape()) return INFINITY;
  const int64_t n = a.numel();
  const int64_t per = mask.defined() ? n / mask.numel() : n;
  const float* pa = a.f32();
  const float* pb = b.f32();
  double m = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (mask.defined() && mask.i32()[i / per] == 0) continue;
    m = nan_max(m, std::fabs(static_cast<double>(pa[i]) - pb[i]));
  }
  return m;
}

// Largest |a| (NaN propagates).
inline double max_abs(const lorafit::tensor::Tensor& a) {
  const float* p = a.f32();
  double m = 0;
  for (int64_t i = 0; i < a.numel(); ++i) m = nan_max(m, std::fabs(static_cast<double>(p[i])));
  return m;
}

// ---- finite differences -----------------------------------------------------------------------

// Central difference of a scalar function in double: (f(x + h) − f(x − h)) / 2h (truncation
// error ~ h² f'''/6; h = 1e-5 gives ~1e-10 for the smooth activations checked here).
inline double central_diff(const std::function<double(double)>& f, double x, double h = 1e-5) {
  return (f(x + h) - f(x - h)) / (2 * h);
}

// Central differences of a scalar loss (computed by `loss`, accumulated in double) with respect
// to element i of `x`: (L(x + eps e_i) − L(x − eps e_i)) / h, h the perturbation actually
// representable in fp32. `x` is restored.
inline double finite_diff_at(lorafit::tensor::Tensor& x, int64_t i,
                             const std::function<double()>& loss, float eps) {
  float* p = x.f32();
  const float orig = p[i];
  p[i] = orig + eps;
  const double lp = loss();
  p[i] = orig - eps;
  const double lm = loss();
  p[i] = orig;
  const double h = static_cast<double>(orig + eps) - static_cast<double>(orig - eps);
  return (lp - lm) / h;
}

// The same for every element of `x`. The loss is usually sum(forward(x) * r) for a fixed random
// r, so dL/dy = r feeds backward.
inline std::vector<double> finite_diff(lorafit::tensor::Tensor& x,
                                       const std::function<double()>& loss, float eps) {
  std::vector<double> g(static_cast<size_t>(x.numel()));
  for (int64_t i = 0; i < x.numel(); ++i)
    g[static_cast<size_t>(i)] = finite_diff_at(x, i, loss, eps);
  return g;
}

}  // namespace test_util
