// GGUF: round trips of every metadata and tensor type, the gguf-py file, bad files, and the
// real SmolLM2 file when it is there.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>

#include "io_test_util.h"
#include "lorafit/io.h"
#include "lorafit/quant.h"

using namespace lorafit::io;
using namespace lorafit::tensor;
using io_test::Bytes;
using io_test::expect_error;
using io_test::TempDir;

namespace {

std::vector<std::pair<std::string, GgufValue>> all_types_metadata() {
  return {
      {"general.architecture", GgufValue::string("llama")},
      {"t.u8", GgufValue::u8(200)},
      {"t.i8", GgufValue::i8(-100)},
      {"t.u16", GgufValue::u16(60000)},
      {"t.i16", GgufValue::i16(-30000)},
      {"t.u32", GgufValue::u32(4000000000u)},
      {"t.i32", GgufValue::i32(-2000000000)},
      {"t.f32", GgufValue::f32(0.15625f)},
      {"t.bool", GgufValue::boolean(true)},
      {"t.string", GgufValue::string("h\xc3\xa9llo, gguf")},
      {"t.u64", GgufValue::u64((uint64_t{1} << 63) + 5)},
      {"t.i64", GgufValue::i64(-(int64_t{1} << 62))},
      {"t.f64", GgufValue::f64(3.141592653589793)},
      {"t.arr.str", GgufValue::string_array({"<unk>", "a", "", "\xe2\x96\x81the"})},
      {"t.arr.i32", GgufValue::int_array(GgufType::I32, {1, -2, 3, 2147483647})},
      {"t.arr.u8", GgufValue::int_array(GgufType::U8, {0, 255, 7})},
      {"t.arr.f32", GgufValue::float_array(GgufType::F32, {0.5, -1.25, 1e-3})},
      {"t.arr.f64", GgufValue::float_array(GgufType::F64, {0.1, 2.0})},
      {"t.arr.bool", GgufValue::int_array(GgufType::BOOL, {1, 0, 1})},
      {"t.arr.nested", GgufValue::array_of_arrays({GgufValue::int_array(GgufType::I32, {1, 2}),
                                                   GgufValue::int_array(GgufType::I32, {3, 4, 5})})},
      {"t.arr.nested_str", GgufValue::array_of_arrays({GgufValue::string_array({"x", "y"}),
                                                       GgufValue::string_array({"z"})})},
      {"t.arr.i64", GgufValue::int_array(GgufType::I64, {-1, int64_t{1} << 40})},
      {"t.arr.u64", GgufValue::int_array(GgufType::U64, {1, 2})},
      {"t.arr.i8", GgufValue::int_array(GgufType::I8, {-128, 127})},
      {"t.arr.u16", GgufValue::int_array(GgufType::U16, {65535})},
      {"t.arr.i16", GgufValue::int_array(GgufType::I16, {-32768})},
      {"t.arr.u32", GgufValue::int_array(GgufType::U32, {4294967295})},
      {"t.arr.empty", GgufValue::string_array({})},
  };
}

Tensor randn(const Shape& s, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<float> v(static_cast<size_t>(shape_numel(s)));
  for (auto& x : v) x = nd(rng);
  return Tensor::from_vector(s, v);
}

std::vector<std::pair<std::string, Tensor>> all_types_tensors() {
  return {
      {"w.f32", randn({4, 5}, 1)},
      {"w.f16", randn({3, 7}, 2).to(DType::F16)},
      {"w.bf16", randn({2, 3, 5}, 3).to(DType::BF16)},
      {"w.q8_0", quantize(randn({4, 64}, 4), DType::Q8_0)},
      {"w.q4_0", quantize(randn({2, 96}, 5), DType::Q4_0)},
      {"w.q4_1", quantize(randn({3, 32}, 6), DType::Q4_1)},
      {"w.vec", randn({9}, 7)},
  };
}

// A minimal valid header for hand-made files: magic, version, counts.
Bytes header(uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
  Bytes b;
  b.raw("GGUF").u32(version).u64(n_tensors).u64(n_kv);
  return b;
}

// One F32 tensor [4] (ne = {4}) described at `offset`, with `data_bytes` of data after padding.
std::string one_tensor_file(uint32_t type, uint64_t offset, size_t data_bytes, int64_t ne0 = 4) {
  Bytes b = header(3, 1, 0);
  b.str("t").u32(1).u64(static_cast<uint64_t>(ne0)).u32(type).u64(offset);
  b.pad(32);
  b.raw(std::string(data_bytes, '\0'));
  return b.s;
}

// gguf-py's value type names ("uint32", "float32") in ours ("u32", "f32").
std::string short_type(const std::string& py) {
  static const std::map<std::string, std::string> m = {
      {"uint8", "u8"},   {"int8", "i8"},   {"uint16", "u16"},  {"int16", "i16"},
      {"uint32", "u32"}, {"int32", "i32"}, {"float32", "f32"}, {"uint64", "u64"},
      {"int64", "i64"},  {"float64", "f64"}};
  auto it = m.find(py);
  return it == m.end() ? py : it->second;
}

}  // namespace

