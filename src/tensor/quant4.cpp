// bitsandbytes 4-bit quantization (NF4, FP4) with optional double quantization (quant.h).
// Written from the facts of bitsandbytes 0.50 (code tables, rounding, layout), checked byte for
// byte against its output in tests/tensor/quant4_test.cpp. The dequantization has a scalar
// reference and an AVX2 path chosen at run time (this layer has no kernels/ to dispatch through, so
// the AVX2 function carries a target attribute and is only entered after __builtin_cpu_supports
// said yes).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

#include "lorafit/quant.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define LORAFIT_QUANT4_X86 1
#endif

namespace lorafit::tensor {

namespace {

// Code values as bitsandbytes' tables hold them: Python floats rounded to fp32.
const float kNf4[16] = {
    static_cast<float>(-1.0),
    static_cast<float>(-0.6961928009986877),
    static_cast<float>(-0.5250730514526367),
    static_cast<float>(-0.39491748809814453),
    static_cast<float>(-0.28444138169288635),
    static_cast<float>(-0.18477343022823334),
    static_cast<float>(-0.09105003625154495),
    static_cast<float>(0.0),
    static_cast<float>(0.07958029955625534),
    static_cast<float>(0.16093020141124725),
    static_cast<float>(0.24611230194568634),
    static_cast<float>(0.33791524171829224),
    static_cast<float>(0.44070982933044434),
    static_cast<float>(0.5626170039176941),
    static_cast<float>(0.7229568362236023),
    static_cast<float>(1.0),
};
// FP4 (1 sign, 2 exponent, 1 mantissa bits, exponent bias 2): code index = bit pattern; the
// values 0, 0.0625, 8, 12, 4, 6, 2, 3 (and their negatives, -0 included) divided by 12 in fp32.
const float kFp4[16] = {
    0.0f / 12.0f,  0.0625f / 12.0f, 8.0f / 12.0f,  12.0f / 12.0f,    4.0f / 12.0f,  6.0f / 12.0f,
    2.0f / 12.0f,  3.0f / 12.0f,    -0.0f / 12.0f, -0.0625f / 12.0f, -8.0f / 12.0f, -12.0f / 12.0f,
    -4.0f / 12.0f, -6.0f / 12.0f,   -2.0f / 12.0f, -3.0f / 12.0f,
};
// FP4 codes in ascending value order; between the two zeros (0 and 8), a value that scales to
// exactly 0 or below gets 0 and a positive one 8, as bitsandbytes' argsort order gives.
const uint8_t kFp4Order[16] = {11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3};

struct Table4 {
  float bounds[15];  // midpoints of the sorted codes, fp32
  uint8_t order[16];
};

Table4 make_table(Quant4Type t) {
  Table4 tb{};
  const float* code = quant4_code(t);
  for (int i = 0; i < 16; ++i) tb.order[i] = t == Quant4Type::NF4 ? i : kFp4Order[i];
  for (int i = 0; i < 15; ++i) tb.bounds[i] = (code[tb.order[i]] + code[tb.order[i + 1]]) / 2.0f;
  return tb;
}

const Table4& table(Quant4Type t) {
  static const Table4 nf4 = make_table(Quant4Type::NF4);
  static const Table4 fp4 = make_table(Quant4Type::FP4);
  return t == Quant4Type::NF4 ? nf4 : fp4;
}

// bitsandbytes' signed 8-bit dynamic map (create_dynamic_map(), 256 sorted values: 2^i fraction
// means per exponent 10^(i-6), both signs, 0 and 1), as fp32 bits. Held as a table rather than
// rebuilt because bitsandbytes builds it with torch.linspace, whose fp32 rounding depends on
// torch's vector width; this is the AVX2/default build's table (quant4_test checks it).
const uint32_t kDynamicMapBits[256] = {
    0xbf7e3333u, 0xbf7a999au, 0xbf770000u, 0xbf736666u, 0xbf6fcccdu, 0xbf6c3333u, 0xbf68999au,
    0xbf650000u, 0xbf616666u, 0xbf5dcccdu, 0xbf5a3333u, 0xbf56999au, 0xbf530000u, 0xbf4f6666u,
    0xbf4bcccdu, 0xbf483333u, 0xbf44999au, 0xbf410000u, 0xbf3d6666u, 0xbf39cccdu, 0xbf363334u,
    0xbf32999au, 0xbf2f0000u, 0xbf2b6666u, 0xbf27cccdu, 0xbf243334u, 0xbf20999au, 0xbf1d0000u,
    0xbf196666u, 0xbf15cccdu, 0xbf123334u, 0xbf0e999au, 0xbf0b0000u, 0xbf076666u, 0xbf03ccccu,
    0xbf003333u, 0xbef93332u, 0xbef20000u, 0xbeeaccccu, 0xbee3999au, 0xbedc6666u, 0xbed53333u,
    0xbece0000u, 0xbec6ccccu, 0xbebf999au, 0xbeb86666u, 0xbeb13333u, 0xbeaa0000u, 0xbea2ccccu,
    0xbe9b999au, 0xbe946666u, 0xbe8d3334u, 0xbe860000u, 0xbe7d9999u, 0xbe6f3333u, 0xbe60cccdu,
    0xbe526666u, 0xbe440000u, 0xbe35999au, 0xbe273333u, 0xbe18cccdu, 0xbe0a6666u, 0xbdf80000u,
    0xbddb3334u, 0xbdc9eb85u, 0xbdc428f7u, 0xbdbe6667u, 0xbdb8a3d7u, 0xbdb2e148u, 0xbdad1eb8u,
    0xbda75c2au, 0xbda1999au, 0xbd9bd70au, 0xbd96147bu, 0xbd9051ebu, 0xbd8a8f5du, 0xbd84cccdu,
    0xbd7e147bu, 0xbd728f5du, 0xbd670a3du, 0xbd5b851fu, 0xbd500000u, 0xbd447ae1u, 0xbd38f5c3u,
    0xbd2d70a3u, 0xbd21eb85u, 0xbd166667u, 0xbd0ae148u, 0xbcfeb852u, 0xbce7ae15u, 0xbcd0a3d7u,
    0xbcb9999au, 0xbca28f5du, 0xbc8b851fu, 0xbc68f5c3u, 0xbc3ae148u, 0xbc1f3b64u, 0xbc160418u,
    0xbc0ccccdu, 0xbc039581u, 0xbbf4bc6au, 0xbbe24dd3u, 0xbbcfdf3bu, 0xbbbd70a4u, 0xbbab020du,
    0xbb989374u, 0xbb8624ddu, 0xbb676c8au, 0xbb428f5cu, 0xbb1db22du, 0xbaf1a9fcu, 0xbaa7ef9du,
    0xba7765ffu, 0xba59e83eu, 0xba3c6a80u, 0xba1eecc1u, 0xba016f01u, 0xb9c7e283u, 0xb98ce705u,
    0xb923d70bu, 0xb8ba1f4bu, 0xb88aefb3u, 0xb8378034u, 0xb7b24206u, 0xb70205ffu, 0xb65a1a94u,
    0xb513a3b7u, 0x00000000u, 0x3513a3b7u, 0x365a1a94u, 0x370205ffu, 0x37b24206u, 0x38378034u,
    0x388aefb3u, 0x38ba1f4bu, 0x3923d70bu, 0x398ce705u, 0x39c7e283u, 0x3a016f01u, 0x3a1eecc1u,
    0x3a3c6a80u, 0x3a59e83eu, 0x3a7765ffu, 0x3aa7ef9du, 0x3af1a9fcu, 0x3b1db22du, 0x3b428f5cu,
    0x3b676c8au, 0x3b8624ddu, 0x3b989374u, 0x3bab020du, 0x3bbd70a4u, 0x3bcfdf3bu, 0x3be24dd3u,
    0x3bf4bc6au, 0x3c039581u, 0x3c0ccccdu, 0x3c160418u, 0x3c1f3b64u, 0x3c3ae148u, 0x3c68f5c3u,
    0x3c8b851fu, 0x3ca28f5du, 0x3cb9999au, 0x3cd0a3d7u, 0x3ce7ae15u, 0x3cfeb852u, 0x3d0ae148u,
    0x3d166667u, 0x3d21eb85u, 0x3d2d70a3u, 0x3d38f5c3u, 0x3d447ae1u, 0x3d500000u, 0x3d5b851fu,
    0x3d670a3du, 0x3d728f5du, 0x3d7e147bu, 0x3d84cccdu, 0x3d8a8f5du, 0x3d9051ebu, 0x3d96147bu,
    0x3d9bd70au, 0x3da1999au, 0x3da75c2au, 0x3dad1eb8u, 0x3db2e148u, 0x3db8a3d7u, 0x3dbe6667u,
    0x3dc428f7u, 0x3dc9eb85u, 0x3ddb3334u, 0x3df80000u, 0x3e0a6666u, 0x3e18cccdu, 0x3e273333u,
    0x3e35999au, 0x3e440000u, 0x3e526666u, 0x3e60cccdu, 0x3e6f3333u, 0x3e7d9999u, 0x3e860000u,
    0x3e8d3334u, 0x3e946666u, 0x3e9b999au, 0x3ea2ccccu, 0x3eaa0000u, 0x3eb13333u, 0x3eb86666u,
    0x3ebf999au, 0x3ec6ccccu, 0x3ece0000u, 0x3ed53333u, 0x3edc6666u, 0x3ee3999au, 0x3eeaccccu,
    0x3ef20000u, 0x3ef93332u, 0x3f003333u, 0x3f03ccccu, 0x3f076666u, 0x3f0b0000u, 0x3f0e999au,
    0x3f123334u, 0x3f15cccdu, 0x3f196666u, 0x3f1d0000u, 0x3f20999au, 0x3f243334u, 0x3f27cccdu,
    0x3f2b6666u, 0x3f2f0000u, 0x3f32999au, 0x3f363334u, 0x3f39cccdu, 0x3f3d6666u, 0x3f410000u,
    0x3f44999au, 0x3f483333u, 0x3f4bcccdu, 0x3f4f6666u, 0x3f530000u, 0x3f56999au, 0x3f5a3333u,
    0x3f5dcccdu, 0x3f616666u, 0x3f650000u, 0x3f68999au, 0x3f6c3333u, 0x3f6fcccdu, 0x3f736666u,
    0x3f770000u, 0x3f7a999au, 0x3f7e3333u, 0x3f800000u,
};

// torch's fp32 sum of a contiguous vector on one thread (its cascade_sum with 8-lane vectors and
// 4 accumulators, the AVX2 / default build), so that the offset of double quantization is
// bitsandbytes' absmax.mean() to the bit. Lanes of vector i are x[i*8 .. i*8+7].
float torch_sum_f32(const float* x, int64_t n) {
  constexpr int L = 8, kIlp = 4, kLevels = 4, kStep = 16;  // level_power 4 below 2^19 vectors
  using Vec = std::array<float, L>;
  auto add = [](Vec& a, const Vec& b) {
    for (int l = 0; l < L; ++l) a[l] += b[l];
  };
  // row_sum over `size` items of width w (w = L for vectors, 1 for scalars): multi_row_sum with
  // kIlp interleaved rows and kLevels cascade levels, then the tail into row 0.
  auto row_sum = [&](int64_t size, int w) {
    auto load = [&](int64_t item) {
      Vec v{};
      for (int l = 0; l < w; ++l) v[l] = x[item * w + l];
      return v;
    };
    const int64_t size_ilp = size / kIlp;
    Vec acc[kLevels][kIlp] = {};
    int64_t i = 0;
    for (; i + kStep <= size_ilp;) {
      for (int j = 0; j < kStep; ++j, ++i)
        for (int k = 0; k < kIlp; ++k) add(acc[0][k], load(i * kIlp + k));
      for (int j = 1; j < kLevels; ++j) {
        for (int k = 0; k < kIlp; ++k) {
          add(acc[j][k], acc[j - 1][k]);
          acc[j - 1][k] = Vec{};
        }
        const int64_t mask = static_cast<int64_t>(kStep - 1) << (j * 4);
        if ((i & mask) != 0) break;
      }
    }
    for (; i < size_ilp; ++i)
      for (int k = 0; k < kIlp; ++k) add(acc[0][k], load(i * kIlp + k));
    for (int j = 1; j < kLevels; ++j)
      for (int k = 0; k < kIlp; ++k) add(acc[0][k], acc[j][k]);
    for (int64_t t = size_ilp * kIlp; t < size; ++t) add(acc[0][0], load(t));
    for (int k = 1; k < kIlp; ++k) add(acc[0][0], acc[0][k]);
    return acc[0][0];
  };
  if (n < L) return row_sum(n, 1)[0];
  const int64_t nvec = n / L;
  const Vec v = row_sum(nvec, L);
  float s = 0.0f;
  for (int64_t k = nvec * L; k < n; ++k) s += x[k];
  for (int l = 0; l < L; ++l) s += v[l];
  return s;
}

// bitsandbytes 0.50's CPU 8-bit blockwise quantizer does not pick the nearest map entry: the
// normalized value z in [-1, 1] selects cell j = trunc((z + 1) * 32767.5 + 0.5) (fp32) of a
// 65536-entry table, and the cell holds the entry nearest to its centre j / 32767.5 - 1 (ties to
// the lower entry). Near z = 0, where the map is finer than a cell, this differs from the nearest
// entry; we use the same table to stay byte-identical (found by probing the library: 0 differences
// in 250k values; the fixture's 6000+ nested values pin it).
class DynamicLut {
 public:
  DynamicLut() : lut_(65536) {
    const float* map = dynamic_map();
    for (int j = 0; j < 65536; ++j) {
      const float c = static_cast<float>(j) / 32767.5f - 1.0f;
      int lo = static_cast<int>(std::upper_bound(map, map + 256, c) - map) - 1;
      if (lo < 0) lo = 0;
      if (lo < 255 && std::fabs(c - map[lo + 1]) < std::fabs(c - map[lo])) ++lo;
      lut_[static_cast<size_t>(j)] = static_cast<uint8_t>(lo);
    }
  }

