// Block (de)quantization of ggml Q8_0 / Q4_0 / Q4_1 and dequantization of the K-quants Q4_K /
// Q5_K / Q6_K (their quantizers: quant_k.cpp) (layouts in quant.h and REFERENCE.md). The K-quants have a scalar reference and an
// AVX2 path chosen at run time (target attribute + __builtin_cpu_supports, as in quant4.cpp); CMake
// compiles this file with -ffp-contract=off so that neither fuses a multiply and a subtraction
// (gguf-py's numpy rounds each step, and tests/tensor/kquant_test.cpp compares bits).
// Quantizers follow ggml's quantize_row_*_ref rounding so that our bytes equal llama.cpp's and
// gguf-py's: Q8_0 rounds half away from zero, Q4_0/Q4_1 add 0.5 (8.5) and truncate, clamped to 15.
// The clamping below also keeps NaN/inf inputs away from an undefined float->int conversion.
#include "lorafit/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define LORAFIT_QUANT_X86 1
#endif

namespace lorafit::tensor {

namespace kquant {  // quant_k.cpp: ggml's quantize_row_q{4,5,6}_K_ref, nb blocks of 256
void quantize_q4_k(const float* x, uint8_t* dst, int64_t nb);
void quantize_q5_k(const float* x, uint8_t* dst, int64_t nb);
void quantize_q6_k(const float* x, uint8_t* dst, int64_t nb);
}  // namespace kquant

namespace {

void check_blocks(DType t, int64_t n, const char* op) {
  int64_t be = dtype_block_elems(t);
  LORAFIT_CHECK(n >= 0 && n % be == 0, op,
                std::to_string(n) + " values of " + dtype_name(t) +
                    " is not a whole number of blocks of " + std::to_string(be));
}

// Quantization index in [0, 15] from v = x*id + offset, truncating like ggml's (int8_t) cast.
inline uint8_t nib_of(float v) {
  if (!(v >= 0.0f)) return 0;  // also NaN
  if (v >= 15.0f) return 15;
  return static_cast<uint8_t>(v);
}

inline float load_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);  // src may be unaligned
  return f16_to_f32(h);
}

// The loops below read bytes straight from src (no per-block struct copy) so that the compiler
// vectorizes the inner 32/16-wide loops; Linear calls these on every weight tile.
void dequant_q8_0(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const uint8_t* b = src + i * sizeof(BlockQ8_0);
    const float d = load_f16(b);
    const auto* q = reinterpret_cast<const int8_t*>(b + 2);
    float* y = dst + i * kQK;
    for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(q[j]) * d;
  }
}

void dequant_q4_0(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const uint8_t* b = src + i * sizeof(BlockQ4_0);
    const float d = load_f16(b);
    const uint8_t* qs = b + 2;
    float* y = dst + i * kQK;
    for (int j = 0; j < kQK / 2; ++j) {
      y[j] = static_cast<float>(static_cast<int>(qs[j] & 0x0F) - 8) * d;
      y[j + kQK / 2] = static_cast<float>(static_cast<int>(qs[j] >> 4) - 8) * d;
    }
  }
}

void dequant_q4_1(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const uint8_t* b = src + i * sizeof(BlockQ4_1);
    const float d = load_f16(b);
    const float m = load_f16(b + 2);
    const uint8_t* qs = b + 4;
    float* y = dst + i * kQK;
    for (int j = 0; j < kQK / 2; ++j) {
      y[j] = static_cast<float>(qs[j] & 0x0F) * d + m;
      y[j + kQK / 2] = static_cast<float>(qs[j] >> 4) * d + m;
    }
  }
}

// ggml quantize_row_q8_0_ref: d = amax / 127, q = round(x / d).
void quant_q8_0(const float* x, uint8_t* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float* xb = x + i * kQK;
    float amax = 0.0f;
    for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    BlockQ8_0 b;
    b.d = f32_to_f16(d);
    for (int j = 0; j < kQK; ++j) {
      float q = std::round(xb[j] * id);  // half away from zero, as roundf
      if (!(q >= -128.0f)) q = q != q ? 0.0f : -128.0f;
      if (q > 127.0f) q = 127.0f;
      b.qs[j] = static_cast<int8_t>(q);
    }
    std::memcpy(dst + i * sizeof b, &b, sizeof b);
  }
}