TEST(Gguf, RoundTripAllTypes) {
  TempDir dir;
  for (uint32_t alignment : {32u, 64u, 1u}) {
    const std::string path = dir.file("rt" + std::to_string(alignment) + ".gguf");
    auto meta = all_types_metadata();
    if (alignment != 32) meta.emplace_back("general.alignment", GgufValue::u32(alignment));
    auto tensors = all_types_tensors();
    write_gguf(path, meta, tensors);
    GgufFile f = GgufFile::open(path);
    EXPECT_EQ(f.version(), 3u);
    EXPECT_EQ(f.alignment(), alignment);
    EXPECT_EQ(f.data_offset() % alignment, 0u);
    ASSERT_EQ(f.metadata().size(), meta.size());
    for (size_t i = 0; i < meta.size(); ++i) {
      EXPECT_EQ(f.metadata()[i].first, meta[i].first);
      EXPECT_TRUE(f.metadata()[i].second == meta[i].second) << meta[i].first << ": "
                                                            << f.metadata()[i].second.str();
    }
    ASSERT_EQ(f.tensors().size(), tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
      const auto& [name, t] = tensors[i];
      const GgufTensorInfo& info = f.tensors()[i];
      EXPECT_EQ(info.name, name);
      EXPECT_EQ(info.shape, t.shape());
      EXPECT_EQ(info.ne, Shape(t.shape().rbegin(), t.shape().rend()));
      EXPECT_EQ(info.offset % alignment, 0u);
      Tensor g = f.tensor(name);
      EXPECT_EQ(g.dtype(), t.dtype()) << name;
      EXPECT_EQ(g.shape(), t.shape()) << name;
      ASSERT_EQ(g.nbytes(), t.nbytes());
      EXPECT_EQ(std::memcmp(g.raw(), t.raw(), t.nbytes()), 0) << name;
      Tensor x = f.tensor_f32(name), want = t.to(DType::F32);
      for (int64_t k = 0; k < x.numel(); ++k) ASSERT_EQ(x.f32()[k], want.f32()[k]) << name;
    }
  }
}

