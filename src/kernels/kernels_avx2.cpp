// AVX2 + FMA kernels. This is the only file compiled with -mavx2 -mfma (CMake), and it is only
// entered through avx2_ops() after isa_supported(Isa::Avx2) said yes.
//
// To keep AVX2 code from leaking into the portable build, everything here is either an
// intrinsic, a function in an anonymous namespace, or one of the entry points below: no std::
// templates (std::max, std::vector...) are instantiated here, because the linker could pick this
// file's AVX2 copy of such an inline function for callers on a CPU without AVX2.
//
// Vector tails (n % 8 lanes) use masked loads/stores, so the tail goes through exactly the same
// arithmetic as the body. Row reductions accumulate in fp32 lanes (the reference uses double;
// the op checker's tolerances account for that).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/kernels_impl.h"

namespace lorafit::kernels {

namespace {

constexpr float kSqrt1_2 = 0.70710678118654752f;     // 1/sqrt(2)
constexpr float kInvSqrt2Pi = 0.39894228040143268f;  // 1/sqrt(2 pi)
constexpr float kSqrt2OverPi = 0.79788456080286536f; // sqrt(2/pi)
constexpr float kGeluC = 0.044715f;
constexpr float kInf = __builtin_inff();

alignas(32) const int32_t kMaskTable[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                            0,  0,  0,  0,  0,  0,  0,  0};
// Lanes [0, rem) set, 1 <= rem <= 7.
inline __m256i tail_mask(int64_t rem) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMaskTable + 8 - rem));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// exp(x), Cephes expf: x = n ln2 + r with |r| <= ln2/2 (ln2 split in two for an exact product),
// exp(r) by a degree-7 polynomial, 2^n by building the exponent bits. About 1-2 ulp on
// [-87.3, 88.3]; below that 0 (the true value is subnormal), above +inf, NaN stays NaN.
inline __m256 exp256(__m256 x) {
  const __m256 hi = _mm256_set1_ps(88.3762626647949f);
  const __m256 lo = _mm256_set1_ps(-87.3365447504f);
  __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
  __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500E-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
  p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
  y = _mm256_blendv_ps(y, _mm256_set1_ps(kInf), _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
  return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

// 1 / (1 + exp(-x)); exp overflow gives 1/inf = 0, the right limit.
inline __m256 sigmoid256(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), x));
  return _mm256_div_ps(one, _mm256_add_ps(one, e));
}

// erfc(a) for a >= 0 given a^2 = sq_hi + sq_lo exactly (from an FMA split), with exp(-sq_hi)
// returned in *e_hi for reuse. Numerical Recipes' erfcc (Chebyshev fit, relative error
// < 1.2e-7 for all a >= 0): erfc(a) = t exp(-a^2 + P(t)), t = 1 / (1 + a/2).
// exp(-a^2 + P) is evaluated as exp(-sq_hi) * exp(P - sq_lo): forming -a^2 + P in fp32 would
// round away ~ulp(a^2) of the exponent, i.e. a relative error of up to 5e-6 near a = 9.
inline __m256 erfc_pos(__m256 a, __m256 sq_hi, __m256 sq_lo, __m256* e_hi) {
  const __m256 one = _mm256_set1_ps(1.0f);
  __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(0.5f), a, one));
  __m256 p = _mm256_set1_ps(0.17087277f);
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.82215223f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.48851587f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.13520398f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.27886807f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.18628806f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.09678418f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.37409196f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.00002368f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.26551223f));
  __m256 eh = exp256(_mm256_sub_ps(_mm256_setzero_ps(), sq_hi));
  *e_hi = eh;
  return _mm256_mul_ps(_mm256_mul_ps(t, eh), exp256(_mm256_sub_ps(p, sq_lo)));
}

inline __m256 abs256(__m256 x) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x); }