// ggml quantize_row_q4_0_ref: d = (value of largest magnitude) / -8, nib = trunc(x/d + 8.5).
void quant_q4_0(const float* x, uint8_t* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float* xb = x + i * kQK;
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < kQK; ++j) {
      if (amax < std::fabs(xb[j])) {
        amax = std::fabs(xb[j]);
        max = xb[j];
      }
    }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    BlockQ4_0 b;
    b.d = f32_to_f16(d);
    for (int j = 0; j < kQK / 2; ++j) {
      const uint8_t lo = nib_of(xb[j] * id + 8.5f);
      const uint8_t hi = nib_of(xb[j + kQK / 2] * id + 8.5f);
      b.qs[j] = static_cast<uint8_t>(lo | (hi << 4));
    }
    std::memcpy(dst + i * sizeof b, &b, sizeof b);
  }
}

// ggml quantize_row_q4_1_ref: d = (max - min) / 15, m = min, nib = trunc((x - min)/d + 0.5).
void quant_q4_1(const float* x, uint8_t* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float* xb = x + i * kQK;
    float min = xb[0], max = xb[0];
    for (int j = 1; j < kQK; ++j) {
      if (xb[j] < min) min = xb[j];
      if (xb[j] > max) max = xb[j];
    }
    const float d = (max - min) / 15.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    BlockQ4_1 b;
    b.d = f32_to_f16(d);
    b.m = f32_to_f16(min);
    for (int j = 0; j < kQK / 2; ++j) {
      const uint8_t lo = nib_of((xb[j] - min) * id + 0.5f);
      const uint8_t hi = nib_of((xb[j + kQK / 2] - min) * id + 0.5f);
      b.qs[j] = static_cast<uint8_t>(lo | (hi << 4));
    }
    std::memcpy(dst + i * sizeof b, &b, sizeof b);
  }
}

// ---- K-quants: scalar reference of the dequantization ---------------------------------------
// ggml's get_scale_min_k4: the 6-bit scale and min of sub-block j from the 12 packed bytes.
inline void scale_min_k4(int j, const uint8_t* q, int* sc, int* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// The fp32 factors of the 8 sub-blocks of a Q4_K / Q5_K block: x = dl[j]·q − ml[j].
inline void kquant_factors(const uint8_t* b, float* dl, float* ml) {
  const float d = load_f16(b), dmin = load_f16(b + 2);
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    scale_min_k4(j, b + 4, &sc, &m);
    dl[j] = d * static_cast<float>(sc);
    ml[j] = dmin * static_cast<float>(m);
  }
}

// Q4_K block (144 bytes): f16 d, f16 dmin, u8 scales[12], u8 qs[128].
void dequant_q4_k_ref(const uint8_t* src, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK_K) {
    const uint8_t* b = src + i * sizeof(BlockQ4_K);
    float dl[8], ml[8];
    kquant_factors(b, dl, ml);
    const uint8_t* qs = b + 16;
    for (int k = 0; k < 4; ++k) {
      for (int l = 0; l < 32; ++l) {
        y[64 * k + l] = dl[2 * k] * static_cast<float>(qs[32 * k + l] & 0xF) - ml[2 * k];
        y[64 * k + 32 + l] = dl[2 * k + 1] * static_cast<float>(qs[32 * k + l] >> 4) - ml[2 * k + 1];
      }
    }
  }
}

// Q5_K block (176 bytes): f16 d, f16 dmin, u8 scales[12], u8 qh[32], u8 qs[128].
void dequant_q5_k_ref(const uint8_t* src, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK_K) {
    const uint8_t* b = src + i * sizeof(BlockQ5_K);
    float dl[8], ml[8];
    kquant_factors(b, dl, ml);
    const uint8_t* qh = b + 16;
    const uint8_t* qs = b + 48;
    for (int j = 0; j < 8; ++j) {
      const uint8_t* q = qs + 32 * (j / 2);
      const int shift = (j % 2) * 4;
      for (int l = 0; l < 32; ++l) {
        const int v = ((q[l] >> shift) & 0xF) | (((qh[l] >> j) & 1) << 4);
        y[32 * j + l] = dl[j] * static_cast<float>(v) - ml[j];
      }
    }
  }
}