TEST(Gguf, TypedGetters) {
  TempDir dir;
  const std::string path = dir.file("m.gguf");
  write_gguf(path, all_types_metadata(), {});
  GgufFile f = GgufFile::open(path);
  EXPECT_EQ(f.get_int("t.u8"), 200);
  EXPECT_EQ(f.get_int("t.i8"), -100);
  EXPECT_EQ(f.get_int("t.u32"), 4000000000);
  EXPECT_EQ(f.get_int("t.i64"), -(int64_t{1} << 62));
  EXPECT_EQ(f.value("t.u64").as_uint(), (uint64_t{1} << 63) + 5);
  EXPECT_EQ(f.get_float("t.f32"), 0.15625);
  EXPECT_EQ(f.get_float("t.f64"), 3.141592653589793);
  EXPECT_EQ(f.get_float("t.u16"), 60000.0);
  EXPECT_TRUE(f.get_bool("t.bool"));
  EXPECT_EQ(f.get_string("t.string"), "h\xc3\xa9llo, gguf");
  EXPECT_EQ(f.get_string_array("t.arr.str")[3], "\xe2\x96\x81the");
  EXPECT_EQ(f.get_int_array("t.arr.i32"), (std::vector<int64_t>{1, -2, 3, 2147483647}));
  EXPECT_EQ(f.get_int_array("t.arr.bool"), (std::vector<int64_t>{1, 0, 1}));
  EXPECT_EQ(f.get_float_array("t.arr.f32")[2], static_cast<double>(1e-3f));
  EXPECT_EQ(f.value("t.arr.nested").as_array_array()[1].as_int_array(), (std::vector<int64_t>{3, 4, 5}));
  EXPECT_EQ(f.value("t.arr.nested_str").as_array_array()[0].as_string_array()[1], "y");
  EXPECT_EQ(f.value("t.arr.str").at(1).as_string(), "a");
  EXPECT_EQ(f.value("t.arr.empty").size(), 0u);
  EXPECT_EQ(f.get_int("absent", 5), 5);
  EXPECT_EQ(f.get_string("absent", "d"), "d");
  EXPECT_EQ(f.find("absent"), nullptr);
  EXPECT_EQ(f.value("t.arr.i32").str(2), "[i32 x 4: 1, -2, ...]");
  expect_error([&] { f.get_int("t.string"); },
               {"[gguf]", "m.gguf", "key 't.string': value is string, expected integer"});
  expect_error([&] { f.get_int("t.u64"); }, {"key 't.u64'", "does not fit in int64"});
  expect_error([&] { f.get_string("t.u8"); }, {"key 't.u8': value is u8, expected string"});
  expect_error([&] { f.get_string_array("t.arr.i32"); },
               {"key 't.arr.i32': value is array of i32, expected array of strings"});
  expect_error([&] { f.value("nope"); }, {"[gguf]", "key 'nope' not found"});
  expect_error([&] { f.tensor("nope"); }, {"[gguf]", "no tensor 'nope'"});
  expect_error([&] { GgufValue::int_array(GgufType::U8, {256}); }, {"256", "does not fit in u8"});
}

