// GGUF v2/v3 (llama.cpp): read by mmap with every count, length and offset checked against the
// file size before it is used; written atomically. Layout (REFERENCE.md):
//   "GGUF" u32 version, u64 n_tensors, u64 n_kv, kv..., tensor infos..., pad to alignment, data.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

#include "lorafit/io.h"
#include "lorafit/quant.h"

namespace lorafit::io {

namespace {

constexpr int kMaxDims = 4;  // GGML_MAX_DIMS
constexpr int kMaxNesting = 16;

[[noreturn]] void fail(const std::string& path, const std::string& msg) {
  throw Error("[gguf] " + path + ": " + msg);
}

// Size in bytes of one scalar of a metadata type; 0 for STRING/ARRAY or an unknown type.
size_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::U8:
    case GgufType::I8:
    case GgufType::BOOL: return 1;
    case GgufType::U16:
    case GgufType::I16: return 2;
    case GgufType::U32:
    case GgufType::I32:
    case GgufType::F32: return 4;
    case GgufType::U64:
    case GgufType::I64:
    case GgufType::F64: return 8;
    default: return 0;
  }
}

bool is_integer(GgufType t) {
  switch (t) {
    case GgufType::U8:
    case GgufType::I8:
    case GgufType::U16:
    case GgufType::I16:
    case GgufType::U32:
    case GgufType::I32:
    case GgufType::U64:
    case GgufType::I64: return true;
    default: return false;
  }
}
bool is_signed(GgufType t) {
  return t == GgufType::I8 || t == GgufType::I16 || t == GgufType::I32 || t == GgufType::I64;
}
bool is_float(GgufType t) { return t == GgufType::F32 || t == GgufType::F64; }
bool valid_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::F64); }

