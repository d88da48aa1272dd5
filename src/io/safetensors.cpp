// safetensors: u64 LE header length, JSON header, data. Read by mmap with every range checked
// before use; written atomically with the header padded by spaces to 8 bytes (as the Python
// library does, so the data section starts 8-byte aligned).
#include <algorithm>
#include <cstring>
#include <limits>

#include "lorafit/io.h"

namespace lorafit::io {

namespace {

constexpr uint64_t kMaxHeader = 100'000'000;  // the Python library's limit

[[noreturn]] void fail(const std::string& path, const std::string& msg) {
  throw Error("[safetensors] " + path + ": " + msg);
}

// Element sizes of every dtype in the safetensors spec.
int64_t st_dtype_size(const std::string& s) {
  static const std::pair<const char*, int64_t> table[] = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"I16", 2},
      {"U16", 2},  {"F16", 2}, {"BF16", 2}, {"I32", 4},    {"U32", 4},     {"F32", 4},
      {"F64", 8},  {"I64", 8}, {"U64", 8}};
  for (const auto& [name, size] : table)
    if (s == name) return size;
  return 0;
}

bool st_supported(const std::string& s, DType* out) {
  if (s == "F32") *out = DType::F32;
  else if (s == "F16") *out = DType::F16;
  else if (s == "BF16") *out = DType::BF16;
  else if (s == "I32" || s == "I64") *out = DType::I32;
  else return false;
  return true;
}

const char* st_dtype_of(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::I32: return "I32";
    default: return nullptr;
  }
}

// Non-negative integer from a header JSON value.
bool header_uint(const json& v, uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer() && v.get<int64_t>() >= 0) {
    *out = static_cast<uint64_t>(v.get<int64_t>());
    return true;
  }
  return false;
}

}  // namespace

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.path_ = path;
  f.map_ = MappedFile::open(path);
  const uint8_t* base = f.map_->data();
  const uint64_t size = f.map_->size();
  if (size < 8)
    fail(path, "file is " + std::to_string(size) + " bytes, too short for the 8-byte header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | base[i];  // little-endian on any host
  if (n > size - 8)
    fail(path, "header length " + std::to_string(n) + " runs past the end of the file (" +
                   std::to_string(size) + " bytes)");
  if (n > kMaxHeader)
    fail(path, "header length " + std::to_string(n) + " exceeds the limit of " +
                   std::to_string(kMaxHeader) + " bytes");
  f.data_start_ = 8 + n;
  const uint64_t data_size = size - f.data_start_;
  std::string_view text(reinterpret_cast<const char*>(base + 8), n);
  json header;
  try {
    header = parse_json(text, path + " header");
  } catch (const Error& e) {
    // parse_json's message starts with "[json] "; keep the detail under our prefix.
    std::string m = e.what();
    throw Error("[safetensors] " + m.substr(m.find(' ') + 1));
  }
  if (!header.is_object()) fail(path, std::string("header is ") + json_type_name(header) + ", expected an object");

  std::vector<const SafetensorsEntry*> order;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) fail(path, "__metadata__ is " + std::string(json_type_name(v)) + ", expected an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          fail(path, "__metadata__ '" + m.key() + "' is " + json_type_name(m.value()) + ", expected string");
        f.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor '" + name + "'";
    if (!v.is_object()) fail(path, where + ": entry is " + json_type_name(v) + ", expected an object");
    SafetensorsEntry e;
    e.name = name;
    auto dt = v.find("dtype");
    if (dt == v.end() || !dt->is_string()) fail(path, where + ": 'dtype' missing or not a string");
    e.dtype_name = dt->get<std::string>();
    int64_t esize = st_dtype_size(e.dtype_name);
    if (esize == 0)
      fail(path, where + ": unknown dtype '" + e.dtype_name +
                     "' (expected one of F32, F16, BF16, I32, I64, F64, I8, U8, I16, U16, U32, "
                     "U64, BOOL, F8_E4M3, F8_E5M2)");
    e.supported = st_supported(e.dtype_name, &e.dtype);
    auto sh = v.find("shape");
    if (sh == v.end() || !sh->is_array()) fail(path, where + ": 'shape' missing or not a list");
    // numel with overflow check; the byte count must fit in the file anyway.
    uint64_t numel = 1;
    bool overflow = false, has_zero = false;
    for (const json& d : *sh) {
      uint64_t k = 0;
      if (!header_uint(d, &k) || k > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        fail(path, where + ": shape " + sh->dump() + " must hold non-negative integers");
      e.shape.push_back(static_cast<int64_t>(k));
      if (k == 0) has_zero = true;
      else if (numel > std::numeric_limits<uint64_t>::max() / k) overflow = true;
      else numel *= k;
    }
    if (has_zero) numel = 0, overflow = false;  // an empty tensor, whatever the other dims
    auto off = v.find("data_offsets");
    if (off == v.end() || !off->is_array() || off->size() != 2 || !header_uint((*off)[0], &e.begin) ||
        !header_uint((*off)[1], &e.end))
      fail(path, where + ": 'data_offsets' must be [begin, end] with non-negative integers");
    if (e.begin > e.end)
      fail(path, where + ": data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) + ") run backwards");
    if (e.end > data_size)
      fail(path, where + ": data [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                     ") overruns the file (data section is " + std::to_string(data_size) +
                     " bytes, file " + std::to_string(size) + " bytes)");
    uint64_t want = numel * static_cast<uint64_t>(esize);
    overflow = overflow || numel > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(esize);
    if (overflow || want != e.end - e.begin)
      fail(path, where + ": " + e.dtype_name + tensor::shape_str(e.shape) + " needs " +
                     (overflow ? std::string("more than 2^64") : std::to_string(want)) +
                     " bytes but data_offsets span " + std::to_string(e.end - e.begin));
    auto [pos, inserted] = f.entries_.emplace(name, std::move(e));
    if (!inserted) fail(path, where + " appears twice");
    order.push_back(&pos->second);
  }
  std::stable_sort(order.begin(), order.end(), [](const SafetensorsEntry* a, const SafetensorsEntry* b) {
    return a->begin < b->begin;
  });
  const SafetensorsEntry* prev = nullptr;
  for (const SafetensorsEntry* e : order) {
    if (e->begin == e->end) continue;  // empty tensors take no bytes
    if (prev && e->begin < prev->end)
      fail(path, "tensor '" + e->name + "' data [" + std::to_string(e->begin) + ", " +
                     std::to_string(e->end) + ") overlaps tensor '" + prev->name + "' [" +
                     std::to_string(prev->begin) + ", " + std::to_string(prev->end) + ")");
    prev = e;
  }
  for (const SafetensorsEntry* e : order) f.names_.push_back(e->name);
  return f;
}

