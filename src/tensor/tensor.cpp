#include "lorafit/tensor.h"
#include "lorafit/quant.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <sstream>

namespace lorafit::tensor {

namespace {
constexpr size_t kAlign = 64;

struct DTypeInfo {
  const char* name;
  int64_t block_elems;
  int64_t block_bytes;
};

// Block layouts follow ggml (Q8_0, Q4_0, Q4_1: 32 values; Q4_K, Q5_K, Q6_K: 256 values). NF4 (bitsandbytes 4-bit) keeps its
// statistics beside the codes (quant.h, Quant4) and its blocks of 64 run across rows, so a block
// here is only one byte of two codes: any even row length can be viewed row by row.
DTypeInfo info(DType t) {
  switch (t) {
    case DType::F32: return {"F32", 1, 4};
    case DType::F16: return {"F16", 1, 2};
    case DType::BF16: return {"BF16", 1, 2};
    case DType::I32: return {"I32", 1, 4};
    case DType::Q8_0: return {"Q8_0", 32, 34};
    case DType::Q4_0: return {"Q4_0", 32, 18};
    case DType::Q4_1: return {"Q4_1", 32, 20};
    case DType::NF4: return {"NF4", 2, 1};
    case DType::Q4_K: return {"Q4_K", 256, 144};
    case DType::Q5_K: return {"Q5_K", 256, 176};
    case DType::Q6_K: return {"Q6_K", 256, 210};
  }
  throw Error("[dtype] unknown dtype value " + std::to_string(static_cast<int>(t)));
}

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
}  // namespace

const char* dtype_name(DType t) { return info(t).name; }
int64_t dtype_block_elems(DType t) { return info(t).block_elems; }
int64_t dtype_block_bytes(DType t) { return info(t).block_bytes; }
bool dtype_is_quantized(DType t) { return info(t).block_elems > 1; }

size_t dtype_nbytes(DType t, int64_t n) {
  DTypeInfo i = info(t);
  LORAFIT_CHECK(n >= 0 && n % i.block_elems == 0, "dtype",
                std::to_string(n) + " elements of " + i.name +
                    " is not a whole number of blocks of " + std::to_string(i.block_elems));
  return static_cast<size_t>(n / i.block_elems) * static_cast<size_t>(i.block_bytes);
}

std::string shape_str(const Shape& s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << "]";
  return o.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

// ---- fp16 / bf16 ------------------------------------------------------------------------------

uint16_t f32_to_f16(float f) {
  uint32_t x = bits_of(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t exp = (x >> 23) & 0xffu;
  uint32_t mant = x & 0x7fffffu;
  if (exp == 0xff) return static_cast<uint16_t>(sign | 0x7c00u | (mant ? 0x200u | (mant >> 13) : 0));
  int32_t e = static_cast<int32_t>(exp) - 127 + 15;
  if (e >= 0x1f) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (e <= 0) {
    // Subnormal in fp16 (or zero): shift the mantissa with the implicit bit, round to nearest even.
    if (e < -10) return static_cast<uint16_t>(sign);
    mant |= 0x800000u;
    uint32_t shift = static_cast<uint32_t>(14 - e);
    uint32_t h = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  uint32_t h = (static_cast<uint32_t>(e) << 10) | (mant >> 13);
  uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // may carry into the exponent: correct
  return static_cast<uint16_t>(sign | h);
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    if (mant == 0) return float_of(sign);
    // subnormal: value = mant * 2^-24
    float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  if (exp == 0x1f) return float_of(sign | 0x7f800000u | (mant << 13));
  return float_of(sign | ((exp - 15 + 127) << 23) | (mant << 13));
}

uint16_t f32_to_bf16(float f) {
  uint32_t x = bits_of(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  uint32_t lsb = (x >> 16) & 1u;
  x += 0x7fffu + lsb;
  return static_cast<uint16_t>(x >> 16);
}

float bf16_to_f32(uint16_t h) { return float_of(static_cast<uint32_t>(h) << 16); }

void f32_to_f16_n(const float* x, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = f32_to_f16(x[i]);
}
void f16_to_f32_n(const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = f16_to_f32(x[i]);
}
void f32_to_bf16_n(const float* x, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = f32_to_bf16(x[i]);
}
void bf16_to_f32_n(const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = bf16_to_f32(x[i]);
}

// ---- storage ----------------------------------------------------------------------------------

void* aligned_alloc_bytes(size_t bytes) {
  size_t rounded = (std::max<size_t>(bytes, 1) + kAlign - 1) / kAlign * kAlign;
  void* p = std::aligned_alloc(kAlign, rounded);
  if (!p) throw Error("[alloc] out of memory allocating " + std::to_string(bytes) + " bytes");
  return p;
}

void aligned_free(void* p) { std::free(p); }

Storage::~Storage() {
  if (owned) aligned_free(data);
}

namespace {
std::shared_ptr<Storage> new_storage(size_t bytes) {
  auto s = std::make_shared<Storage>();
  s->data = aligned_alloc_bytes(bytes);
  s->bytes = bytes;
  s->owned = true;
  return s;
}

void check_shape(const Shape& shape, const char* op) {
  for (int64_t d : shape)
    LORAFIT_CHECK(d >= 0, op, "negative dimension in shape " + shape_str(shape));
}
}  // namespace

// ---- Tensor -----------------------------------------------------------------------------------

Tensor Tensor::empty(const Shape& shape, DType dtype) {
  check_shape(shape, "Tensor::empty");
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.storage_ = new_storage(t.nbytes());
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype) {
  Tensor t = empty(shape, dtype);
  std::memset(t.raw(), 0, t.nbytes());
  return t;
}

Tensor Tensor::full(const Shape& shape, float value) {
  Tensor t = empty(shape, DType::F32);
  t.fill(value);
  return t;
}

Tensor Tensor::from_vector(const Shape& shape, const std::vector<float>& values) {
  LORAFIT_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "Tensor::from_vector",
                std::to_string(values.size()) + " values do not fill shape " + shape_str(shape));
  Tensor t = empty(shape, DType::F32);
  if (!values.empty()) std::memcpy(t.raw(), values.data(), values.size() * sizeof(float));
  return t;
}

Tensor Tensor::from_ints(const Shape& shape, const std::vector<int32_t>& values) {
  LORAFIT_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "Tensor::from_ints",
                std::to_string(values.size()) + " values do not fill shape " + shape_str(shape));
  Tensor t = empty(shape, DType::I32);
  if (!values.empty()) std::memcpy(t.raw(), values.data(), values.size() * sizeof(int32_t));
  return t;
}

const std::shared_ptr<void>& Tensor::keepalive() const {
  static const std::shared_ptr<void> none;
  return storage_ ? storage_->keepalive : none;
}

Tensor Tensor::wrap(void* data, const Shape& shape, DType dtype, std::shared_ptr<void> keepalive) {
  check_shape(shape, "Tensor::wrap");
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  auto s = std::make_shared<Storage>();
  s->data = data;
  s->bytes = t.nbytes();
  s->owned = false;
  s->keepalive = std::move(keepalive);
  t.storage_ = std::move(s);
  return t;
}

int64_t Tensor::dim(int i) const {
  int n = ndim();
  int j = i < 0 ? i + n : i;
  LORAFIT_CHECK(j >= 0 && j < n, "Tensor::dim",
                "dimension " + std::to_string(i) + " out of range for " + str());
  return shape_[j];
}

std::string Tensor::str() const { return std::string(dtype_name(dtype_)) + shape_str(shape_); }

void* Tensor::raw() const {
  LORAFIT_CHECK(defined(), "Tensor", "access to an undefined tensor");
  return static_cast<char*>(storage_->data) + offset_;
}

float* Tensor::f32() const {
  LORAFIT_CHECK(dtype_ == DType::F32, "Tensor::f32", "tensor is " + str() + ", expected F32");
  return static_cast<float*>(raw());
}

int32_t* Tensor::i32() const {
  LORAFIT_CHECK(dtype_ == DType::I32, "Tensor::i32", "tensor is " + str() + ", expected I32");
  return static_cast<int32_t*>(raw());
}

uint16_t* Tensor::u16() const {
  LORAFIT_CHECK(dtype_ == DType::F16 || dtype_ == DType::BF16, "Tensor::u16",
                "tensor is " + str() + ", expected F16 or BF16");
  return static_cast<uint16_t*>(raw());
}

Tensor Tensor::view(const Shape& shape) const {
  Shape s = shape;
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      LORAFIT_CHECK(infer < 0, "Tensor::view", "more than one -1 in " + shape_str(shape));
      infer = static_cast<int>(i);
    } else {
      LORAFIT_CHECK(s[i] >= 0, "Tensor::view", "negative dimension in " + shape_str(shape));
      known *= s[i];
    }
  }
  if (infer >= 0) {
    LORAFIT_CHECK(known > 0 && numel() % known == 0, "Tensor::view",
                  "cannot view " + str() + " as " + shape_str(shape));
    s[infer] = numel() / known;
  }
  LORAFIT_CHECK(shape_numel(s) == numel(), "Tensor::view",
                "cannot view " + str() + " as " + shape_str(shape) + ": element counts differ");
  if (dtype_is_quantized(dtype_))
    LORAFIT_CHECK(
        !s.empty() && s.back() % dtype_block_elems(dtype_) == 0, "Tensor::view",
        "last dimension of " + shape_str(s) + " must hold whole " + dtype_name(dtype_) + " blocks");
  Tensor t = *this;
  t.shape_ = s;
  return t;
}

Tensor Tensor::rows(int64_t begin, int64_t end) const {
  LORAFIT_CHECK(ndim() >= 1, "Tensor::rows", "tensor " + str() + " has no rows");
  LORAFIT_CHECK(0 <= begin && begin <= end && end <= shape_[0], "Tensor::rows",
                "range [" + std::to_string(begin) + ", " + std::to_string(end) +
                    ") out of bounds for " + str());
  Shape row_shape(shape_.begin() + 1, shape_.end());
  size_t row_bytes = dtype_nbytes(dtype_, shape_numel(row_shape));
  Tensor t = *this;
  t.offset_ = offset_ + static_cast<size_t>(begin) * row_bytes;
  t.shape_[0] = end - begin;
  return t;
}

Tensor Tensor::row(int64_t i) const {
  Tensor r = rows(i, i + 1);
  Shape s(shape_.begin() + 1, shape_.end());
  r.shape_ = s;
  return r;
}

Tensor Tensor::clone() const {
  // A 4-bit weight is immutable and its statistics live in the keepalive: the clone shares it.
  if (dtype_ == DType::NF4) return *this;
  Tensor t = empty(shape_, dtype_);
  std::memcpy(t.raw(), raw(), nbytes());
  return t;
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_) return clone();
  LORAFIT_CHECK(!dtype_is_quantized(dtype), "Tensor::to",
                std::string("conversion to ") + dtype_name(dtype) + " is done by the quantizer");
  if (dtype_is_quantized(dtype_)) {
    Tensor f = dequantize(*this);  // quant.h; F16/BF16 targets go through F32
    return dtype == DType::F32 ? f : f.to(dtype);
  }
  LORAFIT_CHECK(dtype_ != DType::I32 && dtype != DType::I32, "Tensor::to",
                "cannot convert " + str() + " to " + dtype_name(dtype));
  Tensor out = empty(shape_, dtype);
  int64_t n = numel();
  if (dtype_ == DType::F32) {
    if (dtype == DType::F16) f32_to_f16_n(f32(), out.u16(), n);
    else f32_to_bf16_n(f32(), out.u16(), n);
    return out;
  }
  // from F16/BF16: go through F32
  Tensor f = empty(shape_, DType::F32);
  if (dtype_ == DType::F16) f16_to_f32_n(u16(), f.f32(), n);
  else bf16_to_f32_n(u16(), f.f32(), n);
  return dtype == DType::F32 ? f : f.to(dtype);
}

