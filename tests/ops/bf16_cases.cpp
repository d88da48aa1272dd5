// Op-checker cases for --compute-dtype bf16: the fp32 -> BF16 conversion against the scalar
// rounding of the tensor layer, the oneDNN BF16 GEMM against a double-precision product of the
// BF16-rounded operands, and nn::Linear's BF16 products (forward x·Wᵀ, backward dy·W) against
// the same reference, with its cached BF16 weight copy made again after weights_changed().
//
// Tolerance of the GEMM: the products of two BF16 numbers (8-bit significands) are exact in
// fp32, so what remains is the fp32 summation over k terms, |error| <= k · u · Σ|a_p b_p|
// (u = 2^-24, any summation order; Higham, Accuracy and Stability, 2nd ed., eq. 3.5). We allow
// twice that bound element by element, plus the rounding of the fp32 result itself (u · |c|). A
// product from unrounded fp32 operands misses it by ~2^-9 relative, far outside: the cases would
// catch a GEMM that skipped the rounding of either operand or accumulated in BF16.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "lorafit/kernels.h"
#include "lorafit/nn.h"
#include "lorafit/quant.h"
#include "ops/op_check.h"

namespace {

namespace k = lorafit::kernels;
using lorafit::nn::Context;
using lorafit::nn::Linear;
using opcheck::Tensor;

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Restores fp32 compute when a case ends (the setting is process-wide).
struct ComputeGuard {
  ~ComputeGuard() { k::set_compute_dtype(k::ComputeDtype::F32); }
};

// Bound (see the header) for c = Σ_p a_p b_p (k terms, Σ|a_p b_p| = abs_sum) over rounded
// operands, with the fp32 rounding of c itself.
double bound(double abs_sum, int64_t k_, double c) {
  const double u = std::ldexp(1.0, -24);
  return 2.0 * static_cast<double>(k_) * u * abs_sum + u * std::fabs(c) + 1e-30;
}

OPCHECK(f32_to_bf16, MatchesScalarRoundingOddLengths) {
  // Random normals over a wide range, exact ties (round to even both ways), +-0, +-inf, NaN,
  // the largest finite value (rounds to inf) and values next to it.
  std::vector<float> base;
  Tensor r = opcheck::random({5000}, 3, -1.0f, 1.0f);
  for (int64_t i = 0; i < r.numel(); ++i) base.push_back(r.f32()[i] * std::ldexp(1.0f, static_cast<int>(i % 60) - 30));
  for (uint32_t u : {0x3F808000u, 0x3F818000u, 0xBF808000u, 0xBF818000u, 0x3F80FFFFu, 0x3F807FFFu})
    base.push_back(from_bits(u));
  for (float v : {0.0f, -0.0f, std::numeric_limits<float>::infinity(),
                  -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::max(),
                  -std::numeric_limits<float>::max(), 3.3895e38f, 1.0f, -2.5f})
    base.push_back(v);
  base.push_back(std::numeric_limits<float>::quiet_NaN());
  for (int64_t n : {0, 1, 15, 16, 17, 31, 32, 33, 100, 5021}) {
    std::vector<uint16_t> got(static_cast<size_t>(n) + 8, 0xABCD), want(static_cast<size_t>(n));
    k::f32_to_bf16(base.data(), got.data(), n);
    lorafit::tensor::f32_to_bf16_n(base.data(), want.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      if (std::isnan(base[i])) {
        EXPECT_TRUE(std::isnan(lorafit::tensor::bf16_to_f32(got[i]))) << "n=" << n << " at " << i;
        continue;
      }
      EXPECT_EQ(got[i], want[i]) << "n=" << n << " at " << i << " x=" << base[i];
    }
    for (int64_t i = n; i < n + 8; ++i) EXPECT_EQ(got[i], 0xABCD) << "wrote past n=" << n;
  }
  // A long input goes through the threaded chunks: same bits.
  Tensor big = opcheck::random({200003}, 4, -3.0f, 3.0f);
  std::vector<uint16_t> g(200003), w(200003);
  k::f32_to_bf16(big.f32(), g.data(), big.numel());
  lorafit::tensor::f32_to_bf16_n(big.f32(), w.data(), big.numel());
  EXPECT_EQ(g, w);
  // Subnormal inputs: the scalar rounding, or zero of the same sign (vcvtneps2bf16 flushes them).
  std::vector<float> sub = {from_bits(0x00000001u), from_bits(0x007FFFFFu), from_bits(0x80400000u)};
  std::vector<uint16_t> gs(sub.size()), ws(sub.size());
  k::f32_to_bf16(sub.data(), gs.data(), static_cast<int64_t>(sub.size()));
  lorafit::tensor::f32_to_bf16_n(sub.data(), ws.data(), static_cast<int64_t>(sub.size()));
  for (size_t i = 0; i < sub.size(); ++i)
    EXPECT_TRUE(gs[i] == ws[i] || gs[i] == (bits(sub[i]) >> 16 & 0x8000u)) << "subnormal " << i;
}

struct Case {
  bool trans_b;
  int64_t m, n, k, lda, ldb, ldc;
  float beta;
};

// Checks gemm_bf16_raw on one case against gemm_bf16_ref with the error bound of the header, and
// that nothing outside the [m, n] block of C (row padding, guards) was written.
void check_gemm(const Case& c, uint64_t seed) {
  const std::string what = "gemm_bf16 tB=" + std::to_string(c.trans_b) + " m=" +
                           std::to_string(c.m) + " n=" + std::to_string(c.n) + " k=" +
                           std::to_string(c.k) + " beta=" + std::to_string(c.beta);
  Tensor a = opcheck::random({c.m, c.lda}, seed, -2.0f, 2.0f);
  const int64_t brows = c.trans_b ? c.n : c.k;
  Tensor bf = opcheck::random({brows, c.ldb}, seed + 1, -1.0f, 1.0f);
  std::vector<uint16_t> b(static_cast<size_t>(bf.numel()));
  lorafit::tensor::f32_to_bf16_n(bf.f32(), b.data(), bf.numel());
  opcheck::Guarded cg({c.m, c.ldc});
  Tensor c0 = opcheck::random({c.m, c.ldc}, seed + 2);
  cg.t().copy_from(c0);
  Tensor want = c0.clone();
  k::gemm_bf16_raw(c.trans_b, c.m, c.n, c.k, a.f32(), c.lda, b.data(), c.ldb, c.beta,
                   cg.t().f32(), c.ldc);
  k::gemm_bf16_ref(c.trans_b, c.m, c.n, c.k, a.f32(), c.lda, b.data(), c.ldb, c.beta, want.f32(),
                   c.ldc);
  EXPECT_TRUE(cg.guards_intact()) << what << ": wrote outside C";
  int bad = 0;
  for (int64_t i = 0; i < c.m; ++i) {
    for (int64_t j = 0; j < c.ldc; ++j) {
      const float got = cg.t().f32()[i * c.ldc + j];
      const float ref = want.f32()[i * c.ldc + j];
      if (j >= c.n) {  // padding of the row: untouched
        EXPECT_EQ(bits(got), bits(c0.f32()[i * c.ldc + j])) << what << ": wrote padding";
        continue;
      }
      double s = std::fabs(c.beta * c0.f32()[i * c.ldc + j]);
      for (int64_t p = 0; p < c.k; ++p) {
        const double av = lorafit::tensor::bf16_to_f32(lorafit::tensor::f32_to_bf16(a.f32()[i * c.lda + p]));
        const double bv = lorafit::tensor::bf16_to_f32(c.trans_b ? b[j * c.ldb + p] : b[p * c.ldb + j]);
        s += std::fabs(av * bv);
      }
      const double tol = bound(s, c.k + 1, ref);
      const double err = std::fabs(static_cast<double>(got) - ref);
      if (!(err <= tol) && ++bad <= 5)
        ADD_FAILURE() << what << ": at (" << i << ", " << j << ") got " << got << " want " << ref
                      << " err " << err << " > bound " << tol;
    }
  }
  // Not vacuous: a product of the unrounded A is outside the bound somewhere.
  if (c.k >= 16) {
    int outside = 0;
    for (int64_t i = 0; i < c.m; ++i)
      for (int64_t j = 0; j < c.n; ++j) {
        double s = 0, sa = 0;
        for (int64_t p = 0; p < c.k; ++p) {
          const double bv = lorafit::tensor::bf16_to_f32(c.trans_b ? b[j * c.ldb + p] : b[p * c.ldb + j]);
          s += static_cast<double>(a.f32()[i * c.lda + p]) * bv;
          sa += std::fabs(a.f32()[i * c.lda + p] * bv);
        }
        s += c.beta == 0.0f ? 0.0 : static_cast<double>(c.beta) * c0.f32()[i * c.ldc + j];
        if (std::fabs(s - want.f32()[i * c.ldc + j]) > bound(sa, c.k + 1, s)) ++outside;
      }
    EXPECT_GT(outside, 0) << what << ": the bound does not tell rounded from unrounded A";
  }
}

OPCHECK(gemm_bf16, VsRoundedOperandsReference) {
  const std::vector<Case> cases = {
      {true, 37, 53, 91, 91, 91, 53, 0.0f},      // x·Wᵀ, odd sizes
      {false, 37, 91, 53, 53, 91, 91, 0.0f},     // dy·W
      {true, 5, 7, 3, 4, 5, 9, 1.0f},            // strided A, B, C; accumulate
      {false, 16, 33, 64, 70, 40, 35, 0.5f},     // strided, beta 0.5
      {true, 64, 576, 576, 576, 576, 576, 0.0f}, // a SmolLM2 q_proj tile of 64 tokens
      {false, 64, 384, 1536, 1536, 384, 384, 1.0f},
      {true, 1, 1, 1, 1, 1, 1, 0.0f},
  };
  if (!k::bf16_gemm_supported()) {
    // No BF16 here: refused by name (and the CLI says why), never a silent fp32 product.
    float c = 0, a = 1;
    uint16_t b = 0x3F80;
    try {
      k::gemm_bf16_raw(true, 1, 1, 1, &a, 1, &b, 1, 0.0f, &c, 1);
      ADD_FAILURE() << "gemm_bf16_raw ran without BF16 support";
    } catch (const lorafit::Error& e) {
      EXPECT_NE(std::string(e.what()).find("bf16 is not available"), std::string::npos) << e.what();
    }
    EXPECT_THROW(k::set_compute_dtype(k::ComputeDtype::BF16), lorafit::Error);
    return;
  }
  uint64_t seed = 100;
  for (const Case& c : cases) check_gemm(c, seed += 10);
  // k = 0: C = beta · C; m = 0: nothing.
  float cz[2] = {3.0f, 4.0f};
  k::gemm_bf16_raw(true, 1, 2, 0, nullptr, 0, nullptr, 0, 0.5f, cz, 2);
  EXPECT_EQ(cz[0], 1.5f);
  EXPECT_EQ(cz[1], 2.0f);
  k::gemm_bf16_raw(true, 0, 2, 3, nullptr, 3, nullptr, 3, 0.0f, nullptr, 2);
}

// gemm_bf16_bits (the attention products under --compute-dtype bf16): both operands BF16 bits,
// every transpose combination, strided operands, alpha and beta, against its double oracle within
// the fp32-summation bound; nothing outside C's [m, n] block written.
OPCHECK(gemm_bf16, BitsOperandsTransposedVsReference) {
  if (!k::bf16_gemm_supported()) {
    EXPECT_THROW(k::set_compute_dtype(k::ComputeDtype::BF16), lorafit::Error);
    return;
  }
  struct BCase { bool ta, tb; int64_t m, n, k, lda, ldb, ldc; float alpha, beta; };
  const std::vector<BCase> cases = {
      {false, true, 37, 29, 64, 72, 70, 31, 0.125f, 0.0f},  // q·kᵀ (scaled), strided heads
      {false, false, 37, 64, 29, 29, 80, 64, 1.0f, 0.0f},   // P·v
      {true, false, 29, 64, 37, 31, 64, 70, 1.0f, 1.0f},    // Pᵀ·dO, accumulated
      {true, true, 5, 7, 3, 9, 4, 8, 2.0f, 0.5f},           // both transposed
      {false, false, 1, 1, 1, 1, 1, 1, 1.0f, 0.0f},
  };
  uint64_t seed = 500;
  for (const BCase& c : cases) {
    const std::string what = "gemm_bf16_bits tA=" + std::to_string(c.ta) + " tB=" +
                             std::to_string(c.tb) + " m=" + std::to_string(c.m) + " n=" +
                             std::to_string(c.n) + " k=" + std::to_string(c.k);
    const int64_t arows = c.ta ? c.k : c.m, brows = c.tb ? c.n : c.k;
    Tensor af = opcheck::random({arows, c.lda}, seed += 10, -2.0f, 2.0f);
    Tensor bf = opcheck::random({brows, c.ldb}, seed + 1, -1.0f, 1.0f);
    std::vector<uint16_t> a(static_cast<size_t>(af.numel())), b(static_cast<size_t>(bf.numel()));
    lorafit::tensor::f32_to_bf16_n(af.f32(), a.data(), af.numel());
    lorafit::tensor::f32_to_bf16_n(bf.f32(), b.data(), bf.numel());
    opcheck::Guarded cg({c.m, c.ldc});
    Tensor c0 = opcheck::random({c.m, c.ldc}, seed + 2);
    cg.t().copy_from(c0);
    Tensor want = c0.clone();
    k::gemm_bf16_bits(c.ta, c.tb, c.m, c.n, c.k, c.alpha, a.data(), c.lda, b.data(), c.ldb,
                      c.beta, cg.t().f32(), c.ldc);
    k::gemm_bf16_bits_ref(c.ta, c.tb, c.m, c.n, c.k, c.alpha, a.data(), c.lda, b.data(), c.ldb,
                          c.beta, want.f32(), c.ldc);
    EXPECT_TRUE(cg.guards_intact()) << what << ": wrote outside C";
    int bad = 0;
    for (int64_t i = 0; i < c.m; ++i)
      for (int64_t j = 0; j < c.ldc; ++j) {
        const float got = cg.t().f32()[i * c.ldc + j], ref = want.f32()[i * c.ldc + j];
        if (j >= c.n) {
          EXPECT_EQ(bits(got), bits(c0.f32()[i * c.ldc + j])) << what << ": wrote padding";
          continue;
        }
        double s = std::fabs(c.beta * c0.f32()[i * c.ldc + j]);
        for (int64_t p = 0; p < c.k; ++p) {
          const double av = lorafit::tensor::bf16_to_f32(c.ta ? a[p * c.lda + i] : a[i * c.lda + p]);
          const double bv = lorafit::tensor::bf16_to_f32(c.tb ? b[j * c.ldb + p] : b[p * c.ldb + j]);
          s += std::fabs(c.alpha * av * bv);
        }
        const double err = std::fabs(static_cast<double>(got) - ref);
        if (!(err <= bound(s, c.k + 1, ref)) && ++bad <= 5)
          ADD_FAILURE() << what << ": at (" << i << ", " << j << ") got " << got << " want "
                        << ref << " err " << err;
      }
  }
}

OPCHECK(gemm_bf16, ParseAndErrors) {
  ComputeGuard g;
  EXPECT_EQ(k::parse_compute_dtype("fp32"), k::ComputeDtype::F32);
  // auto is the measured choice: bf16 only where supported and its products are faster here.
  const double speedup = k::bf16_speedup();
  EXPECT_EQ(speedup, k::bf16_speedup());  // measured once
  if (k::bf16_gemm_supported()) EXPECT_GT(speedup, 0.0);
  else EXPECT_EQ(speedup, 0.0);
  EXPECT_EQ(k::parse_compute_dtype("auto"),
            k::bf16_gemm_supported() && speedup >= k::kAutoBf16MinSpeedup ? k::ComputeDtype::BF16
                                                       : k::ComputeDtype::F32);
  EXPECT_FALSE(k::auto_picks_bf16(0.0));   // no BF16 here
  EXPECT_FALSE(k::auto_picks_bf16(0.6));   // Intel AVX512-BF16 without AMX
  EXPECT_FALSE(k::auto_picks_bf16(1.1));   // too little to pay for the conversions
  EXPECT_TRUE(k::auto_picks_bf16(1.2));
  EXPECT_TRUE(k::auto_picks_bf16(2.1));    // AMD Zen 4
  try {
    k::parse_compute_dtype("fp8");
    ADD_FAILURE() << "fp8 accepted";
  } catch (const lorafit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("'fp8' is not a compute dtype (fp32, bf16, auto)"),
              std::string::npos)
        << e.what();
  }
  if (k::bf16_gemm_supported()) {
    EXPECT_EQ(k::parse_compute_dtype("bf16"), k::ComputeDtype::BF16);
    EXPECT_NE(k::bf16_gemm_info().find("oneDNN"), std::string::npos) << k::bf16_gemm_info();
  } else {
    EXPECT_THROW(k::parse_compute_dtype("bf16"), lorafit::Error);
  }
  try {
    k::gemm_bf16_raw(true, 2, 2, 3, nullptr, 2, nullptr, 3, 0.0f, nullptr, 2);  // lda < k
    ADD_FAILURE() << "lda < k accepted";
  } catch (const lorafit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("[gemm_bf16] bad sizes"), std::string::npos) << e.what();
  }
}