bool SafetensorsFile::contains(const std::string& name) const { return entries_.count(name) > 0; }

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) fail(path_, "no tensor '" + name + "'");
  return it->second;
}

Tensor SafetensorsFile::get(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  if (!e.supported)
    fail(path_, "tensor '" + name + "': dtype '" + e.dtype_name +
                    "' is not supported (F32, F16, BF16, I32 and I64 are)");
  const uint8_t* p = map_->data() + data_start_ + e.begin;
  const int64_t n = tensor::shape_numel(e.shape);
  if (e.dtype_name == "I64") {
    Tensor t = Tensor::empty(e.shape, DType::I32);
    int32_t* out = t.i32();
    for (int64_t i = 0; i < n; ++i) {
      int64_t v;
      std::memcpy(&v, p + i * 8, 8);
      if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max())
        fail(path_, "tensor '" + name + "': I64 value " + std::to_string(v) + " at index " +
                        std::to_string(i) + " does not fit in I32");
      out[i] = static_cast<int32_t>(v);
    }
    return t;
  }
  const size_t esize = static_cast<size_t>(st_dtype_size(e.dtype_name));
  // Zero-copy when the data is aligned for its element type (always, for files written by the
  // Python library or by us); otherwise an aligned copy, so typed access stays defined.
  if (n == 0 || reinterpret_cast<uintptr_t>(p) % esize == 0)
    return Tensor::wrap(const_cast<uint8_t*>(p), e.shape, e.dtype, std::const_pointer_cast<MappedFile>(map_));
  Tensor t = Tensor::empty(e.shape, e.dtype);
  std::memcpy(t.raw(), p, e.end - e.begin);
  return t;
}

std::vector<uint8_t> SafetensorsFile::bytes(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  const uint8_t* p = map_->data() + data_start_ + e.begin;
  return std::vector<uint8_t>(p, p + (e.end - e.begin));
}

void SafetensorsFile::release(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  map_->release(map_->data() + data_start_ + e.begin, e.end - e.begin);
}

Tensor SafetensorsFile::get_f32(const std::string& name) const {
  Tensor t = get(name);
  if (t.dtype() == DType::F32) return t;
  if (t.dtype() == DType::I32)
    fail(path_, "tensor '" + name + "': dtype '" + entry(name).dtype_name + "' is not a float type");
  return t.to(DType::F32);
}

void write_safetensors_blobs(const std::string& path, const std::vector<SafetensorsBlob>& tensors,
                             const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = std::move(m);
  }
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    if (t.name.empty()) fail(path, "tensor with an empty name");
    if (t.name == "__metadata__") fail(path, "'__metadata__' cannot be a tensor name");
    if (header.contains(t.name)) fail(path, "tensor '" + t.name + "' appears twice");
    const int64_t es = st_dtype_size(t.dtype);
    if (es == 0) fail(path, "tensor '" + t.name + "': unknown dtype '" + t.dtype + "'");
    if (static_cast<uint64_t>(tensor::shape_numel(t.shape) * es) != t.bytes.size())
      fail(path, "tensor '" + t.name + "': " + std::to_string(t.bytes.size()) +
                     " bytes do not fit " + t.dtype + tensor::shape_str(t.shape));
    nlohmann::ordered_json e = nlohmann::ordered_json::object();
    e["dtype"] = t.dtype;
    e["shape"] = t.shape;
    e["data_offsets"] = {offset, offset + t.bytes.size()};
    header[t.name] = std::move(e);
    offset += t.bytes.size();
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(h.size()) >> (8 * i));
  AtomicWriter w(path);
  w.write(len, 8);
  w.write(h);
  for (const auto& t : tensors) w.write(t.bytes.data(), t.bytes.size());
  w.commit();
}