// Decodes `size` little-endian bytes as the value of type t: the bits, sign-extended for
// signed types. Floats keep their raw bits.
uint64_t load_bits(const uint8_t* p, size_t size) {
  uint64_t v = 0;
  for (size_t i = 0; i < size; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

int64_t bits_as_int(GgufType t, uint64_t b) {
  switch (t) {
    case GgufType::I8: return static_cast<int8_t>(b);
    case GgufType::I16: return static_cast<int16_t>(b);
    case GgufType::I32: return static_cast<int32_t>(b);
    case GgufType::I64: return static_cast<int64_t>(b);
    default: return static_cast<int64_t>(b);  // unsigned; callers check the range
  }
}

double bits_as_float(GgufType t, uint64_t b) {
  if (t == GgufType::F32) return std::bit_cast<float>(static_cast<uint32_t>(b));
  return std::bit_cast<double>(b);
}

// ggml tensor types we know the block layout of (to validate sizes; as gguf-py 0.19's
// GGML_QUANT_SIZES, less Q8_1, which never appears in files), and which of them we read.
struct GgmlTypeInfo {
  uint32_t id;
  const char* name;
  int64_t block_elems;
  int64_t block_bytes;
};
constexpr GgmlTypeInfo kGgmlTypes[] = {
    {0, "F32", 1, 4},         {1, "F16", 1, 2},          {2, "Q4_0", 32, 18},
    {3, "Q4_1", 32, 20},      {6, "Q5_0", 32, 22},       {7, "Q5_1", 32, 24},
    {8, "Q8_0", 32, 34},      {10, "Q2_K", 256, 84},
    {11, "Q3_K", 256, 110},   {12, "Q4_K", 256, 144},    {13, "Q5_K", 256, 176},
    {14, "Q6_K", 256, 210},   {15, "Q8_K", 256, 292},    {16, "IQ2_XXS", 256, 66},
    {17, "IQ2_XS", 256, 74},  {18, "IQ3_XXS", 256, 98},  {19, "IQ1_S", 256, 50},
    {20, "IQ4_NL", 32, 18},   {21, "IQ3_S", 256, 110},   {22, "IQ2_S", 256, 82},
    {23, "IQ4_XS", 256, 136}, {24, "I8", 1, 1},          {25, "I16", 1, 2},
    {26, "I32", 1, 4},        {27, "I64", 1, 8},         {28, "F64", 1, 8},
    {29, "IQ1_M", 256, 56},   {30, "BF16", 1, 2},        {34, "TQ1_0", 256, 54},
    {35, "TQ2_0", 256, 66},   {39, "MXFP4", 32, 17},     {40, "NVFP4", 64, 36},
    {41, "Q1_0", 128, 18},
};

const GgmlTypeInfo* ggml_info(uint32_t t) {
  for (const auto& i : kGgmlTypes)
    if (i.id == t) return &i;
  return nullptr;
}

bool ggml_to_dtype(uint32_t t, DType* out) {
  switch (static_cast<GgmlType>(t)) {
    case GgmlType::F32: *out = DType::F32; return true;
    case GgmlType::F16: *out = DType::F16; return true;
    case GgmlType::BF16: *out = DType::BF16; return true;
    case GgmlType::Q8_0: *out = DType::Q8_0; return true;
    case GgmlType::Q4_0: *out = DType::Q4_0; return true;
    case GgmlType::Q4_1: *out = DType::Q4_1; return true;
    case GgmlType::Q4_K: *out = DType::Q4_K; return true;
    case GgmlType::Q5_K: *out = DType::Q5_K; return true;
    case GgmlType::Q6_K: *out = DType::Q6_K; return true;
    default: return false;
  }
}

bool dtype_to_ggml(DType t, uint32_t* out) {
  switch (t) {
    case DType::F32: *out = 0; return true;
    case DType::F16: *out = 1; return true;
    case DType::BF16: *out = 30; return true;
    case DType::Q8_0: *out = 8; return true;
    case DType::Q4_0: *out = 2; return true;
    case DType::Q4_1: *out = 3; return true;
    case DType::Q4_K: *out = 12; return true;
    case DType::Q5_K: *out = 13; return true;
    case DType::Q6_K: *out = 14; return true;
    default: return false;
  }
}

// Bounds-checked little-endian cursor over the mapping.
class Cursor {
 public:
  Cursor(const std::string& path, const uint8_t* p, uint64_t size) : path_(path), p_(p), size_(size) {}
  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }
  const uint8_t* here() const { return p_ + pos_; }

  void need(uint64_t n, const std::string& what) const {
    if (n > left())
      fail(path_, what + ": " + std::to_string(n) + " bytes at offset " + std::to_string(pos_) +
                      " run past the end of the file (" + std::to_string(size_) + " bytes)");
  }
  uint64_t uint(size_t n, const std::string& what) {
    need(n, what);
    uint64_t v = load_bits(p_ + pos_, n);
    pos_ += n;
    return v;
  }
  uint32_t u32(const std::string& what) { return static_cast<uint32_t>(uint(4, what)); }
  uint64_t u64(const std::string& what) { return uint(8, what); }
  // index >= 0: element `index` of the array `what` (the name is built only on failure; token
  // lists have 10^5 strings).
  std::string str(const std::string& what, int64_t index = -1) {
    auto name = [&] { return index < 0 ? what : what + "[" + std::to_string(index) + "]"; };
    if (left() < 8) need(8, name() + " (string length)");
    uint64_t n = load_bits(p_ + pos_, 8);
    pos_ += 8;
    if (n > left())
      fail(path_, name() + ": string length " + std::to_string(n) + " at offset " +
                      std::to_string(pos_ - 8) + " runs past the end of the file (" +
                      std::to_string(size_) + " bytes)");
    std::string s(reinterpret_cast<const char*>(p_ + pos_), n);
    pos_ += n;
    return s;
  }
  void skip(uint64_t n, const std::string& what) {
    need(n, what);
    pos_ += n;
  }

 private:
  const std::string& path_;
  const uint8_t* p_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

}  // namespace

const char* gguf_type_name(GgufType t) {
  switch (t) {
    case GgufType::U8: return "u8";
    case GgufType::I8: return "i8";
    case GgufType::U16: return "u16";
    case GgufType::I16: return "i16";
    case GgufType::U32: return "u32";
    case GgufType::I32: return "i32";
    case GgufType::F32: return "f32";
    case GgufType::BOOL: return "bool";
    case GgufType::STRING: return "string";
    case GgufType::ARRAY: return "array";
    case GgufType::U64: return "u64";
    case GgufType::I64: return "i64";
    case GgufType::F64: return "f64";
  }
  return "unknown";
}

std::string ggml_type_name(uint32_t type) {
  const GgmlTypeInfo* i = ggml_info(type);
  return i ? i->name : "type " + std::to_string(type);
}

// ---------------------------------------------------------------------------------------------
// GgufValue

// The only code that touches GgufValue's representation besides its own members.
struct GgufAccess {
  static GgufValue scalar(GgufType t, uint64_t bits) {
    GgufValue x;
    x.type_ = t;
    const size_t n = scalar_size(t);
    x.bits_ = n == 8 ? bits : bits & ((uint64_t{1} << (8 * n)) - 1);
    return x;
  }
  static GgufValue numeric_array(GgufType e, std::vector<uint8_t> raw, uint64_t n) {
    GgufValue x;
    x.type_ = GgufType::ARRAY;
    x.elem_ = e;
    x.count_ = n;
    x.raw_ = std::move(raw);
    return x;
  }
  static uint64_t bits(const GgufValue& v) { return v.bits_; }
  static const std::vector<uint8_t>& raw(const GgufValue& v) { return v.raw_; }
};

namespace {

[[noreturn]] void value_error(const GgufValue& v, const std::string& expected) {
  std::string got = gguf_type_name(v.type());
  if (v.is_array()) got += " of " + std::string(gguf_type_name(v.array_type()));
  throw Error("[gguf] value is " + got + ", expected " + expected);
}

}  // namespace

GgufValue GgufValue::u8(uint8_t v) { return GgufAccess::scalar(GgufType::U8, v); }
GgufValue GgufValue::i8(int8_t v) { return GgufAccess::scalar(GgufType::I8, static_cast<uint8_t>(v)); }
GgufValue GgufValue::u16(uint16_t v) { return GgufAccess::scalar(GgufType::U16, v); }
GgufValue GgufValue::i16(int16_t v) { return GgufAccess::scalar(GgufType::I16, static_cast<uint16_t>(v)); }
GgufValue GgufValue::u32(uint32_t v) { return GgufAccess::scalar(GgufType::U32, v); }
GgufValue GgufValue::i32(int32_t v) { return GgufAccess::scalar(GgufType::I32, static_cast<uint32_t>(v)); }
GgufValue GgufValue::f32(float v) { return GgufAccess::scalar(GgufType::F32, std::bit_cast<uint32_t>(v)); }
GgufValue GgufValue::boolean(bool v) { return GgufAccess::scalar(GgufType::BOOL, v ? 1 : 0); }
GgufValue GgufValue::u64(uint64_t v) { return GgufAccess::scalar(GgufType::U64, v); }
GgufValue GgufValue::i64(int64_t v) { return GgufAccess::scalar(GgufType::I64, static_cast<uint64_t>(v)); }
GgufValue GgufValue::f64(double v) { return GgufAccess::scalar(GgufType::F64, std::bit_cast<uint64_t>(v)); }

GgufValue GgufValue::string(std::string v) {
  GgufValue x;
  x.type_ = GgufType::STRING;
  x.str_ = std::move(v);
  return x;
}

GgufValue GgufValue::string_array(std::vector<std::string> v) {
  GgufValue x;
  x.type_ = GgufType::ARRAY;
  x.elem_ = GgufType::STRING;
  x.count_ = v.size();
  x.strs_ = std::move(v);
  return x;
}

GgufValue GgufValue::int_array(GgufType elem, const std::vector<int64_t>& v) {
  if (!is_integer(elem) && elem != GgufType::BOOL)
    throw Error(std::string("[gguf] int_array: element type ") + gguf_type_name(elem) +
                " is not an integer or bool type");
  const size_t es = scalar_size(elem);
  std::vector<uint8_t> raw(es * v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const int64_t a = v[i];
    bool ok = true;
    switch (elem) {
      case GgufType::U8: ok = a >= 0 && a <= 0xFF; break;
      case GgufType::I8: ok = a >= -128 && a <= 127; break;
      case GgufType::U16: ok = a >= 0 && a <= 0xFFFF; break;
      case GgufType::I16: ok = a >= -32768 && a <= 32767; break;
      case GgufType::U32: ok = a >= 0 && a <= 0xFFFFFFFFll; break;
      case GgufType::I32:
        ok = a >= std::numeric_limits<int32_t>::min() && a <= std::numeric_limits<int32_t>::max();
        break;
      case GgufType::U64: ok = a >= 0; break;
      case GgufType::BOOL: ok = a == 0 || a == 1; break;
      default: break;
    }
    if (!ok)
      throw Error("[gguf] int_array: value " + std::to_string(a) + " at index " +
                  std::to_string(i) + " does not fit in " + gguf_type_name(elem));
    for (size_t k = 0; k < es; ++k)
      raw[i * es + k] = static_cast<uint8_t>(static_cast<uint64_t>(a) >> (8 * k));
  }
  return GgufAccess::numeric_array(elem, std::move(raw), v.size());
}

GgufValue GgufValue::float_array(GgufType elem, const std::vector<double>& v) {
  if (!is_float(elem))
    throw Error(std::string("[gguf] float_array: element type ") + gguf_type_name(elem) +
                " is not f32 or f64");
  const size_t es = scalar_size(elem);
  std::vector<uint8_t> raw(es * v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    uint64_t b = elem == GgufType::F32 ? std::bit_cast<uint32_t>(static_cast<float>(v[i]))
                                        : std::bit_cast<uint64_t>(v[i]);
    for (size_t k = 0; k < es; ++k) raw[i * es + k] = static_cast<uint8_t>(b >> (8 * k));
  }
  return GgufAccess::numeric_array(elem, std::move(raw), v.size());
}

GgufValue GgufValue::array_of_arrays(std::vector<GgufValue> items) {
  for (size_t i = 0; i < items.size(); ++i)
    if (!items[i].is_array())
      throw Error("[gguf] array_of_arrays: item " + std::to_string(i) + " is " +
                  gguf_type_name(items[i].type()) + ", expected array");
  GgufValue x;
  x.type_ = GgufType::ARRAY;
  x.elem_ = GgufType::ARRAY;
  x.count_ = items.size();
  x.items_ = std::move(items);
  return x;
}

GgufType GgufValue::array_type() const {
  if (!is_array()) value_error(*this, "array");
  return elem_;
}

int64_t GgufValue::as_int() const {
  if (!is_integer(type_)) value_error(*this, "integer");
  if (type_ == GgufType::U64 && bits_ > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    throw Error("[gguf] value u64 " + std::to_string(bits_) + " does not fit in int64");
  return bits_as_int(type_, bits_);
}

uint64_t GgufValue::as_uint() const {
  if (!is_integer(type_)) value_error(*this, "integer");
  if (is_signed(type_) && bits_as_int(type_, bits_) < 0)
    throw Error("[gguf] value " + std::to_string(bits_as_int(type_, bits_)) +
                " is negative, expected >= 0");
  return type_ == GgufType::U64 ? bits_ : static_cast<uint64_t>(bits_as_int(type_, bits_));
}

double GgufValue::as_float() const {
  if (is_float(type_)) return bits_as_float(type_, bits_);
  if (!is_integer(type_)) value_error(*this, "number");
  if (type_ == GgufType::U64) return static_cast<double>(bits_);
  return static_cast<double>(bits_as_int(type_, bits_));
}

bool GgufValue::as_bool() const {
  if (type_ != GgufType::BOOL) value_error(*this, "bool");
  return bits_ != 0;
}

const std::string& GgufValue::as_string() const {
  if (type_ != GgufType::STRING) value_error(*this, "string");
  return str_;
}

size_t GgufValue::size() const {
  if (!is_array()) value_error(*this, "array");
  return count_;
}

std::vector<int64_t> GgufValue::as_int_array() const {
  if (!is_array() || !(is_integer(elem_) || elem_ == GgufType::BOOL))
    value_error(*this, "array of integers");
  const size_t es = scalar_size(elem_);
  std::vector<int64_t> out(count_);
  for (size_t i = 0; i < count_; ++i) {
    uint64_t b = load_bits(raw_.data() + i * es, es);
    if (elem_ == GgufType::U64 && b > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      throw Error("[gguf] array element " + std::to_string(i) + " (u64 " + std::to_string(b) +
                  ") does not fit in int64");
    out[i] = bits_as_int(elem_, b);
  }
  return out;
}

std::vector<double> GgufValue::as_float_array() const {
  if (!is_array() || !(is_integer(elem_) || is_float(elem_))) value_error(*this, "array of numbers");
  const size_t es = scalar_size(elem_);
  std::vector<double> out(count_);
  for (size_t i = 0; i < count_; ++i) {
    uint64_t b = load_bits(raw_.data() + i * es, es);
    if (is_float(elem_)) out[i] = bits_as_float(elem_, b);
    else if (elem_ == GgufType::U64) out[i] = static_cast<double>(b);
    else out[i] = static_cast<double>(bits_as_int(elem_, b));
  }
  return out;
}

const std::vector<std::string>& GgufValue::as_string_array() const {
  if (!is_array() || elem_ != GgufType::STRING) value_error(*this, "array of strings");
  return strs_;
}

const std::vector<GgufValue>& GgufValue::as_array_array() const {
  if (!is_array() || elem_ != GgufType::ARRAY) value_error(*this, "array of arrays");
  return items_;
}

GgufValue GgufValue::at(size_t i) const {
  if (i >= size())
    throw Error("[gguf] array index " + std::to_string(i) + " out of range (size " +
                std::to_string(count_) + ")");
  if (elem_ == GgufType::STRING) return string(strs_[i]);
  if (elem_ == GgufType::ARRAY) return items_[i];
  const size_t es = scalar_size(elem_);
  return GgufAccess::scalar(elem_, load_bits(raw_.data() + i * es, es));
}

std::string GgufValue::str(size_t max_items) const {
  std::ostringstream ss;
  if (is_array()) {
    ss << "[" << gguf_type_name(elem_) << " x " << count_;
    for (size_t i = 0; i < count_ && i < max_items; ++i)
      ss << (i == 0 ? ": " : ", ") << at(i).str(max_items);
    if (count_ > max_items) ss << ", ...";
    ss << "]";
  } else if (type_ == GgufType::STRING) {
    ss << '"' << (str_.size() > 60 ? str_.substr(0, 57) + "..." : str_) << '"';
  } else if (type_ == GgufType::BOOL) {
    ss << (bits_ ? "true" : "false");
  } else if (is_float(type_)) {
    ss << bits_as_float(type_, bits_);
  } else if (type_ == GgufType::U64) {
    ss << bits_;
  } else {
    ss << bits_as_int(type_, bits_);
  }
  return ss.str();
}

bool GgufValue::operator==(const GgufValue& o) const {
  return type_ == o.type_ && elem_ == o.elem_ && bits_ == o.bits_ && str_ == o.str_ &&
         raw_ == o.raw_ && strs_ == o.strs_ && items_ == o.items_ && count_ == o.count_;
}

// ---------------------------------------------------------------------------------------------
// Reading

namespace {

struct ValueReader {
  const std::string& path;
  Cursor& c;

  GgufValue value(uint32_t type, const std::string& what, int depth) {
    if (!valid_type(type))
      fail(path, what + ": unknown value type " + std::to_string(type) + " (expected 0..12)");
    const GgufType t = static_cast<GgufType>(type);
    if (t == GgufType::STRING) return GgufValue::string(c.str(what));
    if (t != GgufType::ARRAY) return GgufAccess::scalar(t, c.uint(scalar_size(t), what));
    if (depth >= kMaxNesting)
      fail(path, what + ": arrays nested deeper than " + std::to_string(kMaxNesting));
    const uint32_t et = c.u32(what + " (array element type)");
    if (!valid_type(et))
      fail(path, what + ": unknown array element type " + std::to_string(et) + " (expected 0..12)");
    const uint64_t start = c.pos();
    const uint64_t n = c.u64(what + " (array length)");
    const GgufType e = static_cast<GgufType>(et);
    // Each element takes at least this many bytes: reject absurd counts before allocating.
    const uint64_t min_size = e == GgufType::STRING ? 8 : e == GgufType::ARRAY ? 12 : scalar_size(e);
    if (n > c.left() / min_size)
      fail(path, what + ": array of " + std::to_string(n) + " " + gguf_type_name(e) +
                     " at offset " + std::to_string(start) + " runs past the end of the file (" +
                     std::to_string(c.pos() + c.left()) + " bytes)");
    if (e == GgufType::STRING) {
      std::vector<std::string> v;
      v.reserve(n);
      for (uint64_t i = 0; i < n; ++i) v.push_back(c.str(what, static_cast<int64_t>(i)));
      return GgufValue::string_array(std::move(v));
    }
    if (e == GgufType::ARRAY) {
      std::vector<GgufValue> items;
      items.reserve(n);
      for (uint64_t i = 0; i < n; ++i)
        items.push_back(value(static_cast<uint32_t>(GgufType::ARRAY),
                              what + "[" + std::to_string(i) + "]", depth + 1));
      return GgufValue::array_of_arrays(std::move(items));
    }
    // Numbers and bools: keep the little-endian bytes as they are.
    std::vector<uint8_t> raw(c.here(), c.here() + n * min_size);
    c.skip(n * min_size, what);
    return GgufAccess::numeric_array(e, std::move(raw), n);
  }
};

std::string printable_magic(const uint8_t* p) {
  std::string s;
  for (int i = 0; i < 4; ++i) {
    if (p[i] >= 0x20 && p[i] < 0x7F) {
      s += static_cast<char>(p[i]);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", p[i]);
      s += buf;
    }
  }
  return s;
}

}  // namespace

GgufFile GgufFile::open(const std::string& path) {
  GgufFile f;
  f.path_ = path;
  f.map_ = MappedFile::open(path);
  const uint8_t* base = f.map_->data();
  const uint64_t size = f.map_->size();
  if (size < 24)
    fail(path, "file is " + std::to_string(size) + " bytes, too short for a GGUF header (24 bytes)");
  if (std::memcmp(base, "GGUF", 4) != 0)
    fail(path, "bad magic '" + printable_magic(base) + "', expected 'GGUF': not a GGUF file");
  Cursor c(path, base, size);
  c.skip(4, "magic");
  f.version_ = c.u32("version");
  if (f.version_ != 2 && f.version_ != 3) {
    std::string hint = f.version_ == 1 ? " (GGUF v1 is obsolete; convert the file again)"
                       : (f.version_ & 0xFFFF) == 0 ? " (a big-endian file?)" : "";
    fail(path, "version " + std::to_string(f.version_) +
                   " is not supported (only versions 2 and 3 are)" + hint);
  }
  const uint64_t n_tensors = c.u64("tensor count");
  const uint64_t n_kv = c.u64("metadata count");
  // Smallest possible tensor info: name length 8 + n_dims 4 + one ne 8 + type 4 + offset 8.
  if (n_tensors > c.left() / 32)
    fail(path, "tensor count " + std::to_string(n_tensors) + " is absurd for a file of " +
                   std::to_string(size) + " bytes");
  // Smallest KV: key length 8 + type 4 + one byte.
  if (n_kv > c.left() / 13)
    fail(path, "metadata count " + std::to_string(n_kv) + " is absurd for a file of " +
                   std::to_string(size) + " bytes");

  ValueReader vr{path, c};
  f.kv_.reserve(n_kv);
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = c.str("metadata key #" + std::to_string(i));
    const std::string what = "key '" + key + "'";
    uint32_t type = c.u32(what + " (type)");
    GgufValue v = vr.value(type, what, 0);
    if (!f.kv_index_.emplace(key, f.kv_.size()).second) fail(path, what + " appears twice");
    f.kv_.emplace_back(std::move(key), std::move(v));
  }
  if (const GgufValue* a = f.find("general.alignment")) {
    if (a->type() != GgufType::U32)
      fail(path, std::string("key 'general.alignment': value is ") + gguf_type_name(a->type()) +
                     ", expected u32");
    const uint64_t al = a->as_uint();
    if (al == 0 || (al & (al - 1)) != 0)
      fail(path, "key 'general.alignment': " + std::to_string(al) + " is not a power of two");
    f.alignment_ = al;
  }

  f.tensors_.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    t.name = c.str("tensor #" + std::to_string(i) + " name");
    const std::string what = "tensor '" + t.name + "'";
    const uint32_t n_dims = c.u32(what + " (n_dims)");
    if (n_dims < 1 || n_dims > kMaxDims)
      fail(path, what + ": n_dims " + std::to_string(n_dims) + " is out of range (1.." +
                     std::to_string(kMaxDims) + ")");
    uint64_t numel = 1;
    bool overflow = false, has_zero = false;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t ne = c.u64(what + " (ne)");
      if (ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        fail(path, what + ": ne[" + std::to_string(d) + "] = " + std::to_string(static_cast<int64_t>(ne)) +
                       " is negative");
      t.ne.push_back(static_cast<int64_t>(ne));
      if (ne == 0) has_zero = true;
      else if (numel > std::numeric_limits<uint64_t>::max() / ne) overflow = true;
      else numel *= ne;
    }
    t.shape.assign(t.ne.rbegin(), t.ne.rend());
    t.ggml_type = c.u32(what + " (type)");
    t.offset = c.u64(what + " (offset)");
    const GgmlTypeInfo* ti = ggml_info(t.ggml_type);
    if (!ti) fail(path, what + ": unknown ggml type " + std::to_string(t.ggml_type));
    if (t.ne[0] % ti->block_elems != 0)
      fail(path, what + ": ne[0] = " + std::to_string(t.ne[0]) + " is not a multiple of the " +
                     ti->name + " block size " + std::to_string(ti->block_elems));
    if (has_zero) numel = 0, overflow = false;
    const uint64_t blocks = numel / static_cast<uint64_t>(ti->block_elems);
    if (overflow || blocks > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(ti->block_bytes))
      fail(path, what + ": shape " + tensor::shape_str(t.shape) + " is absurdly large");
    t.nbytes = blocks * static_cast<uint64_t>(ti->block_bytes);
    t.has_dtype = ggml_to_dtype(t.ggml_type, &t.dtype);
    if (!f.tensor_index_.emplace(t.name, f.tensors_.size()).second)
      fail(path, what + " appears twice");
    f.tensors_.push_back(std::move(t));
  }

  const uint64_t pad = (f.alignment_ - c.pos() % f.alignment_) % f.alignment_;
  f.data_offset_ = c.pos() + pad;
  const uint64_t data_size = f.data_offset_ <= size ? size - f.data_offset_ : 0;
  std::vector<const GgufTensorInfo*> order;
  for (const GgufTensorInfo& t : f.tensors_) {
    const std::string what = "tensor '" + t.name + "'";
    if (t.offset % f.alignment_ != 0)
      fail(path, what + ": offset " + std::to_string(t.offset) + " is not a multiple of the alignment " +
                     std::to_string(f.alignment_));
    if (t.offset > data_size || t.nbytes > data_size - t.offset) {
      // Report absolute file offsets, saturating instead of wrapping.
      const uint64_t b = t.offset > size - f.data_offset_ ? t.offset : f.data_offset_ + t.offset;
      const uint64_t e = t.nbytes > std::numeric_limits<uint64_t>::max() - b ? std::numeric_limits<uint64_t>::max() : b + t.nbytes;
      fail(path, what + ": data [" + std::to_string(b) + ", " + std::to_string(e) +
                     ") overruns the file (" + std::to_string(size) + " bytes)");
    }
    order.push_back(&t);
  }
  std::stable_sort(order.begin(), order.end(), [](const GgufTensorInfo* a, const GgufTensorInfo* b) {
    return a->offset < b->offset;
  });
  const GgufTensorInfo* prev = nullptr;
  for (const GgufTensorInfo* t : order) {
    if (t->nbytes == 0) continue;
    if (prev && t->offset < prev->offset + prev->nbytes)
      fail(path, "tensor '" + t->name + "' data at offset " + std::to_string(t->offset) +
                     " overlaps tensor '" + prev->name + "' [" + std::to_string(prev->offset) + ", " +
                     std::to_string(prev->offset + prev->nbytes) + ")");
    prev = t;
  }
  return f;
}

bool GgufFile::has(const std::string& key) const { return kv_index_.count(key) > 0; }

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const GgufValue& GgufFile::value(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) fail(path_, "key '" + key + "' not found");
  return *v;
}