  uint8_t quantize(float z) const {
    if (!(z == z)) return 0;
    z = std::min(1.0f, std::max(-1.0f, z));
    const float t = (z + 1.0f) * 32767.5f + 0.5f;
    return lut_[static_cast<size_t>(std::min(65535.0f, t))];
  }

 private:
  std::vector<uint8_t> lut_;
};

inline uint8_t code_of(const Table4& tb, float s) {
  // bucketize(s, bounds): the number of bounds strictly below s.
  int q = 0;
  for (int i = 0; i < 15; ++i) q += tb.bounds[i] < s;
  return tb.order[q];
}

void check_range(const Quant4& q, int64_t begin, int64_t count) {
  LORAFIT_CHECK(begin >= 0 && count >= 0 && begin <= q.n && count <= q.n - begin, "dequantize_4bit",
                "values [" + std::to_string(begin) + ", " + std::to_string(begin + count) +
                    ") are outside the " + std::to_string(q.n) + " values of the tensor");
}

// One block's values [j0, j1) (indices inside the tensor) with absmax a.
void dequant_span_ref(const Quant4& q, const float* code, int64_t j0, int64_t j1, float a,
                      float* dst) {
  for (int64_t j = j0; j < j1; ++j) {
    const uint8_t byte = q.packed[static_cast<size_t>(j >> 1)];
    const int nib = (j & 1) ? (byte & 0x0F) : (byte >> 4);
    *dst++ = code[nib] * a;
  }
}

#ifdef LORAFIT_QUANT4_X86
bool cpu_has_avx2() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has;
}

// 8 values from 4 packed bytes: the 16-entry table is two 8-lane registers, permuted by the low 3
// bits of each code and blended on bit 3.
__attribute__((target("avx2"))) inline __m256 lookup8(const uint8_t* p, __m256 lo, __m256 hi) {
  uint32_t w;
  std::memcpy(&w, p, 4);
  // Codes in element order: byte k gives (high nibble, low nibble).
  const __m256i bytes = _mm256_set1_epi32(static_cast<int>(w));
  const __m256i shift_byte = _mm256_setr_epi32(0, 0, 8, 8, 16, 16, 24, 24);
  const __m256i shift_nib = _mm256_setr_epi32(4, 0, 4, 0, 4, 0, 4, 0);
  __m256i idx = _mm256_srlv_epi32(bytes, shift_byte);
  idx = _mm256_and_si256(_mm256_srlv_epi32(idx, shift_nib), _mm256_set1_epi32(0x0F));
  const __m256 a = _mm256_permutevar8x32_ps(lo, idx);
  const __m256 b = _mm256_permutevar8x32_ps(hi, idx);
  const __m256 sel = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));  // bit 3 -> sign bit
  return _mm256_blendv_ps(a, b, sel);
}

