// Op-checker cases for every kernel in kernels::op_names().
//
// Each op is checked three ways:
//   1. the scalar reference (Isa::Scalar) against an independent naive formula evaluated in
//      double in this file (a triple loop for GEMM, std::erf for GELU, an explicit rotation
//      matrix for RoPE, ...);
//   2. the dispatched vector kernels (Isa::Avx2) against the reference, on odd sizes (1, 5, 7,
//      13, 129, 1031, ...) so every vector tail is hit, with guard values around each output and
//      NaN/Inf checks. On a CPU without AVX2 this comparison becomes dispatched-vs-naive (both are
//      scalar then), so it still asserts something;
//   3. every backward against central finite differences of the dispatched forward (loss
//      sum(y * r) for a fixed random r, accumulated in double).
// Tolerances are stated per case, next to the call that uses them.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <numbers>
#include <string>
#include <vector>

#include "kernels/kernels_impl.h"
#include "lorafit/kernels.h"
#include "ops/op_check.h"

namespace {

using namespace opcheck;
namespace k = lorafit::kernels;
using k::Isa;
using lorafit::tensor::shape_numel;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

bool have_avx2() { return k::isa_supported(Isa::Avx2); }
// The vector ISA under test: AVX2 where the CPU has it, otherwise the scalar path again.
Isa vec_isa() { return have_avx2() ? Isa::Avx2 : Isa::Scalar; }

struct IsaScope {
  Isa prev;
  explicit IsaScope(Isa isa) : prev(k::isa_active()) { k::isa_set(isa); }
  ~IsaScope() { k::isa_set(prev); }
};

std::string tag(const Shape& s, Isa isa) {
  return lorafit::tensor::shape_str(s) + " " + k::isa_name(isa);
}

Tensor from_double(const Shape& s, const std::vector<double>& v) {
  Tensor t = Tensor::empty(s);
  for (size_t i = 0; i < v.size(); ++i) t.f32()[i] = static_cast<float>(v[i]);
  return t;
}

// Runs `fn(out)` into a guarded output of `shape` (pre-filled with `init` when given) under
// `isa`, checks the guards and returns a copy of the output.
Tensor run_guarded(Isa isa, const Shape& shape, const std::function<void(Tensor&)>& fn,
                   const Tensor* init = nullptr) {
  IsaScope scope(isa);
  Guarded g(shape);
  if (init) g.t().copy_from(*init);
  fn(g.t());
  EXPECT_TRUE(g.guards_intact()) << "write outside the output " << tag(shape, isa);
  return g.t().clone();
}

// The two comparisons every forward case makes: reference vs naive, vector vs reference (or vs
// naive when the CPU has no AVX2).
void compare3(const Tensor& ref, const Tensor& vec, const Tensor& naive, double atol_naive,
              double rtol_naive, double atol_vec, double rtol_vec, const std::string& what) {
  expect_close(ref, naive, atol_naive, rtol_naive, what + ": reference vs naive formula");
  if (have_avx2())
    expect_close(vec, ref, atol_vec, rtol_vec, what + ": avx2 vs reference");
  else
    expect_close(vec, naive, atol_naive, rtol_naive, what + ": dispatched (scalar) vs naive");
}

// Expects fn to throw lorafit::Error whose message contains every string in `parts`.
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "no lorafit::Error thrown (expected a message with '" << parts[0] << "')";
  } catch (const lorafit::Error& e) {
    std::string msg = e.what();
    for (const std::string& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << "message '" << msg << "' lacks '" << p << "'";
  }
}

const std::vector<int64_t> kSizes = {1, 5, 7, 8, 13, 129, 1031};
// [rows, cols]; the last ones cross the OpenMP row threshold (rows * cols >= 2^14).
const std::vector<Shape> kRowShapes = {{1, 1}, {3, 5}, {7, 13}, {5, 129}, {2, 1031}, {129, 7},
                                       {64, 600}};
// Small shapes for finite differences (one forward per element).
const std::vector<Shape> kGradShapes = {{1, 1}, {3, 5}, {2, 13}, {1, 67}};

// Finite differences of loss = sum(forward(x) * r) w.r.t. x.
std::vector<double> fd_of(Tensor& x, const Shape& yshape, const std::function<void(Tensor&)>& fwd,
                          const Tensor& r, float eps) {
  Tensor y = Tensor::empty(yshape);
  return finite_diff(
      x,
      [&] {
        fwd(y);
        return dot(y, r);
      },
      eps);
}

// ================================================================================================
// GEMM
// ================================================================================================

// C = alpha op(A) op(B) + beta C in double, row-major, op by index swapping.
std::vector<double> naive_gemm(const Tensor& a, bool ta, const Tensor& b, bool tb, const Tensor& c0,
                               float alpha, float beta, int64_t m, int64_t n, int64_t kk) {
  const float *pa = a.f32(), *pb = b.f32(), *pc = c0.f32();
  std::vector<double> c(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t p = 0; p < kk; ++p) {
        double av = ta ? pa[p * m + i] : pa[i * kk + p];
        double bv = tb ? pb[j * kk + p] : pb[p * n + j];
        s += av * bv;
      }
      double prev = beta == 0.0f ? 0.0 : static_cast<double>(beta) * pc[i * n + j];
      c[static_cast<size_t>(i * n + j)] = alpha * s + prev;
    }
  return c;
}

OPCHECK(gemm, AllTransposesAlphaBetaVsTripleLoop) {
  struct Mnk {
    int64_t m, n, k;
  };
  const std::vector<Mnk> shapes = {{1, 1, 1}, {5, 7, 13}, {13, 129, 5}, {64, 33, 129}, {3, 1, 1031}};
  const std::vector<std::pair<float, float>> ab = {{1.0f, 0.0f}, {0.5f, 1.0f}, {-1.5f, 0.25f}};
  uint64_t seed = 1;
  for (const Mnk& s : shapes)
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb)
        for (auto [alpha, beta] : ab) {
          Tensor a = random(ta ? Shape{s.k, s.m} : Shape{s.m, s.k}, seed++);
          Tensor b = random(tb ? Shape{s.n, s.k} : Shape{s.k, s.n}, seed++);
          Tensor c0 = random({s.m, s.n}, seed++);
          if (beta == 0.0f) c0.fill(std::nanf(""));  // beta = 0 must not read C
          Tensor got = run_guarded(
              Isa::Scalar, {s.m, s.n},
              [&](Tensor& c) { k::gemm(a, ta, b, tb, c, alpha, beta); }, &c0);
          Tensor want = from_double({s.m, s.n},
                                    naive_gemm(a, ta, b, tb, c0, alpha, beta, s.m, s.n, s.k));
          // fp32 dot products of length k with |a|,|b| <= 1: error <~ k * 6e-8 * |alpha|.
          expect_close(got, want, 2e-6 * static_cast<double>(s.k) + 1e-6, 1e-5,
                       "gemm m=" + std::to_string(s.m) + " n=" + std::to_string(s.n) +
                           " k=" + std::to_string(s.k) + " ta=" + std::to_string(ta) +
                           " tb=" + std::to_string(tb) + " alpha=" + std::to_string(alpha) +
                           " beta=" + std::to_string(beta));
        }
}

OPCHECK(gemm, RawStridedBlockAndZeroK) {
  // A 5x7 block of a 9x11 matrix times a 7x3 block of an 8x6 matrix into a 5x3 block of a 6x10
  // matrix: leading dimensions larger than the block, and nothing outside the block touched.
  Tensor a = random({9, 11}, 11), b = random({8, 6}, 12), c = random({6, 10}, 13);
  Tensor c0 = c.clone();
  const int64_t m = 5, n = 3, kk = 7;
  k::gemm_raw(false, false, m, n, kk, 2.0f, a.f32() + 11 + 2, 11, b.f32() + 6 + 1, 6, 1.0f,
              c.f32() + 10 + 4, 10);
  for (int64_t i = 0; i < 6; ++i)
    for (int64_t j = 0; j < 10; ++j) {
      double want = c0.f32()[i * 10 + j];
      bool inside = i >= 1 && i < 1 + m && j >= 4 && j < 4 + n;
      if (inside) {
        double s = 0;
        for (int64_t p = 0; p < kk; ++p)
          s += static_cast<double>(a.f32()[(i - 1 + 1) * 11 + 2 + p]) * b.f32()[(p + 1) * 6 + 1 + j - 4];
        want = 2.0 * s + want;
      }
      EXPECT_NEAR(c.f32()[i * 10 + j], want, 1e-5) << "C[" << i << ", " << j << "] inside=" << inside;
    }
  // k = 0: C = beta C (and beta = 0 clears C even when it holds NaN).
  Tensor e = Tensor::empty({3, 0}), f = Tensor::empty({0, 4});
  Tensor c1 = Tensor::full({3, 4}, 2.0f);
  k::gemm(e, false, f, false, c1, 1.0f, 0.5f);
  for (int64_t i = 0; i < 12; ++i) EXPECT_EQ(c1.f32()[i], 1.0f);
  c1.fill(std::nanf(""));
  k::gemm(e, false, f, false, c1, 1.0f, 0.0f);
  for (int64_t i = 0; i < 12; ++i) EXPECT_EQ(c1.f32()[i], 0.0f);
}

// The OpenBLAS core the CLI forces where OpenBLAS fell back (kernels.h blas_core_upgrade).
TEST(BlasCore, UpgradeOnlyFromCoresBelowTheCpu) {
  EXPECT_EQ(k::blas_core_upgrade("Prescott", true, true), "SkylakeX");
  EXPECT_EQ(k::blas_core_upgrade("Prescott", true, false), "Haswell");
  EXPECT_EQ(k::blas_core_upgrade("Sandybridge", true, false), "Haswell");
  EXPECT_EQ(k::blas_core_upgrade("Prescott", false, false), "");  // the CPU runs nothing better
  for (const char* kept : {"Haswell", "Zen", "SkylakeX", "Cooperlake", "SAPPHIRERAPIDS", "excavator"})
    EXPECT_EQ(k::blas_core_upgrade(kept, true, true), "") << kept;
  EXPECT_FALSE(k::blas_core().empty());
}