// erf(x): odd Taylor series x * sum_k (-1)^k x^2k / (k! (2k+1)) * 2/sqrt(pi) for |x| < 0.5
// (terms to x^13; the first omitted one is < 1e-9 relative), else sign(x) (1 - erfc(|x|)),
// whose absolute error 1.2e-7 * erfc(0.5) is < 1.2e-7 relative to erf(0.5) = 0.52.
inline __m256 erf256(__m256 x) {
  __m256 a = abs256(x);
  __m256 x2 = _mm256_mul_ps(x, x);
  __m256 s = _mm256_set1_ps(1.0f / 9360.0f);
  s = _mm256_fmsub_ps(s, x2, _mm256_set1_ps(1.0f / 1320.0f));
  s = _mm256_fmadd_ps(s, x2, _mm256_set1_ps(1.0f / 216.0f));
  s = _mm256_fmsub_ps(s, x2, _mm256_set1_ps(1.0f / 42.0f));
  s = _mm256_fmadd_ps(s, x2, _mm256_set1_ps(1.0f / 10.0f));
  s = _mm256_fmsub_ps(s, x2, _mm256_set1_ps(1.0f / 3.0f));
  s = _mm256_fmadd_ps(s, x2, _mm256_set1_ps(1.0f));
  __m256 small = _mm256_mul_ps(_mm256_mul_ps(x, s), _mm256_set1_ps(1.12837916709551257f));
  __m256 sq_lo = _mm256_fmsub_ps(a, a, x2);
  __m256 eh;
  __m256 big = _mm256_sub_ps(_mm256_set1_ps(1.0f), erfc_pos(a, x2, sq_lo, &eh));
  big = _mm256_or_ps(big, _mm256_and_ps(x, _mm256_set1_ps(-0.0f)));  // copy the sign of x
  return _mm256_blendv_ps(big, small, _mm256_cmp_ps(a, _mm256_set1_ps(0.5f), _CMP_LT_OQ));
}

// GELU (erf) pieces for one vector. a = |x|/sqrt2, a^2 = x^2/2 split exactly with an FMA.
// Returns 1 + erf(x/sqrt2) computed without cancellation: 2 - erfc(a) for x >= 0, erfc(a) for
// x < 0 (so the negative tail keeps its relative accuracy), and exp(-x^2/2) in *gauss.
inline __m256 gelu_erf_parts(__m256 x, __m256* gauss) {
  __m256 a = abs256(_mm256_mul_ps(x, _mm256_set1_ps(kSqrt1_2)));
  __m256 xx = _mm256_mul_ps(x, x);
  __m256 xx_lo = _mm256_fmsub_ps(x, x, xx);
  __m256 half = _mm256_set1_ps(0.5f);
  __m256 sq_hi = _mm256_mul_ps(xx, half), sq_lo = _mm256_mul_ps(xx_lo, half);
  __m256 eh;
  __m256 ec = erfc_pos(a, sq_hi, sq_lo, &eh);
  // exp(-x^2/2) = exp(-sq_hi) exp(-sq_lo), |sq_lo| < 4e-6 so exp(-sq_lo) = 1 - sq_lo to 1e-11.
  *gauss = _mm256_fnmadd_ps(eh, sq_lo, eh);
  __m256 pos = _mm256_sub_ps(_mm256_set1_ps(2.0f), ec);
  return _mm256_blendv_ps(ec, pos, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ));
}

// Applies f to 8-lane blocks of n elements; the tail block uses masked load/store.
template <class F>
inline void map1(float* y, const float* x, int64_t n, F f) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, f(_mm256_loadu_ps(x + i)));
  if (i < n) {
    __m256i m = tail_mask(n - i);
    _mm256_maskstore_ps(y + i, m, f(_mm256_maskload_ps(x + i, m)));
  }
}
template <class F>
inline void map2(float* y, const float* a, const float* b, int64_t n, F f) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, f(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
  if (i < n) {
    __m256i m = tail_mask(n - i);
    _mm256_maskstore_ps(y + i, m, f(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m)));
  }
}
// Visits 8-lane blocks of [0, n): f(i, mask) with mask all-set for full blocks.
template <class F>
inline void blocks(int64_t n, F f) {
  const __m256i full = _mm256_set1_epi32(-1);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) f(i, full);
  if (i < n) f(i, tail_mask(n - i));
}
inline __m256 load(const float* p, __m256i m) { return _mm256_maskload_ps(p, m); }
inline void store(float* p, __m256i m, __m256 v) { _mm256_maskstore_ps(p, m, v); }