TEST(Gguf, ReadsGgufPyFile) {
  GgufFile f = GgufFile::open(io_test::fixtures("ref.gguf"));
  json expect = read_json_file(io_test::fixtures("ref_gguf.json"));
  EXPECT_EQ(f.alignment(), expect["alignment"].get<uint64_t>());
  ASSERT_EQ(f.metadata().size(), expect["metadata"].size());
  for (size_t i = 0; i < f.metadata().size(); ++i) {
    const json& e = expect["metadata"][i];
    const auto& [key, v] = f.metadata()[i];
    EXPECT_EQ(key, e["key"].get<std::string>());
    const std::string type = e["type"];
    const json& val = e["value"];
    SCOPED_TRACE(key);
    if (type == "array") {
      EXPECT_EQ(gguf_type_name(v.array_type()), short_type(e["elem"]));
      if (v.array_type() == GgufType::STRING) {
        EXPECT_EQ(v.as_string_array(), val.get<std::vector<std::string>>());
      } else if (v.array_type() == GgufType::ARRAY) {
        ASSERT_EQ(v.size(), val.size());
        for (size_t k = 0; k < v.size(); ++k) {
          const GgufValue& item = v.as_array_array()[k];
          if (item.array_type() == GgufType::STRING)
            EXPECT_EQ(item.as_string_array(), val[k].get<std::vector<std::string>>());
          else
            EXPECT_EQ(item.as_int_array(), val[k].get<std::vector<int64_t>>());
        }
      } else if (v.array_type() == GgufType::F32 || v.array_type() == GgufType::F64) {
        auto got = v.as_float_array();
        auto want = val.get<std::vector<double>>();
        ASSERT_EQ(got.size(), want.size());
        for (size_t k = 0; k < got.size(); ++k)
          EXPECT_EQ(got[k], v.array_type() == GgufType::F32 ? static_cast<double>(static_cast<float>(want[k])) : want[k]);
      } else if (v.array_type() == GgufType::BOOL) {
        auto got = v.as_int_array();
        ASSERT_EQ(got.size(), val.size());
        for (size_t k = 0; k < got.size(); ++k) EXPECT_EQ(got[k] != 0, val[k].get<bool>());
      } else {
        EXPECT_EQ(v.as_int_array(), val.get<std::vector<int64_t>>());
      }
      continue;
    }
    EXPECT_EQ(gguf_type_name(v.type()), short_type(type));
    if (v.type() == GgufType::STRING) EXPECT_EQ(v.as_string(), val.get<std::string>());
    else if (v.type() == GgufType::BOOL) EXPECT_EQ(v.as_bool(), val.get<bool>());
    else if (v.type() == GgufType::F32) EXPECT_EQ(v.as_float(), static_cast<float>(val.get<double>()));
    else if (v.type() == GgufType::F64) EXPECT_EQ(v.as_float(), val.get<double>());
    else if (v.type() == GgufType::U64) EXPECT_EQ(v.as_uint(), val.get<uint64_t>());
    else EXPECT_EQ(v.as_int(), val.get<int64_t>());
  }

  SafetensorsFile ref = SafetensorsFile::open(io_test::fixtures("ref_gguf_expected.safetensors"));
  ASSERT_EQ(f.tensors().size(), expect["tensors"].size());
  for (const json& e : expect["tensors"]) {
    const std::string name = e["name"];
    SCOPED_TRACE(name);
    const GgufTensorInfo& info = f.tensor_info(name);
    EXPECT_EQ(ggml_type_name(info.ggml_type), e["type"].get<std::string>());
    EXPECT_EQ(info.shape, e["shape"].get<Shape>());
    EXPECT_EQ(info.offset % 64, 0u);
    Tensor deq = f.tensor_f32(name);
    Tensor want = ref.get_f32(name + ".deq");
    ASSERT_EQ(deq.numel(), want.numel());
    for (int64_t k = 0; k < deq.numel(); ++k)
      ASSERT_NEAR(deq.f32()[k], want.f32()[k], 1e-6 * std::max(1.0f, std::fabs(want.f32()[k]))) << k;
    ASSERT_TRUE(info.has_dtype);
    if (dtype_block_elems(info.dtype) == kQK_K) continue;  // K-quants: read only
    // Our quantizer reproduces gguf-py's bytes exactly (ggml's reference rounding).
    Tensor src = ref.get_f32(name + ".src");
    Tensor ours = quantize(src.view(info.shape), info.dtype);
    Tensor theirs = f.tensor(name);
    ASSERT_EQ(ours.nbytes(), theirs.nbytes());
    EXPECT_EQ(std::memcmp(ours.raw(), theirs.raw(), ours.nbytes()), 0) << "quantized bytes differ";
  }
}