OPCHECK(gemm, ErrorsNameShapes) {
  Tensor a = random({3, 5}, 1), b = random({7, 2}, 2), c = Tensor::zeros({3, 2});
  expect_error([&] { k::gemm(a, false, b, false, c); },
               {"[gemm]", "F32[3, 5]", "F32[7, 2]", "inner dimensions must agree"});
  Tensor b2 = random({5, 2}, 3), cbad = Tensor::zeros({2, 3});
  expect_error([&] { k::gemm(a, false, b2, false, cbad); }, {"[gemm]", "F32[2, 3]", "[3, 2]"});
  Tensor ai = Tensor::zeros({3, 5}, DType::I32);
  expect_error([&] { k::gemm(ai, false, b2, false, c); }, {"[gemm]", "I32[3, 5]", "expected F32"});
  Tensor a3 = random({2, 3, 5}, 4);
  expect_error([&] { k::gemm(a3, false, b2, false, c); }, {"[gemm]", "F32[2, 3, 5]", "2-D"});
  Tensor sq = random({3, 3}, 5), sq2 = random({3, 3}, 6);
  expect_error([&] { k::gemm(sq, false, sq2, false, sq); }, {"[gemm]", "overlaps"});
  expect_error([&] { k::gemm_raw(false, false, 2, 2, 4, 1.0f, a.f32(), 3, b.f32(), 2, 0.0f, c.f32(), 2); },
               {"[gemm]", "lda=3"});
}

// ================================================================================================
// Elementwise
// ================================================================================================

// Checks a binary elementwise op (y = f(a, b)) on odd sizes; naive is the formula in double.
void check_binary(const char* name, const std::function<void(const Tensor&, const Tensor&, Tensor&)>& op,
                  const std::function<double(double, double)>& naive, double atol, double rtol,
                  bool in_place = true) {
  for (int64_t n : kSizes) {
    for (Shape s : {Shape{n}, Shape{3, n}}) {
      Tensor a = random(s, 100 + n), b = random(s, 200 + n);
      Tensor ref = run_guarded(Isa::Scalar, s, [&](Tensor& y) { op(a, b, y); });
      Tensor vec = run_guarded(vec_isa(), s, [&](Tensor& y) { op(a, b, y); });
      std::vector<double> w(static_cast<size_t>(a.numel()));
      for (size_t i = 0; i < w.size(); ++i) w[i] = naive(a.f32()[i], b.f32()[i]);
      compare3(ref, vec, from_double(s, w), atol, rtol, atol, rtol, std::string(name) + " " + tag(s, vec_isa()));
    }
  }
  if (!in_place) return;
  // Output aliasing the first input, above the parallel threshold (2^16 elements).
  Tensor a = random({70001}, 7), b = random({70001}, 8), want = Tensor::empty({70001});
  op(a, b, want);
  Tensor y = a.clone();
  op(y, b, y);
  expect_close(y, want, 0, 0, std::string(name) + " in place");
}

OPCHECK(add, OddSizes) {
  // One fp32 rounding of an exact sum: identical in every implementation.
  check_binary("add", [](auto& a, auto& b, auto& y) { k::add(a, b, y); },
               [](double a, double b) { return a + b; }, 0, 1e-7);
}
OPCHECK(mul, OddSizes) {
  check_binary("mul", [](auto& a, auto& b, auto& y) { k::mul(a, b, y); },
               [](double a, double b) { return a * b; }, 0, 1e-7);
}
OPCHECK(scale, OddSizes) {
  check_binary("scale", [](auto& a, auto&, auto& y) { k::scale(a, -1.75f, y); },
               [](double a, double) { return -1.75 * a; }, 0, 1e-7);
}
OPCHECK(axpy, OddSizes) {
  // y += alpha x: FMA (one rounding) vs mul + add (two): 1e-7 absolute for |values| <= 2.
  check_binary("axpy",
               [](auto& a, auto& b, auto& y) {
                 y.copy_from(b);
                 k::axpy(0.3f, a, y);
               },
               [](double a, double b) { return 0.3 * a + b; }, 2e-7, 1e-6, false);
  // In place above the parallel threshold: y += alpha x on 70001 elements.
  Tensor x = random({70001}, 7), y = random({70001}, 8), want = y.clone();
  for (int64_t i = 0; i < want.numel(); ++i) want.f32()[i] += 0.3f * x.f32()[i];
  k::axpy(0.3f, x, y);
  expect_close(y, want, 2e-7, 1e-6, "axpy [70001]");
}

OPCHECK(add, ErrorsNameShapes) {
  Tensor a = random({3, 5}, 1), b = random({5, 3}, 2), y = Tensor::empty({3, 5});
  expect_error([&] { k::add(a, b, y); }, {"[add]", "F32[3, 5]", "F32[5, 3]"});
  expect_error([&] { k::mul(a, a, b); }, {"[mul]", "F32[5, 3]"});
  expect_error([&] { k::scale(a, 2.0f, b); }, {"[scale]", "F32[3, 5]", "F32[5, 3]"});
  expect_error([&] { k::axpy(1.0f, a, b); }, {"[axpy]", "F32[3, 5]", "F32[5, 3]"});
  Tensor u;
  expect_error([&] { k::add(a, u, y); }, {"[add]", "undefined"});
}

OPCHECK(add_bias, OddShapes) {
  for (const Shape& s : kRowShapes) {
    Tensor x = random(s, 1), bias = random({s[1]}, 2);
    Tensor ref = run_guarded(Isa::Scalar, s, [&](Tensor& y) { k::add_bias(y, bias); }, &x);
    Tensor vec = run_guarded(vec_isa(), s, [&](Tensor& y) { k::add_bias(y, bias); }, &x);
    std::vector<double> w(static_cast<size_t>(x.numel()));
    for (size_t i = 0; i < w.size(); ++i) w[i] = x.f32()[i] + static_cast<double>(bias.f32()[i % s[1]]);
    compare3(ref, vec, from_double(s, w), 0, 1e-7, 0, 1e-7, "add_bias " + tag(s, vec_isa()));
  }
  Tensor x = random({2, 3, 5}, 3), bias = random({4}, 4);
  expect_error([&] { k::add_bias(x, bias); }, {"[add_bias]", "F32[4]", "F32[2, 3, 5]"});
}

OPCHECK(bias_backward, OddShapesAndFiniteDifferences) {
  for (const Shape& s : kRowShapes) {
    Tensor dy = random(s, 5), db0 = random({s[1]}, 6);
    Tensor ref = run_guarded(Isa::Scalar, {s[1]}, [&](Tensor& db) { k::bias_backward(dy, db); }, &db0);
    Tensor vec = run_guarded(vec_isa(), {s[1]}, [&](Tensor& db) { k::bias_backward(dy, db); }, &db0);
    std::vector<double> w(static_cast<size_t>(s[1]));
    for (int64_t j = 0; j < s[1]; ++j) {
      w[j] = db0.f32()[j];  // accumulated, not overwritten
      for (int64_t r = 0; r < s[0]; ++r) w[j] += dy.f32()[r * s[1] + j];
    }
    // sums of `rows` values in [-1, 1]: fp32 accumulation error <~ rows * 1e-7
    double atol = 2e-7 * static_cast<double>(s[0]) + 1e-7;
    compare3(ref, vec, from_double({s[1]}, w), atol, 1e-6, atol, 1e-6, "bias_backward " + tag(s, vec_isa()));
  }
  // d/dbias of sum(add_bias(x, bias) * r): finite differences (a linear map, so tol 1e-4).
  for (const Shape& s : kGradShapes) {
    Tensor x = random(s, 7), bias = random({s[1]}, 8), r = random(s, 9);
    Tensor db = Tensor::zeros({s[1]});
    k::bias_backward(r, db);
    auto num = fd_of(bias, s, [&](Tensor& y) { y.copy_from(x); k::add_bias(y, bias); }, r, 1e-2f);
    expect_grad(db, num, 1e-4, "bias_backward fd " + tag(s, vec_isa()));
  }
  Tensor dy = random({3, 5}, 1), db = Tensor::zeros({3});
  expect_error([&] { k::bias_backward(dy, db); }, {"[bias_backward]", "F32[3]", "F32[3, 5]"});
}

// ================================================================================================
// Activations
// ================================================================================================

double gelu_naive(double x, k::GeluKind kind) {
  // 1 + erf(z) = erfc(-z): the erfc form keeps full double precision in the negative tail,
  // where 1 + erf cancels even in double (below x ~ -8 it is pure rounding noise).
  if (kind == k::GeluKind::Erf) return 0.5 * x * std::erfc(-x / std::sqrt(2.0));
  const double c = std::sqrt(2.0 / std::numbers::pi);
  return 0.5 * x * (1.0 + std::tanh(c * (x + 0.044715 * x * x * x)));
}
double silu_naive(double x) { return x / (1.0 + std::exp(-x)); }
// Derivatives of naive double formulas: the shared central difference in double (independent
// of the analytic derivatives in the kernels; truncation error ~ h^2 f''' ~ 1e-10).
using test_util::central_diff;
using test_util::nan_max;

// Unary forward check: x uniform in [lo, hi) for every size.
void check_unary(const std::string& name, const std::function<void(const Tensor&, Tensor&)>& op,
                 const std::function<double(double)>& naive, float lo, float hi, double atol_naive,
                 double rtol_naive, double atol_vec, double rtol_vec) {
  for (int64_t n : kSizes) {
    for (Shape s : {Shape{n}, Shape{4, n}}) {
      Tensor x = random(s, 300 + n, lo, hi);
      Tensor ref = run_guarded(Isa::Scalar, s, [&](Tensor& y) { op(x, y); });
      Tensor vec = run_guarded(vec_isa(), s, [&](Tensor& y) { op(x, y); });
      std::vector<double> w(static_cast<size_t>(x.numel()));
      for (size_t i = 0; i < w.size(); ++i) w[i] = naive(x.f32()[i]);
      compare3(ref, vec, from_double(s, w), atol_naive, rtol_naive, atol_vec, rtol_vec,
               name + " " + tag(s, vec_isa()));
    }
  }
  // Above the parallel threshold.
  Shape big = {70001};
  Tensor x = random(big, 9, lo, hi);
  Tensor ref = run_guarded(Isa::Scalar, big, [&](Tensor& y) { op(x, y); });
  Tensor vec = run_guarded(vec_isa(), big, [&](Tensor& y) { op(x, y); });
  std::vector<double> w(static_cast<size_t>(x.numel()));
  for (size_t i = 0; i < w.size(); ++i) w[i] = naive(x.f32()[i]);
  compare3(ref, vec, from_double(big, w), atol_naive, rtol_naive, atol_vec, rtol_vec, name + " [70001]");
}

