// Private helpers shared by the nn/ sources.
#pragma once

#include <cstdint>
#include <string>

#include "lorafit/nn.h"

namespace lorafit::nn::detail {

[[noreturn]] inline void fail(const char* module, const std::string& msg) {
  throw Error(std::string("[") + module + "] " + msg);
}

// Throws Error("[Module] msg") unless cond. The message is built only on failure: these checks
// run on every forward/backward, and shape strings cost more than the small kernels they guard.
#define NN_CHECK(cond, module, msg)                            \
  do {                                                         \
    if (!(cond)) ::lorafit::nn::detail::fail((module), (msg)); \
  } while (0)

// "x is F32[2, 5, 7]" style fragments for error messages.
inline std::string desc(const char* name, const Tensor& t) {
  return std::string(name) + " is " + (t.defined() ? t.str() : std::string("undefined"));
}

// x must be a defined F32 tensor with at least one dimension and last dimension c.
inline void check_last_dim(const char* module, const char* name, const Tensor& x, int64_t c) {
  NN_CHECK(x.defined() && x.dtype() == DType::F32 && x.ndim() >= 1 && x.dim(-1) == c, module,
           desc(name, x) + ", expected F32[..., " + std::to_string(c) + "]");
}

// Shape with the last dimension replaced.
inline Shape with_last(Shape s, int64_t c) {
  s.back() = c;
  return s;
}

// Inverted-dropout mask over a reservation of counters starting at `counter`: element i of the
// masked range uses 32 bits of random_u64(seed, counter + i / 2) (high half for even i, low half
// for odd i), kept iff those bits >= p·2³², i.e. with probability 1 - p (to 2⁻³²). Two elements
// per hash halve the cost; a range of n elements reserves (n + 1) / 2 counters.
class DropoutMask {
 public:
  DropoutMask(uint64_t seed, uint64_t counter, float p)
      : seed_(seed),
        counter_(counter),
        threshold_(static_cast<uint64_t>(static_cast<double>(p) * 4294967296.0)),
        scale_(1.0f / (1.0f - p)) {}
  static uint64_t counters_for(int64_t n) { return static_cast<uint64_t>(n + 1) / 2; }

  // y[j] = x[j] * mask(begin + j) for j in [0, n); y may alias x.
  void apply(float* y, const float* x, int64_t begin, int64_t n) const {
    int64_t i = begin;
    const int64_t end = begin + n;
    if (i < end && (i & 1)) {
      *y++ = *x++ * factor(static_cast<uint32_t>(hash(i)));
      ++i;
    }
    for (; i + 1 < end; i += 2) {
      const uint64_t r = hash(i);
      y[0] = x[0] * factor(static_cast<uint32_t>(r >> 32));
      y[1] = x[1] * factor(static_cast<uint32_t>(r));
      y += 2;
      x += 2;
    }
    if (i < end) *y = *x * factor(static_cast<uint32_t>(hash(i) >> 32));
  }

 private:
  uint64_t hash(int64_t i) const {
    return random_u64(seed_, counter_ + static_cast<uint64_t>(i) / 2);
  }
  float factor(uint32_t bits) const { return bits >= threshold_ ? scale_ : 0.0f; }

  uint64_t seed_, counter_, threshold_;
  float scale_;
};

}  // namespace lorafit::nn::detail