// ---- elementwise ------------------------------------------------------------------------------
void add(float* y, const float* a, const float* b, int64_t n) {
  map2(y, a, b, n, [](__m256 u, __m256 v) { return _mm256_add_ps(u, v); });
}
void mul(float* y, const float* a, const float* b, int64_t n) {
  map2(y, a, b, n, [](__m256 u, __m256 v) { return _mm256_mul_ps(u, v); });
}
void scale(float* y, const float* x, float s, int64_t n) {
  const __m256 vs = _mm256_set1_ps(s);
  map1(y, x, n, [&](__m256 u) { return _mm256_mul_ps(vs, u); });
}
void axpy(float* y, float alpha, const float* x, int64_t n) {
  const __m256 va = _mm256_set1_ps(alpha);
  map2(y, x, y, n, [&](__m256 u, __m256 v) { return _mm256_fmadd_ps(va, u, v); });
}
void add_bias(float* x, const float* bias, int64_t rows, int64_t c) {
  for (int64_t r = 0; r < rows; ++r) add(x + r * c, x + r * c, bias, c);
}
// forward was: x[r, j] += bias[j]  =>  db[j] += sum_r dy[r, j], 8 columns at a time
void bias_backward(float* db, const float* dy, int64_t rows, int64_t c) {
  blocks(c, [&](int64_t j, __m256i m) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t r = 0; r < rows; ++r) acc = _mm256_add_ps(acc, load(dy + r * c + j, m));
    store(db + j, m, _mm256_add_ps(load(db + j, m), acc));
  });
}

// ---- activations ------------------------------------------------------------------------------
// erf form: y = 0.5 x (1 + erf(x/sqrt2)).
// tanh form: 0.5 (1 + tanh u) = sigmoid(2u), so y = x / (1 + exp(-2u)), u = sqrt(2/pi)(x + c x^3)
// (no cancellation for negative x, unlike 1 + tanh).
void gelu_forward(float* y, const float* x, int64_t n, GeluKind kind) {
  const __m256 half = _mm256_set1_ps(0.5f);
  if (kind == GeluKind::Erf) {
    map1(y, x, n, [&](__m256 v) {
      __m256 g;
      return _mm256_mul_ps(_mm256_mul_ps(half, v), gelu_erf_parts(v, &g));
    });
  } else {
    const __m256 k2 = _mm256_set1_ps(-2.0f * kSqrt2OverPi), c = _mm256_set1_ps(kGeluC);
    const __m256 one = _mm256_set1_ps(1.0f);
    map1(y, x, n, [&](__m256 v) {
      __m256 inner = _mm256_fmadd_ps(_mm256_mul_ps(c, v), _mm256_mul_ps(v, v), v);  // x + c x^3
      __m256 e = exp256(_mm256_mul_ps(k2, inner));                                   // exp(-2u)
      return _mm256_div_ps(v, _mm256_add_ps(one, e));
    });
  }
}
// erf:  y' = Phi(x) + x phi(x)
// tanh: with s = sigmoid(2u): 0.5(1 + t) = s, 1 - t^2 = 4 s (1 - s), so
//       y' = s + 2 x s (1 - s) sqrt(2/pi) (1 + 3c x^2)
void gelu_backward(float* dx, const float* x, const float* dy, int64_t n, GeluKind kind) {
  const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
  if (kind == GeluKind::Erf) {
    const __m256 ip = _mm256_set1_ps(kInvSqrt2Pi);
    map2(dx, x, dy, n, [&](__m256 v, __m256 d) {
      __m256 g;
      __m256 cdf = _mm256_mul_ps(half, gelu_erf_parts(v, &g));
      return _mm256_mul_ps(d, _mm256_fmadd_ps(_mm256_mul_ps(v, ip), g, cdf));
    });
  } else {
    const __m256 k = _mm256_set1_ps(kSqrt2OverPi), k2 = _mm256_set1_ps(-2.0f * kSqrt2OverPi);
    const __m256 c = _mm256_set1_ps(kGeluC), c3 = _mm256_set1_ps(3.0f * kGeluC);
    const __m256 two = _mm256_set1_ps(2.0f);
    map2(dx, x, dy, n, [&](__m256 v, __m256 d) {
      __m256 vv = _mm256_mul_ps(v, v);
      __m256 inner = _mm256_fmadd_ps(_mm256_mul_ps(c, v), vv, v);
      __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, exp256(_mm256_mul_ps(k2, inner))));
      __m256 du = _mm256_mul_ps(k, _mm256_fmadd_ps(c3, vv, one));  // du/dx
      __m256 t = _mm256_mul_ps(_mm256_mul_ps(two, v), _mm256_mul_ps(s, _mm256_sub_ps(one, s)));
      return _mm256_mul_ps(d, _mm256_fmadd_ps(t, du, s));
    });
  }
}

