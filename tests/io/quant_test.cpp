// Block quantization: dequantize against the slow formulas of REFERENCE.md, quantize error
// bounds, ggml rounding details, Tensor::to, and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "io_test_util.h"
#include "lorafit/quant.h"

using namespace lorafit::tensor;
using io_test::expect_error;

namespace {

// x for element k (0..31) of one block, straight from REFERENCE.md: Q8_0 x = q*d; Q4_0 low nibble
// of qs[j] is element j, high nibble element j+16, x = (nib-8)*d; Q4_1 x = nib*d + m.
double slow_value(DType t, const uint8_t* block, int k) {
  auto f16 = [&](int off) {
    uint16_t h = static_cast<uint16_t>(block[off] | (block[off + 1] << 8));
    return static_cast<double>(f16_to_f32(h));
  };
  auto nib = [&](int qs_off) {
    uint8_t b = block[qs_off + (k % 16)];
    return k < 16 ? (b & 0x0F) : (b >> 4);
  };
  switch (t) {
    case DType::Q8_0: return static_cast<int8_t>(block[2 + k]) * f16(0);
    case DType::Q4_0: return (nib(2) - 8) * f16(0);
    case DType::Q4_1: return nib(4) * f16(0) + f16(2);
    default: return NAN;
  }
}

std::vector<uint8_t> random_blocks(DType t, int nblocks, std::mt19937& rng) {
  std::vector<uint8_t> b(dtype_nbytes(t, nblocks * 32));
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(-0.5f, 0.5f);
  for (auto& x : b) x = static_cast<uint8_t>(byte(rng));
  const size_t bb = static_cast<size_t>(dtype_block_bytes(t));
  for (int i = 0; i < nblocks; ++i) {  // finite scales (random bits could be inf/NaN)
    uint16_t d = f32_to_f16(scale(rng));
    std::memcpy(&b[i * bb], &d, 2);
    if (t == DType::Q4_1) {
      uint16_t m = f32_to_f16(scale(rng) * 4);
      std::memcpy(&b[i * bb + 2], &m, 2);
    }
  }
  return b;
}

const DType kBlockTypes[] = {DType::Q8_0, DType::Q4_0, DType::Q4_1};

}  // namespace

TEST(Quant, DequantizeMatchesSlowFormula) {
  std::mt19937 rng(42);
  for (DType t : kBlockTypes) {
    const int nb = 7;
    std::vector<uint8_t> src = random_blocks(t, nb, rng);
    // Offset by one byte: rows from a file need not be aligned.
    std::vector<uint8_t> unaligned(src.size() + 1);
    std::memcpy(unaligned.data() + 1, src.data(), src.size());
    std::vector<float> out(nb * 32, -777.0f);
    dequantize_row(t, unaligned.data() + 1, out.data(), nb * 32);
    const size_t bb = static_cast<size_t>(dtype_block_bytes(t));
    for (int i = 0; i < nb; ++i)
      for (int k = 0; k < 32; ++k) {
        double want = slow_value(t, &src[i * bb], k);
        ASSERT_NEAR(out[i * 32 + k], want, 1e-6 * std::max(1.0, std::fabs(want)))
            << dtype_name(t) << " block " << i << " element " << k;
      }
  }
}