void Tensor::copy_from(const Tensor& src) {
  LORAFIT_CHECK(src.dtype_ == dtype_ && src.shape_ == shape_, "Tensor::copy_from",
                "source " + src.str() + " does not match destination " + str());
  std::memmove(raw(), src.raw(), nbytes());
}

void Tensor::fill(float value) {
  float* p = f32();
  std::fill(p, p + numel(), value);
}

void Tensor::zero() { std::memset(raw(), 0, nbytes()); }

// ---- Arena ------------------------------------------------------------------------------------

namespace {
std::shared_ptr<void> chunk_mem(size_t bytes) {
  return std::shared_ptr<void>(aligned_alloc_bytes(bytes), [](void* p) { aligned_free(p); });
}
}  // namespace

Arena::Arena(size_t initial_bytes) {
  size_t n = std::max<size_t>(initial_bytes, kAlign);
  chunks_.push_back({chunk_mem(n), n, 0});
}

Arena::~Arena() = default;

size_t Arena::capacity() const {
  size_t c = 0;
  for (const Chunk& ch : chunks_) c += ch.size;
  return c;
}

Tensor Arena::alloc(const Shape& shape, DType dtype) {
  check_shape(shape, "Arena::alloc");
  size_t bytes = (dtype_nbytes(dtype, shape_numel(shape)) + kAlign - 1) / kAlign * kAlign;
  // Walk on to the next chunk that has room (after reset() they are all empty again), and only
  // when none is left add one, twice the size of the last. A step that repeats the previous one's
  // allocations therefore touches no new memory: no page faults and no second copy of the
  // activations while the previous step's tensors are still referenced.
  while (chunks_[cur_].used + bytes > chunks_[cur_].size) {
    if (cur_ + 1 == chunks_.size()) {
      size_t n = std::max(bytes, chunks_.back().size * 2);
      chunks_.push_back({chunk_mem(n), n, 0});
    }
    ++cur_;
  }
  Chunk* ch = &chunks_[cur_];
  void* p = static_cast<char*>(ch->mem.get()) + ch->used;
  ch->used += bytes;
  used_total_ += bytes;
  peak_ = std::max(peak_, used_total_);
  return Tensor::wrap(p, shape, dtype, ch->mem);
}

Tensor Arena::zeros(const Shape& shape, DType dtype) {
  Tensor t = alloc(shape, dtype);
  t.zero();
  return t;
}

void Arena::release(const Mark& m) {
  LORAFIT_CHECK(m.chunk < chunks_.size() && m.chunk <= cur_ && m.total <= used_total_,
                "Arena::release", "the mark is not from this arena's current step (reset since?)");
  if (poison) {
    for (size_t i = m.chunk; i <= cur_; ++i) {
      const size_t from = i == m.chunk ? m.used : 0;
      std::memset(static_cast<char*>(chunks_[i].mem.get()) + from, 0xff, chunks_[i].used - from);
    }
  }
  for (size_t i = m.chunk + 1; i <= cur_; ++i) chunks_[i].used = 0;
  chunks_[m.chunk].used = m.used;
  cur_ = m.chunk;
  used_total_ = m.total;
}

void Arena::reset() {
  for (Chunk& ch : chunks_) {
    if (poison) std::memset(ch.mem.get(), 0xff, ch.used);
    ch.used = 0;
  }
  cur_ = 0;
  used_total_ = 0;
}

}  // namespace lorafit::tensor