void silu_forward(float* y, const float* x, int64_t n) {
  map1(y, x, n, [](__m256 v) { return _mm256_mul_ps(v, sigmoid256(v)); });
}
// forward was: y = x s(x)  =>  dx = dy s (1 + x (1 - s))
void silu_backward(float* dx, const float* x, const float* dy, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  map2(dx, x, dy, n, [&](__m256 v, __m256 d) {
    __m256 s = sigmoid256(v);
    return _mm256_mul_ps(_mm256_mul_ps(d, s), _mm256_fmadd_ps(v, _mm256_sub_ps(one, s), one));
  });
}

void swiglu_forward(float* y, const float* gate, const float* up, int64_t n) {
  map2(y, gate, up, n, [](__m256 g, __m256 u) {
    return _mm256_mul_ps(_mm256_mul_ps(g, sigmoid256(g)), u);
  });
}
// forward was: y = g s(g) u  =>  dg = dy u s (1 + g (1 - s)), du = dy g s
void swiglu_backward(float* dgate, float* dup, const float* gate, const float* up,
                     const float* dy, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  blocks(n, [&](int64_t i, __m256i m) {
    __m256 g = load(gate + i, m), u = load(up + i, m), d = load(dy + i, m);
    __m256 s = sigmoid256(g);
    __m256 ds = _mm256_mul_ps(d, s);
    store(dgate + i, m,
          _mm256_mul_ps(_mm256_mul_ps(ds, u), _mm256_fmadd_ps(g, _mm256_sub_ps(one, s), one)));
    store(dup + i, m, _mm256_mul_ps(ds, g));
  });
}

// ---- softmax ----------------------------------------------------------------------------------
// One row: z = x + mask; y = exp(z - max) / sum; all -inf gives zeros. Returns the sum.
inline float softmax_row(float* y, const float* x, const float* mask, int64_t n, float* mx_out) {
  const __m256 ninf = _mm256_set1_ps(-kInf);
  __m256 vmax = ninf;
  blocks(n, [&](int64_t j, __m256i m) {
    __m256 z = load(x + j, m);
    if (mask) z = _mm256_add_ps(z, load(mask + j, m));
    vmax = _mm256_max_ps(vmax, _mm256_blendv_ps(ninf, z, _mm256_castsi256_ps(m)));
  });
  const float mx = hmax(vmax);
  *mx_out = mx;
  if (mx == -kInf) {
    blocks(n, [&](int64_t j, __m256i m) { store(y + j, m, _mm256_setzero_ps()); });
    return 0.0f;
  }
  const __m256 vm = _mm256_set1_ps(mx);
  __m256 vsum = _mm256_setzero_ps();
  blocks(n, [&](int64_t j, __m256i m) {
    __m256 z = load(x + j, m);
    if (mask) z = _mm256_add_ps(z, load(mask + j, m));
    // masked-off lanes load 0 and give exp(-mx) garbage: zero them before summing
    __m256 e = _mm256_and_ps(exp256(_mm256_sub_ps(z, vm)), _mm256_castsi256_ps(m));
    vsum = _mm256_add_ps(vsum, e);
    store(y + j, m, e);
  });
  const float sum = hsum(vsum);
  const __m256 inv = _mm256_set1_ps(1.0f / sum);
  blocks(n, [&](int64_t j, __m256i m) { store(y + j, m, _mm256_mul_ps(load(y + j, m), inv)); });
  return sum;
}