TEST(Quant, QuantizeErrorBounds) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (DType t : kBlockTypes) {
    const int64_t n = 32 * 40;
    std::vector<float> x(n);
    for (int64_t i = 0; i < n; ++i) x[i] = nd(rng) * (1.0f + static_cast<float>(i / 32));  // scale per block
    std::vector<uint8_t> q(dtype_nbytes(t, n));
    quantize_row(t, x.data(), q.data(), n);
    std::vector<float> y(n);
    dequantize_row(t, q.data(), y.data(), n);
    for (int64_t b = 0; b < n / 32; ++b) {
      float amax = 0, mn = x[b * 32], mx = x[b * 32];
      for (int k = 0; k < 32; ++k) {
        amax = std::max(amax, std::fabs(x[b * 32 + k]));
        mn = std::min(mn, x[b * 32 + k]);
        mx = std::max(mx, x[b * 32 + k]);
      }
      // Step size d and the worst error: half a step, plus the f16 rounding of d (and of m),
      // and for Q4_0 one full step (the side opposite the largest value clamps 16 -> 15).
      double bound;
      if (t == DType::Q8_0) bound = 0.5 * amax / 127 + 127 * (amax / 127) * 0x1p-11;
      else if (t == DType::Q4_0) bound = 1.0 * amax / 8 + 15 * (amax / 8) * 0x1p-11;
      else bound = 0.5 * (mx - mn) / 15 + 15 * ((mx - mn) / 15) * 0x1p-11 + std::fabs(mn) * 0x1p-11;
      for (int k = 0; k < 32; ++k)
        ASSERT_LE(std::fabs(y[b * 32 + k] - x[b * 32 + k]), bound * 1.0001 + 1e-7)
            << dtype_name(t) << " block " << b << " element " << k;
    }
    // Overall the error must also be small on average (a broken nibble order would not be).
    double se = 0, sx = 0;
    for (int64_t i = 0; i < n; ++i) {
      se += (y[i] - x[i]) * (y[i] - x[i]);
      sx += x[i] * x[i];
    }
    EXPECT_LT(std::sqrt(se / sx), t == DType::Q8_0 ? 0.01 : 0.15) << dtype_name(t);
  }
}

TEST(Quant, GgmlRoundingDetails) {
  // Q8_0: amax 127 -> d = 1, values round half away from zero (2.5 -> 3, -2.5 -> -3).
  std::vector<float> x(32, 0.0f);
  x[0] = 127.0f;
  x[1] = 2.5f;
  x[2] = -2.5f;
  x[3] = 0.49f;
  BlockQ8_0 b8;
  quantize_row(DType::Q8_0, x.data(), &b8, 32);
  EXPECT_EQ(f16_to_f32(b8.d), 1.0f);
  EXPECT_EQ(b8.qs[0], 127);
  EXPECT_EQ(b8.qs[1], 3);
  EXPECT_EQ(b8.qs[2], -3);
  EXPECT_EQ(b8.qs[3], 0);
  // Q4_0: d = (value of largest magnitude) / -8; that value gets nibble 0, +|max| clamps to 15.
  std::vector<float> y(32, 0.0f);
  y[0] = -8.0f;  // largest magnitude, negative: d = 1
  y[1] = 7.0f;
  y[17] = 3.0f;
  BlockQ4_0 b4;
  quantize_row(DType::Q4_0, y.data(), &b4, 32);
  EXPECT_EQ(f16_to_f32(b4.d), 1.0f);
  EXPECT_EQ(b4.qs[0] & 0x0F, 0);   // -8 -> 0
  EXPECT_EQ(b4.qs[1] & 0x0F, 15);  // 7 -> 15
  EXPECT_EQ(b4.qs[1] >> 4, 11);    // element 17: 3 -> 11
  EXPECT_EQ(b4.qs[2] & 0x0F, 8);   // 0 -> 8
  // Q4_1: d = (max - min)/15, m = min.
  std::vector<float> z(32);
  for (int i = 0; i < 32; ++i) z[i] = 1.0f + static_cast<float>(i % 16);
  BlockQ4_1 b41;
  quantize_row(DType::Q4_1, z.data(), &b41, 32);
  EXPECT_EQ(f16_to_f32(b41.d), 1.0f);
  EXPECT_EQ(f16_to_f32(b41.m), 1.0f);
  for (int j = 0; j < 16; ++j) EXPECT_EQ(b41.qs[j], (j & 0xF) | (j << 4));
}