// Unary backward check: dx = dy * f'(x) against the double derivative of the naive forward, the
// reference, and finite differences of the dispatched forward.
void check_unary_backward(const std::string& name,
                          const std::function<void(const Tensor&, const Tensor&, Tensor&)>& bwd,
                          const std::function<void(const Tensor&, Tensor&)>& fwd,
                          const std::function<double(double)>& naive, float lo, float hi,
                          double atol_vec, double rtol_vec, double fd_tol) {
  for (int64_t n : kSizes) {
    Shape s = {3, n};
    Tensor x = random(s, 400 + n, lo, hi), dy = random(s, 500 + n);
    Tensor ref = run_guarded(Isa::Scalar, s, [&](Tensor& dx) { bwd(x, dy, dx); });
    Tensor vec = run_guarded(vec_isa(), s, [&](Tensor& dx) { bwd(x, dy, dx); });
    std::vector<double> w(static_cast<size_t>(x.numel()));
    for (size_t i = 0; i < w.size(); ++i) w[i] = dy.f32()[i] * central_diff(naive, x.f32()[i]);
    // reference vs double derivative: fp32 evaluation, 1e-6 absolute / relative
    compare3(ref, vec, from_double(s, w), 2e-6, 1e-5, atol_vec, rtol_vec, name + " " + tag(s, vec_isa()));
  }
  for (const Shape& s : kGradShapes) {
    Tensor x = random(s, 600 + s[1], lo, hi), r = random(s, 700 + s[1]);
    Tensor dx = Tensor::empty(s);
    bwd(x, r, dx);
    auto num = fd_of(x, s, [&](Tensor& y) { fwd(x, y); }, r, 1e-2f);
    expect_grad(dx, num, fd_tol, name + " fd " + tag(s, vec_isa()));
  }
}

OPCHECK(gelu_forward, ErfAndTanhOddSizes) {
  for (k::GeluKind kind : {k::GeluKind::Erf, k::GeluKind::Tanh}) {
    std::string nm = kind == k::GeluKind::Erf ? "gelu_forward erf" : "gelu_forward tanh";
    // Reference: fp32 erff/tanhf, 1 + erf cancels for x << 0, hence 2e-7 absolute.
    // AVX2: NR erfc (1.2e-7 rel) / sigmoid form: 1e-6 relative + 2e-7 absolute.
    check_unary(nm, [kind](const Tensor& x, Tensor& y) { k::gelu_forward(x, y, kind); },
                [kind](double x) { return gelu_naive(x, kind); }, -6.0f, 6.0f, 2e-7, 2e-6, 2e-7,
                1e-6);
  }
}

OPCHECK(gelu_forward, Avx2ErfRelativeAccuracy) {
  // The vectorised erf must be accurate to ~1e-6 relative everywhere, and GELU(erf) keeps that
  // relative accuracy deep in the negative tail (where it is ~1e-30), which the plain
  // 0.5 x (1 + erf) formula cannot. Without AVX2 the reference is held to its own (absolute) bound.
  const int64_t n = 20001;
  Tensor x = Tensor::empty({n});
  for (int64_t i = 0; i < n; ++i) x.f32()[i] = -6.0f + 12.0f * static_cast<float>(i) / (n - 1);
  if (have_avx2()) {
    Tensor y = Tensor::empty({n});
    k::avx2::erf_n(y.f32(), x.f32(), n);
    double worst = 0;
    for (int64_t i = 0; i < n; ++i) {
      double want = std::erf(static_cast<double>(x.f32()[i]));
      if (want != 0) {
        const double rel = std::fabs(y.f32()[i] - want) / std::fabs(want);
        worst = nan_max(worst, rel);
      } else
        EXPECT_EQ(y.f32()[i], 0.0f);
    }
    EXPECT_LT(worst, 1e-6) << "avx2 erf worst relative error";
    Tensor e = Tensor::empty({n}), xe = random({n}, 5, -87.0f, 88.0f);
    k::avx2::exp_n(e.f32(), xe.f32(), n);
    for (int64_t i = 0; i < n; ++i)
      ASSERT_NEAR(e.f32()[i] / std::exp(static_cast<double>(xe.f32()[i])), 1.0, 5e-7) << "exp at " << xe.f32()[i];
    float special[4] = {-std::numeric_limits<float>::infinity(), std::numeric_limits<float>::infinity(), -100.0f, 100.0f};
    float out[4];
    k::avx2::exp_n(out, special, 4);
    EXPECT_EQ(out[0], 0.0f);
    EXPECT_TRUE(std::isinf(out[1]) && out[1] > 0);
    EXPECT_EQ(out[2], 0.0f);
    EXPECT_TRUE(std::isinf(out[3]));
  }
  Tensor xt = Tensor::empty({n});
  for (int64_t i = 0; i < n; ++i) xt.f32()[i] = -12.0f + 18.0f * static_cast<float>(i) / (n - 1);
  Tensor y = Tensor::empty({n});
  {
    IsaScope scope(vec_isa());
    k::gelu_forward(xt, y, k::GeluKind::Erf);
  }
  double worst = 0, worst_abs = 0;
  float worst_x = 0;
  for (int64_t i = 0; i < n; ++i) {
    double want = gelu_naive(xt.f32()[i], k::GeluKind::Erf);
    double err = std::fabs(y.f32()[i] - want);
    worst_abs = nan_max(worst_abs, err);
    if (want != 0 && !(err / std::fabs(want) <= worst)) {  // a NaN becomes the worst
      worst = nan_max(worst, err / std::fabs(want));
      worst_x = xt.f32()[i];
    }
  }
  if (have_avx2()) {
    EXPECT_LT(worst, 2e-6) << "avx2 gelu(erf) worst relative error on [-12, 6], at x = " << worst_x;
  }
  EXPECT_LT(worst_abs, 2e-6) << "gelu(erf) worst absolute error on [-12, 6]";
}

OPCHECK(gelu_backward, ErfAndTanh) {
  for (k::GeluKind kind : {k::GeluKind::Erf, k::GeluKind::Tanh}) {
    std::string nm = kind == k::GeluKind::Erf ? "gelu_backward erf" : "gelu_backward tanh";
    // avx2 vs reference 1e-6 abs / 1e-5 rel; finite differences (eps 1e-2, x in [-3, 3]) 1e-3.
    check_unary_backward(
        nm, [kind](const Tensor& x, const Tensor& dy, Tensor& dx) { k::gelu_backward(x, dy, dx, kind); },
        [kind](const Tensor& x, Tensor& y) { k::gelu_forward(x, y, kind); },
        [kind](double x) { return gelu_naive(x, kind); }, -3.0f, 3.0f, 1e-6, 1e-5, 1e-3);
  }
}

OPCHECK(silu_forward, OddSizes) {
  // exp256 is 1-2 ulp, the division exact-rounded: 1e-6 relative; reference (expf) vs double 1e-6.
  check_unary("silu_forward", [](const Tensor& x, Tensor& y) { k::silu_forward(x, y); }, silu_naive,
              -20.0f, 20.0f, 1e-7, 1e-6, 1e-7, 1e-6);
}
OPCHECK(silu_backward, OddSizesAndFiniteDifferences) {
  check_unary_backward(
      "silu_backward", [](const Tensor& x, const Tensor& dy, Tensor& dx) { k::silu_backward(x, dy, dx); },
      [](const Tensor& x, Tensor& y) { k::silu_forward(x, y); }, silu_naive, -8.0f, 8.0f, 1e-6, 1e-5,
      1e-3);
}

OPCHECK(swiglu_forward, OddSizes) {
  check_binary("swiglu_forward", [](auto& g, auto& u, auto& y) { k::swiglu_forward(g, u, y); },
               [](double g, double u) { return silu_naive(g) * u; }, 1e-7, 1e-6);
  Tensor g = random({3, 5}, 1), u = random({3, 6}, 2), y = Tensor::empty({3, 5});
  expect_error([&] { k::swiglu_forward(g, u, y); }, {"[swiglu_forward]", "F32[3, 5]", "F32[3, 6]"});
}

OPCHECK(swiglu_backward, OddSizesAndFiniteDifferences) {
  for (int64_t n : kSizes) {
    Shape s = {2, n};
    Tensor g = random(s, 800 + n, -6.0f, 6.0f), u = random(s, 900 + n), dy = random(s, 1000 + n);
    auto run = [&](Isa isa, bool want_gate) {
      IsaScope scope(isa);
      Guarded dg(s), du(s);
      k::swiglu_backward(g, u, dy, dg.t(), du.t());
      EXPECT_TRUE(dg.guards_intact() && du.guards_intact()) << "swiglu_backward guards " << tag(s, isa);
      return want_gate ? dg.t().clone() : du.t().clone();
    };
    std::vector<double> wg(static_cast<size_t>(g.numel())), wu(wg.size());
    for (size_t i = 0; i < wg.size(); ++i) {
      double gv = g.f32()[i], uv = u.f32()[i], d = dy.f32()[i];
      wg[i] = d * uv * central_diff(silu_naive, gv);
      wu[i] = d * silu_naive(gv);
    }
    compare3(run(Isa::Scalar, true), run(vec_isa(), true), from_double(s, wg), 2e-6, 1e-5, 1e-6, 1e-5,
             "swiglu_backward dgate " + tag(s, vec_isa()));
    compare3(run(Isa::Scalar, false), run(vec_isa(), false), from_double(s, wu), 1e-7, 1e-6, 1e-7, 1e-6,
             "swiglu_backward dup " + tag(s, vec_isa()));
  }
  // Finite differences w.r.t. both inputs (eps 1e-2): relative error < 1e-3.
  for (const Shape& s : kGradShapes) {
    Tensor g = random(s, 11, -3.0f, 3.0f), u = random(s, 12), r = random(s, 13);
    Tensor dg = Tensor::empty(s), du = Tensor::empty(s);
    k::swiglu_backward(g, u, r, dg, du);
    auto fwd = [&](Tensor& y) { k::swiglu_forward(g, u, y); };
    expect_grad(dg, fd_of(g, s, fwd, r, 1e-2f), 1e-3, "swiglu_backward fd gate " + tag(s, vec_isa()));
    expect_grad(du, fd_of(u, s, fwd, r, 1e-2f), 1e-3, "swiglu_backward fd up " + tag(s, vec_isa()));
  }
}

