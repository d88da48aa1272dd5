// fp32 -> BF16 with AVX512-BF16 (vcvtneps2bf16: round to nearest even, subnormal inputs to zero).
// The one file CMake compiles with -mavx512bf16; call only where the CPU has it (gemm_bf16.cpp).
#include <immintrin.h>

#include <cstdint>

namespace lorafit::kernels::avx512 {

void f32_to_bf16(const float* x, uint16_t* y, int64_t n) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i));
    _mm512_storeu_si512(reinterpret_cast<void*>(y + i), reinterpret_cast<__m512i>(v));
  }
  if (i < n) {
    const int64_t r = n - i;
    const __mmask16 m0 = static_cast<__mmask16>(r >= 16 ? 0xFFFF : (1u << r) - 1);
    const __mmask16 m1 = static_cast<__mmask16>(r <= 16 ? 0 : (1u << (r - 16)) - 1);
    __m512 lo = _mm512_maskz_loadu_ps(m0, x + i), hi = _mm512_maskz_loadu_ps(m1, x + i + 16);
    __m512bh v = _mm512_cvtne2ps_pbh(hi, lo);
    const __mmask32 m = static_cast<__mmask32>(r >= 32 ? 0xFFFFFFFFu : (1u << r) - 1);
    _mm512_mask_storeu_epi16(y + i, m, reinterpret_cast<__m512i>(v));
  }
}

}  // namespace lorafit::kernels::avx512
