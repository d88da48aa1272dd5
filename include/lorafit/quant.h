// lorafit tensor layer: block (de)quantization of ggml's Q8_0, Q4_0 and Q4_1 (and plain
// F32/F16/BF16 through the same row API). Layouts, per block of 32 values:
//   Q8_0: f16 d, i8 q[32];           x = q * d
//   Q4_0: f16 d, u8 qs[16];          x = (nib - 8) * d
//   Q4_1: f16 d, f16 m, u8 qs[16];   x = nib * d + m
// where the low nibble of qs[j] is element j and the high nibble element j + 16.
// Quantization rounds to nearest exactly as ggml's quantize_row_*_ref (and gguf-py), so bytes
// match llama.cpp's. The K-quants Q4_K / Q5_K / Q6_K (layouts below) are read and written; their
// quantizer is ggml's quantize_row_q*_K_ref search (no importance matrix), bytes equal to it.
// bitsandbytes' 4-bit NF4 / FP4 are the Quant4 section at the end (their statistics do not fit a
// self-contained block).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

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

// ggml's K-quants: super-blocks of kQK_K = 256 values in 8 (Q4_K, Q5_K) or 16 (Q6_K) sub-blocks.
//   Q4_K (144 bytes): f16 d, f16 dmin, u8 scales[12], u8 qs[128].
//     scales packs 8 six-bit (scale, min) pairs (ggml's get_scale_min_k4): for j < 4,
//     sc = scales[j] & 63, m = scales[j + 4] & 63; for j >= 4, sc = (scales[j + 4] & 15) |
//     ((scales[j - 4] >> 6) << 4), m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4).
//     Values 64k .. 64k + 63 come from qs[32k .. 32k + 31]: low nibbles are sub-block 2k, high
//     nibbles sub-block 2k + 1; x = (d·sc)·q − (dmin·m).
//   Q5_K (176 bytes): f16 d, f16 dmin, u8 scales[12], u8 qh[32], u8 qs[128]. As Q4_K, plus a fifth
//     bit: element l of sub-block j has bit j of qh[l] as its bit 4.
//   Q6_K (210 bytes): u8 ql[128], u8 qh[64], i8 scales[16], f16 d. Each half of 128 values (h =
//     0, 1) uses ql[64h ..], qh[32h ..], scales[8h ..]; for l < 32, the four values l, l + 32,
//     l + 64, l + 96 take the low nibbles of ql[l], ql[l + 32], then the high nibbles of ql[l],
//     ql[l + 32], and bits (0,1), (2,3), (4,5), (6,7) of qh[l] as bits 4-5; x = (d·sc)·(q − 32)
//     with sc = scales[value / 16].
// Every product and difference is one rounded fp32 operation in this order (no fused
// multiply-add), which makes the values equal gguf-py's dequantize bit for bit.
constexpr int64_t kQK_K = 256;  // values per K-quant block

struct BlockQ4_K {
  uint16_t d;     // f16 bits
  uint16_t dmin;  // f16 bits
  uint8_t scales[12];
  uint8_t qs[128];
};
struct BlockQ5_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qh[32];
  uint8_t qs[128];
};
struct BlockQ6_K {
  uint8_t ql[128];
  uint8_t qh[64];
  int8_t scales[16];
  uint16_t d;
};
static_assert(sizeof(BlockQ4_K) == 144 && sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210);

// Dequantizes n consecutive values (n a multiple of dtype_block_elems(t)) stored as type t at src
// into dst. t: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K (not NF4, whose statistics live
// outside the bytes: dequantize_4bit). src needs no alignment. Throws Error for other types or a
// partial block. The K-quants take an AVX2 path when the CPU has it (chosen at run time).
void dequantize_row(DType t, const void* src, float* dst, int64_t n);
// The same through the scalar code only: the reference that the AVX2 path is tested against (the
// two give identical bits).
void dequantize_row_ref(DType t, const void* src, float* dst, int64_t n);
// Quantizes (or converts) n values into type t at dst (dtype_nbytes(t, n) bytes). F32, F16,
// BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K (n a multiple of 256 for the K-quants).
void quantize_row(DType t, const float* src, void* dst, int64_t n);