TEST(Quant, ZeroAndNonFiniteBlocks) {
  std::vector<float> zero(64, 0.0f), out(64, 1.0f);
  for (DType t : kBlockTypes) {
    std::vector<uint8_t> q(dtype_nbytes(t, 64));
    quantize_row(t, zero.data(), q.data(), 64);
    dequantize_row(t, q.data(), out.data(), 64);
    for (float v : out) ASSERT_EQ(v, 0.0f) << dtype_name(t);
    // NaN/inf input must not be undefined behaviour (the sanitizer build checks); values are
    // whatever they are.
    std::vector<float> bad(64, 1.0f);
    bad[3] = NAN;
    bad[40] = INFINITY;
    quantize_row(t, bad.data(), q.data(), 64);
    dequantize_row(t, q.data(), out.data(), 64);
  }
}

TEST(Quant, PlainTypesThroughRowApi) {
  std::vector<float> x = {1.0f, -2.5f, 3.140625f, 65504.0f, 1e-8f};
  for (DType t : {DType::F32, DType::F16, DType::BF16}) {
    std::vector<uint8_t> q(dtype_nbytes(t, 5));
    quantize_row(t, x.data(), q.data(), 5);
    std::vector<float> y(5);
    dequantize_row(t, q.data(), y.data(), 5);
    for (int i = 0; i < 5; ++i) {
      float want = t == DType::F32 ? x[i] : t == DType::F16 ? f16_to_f32(f32_to_f16(x[i]))
                                                             : bf16_to_f32(f32_to_bf16(x[i]));
      EXPECT_EQ(y[i], want) << dtype_name(t) << " " << i;
    }
  }
}

TEST(Quant, TensorQuantizeDequantizeAndTo) {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  std::vector<float> v(3 * 64);
  for (auto& a : v) a = nd(rng);
  Tensor x = Tensor::from_vector({3, 64}, v);
  for (DType t : kBlockTypes) {
    Tensor q = quantize(x, t);
    EXPECT_EQ(q.dtype(), t);
    EXPECT_EQ(q.shape(), (Shape{3, 64}));
    EXPECT_EQ(q.nbytes(), dtype_nbytes(t, 192));
    Tensor a = dequantize(q);
    Tensor b = q.to(DType::F32);
    ASSERT_EQ(a.dtype(), DType::F32);
    for (int64_t i = 0; i < a.numel(); ++i) ASSERT_EQ(a.f32()[i], b.f32()[i]);
    // Row views of a quantized tensor dequantize to the same rows.
    Tensor r1 = dequantize(q.row(1));
    for (int64_t i = 0; i < 64; ++i) ASSERT_EQ(r1.f32()[i], a.f32()[64 + i]);
    // F16 input quantizes the same as its F32 values.
    Tensor h = x.to(DType::F16);
    Tensor qh = quantize(h, t);
    Tensor qhf = quantize(h.to(DType::F32), t);
    EXPECT_EQ(std::memcmp(qh.raw(), qhf.raw(), qh.nbytes()), 0);
    Tensor bf = q.to(DType::BF16);
    EXPECT_EQ(bf.dtype(), DType::BF16);
  }
}

TEST(Quant, Errors) {
  std::vector<float> x(40, 1.0f);
  std::vector<uint8_t> buf(200);
  expect_error([&] { quantize_row(DType::Q8_0, x.data(), buf.data(), 40); },
               {"[quantize_row]", "40", "Q8_0", "32"});
  expect_error([&] { dequantize_row(DType::Q4_1, buf.data(), x.data(), 33); },
               {"[dequantize_row]", "33", "Q4_1"});
  expect_error([&] { dequantize_row(DType::NF4, buf.data(), x.data(), 64); },
               {"[dequantize_row]", "NF4", "not supported"});
  expect_error([&] { quantize(Tensor::zeros({2, 40}), DType::Q4_0); },
               {"[quantize]", "last dimension", "32"});
  expect_error([&] { quantize(Tensor::from_ints({32}, std::vector<int32_t>(32, 1)), DType::Q4_0); },
               {"[quantize]", "F32, F16 or BF16"});
}
