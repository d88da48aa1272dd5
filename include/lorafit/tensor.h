// lorafit tensor layer: dtypes, the Tensor type (contiguous storage, cheap views), fp16/bf16
// conversions and an arena for per-step activations. Depends on nothing else in lorafit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace lorafit {

// Every error lorafit raises. The message names where (operation, file, field) and what was
// expected, e.g. "[gemm] A is [3, 5] but B is [7, 2]: inner dimensions must agree".
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Throws Error("[op] msg") when cond is false.
inline void check(bool cond, const char* op, const std::string& msg) {
  if (!cond) throw Error(std::string("[") + op + "] " + msg);
}

// The same, but msg is only built when cond is false: use it on hot paths (accessors, kernels),
// where building the message eagerly cost ~10% of a training step.
#define LORAFIT_CHECK(cond, op, msg)                   \
  do {                                                 \
    if (!(cond)) ::lorafit::check(false, (op), (msg)); \
  } while (0)

}  // namespace lorafit

namespace lorafit::tensor {

using lorafit::Error;

// Element types. Block-quantized types (Q8_0, Q4_0, Q4_1, NF4, and ggml's K-quants Q4_K, Q5_K,
// Q6_K) exist for frozen weights; a tensor of such a type stores whole blocks along its last
// dimension (256 values per K-quant block). NF4 is bitsandbytes 4-bit (NF4 or FP4 codes): the
// tensor views the packed codes and its statistics live beside them (quant.h). New types are
// appended so that the numbers of the old ones stay.
enum class DType : uint8_t { F32, F16, BF16, I32, Q8_0, Q4_0, Q4_1, NF4, Q4_K, Q5_K, Q6_K };

const char* dtype_name(DType t);
// Elements per block (1 for plain types) and bytes per block.
int64_t dtype_block_elems(DType t);
int64_t dtype_block_bytes(DType t);
bool dtype_is_quantized(DType t);
// Bytes needed for n elements of type t (n must be a multiple of the block size).
size_t dtype_nbytes(DType t, int64_t n);

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);  // "[2, 3, 4]"
int64_t shape_numel(const Shape& s);

// fp16 / bf16 <-> fp32, round to nearest even; NaN stays NaN, overflow goes to inf.
uint16_t f32_to_f16(float f);
float f16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);
float bf16_to_f32(uint16_t h);
void f32_to_f16_n(const float* x, uint16_t* y, int64_t n);
void f16_to_f32_n(const uint16_t* x, float* y, int64_t n);
void f32_to_bf16_n(const float* x, uint16_t* y, int64_t n);
void bf16_to_f32_n(const uint16_t* x, float* y, int64_t n);

// Aligned (64-byte) allocation, freed with aligned_free.
void* aligned_alloc_bytes(size_t bytes);
void aligned_free(void* p);

// A block of bytes that a tensor views. Owns its memory unless it wraps external memory (an mmap
// or an arena chunk), in which case `keepalive` keeps the owner alive.
struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  bool owned = false;
  std::shared_ptr<void> keepalive;
  ~Storage();
};

// A dense, row-major, contiguous tensor: dtype + shape + (storage, byte offset). Views share
// storage and are cheap; every view is itself contiguous (reshape, a range of rows).
class Tensor {
 public:
  Tensor() = default;

  static Tensor empty(const Shape& shape, DType dtype = DType::F32);
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32);
  static Tensor full(const Shape& shape, float value);
  // Copies `values` (size must equal numel) into a new F32 tensor.
  static Tensor from_vector(const Shape& shape, const std::vector<float>& values);
  static Tensor from_ints(const Shape& shape, const std::vector<int32_t>& values);
  // Wraps external memory without copying; keepalive owns it.
  static Tensor wrap(void* data, const Shape& shape, DType dtype, std::shared_ptr<void> keepalive);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  // dim(i), negative i counts from the end. Throws on out of range.
  int64_t dim(int i) const;
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return dtype_nbytes(dtype_, numel()); }
  std::string str() const;  // "F32[2, 3]"

  void* raw() const;
  // Typed access; throws when the dtype does not match.
  float* f32() const;
  int32_t* i32() const;
  uint16_t* u16() const;  // F16 or BF16 bits

  // Same storage, new shape with the same numel; one dimension may be -1.
  Tensor view(const Shape& shape) const;
  // Rows [begin, end) along dimension 0.
  Tensor rows(int64_t begin, int64_t end) const;
  // Row i along dimension 0, with that dimension dropped.
  Tensor row(int64_t i) const;

  Tensor clone() const;
  // Converts between F32, F16 and BF16 (and dequantizes block types to F32 once they are added).
  Tensor to(DType dtype) const;
  // Copies values from src (same shape and dtype) into this tensor's storage.
  void copy_from(const Tensor& src);
  void fill(float value);
  void zero();
  bool same_storage(const Tensor& o) const { return storage_ == o.storage_ && offset_ == o.offset_; }
  // The owner of wrapped memory (Tensor::wrap's keepalive); null for owned storage. NF4 tensors
  // keep their bitsandbytes state (quant.h, quant4_state) there.
  const std::shared_ptr<void>& keepalive() const;

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;  // bytes
  Shape shape_;
  DType dtype_ = DType::F32;
};

// Bump allocator for per-step activations: allocate during a step, reset() at its end. Memory is
// planned by use: when no chunk has room a new one is added (twice the last), and after reset()
// the same chunks serve the next step in the same order, so a step like the previous one touches
// no new memory (and never holds two copies of the activations while old tensors linger).
// Tensors allocated from an arena must not be used after reset().
class Arena {
 public:
  explicit Arena(size_t initial_bytes = 1 << 20);
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  Tensor alloc(const Shape& shape, DType dtype = DType::F32);
  Tensor zeros(const Shape& shape, DType dtype = DType::F32);
  void reset();
  // A position in the arena; release(m) frees everything allocated after mark() returned m (those
  // tensors must not be used again), for temporaries with a stack lifetime such as one layer's
  // backward pass.
  struct Mark {
    size_t chunk = 0, used = 0, total = 0;
  };
  Mark mark() const { return {cur_, chunks_[cur_].used, used_total_}; }
  void release(const Mark& m);
  // Tests: fill memory with NaN bytes when release()/reset() frees it, so that a tensor used after
  // its memory was freed shows up as NaNs instead of passing by luck.
  bool poison = false;
  size_t used() const { return used_total_; }
  size_t peak() const { return peak_; }
  size_t capacity() const;

 private:
  struct Chunk {
    std::shared_ptr<void> mem;
    size_t size = 0;
    size_t used = 0;
  };
  std::vector<Chunk> chunks_;
  size_t cur_ = 0;  // the chunk allocations come from
  size_t used_total_ = 0;
  size_t peak_ = 0;
};

}  // namespace lorafit::tensor
