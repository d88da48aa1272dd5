// lorafit tensor layer: block (de)quantization of ggml's Q8_0, Q4_0 and Q4_1 (and plain
// F32/F16/BF16 through the same row API). Layouts, per block of 32 values:
//   Q8_0: f16 d, i8 q[32];           x = q * d
//   Q4_0: f16 d, u8 qs[16];          x = (nib - 8) * d
//   Q4_1: f16 d, f16 m, u8 qs[16];   x = nib * d + m
// where the low nibble of qs[j] is element j and the high nibble element j + 16.
// Quantization rounds to nearest exactly as ggml's quantize_row_*_ref (and gguf-py), so bytes
// match llama.cpp's. Q4_K / Q6_K are dequantized only (below). NF4 is not handled here.
#pragma once

#include <cstddef>
#include <cstdint>

#include "lorafit/tensor.h"

namespace lorafit::tensor {

constexpr int64_t kQK = 32;  // values per Q8_0/Q4_0/Q4_1 block

struct BlockQ8_0 {
  uint16_t d;  // f16 bits
  int8_t qs[32];
};
struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[16];
};
struct BlockQ4_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qs[16];
};
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20);

// Dequantizes n consecutive values (n a multiple of dtype_block_elems(t)) stored as type t at src
// into dst. t: F32, F16, BF16, Q8_0, Q4_0, Q4_1. src needs no alignment. Throws Error for other
// types or a partial block.
void dequantize_row(DType t, const void* src, float* dst, int64_t n);
// Quantizes (or converts) n values into type t at dst (dtype_nbytes(t, n) bytes). Same types.
void quantize_row(DType t, const float* src, void* dst, int64_t n);

// Whole tensors. quantize: x of dtype F32/F16/BF16, last dimension a multiple of the block size,
// result of dtype t with the same shape. dequantize: any of the six types to a new F32 tensor
// (same as x.to(DType::F32)).
Tensor quantize(const Tensor& x, DType t);
Tensor dequantize(const Tensor& x);

// ggml K-quants that GGUF files carry but lorafit never stores (no DType): dequantization only,
// exactly as ggml's dequantize_row_q4_K / q6_K. Per block of kQK_K = 256 values:
//   Q4_K (144 bytes): f16 d, f16 dmin, u8 scales[12] (8 packed 6-bit scale/min pairs), u8 qs[128];
//                     x = d·sc·nib − dmin·m per sub-block of 32
//   Q6_K (210 bytes): u8 ql[128], u8 qh[64] (4 + 2 bits), i8 scales[16], f16 d; x = d·sc·(q − 32)
// n must be a multiple of 256 (throws otherwise). io's GGUF reader (tensor_f32) uses these.
enum class KQuant { Q4_K, Q6_K };
constexpr int64_t kQK_K = 256;
size_t kquant_block_bytes(KQuant t);
void dequantize_kquant_row(KQuant t, const void* src, float* dst, int64_t n);

}  // namespace lorafit::tensor