// A row's trailing keys masked with -inf (causal attention: half of all entries; padding) are
// neither exponentiated nor summed: their probability is 0 as in the full computation, and the
// visible part is bitwise the same (the full row only adds exact zeros to the same lanes' sums).
void softmax_forward(float* y, const float* x, const float* mask, int64_t mask_stride,
                     int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* mr = mask ? mask + r * mask_stride : nullptr;
    int64_t len = n;
    if (mr)
      while (len > 0 && mr[len - 1] == -kInf) --len;
    if (len == 0) len = n;  // all masked: softmax_row writes the zeros
    float mx;
    softmax_row(y + r * n, x + r * n, mr, len, &mx);
    std::fill(y + r * n + len, y + r * n + n, 0.0f);
  }
}
// forward was: y = softmax(x)  =>  dx = y (dy - sum(dy y))
void softmax_backward(float* dx, const float* y, const float* dy, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    const float *yr = y + r * n, *dyr = dy + r * n;
    float* dxr = dx + r * n;
    __m256 acc = _mm256_setzero_ps();
    blocks(n, [&](int64_t j, __m256i m) {
      acc = _mm256_fmadd_ps(load(dyr + j, m), load(yr + j, m), acc);
    });
    const __m256 d = _mm256_set1_ps(hsum(acc));
    blocks(n, [&](int64_t j, __m256i m) {
      store(dxr + j, m, _mm256_mul_ps(load(yr + j, m), _mm256_sub_ps(load(dyr + j, m), d)));
    });
  }
}

// ---- normalisation ----------------------------------------------------------------------------
// Two passes (mean, then sum of squared deviations), as the reference: one-pass E[x^2] - E[x]^2
// cancels badly when |mean| >> std.
void layernorm_forward(float* y, float* mean, float* rstd, const float* x, const float* w,
                       const float* b, float eps, int64_t rows, int64_t c) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * c;
    float* yr = y + r * c;
    __m256 acc = _mm256_setzero_ps();
    blocks(c, [&](int64_t j, __m256i m) { acc = _mm256_add_ps(acc, load(xr + j, m)); });
    const float mu = hsum(acc) / static_cast<float>(c);
    const __m256 vmu = _mm256_set1_ps(mu);
    __m256 var = _mm256_setzero_ps();
    blocks(c, [&](int64_t j, __m256i m) {
      // masked lanes load 0: zero their deviation too
      __m256 dv = _mm256_and_ps(_mm256_sub_ps(load(xr + j, m), vmu), _mm256_castsi256_ps(m));
      var = _mm256_fmadd_ps(dv, dv, var);
    });
    const float s = 1.0f / __builtin_sqrtf(hsum(var) / static_cast<float>(c) + eps);
    const __m256 vs = _mm256_set1_ps(s);
    blocks(c, [&](int64_t j, __m256i m) {
      __m256 norm = _mm256_mul_ps(_mm256_sub_ps(load(xr + j, m), vmu), vs);
      __m256 bias = b ? load(b + j, m) : _mm256_setzero_ps();
      store(yr + j, m, _mm256_fmadd_ps(norm, load(w + j, m), bias));
    });
    mean[r] = mu;
    rstd[r] = s;
  }
}
// forward was: y = norm * w + b  =>  dx = rstd (dnorm - mean(dnorm) - norm mean(dnorm norm)),
// dw += dy norm, db += dy (dnorm = dy w)
void layernorm_backward(float* dx, float* dw, float* db, const float* dy, const float* x,
                        const float* w, const float* mean, const float* rstd, int64_t rows,
                        int64_t c) {
  for (int64_t r = 0; r < rows; ++r) {
    const float *xr = x + r * c, *dyr = dy + r * c;
    float* dxr = dx + r * c;
    const __m256 vmu = _mm256_set1_ps(mean[r]), vs = _mm256_set1_ps(rstd[r]);
    __m256 a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps();
    blocks(c, [&](int64_t j, __m256i m) {
      __m256 norm = _mm256_mul_ps(_mm256_sub_ps(load(xr + j, m), vmu), vs);
      __m256 dn = _mm256_mul_ps(load(dyr + j, m), load(w + j, m));
      a1 = _mm256_add_ps(a1, dn);
      a2 = _mm256_fmadd_ps(dn, norm, a2);
    });
    const __m256 dmean = _mm256_set1_ps(hsum(a1) / static_cast<float>(c));
    const __m256 dnm = _mm256_set1_ps(hsum(a2) / static_cast<float>(c));
    blocks(c, [&](int64_t j, __m256i m) {
      __m256 norm = _mm256_mul_ps(_mm256_sub_ps(load(xr + j, m), vmu), vs);
      __m256 g = load(dyr + j, m);
      __m256 dn = _mm256_mul_ps(g, load(w + j, m));
      store(dxr + j, m, _mm256_mul_ps(vs, _mm256_fnmadd_ps(norm, dnm, _mm256_sub_ps(dn, dmean))));
      if (dw) store(dw + j, m, _mm256_fmadd_ps(g, norm, load(dw + j, m)));
      if (db) store(db + j, m, _mm256_add_ps(g, load(db + j, m)));
    });
  }
}