namespace {

// Runs a GgufValue accessor, re-throwing its error with the file and the key.
template <typename F>
auto with_key(const std::string& path, const std::string& key, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error& e) {
    std::string m = e.what();
    const std::string prefix = "[gguf] ";
    if (m.rfind(prefix, 0) == 0) m = m.substr(prefix.size());
    fail(path, "key '" + key + "': " + m);
  }
}

}  // namespace

int64_t GgufFile::get_int(const std::string& key) const {
  return with_key(path_, key, [&] { return value(key).as_int(); });
}
int64_t GgufFile::get_int(const std::string& key, int64_t dflt) const {
  return has(key) ? get_int(key) : dflt;
}
double GgufFile::get_float(const std::string& key) const {
  return with_key(path_, key, [&] { return value(key).as_float(); });
}
double GgufFile::get_float(const std::string& key, double dflt) const {
  return has(key) ? get_float(key) : dflt;
}
bool GgufFile::get_bool(const std::string& key) const {
  return with_key(path_, key, [&] { return value(key).as_bool(); });
}
bool GgufFile::get_bool(const std::string& key, bool dflt) const {
  return has(key) ? get_bool(key) : dflt;
}
std::string GgufFile::get_string(const std::string& key) const {
  return with_key(path_, key, [&] { return value(key).as_string(); });
}
std::string GgufFile::get_string(const std::string& key, const std::string& dflt) const {
  return has(key) ? get_string(key) : dflt;
}
const std::vector<std::string>& GgufFile::get_string_array(const std::string& key) const {
  return with_key(path_, key, [&]() -> const std::vector<std::string>& { return value(key).as_string_array(); });
}
std::vector<int64_t> GgufFile::get_int_array(const std::string& key) const {
  return with_key(path_, key, [&] { return value(key).as_int_array(); });
}
std::vector<double> GgufFile::get_float_array(const std::string& key) const {
  return with_key(path_, key, [&] { return value(key).as_float_array(); });
}