OPCHECK(gelu_forward, ErrorsNameShapes) {
  Tensor x = random({3, 5}, 1), y = Tensor::empty({3, 4});
  expect_error([&] { k::gelu_forward(x, y, k::GeluKind::Erf); }, {"[gelu_forward]", "F32[3, 5]", "F32[3, 4]"});
  expect_error([&] { k::gelu_backward(x, x, y, k::GeluKind::Tanh); }, {"[gelu_backward]", "F32[3, 4]"});
  expect_error([&] { k::silu_forward(x, y); }, {"[silu_forward]", "F32[3, 4]"});
  expect_error([&] { k::silu_backward(x, y, x); }, {"[silu_backward]", "F32[3, 4]"});
  Tensor xi = Tensor::zeros({3, 5}, DType::I32);
  expect_error([&] { k::silu_forward(xi, x); }, {"[silu_forward]", "I32[3, 5]", "expected F32"});
}

// ================================================================================================
// Softmax
// ================================================================================================

std::vector<double> softmax_naive(const Tensor& x, const Tensor* mask, int64_t n) {
  const int64_t rows = x.numel() / n;
  std::vector<double> y(static_cast<size_t>(x.numel()));
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<double> z(static_cast<size_t>(n));
    double mx = -INFINITY;
    for (int64_t j = 0; j < n; ++j) {
      z[j] = x.f32()[r * n + j];
      if (mask) z[j] += mask->f32()[(mask->numel() == n ? 0 : r * n) + j];
      mx = std::max(mx, z[j]);
    }
    double sum = 0;
    for (int64_t j = 0; j < n; ++j) sum += (mx == -INFINITY) ? 0.0 : std::exp(z[j] - mx);
    for (int64_t j = 0; j < n; ++j)
      y[static_cast<size_t>(r * n + j)] = mx == -INFINITY ? 0.0 : std::exp(z[j] - mx) / sum;
  }
  return y;
}

OPCHECK(softmax_forward, OddShapesMasksAndFullyMaskedRow) {
  for (const Shape& s : kRowShapes) {
    const int64_t n = s[1];
    Tensor x = random(s, 20 + n, -5.0f, 5.0f);
    // mask kinds: none, broadcast [N] (every third column -inf), full shape with a fully masked
    // row 0 and random finite penalties elsewhere.
    Tensor mrow = Tensor::zeros({n});
    for (int64_t j = 0; j < n; j += 3) mrow.f32()[j] = kNegInf;
    Tensor mfull = random(s, 30 + n, -2.0f, 0.0f);
    for (int64_t j = 0; j < n; ++j) mfull.f32()[j] = kNegInf;
    // causal [rows, n]: row r sees keys 0..r, the rest is a trailing -inf run (which the vector
    // kernel skips and must still write as zeros)
    Tensor mcausal = Tensor::zeros(s);
    for (int64_t r = 0; r < s[0]; ++r)
      for (int64_t j = r + 1; j < n; ++j) mcausal.f32()[r * n + j] = kNegInf;
    for (int kind = 0; kind < 4; ++kind) {
      Tensor none;
      const Tensor& mask = kind == 0 ? none : kind == 1 ? mrow : kind == 2 ? mfull : mcausal;
      Tensor ref = run_guarded(Isa::Scalar, s, [&](Tensor& y) { k::softmax_forward(x, mask, y); });
      Tensor vec = run_guarded(vec_isa(), s, [&](Tensor& y) { k::softmax_forward(x, mask, y); });
      Tensor want = from_double(s, softmax_naive(x, kind ? &mask : nullptr, n));
      // probabilities <= 1: reference 1e-7 abs / 1e-6 rel, avx2 (fp32 sums, exp256) 1e-7 / 1e-5
      compare3(ref, vec, want, 1e-7, 1e-6, 1e-7, 1e-5,
               "softmax_forward mask=" + std::to_string(kind) + " " + tag(s, vec_isa()));
      // Rows sum to 1, except a fully masked row, which is all zeros (not NaN).
      for (int64_t r = 0; r < s[0]; ++r) {
        double sum = 0;
        for (int64_t j = 0; j < n; ++j) sum += vec.f32()[r * n + j];
        bool all_masked = (kind == 2 && r == 0) || (kind == 1 && n == 1);
        EXPECT_NEAR(sum, all_masked ? 0.0 : 1.0, 1e-5) << "row " << r << " mask " << kind << " " << tag(s, vec_isa());
      }
    }
    // Shift invariance / stability: x + 80 overflows exp without the max subtraction.
    Tensor xs = x.clone();
    for (int64_t i = 0; i < xs.numel(); ++i) xs.f32()[i] += 80.0f;
    Tensor none;
    Tensor ys = run_guarded(vec_isa(), s, [&](Tensor& y) { k::softmax_forward(xs, none, y); });
    expect_close(ys, from_double(s, softmax_naive(x, nullptr, n)), 1e-6, 1e-4, "softmax_forward shifted " + tag(s, vec_isa()));
  }
  Tensor x = random({3, 5}, 1), y = Tensor::empty({3, 5}), bad = Tensor::zeros({4});
  expect_error([&] { k::softmax_forward(x, bad, y); }, {"[softmax_forward]", "F32[4]", "F32[3, 5]"});
}

OPCHECK(softmax_backward, OddShapesAndFiniteDifferences) {
  for (const Shape& s : kRowShapes) {
    const int64_t n = s[1];
    Tensor x = random(s, 40 + n, -3.0f, 3.0f), dy = random(s, 50 + n), y = Tensor::empty(s), none;
    k::softmax_forward(x, none, y);
    Tensor ref = run_guarded(Isa::Scalar, s, [&](Tensor& dx) { k::softmax_backward(y, dy, dx); });
    Tensor vec = run_guarded(vec_isa(), s, [&](Tensor& dx) { k::softmax_backward(y, dy, dx); });
    std::vector<double> w(static_cast<size_t>(x.numel()));
    for (int64_t r = 0; r < s[0]; ++r) {
      double d = 0;
      for (int64_t j = 0; j < n; ++j) d += static_cast<double>(dy.f32()[r * n + j]) * y.f32()[r * n + j];
      for (int64_t j = 0; j < n; ++j)
        w[r * n + j] = y.f32()[r * n + j] * (dy.f32()[r * n + j] - d);
    }
    compare3(ref, vec, from_double(s, w), 1e-7, 1e-5, 1e-7, 1e-5, "softmax_backward " + tag(s, vec_isa()));
  }
  // Finite differences through softmax_forward with a broadcast mask (eps 1e-2): rel < 2e-3.
  for (const Shape& s : kGradShapes) {
    Tensor x = random(s, 60, -2.0f, 2.0f), r = random(s, 61), mask = random({s[1]}, 62, -1.0f, 0.0f);
    Tensor y = Tensor::empty(s), dx = Tensor::empty(s);
    k::softmax_forward(x, mask, y);
    k::softmax_backward(y, r, dx);
    auto num = fd_of(x, s, [&](Tensor& out) { k::softmax_forward(x, mask, out); }, r, 1e-2f);
    if (s[1] == 1) {  // softmax of one element is constant 1: the gradient is exactly 0
      for (int64_t i = 0; i < dx.numel(); ++i) EXPECT_EQ(dx.f32()[i], 0.0f);
      continue;
    }
    expect_grad(dx, num, 2e-3, "softmax_backward fd " + tag(s, vec_isa()));
  }
}

// ================================================================================================
// LayerNorm / RMSNorm
// ================================================================================================

struct NormNaive {
  std::vector<double> y, mean, rstd;
};
NormNaive layernorm_naive(const Tensor& x, const Tensor& w, const Tensor* b, float eps, int64_t c) {
  const int64_t rows = x.numel() / c;
  NormNaive o;
  o.y.resize(static_cast<size_t>(x.numel()));
  for (int64_t r = 0; r < rows; ++r) {
    double m = 0, v = 0;
    for (int64_t j = 0; j < c; ++j) m += x.f32()[r * c + j];
    m /= c;
    for (int64_t j = 0; j < c; ++j) v += (x.f32()[r * c + j] - m) * (x.f32()[r * c + j] - m);
    double s = 1.0 / std::sqrt(v / c + eps);
    for (int64_t j = 0; j < c; ++j)
      o.y[r * c + j] = (x.f32()[r * c + j] - m) * s * w.f32()[j] + (b ? b->f32()[j] : 0.0);
    o.mean.push_back(m);
    o.rstd.push_back(s);
  }
  return o;
}

