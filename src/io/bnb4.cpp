// bitsandbytes 4-bit weights as transformers saves them (io.h): Params4bit's packed codes plus
// the QuantState tensors and its JSON, read into and written from tensor::Quant4.
#include <cmath>
#include <cstdio>
#include <cstring>

#include "lorafit/io.h"
#include "lorafit/quant.h"

namespace lorafit::io {

namespace {

const char* const kStateKeys[] = {".quant_state.bitsandbytes__nf4", ".quant_state.bitsandbytes__fp4"};
const char* const kAuxKeys[] = {".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map",
                                ".quant_state.bitsandbytes__nf4", ".quant_state.bitsandbytes__fp4"};

bool ends_with(const std::string& s, const std::string& e) {
  return s.size() >= e.size() && s.compare(s.size() - e.size(), e.size(), e) == 0;
}

[[noreturn]] void fail(const std::string& file, const std::string& name, const std::string& msg) {
  throw Error("[bnb4] " + file + ": tensor '" + name + "': " + msg);
}

std::string state_key(const SafetensorsFolder& f, const std::string& name) {
  for (const char* k : kStateKeys)
    if (f.contains(name + k)) return name + k;
  return "";
}

// A float tensor of `want` values (any float dtype the file holds; bitsandbytes writes F32).
std::vector<float> floats(const SafetensorsFolder& f, const std::string& key, int64_t want,
                          const std::string& file) {
  if (!f.contains(key)) fail(file, key, "is missing (a bitsandbytes 4-bit weight needs it)");
  Tensor t = f.get_f32(key);
  if (t.numel() != want)
    fail(file, key, "has " + std::to_string(t.numel()) + " values, expected " +
                        std::to_string(want));
  return std::vector<float>(t.f32(), t.f32() + want);
}

std::string f32_bytes(const float* p, size_t n, std::vector<uint8_t>& out) {
  out.resize(n * 4);
  std::memcpy(out.data(), p, n * 4);
  return "F32";
}

}  // namespace

bool is_bnb4_weight(const SafetensorsFolder& f, const std::string& name) {
  return !state_key(f, name).empty();
}

bool is_bnb4_state_name(const std::string& name) {
  for (const char* k : kAuxKeys)
    if (ends_with(name, k)) return true;
  return false;
}

std::string bnb4_type_name(const SafetensorsFolder& f, const std::string& name) {
  const std::string sk = state_key(f, name);
  const bool fp4 = ends_with(sk, "fp4");
  const bool dq = f.contains(name + ".nested_absmax");
  return std::string(fp4 ? "FP4" : "NF4") + (dq ? "-DQ" : "") + " (bitsandbytes)";
}

Tensor read_bnb4_weight(const SafetensorsFolder& f, const std::string& name,
                        const std::string& file) {
  const std::string sk = state_key(f, name);
  if (sk.empty()) fail(file, name, "has no quant_state.bitsandbytes__nf4 / __fp4 entry");
  const std::vector<uint8_t> js = f.bytes(sk);
  const json st = parse_json(std::string_view(reinterpret_cast<const char*>(js.data()), js.size()),
                             file + ": tensor '" + sk + "'");
  const std::string where = file + ": tensor '" + sk + "'";
  if (!st.is_object()) fail(file, sk, "expected a JSON object");
  tensor::Quant4 q;
  const std::string qt = json_string(st, "quant_type", where);
  if (qt != "nf4" && qt != "fp4")
    fail(file, sk, "field 'quant_type': '" + qt + "' is not supported (nf4, fp4)");
  if (!ends_with(sk, qt)) fail(file, sk, "field 'quant_type' '" + qt + "' differs from its key");
  q.type = qt == "nf4" ? tensor::Quant4Type::NF4 : tensor::Quant4Type::FP4;
  const int64_t bs = json_int(st, "blocksize", where);
  if (bs != tensor::kQuant4Block)
    fail(file, sk, "field 'blocksize': " + std::to_string(bs) + " is not supported (64)");
  if (!st.contains("shape") || !st["shape"].is_array() || st["shape"].empty())
    fail(file, sk, "field 'shape': expected a list of sizes");
  Shape shape;
  for (const auto& d : st["shape"]) {
    if (!d.is_number_integer() || d.get<int64_t>() <= 0)
      fail(file, sk, "field 'shape': expected positive integers, got " + st["shape"].dump());
    shape.push_back(d.get<int64_t>());
  }
  q.n = tensor::shape_numel(shape);
  // The codes: U8 of (n + 1) / 2 bytes in any shape ([n/2, 1] from transformers).
  if (!f.contains(name)) fail(file, name, "is missing");
  const auto& e = f.entry(name);
  if (e.dtype_name != "U8")
    fail(file, name, "dtype '" + e.dtype_name + "', expected U8 packed 4-bit codes");
  q.packed = f.bytes(name);
  const int64_t nb = q.blocks();
  // The code table must be the standard one: a custom map has no lorafit kernel.
  const std::vector<float> map = floats(f, name + ".quant_map", 16, file);
  for (int i = 0; i < 16; ++i)
    if (map[static_cast<size_t>(i)] != tensor::quant4_code(q.type)[i])
      fail(file, name + ".quant_map",
           "entry " + std::to_string(i) + " is " + std::to_string(map[static_cast<size_t>(i)]) +
               ", not bitsandbytes' " + qt + " code " +
               std::to_string(tensor::quant4_code(q.type)[i]));
  const std::string ak = name + ".absmax";
  if (!f.contains(ak)) fail(file, ak, "is missing (a bitsandbytes 4-bit weight needs it)");
  q.double_quant = f.contains(name + ".nested_absmax");
  if (q.double_quant) {
    if (f.entry(ak).dtype_name != "U8")
      fail(file, ak, "dtype '" + f.entry(ak).dtype_name +
                         "', expected U8 (8-bit codes of the double-quantized absmax)");
    q.absmax_q = f.bytes(ak);
    const int64_t nbs = json_int(st, "nested_blocksize", where);
    if (nbs != tensor::kQuant4NestedBlock)
      fail(file, sk, "field 'nested_blocksize': " + std::to_string(nbs) + " is not supported (256)");
    q.offset = static_cast<float>(json_number(st, "nested_offset", where));
    q.nested_absmax = floats(f, name + ".nested_absmax",
                             (nb + tensor::kQuant4NestedBlock - 1) / tensor::kQuant4NestedBlock, file);
    const std::vector<float> dmap = floats(f, name + ".nested_quant_map", 256, file);
    for (int i = 0; i < 256; ++i)
      if (dmap[static_cast<size_t>(i)] != tensor::dynamic_map()[i])
        fail(file, name + ".nested_quant_map",
             "entry " + std::to_string(i) + " differs from bitsandbytes' dynamic map");
  } else {
    q.absmax = floats(f, ak, nb, file);
  }
  tensor::check_quant4(q, file + ": tensor '" + name + "'");
  return tensor::quant4_tensor(std::move(q), shape);
}

std::vector<SafetensorsBlob> bnb4_blobs(const std::string& name, const Tensor& w,
                                        const std::string& dtype) {
  const tensor::Quant4& q = tensor::quant4_state(w);
  if (q.n != w.numel())
    throw Error("[bnb4] " + name + ": " + w.str() + " is a view of a larger 4-bit weight");
  std::vector<SafetensorsBlob> out;
  out.push_back({name, "U8", {static_cast<int64_t>(q.packed.size()), 1}, q.packed});
  SafetensorsBlob b;
  if (q.double_quant) {
    out.push_back({name + ".absmax", "U8", {static_cast<int64_t>(q.absmax_q.size())}, q.absmax_q});
  } else {
    b = {name + ".absmax", "", {static_cast<int64_t>(q.absmax.size())}, {}};
    b.dtype = f32_bytes(q.absmax.data(), q.absmax.size(), b.bytes);
    out.push_back(std::move(b));
  }
  b = {name + ".quant_map", "", {16}, {}};
  b.dtype = f32_bytes(tensor::quant4_code(q.type), 16, b.bytes);
  out.push_back(std::move(b));
  if (q.double_quant) {
    b = {name + ".nested_absmax", "", {static_cast<int64_t>(q.nested_absmax.size())}, {}};
    b.dtype = f32_bytes(q.nested_absmax.data(), q.nested_absmax.size(), b.bytes);
    out.push_back(std::move(b));
    b = {name + ".nested_quant_map", "", {256}, {}};
    b.dtype = f32_bytes(tensor::dynamic_map(), 256, b.bytes);
    out.push_back(std::move(b));
  }
  // The JSON as Python's json.dumps writes QuantState.as_dict's non-tensor entries.
  std::string shape;
  for (int64_t d : w.shape()) shape += (shape.empty() ? "" : ", ") + std::to_string(d);
  std::string js = std::string("{\"quant_type\": \"") + tensor::quant4_name(q.type) +
                   "\", \"blocksize\": 64, \"dtype\": \"" + dtype + "\", \"shape\": [" + shape + "]";
  if (q.double_quant) {
    char off[64];
    std::snprintf(off, sizeof off, "%.17g", static_cast<double>(q.offset));
    js += std::string(", \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", "
                      "\"nested_offset\": ") +
          off;
  }
  js += "}";
  out.push_back({name + ".quant_state.bitsandbytes__" + tensor::quant4_name(q.type), "U8",
                 {static_cast<int64_t>(js.size())},
                 std::vector<uint8_t>(js.begin(), js.end())});
  return out;
}

}  // namespace lorafit::io