bool GgufFile::has_tensor(const std::string& name) const { return tensor_index_.count(name) > 0; }

const GgufTensorInfo& GgufFile::tensor_info(const std::string& name) const {
  auto it = tensor_index_.find(name);
  if (it == tensor_index_.end()) fail(path_, "no tensor '" + name + "'");
  return tensors_[it->second];
}

void GgufFile::release(const std::string& name) const {
  const GgufTensorInfo& t = tensor_info(name);
  map_->release(map_->data() + data_offset_ + t.offset, t.nbytes);
}

Tensor GgufFile::tensor(const std::string& name) const {
  const GgufTensorInfo& t = tensor_info(name);
  if (!t.has_dtype)
    fail(path_, "tensor '" + name + "': type " + ggml_type_name(t.ggml_type) +
                    " is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K are)");
  const uint8_t* p = map_->data() + data_offset_ + t.offset;
  // Views need the alignment of their element (4 for F32, 2 for the f16 fields of the others);
  // the data section is aligned to general.alignment, so only alignments of 1 or 2 reach the copy.
  const uintptr_t need = t.dtype == DType::F32 ? 4 : 2;
  if (t.nbytes == 0 || reinterpret_cast<uintptr_t>(p) % need == 0)
    return Tensor::wrap(const_cast<uint8_t*>(p), t.shape, t.dtype, std::const_pointer_cast<MappedFile>(map_));
  Tensor out = Tensor::empty(t.shape, t.dtype);
  std::memcpy(out.raw(), p, t.nbytes);
  return out;
}

