// Comparison helpers shared by the peft tests.
#pragma once

#include <gtest/gtest.h>

#include <cmath>

#include "lorafit/tensor.h"

namespace peft_test {

// Largest |a - b| over all elements (shapes must match: a mismatch is a test failure and +inf).
// A NaN anywhere makes the result NaN, so `EXPECT_LT(max_abs_diff(...), tol)` fails on it
// (std::max(m, NaN) would silently keep m).
inline double max_abs_diff(const lorafit::tensor::Tensor& a, const lorafit::tensor::Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape()) << a.str() << " vs " << b.str();
  if (a.shape() != b.shape()) return INFINITY;
  const float* pa = a.f32();
  const float* pb = b.f32();
  double m = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double d = std::fabs(static_cast<double>(pa[i]) - pb[i]);
    if (!(d <= m)) m = d;
  }
  return m;
}

// Largest |a| (NaN propagates as above).
inline double max_abs(const lorafit::tensor::Tensor& a) {
  const float* p = a.f32();
  double m = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double d = std::fabs(static_cast<double>(p[i]));
    if (!(d <= m)) m = d;
  }
  return m;
}

}  // namespace peft_test