// K-quant tensors load zero-copy with their own dtype (the bytes stay in the mapping), and
// tensor_f32 is tensor::dequantize of them: gguf-py's values (bit for bit:
// tests/tensor/kquant_test.cpp).
TEST(Gguf, KQuantsLoadZeroCopy) {
  GgufFile f = GgufFile::open(io_test::fixtures("ref.gguf"));
  SafetensorsFile ref = SafetensorsFile::open(io_test::fixtures("ref_gguf_expected.safetensors"));
  const uint8_t* map_begin = f.mapping()->data();
  const uint8_t* map_end = map_begin + f.mapping()->size();
  int seen = 0;
  for (const auto& ti : f.tensors()) {
    const bool q4k = ti.ggml_type == static_cast<uint32_t>(GgmlType::Q4_K);
    if (!q4k && ti.ggml_type != static_cast<uint32_t>(GgmlType::Q6_K)) continue;
    SCOPED_TRACE(ti.name);
    ++seen;
    ASSERT_TRUE(ti.has_dtype);
    EXPECT_EQ(ti.dtype, q4k ? DType::Q4_K : DType::Q6_K);
    Tensor w = f.tensor(ti.name);
    EXPECT_EQ(w.dtype(), ti.dtype);
    EXPECT_EQ(w.shape(), ti.shape);
    ASSERT_EQ(w.nbytes(), ti.nbytes);
    const auto* p = static_cast<const uint8_t*>(w.raw());
    EXPECT_TRUE(p >= map_begin && p + w.nbytes() <= map_end) << "not a view of the mapping";
    Tensor via_gguf = f.tensor_f32(ti.name);
    Tensor want = ref.get_f32(ti.name + ".deq");
    ASSERT_EQ(want.numel(), via_gguf.numel());
    for (int64_t k = 0; k < want.numel(); ++k)
      ASSERT_EQ(via_gguf.f32()[k], want.f32()[k]) << k;
  }
  EXPECT_EQ(seen, 2) << "ref.gguf has one Q4_K and one Q6_K tensor";
}

// The K-quant bytes of a GGUF write back unchanged (a merge copies the tensors it does not touch).
TEST(Gguf, KQuantsRoundTrip) {
  GgufFile f = GgufFile::open(io_test::fixtures("ref.gguf"));
  TempDir dir;
  const std::string p = dir.file("k.gguf");
  write_gguf(p, {{"general.architecture", GgufValue::string("llama")}},
             {{"a", f.tensor("w.q4_k")}, {"b", f.tensor("w.q6_k")}});
  GgufFile g = GgufFile::open(p);
  for (const auto& [ours, theirs] : {std::pair{"a", "w.q4_k"}, std::pair{"b", "w.q6_k"}}) {
    Tensor x = g.tensor(ours), y = f.tensor(theirs);
    EXPECT_EQ(ggml_type_name(g.tensor_info(ours).ggml_type), ggml_type_name(f.tensor_info(theirs).ggml_type));
    ASSERT_EQ(x.nbytes(), y.nbytes());
    EXPECT_EQ(std::memcmp(x.raw(), y.raw(), x.nbytes()), 0);
  }
}

