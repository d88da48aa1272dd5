// Internal raw-pointer kernels behind include/lorafit/kernels.h.
//
// Two implementations with identical signatures:
//   ref::  plain scalar C++, the oracle the op checker compares against; kept forever.
//   avx2:: AVX2+FMA intrinsics, compiled only in kernels_avx2.cpp (the one file CMake gives
//          -mavx2 -mfma); call it only when isa_supported(Isa::Avx2).
// The public functions in kernels.cpp validate shapes, split rows across OpenMP threads and call
// the active table (Ops) on each chunk, so the raw kernels are single-threaded and assume valid
// arguments.
//
// Conventions (llm.c): activation gradients are written (=), parameter gradients (dw, db,
// dtable) accumulated (+=); a null parameter-gradient pointer means "frozen, skip".
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "lorafit/kernels.h"

namespace lorafit::kernels {

// Raw kernel signatures (argument order: outputs, saved state, inputs, sizes).
struct Ops {
  // n elements, y may alias an input
  void (*add)(float* y, const float* a, const float* b, int64_t n);
  void (*mul)(float* y, const float* a, const float* b, int64_t n);
  void (*scale)(float* y, const float* x, float s, int64_t n);
  void (*axpy)(float* y, float alpha, const float* x, int64_t n);
  // x [rows, c] += bias [c]
  void (*add_bias)(float* x, const float* bias, int64_t rows, int64_t c);
  // db [c] += sum_rows dy [rows, c]
  void (*bias_backward)(float* db, const float* dy, int64_t rows, int64_t c);
  void (*gelu_forward)(float* y, const float* x, int64_t n, GeluKind kind);
  void (*gelu_backward)(float* dx, const float* x, const float* dy, int64_t n, GeluKind kind);
  void (*silu_forward)(float* y, const float* x, int64_t n);
  void (*silu_backward)(float* dx, const float* x, const float* dy, int64_t n);
  void (*swiglu_forward)(float* y, const float* gate, const float* up, int64_t n);
  void (*swiglu_backward)(float* dgate, float* dup, const float* gate, const float* up,
                          const float* dy, int64_t n);
  // y, x [rows, n]; mask null, [n] (mask_stride 0) or [rows, n] (mask_stride n)
  void (*softmax_forward)(float* y, const float* x, const float* mask, int64_t mask_stride,
                          int64_t rows, int64_t n);
  void (*softmax_backward)(float* dx, const float* y, const float* dy, int64_t rows, int64_t n);
  // y, x [rows, c]; mean, rstd [rows]; w, b [c] (b may be null)
  void (*layernorm_forward)(float* y, float* mean, float* rstd, const float* x, const float* w,
                            const float* b, float eps, int64_t rows, int64_t c);
  // dw, db may be null (frozen)
  void (*layernorm_backward)(float* dx, float* dw, float* db, const float* dy, const float* x,
                             const float* w, const float* mean, const float* rstd, int64_t rows,
                             int64_t c);
  void (*rmsnorm_forward)(float* y, float* rstd, const float* x, const float* w, float eps,
                          int64_t rows, int64_t c);
  void (*rmsnorm_backward)(float* dx, float* dw, const float* dy, const float* x, const float* w,
                           const float* rstd, int64_t rows, int64_t c);
  // Rotates `rows` vectors of length d in place; cs holds cos[d/2] then sin[d/2] for their
  // position (see rope_table). sign = +1 forward, -1 backward (inverse rotation).
  void (*rope_rotate)(float* x, const float* cs, int64_t rows, int64_t d, RopeStyle style,
                      float sign);
  // probs [rows, v] = softmax(logits); returns sum over counted rows of -log p[target] (double)
  // and adds the number of counted rows to *count. Targets are already range-checked.
  double (*cross_entropy_forward)(float* probs, const float* logits, const int32_t* targets,
                                  int32_t ignore_index, int64_t rows, int64_t v, int64_t* count);
  // dlogits = g * (probs - onehot(target)), 0 for ignored rows
  void (*cross_entropy_backward)(float* dlogits, const float* probs, const int32_t* targets,
                                 int32_t ignore_index, float g, int64_t rows, int64_t v);
  // out [n, c] = table[ids[i]]; dtable[ids[i]] += dout[i]. ids already range-checked.
  void (*embedding_forward)(float* out, const float* table, const int32_t* ids, int64_t n,
                            int64_t c);
  void (*embedding_backward)(float* dtable, const float* dout, const int32_t* ids, int64_t n,
                             int64_t c);
};

const Ops& ref_ops();
const Ops& avx2_ops();  // defined in kernels_avx2.cpp
const Ops& active_ops();

// cos/sin of the RoPE angles for one position: cs[i] = cos(pos * theta^(-2i/d)),
// cs[d/2 + i] = sin(...). Computed in double so both implementations see identical tables.
inline void rope_table(float* cs, int64_t pos, int64_t d, float theta) {
  const int64_t half = d / 2;
  for (int64_t i = 0; i < half; ++i) {
    double freq = std::pow(static_cast<double>(theta), -2.0 * static_cast<double>(i) / d);
    double ang = static_cast<double>(pos) * freq;
    cs[i] = static_cast<float>(std::cos(ang));
    cs[half + i] = static_cast<float>(std::sin(ang));
  }
}

namespace avx2 {
// Vectorised special functions, exposed so the op checker can test them against libm.
void exp_n(float* y, const float* x, int64_t n);
void erf_n(float* y, const float* x, int64_t n);
}  // namespace avx2

}  // namespace lorafit::kernels