// Q6_K block (210 bytes): u8 ql[128], u8 qh[64], i8 scales[16], f16 d.
void dequant_q6_k_ref(const uint8_t* src, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const uint8_t* b = src + i * sizeof(BlockQ6_K);
    const float d = load_f16(b + 208);
    const uint8_t* ql = b;
    const uint8_t* qh = b + 128;
    const auto* sc = reinterpret_cast<const int8_t*>(b + 192);
    for (int h = 0; h < 2; ++h, y += 128, ql += 64, qh += 32, sc += 8) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = (d * static_cast<float>(sc[is])) * static_cast<float>(q1);
        y[l + 32] = (d * static_cast<float>(sc[is + 2])) * static_cast<float>(q2);
        y[l + 64] = (d * static_cast<float>(sc[is + 4])) * static_cast<float>(q3);
        y[l + 96] = (d * static_cast<float>(sc[is + 6])) * static_cast<float>(q4);
      }
    }
  }
}

// ---- K-quants: AVX2 (entered only after cpu_has_avx2()) ------------------------------------
// The same fp32 operations as the reference, 8 lanes at a time: a separate multiply and subtract
// (no FMA), so the bits are the reference's.
#ifdef LORAFIT_QUANT_X86
bool cpu_has_avx2() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
  }();
  return has;
}

