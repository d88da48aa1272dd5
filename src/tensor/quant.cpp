// Block (de)quantization of ggml Q8_0 / Q4_0 / Q4_1 and dequantization of the K-quants Q4_K /
// Q6_K (layouts in quant.h and REFERENCE.md).
// Quantizers follow ggml's quantize_row_*_ref rounding so that our bytes equal llama.cpp's and
// gguf-py's: Q8_0 rounds half away from zero, Q4_0/Q4_1 add 0.5 (8.5) and truncate, clamped to 15.
// The clamping below also keeps NaN/inf inputs away from an undefined float->int conversion.
#include "lorafit/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace lorafit::tensor {

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

// ggml's dequantize_row_q4_K / q6_K (K-quants are read, never written).
void scale_min_k4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// Q4_K block (144 bytes / 256 values): f16 d, f16 dmin, u8 scales[12], u8 qs[128].
void dequant_q4_k(const uint8_t* src, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const uint8_t* b = src + i * 144;
    uint16_t hd, hm;
    std::memcpy(&hd, b, 2);
    std::memcpy(&hm, b + 2, 2);
    const float d = f16_to_f32(hd), min = f16_to_f32(hm);
    const uint8_t* scales = b + 4;
    const uint8_t* q = b + 16;
    int is = 0;
    for (int j = 0; j < 256; j += 64) {
      uint8_t sc, m;
      scale_min_k4(is, scales, &sc, &m);
      const float d1 = d * sc, m1 = min * m;
      scale_min_k4(is + 1, scales, &sc, &m);
      const float d2 = d * sc, m2 = min * m;
      for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
      q += 32;
      is += 2;
    }
  }
}

// Q6_K block (210 bytes / 256 values): u8 ql[128], u8 qh[64], i8 scales[16], f16 d.
void dequant_q6_k(const uint8_t* src, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const uint8_t* b = src + i * 210;
    uint16_t hd;
    std::memcpy(&hd, b + 208, 2);
    const float d = f16_to_f32(hd);
    const uint8_t* ql = b;
    const uint8_t* qh = b + 128;
    const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
    for (int n = 0; n < 256; n += 128) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = d * sc[is] * q1;
        y[l + 32] = d * sc[is + 2] * q2;
        y[l + 64] = d * sc[is + 4] * q3;
        y[l + 96] = d * sc[is + 6] * q4;
      }
      y += 128;
      ql += 64;
      qh += 32;
      sc += 8;
    }
  }
}

}  // namespace

void dequantize_row(DType t, const void* src, float* dst, int64_t n) {
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
    default: break;
  }
  throw Error(std::string("[dequantize_row] dtype ") + dtype_name(t) + " is not supported");
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
    default: break;
  }
  throw Error(std::string("[quantize_row] dtype ") + dtype_name(t) + " is not supported");
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

size_t kquant_block_bytes(KQuant t) {
  return t == KQuant::Q4_K ? 144 : 210;
}

void dequantize_kquant_row(KQuant t, const void* src, float* dst, int64_t n) {
  LORAFIT_CHECK(
      n >= 0 && n % kQK_K == 0, "dequantize_kquant_row",
      std::to_string(n) + " values is not a whole number of blocks of " + std::to_string(kQK_K));
  const auto* s = static_cast<const uint8_t*>(src);
  if (t == KQuant::Q4_K)
    dequant_q4_k(s, dst, n / kQK_K);
  else
    dequant_q6_k(s, dst, n / kQK_K);
}

}  // namespace lorafit::tensor
