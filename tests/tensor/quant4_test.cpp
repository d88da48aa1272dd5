// bitsandbytes 4-bit: our NF4 / FP4 (and double-quantized) bytes against bitsandbytes 0.50's for
// the same fp32 input (tests/fixtures/quant4/bnb4.bin from tools/ref_nf4.py: real MiniLM and
// SmolLM2 weights, odd sizes, ties, zeros), dequantization against bitsandbytes', AVX2 against the
// scalar reference, sizes and bad input.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "lorafit/quant.h"

using namespace lorafit::tensor;

namespace {

struct Case {
  std::string name;
  int64_t n = 0;
  Quant4Type type = Quant4Type::NF4;
  bool dq = false;
  std::vector<float> input;
  Quant4 want;
  std::vector<float> deq;
};

struct MeanCase {
  std::vector<float> absmax;
  Quant4 want;
};

struct Fixture {
  std::vector<float> dynamic_map;
  std::vector<Case> cases;
  std::vector<MeanCase> means;
};

class Reader {
 public:
  explicit Reader(std::vector<char> b) : b_(std::move(b)) {}
  template <class T>
  T get() {
    T v;
    take(&v, sizeof v);
    return v;
  }
  template <class T>
  std::vector<T> vec(int64_t n) {
    std::vector<T> v(static_cast<size_t>(n));
    take(v.data(), v.size() * sizeof(T));
    return v;
  }
  bool done() const { return p_ == b_.size(); }

 private:
  void take(void* dst, size_t n) {
    if (p_ + n > b_.size()) throw std::runtime_error("bnb4.bin: truncated");
    std::memcpy(dst, b_.data() + p_, n);
    p_ += n;
  }
  std::vector<char> b_;
  size_t p_ = 0;
};

const Fixture& fixture() {
  static const Fixture fx = [] {
    std::ifstream f(std::string(LORAFIT_FIXTURES) + "/quant4/bnb4.bin", std::ios::binary);
    if (!f) throw std::runtime_error("cannot open quant4/bnb4.bin");
    Reader r(std::vector<char>(std::istreambuf_iterator<char>(f), {}));
    Fixture x;
    if (r.get<uint32_t>() != 0x34424e42u || r.get<uint32_t>() != 1)
      throw std::runtime_error("bnb4.bin: bad magic/version");
    x.dynamic_map = r.vec<float>(256);
    const uint32_t nc = r.get<uint32_t>();
    std::vector<float> last_input;
    for (uint32_t i = 0; i < nc; ++i) {
      Case c;
      auto nl = r.get<uint32_t>();
      auto name = r.vec<char>(nl);
      c.name.assign(name.begin(), name.end());
      c.n = r.get<int64_t>();
      c.type = r.get<uint8_t>() ? Quant4Type::FP4 : Quant4Type::NF4;
      c.dq = r.get<uint8_t>() != 0;
      if (r.get<uint8_t>()) last_input = r.vec<float>(c.n);
      c.input = last_input;
      c.want.type = c.type;
      c.want.n = c.n;
      c.want.double_quant = c.dq;
      c.want.packed = r.vec<uint8_t>((c.n + 1) / 2);
      const int64_t nb = (c.n + 63) / 64;
      if (!c.dq) {
        c.want.absmax = r.vec<float>(nb);
      } else {
        c.want.absmax_q = r.vec<uint8_t>(nb);
        c.want.offset = r.get<float>();
        c.want.nested_absmax = r.vec<float>((nb + 255) / 256);
      }
      c.deq = r.vec<float>(r.get<int64_t>());
      x.cases.push_back(std::move(c));
    }
    const uint32_t nm = r.get<uint32_t>();
    for (uint32_t i = 0; i < nm; ++i) {
      MeanCase m;
      const int64_t nb = r.get<int64_t>();
      m.absmax = r.vec<float>(nb);
      m.want.offset = r.get<float>();
      m.want.absmax_q = r.vec<uint8_t>(nb);
      m.want.nested_absmax = r.vec<float>((nb + 255) / 256);
      x.means.push_back(std::move(m));
    }
    if (!r.done()) throw std::runtime_error("bnb4.bin: trailing bytes");
    return x;
  }();
  return fx;
}

std::vector<uint32_t> bits(const std::vector<float>& v) {
  std::vector<uint32_t> b(v.size());
  if (!v.empty()) std::memcpy(b.data(), v.data(), v.size() * 4);  // data() may be null when empty
  return b;
}

}  // namespace

TEST(Quant4, DynamicMapEqualsBitsandbytes) {
  const auto& fx = fixture();
  std::vector<float> ours(dynamic_map(), dynamic_map() + 256);
  EXPECT_EQ(bits(ours), bits(fx.dynamic_map));
}

TEST(Quant4, BytesEqualBitsandbytes) {
  const auto& fx = fixture();
  ASSERT_EQ(fx.cases.size(), 32u);
  int64_t real_values = 0;
  for (const Case& c : fx.cases) {
    SCOPED_TRACE(c.name + " " + quant4_name(c.type) + (c.dq ? " dq" : ""));
    Quant4 q = quantize_4bit(c.input.data(), c.n, c.type, c.dq);
    EXPECT_EQ(q.packed, c.want.packed);
    EXPECT_EQ(bits(q.absmax), bits(c.want.absmax));
    EXPECT_EQ(q.absmax_q, c.want.absmax_q);
    EXPECT_EQ(bits(q.nested_absmax), bits(c.want.nested_absmax));
    uint32_t a, b;
    std::memcpy(&a, &q.offset, 4);
    std::memcpy(&b, &c.want.offset, 4);
    EXPECT_EQ(a, b) << q.offset << " vs " << c.want.offset;
    if (c.name.rfind("randn", 0) != 0) real_values += c.n;
  }
  EXPECT_GT(real_values, 4 * 17000);  // the real MiniLM / SmolLM2 rows took part
}