TEST(Gguf, BadFiles) {
  TempDir dir;
  const std::string p = dir.file("bad.gguf");
  auto open_bad = [&](const std::string& bytes) {
    io_test::write_bytes(p, bytes);
    return [p] { GgufFile::open(p); };
  };
  expect_error(open_bad("GGUF\x03"), {"[gguf]", "bad.gguf", "5 bytes", "too short"});
  Bytes wrong_magic = header(3, 0, 0);
  wrong_magic.s[0] = 'g';
  expect_error(open_bad(wrong_magic.s), {"[gguf]", "bad.gguf", "bad magic 'gGUF'", "not a GGUF file"});
  expect_error(open_bad(header(1, 0, 0).s), {"version 1 is not supported (only versions 2 and 3 are)"});
  expect_error(open_bad(header(4, 0, 0).s), {"version 4 is not supported"});
  expect_error(open_bad(header(0x03000000, 0, 0).s), {"big-endian"});
  EXPECT_NO_THROW(open_bad(header(2, 0, 0).s)());
  expect_error(open_bad(header(3, uint64_t{1} << 60, 0).s), {"tensor count 1152921504606846976 is absurd"});
  expect_error(open_bad(header(3, 0, 1000).s), {"metadata count 1000 is absurd"});
  // Truncated string: the key claims 100 bytes, 20 follow.
  expect_error(open_bad(header(3, 0, 1).u64(100).raw(std::string(20, 'k')).s),
               {"metadata key #0", "string length 100", "past the end of the file"});
  // A value string that runs past the end.
  expect_error(open_bad(header(3, 0, 1).str("k").u32(8).u64(1u << 30).raw("abc").s),
               {"key 'k'", "string length 1073741824", "past the end"});
  expect_error(open_bad(header(3, 0, 1).str("k").u32(13).raw(std::string(8, '\0')).s),
               {"key 'k'", "unknown value type 13 (expected 0..12)"});
  expect_error(open_bad(header(3, 0, 1).str("k").u32(9).u32(99).u64(0).s),
               {"key 'k'", "unknown array element type 99"});
  expect_error(open_bad(header(3, 0, 1).str("k").u32(9).u32(4).u64(uint64_t{1} << 62).raw(std::string(8, '\0')).s),
               {"key 'k'", "array of 4611686018427387904 u32", "past the end"});
  expect_error(open_bad(header(3, 0, 1).str("k").u32(4).raw("\x01\x02").s), {"key 'k'", "past the end"});
  expect_error(open_bad(header(3, 0, 2).str("k").u32(0).raw("\x01").str("k").u32(0).raw("\x02").raw(std::string(16, '\0')).s),
               {"key 'k' appears twice"});
  expect_error(open_bad(header(3, 0, 1).str("general.alignment").u32(4).u32(48).raw(std::string(16, '\0')).s),
               {"general.alignment", "48 is not a power of two"});
  expect_error(open_bad(header(3, 0, 1).str("general.alignment").u32(10).u64(32).raw(std::string(16, '\0')).s),
               {"general.alignment", "value is u64, expected u32"});
  // Nested arrays deeper than the limit.
  Bytes deep = header(3, 0, 1).str("k").u32(9);
  for (int i = 0; i < 40; ++i) deep.u32(9).u64(1);
  deep.u32(0).u64(0);
  expect_error(open_bad(deep.s), {"key 'k'", "nested deeper"});

  // Tensors.
  EXPECT_NO_THROW(open_bad(one_tensor_file(0, 0, 16))());
  expect_error(open_bad(one_tensor_file(77, 0, 16)), {"tensor 't'", "unknown ggml type 77"});
  expect_error(open_bad(one_tensor_file(0, 0, 8)), {"tensor 't'", "data [", "overruns the file"});
  expect_error(open_bad(one_tensor_file(0, 1u << 20, 16)), {"tensor 't'", "overruns the file"});
  expect_error(open_bad(one_tensor_file(0, 8, 64)), {"tensor 't'", "offset 8 is not a multiple of the alignment 32"});
  expect_error(open_bad(one_tensor_file(2, 0, 64, 40)), {"tensor 't'", "ne[0] = 40", "Q4_0 block size 32"});
  expect_error(open_bad(one_tensor_file(0, 0, 64, -3)), {"tensor 't'", "negative"});
  {
    Bytes b = header(3, 1, 0);
    b.str("t").u32(5);
    for (int i = 0; i < 5; ++i) b.u64(1);
    b.u32(0).u64(0).pad(32).raw(std::string(32, '\0'));
    expect_error(open_bad(b.s), {"tensor 't'", "n_dims 5 is out of range"});
  }
  {
    Bytes b = header(3, 2, 0);
    b.str("t").u32(1).u64(4).u32(0).u64(0);
    b.str("t").u32(1).u64(4).u32(0).u64(32);
    b.pad(32).raw(std::string(64, '\0'));
    expect_error(open_bad(b.s), {"tensor 't' appears twice"});
  }
  {
    Bytes b = header(3, 2, 0);
    b.str("a").u32(1).u64(16).u32(0).u64(0);
    b.str("b").u32(1).u64(4).u32(0).u64(32);
    b.pad(32).raw(std::string(96, '\0'));
    expect_error(open_bad(b.s), {"tensor 'b'", "overlaps tensor 'a'"});
  }
  // A type we know but cannot read opens, and says so when asked.
  io_test::write_bytes(p, one_tensor_file(6, 0, 64, 32));  // Q5_0: 22 bytes per 32
  GgufFile f = GgufFile::open(p);
  expect_error([&] { f.tensor_f32("t"); }, {"tensor 't'", "type Q5_0 is not supported"});
  expect_error([&] { GgufFile::open(dir.file("missing.gguf")); }, {"missing.gguf", "cannot open"});
}

