// safetensors: round trips, the Python library's file, folders, atomic writes and bad files.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "io_test_util.h"
#include "lorafit/io.h"

using namespace lorafit::io;
using namespace lorafit::tensor;
using io_test::Bytes;
using io_test::expect_error;
using io_test::TempDir;

namespace {

Tensor ramp(const Shape& s, float scale) {
  std::vector<float> v(static_cast<size_t>(shape_numel(s)));
  for (size_t i = 0; i < v.size(); ++i) v[i] = scale * (static_cast<float>(i) - 3.25f);
  return Tensor::from_vector(s, v);
}

// A safetensors file from a header string and a data section.
std::string st_bytes(const std::string& header, const std::string& data) {
  Bytes b;
  b.u64(header.size()).raw(header).raw(data);
  return b.s;
}

// Resident pages of this process (/proc/self/statm, second field), in bytes.
size_t resident_bytes() {
  std::ifstream f("/proc/self/statm");
  size_t size = 0, resident = 0;
  f >> size >> resident;
  return resident * static_cast<size_t>(::sysconf(_SC_PAGESIZE));
}

double sum_of(const Tensor& t) {
  double s = 0;
  for (int64_t i = 0; i < t.numel(); ++i) s += t.f32()[i];
  return s;
}

}  // namespace

// What the model loaders do after copying a tensor out of the mapping: its pages leave the
// resident set, and the view still reads the file's values (faulted in again).
TEST(Safetensors, ReleaseDropsPagesAndKeepsValues) {
  TempDir dir;
  const std::string path = dir.file("big.safetensors");
  const int64_t n = 12 << 20;  // 48 MiB of F32
  write_safetensors(path, {{"small", ramp({3}, 1.0f)}, {"big", ramp({n}, 1e-6f)}});
  SafetensorsFile f = SafetensorsFile::open(path);
  Tensor big = f.get("big");
  ASSERT_FALSE(big.keepalive() == nullptr) << "a zero-copy view of the mapping";
  const double want = sum_of(big);  // touches every page
  const size_t before = resident_bytes();
  f.release("big");
  const size_t after = resident_bytes();
  EXPECT_GT(before, after + (40u << 20)) << "before " << before << " after " << after;
  EXPECT_EQ(sum_of(big), want);
  EXPECT_EQ(f.get("small").f32()[2], ramp({3}, 1.0f).f32()[2]);
  // Ranges outside the mapping, empty ones and a whole-file release are no-ops or harmless.
  const MappedFile& m = *f.mapping();
  m.release(m.data() + m.size(), 100);
  m.release(m.data(), 0);
  m.release(m.data() + 5, m.size());  // past the end: clipped
  m.release(m.data(), m.size());
  EXPECT_EQ(sum_of(big), want);
}

TEST(Safetensors, RoundTrip) {
  TempDir dir;
  const std::string path = dir.file("rt.safetensors");
  std::vector<std::pair<std::string, Tensor>> ts = {
      {"z.last_but_first", ramp({2, 3}, 0.5f)},
      {"f16", ramp({5}, 1.5f).to(DType::F16)},
      {"bf16", ramp({3, 1, 2}, -7.0f).to(DType::BF16)},
      {"ints", Tensor::from_ints({4}, {1, -2, 300000, -2147483647})},
      {"scalar", Tensor::from_vector({}, {42.0f})},
      {"empty", Tensor::zeros({0, 3})},
  };
  write_safetensors(path, ts, {{"format", "pt"}, {"k", "v with \"quotes\""}});
  std::string raw = io_test::read_bytes(path);
  uint64_t n = 0;
  std::memcpy(&n, raw.data(), 8);
  EXPECT_EQ(n % 8, 0u) << "header padded to 8 bytes";
  EXPECT_EQ(raw[8], '{');

  SafetensorsFile f = SafetensorsFile::open(path);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("k"), "v with \"quotes\"");
  ASSERT_EQ(f.names().size(), ts.size());
  for (size_t i = 0; i + 1 < ts.size(); ++i) EXPECT_EQ(f.names()[i], ts[i].first);  // offset order
  for (const auto& [name, t] : ts) {
    Tensor g = f.get(name);
    EXPECT_EQ(g.dtype(), t.dtype()) << name;
    EXPECT_EQ(g.shape(), t.shape()) << name;
    ASSERT_EQ(g.nbytes(), t.nbytes());
    EXPECT_EQ(std::memcmp(g.raw(), t.raw(), t.nbytes()), 0) << name;
  }
  // Zero-copy: the view points into the mapping.
  Tensor a = f.get("z.last_but_first");
  const uint8_t* p = static_cast<const uint8_t*>(a.raw());
  EXPECT_GE(p, f.mapping()->data());
  EXPECT_LT(p, f.mapping()->data() + f.mapping()->size());
  // get_f32 converts, and the view outlives the file object.
  Tensor bf;
  {
    SafetensorsFile g = SafetensorsFile::open(path);
    bf = g.get_f32("bf16");
  }
  Tensor want = ts[2].second.to(DType::F32);
  for (int64_t i = 0; i < bf.numel(); ++i) EXPECT_EQ(bf.f32()[i], want.f32()[i]);
  expect_error([&] { f.get_f32("ints"); }, {"[safetensors]", "'ints'", "not a float type"});
  expect_error([&] { f.get("nope"); }, {"[safetensors]", "rt.safetensors", "no tensor 'nope'"});
}