void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = std::move(m);
  }
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name.empty()) fail(path, "tensor with an empty name");
    if (name == "__metadata__") fail(path, "'__metadata__' cannot be a tensor name");
    if (header.contains(name)) fail(path, "tensor '" + name + "' appears twice");
    if (!t.defined()) fail(path, "tensor '" + name + "' is undefined");
    const char* dt = st_dtype_of(t.dtype());
    if (!dt)
      fail(path, "tensor '" + name + "': dtype " + tensor::dtype_name(t.dtype()) +
                     " cannot be stored in safetensors (F32, F16, BF16, I32 can)");
    nlohmann::ordered_json e = nlohmann::ordered_json::object();
    e["dtype"] = dt;
    e["shape"] = t.shape();
    e["data_offsets"] = {offset, offset + t.nbytes()};
    header[name] = std::move(e);
    offset += t.nbytes();
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(h.size()) >> (8 * i));
  AtomicWriter w(path);
  w.write(len, 8);
  w.write(h);
  for (const auto& [name, t] : tensors) w.write(t.raw(), t.nbytes());
  w.commit();
}

// ---------------------------------------------------------------------------------------------

SafetensorsFolder SafetensorsFolder::open(const std::string& dir_or_file) {
  SafetensorsFolder s;
  auto add = [&s](const std::string& file) {
    s.files_.push_back(SafetensorsFile::open(file));
    size_t idx = s.files_.size() - 1;
    for (const std::string& n : s.files_.back().names()) {
      auto [it, inserted] = s.where_.emplace(n, idx);
      if (!inserted)
        fail(file, "tensor '" + n + "' is also in " + s.files_[it->second].path());
    }
  };
  if (file_exists(dir_or_file)) {
    add(dir_or_file);
    return s;
  }
  std::string dir = dir_or_file;
  if (!dir.empty() && dir.back() != '/') dir += '/';
  const std::string index = dir + "model.safetensors.index.json";
  if (file_exists(index)) {
    json j = read_json_file(index);
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      throw Error("[safetensors] " + index + ": field 'weight_map': expected an object");
    std::vector<std::string> shards;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it.value().is_string())
        throw Error("[safetensors] " + index + ": field 'weight_map." + it.key() + "': expected string, got " + json_type_name(it.value()));
      std::string shard = it.value().get<std::string>();
      if (shard.find('/') != std::string::npos || shard == "..")
        throw Error("[safetensors] " + index + ": shard name '" + shard + "' must be a plain file name");
      if (std::find(shards.begin(), shards.end(), shard) == shards.end()) shards.push_back(shard);
    }
    std::sort(shards.begin(), shards.end());
    for (const std::string& sh : shards) add(dir + sh);
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it)
      if (!s.where_.count(it.key()))
        throw Error("[safetensors] " + index + ": tensor '" + it.key() + "' is not in " +
                    it.value().get<std::string>());
    return s;
  }
  if (file_exists(dir + "model.safetensors")) {
    add(dir + "model.safetensors");
    return s;
  }
  throw Error("[safetensors] " + dir_or_file +
              ": no model.safetensors or model.safetensors.index.json (and not a file)");
}

std::vector<std::string> SafetensorsFolder::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& [n, i] : where_) out.push_back(n);
  return out;
}

bool SafetensorsFolder::contains(const std::string& name) const { return where_.count(name) > 0; }

const SafetensorsEntry& SafetensorsFolder::entry(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end())
    throw Error("[safetensors] " + (files_.empty() ? std::string("(no files)") : files_[0].path()) +
                ": no tensor '" + name + "'");
  return files_[it->second].entry(name);
}

Tensor SafetensorsFolder::get(const std::string& name) const {
  entry(name);
  return files_[where_.at(name)].get(name);
}

std::vector<uint8_t> SafetensorsFolder::bytes(const std::string& name) const {
  entry(name);
  return files_[where_.at(name)].bytes(name);
}

void SafetensorsFolder::release(const std::string& name) const {
  entry(name);
  files_[where_.at(name)].release(name);
}

Tensor SafetensorsFolder::get_f32(const std::string& name) const {
  entry(name);
  return files_[where_.at(name)].get_f32(name);
}

const std::map<std::string, std::string>& SafetensorsFolder::metadata() const {
  static const std::map<std::string, std::string> empty;
  return files_.empty() ? empty : files_[0].metadata();
}

}  // namespace lorafit::io
