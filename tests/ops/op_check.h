// The op checker (modelled on ggml's test-backend-ops): one registry of cases, each kernel against
// its scalar reference on odd shapes with NaN/Inf and out-of-bounds guard checks, each module's
// backward against central finite differences, and a coverage test (coverage_test.cpp) that fails
// when a kernel op (kernels::op_names()) or a module (nn::module_names()) has no case.
//
//   OPCHECK(gelu_forward, OddShapes) { ... gtest assertions ... }
//
// registers a GoogleTest named gelu_forward.OddShapes and marks op "gelu_forward" as covered.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "lorafit/tensor.h"
#include "test_util.h"

namespace opcheck {

using lorafit::tensor::DType;
using lorafit::tensor::Shape;
using lorafit::tensor::Tensor;

inline std::set<std::string>& covered() {
  static std::set<std::string> s;
  return s;
}
struct Covered {
  explicit Covered(const char* op) { covered().insert(op); }
};

#define OPCHECK(OP, NAME)                                              \
  static ::opcheck::Covered opcheck_cov_##OP##_##NAME(#OP);            \
  TEST(OP, NAME)

// Deterministic uniform fill in [lo, hi).
inline void fill_uniform(Tensor& t, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  float* p = t.f32();
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (int64_t i = 0; i < t.numel(); ++i) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    double u = static_cast<double>(s >> 11) / 9007199254740992.0;
    p[i] = static_cast<float>(lo + (hi - lo) * u);
  }
}

inline Tensor random(const Shape& shape, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  Tensor t = Tensor::empty(shape, DType::F32);
  fill_uniform(t, seed, lo, hi);
  return t;
}

// A tensor with kGuard guard floats before and after it, all set to a sentinel; guards_intact()
// tells whether a kernel wrote outside its output.
class Guarded {
 public:
  static constexpr int64_t kGuard = 16;
  static constexpr float kSentinel = -12345.678f;
  explicit Guarded(const Shape& shape) : shape_(shape) {
    int64_t n = lorafit::tensor::shape_numel(shape);
    buf_ = Tensor::full({n + 2 * kGuard}, kSentinel);
    // kGuard floats = 64 bytes: the inner tensor stays 64-byte aligned.
    t_ = buf_.rows(kGuard, kGuard + n).view(shape);
  }
  Tensor& t() { return t_; }
  bool guards_intact() const {
    const float* p = buf_.f32();
    int64_t n = buf_.numel();
    for (int64_t i = 0; i < kGuard; ++i)
      if (p[i] != kSentinel || p[n - 1 - i] != kSentinel) return false;
    return true;
  }

 private:
  Shape shape_;
  Tensor buf_, t_;
};

// Fails the current test unless every value is finite and |got - want| <= atol + rtol*|want|.
inline void expect_close(const Tensor& got, const Tensor& want, double atol, double rtol,
                         const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  const float* g = got.f32();
  const float* w = want.f32();
  int bad = 0;
  for (int64_t i = 0; i < got.numel(); ++i) {
    if (!std::isfinite(g[i]) || !std::isfinite(w[i])) {
      ADD_FAILURE() << what << ": non-finite value at " << i << " got " << g[i] << " want " << w[i];
      if (++bad > 5) return;
      continue;
    }
    double err = std::fabs(static_cast<double>(g[i]) - w[i]);
    if (err > atol + rtol * std::fabs(w[i])) {
      ADD_FAILURE() << what << ": at " << i << " got " << g[i] << " want " << w[i] << " (err "
                    << err << ", atol " << atol << ", rtol " << rtol << ")";
      if (++bad > 5) return;
    }
  }
}

inline void expect_finite(const Tensor& t, const std::string& what) {
  const float* p = t.f32();
  for (int64_t i = 0; i < t.numel(); ++i)
    ASSERT_TRUE(std::isfinite(p[i])) << what << ": non-finite at " << i << " (" << p[i] << ")";
}

// Relative error of two gradient vectors: ||a - b|| / max(||a||, ||b||, tiny).
inline double rel_error(const std::vector<double>& a, const std::vector<double>& b) {
  double d = 0, na = 0, nb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    d += (a[i] - b[i]) * (a[i] - b[i]);
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return std::sqrt(d) / std::max({std::sqrt(na), std::sqrt(nb), 1e-30});
}

// Central finite differences: the shared harness (tests/test_util.h).
using test_util::finite_diff;

inline std::vector<double> to_double(const Tensor& t) {
  const float* p = t.f32();
  return std::vector<double>(p, p + t.numel());
}

// sum(y * r) in double.
inline double dot(const Tensor& y, const Tensor& r) {
  const float* a = y.f32();
  const float* b = r.f32();
  double s = 0;
  for (int64_t i = 0; i < y.numel(); ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

// Asserts rel_error(analytic, numeric) < tol, naming the case.
inline void expect_grad(const Tensor& analytic, const std::vector<double>& numeric, double tol,
                        const std::string& what) {
  std::vector<double> a = to_double(analytic);
  ASSERT_EQ(a.size(), numeric.size()) << what;
  for (double v : a) ASSERT_TRUE(std::isfinite(v)) << what << ": non-finite analytic gradient";
  double e = rel_error(a, numeric);
  EXPECT_LT(e, tol) << what << ": relative error " << e << " of analytic vs finite differences";
}

}  // namespace opcheck