void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, float eps,
                     int64_t rows, int64_t c) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * c;
    __m256 acc = _mm256_setzero_ps();
    blocks(c, [&](int64_t j, __m256i m) {
      __m256 v = load(xr + j, m);
      acc = _mm256_fmadd_ps(v, v, acc);
    });
    const float s = 1.0f / __builtin_sqrtf(hsum(acc) / static_cast<float>(c) + eps);
    const __m256 vs = _mm256_set1_ps(s);
    blocks(c, [&](int64_t j, __m256i m) {
      store(y + r * c + j, m, _mm256_mul_ps(_mm256_mul_ps(load(xr + j, m), vs), load(w + j, m)));
    });
    rstd[r] = s;
  }
}
// forward was: y = x rstd w  =>  dx = rstd (dnorm - norm mean(dnorm norm)), dw += dy norm
void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w,
                      const float* rstd, int64_t rows, int64_t c) {
  for (int64_t r = 0; r < rows; ++r) {
    const float *xr = x + r * c, *dyr = dy + r * c;
    const __m256 vs = _mm256_set1_ps(rstd[r]);
    __m256 acc = _mm256_setzero_ps();
    blocks(c, [&](int64_t j, __m256i m) {
      __m256 norm = _mm256_mul_ps(load(xr + j, m), vs);
      acc = _mm256_fmadd_ps(_mm256_mul_ps(load(dyr + j, m), load(w + j, m)), norm, acc);
    });
    const __m256 dnm = _mm256_set1_ps(hsum(acc) / static_cast<float>(c));
    blocks(c, [&](int64_t j, __m256i m) {
      __m256 norm = _mm256_mul_ps(load(xr + j, m), vs);
      __m256 g = load(dyr + j, m);
      __m256 dn = _mm256_mul_ps(g, load(w + j, m));
      store(dx + r * c + j, m, _mm256_mul_ps(vs, _mm256_fnmadd_ps(norm, dnm, dn)));
      if (dw) store(dw + j, m, _mm256_fmadd_ps(g, norm, load(dw + j, m)));
    });
  }
}

