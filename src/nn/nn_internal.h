// Private helpers shared by the nn/ sources.
#pragma once

#include <string>

#include "lorafit/nn.h"

namespace lorafit::nn::detail {

// Throws Error("[Module] msg") unless cond.
inline void check(bool cond, const char* module, const std::string& msg) {
  lorafit::check(cond, module, msg);
}

// "x is F32[2, 5, 7]" style fragments for error messages.
inline std::string desc(const char* name, const Tensor& t) {
  return std::string(name) + " is " + (t.defined() ? t.str() : std::string("undefined"));
}

// x must be a defined F32 tensor with at least one dimension and last dimension c.
inline void check_last_dim(const char* module, const char* name, const Tensor& x, int64_t c) {
  check(x.defined() && x.dtype() == DType::F32 && x.ndim() >= 1 && x.dim(-1) == c, module,
        desc(name, x) + ", expected F32[..., " + std::to_string(c) + "]");
}

// Shape with the last dimension replaced.
inline Shape with_last(Shape s, int64_t c) {
  s.back() = c;
  return s;
}

// Inverted-dropout factor for draw i of a reservation starting at `counter`: 0 (dropped) or
// 1/(1-p). keep iff u >= p, so P(keep) = 1 - p.
inline float dropout_factor(uint64_t seed, uint64_t counter, float p, float scale) {
  return random_uniform(seed, counter) >= static_cast<double>(p) ? scale : 0.0f;
}

}  // namespace lorafit::nn::detail