OPCHECK(layernorm_forward, OddShapes) {
  for (const Shape& s : kRowShapes) {
    const int64_t rows = s[0], c = s[1];
    for (int variant = 0; variant < 3; ++variant) {
      // variant 2: rows offset by +100 (|mean| >> std) to catch one-pass variance formulas.
      Tensor x = random(s, 70 + c, -2.0f, 2.0f);
      if (variant == 2)
        for (int64_t i = 0; i < x.numel(); ++i) x.f32()[i] += 100.0f;
      Tensor w = random({c}, 71, 0.5f, 1.5f), b = random({c}, 72), nob;
      const Tensor& bias = variant == 1 ? nob : b;
      const float eps = 1e-5f;
      Tensor means[2], rstds[2], ys[2];
      Isa isas[2] = {Isa::Scalar, vec_isa()};
      for (int i = 0; i < 2; ++i) {
        IsaScope scope(isas[i]);
        Guarded y(s), mean({rows}), rstd({rows});
        k::layernorm_forward(x, w, bias, eps, y.t(), mean.t(), rstd.t());
        EXPECT_TRUE(y.guards_intact() && mean.guards_intact() && rstd.guards_intact()) << tag(s, isas[i]);
        ys[i] = y.t().clone();
        means[i] = mean.t().clone();
        rstds[i] = rstd.t().clone();
      }
      NormNaive nv = layernorm_naive(x, w, variant == 1 ? nullptr : &b, eps, c);
      std::string what = "layernorm_forward v" + std::to_string(variant) + " " + tag(s, vec_isa());
      // y is O(1): 1e-5 absolute (fp32 centring of values near 100 costs ~1e-5 relative to std)
      double atol = variant == 2 ? 1e-4 : 1e-5;
      compare3(ys[0], ys[1], from_double(s, nv.y), atol, 1e-5, atol, 1e-5, what + " y");
      compare3(means[0], means[1], from_double({rows}, nv.mean), 1e-5, 1e-6, 1e-5, 1e-6, what + " mean");
      compare3(rstds[0], rstds[1], from_double({rows}, nv.rstd), 0, 1e-4, 0, 1e-4, what + " rstd");
    }
  }
  Tensor x = random({3, 5}, 1), w = random({4}, 2), nob, y = Tensor::empty({3, 5}), m = Tensor::empty({3}),
         r = Tensor::empty({3});
  expect_error([&] { k::layernorm_forward(x, w, nob, 1e-5f, y, m, r); }, {"[layernorm_forward]", "F32[4]", "F32[3, 5]"});
  Tensor w5 = random({5}, 3), m2 = Tensor::empty({2});
  expect_error([&] { k::layernorm_forward(x, w5, nob, 1e-5f, y, m2, r); }, {"[layernorm_forward]", "F32[2]", "one per row"});
}

// Runs a norm backward under isa with guarded dx and (pre-filled) dw/db; returns {dx, dw, db}.
std::vector<Tensor> run_norm_backward(Isa isa, const Shape& s, const Tensor& dw0, const Tensor& db0, bool frozen,
                                      const std::function<void(Tensor&, Tensor&, Tensor&)>& fn) {
  IsaScope scope(isa);
  Guarded dx(s), dw({s[1]}), db({s[1]});
  dw.t().copy_from(dw0);
  db.t().copy_from(db0);
  Tensor none1, none2;
  fn(dx.t(), frozen ? none1 : dw.t(), frozen ? none2 : db.t());
  EXPECT_TRUE(dx.guards_intact() && dw.guards_intact() && db.guards_intact()) << tag(s, isa);
  return {dx.t().clone(), dw.t().clone(), db.t().clone()};
}

OPCHECK(layernorm_backward, OddShapesAndFiniteDifferences) {
  const float eps = 1e-5f;
  for (const Shape& s : kRowShapes) {
    const int64_t rows = s[0], c = s[1];
    Tensor x = random(s, 80 + c, -2.0f, 2.0f), w = random({c}, 81, 0.5f, 1.5f), b = random({c}, 82);
    Tensor dy = random(s, 83), y = Tensor::empty(s), mean = Tensor::empty({rows}), rstd = Tensor::empty({rows});
    k::layernorm_forward(x, w, b, eps, y, mean, rstd);
    Tensor dw0 = random({c}, 84), db0 = random({c}, 85);
    auto fn = [&](Tensor& dx, Tensor& dw, Tensor& db) { k::layernorm_backward(dy, x, w, mean, rstd, dx, dw, db); };
    auto ref = run_norm_backward(Isa::Scalar, s, dw0, db0, false, fn);
    auto vec = run_norm_backward(vec_isa(), s, dw0, db0, false, fn);
    // naive in double from the saved mean/rstd
    std::vector<double> wdx(static_cast<size_t>(x.numel())), wdw(c), wdb(c);
    for (int64_t j = 0; j < c; ++j) {
      wdw[j] = dw0.f32()[j];
      wdb[j] = db0.f32()[j];
    }
    for (int64_t r = 0; r < rows; ++r) {
      double a = 0, bb = 0;
      for (int64_t j = 0; j < c; ++j) {
        double norm = (x.f32()[r * c + j] - static_cast<double>(mean.f32()[r])) * rstd.f32()[r];
        double dn = static_cast<double>(dy.f32()[r * c + j]) * w.f32()[j];
        a += dn;
        bb += dn * norm;
        wdw[j] += dy.f32()[r * c + j] * norm;
        wdb[j] += dy.f32()[r * c + j];
      }
      a /= c;
      bb /= c;
      for (int64_t j = 0; j < c; ++j) {
        double norm = (x.f32()[r * c + j] - static_cast<double>(mean.f32()[r])) * rstd.f32()[r];
        wdx[r * c + j] = rstd.f32()[r] * (static_cast<double>(dy.f32()[r * c + j]) * w.f32()[j] - a - norm * bb);
      }
    }
    std::string what = "layernorm_backward " + tag(s, vec_isa());
    // dx ~ rstd * O(1): 1e-5 abs; dw/db are sums over rows: 1e-6 * rows abs
    double acc = 1e-6 * static_cast<double>(rows) + 1e-6;
    compare3(ref[0], vec[0], from_double(s, wdx), 1e-5, 1e-5, 1e-5, 1e-5, what + " dx");
    compare3(ref[1], vec[1], from_double({c}, wdw), acc, 1e-5, acc, 1e-5, what + " dw");
    compare3(ref[2], vec[2], from_double({c}, wdb), acc, 1e-5, acc, 1e-5, what + " db");
    // Frozen parameters: dw/db undefined, dx unchanged, pre-filled buffers untouched.
    auto frozen = run_norm_backward(vec_isa(), s, dw0, db0, true, fn);
    expect_close(frozen[0], vec[0], 0, 0, what + " dx with frozen w/b");
    expect_close(frozen[1], dw0, 0, 0, what + " frozen dw untouched");
  }
  // Finite differences through the forward (eps 1e-2 on x in [-2, 2]): relative error < 5e-3.
  for (const Shape& s : {Shape{1, 5}, Shape{3, 7}, Shape{2, 13}}) {
    const int64_t rows = s[0], c = s[1];
    Tensor x = random(s, 90, -2.0f, 2.0f), w = random({c}, 91, 0.5f, 1.5f), b = random({c}, 92), r = random(s, 93);
    Tensor y = Tensor::empty(s), mean = Tensor::empty({rows}), rstd = Tensor::empty({rows});
    k::layernorm_forward(x, w, b, 1e-5f, y, mean, rstd);
    Tensor dx = Tensor::empty(s), dw = Tensor::zeros({c}), db = Tensor::zeros({c});
    k::layernorm_backward(r, x, w, mean, rstd, dx, dw, db);
    Tensor m2 = Tensor::empty({rows}), s2 = Tensor::empty({rows});
    auto fwd = [&](Tensor& out) { k::layernorm_forward(x, w, b, 1e-5f, out, m2, s2); };
    expect_grad(dx, fd_of(x, s, fwd, r, 1e-2f), 5e-3, "layernorm_backward fd dx " + tag(s, vec_isa()));
    expect_grad(dw, fd_of(w, s, fwd, r, 1e-2f), 5e-3, "layernorm_backward fd dw " + tag(s, vec_isa()));
    expect_grad(db, fd_of(b, s, fwd, r, 1e-2f), 5e-3, "layernorm_backward fd db " + tag(s, vec_isa()));
  }
}

OPCHECK(rmsnorm_forward, OddShapes) {
  for (const Shape& s : kRowShapes) {
    const int64_t rows = s[0], c = s[1];
    Tensor x = random(s, 100 + c, -2.0f, 2.0f), w = random({c}, 101, 0.5f, 1.5f);
    const float eps = 1e-6f;
    Tensor ys[2], rs[2];
    Isa isas[2] = {Isa::Scalar, vec_isa()};
    for (int i = 0; i < 2; ++i) {
      IsaScope scope(isas[i]);
      Guarded y(s), rstd({rows});
      k::rmsnorm_forward(x, w, eps, y.t(), rstd.t());
      EXPECT_TRUE(y.guards_intact() && rstd.guards_intact()) << tag(s, isas[i]);
      ys[i] = y.t().clone();
      rs[i] = rstd.t().clone();
    }
    std::vector<double> wy(static_cast<size_t>(x.numel())), wr(rows);
    for (int64_t r = 0; r < rows; ++r) {
      double ss = 0;
      for (int64_t j = 0; j < c; ++j) ss += static_cast<double>(x.f32()[r * c + j]) * x.f32()[r * c + j];
      wr[r] = 1.0 / std::sqrt(ss / c + eps);
      for (int64_t j = 0; j < c; ++j) wy[r * c + j] = x.f32()[r * c + j] * wr[r] * w.f32()[j];
    }
    std::string what = "rmsnorm_forward " + tag(s, vec_isa());
    compare3(ys[0], ys[1], from_double(s, wy), 1e-5, 1e-5, 1e-5, 1e-5, what + " y");
    compare3(rs[0], rs[1], from_double({rows}, wr), 0, 1e-5, 0, 1e-5, what + " rstd");
  }
  Tensor x = random({3, 5}, 1), w = random({5}, 2), y = Tensor::empty({3, 5}), r = Tensor::empty({5});
  expect_error([&] { k::rmsnorm_forward(x, w, 1e-6f, y, r); }, {"[rmsnorm_forward]", "F32[5]", "F32[3, 5]"});
}