// ---- RoPE -------------------------------------------------------------------------------------
// Pair (a, b) -> (a cos - b sin, b cos + a sin), sin already multiplied by sign.
void rope_rotate(float* x, const float* cs, int64_t rows, int64_t d, RopeStyle style,
                 float sign) {
  const int64_t half = d / 2;
  const __m256 vsign = _mm256_set1_ps(sign);
  for (int64_t r = 0; r < rows; ++r) {
    float* xr = x + r * d;
    if (style == RopeStyle::HalfRotate) {
      blocks(half, [&](int64_t i, __m256i m) {
        __m256 c = load(cs + i, m), s = _mm256_mul_ps(vsign, load(cs + half + i, m));
        __m256 a = load(xr + i, m), b = load(xr + half + i, m);
        store(xr + i, m, _mm256_fmsub_ps(a, c, _mm256_mul_ps(b, s)));
        store(xr + half + i, m, _mm256_fmadd_ps(b, c, _mm256_mul_ps(a, s)));
      });
    } else {
      // 4 interleaved pairs per vector: [a0 b0 a1 b1 ...] * [c0 c0 c1 c1 ...]
      //                                + [b0 a0 b1 a1 ...] * [-s0 s0 -s1 s1 ...]
      const __m256i dup = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
      const __m256 alt = _mm256_mul_ps(vsign, _mm256_setr_ps(-1, 1, -1, 1, -1, 1, -1, 1));
      int64_t i = 0;  // pair index
      for (; i + 4 <= half; i += 4) {
        __m256 c = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(cs + i)), dup);
        __m256 s = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(cs + half + i)), dup);
        __m256 v = _mm256_loadu_ps(xr + 2 * i);
        __m256 sw = _mm256_permute_ps(v, 0xB1);
        _mm256_storeu_ps(xr + 2 * i, _mm256_fmadd_ps(v, c, _mm256_mul_ps(sw, _mm256_mul_ps(s, alt))));
      }
      for (; i < half; ++i) {  // < 4 pairs left
        float c = cs[i], s = sign * cs[half + i], a = xr[2 * i], b = xr[2 * i + 1];
        xr[2 * i] = a * c - b * s;
        xr[2 * i + 1] = b * c + a * s;
      }
    }
  }
}

// ---- cross-entropy ----------------------------------------------------------------------------
double cross_entropy_forward(float* probs, const float* logits, const int32_t* targets,
                             int32_t ignore_index, int64_t rows, int64_t v, int64_t* count) {
  double total = 0;
  for (int64_t r = 0; r < rows; ++r) {
    float mx;
    float sum = softmax_row(probs + r * v, logits + r * v, nullptr, v, &mx);
    if (targets[r] == ignore_index) continue;
    // -log p_t = log sum exp(x - m) + m - x_t
    total += __builtin_log(static_cast<double>(sum)) + mx - logits[r * v + targets[r]];
    ++*count;
  }
  return total;
}
void cross_entropy_backward(float* dlogits, const float* probs, const int32_t* targets,
                            int32_t ignore_index, float g, int64_t rows, int64_t v) {
  for (int64_t r = 0; r < rows; ++r) {
    float* dr = dlogits + r * v;
    if (targets[r] == ignore_index) {
      blocks(v, [&](int64_t j, __m256i m) { store(dr + j, m, _mm256_setzero_ps()); });
      continue;
    }
    scale(dr, probs + r * v, g, v);
    dr[targets[r]] -= g;
  }
}

// ---- embedding --------------------------------------------------------------------------------
void embedding_forward(float* out, const float* table, const int32_t* ids, int64_t n, int64_t c) {
  for (int64_t i = 0; i < n; ++i)
    map1(out + i * c, table + ids[i] * c, c, [](__m256 v) { return v; });
}
void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int64_t n,
                        int64_t c) {
  for (int64_t i = 0; i < n; ++i) add(dtable + ids[i] * c, dtable + ids[i] * c, dout + i * c, c);
}

}  // namespace

const Ops& avx2_ops() {
  static const Ops ops = {
      add,
      mul,
      scale,
      axpy,
      add_bias,
      bias_backward,
      gelu_forward,
      gelu_backward,
      silu_forward,
      silu_backward,
      swiglu_forward,
      swiglu_backward,
      softmax_forward,
      softmax_backward,
      layernorm_forward,
      layernorm_backward,
      rmsnorm_forward,
      rmsnorm_backward,
      rope_rotate,
      cross_entropy_forward,
      cross_entropy_backward,
      embedding_forward,
      embedding_backward,
  };
  return ops;
}

namespace avx2 {
void exp_n(float* y, const float* x, int64_t n) { map1(y, x, n, [](__m256 v) { return exp256(v); }); }
void erf_n(float* y, const float* x, int64_t n) { map1(y, x, n, [](__m256 v) { return erf256(v); }); }
}  // namespace avx2

}  // namespace lorafit::kernels
