// Context, Parameter, Module and the counter-based random stream.
#include "nn/nn_internal.h"

namespace lorafit::nn {

Tensor Context::alloc(const Shape& shape, DType dtype) {
  return arena ? arena->alloc(shape, dtype) : Tensor::empty(shape, dtype);
}

Tensor Context::zeros(const Shape& shape, DType dtype) {
  return arena ? arena->zeros(shape, dtype) : Tensor::zeros(shape, dtype);
}

uint64_t Context::take_rng(uint64_t n) {
  uint64_t c = rng_counter;
  rng_counter += n;
  return c;
}

namespace {
// splitmix64's output function (Steele, Lea, Flood 2014): a bijective avalanche mix.
uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
}  // namespace

uint64_t random_u64(uint64_t seed, uint64_t counter) {
  // Draw `counter` of splitmix64 started at mix64(seed): mixing the seed first keeps nearby
  // seeds (1, 2, ...) from giving shifted copies of the same stream.
  return mix64(mix64(seed) + (counter + 1) * 0x9E3779B97F4A7C15ull);
}

void Parameter::set_trainable(bool t) {
  if (t) {
    lorafit::check(value.defined(), "Parameter", "cannot make an undefined parameter trainable");
    lorafit::check(value.dtype() == DType::F32, "Parameter",
                   "only F32 parameters can be trainable; value is " + value.str());
    if (!grad.defined() || grad.shape() != value.shape()) grad = Tensor::zeros(value.shape());
  } else {
    grad = Tensor();  // frozen parameters hold no gradient memory
  }
  trainable = t;
}

void Parameter::zero_grad() {
  if (trainable && grad.defined()) grad.zero();
}

NamedParameters Module::named_parameters(const std::string& prefix) {
  NamedParameters out;
  parameters(prefix, out);
  return out;
}

void Module::zero_grad() {
  for (auto& [name, p] : named_parameters()) p->zero_grad();
}

void Module::set_trainable(bool t) {
  for (auto& [name, p] : named_parameters())
    if (p->value.defined()) p->set_trainable(t);
}

}  // namespace lorafit::nn