// Linear's BF16 products against the reference of the rounded operands: forward y = x·Wᵀ + b,
// backward dx = dy·W (frozen weight, so no weight gradient), for an F32 and an F16 weight; the
// copy is made again after the weight changes in place and weights_changed(); a trainable weight
// stays on the exact fp32 path.
void expect_bound(const Tensor& got, const Tensor& a, const std::vector<uint16_t>& b, bool trans_b,
                  int64_t m, int64_t n, int64_t kk, const Tensor& bias, const std::string& what) {
  Tensor want = Tensor::zeros({m, n});
  k::gemm_bf16_ref(trans_b, m, n, kk, a.f32(), kk, b.data(), trans_b ? kk : n, 0.0f, want.f32(), n);
  int bad = 0;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t p = 0; p < kk; ++p)
        s += std::fabs(lorafit::tensor::bf16_to_f32(lorafit::tensor::f32_to_bf16(a.f32()[i * kk + p])) *
                       lorafit::tensor::bf16_to_f32(trans_b ? b[j * kk + p] : b[p * n + j]));
      double ref = want.f32()[i * n + j];
      double bb = bias.defined() ? bias.f32()[j] : 0.0;
      const double err = std::fabs(got.f32()[i * n + j] - (ref + bb));
      const double tol = bound(s, kk + 1, ref) + 2 * std::ldexp(1.0, -24) * (std::fabs(ref) + std::fabs(bb));
      if (!(err <= tol) && ++bad <= 5)
        ADD_FAILURE() << what << ": at (" << i << ", " << j << ") err " << err << " > " << tol;
    }
}