__attribute__((target("avx2"))) void dequant_span_avx2(const Quant4& q, const float* code,
                                                       int64_t j0, int64_t j1, float a,
                                                       float* dst) {
  const __m256 lo = _mm256_loadu_ps(code), hi = _mm256_loadu_ps(code + 8);
  const __m256 va = _mm256_set1_ps(a);
  int64_t j = j0;
  // Scalar until j is even (a byte boundary), then 8 values per 4 bytes.
  if (j & 1) {
    dequant_span_ref(q, code, j, j + 1, a, dst++);
    ++j;
  }
  for (; j + 8 <= j1; j += 8, dst += 8)
    _mm256_storeu_ps(dst, _mm256_mul_ps(lookup8(q.packed.data() + (j >> 1), lo, hi), va));
  dequant_span_ref(q, code, j, j1, a, dst);
}
#endif

void dequantize_impl(const Quant4& q, int64_t begin, int64_t count, float* dst, bool simd) {
  check_range(q, begin, count);
  const float* code = quant4_code(q.type);
  const int64_t end = begin + count;
  for (int64_t j0 = begin; j0 < end;) {
    const int64_t b = j0 / kQuant4Block;
    const int64_t j1 = std::min(end, (b + 1) * kQuant4Block);
    const float a = quant4_block_absmax(q, b);
#ifdef LORAFIT_QUANT4_X86
    if (simd) {
      dequant_span_avx2(q, code, j0, j1, a, dst);
    } else {
      dequant_span_ref(q, code, j0, j1, a, dst);
    }
#else
    (void)simd;
    dequant_span_ref(q, code, j0, j1, a, dst);
#endif
    dst += j1 - j0;
    j0 = j1;
  }
}

}  // namespace