TEST(Safetensors, ReadsPythonLibraryFile) {
  SafetensorsFile f = SafetensorsFile::open(io_test::fixtures("ref.safetensors"));
  json expect = read_json_file(io_test::fixtures("ref_safetensors.json"));
  for (auto& [k, v] : expect["metadata"].items()) EXPECT_EQ(f.metadata().at(k), v.get<std::string>());
  EXPECT_EQ(f.names().size(), expect["tensors"].size());
  for (auto& [name, e] : expect["tensors"].items()) {
    const SafetensorsEntry& en = f.entry(name);
    Shape shape = e["shape"].get<Shape>();
    EXPECT_EQ(en.shape, shape) << name;
    Tensor t = f.get(name);
    std::string dt = e["dtype"];
    std::vector<double> vals = e["values"].get<std::vector<double>>();
    ASSERT_EQ(static_cast<size_t>(t.numel()), vals.size()) << name;
    if (dt == "int64") {
      EXPECT_EQ(en.dtype_name, "I64");
      ASSERT_EQ(t.dtype(), DType::I32);
      for (size_t i = 0; i < vals.size(); ++i) EXPECT_EQ(t.i32()[i], vals[i]) << name;
      continue;
    }
    EXPECT_EQ(t.dtype(), dt == "float32" ? DType::F32 : dt == "float16" ? DType::F16 : DType::BF16);
    Tensor x = f.get_f32(name);
    for (size_t i = 0; i < vals.size(); ++i) EXPECT_EQ(x.f32()[i], vals[i]) << name << "[" << i << "]";
  }
}

TEST(Safetensors, WriterIsAtomicAndRejectsBadInput) {
  TempDir dir;
  const std::string path = dir.file("a.safetensors");
  write_safetensors(path, {{"x", ramp({4}, 1.0f)}});
  const std::string before = io_test::read_bytes(path);
  Tensor q = Tensor::zeros({32}, DType::Q8_0);
  expect_error([&] { write_safetensors(path, {{"x", ramp({2}, 1.0f)}, {"q", q}}); },
               {"[safetensors]", "a.safetensors", "'q'", "Q8_0", "cannot be stored"});
  expect_error([&] { write_safetensors(path, {{"x", ramp({2}, 1.0f)}, {"x", ramp({2}, 1.0f)}}); },
               {"'x' appears twice"});
  EXPECT_EQ(io_test::read_bytes(path), before) << "a failed write must leave the old file";
  int files = 0;
  for (auto& e : std::filesystem::directory_iterator(dir.path())) {
    (void)e;
    ++files;
  }
  EXPECT_EQ(files, 1) << "no temporary file left behind";
  write_safetensors(path, {{"y", ramp({3}, 2.0f)}});
  EXPECT_TRUE(SafetensorsFile::open(path).contains("y"));
  EXPECT_FALSE(SafetensorsFile::open(path).contains("x"));
}