OPCHECK(Linear, Bf16ComputeVsRoundedReference) {
  if (!k::bf16_gemm_supported()) {
    EXPECT_THROW(k::set_compute_dtype(k::ComputeDtype::BF16), lorafit::Error);
    return;
  }
  ComputeGuard guard;
  const int64_t in = 67, out = 45, rows = 2 * 9;
  for (auto dt : {lorafit::tensor::DType::F32, lorafit::tensor::DType::F16}) {
    const std::string name = lorafit::tensor::dtype_name(dt);
    Linear lin(in, out, true);
    opcheck::fill_uniform(lin.weight.value, 21, -0.5f, 0.5f);
    opcheck::fill_uniform(lin.bias.value, 22, -0.5f, 0.5f);
    if (dt != lorafit::tensor::DType::F32) lin.weight.value = lin.weight.value.to(dt);
    lin.set_trainable(false);
    Tensor wf = lin.weight.value.dtype() == lorafit::tensor::DType::F32
                    ? lin.weight.value
                    : lin.weight.value.to(lorafit::tensor::DType::F32);
    std::vector<uint16_t> wb(static_cast<size_t>(out * in));
    lorafit::tensor::f32_to_bf16_n(wf.f32(), wb.data(), out * in);
    Tensor x = opcheck::random({2, 9, in}, 23);
    Tensor dy = opcheck::random({2, 9, out}, 24);
    k::set_compute_dtype(k::ComputeDtype::BF16);
    EXPECT_TRUE(lin.uses_bf16());
    Context ctx;
    Tensor y = lin.forward(ctx, x);
    expect_bound(y.view({rows, out}), x.view({rows, in}), wb, true, rows, out, in, lin.bias.value,
                 "forward " + name);
    Tensor dx = lin.backward(ctx, dy);
    expect_bound(dx.view({rows, in}), dy.view({rows, out}), wb, false, rows, in, out, Tensor(),
                 "dx " + name);
    EXPECT_FALSE(lin.weight.grad.defined()) << name;
    if (dt != lorafit::tensor::DType::F32) continue;
    // In-place change + weights_changed(): the next product uses the new weight.
    for (int64_t i = 0; i < out * in; ++i) lin.weight.value.f32()[i] *= -2.0f;
    lorafit::nn::weights_changed();
    for (auto& v : wb)  // BF16(-2·W) = -2·BF16(W): scaling by 2 commutes with the rounding
      v = lorafit::tensor::f32_to_bf16(-2.0f * lorafit::tensor::bf16_to_f32(v));
    Tensor y2 = lin.forward(ctx, x);
    expect_bound(y2.view({rows, out}), x.view({rows, in}), wb, true, rows, out, in, lin.bias.value,
                 "forward after weights_changed");
    // fp32 again: the exact path (bitwise as kernels::gemm + bias).
    k::set_compute_dtype(k::ComputeDtype::F32);
    EXPECT_FALSE(lin.uses_bf16());
    Tensor y3 = lin.forward(ctx, x);
    Tensor ref = Tensor::zeros({rows, out});
    k::gemm(x.view({rows, in}), false, lin.weight.value, true, ref);
    k::add_bias(ref, lin.bias.value);
    for (int64_t i = 0; i < rows * out; ++i) ASSERT_EQ(y3.f32()[i], ref.f32()[i]) << i;
    // A trainable weight never takes the BF16 path.
    k::set_compute_dtype(k::ComputeDtype::BF16);
    lin.weight.set_trainable(true);
    EXPECT_FALSE(lin.uses_bf16());
    Tensor y4 = lin.forward(ctx, x);
    for (int64_t i = 0; i < rows * out; ++i) ASSERT_EQ(y4.f32()[i], ref.f32()[i]) << i;
  }
}