OPCHECK(rmsnorm_backward, OddShapesAndFiniteDifferences) {
  for (const Shape& s : kRowShapes) {
    const int64_t rows = s[0], c = s[1];
    Tensor x = random(s, 110 + c, -2.0f, 2.0f), w = random({c}, 111, 0.5f, 1.5f), dy = random(s, 112);
    Tensor y = Tensor::empty(s), rstd = Tensor::empty({rows});
    k::rmsnorm_forward(x, w, 1e-6f, y, rstd);
    Tensor dw0 = random({c}, 113), db0 = Tensor::zeros({c});
    auto fn = [&](Tensor& dx, Tensor& dw, Tensor&) { k::rmsnorm_backward(dy, x, w, rstd, dx, dw); };
    auto ref = run_norm_backward(Isa::Scalar, s, dw0, db0, false, fn);
    auto vec = run_norm_backward(vec_isa(), s, dw0, db0, false, fn);
    std::vector<double> wdx(static_cast<size_t>(x.numel())), wdw(c);
    for (int64_t j = 0; j < c; ++j) wdw[j] = dw0.f32()[j];
    for (int64_t r = 0; r < rows; ++r) {
      const double rs = rstd.f32()[r];
      double bb = 0;
      for (int64_t j = 0; j < c; ++j)
        bb += static_cast<double>(dy.f32()[r * c + j]) * w.f32()[j] * x.f32()[r * c + j] * rs;
      bb /= c;
      for (int64_t j = 0; j < c; ++j) {
        double norm = x.f32()[r * c + j] * rs;
        wdx[r * c + j] = rs * (static_cast<double>(dy.f32()[r * c + j]) * w.f32()[j] - norm * bb);
        wdw[j] += dy.f32()[r * c + j] * norm;
      }
    }
    std::string what = "rmsnorm_backward " + tag(s, vec_isa());
    double acc = 1e-6 * static_cast<double>(rows) + 1e-6;
    compare3(ref[0], vec[0], from_double(s, wdx), 1e-5, 1e-5, 1e-5, 1e-5, what + " dx");
    compare3(ref[1], vec[1], from_double({c}, wdw), acc, 1e-5, acc, 1e-5, what + " dw");
    auto frozen = run_norm_backward(vec_isa(), s, dw0, db0, true, fn);
    expect_close(frozen[0], vec[0], 0, 0, what + " dx with frozen w");
    expect_close(frozen[1], dw0, 0, 0, what + " frozen dw untouched");
  }
  for (const Shape& s : {Shape{1, 5}, Shape{3, 7}, Shape{2, 13}}) {
    const int64_t rows = s[0], c = s[1];
    Tensor x = random(s, 120, -2.0f, 2.0f), w = random({c}, 121, 0.5f, 1.5f), r = random(s, 122);
    Tensor y = Tensor::empty(s), rstd = Tensor::empty({rows});
    k::rmsnorm_forward(x, w, 1e-6f, y, rstd);
    Tensor dx = Tensor::empty(s), dw = Tensor::zeros({c});
    k::rmsnorm_backward(r, x, w, rstd, dx, dw);
    Tensor s2 = Tensor::empty({rows});
    auto fwd = [&](Tensor& out) { k::rmsnorm_forward(x, w, 1e-6f, out, s2); };
    expect_grad(dx, fd_of(x, s, fwd, r, 1e-2f), 5e-3, "rmsnorm_backward fd dx " + tag(s, vec_isa()));
    expect_grad(dw, fd_of(w, s, fwd, r, 1e-2f), 5e-3, "rmsnorm_backward fd dw " + tag(s, vec_isa()));
  }
}

// ================================================================================================
// RoPE
// ================================================================================================

// Explicit rotation: for each token, y = R x with R block-diagonal 2x2 rotations on the pairs of
// the style, angle pos * theta^(-2i/D), all in double.
std::vector<double> rope_naive(const Tensor& x, const std::vector<int32_t>& pos_bt, float theta,
                               k::RopeStyle style, double sign) {
  const int64_t bt = x.dim(0) * x.dim(1), h = x.dim(2), d = x.dim(3), half = d / 2;
  std::vector<double> y(static_cast<size_t>(x.numel()));
  for (int64_t i = 0; i < bt; ++i) {
    // R as a dense D x D matrix (explicit, not the pairwise shortcut)
    std::vector<double> R(static_cast<size_t>(d * d), 0.0);
    for (int64_t p = 0; p < half; ++p) {
      double ang = sign * pos_bt[i] * std::pow(static_cast<double>(theta), -2.0 * p / d);
      int64_t ia = style == k::RopeStyle::HalfRotate ? p : 2 * p;
      int64_t ib = style == k::RopeStyle::HalfRotate ? p + half : 2 * p + 1;
      R[ia * d + ia] = std::cos(ang);
      R[ia * d + ib] = -std::sin(ang);
      R[ib * d + ia] = std::sin(ang);
      R[ib * d + ib] = std::cos(ang);
    }
    for (int64_t hh = 0; hh < h; ++hh) {
      const float* xv = x.f32() + (i * h + hh) * d;
      for (int64_t a = 0; a < d; ++a) {
        double s = 0;
        for (int64_t b = 0; b < d; ++b) s += R[a * d + b] * xv[b];
        y[static_cast<size_t>((i * h + hh) * d + a)] = s;
      }
    }
  }
  return y;
}

struct RopeCase {
  Shape shape;  // [B, T, H, D]
  bool per_batch;
};
const std::vector<RopeCase> kRopeCases = {{{1, 1, 1, 2}, false},   {{1, 3, 2, 6}, false},
                                          {{2, 5, 3, 8}, true},    {{1, 7, 1, 14}, false},
                                          {{2, 4, 2, 64}, true},   {{1, 3, 5, 130}, false},
                                          {{2, 33, 4, 64}, false}};

Tensor rope_positions(const RopeCase& rc, std::vector<int32_t>* pos_bt) {
  const int64_t b = rc.shape[0], t = rc.shape[1];
  std::vector<int32_t> p;
  if (rc.per_batch) {
    for (int64_t i = 0; i < b * t; ++i) p.push_back(static_cast<int32_t>((i * 37) % 1000));  // arbitrary, with jumps
    *pos_bt = p;
    return Tensor::from_ints({b, t}, p);
  }
  for (int64_t i = 0; i < t; ++i) p.push_back(static_cast<int32_t>(3 + i));
  pos_bt->clear();
  for (int64_t bb = 0; bb < b; ++bb) pos_bt->insert(pos_bt->end(), p.begin(), p.end());
  return Tensor::from_ints({t}, p);
}

void check_rope(bool backward) {
  const char* name = backward ? "rope_backward" : "rope_forward";
  for (const RopeCase& rc : kRopeCases)
    for (k::RopeStyle style : {k::RopeStyle::HalfRotate, k::RopeStyle::Adjacent})
      for (float theta : {10000.0f, 1e6f}) {
        std::vector<int32_t> pos_bt;
        Tensor pos = rope_positions(rc, &pos_bt);
        Tensor x = random(rc.shape, 130 + rc.shape[3]);
        auto fn = [&](Tensor& y) {
          if (backward) k::rope_backward(y, pos, theta, style);
          else k::rope_forward(y, pos, theta, style);
        };
        Tensor ref = run_guarded(Isa::Scalar, rc.shape, fn, &x);
        Tensor vec = run_guarded(vec_isa(), rc.shape, fn, &x);
        Tensor want = from_double(rc.shape, rope_naive(x, pos_bt, theta, style, backward ? -1.0 : 1.0));
        // Angles up to ~1000 rad: cos/sin are computed in double and rounded to fp32 (6e-8), the
        // rotation is two fp32 products: 1e-6 absolute on |x| <= 1.
        compare3(ref, vec, want, 1e-6, 1e-5, 1e-6, 1e-5,
                 std::string(name) + (style == k::RopeStyle::Adjacent ? " adjacent " : " half ") +
                     std::to_string(theta) + " " + tag(rc.shape, vec_isa()));
      }
}

OPCHECK(rope_forward, VsExplicitRotationMatrix) { check_rope(false); }
OPCHECK(rope_backward, VsExplicitRotationMatrixInverse) { check_rope(true); }

OPCHECK(rope_forward, HalfRotateIsAdjacentUnderPermutation) {
  // Adjacent layout index 2i holds half-layout index i, 2i+1 holds i + D/2. Rotating in either
  // style and mapping back must agree: the two styles are the same rotation in different bases
  // (this is the Q/K row permutation between HF and GGUF checkpoints).
  for (const RopeCase& rc : kRopeCases) {
    const int64_t d = rc.shape[3], half = d / 2, rows = shape_numel(rc.shape) / d;
    std::vector<int32_t> pos_bt;
    Tensor pos = rope_positions(rc, &pos_bt);
    Tensor xh = random(rc.shape, 140 + d), xa = Tensor::empty(rc.shape);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = 0; i < half; ++i) {
        xa.f32()[r * d + 2 * i] = xh.f32()[r * d + i];
        xa.f32()[r * d + 2 * i + 1] = xh.f32()[r * d + i + half];
      }
    for (Isa isa : {Isa::Scalar, vec_isa()}) {
      IsaScope scope(isa);
      Tensor yh = xh.clone(), ya = xa.clone();
      k::rope_forward(yh, pos, 10000.0f, k::RopeStyle::HalfRotate);
      k::rope_forward(ya, pos, 10000.0f, k::RopeStyle::Adjacent);
      Tensor back = Tensor::empty(rc.shape);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t i = 0; i < half; ++i) {
          back.f32()[r * d + i] = ya.f32()[r * d + 2 * i];
          back.f32()[r * d + i + half] = ya.f32()[r * d + 2 * i + 1];
        }
      // same products, possibly fused differently: 1 ulp of O(1) values
      expect_close(back, yh, 2e-7, 1e-6, "rope permutation " + tag(rc.shape, isa));
      // and the permutation is not trivially satisfied: the rotation moved the values
      if (d > 2 || pos_bt[0] != 0) {
        EXPECT_GT(rel_error(to_double(yh), to_double(xh)), 1e-3);
      }
    }
  }
}