const float* quant4_code(Quant4Type t) {
  return t == Quant4Type::NF4 ? kNf4 : kFp4;
}
const char* quant4_name(Quant4Type t) {
  return t == Quant4Type::NF4 ? "nf4" : "fp4";
}

const float* dynamic_map() {
  static const std::array<float, 256> map = [] {
    std::array<float, 256> m{};
    std::memcpy(m.data(), kDynamicMapBits, sizeof kDynamicMapBits);
    return m;
  }();
  return map.data();
}

size_t Quant4::nbytes() const {
  return packed.size() + absmax.size() * 4 + absmax_q.size() + nested_absmax.size() * 4 +
         (double_quant ? 4 : 0);
}

Quant4 quantize_4bit(const float* x, int64_t n, Quant4Type t, bool double_quant) {
  LORAFIT_CHECK(n >= 0, "quantize_4bit", "negative size " + std::to_string(n));
  const Table4& tb = table(t);
  Quant4 q;
  q.type = t;
  q.n = n;
  q.double_quant = double_quant;
  q.packed.assign(static_cast<size_t>((n + 1) / 2), 0);
  const int64_t nb = q.blocks();
  std::vector<float> absmax(static_cast<size_t>(nb));
  const float tiny = static_cast<float>(1e-38);  // bitsandbytes clamps the divisor to 1e-38
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t j0 = b * kQuant4Block, j1 = std::min(n, j0 + kQuant4Block);
    float amax = 0.0f;
    for (int64_t j = j0; j < j1; ++j) amax = std::max(amax, std::fabs(x[j]));
    absmax[static_cast<size_t>(b)] = amax;
    const float div = std::max(amax, tiny);
    const bool full = j1 - j0 == kQuant4Block;
    // Full blocks multiply by the reciprocal, the partial last block divides (as bitsandbytes).
    const float inv = 1.0f / div;
    for (int64_t j = j0; j < j1; ++j) {
      float s = full ? x[j] * inv : x[j] / div;
      s = std::min(1.0f, std::max(-1.0f, s));
      const uint8_t c = code_of(tb, s);
      q.packed[static_cast<size_t>(j >> 1)] |= (j & 1) ? c : static_cast<uint8_t>(c << 4);
    }
  }
  if (n & 1) q.packed.back() |= code_of(tb, 0.0f);  // the zero pad of an odd count
  if (!double_quant) {
    q.absmax = std::move(absmax);
    return q;
  }
  // offset = absmax.mean() as torch computes it: an fp32 sum, then an fp32 division.
  q.offset = nb ? torch_sum_f32(absmax.data(), nb) / static_cast<float>(nb) : 0.0f;
  static const DynamicLut search;
  const int64_t nn = (nb + kQuant4NestedBlock - 1) / kQuant4NestedBlock;
  q.absmax_q.resize(static_cast<size_t>(nb));
  q.nested_absmax.resize(static_cast<size_t>(nn));
  for (auto& a : absmax) a -= q.offset;
  for (int64_t k = 0; k < nn; ++k) {
    const int64_t b0 = k * kQuant4NestedBlock, b1 = std::min(nb, b0 + kQuant4NestedBlock);
    float amax = 0.0f;
    for (int64_t b = b0; b < b1; ++b) amax = std::max(amax, std::fabs(absmax[b]));
    q.nested_absmax[static_cast<size_t>(k)] = amax;
    for (int64_t b = b0; b < b1; ++b)
      q.absmax_q[static_cast<size_t>(b)] = search.quantize(absmax[b] / amax);
  }
  return q;
}