// Whole tensors. quantize: x of dtype F32/F16/BF16, last dimension a multiple of the block size,
// result of dtype t (a type quantize_row writes) with the same shape. dequantize: any quantized
// or plain type (NF4 included) to a new F32 tensor (same as x.to(DType::F32)).
Tensor quantize(const Tensor& x, DType t);
Tensor dequantize(const Tensor& x);

// ---- bitsandbytes 4-bit (NF4, FP4), optionally double quantized -------------------------------
// Byte-identical to bitsandbytes 0.50 quantize_4bit on CPU for fp32 input (proved by
// tests/fixtures/quant4, made by tools/ref_nf4.py). The n values are taken flat (row-major) in
// blocks of 64; the last block may be partial. Per block: absmax = max |x|; each x is scaled into
// [-1, 1] (full blocks multiply by the fp32 reciprocal of absmax, the partial last block divides,
// as bitsandbytes does) and gets the nearest code, ties to the lower code value. Two codes per
// byte, the first element in the high nibble; an odd n pads one zero. Double quantization: offset =
// mean of all absmax values, and absmax - offset is quantized to 8 bits in blocks of 256 against
// bitsandbytes' signed dynamic map (nearest entry, ties to the lower), with an fp32 absmax per
// nested block. The state is kept beside the codes rather than inside each block because the
// nested statistics span 256 blocks (docs/ARCHITECTURE.md, "Quantized tensors").
enum class Quant4Type : uint8_t { NF4, FP4 };
constexpr int64_t kQuant4Block = 64;
constexpr int64_t kQuant4NestedBlock = 256;

struct Quant4 {
  Quant4Type type = Quant4Type::NF4;
  int64_t n = 0;                // values
  std::vector<uint8_t> packed;  // (n + 1) / 2 bytes
  bool double_quant = false;
  std::vector<float> absmax;         // per block; empty when double_quant
  std::vector<uint8_t> absmax_q;     // per block, codes into dynamic_map(); when double_quant
  float offset = 0.0f;               // the removed mean; when double_quant
  std::vector<float> nested_absmax;  // per 256 blocks; when double_quant

  int64_t blocks() const { return (n + kQuant4Block - 1) / kQuant4Block; }
  // Bytes held (codes and statistics): 4.5 bits per value, about 4.127 with double quantization.
  size_t nbytes() const;
};

// The 16 code values (bitsandbytes' quant_map) and the 256-entry signed dynamic map of the nested
// 8-bit quantization (bitsandbytes' nested_quant_map, create_dynamic_map()).
const float* quant4_code(Quant4Type t);
const float* dynamic_map();
const char* quant4_name(Quant4Type t);  // "nf4", "fp4"

Quant4 quantize_4bit(const float* x, int64_t n, Quant4Type t, bool double_quant);
// The fp32 absmax of block b, as bitsandbytes' dequantize_4bit computes it: stored, or
// dynamic_map()[q] * nested_absmax + offset (fp32 arithmetic).
float quant4_block_absmax(const Quant4& q, int64_t block);
// Dequantizes values [begin, begin + count) into dst: code[nibble] * absmax (fp32), equal to
// bitsandbytes' dequantize_4bit. Throws Error on a range outside [0, n).
void dequantize_4bit(const Quant4& q, int64_t begin, int64_t count, float* dst);
// The same through the scalar reference only (the oracle of the AVX2 path).
void dequantize_4bit_ref(const Quant4& q, int64_t begin, int64_t count, float* dst);
// A frozen weight as a Tensor of DType::NF4 with the given shape (numel == q.n, last dimension a
// multiple of 64): the tensor views q.packed and keeps q alive; quant4_state gives q back (for any
// view of it: rows(), view()). quant4_state throws Error for a tensor that is not such a weight.
Tensor quant4_tensor(Quant4 q, const Shape& shape);
const Quant4& quant4_state(const Tensor& t);
// Dequantizes the values of a (view of a) quant4_tensor, from element `begin` of that view.
void dequantize_4bit_tensor(const Tensor& t, int64_t begin, int64_t count, float* dst);

// Checks a state read from a file (sizes of packed / absmax / nested arrays against n); throws
// Error naming `what` and the field.
void check_quant4(const Quant4& q, const std::string& what);

}  // namespace lorafit::tensor