TEST(Gguf, WriterRejectsBadInputAtomically) {
  TempDir dir;
  const std::string path = dir.file("w.gguf");
  write_gguf(path, {{"a", GgufValue::u8(1)}}, {{"x", randn({4}, 1)}});
  const std::string before = io_test::read_bytes(path);
  expect_error([&] { write_gguf(path, {{"a", GgufValue::u8(1)}, {"a", GgufValue::u8(2)}}, {}); },
               {"[gguf]", "w.gguf", "key 'a' appears twice"});
  expect_error([&] { write_gguf(path, {}, {{"x", randn({4}, 1)}, {"x", randn({4}, 1)}}); },
               {"tensor 'x' appears twice"});
  expect_error([&] { write_gguf(path, {}, {{"i", Tensor::from_ints({2}, {1, 2})}}); },
               {"tensor 'i'", "I32 cannot be written to GGUF"});
  expect_error([&] { write_gguf(path, {{"general.alignment", GgufValue::u32(24)}}, {}); },
               {"24 is not a power of two"});
  EXPECT_EQ(io_test::read_bytes(path), before);
  int files = 0;
  for (auto& e : std::filesystem::directory_iterator(dir.path())) {
    (void)e;
    ++files;
  }
  EXPECT_EQ(files, 1);
}

// Writes files for tools/ref_io.py --check-cpp (the Python libraries read what we wrote). With
// LORAFIT_IO_OUT unset this still writes and re-reads them in a temporary directory.
TEST(Gguf, PythonInterop) {
  TempDir tmp;
  const char* env = std::getenv("LORAFIT_IO_OUT");
  const std::string out = env ? env : tmp.path();
  json expect;
  {
    std::vector<std::pair<std::string, Tensor>> ts = {
        {"a.f32", randn({3, 4}, 11)},
        {"b.f16", randn({5}, 12).to(DType::F16)},
        {"c.bf16", randn({2, 2, 3}, 13).to(DType::BF16)},
        {"d.i32", Tensor::from_ints({3}, {7, -8, 9})},
    };
    std::map<std::string, std::string> meta = {{"format", "pt"}, {"by", "lorafit"}};
    write_safetensors(out + "/ours.safetensors", ts, meta);
    json& s = expect["safetensors"];
    s["metadata"] = meta;
    for (const auto& [name, t] : ts) {
      std::vector<double> vals;
      if (t.dtype() == DType::I32)
        for (int64_t i = 0; i < t.numel(); ++i) vals.push_back(t.i32()[i]);
      else {
        Tensor f = t.to(DType::F32);
        for (int64_t i = 0; i < t.numel(); ++i) vals.push_back(f.f32()[i]);
      }
      const char* dt = t.dtype() == DType::F32 ? "float32" : t.dtype() == DType::F16 ? "float16"
                       : t.dtype() == DType::BF16 ? "bfloat16" : "int32";
      s["tensors"][name] = {{"dtype", dt}, {"shape", t.shape()}, {"values", vals}};
    }
    SafetensorsFile back = SafetensorsFile::open(out + "/ours.safetensors");
    EXPECT_EQ(back.names().size(), ts.size());
  }
  {
    auto meta = all_types_metadata();
    meta.pop_back();  // gguf-py cannot write (and its reader mishandles) an empty array
    auto ts = all_types_tensors();
    write_gguf(out + "/ours.gguf", meta, ts);
    json& g = expect["gguf"];
    g["metadata"] = json::array();
    // Scalars and flat arrays of numbers/strings (nested arrays are checked by the C++ round trip).
    for (const auto& [k, v] : meta) {
      json e = {{"key", k}};
      const GgufType t = v.type();
      e["type"] = gguf_type_name(t);
      static const std::map<std::string, std::string> py = {
          {"u8", "uint8"}, {"i8", "int8"}, {"u16", "uint16"}, {"i16", "int16"}, {"u32", "uint32"},
          {"i32", "int32"}, {"f32", "float32"}, {"u64", "uint64"}, {"i64", "int64"}, {"f64", "float64"}};
      if (py.count(e["type"])) e["type"] = py.at(e["type"]);
      if (t == GgufType::ARRAY) {
        if (v.array_type() == GgufType::ARRAY) continue;
        if (v.array_type() == GgufType::STRING) e["value"] = v.as_string_array();
        else if (v.array_type() == GgufType::BOOL) {
          std::vector<bool> b;
          for (int64_t x : v.as_int_array()) b.push_back(x != 0);
          e["value"] = b;
        } else if (v.array_type() == GgufType::F32 || v.array_type() == GgufType::F64) e["value"] = v.as_float_array();
        else if (v.array_type() == GgufType::U64) {
          std::vector<uint64_t> u;
          for (int64_t x : v.as_int_array()) u.push_back(static_cast<uint64_t>(x));
          e["value"] = u;
        } else e["value"] = v.as_int_array();
      } else if (t == GgufType::STRING) e["value"] = v.as_string();
      else if (t == GgufType::BOOL) e["value"] = v.as_bool();
      else if (t == GgufType::F32 || t == GgufType::F64) e["value"] = v.as_float();
      else if (t == GgufType::U64) e["value"] = v.as_uint();
      else e["value"] = v.as_int();
      g["metadata"].push_back(e);
    }
    for (const auto& [name, t] : ts) {
      Tensor f = t.to(DType::F32);
      std::vector<double> vals(f.f32(), f.f32() + f.numel());
      g["tensors"].push_back({{"name", name}, {"type", ggml_type_name(GgufFile::open(out + "/ours.gguf").tensor_info(name).ggml_type)},
                              {"shape", t.shape()}, {"values", vals}});
    }
  }
  write_json_file(out + "/expected.json", expect);
  EXPECT_TRUE(file_exists(out + "/expected.json"));
}

