// Context, Parameter and Module.
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