// The table path (RopeTable: any inverse frequencies and a factor on cos/sin, cached rows)
// against the explicit rotation with those frequencies, in double.
std::vector<double> rope_naive_freqs(const Tensor& x, const std::vector<int32_t>& pos_bt,
                                     const std::vector<double>& f, double m, k::RopeStyle style,
                                     double sign) {
  const int64_t bt = x.dim(0) * x.dim(1), h = x.dim(2), d = x.dim(3), half = d / 2;
  std::vector<double> y(static_cast<size_t>(x.numel()));
  for (int64_t i = 0; i < bt; ++i)
    for (int64_t hh = 0; hh < h; ++hh) {
      const float* xv = x.f32() + (i * h + hh) * d;
      double* yv = y.data() + (i * h + hh) * d;
      for (int64_t p = 0; p < half; ++p) {
        const double ang = pos_bt[i] * f[p];
        const double c = m * std::cos(ang), sn = sign * m * std::sin(ang);
        int64_t ia = style == k::RopeStyle::HalfRotate ? p : 2 * p;
        int64_t ib = style == k::RopeStyle::HalfRotate ? p + half : 2 * p + 1;
        yv[ia] = c * xv[ia] - sn * xv[ib];
        yv[ib] = sn * xv[ia] + c * xv[ib];
      }
    }
  return y;
}

OPCHECK(rope_forward, TableEqualsThetaPathAndScaledFrequencies) {
  for (const RopeCase& rc : kRopeCases)
    for (k::RopeStyle style : {k::RopeStyle::HalfRotate, k::RopeStyle::Adjacent}) {
      const int64_t d = rc.shape[3];
      std::vector<int32_t> pos_bt;
      Tensor pos = rope_positions(rc, &pos_bt);
      Tensor x = random(rc.shape, 160 + d);
      // from_theta: the very tables of the theta overload, so bitwise equal results
      k::RopeTable t = k::RopeTable::from_theta(10000.0f, d);
      t.ensure(1000);
      for (Isa isa : {Isa::Scalar, vec_isa()}) {
        IsaScope scope(isa);
        for (bool back : {false, true}) {
          Tensor a = x.clone(), b = x.clone();
          if (back) k::rope_backward(a, pos, 10000.0f, style), k::rope_backward(b, pos, t, style);
          else k::rope_forward(a, pos, 10000.0f, style), k::rope_forward(b, pos, t, style);
          EXPECT_EQ(0, std::memcmp(a.raw(), b.raw(), a.nbytes())) << "table vs theta " << tag(rc.shape, isa);
        }
      }
      // arbitrary frequencies (as a scaling makes them) and YaRN's factor on cos and sin
      std::vector<double> f(static_cast<size_t>(d / 2));
      for (int64_t i = 0; i < d / 2; ++i) f[i] = std::pow(5e5, -2.0 * i / d) / (1.0 + 0.37 * i);
      const double m = 1.0693;
      k::RopeTable ts(f, m);
      ts.ensure(1);
      ts.ensure(1000);  // grows
      for (bool back : {false, true}) {
        auto fn = [&](Tensor& y) {
          if (back) k::rope_backward(y, pos, ts, style);
          else k::rope_forward(y, pos, ts, style);
        };
        Tensor ref = run_guarded(Isa::Scalar, rc.shape, fn, &x);
        Tensor vec = run_guarded(vec_isa(), rc.shape, fn, &x);
        Tensor want = from_double(rc.shape, rope_naive_freqs(x, pos_bt, f, m, style, back ? -1.0 : 1.0));
        compare3(ref, vec, want, 2e-6, 1e-5, 2e-6, 1e-5, std::string("rope table ") + (back ? "backward " : "forward ") + tag(rc.shape, vec_isa()));
      }
      // backward is the transpose: <R x, r> = <x, Rᵀ r> (not the inverse once m != 1)
      if (shape_numel(rc.shape) <= 2000) {
        Tensor r = random(rc.shape, 161), g = r.clone();
        k::rope_backward(g, pos, ts, style);
        auto num = fd_of(x, rc.shape, [&](Tensor& out) {
          out.copy_from(x);
          k::rope_forward(out, pos, ts, style);
        }, r, 1e-2f);
        expect_grad(g, num, 1e-4, "rope table backward fd " + tag(rc.shape, vec_isa()));
      }
    }
  k::RopeTable t = k::RopeTable::from_theta(1e4f, 4);
  t.ensure(3);
  Tensor x = random({1, 2, 1, 4}, 1), far = Tensor::from_ints({2}, {1, 3});
  expect_error([&] { k::rope_forward(x, far, t, k::RopeStyle::HalfRotate); }, {"[rope_forward]", "position 3", "[0, 3)"});
  Tensor x6 = random({1, 2, 1, 6}, 1), ok = Tensor::from_ints({2}, {0, 1});
  expect_error([&] { k::rope_backward(x6, ok, t, k::RopeStyle::HalfRotate); }, {"[rope_backward]", "F32[1, 2, 1, 6]", "D = 4"});
  expect_error([&] { k::RopeTable({1.0, -2.0}, 1.0); }, {"[RopeTable]", "positive"});
}

OPCHECK(rope_backward, InverseAndFiniteDifferences) {
  for (const RopeCase& rc : kRopeCases) {
    std::vector<int32_t> pos_bt;
    Tensor pos = rope_positions(rc, &pos_bt);
    for (k::RopeStyle style : {k::RopeStyle::HalfRotate, k::RopeStyle::Adjacent}) {
      // backward(forward(x)) = x: R is orthogonal
      Tensor x = random(rc.shape, 150), y = x.clone();
      k::rope_forward(y, pos, 10000.0f, style);
      k::rope_backward(y, pos, 10000.0f, style);
      expect_close(y, x, 1e-6, 1e-5, "rope forward then backward " + tag(rc.shape, vec_isa()));
      if (shape_numel(rc.shape) > 2000) continue;  // finite differences on the small cases
      // d/dx sum(rope(x) * r) = R^T r = rope_backward(r); linear map: tol 1e-4 (eps 1e-2)
      Tensor r = random(rc.shape, 151), g = r.clone();
      k::rope_backward(g, pos, 10000.0f, style);
      auto num = fd_of(x, rc.shape, [&](Tensor& out) {
        out.copy_from(x);
        k::rope_forward(out, pos, 10000.0f, style);
      }, r, 1e-2f);
      expect_grad(g, num, 1e-4, "rope_backward fd " + tag(rc.shape, vec_isa()));
    }
  }
  Tensor x = random({1, 2, 1, 5}, 1), pos = Tensor::from_ints({2}, {0, 1});
  expect_error([&] { k::rope_forward(x, pos, 1e4f, k::RopeStyle::HalfRotate); }, {"[rope_forward]", "F32[1, 2, 1, 5]", "even"});
  Tensor x2 = random({1, 2, 1, 4}, 1), pos3 = Tensor::from_ints({3}, {0, 1, 2});
  expect_error([&] { k::rope_backward(x2, pos3, 1e4f, k::RopeStyle::Adjacent); }, {"[rope_backward]", "I32[3]", "F32[1, 2, 1, 4]"});
  Tensor posf = Tensor::zeros({2});
  expect_error([&] { k::rope_forward(x2, posf, 1e4f, k::RopeStyle::Adjacent); }, {"[rope_forward]", "F32[2]", "expected I32"});
}

// ================================================================================================
// Cross-entropy
// ================================================================================================

OPCHECK(cross_entropy_forward, OddVocabIgnoreIndex) {
  const int32_t ignore = -100;
  for (int64_t v : {1, 5, 13, 129, 1031, 4099}) {
    const int64_t n = 7;
    Tensor logits = random({n, v}, 160 + v, -8.0f, 8.0f);
    std::vector<int32_t> t;
    for (int64_t i = 0; i < n; ++i) t.push_back(i % 3 == 1 ? ignore : static_cast<int32_t>((i * 7919) % v));
    Tensor targets = Tensor::from_ints({n}, t);
    float losses[2];
    Tensor probs[2];
    Isa isas[2] = {Isa::Scalar, vec_isa()};
    for (int i = 0; i < 2; ++i)
      probs[i] = run_guarded(isas[i], {n, v}, [&](Tensor& p) {
        losses[i] = k::cross_entropy_forward(logits, targets, ignore, p);
      });
    // naive: mean over counted rows of log-sum-exp - logit[target], in double
    double total = 0;
    int count = 0;
    for (int64_t r = 0; r < n; ++r) {
      if (t[r] == ignore) continue;
      double mx = -INFINITY, s = 0;
      for (int64_t j = 0; j < v; ++j) mx = std::max<double>(mx, logits.f32()[r * v + j]);
      for (int64_t j = 0; j < v; ++j) s += std::exp(logits.f32()[r * v + j] - mx);
      total += std::log(s) + mx - logits.f32()[r * v + t[r]];
      ++count;
    }
    const double want = total / count;
    EXPECT_NEAR(losses[0], want, 1e-5 * std::max(1.0, std::fabs(want))) << "reference loss V=" << v;
    EXPECT_NEAR(losses[1], want, 1e-5 * std::max(1.0, std::fabs(want))) << "dispatched loss V=" << v;
    Tensor want_p = from_double({n, v}, softmax_naive(logits, nullptr, v));
    compare3(probs[0], probs[1], want_p, 1e-7, 1e-6, 1e-7, 1e-5, "cross_entropy_forward probs V=" + std::to_string(v));
  }
  // All rows ignored: loss 0; large logits stay finite.
  Tensor logits = random({3, 5}, 1, -1.0f, 1.0f), p = Tensor::empty({3, 5});
  EXPECT_EQ(k::cross_entropy_forward(logits, Tensor::from_ints({3}, {-1, -1, -1}), -1, p), 0.0f);
  for (int64_t i = 0; i < logits.numel(); ++i) logits.f32()[i] *= 200.0f;
  float big = k::cross_entropy_forward(logits, Tensor::from_ints({3}, {0, 1, 2}), -100, p);
  EXPECT_TRUE(std::isfinite(big));
  expect_finite(p, "cross_entropy probs for logits of size 200");
  expect_error([&] { k::cross_entropy_forward(logits, Tensor::from_ints({3}, {0, 5, -100}), -100, p); },
               {"[cross_entropy_forward]", "targets[1] = 5", "F32[3, 5]"});
  expect_error([&] { k::cross_entropy_forward(logits, Tensor::from_ints({2}, {0, 1}), -100, p); },
               {"[cross_entropy_forward]", "I32[2]", "F32[3, 5]"});
}