// 8 bytes at p widened to 8 int32 lanes.
__attribute__((target("avx2"))) inline __m256i load8_u8(const uint8_t* p) {
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

__attribute__((target("avx2"))) inline void store_affine(float* y, __m256i q, __m256 dl,
                                                         __m256 ml) {
  _mm256_storeu_ps(y, _mm256_sub_ps(_mm256_mul_ps(dl, _mm256_cvtepi32_ps(q)), ml));
}

__attribute__((target("avx2"))) void dequant_q4_k_avx2(const uint8_t* src, float* y, int64_t nb) {
  const __m256i m4 = _mm256_set1_epi32(0xF);
  for (int64_t i = 0; i < nb; ++i, y += kQK_K) {
    const uint8_t* b = src + i * sizeof(BlockQ4_K);
    float dl[8], ml[8];
    kquant_factors(b, dl, ml);
    const uint8_t* qs = b + 16;
    for (int k = 0; k < 4; ++k) {
      const __m256 d0 = _mm256_set1_ps(dl[2 * k]), m0 = _mm256_set1_ps(ml[2 * k]);
      const __m256 d1 = _mm256_set1_ps(dl[2 * k + 1]), m1 = _mm256_set1_ps(ml[2 * k + 1]);
      for (int l = 0; l < 32; l += 8) {
        const __m256i v = load8_u8(qs + 32 * k + l);
        store_affine(y + 64 * k + l, _mm256_and_si256(v, m4), d0, m0);
        store_affine(y + 64 * k + 32 + l, _mm256_srli_epi32(v, 4), d1, m1);
      }
    }
  }
}

__attribute__((target("avx2"))) void dequant_q5_k_avx2(const uint8_t* src, float* y, int64_t nb) {
  const __m256i m4 = _mm256_set1_epi32(0xF), one = _mm256_set1_epi32(1);
  for (int64_t i = 0; i < nb; ++i, y += kQK_K) {
    const uint8_t* b = src + i * sizeof(BlockQ5_K);
    float dl[8], ml[8];
    kquant_factors(b, dl, ml);
    const uint8_t* qh = b + 16;
    const uint8_t* qs = b + 48;
    for (int l = 0; l < 32; l += 8) {
      const __m256i h = load8_u8(qh + l);
      for (int k = 0; k < 4; ++k) {
        const __m256i v = load8_u8(qs + 32 * k + l);
        const int j0 = 2 * k, j1 = 2 * k + 1;
        const __m256i h0 = _mm256_slli_epi32(
            _mm256_and_si256(_mm256_srl_epi32(h, _mm_cvtsi32_si128(j0)), one), 4);
        const __m256i h1 = _mm256_slli_epi32(
            _mm256_and_si256(_mm256_srl_epi32(h, _mm_cvtsi32_si128(j1)), one), 4);
        store_affine(y + 32 * j0 + l, _mm256_or_si256(_mm256_and_si256(v, m4), h0),
                     _mm256_set1_ps(dl[j0]), _mm256_set1_ps(ml[j0]));
        store_affine(y + 32 * j1 + l, _mm256_or_si256(_mm256_srli_epi32(v, 4), h1),
                     _mm256_set1_ps(dl[j1]), _mm256_set1_ps(ml[j1]));
      }
    }
  }
}

__attribute__((target("avx2"))) void dequant_q6_k_avx2(const uint8_t* src, float* y, int64_t nb) {
  const __m256i m4 = _mm256_set1_epi32(0xF), m2 = _mm256_set1_epi32(3),
                c32 = _mm256_set1_epi32(32);
  for (int64_t i = 0; i < nb; ++i) {
    const uint8_t* b = src + i * sizeof(BlockQ6_K);
    const float d = load_f16(b + 208);
    const uint8_t* ql = b;
    const uint8_t* qh = b + 128;
    const auto* sc = reinterpret_cast<const int8_t*>(b + 192);
    for (int h = 0; h < 2; ++h, y += 128, ql += 64, qh += 32, sc += 8) {
      for (int l = 0; l < 32; l += 8) {
        const int is = l / 16;
        const __m256i a = load8_u8(ql + l), c = load8_u8(ql + 32 + l), hh = load8_u8(qh + l);
        const __m256i h0 = _mm256_slli_epi32(_mm256_and_si256(hh, m2), 4);
        const __m256i h1 = _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(hh, 2), m2), 4);
        const __m256i h2 = _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(hh, 4), m2), 4);
        const __m256i h3 = _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(hh, 6), m2), 4);
        const __m256i q1 = _mm256_sub_epi32(_mm256_or_si256(_mm256_and_si256(a, m4), h0), c32);
        const __m256i q2 = _mm256_sub_epi32(_mm256_or_si256(_mm256_and_si256(c, m4), h1), c32);
        const __m256i q3 = _mm256_sub_epi32(_mm256_or_si256(_mm256_srli_epi32(a, 4), h2), c32);
        const __m256i q4 = _mm256_sub_epi32(_mm256_or_si256(_mm256_srli_epi32(c, 4), h3), c32);
        const __m256i qs[4] = {q1, q2, q3, q4};
        for (int s = 0; s < 4; ++s) {
          const __m256 f = _mm256_set1_ps(d * static_cast<float>(sc[is + 2 * s]));
          _mm256_storeu_ps(y + 32 * s + l, _mm256_mul_ps(f, _mm256_cvtepi32_ps(qs[s])));
        }
      }
    }
  }
}
#endif

// Dispatch of the three K-quants (nb blocks); simd picks the AVX2 path.
void dequant_kquant(DType t, const uint8_t* s, float* dst, int64_t nb, bool simd) {
#ifdef LORAFIT_QUANT_X86
  if (simd) {
    if (t == DType::Q4_K) dequant_q4_k_avx2(s, dst, nb);
    else if (t == DType::Q5_K) dequant_q5_k_avx2(s, dst, nb);
    else dequant_q6_k_avx2(s, dst, nb);
    return;
  }
#else
  (void)simd;
#endif
  if (t == DType::Q4_K) dequant_q4_k_ref(s, dst, nb);
  else if (t == DType::Q5_K) dequant_q5_k_ref(s, dst, nb);
  else dequant_q6_k_ref(s, dst, nb);
}