Tensor GgufFile::tensor_f32(const std::string& name) const {
  Tensor x = tensor(name);  // throws for the types without a DType
  return x.dtype() == DType::F32 ? x : tensor::dequantize(x);
}

// ---------------------------------------------------------------------------------------------
// Writing

namespace {

class GgufOut {
 public:
  explicit GgufOut(AtomicWriter& w) : w_(w) {}
  void u32(uint32_t v) { le(v, 4); }
  void u64(uint64_t v) { le(v, 8); }
  void str(const std::string& s) {
    u64(s.size());
    w_.write(s);
  }
  void le(uint64_t v, size_t n) {
    uint8_t b[8];
    for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(v >> (8 * i));
    w_.write(b, n);
  }
  void value(const GgufValue& v) {
    const GgufType t = v.type();
    if (t == GgufType::STRING) return str(v.as_string());
    if (t != GgufType::ARRAY) return le(GgufAccess::bits(v), scalar_size(t));
    const GgufType e = v.array_type();
    u32(static_cast<uint32_t>(e));
    u64(v.size());
    if (e == GgufType::STRING) {
      for (const std::string& s : v.as_string_array()) str(s);
    } else if (e == GgufType::ARRAY) {
      // A nested element is an ARRAY value without its own type tag: elem type, count, elems.
      for (const GgufValue& item : v.as_array_array()) value(item);
    } else {
      const auto& raw = GgufAccess::raw(v);
      w_.write(raw.data(), raw.size());
    }
  }

