// ggml K-quants (Q4_K, Q5_K, Q6_K): our dequantization of raw blocks against gguf-py's, bit for
// bit (tests/fixtures/kquant/kquant.safetensors from tools/ref_kquant.py: blocks quantized from
// real SmolLM2 weights and blocks of random bytes, odd row counts), the AVX2 path against the
// scalar reference, sizes, tensor views and refused input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "lorafit/io.h"
#include "lorafit/quant.h"

using namespace lorafit::tensor;

namespace {

const DType kTypes[] = {DType::Q4_K, DType::Q5_K, DType::Q6_K};

std::string lower(DType t) {
  std::string s = dtype_name(t);
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

const lorafit::io::SafetensorsFile& fixture() {
  static const lorafit::io::SafetensorsFile f = lorafit::io::SafetensorsFile::open(
      std::string(LORAFIT_FIXTURES) + "/kquant/kquant.safetensors");
  return f;
}

std::vector<uint32_t> bits(const float* v, size_t n) {
  std::vector<uint32_t> b(n);
  if (n) std::memcpy(b.data(), v, n * 4);
  return b;
}

template <class F>
void expect_error(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error";
  } catch (const lorafit::Error& e) {
    for (const auto& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << "\nmissing: " << p;
  }
}

// Random blocks of t whose f16 scale fields are finite (any sign, subnormals included).
std::vector<uint8_t> random_blocks(DType t, int64_t nb, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> byte(0, 255);
  const int64_t bs = dtype_block_bytes(t);
  std::vector<uint8_t> raw(static_cast<size_t>(nb * bs));
  for (auto& b : raw) b = static_cast<uint8_t>(byte(rng));
  std::uniform_real_distribution<float> mag(-0.05f, 0.05f);
  for (int64_t i = 0; i < nb; ++i) {
    uint8_t* b = raw.data() + i * bs;
    for (int64_t off : t == DType::Q6_K ? std::vector<int64_t>{208} : std::vector<int64_t>{0, 2}) {
      const uint16_t h = f32_to_f16(mag(rng));
      std::memcpy(b + off, &h, 2);
    }
  }
  return raw;
}

}  // namespace

TEST(KQuant, DequantizeEqualsGgufPy) {
  const auto& f = fixture();
  int cases = 0;
  for (DType t : kTypes) {
    for (const char* kind : {"real", "random"}) {
      const std::string name = lower(t) + "." + kind;
      SCOPED_TRACE(name);
      const std::vector<uint8_t> raw = f.bytes(name + ".raw");
      lorafit::tensor::Tensor want = f.get_f32(name + ".deq");
      ASSERT_EQ(want.ndim(), 2);
      ASSERT_EQ(want.dim(0) % 2, 1) << "the fixture has odd row counts";
      const int64_t n = want.numel(), cols = want.dim(1);
      ASSERT_EQ(raw.size(), dtype_nbytes(t, n));
      std::vector<float> fast(static_cast<size_t>(n)), ref(fast.size());
      dequantize_row(t, raw.data(), fast.data(), n);
      dequantize_row_ref(t, raw.data(), ref.data(), n);
      EXPECT_EQ(bits(fast.data(), fast.size()), bits(want.f32(), fast.size()));
      EXPECT_EQ(bits(ref.data(), ref.size()), bits(want.f32(), ref.size()));
      // The same values through a tensor of the dtype, whole and row by row (views).
      lorafit::tensor::Tensor w = lorafit::tensor::Tensor::empty(want.shape(), t);
      std::memcpy(w.raw(), raw.data(), raw.size());
      lorafit::tensor::Tensor d = dequantize(w);
      EXPECT_EQ(bits(d.f32(), static_cast<size_t>(n)), bits(want.f32(), static_cast<size_t>(n)));
      lorafit::tensor::Tensor r = w.rows(1, 3).to(DType::F32);
      EXPECT_EQ(bits(r.f32(), static_cast<size_t>(2 * cols)),
                bits(want.f32() + cols, static_cast<size_t>(2 * cols)));
      ++cases;
    }
  }
  EXPECT_EQ(cases, 6);
}

TEST(KQuant, FastPathEqualsScalarReference) {
  // Many random blocks (every bit pattern of scales, mins, quants and high bits), and spans that
  // start and end on any block, against the scalar reference.
  for (DType t : kTypes) {
    SCOPED_TRACE(dtype_name(t));
    const int64_t nb = 97;
    const std::vector<uint8_t> raw = random_blocks(t, nb, 11 + static_cast<uint32_t>(t));
    std::vector<float> fast(static_cast<size_t>(nb * kQK_K)), ref(fast.size());
    dequantize_row(t, raw.data(), fast.data(), nb * kQK_K);
    dequantize_row_ref(t, raw.data(), ref.data(), nb * kQK_K);
    ASSERT_EQ(bits(fast.data(), fast.size()), bits(ref.data(), ref.size()));
    size_t nonzero = 0;
    for (float v : ref) nonzero += v != 0.0f;
    EXPECT_GT(nonzero, ref.size() / 2);
    std::mt19937 rng(3);
    std::uniform_int_distribution<int64_t> pos(0, nb);
    for (int k = 0; k < 30; ++k) {
      int64_t b = pos(rng), e = pos(rng);
      if (b > e) std::swap(b, e);
      const int64_t n = (e - b) * kQK_K;
      std::vector<float> got(static_cast<size_t>(n));
      // Unaligned source: one byte off, as a GGUF tensor at an odd offset would be.
      std::vector<uint8_t> shifted(static_cast<size_t>((e - b) * dtype_block_bytes(t)) + 1);
      std::memcpy(shifted.data() + 1, raw.data() + b * dtype_block_bytes(t), shifted.size() - 1);
      dequantize_row(t, shifted.data() + 1, got.data(), n);
      ASSERT_EQ(bits(got.data(), got.size()), bits(ref.data() + b * kQK_K, got.size()))
          << b << ".." << e;
    }
  }
}

TEST(KQuant, BlockSizesAndErrors) {
  EXPECT_STREQ(dtype_name(DType::Q4_K), "Q4_K");
  EXPECT_STREQ(dtype_name(DType::Q5_K), "Q5_K");
  EXPECT_STREQ(dtype_name(DType::Q6_K), "Q6_K");
  // Appended: the old dtypes keep their numbers.
  EXPECT_EQ(static_cast<int>(DType::NF4), 7);
  EXPECT_EQ(static_cast<int>(DType::Q4_K), 8);
  EXPECT_EQ(static_cast<int>(DType::Q6_K), 10);
  for (DType t : kTypes) {
    EXPECT_TRUE(dtype_is_quantized(t));
    EXPECT_EQ(dtype_block_elems(t), 256);
  }
  EXPECT_EQ(dtype_block_bytes(DType::Q4_K), 144);
  EXPECT_EQ(dtype_block_bytes(DType::Q5_K), 176);
  EXPECT_EQ(dtype_block_bytes(DType::Q6_K), 210);
  EXPECT_EQ(dtype_nbytes(DType::Q5_K, 512), 352u);
  // 4.5, 5.5 and 6.5625 bits per value.
  EXPECT_DOUBLE_EQ(dtype_block_bytes(DType::Q4_K) * 8.0 / 256, 4.5);
  EXPECT_DOUBLE_EQ(dtype_block_bytes(DType::Q5_K) * 8.0 / 256, 5.5);
  EXPECT_DOUBLE_EQ(dtype_block_bytes(DType::Q6_K) * 8.0 / 256, 6.5625);

  std::vector<uint8_t> buf(210 * 2);
  std::vector<float> out(512);
  for (DType t : kTypes) {
    SCOPED_TRACE(dtype_name(t));
    expect_error([&] { dequantize_row(t, buf.data(), out.data(), 100); },
                 {"[dequantize_row]", "100 values of", dtype_name(t), "blocks of 256"});
    expect_error([&] { dequantize_row_ref(t, buf.data(), out.data(), 300); },
                 {"[dequantize_row]", "300 values"});
    // A row of 100 values is not a whole block: no such tensor, no such view.
    expect_error([&] { lorafit::tensor::Tensor::empty({3, 100}, t); }, {"256"});
    lorafit::tensor::Tensor w = lorafit::tensor::Tensor::zeros({2, 512}, t);
    expect_error([&] { w.view({4, 256}).view({8, 128}); }, {"whole", dtype_name(t), "blocks"});
    // Quantizing a partial block is refused by name (a row of 300 values).
    std::vector<float> x300(300, 0.5f);
    expect_error([&] { quantize_row(t, x300.data(), buf.data(), 300); },
                 {"[quantize_row]", "300 values of", dtype_name(t), "blocks of 256"});
    lorafit::tensor::Tensor x = lorafit::tensor::Tensor::zeros({2, 384});
    expect_error([&] { quantize(x, t); }, {"[quantize]", "multiple of 256", dtype_name(t)});
  }
  // NF4's statistics are not in its bytes: the row API names the way to it.
  expect_error([&] { dequantize_row(DType::NF4, buf.data(), out.data(), 64); },
               {"[dequantize_row]", "NF4", "dequantize_4bit"});
}

// Our K-quant quantizer against llama.cpp's own (ggml's quantize_row_q*_K_ref, called by
// tools/ref_kquant_quantize.py): the same bytes for real MiniLM and SmolLM2 rows and for rows of
// random values at scales from 1e-6 to 1e3 with special blocks (zero, constant, one-signed,
// outliers, values below f16's range). Then quantize -> dequantize stays close to the input.
TEST(KQuant, QuantizeEqualsLlamaCpp) {
  const auto& f = lorafit::io::SafetensorsFile::open(std::string(LORAFIT_FIXTURES) +
                                                     "/kquant/kquant_quantize.safetensors");
  int cases = 0;
  for (DType t : kTypes) {
    for (const char* in : {"real.minilm", "real.smollm2", "random"}) {
      const std::string name = lower(t) + "." + in;
      SCOPED_TRACE(name);
      lorafit::tensor::Tensor x = f.get_f32(std::string(in) + ".x");
      const std::vector<uint8_t> want = f.bytes(name + ".q");
      ASSERT_EQ(x.ndim(), 2);
      const int64_t rows = x.dim(0), cols = x.dim(1);
      const size_t row_bytes = dtype_nbytes(t, cols);
      ASSERT_EQ(want.size(), row_bytes * static_cast<size_t>(rows));
      lorafit::tensor::Tensor q = quantize(x, t);
      ASSERT_EQ(q.dtype(), t);
      ASSERT_EQ(q.nbytes(), want.size());
      const auto* got = static_cast<const uint8_t*>(q.raw());
      size_t first_diff = want.size();
      for (size_t i = 0; i < want.size(); ++i)
        if (got[i] != want[i]) {
          first_diff = i;
          break;
        }
      EXPECT_EQ(first_diff, want.size()) << "first differing byte " << first_diff << " (row "
                                         << first_diff / row_bytes << ")";
      // Round trip: within a few quantization steps of each sub-block's range.
      if (std::string(in) != "random") {
        lorafit::tensor::Tensor back = dequantize(q);
        double e2 = 0, x2 = 0;
        for (int64_t i = 0; i < x.numel(); ++i) {
          const double d = static_cast<double>(back.f32()[i]) - x.f32()[i];
          e2 += d * d;
          x2 += static_cast<double>(x.f32()[i]) * x.f32()[i];
        }
        const double rel = std::sqrt(e2 / x2);
        EXPECT_LT(rel, t == DType::Q4_K ? 0.12 : t == DType::Q5_K ? 0.06 : 0.03) << rel;
        EXPECT_GT(rel, 0.0);
      }
      ++cases;
    }
  }
  EXPECT_EQ(cases, 9);
}