void dequantize_impl(DType t, const void* src, float* dst, int64_t n, bool simd) {
  check_blocks(t, n, "dequantize_row");
  const auto* s = static_cast<const uint8_t*>(src);
  switch (t) {
    case DType::F32: std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float)); return;
    case DType::F16:
    case DType::BF16: {
      // src may be unaligned (a GGUF tensor at an odd offset): convert through a small buffer.
      uint16_t buf[256];
      for (int64_t i = 0; i < n; i += 256) {
        int64_t k = std::min<int64_t>(256, n - i);
        std::memcpy(buf, s + i * 2, static_cast<size_t>(k) * 2);
        if (t == DType::F16) f16_to_f32_n(buf, dst + i, k);
        else bf16_to_f32_n(buf, dst + i, k);
      }
      return;
    }
    case DType::Q8_0: dequant_q8_0(s, dst, n / kQK); return;
    case DType::Q4_0: dequant_q4_0(s, dst, n / kQK); return;
    case DType::Q4_1: dequant_q4_1(s, dst, n / kQK); return;
    case DType::Q4_K:
    case DType::Q5_K:
    case DType::Q6_K: dequant_kquant(t, s, dst, n / kQK_K, simd); return;
    default: break;
  }
  throw Error(std::string("[dequantize_row] dtype ") + dtype_name(t) +
              " is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K" +
              (t == DType::NF4 ? "; NF4 goes through dequantize_4bit)" : ")"));
}

}  // namespace

void dequantize_row(DType t, const void* src, float* dst, int64_t n) {
#ifdef LORAFIT_QUANT_X86
  dequantize_impl(t, src, dst, n, cpu_has_avx2());
#else
  dequantize_impl(t, src, dst, n, false);
#endif
}

void dequantize_row_ref(DType t, const void* src, float* dst, int64_t n) {
  dequantize_impl(t, src, dst, n, false);
}

void quantize_row(DType t, const float* src, void* dst, int64_t n) {
  check_blocks(t, n, "quantize_row");
  auto* d = static_cast<uint8_t*>(dst);
  switch (t) {
    case DType::F32: std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float)); return;
    case DType::F16:
    case DType::BF16: {
      uint16_t buf[256];
      for (int64_t i = 0; i < n; i += 256) {
        int64_t k = std::min<int64_t>(256, n - i);
        if (t == DType::F16) f32_to_f16_n(src + i, buf, k);
        else f32_to_bf16_n(src + i, buf, k);
        std::memcpy(d + i * 2, buf, static_cast<size_t>(k) * 2);
      }
      return;
    }
    case DType::Q8_0: quant_q8_0(src, d, n / kQK); return;
    case DType::Q4_0: quant_q4_0(src, d, n / kQK); return;
    case DType::Q4_1: quant_q4_1(src, d, n / kQK); return;
    case DType::Q4_K: kquant::quantize_q4_k(src, d, n / kQK_K); return;
    case DType::Q5_K: kquant::quantize_q5_k(src, d, n / kQK_K); return;
    case DType::Q6_K: kquant::quantize_q6_k(src, d, n / kQK_K); return;
    default: break;
  }
  throw Error(std::string("[quantize_row] dtype ") + dtype_name(t) +
              " is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K)");
}

Tensor quantize(const Tensor& x, DType t) {
  LORAFIT_CHECK(x.defined(), "quantize", "undefined tensor");
  LORAFIT_CHECK(x.dtype() == DType::F32 || x.dtype() == DType::F16 || x.dtype() == DType::BF16,
                "quantize", "input " + x.str() + " must be F32, F16 or BF16");
  int64_t be = dtype_block_elems(t);
  LORAFIT_CHECK(x.ndim() >= 1 && x.dim(-1) % be == 0, "quantize",
                "last dimension of " + x.str() + " must be a multiple of " + std::to_string(be) +
                    " for " + dtype_name(t));
  Tensor src = x.dtype() == DType::F32 ? x : x.to(DType::F32);
  Tensor out = Tensor::empty(x.shape(), t);
  quantize_row(t, src.f32(), out.raw(), x.numel());
  return out;
}

Tensor dequantize(const Tensor& x) {
  LORAFIT_CHECK(x.defined(), "dequantize", "undefined tensor");
  Tensor out = Tensor::empty(x.shape(), DType::F32);
  if (x.dtype() == DType::NF4) {
    dequantize_4bit_tensor(x, 0, x.numel(), out.f32());
    return out;
  }
  dequantize_row(x.dtype(), x.raw(), out.f32(), x.numel());
  return out;
}

}  // namespace lorafit::tensor