// A frozen quantized weight under BF16 compute: each dequantized fp32 tile is rounded to BF16 and
// multiplied in BF16, so forward and dx equal the reference of BF16(dequantized W) within the
// BF16 bound. Q4_1 at in 4096, out 1030: two tiles of rows (1024 + 6), the second adding into dx;
// NF4 with double quantization at an odd row count. fp32 compute gives the fp32 tile path.
OPCHECK(Linear, Bf16ComputeQuantizedTilesVsRoundedReference) {
  if (!k::bf16_gemm_supported()) return;  // the dense case above checks the refusal
  using lorafit::tensor::DType;
  ComputeGuard guard;
  struct Case { DType t; int64_t in, out; };
  for (const Case c : {Case{DType::Q4_1, 4096, 1030}, Case{DType::NF4, 320, 301}}) {
    const std::string name = lorafit::tensor::dtype_name(c.t);
    Linear lin(c.in, c.out, false);
    opcheck::fill_uniform(lin.weight.value, 31, -0.1f, 0.1f);
    if (c.t == DType::NF4) {
      auto q = lorafit::tensor::quantize_4bit(lin.weight.value.f32(), c.in * c.out,
                                              lorafit::tensor::Quant4Type::NF4, true);
      lin.weight.value = lorafit::tensor::quant4_tensor(std::move(q), {c.out, c.in});
    } else {
      lin.weight.value = lorafit::tensor::quantize(lin.weight.value, c.t);
    }
    lin.set_trainable(false);
    std::vector<float> wf(static_cast<size_t>(c.out * c.in));
    lin.weight_rows(0, c.out, wf.data());
    std::vector<uint16_t> wb(wf.size());
    lorafit::tensor::f32_to_bf16_n(wf.data(), wb.data(), c.out * c.in);
    const int64_t rows = 2 * 9;
    Tensor x = opcheck::random({2, 9, c.in}, 33);
    Tensor dy = opcheck::random({2, 9, c.out}, 34);
    k::set_compute_dtype(k::ComputeDtype::BF16);
    EXPECT_FALSE(lin.uses_bf16()) << name << ": no dense copy of a quantized weight";
    EXPECT_TRUE(lin.uses_bf16_tiles()) << name;
    Context ctx;
    Tensor y = lin.forward(ctx, x);
    expect_bound(y.view({rows, c.out}), x.view({rows, c.in}), wb, true, rows, c.out, c.in,
                 Tensor(), "forward " + name);
    Tensor dx = lin.backward(ctx, dy);
    expect_bound(dx.view({rows, c.in}), dy.view({rows, c.out}), wb, false, rows, c.in, c.out,
                 Tensor(), "dx " + name);
    k::set_compute_dtype(k::ComputeDtype::F32);
    EXPECT_FALSE(lin.uses_bf16_tiles()) << name;
    Tensor y32 = lin.forward(ctx, x);
    Tensor ref = Tensor::zeros({rows, c.out});
    Tensor wt = Tensor::from_vector({c.out, c.in}, wf);
    k::gemm(x.view({rows, c.in}), false, wt, true, ref);
    opcheck::expect_close(y32.view({rows, c.out}), ref, 1e-5, 1e-5, "fp32 forward " + name);
  }
}

}  // namespace