 private:
  AtomicWriter& w_;
};

}  // namespace

void write_gguf(const std::string& path,
                const std::vector<std::pair<std::string, GgufValue>>& metadata,
                const std::vector<std::pair<std::string, Tensor>>& tensors) {
  uint64_t alignment = 32;
  {
    std::map<std::string, int> seen;
    for (const auto& [k, v] : metadata) {
      if (seen[k]++) fail(path, "key '" + k + "' appears twice");
      if (k == "general.alignment") {
        if (v.type() != GgufType::U32)
          fail(path, std::string("key 'general.alignment': value is ") + gguf_type_name(v.type()) + ", expected u32");
        alignment = v.as_uint();
        if (alignment == 0 || (alignment & (alignment - 1)) != 0)
          fail(path, "key 'general.alignment': " + std::to_string(alignment) + " is not a power of two");
      }
    }
  }
  std::vector<uint32_t> types(tensors.size());
  std::vector<uint64_t> offsets(tensors.size());
  {
    std::map<std::string, int> seen;
    uint64_t off = 0;
    for (size_t i = 0; i < tensors.size(); ++i) {
      const auto& [name, t] = tensors[i];
      if (seen[name]++) fail(path, "tensor '" + name + "' appears twice");
      if (!t.defined()) fail(path, "tensor '" + name + "' is undefined");
      if (!dtype_to_ggml(t.dtype(), &types[i]))
        fail(path, "tensor '" + name + "': dtype " + tensor::dtype_name(t.dtype()) +
                       " cannot be written to GGUF (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K "
                       "can)");
      if (t.ndim() > kMaxDims)
        fail(path, "tensor '" + name + "': " + std::to_string(t.ndim()) + " dimensions, GGUF allows " +
                       std::to_string(kMaxDims));
      offsets[i] = off;
      off += (t.nbytes() + alignment - 1) / alignment * alignment;
    }
  }
  AtomicWriter w(path);
  GgufOut out(w);
  w.write("GGUF", 4);
  out.u32(3);
  out.u64(tensors.size());
  out.u64(metadata.size());
  for (const auto& [k, v] : metadata) {
    out.str(k);
    out.u32(static_cast<uint32_t>(v.type()));
    out.value(v);
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, t] = tensors[i];
    out.str(name);
    const Shape& s = t.shape();
    out.u32(s.empty() ? 1 : static_cast<uint32_t>(s.size()));
    if (s.empty()) out.u64(1);
    for (auto it = s.rbegin(); it != s.rend(); ++it) out.u64(static_cast<uint64_t>(*it));
    out.u32(types[i]);
    out.u64(offsets[i]);
  }
  w.write_zeros((alignment - w.written() % alignment) % alignment);
  for (const auto& [name, t] : tensors) {
    w.write(t.raw(), t.nbytes());
    w.write_zeros((alignment - t.nbytes() % alignment) % alignment);
  }
  w.commit();
}

}  // namespace lorafit::io