TEST(Quant4, DoubleQuantOfManyBlocksEqualsBitsandbytes) {
  // 1101 and 5003 blocks: torch's cascaded fp32 mean (the offset) over more than one level.
  ASSERT_EQ(fixture().means.size(), 2u);
  for (const MeanCase& m : fixture().means) {
    const int64_t nb = static_cast<int64_t>(m.absmax.size());
    SCOPED_TRACE(nb);
    std::vector<float> x(static_cast<size_t>(nb * 64), 0.0f);
    for (int64_t b = 0; b < nb; ++b) x[static_cast<size_t>(b * 64)] = m.absmax[b];
    Quant4 q = quantize_4bit(x.data(), nb * 64, Quant4Type::NF4, true);
    EXPECT_EQ(bits({q.offset}), bits({m.want.offset})) << q.offset << " vs " << m.want.offset;
    EXPECT_EQ(q.absmax_q, m.want.absmax_q);
    for (int64_t b = 0; b < nb; ++b)
      if (q.absmax_q[b] != m.want.absmax_q[b]) {
        float v = m.absmax[b] - q.offset, na = q.nested_absmax[b / 256];
        ADD_FAILURE() << "block " << b << " ours " << int(q.absmax_q[b]) << " bnb "
                      << int(m.want.absmax_q[b]) << " normed " << (v / na) << " map "
                      << dynamic_map()[q.absmax_q[b]] << " " << dynamic_map()[m.want.absmax_q[b]];
      }
    EXPECT_EQ(bits(q.nested_absmax), bits(m.want.nested_absmax));
  }
}

TEST(Quant4, DequantizeEqualsBitsandbytes) {
  for (const Case& c : fixture().cases) {
    SCOPED_TRACE(c.name + " " + quant4_name(c.type) + (c.dq ? " dq" : ""));
    std::vector<float> got(c.deq.size()), ref(c.deq.size());
    dequantize_4bit(c.want, 0, static_cast<int64_t>(got.size()), got.data());
    dequantize_4bit_ref(c.want, 0, static_cast<int64_t>(ref.size()), ref.data());
    EXPECT_EQ(bits(got), bits(c.deq));
    EXPECT_EQ(bits(ref), bits(c.deq));
  }
}

TEST(Quant4, Avx2EqualsReferenceOnEveryRange) {
  // Ranges that start and end inside blocks and on odd elements, both types, with and without
  // double quantization, against the scalar reference (the oracle).
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  std::vector<float> x(64 * 300 + 45);
  for (auto& v : x) v = nd(rng);
  for (Quant4Type t : {Quant4Type::NF4, Quant4Type::FP4}) {
    for (bool dq : {false, true}) {
      Quant4 q = quantize_4bit(x.data(), static_cast<int64_t>(x.size()), t, dq);
      std::uniform_int_distribution<int64_t> pos(0, q.n);
      for (int k = 0; k < 50; ++k) {
        int64_t b = pos(rng), e = pos(rng);
        if (b > e) std::swap(b, e);
        std::vector<float> got(static_cast<size_t>(e - b)), ref(got.size());
        dequantize_4bit(q, b, e - b, got.data());
        dequantize_4bit_ref(q, b, e - b, ref.data());
        ASSERT_EQ(bits(got), bits(ref)) << b << ".." << e;
      }
      // Round trip error: a nibble is off by at most half the widest code gap times absmax.
      std::vector<float> y(x.size());
      dequantize_4bit(q, 0, q.n, y.data());
      for (size_t i = 0; i < x.size(); ++i)
        ASSERT_LE(std::fabs(y[i] - x[i]), 0.35f * quant4_block_absmax(q, i / 64) + 1e-6f) << i;
    }
  }
}

TEST(Quant4, SizesAreAboutFourAndAHalfBits) {
  std::vector<float> x(64 * 256 * 4, 0.5f);
  Quant4 a = quantize_4bit(x.data(), static_cast<int64_t>(x.size()), Quant4Type::NF4, false);
  Quant4 b = quantize_4bit(x.data(), static_cast<int64_t>(x.size()), Quant4Type::NF4, true);
  EXPECT_DOUBLE_EQ(a.nbytes() * 8.0 / static_cast<double>(x.size()), 4.5);
  EXPECT_LT(b.nbytes() * 8.0 / static_cast<double>(x.size()), 4.13);
  EXPECT_LE(static_cast<double>(b.nbytes()), 0.135 * 4.0 * static_cast<double>(x.size()));
}

TEST(Quant4, BadStateAndRangeAreRefusedByName) {
  std::vector<float> x(130, 1.0f);
  Quant4 q = quantize_4bit(x.data(), 130, Quant4Type::NF4, true);
  check_quant4(q, "w");
  q.nested_absmax.clear();
  try {
    check_quant4(q, "model.safetensors: layer.weight");
    FAIL() << "no error";
  } catch (const lorafit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer.weight: nested_absmax has 0 entries, expected 1"),
              std::string::npos)
        << e.what();
  }
  std::vector<float> y(4);
  try {
    dequantize_4bit(q, 128, 4, y.data());
    FAIL() << "no error";
  } catch (const lorafit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("values [128, 132) are outside the 130 values"),
              std::string::npos)
        << e.what();
  }
}