float quant4_block_absmax(const Quant4& q, int64_t block) {
  if (!q.double_quant) return q.absmax[static_cast<size_t>(block)];
  float a = dynamic_map()[q.absmax_q[static_cast<size_t>(block)]] *
            q.nested_absmax[static_cast<size_t>(block / kQuant4NestedBlock)];
  return a + q.offset;
}

void dequantize_4bit(const Quant4& q, int64_t begin, int64_t count, float* dst) {
#ifdef LORAFIT_QUANT4_X86
  dequantize_impl(q, begin, count, dst, cpu_has_avx2());
#else
  dequantize_impl(q, begin, count, dst, false);
#endif
}

void dequantize_4bit_ref(const Quant4& q, int64_t begin, int64_t count, float* dst) {
  dequantize_impl(q, begin, count, dst, false);
}

void check_quant4(const Quant4& q, const std::string& what) {
  auto need = [&](bool ok, const std::string& field, size_t got, int64_t want) {
    if (!ok)
      throw Error("[quant4] " + what + ": " + field + " has " + std::to_string(got) +
                  " entries, expected " + std::to_string(want) + " for " + std::to_string(q.n) +
                  " " + quant4_name(q.type) + " values");
  };
  LORAFIT_CHECK(q.n >= 0, "quant4", what + ": negative size");
  const int64_t nb = q.blocks();
  need(static_cast<int64_t>(q.packed.size()) == (q.n + 1) / 2, "packed codes", q.packed.size(),
       (q.n + 1) / 2);
  if (!q.double_quant) {
    need(static_cast<int64_t>(q.absmax.size()) == nb, "absmax", q.absmax.size(), nb);
    return;
  }
  const int64_t nn = (nb + kQuant4NestedBlock - 1) / kQuant4NestedBlock;
  need(static_cast<int64_t>(q.absmax_q.size()) == nb, "absmax (8-bit)", q.absmax_q.size(), nb);
  need(static_cast<int64_t>(q.nested_absmax.size()) == nn, "nested_absmax", q.nested_absmax.size(),
       nn);
}