TEST(Safetensors, BadFiles) {
  TempDir dir;
  const std::string p = dir.file("bad.safetensors");
  auto open_bad = [&](const std::string& bytes) {
    io_test::write_bytes(p, bytes);
    return [p] { SafetensorsFile::open(p); };
  };
  expect_error(open_bad("abc"), {"[safetensors]", "bad.safetensors", "3 bytes", "too short"});
  expect_error(open_bad(Bytes().u64(1000).raw("{}").s),
               {"[safetensors]", "header length 1000", "past the end", "(10 bytes)"});
  expect_error(open_bad(st_bytes("{\n \"a\": {\"dtype\": \"F32\",\n \"shape\": [1] \"data_offsets\": [0, 4]}}", "abcd")),
               {"[safetensors]", "bad.safetensors", "line 3", "column"});
  expect_error(open_bad(st_bytes("[1, 2]", "")), {"header is array", "expected an object"});
  expect_error(open_bad(st_bytes(R"({"w":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}})", "abcd")),
               {"[safetensors]", "tensor 'w'", "unknown dtype 'F33'"});
  expect_error(open_bad(st_bytes(R"({"bert.embeddings.word_embeddings.weight":{"dtype":"F32","shape":[3000,30000],"data_offsets":[0,360000000]}})", "abcd")),
               {"[safetensors]", "tensor 'bert.embeddings.word_embeddings.weight'",
                "data [0, 360000000) overruns the file"});
  expect_error(open_bad(st_bytes(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", std::string(24, 'x'))),
               {"tensor 'w'", "F32[2, 3] needs 24 bytes but data_offsets span 20"});
  expect_error(open_bad(st_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", std::string(8, 'x'))),
               {"tensor 'w'", "run backwards"});
  expect_error(open_bad(st_bytes(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", std::string(8, 'x'))),
               {"tensor 'w'", "non-negative"});
  expect_error(open_bad(st_bytes(R"({"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}})", std::string(8, 'x'))),
               {"tensor 'w'", "more than 2^64"});
  expect_error(open_bad(st_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", std::string(8, 'x'))),
               {"tensor 'w'", "data_offsets"});
  expect_error(open_bad(st_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", std::string(12, 'x'))),
               {"overlaps"});
  expect_error(open_bad(st_bytes(R"({"__metadata__":{"a":1}})", "")), {"__metadata__ 'a'", "expected string"});
  // Known but unsupported dtypes open and list; get() names the dtype.
  io_test::write_bytes(p, st_bytes(R"({"d":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", std::string(8, '\0')));
  SafetensorsFile f = SafetensorsFile::open(p);
  EXPECT_FALSE(f.entry("d").supported);
  expect_error([&] { f.get("d"); }, {"tensor 'd'", "dtype 'F64' is not supported"});
  // I64 values that do not fit in I32.
  Bytes big;
  big.u64(uint64_t{1} << 40);
  io_test::write_bytes(p, st_bytes(R"({"i":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})", big.s));
  expect_error([&] { SafetensorsFile::open(p).get("i"); }, {"tensor 'i'", "does not fit in I32"});
  // Unaligned data is copied, not viewed (typed access stays defined).
  io_test::write_bytes(p, st_bytes(R"({"u":{"dtype":"F32","shape":[1],"data_offsets":[1,5]}})", std::string("\0\0\0\x80\x3f", 5)));
  EXPECT_EQ(SafetensorsFile::open(p).get("u").f32()[0], 1.0f);
  expect_error([&] { SafetensorsFile::open(dir.file("missing.safetensors")); },
               {"missing.safetensors", "cannot open"});
}

TEST(Safetensors, ShardedFolder) {
  TempDir dir;
  write_safetensors(dir.file("model-00001-of-00002.safetensors"), {{"a", ramp({2}, 1.0f)}},
                    {{"format", "pt"}});
  write_safetensors(dir.file("model-00002-of-00002.safetensors"), {{"b", ramp({3}, 2.0f)}});
  write_json_file(dir.file("model.safetensors.index.json"),
                  json{{"metadata", {{"total_size", 20}}},
                       {"weight_map",
                        {{"a", "model-00001-of-00002.safetensors"}, {"b", "model-00002-of-00002.safetensors"}}}});
  SafetensorsFolder s = SafetensorsFolder::open(dir.path());
  EXPECT_EQ(s.names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(s.get_f32("b").f32()[2], 2.0f * (2 - 3.25f));
  EXPECT_EQ(s.metadata().at("format"), "pt");
  expect_error([&] { s.get("c"); }, {"no tensor 'c'"});
  // A single file, and a folder with model.safetensors.
  TempDir d2;
  write_safetensors(d2.file("model.safetensors"), {{"w", ramp({1}, 1.0f)}});
  EXPECT_TRUE(SafetensorsFolder::open(d2.path()).contains("w"));
  EXPECT_TRUE(SafetensorsFolder::open(d2.file("model.safetensors")).contains("w"));
  TempDir d3;
  expect_error([&] { SafetensorsFolder::open(d3.path()); }, {"no model.safetensors"});
}