// The real SmolLM2 Q4_1 GGUF (tools/fetch_models.sh puts it in models/; missing = failure).
TEST(Gguf, SmolLM2File) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(LORAFIT_SOURCE_DIR) / "models" / "SmolLM2-135M-Instruct";
  std::string path;
  if (fs::is_directory(dir))
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().extension() == ".gguf") path = e.path().string();
  ASSERT_FALSE(path.empty()) << "no GGUF in " << dir << ": run tools/fetch_models.sh";
  GgufFile f = GgufFile::open(path);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_string_array("tokenizer.ggml.tokens").size(), 49152u);
  EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(f.get_int("llama.block_count"), 30);
  EXPECT_EQ(f.get_int("llama.embedding_length"), 576);
  const GgufTensorInfo& q = f.tensor_info("blk.0.attn_q.weight");
  EXPECT_EQ(q.dtype, DType::Q4_1);
  EXPECT_EQ(q.shape, (Shape{576, 576}));
  Tensor w = f.tensor("blk.0.attn_q.weight");
  EXPECT_EQ(w.dtype(), DType::Q4_1);
  Tensor x = f.tensor_f32("blk.0.attn_q.weight");
  double ss = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    ASSERT_TRUE(std::isfinite(x.f32()[i]));
    ss += x.f32()[i] * x.f32()[i];
  }
  const double rms = std::sqrt(ss / static_cast<double>(x.numel()));
  EXPECT_GT(rms, 1e-3);
  EXPECT_LT(rms, 1.0);
  int q41 = 0;
  for (const GgufTensorInfo& t : f.tensors()) {
    if (t.dtype == DType::Q4_1 && t.has_dtype) ++q41;
    EXPECT_TRUE(t.has_dtype) << t.name;
  }
  EXPECT_GT(q41, 100);
}