OPCHECK(cross_entropy_backward, OddVocabAndFiniteDifferences) {
  const int32_t ignore = -100;
  for (int64_t v : {1, 5, 13, 129, 1031}) {
    const int64_t n = 6;
    Tensor logits = random({n, v}, 170 + v, -4.0f, 4.0f), probs = Tensor::empty({n, v});
    std::vector<int32_t> t;
    for (int64_t i = 0; i < n; ++i) t.push_back(i == 2 ? ignore : static_cast<int32_t>((i * 31) % v));
    Tensor targets = Tensor::from_ints({n}, t);
    k::cross_entropy_forward(logits, targets, ignore, probs);
    const float dloss = 2.5f;
    auto fn = [&](Tensor& d) { k::cross_entropy_backward(probs, targets, ignore, dloss, d); };
    Tensor ref = run_guarded(Isa::Scalar, {n, v}, fn), vec = run_guarded(vec_isa(), {n, v}, fn);
    std::vector<double> w(static_cast<size_t>(n * v), 0.0);
    for (int64_t r = 0; r < n; ++r) {
      if (t[r] == ignore) continue;
      for (int64_t j = 0; j < v; ++j)
        w[r * v + j] = dloss / 5.0 * (probs.f32()[r * v + j] - (j == t[r] ? 1.0 : 0.0));
    }
    compare3(ref, vec, from_double({n, v}, w), 1e-7, 1e-6, 1e-7, 1e-6, "cross_entropy_backward V=" + std::to_string(v));
    for (int64_t j = 0; j < v; ++j) EXPECT_EQ(vec.f32()[2 * v + j], 0.0f) << "ignored row not zero";
  }
  // Finite differences of the mean loss w.r.t. logits (eps 1e-2 on logits in [-2, 2]): < 2e-3.
  for (int64_t v : {1, 5, 13}) {
    const int64_t n = 4;
    Tensor logits = random({n, v}, 180 + v, -2.0f, 2.0f), probs = Tensor::empty({n, v});
    Tensor targets = Tensor::from_ints({n}, {0, static_cast<int32_t>(v - 1), ignore, static_cast<int32_t>(v / 2)});
    k::cross_entropy_forward(logits, targets, ignore, probs);
    Tensor d = Tensor::empty({n, v});
    k::cross_entropy_backward(probs, targets, ignore, 1.0f, d);
    Tensor p2 = Tensor::empty({n, v});
    auto num = finite_diff(logits, [&] { return static_cast<double>(k::cross_entropy_forward(logits, targets, ignore, p2)); }, 1e-2f);
    if (v == 1) {  // one class: the loss is constantly 0
      for (int64_t i = 0; i < d.numel(); ++i) EXPECT_EQ(d.f32()[i], 0.0f);
      continue;
    }
    expect_grad(d, num, 2e-3, "cross_entropy_backward fd V=" + std::to_string(v));
  }
  Tensor probs = Tensor::empty({3, 5}), d = Tensor::empty({3, 4});
  expect_error([&] { k::cross_entropy_backward(probs, Tensor::from_ints({3}, {0, 1, 2}), -100, 1.0f, d); },
               {"[cross_entropy_backward]", "F32[3, 5]", "F32[3, 4]"});
}

// ================================================================================================
// Embedding
// ================================================================================================

OPCHECK(embedding_forward, OddWidthsGather) {
  for (int64_t c : kSizes) {
    const int64_t vocab = 11;
    Tensor table = random({vocab, c}, 190 + c);
    std::vector<int32_t> id = {3, 0, 10, 3, 7, 7, 1};
    Tensor ids = Tensor::from_ints({7}, id);
    auto fn = [&](Tensor& out) { k::embedding_forward(table, ids, out); };
    Tensor ref = run_guarded(Isa::Scalar, {7, c}, fn), vec = run_guarded(vec_isa(), {7, c}, fn);
    std::vector<double> w;
    for (int32_t i : id)
      for (int64_t j = 0; j < c; ++j) w.push_back(table.f32()[i * c + j]);
    compare3(ref, vec, from_double({7, c}, w), 0, 0, 0, 0, "embedding_forward " + tag({7, c}, vec_isa()));
  }
  // ids of any shape, out [..., C]; above the parallel threshold
  Tensor table = random({50, 384}, 1), ids = Tensor::empty({4, 100}, DType::I32);
  for (int64_t i = 0; i < 400; ++i) ids.i32()[i] = static_cast<int32_t>((i * 13) % 50);
  Tensor out = Tensor::empty({4, 100, 384});
  k::embedding_forward(table, ids, out);
  for (int64_t i = 0; i < 400; ++i)
    ASSERT_EQ(out.f32()[i * 384 + 383], table.f32()[ids.i32()[i] * 384 + 383]) << "row " << i;
  Tensor o2 = Tensor::empty({2, 384});
  expect_error([&] { k::embedding_forward(table, Tensor::from_ints({2}, {1, 50}), o2); },
               {"[embedding_forward]", "ids[1] = 50", "F32[50, 384]"});
  expect_error([&] { k::embedding_forward(table, Tensor::from_ints({2}, {-1, 0}), o2); },
               {"[embedding_forward]", "ids[0] = -1"});
  expect_error([&] { k::embedding_forward(table, Tensor::from_ints({3}, {1, 2, 3}), o2); },
               {"[embedding_forward]", "F32[2, 384]", "I32[3]"});
}

OPCHECK(embedding_backward, ScatterAddRepeatedIdsAndFiniteDifferences) {
  for (int64_t c : kSizes) {
    const int64_t vocab = 9;
    std::vector<int32_t> id = {4, 4, 0, 8, 4, 2};
    Tensor ids = Tensor::from_ints({2, 3}, id), dout = random({2, 3, c}, 200 + c), d0 = random({vocab, c}, 201);
    auto fn = [&](Tensor& dt) { k::embedding_backward(dout, ids, dt); };
    Tensor ref = run_guarded(Isa::Scalar, {vocab, c}, fn, &d0), vec = run_guarded(vec_isa(), {vocab, c}, fn, &d0);
    std::vector<double> w = to_double(d0);  // accumulated into the existing gradient
    for (size_t i = 0; i < id.size(); ++i)
      for (int64_t j = 0; j < c; ++j) w[id[i] * c + j] += dout.f32()[i * c + j];
    compare3(ref, vec, from_double({vocab, c}, w), 1e-6, 1e-6, 1e-6, 1e-6, "embedding_backward " + tag({vocab, c}, vec_isa()));
  }
  // d/dtable sum(embedding(table, ids) * r): linear, tol 1e-4 (eps 1e-2).
  Tensor table = random({6, 5}, 210), ids = Tensor::from_ints({4}, {1, 5, 1, 0}), r = random({4, 5}, 211);
  Tensor dt = Tensor::zeros({6, 5});
  k::embedding_backward(r, ids, dt);
  auto num = fd_of(table, {4, 5}, [&](Tensor& out) { k::embedding_forward(table, ids, out); }, r, 1e-2f);
  expect_grad(dt, num, 1e-4, "embedding_backward fd");
  Tensor dout = random({2, 5}, 1);
  expect_error([&] { k::embedding_backward(dout, Tensor::from_ints({2}, {6, 0}), dt); },
               {"[embedding_backward]", "ids[0] = 6", "F32[6, 5]"});
}

// ================================================================================================
// Dispatch and threads
// ================================================================================================

TEST(kernels_dispatch, IsaSelectionAndNames) {
  EXPECT_TRUE(k::isa_supported(Isa::Scalar));
  EXPECT_STREQ(k::isa_name(Isa::Scalar), "scalar");
  EXPECT_STREQ(k::isa_name(Isa::Avx2), "avx2");
  // The default is the best supported ISA.
  EXPECT_EQ(k::isa_active(), vec_isa());
  {
    IsaScope s(Isa::Scalar);
    EXPECT_EQ(k::isa_active(), Isa::Scalar);
  }
  if (!have_avx2()) expect_error([] { k::isa_set(Isa::Avx2); }, {"[isa_set]", "avx2"});
  // op_names has no duplicates
  std::vector<std::string> names = k::op_names();
  std::sort(names.begin(), names.end());
  EXPECT_EQ(std::adjacent_find(names.begin(), names.end()), names.end());
}

TEST(kernels_dispatch, ThreadCountDoesNotChangeResults) {
  // The parallel paths (row chunks with per-chunk parameter-gradient buffers) must agree with a
  // single thread to fp32 accumulation-order noise.
  const int before = k::num_threads();
  Shape s = {256, 384};
  Tensor x = random(s, 1), w = random({384}, 2), dy = random(s, 3), y = Tensor::empty(s);
  Tensor mean = Tensor::empty({256}), rstd = Tensor::empty({256}), nob;
  k::layernorm_forward(x, w, nob, 1e-5f, y, mean, rstd);
  Tensor out[2];
  for (int t = 0; t < 2; ++t) {
    k::set_num_threads(t == 0 ? 1 : 2);
    EXPECT_EQ(k::num_threads(), t == 0 ? 1 : 2);
    Tensor dx = Tensor::empty(s), dw = Tensor::zeros({384}), db = Tensor::zeros({384});
    k::layernorm_backward(dy, x, w, mean, rstd, dx, dw, db);
    out[t] = dw;
  }
  k::set_num_threads(before);
  expect_close(out[1], out[0], 1e-5, 1e-5, "layernorm dw 1 vs 2 threads");
}

}  // namespace