namespace {
// The keepalive of a quant4_tensor: the state plus a tag that tells it apart from other wraps.
struct Quant4Holder {
  static constexpr uint32_t kTag = 0x34626e62u;  // "bnb4"
  uint32_t tag = kTag;
  Quant4 q;
};
}  // namespace

Tensor quant4_tensor(Quant4 q, const Shape& shape) {
  check_quant4(q, "quant4_tensor");
  LORAFIT_CHECK(shape_numel(shape) == q.n && !shape.empty() && shape.back() % 2 == 0,
                "quant4_tensor",
                "shape " + shape_str(shape) + " does not fit " + std::to_string(q.n) +
                    " values with an even last dimension (two codes per byte)");
  auto h = std::make_shared<Quant4Holder>();
  h->q = std::move(q);
  void* data = h->q.packed.data();
  return Tensor::wrap(data, shape, DType::NF4, std::shared_ptr<void>(h, h.get()));
}

const Quant4& quant4_state(const Tensor& t) {
  const auto* h = static_cast<const Quant4Holder*>(t.keepalive().get());
  LORAFIT_CHECK(t.dtype() == DType::NF4 && h != nullptr && h->tag == Quant4Holder::kTag,
                "quant4_state", t.str() + " is not a 4-bit weight made by quant4_tensor");
  return h->q;
}

void dequantize_4bit_tensor(const Tensor& t, int64_t begin, int64_t count, float* dst) {
  const Quant4& q = quant4_state(t);
  const auto off = static_cast<const uint8_t*>(t.raw()) - q.packed.data();
  LORAFIT_CHECK(begin >= 0 && count >= 0 && begin + count <= t.numel(), "dequantize_4bit",
                "values [" + std::to_string(begin) + ", " + std::to_string(begin + count) +
                    ") are outside " + t.str());
  dequantize_4bit(q, 2 * static_cast<int64_t>(off) + begin, count, dst);
}

}  // namespace lorafit::tensor
