// Op-checker cases for the peft adapter layers on one Linear (LoraLinear, DoraLinear, SVDLinear):
// forward against a naive double-precision formula written here, and backward (input, A, B and
// the layer's own parameters) against central finite differences of L = sum(forward(x) * r).
// The layers' PEFT parity (values, gradients, saved files) is checked in tests/peft.
//
// Tolerances: forward 1e-5 absolute + relative (fp32 products of O(1) values over in = 7);
// backward eps 1e-2, tol 1e-4 (each branch is linear or bilinear in the checked variable, DoRA's
// with its norm held constant as DoRA §4.3 / PEFT detach it).
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "lorafit/nn.h"
#include "lorafit/peft.h"
#include "ops/op_check.h"
#include "peft/peft_internal.h"

namespace {

using lorafit::nn::Context;
using lorafit::nn::Linear;
using lorafit::nn::Parameter;
using opcheck::Tensor;
namespace peft = lorafit::peft;

constexpr int64_t kIn = 7, kOut = 5, kRank = 3;

// A Linear [kOut, kIn] with bias and random weights, frozen (as under an adapter).
void randomize_base(Linear& lin, uint64_t seed) {
  lin.weight.value = opcheck::random({kOut, kIn}, seed);
  lin.bias.value = opcheck::random({kOut}, seed + 1);
  lin.set_trainable(false);
}

// Double [kOut, kIn] matrix of a F32 tensor.
std::vector<double> to_d(const Tensor& t) {
  return opcheck::to_double(t);
}

// y[n, o] = Σ_j x[n, j] M[o, j] + b[o], in double.
std::vector<double> affine(const Tensor& x, const std::vector<double>& M, const Tensor& b) {
  const int64_t n = x.numel() / kIn;
  std::vector<double> y(static_cast<size_t>(n * kOut));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t o = 0; o < kOut; ++o) {
      double s = b.f32()[o];
      for (int64_t j = 0; j < kIn; ++j)
        s += static_cast<double>(x.f32()[i * kIn + j]) * M[o * kIn + j];
      y[static_cast<size_t>(i * kOut + o)] = s;
    }
  return y;
}

// W + s · B A' in double, A' [kRank, kIn] (A, or A ⊙ E for AdaLoRA).
std::vector<double> adapted(const Tensor& W, const std::vector<double>& A, const Tensor& B,
                            double s) {
  std::vector<double> M = to_d(W);
  for (int64_t o = 0; o < kOut; ++o)
    for (int64_t j = 0; j < kIn; ++j) {
      double v = 0;
      for (int64_t a = 0; a < kRank; ++a)
        v += static_cast<double>(B.f32()[o * kRank + a]) * A[a * kIn + j];
      M[o * kIn + j] += s * v;
    }
  return M;
}

void expect_forward(Linear& lin, const Tensor& x, const std::vector<double>& want,
                    const std::string& what) {
  Context ctx;
  Tensor y = lin.forward(ctx, x);
  Tensor w = Tensor::empty(y.shape());
  for (size_t i = 0; i < want.size(); ++i) w.f32()[i] = static_cast<float>(want[i]);
  opcheck::expect_close(y, w, 1e-5, 1e-5, what + " forward vs double reference");
}

// Backward of lin (adapters attached) against finite differences: dx and every parameter in
// `params` (the adapter's trainable tensors). Dropout masks repeat: each forward copies ctx.
void expect_backward(Linear& lin, const Tensor& x0,
                     const std::vector<std::pair<std::string, Parameter*>>& params, float dropout,
                     const std::string& what) {
  Tensor x = x0.clone();
  Tensor r = opcheck::random({2, 3, kOut}, 4);
  Context ctx;
  ctx.training = dropout > 0;
  ctx.seed = 99;
  auto loss = [&] {
    Context c = ctx;
    return opcheck::dot(lin.forward(c, x), r);
  };
  for (auto& [name, p] : params) p->zero_grad();
  Context c1 = ctx;
  lin.forward(c1, x);
  Tensor dx = lin.backward(c1, r).clone();
  opcheck::expect_grad(dx, opcheck::finite_diff(x, loss, 1e-2f), 1e-4, what + " dx");
  for (auto& [name, p] : params) {
    ASSERT_TRUE(p->grad.defined()) << what << ": " << name << " has no gradient";
    Tensor g = p->grad.clone();
    opcheck::expect_grad(g, opcheck::finite_diff(p->value, loss, 1e-2f), 1e-4, what + " d" + name);
  }
  EXPECT_FALSE(lin.weight.grad.defined()) << what << ": the frozen base got a gradient buffer";
}

// ---- LoRA: y = x Wᵀ + b + s · x Aᵀ Bᵀ
// ------------------------------------------------------------

void check_lora(bool rslora, float dropout) {
  Linear lin(kIn, kOut, true);
  randomize_base(lin, 1);
  peft::LoraLinear l(lin, kRank, 5.0, rslora, dropout);
  l.init(lin, peft::LoraInit::Random, 7);  // A and B nonzero
  l.A.set_trainable(true);
  l.B.set_trainable(true);
  lin.adapters.push_back(&l);
  const double s = rslora ? 5.0 / std::sqrt(3.0) : 5.0 / 3.0;
  EXPECT_FLOAT_EQ(l.scaling(), static_cast<float>(s));
  Tensor x = opcheck::random({2, 3, kIn}, 3);
  const std::string what =
      std::string("LoRA") + (rslora ? " rslora" : "") + (dropout > 0 ? " dropout" : "");
  expect_forward(
      lin, x, affine(x, adapted(lin.weight.value, to_d(l.A.value), l.B.value, s), lin.bias.value),
      what);
  expect_backward(lin, x, {{"A", &l.A}, {"B", &l.B}}, dropout, what);
  lin.adapters.clear();
}

OPCHECK(LoraLinear, ForwardAndGrads) {
  check_lora(false, 0.0f);
}
OPCHECK(LoraLinear, RsloraWithDropout) {
  check_lora(true, 0.3f);
}

// ---- DoRA: y = (m / ‖W + s·B A‖) ⊙ x (W + s·B A)ᵀ + b
// ----------------------------------------------

void check_dora(float dropout) {
  Linear lin(kIn, kOut, true);
  randomize_base(lin, 11);
  peft::DoraLinear l(lin, kRank, 5.0, false, dropout);
  l.init(lin, peft::LoraInit::Random, 13);  // m = ‖W + s·B A‖
  for (int64_t i = 0; i < kOut; ++i)
    l.magnitude.value.f32()[i] *= 0.7f + 0.1f * static_cast<float>(i);
  for (Parameter* p : {&l.A, &l.B, &l.magnitude}) p->set_trainable(true);
  lin.adapters.push_back(&l);
  const double s = 5.0 / 3.0;
  std::vector<double> M = adapted(lin.weight.value, to_d(l.A.value), l.B.value, s);
  for (int64_t o = 0; o < kOut; ++o) {
    double n2 = 0;
    for (int64_t j = 0; j < kIn; ++j) n2 += M[o * kIn + j] * M[o * kIn + j];
    const double k = l.magnitude.value.f32()[o] / std::sqrt(n2);
    for (int64_t j = 0; j < kIn; ++j) M[o * kIn + j] *= k;
  }
  Tensor x = opcheck::random({2, 3, kIn}, 3);
  const std::string what = std::string("DoRA") + (dropout > 0 ? " dropout" : "");
  expect_forward(lin, x, affine(x, M, lin.bias.value), what);  // eval: no dropout
  // The norm is a constant in DoRA's backward: hold it so finite differences see the same.
  l.fixed_norm = l.weight_norm(lin, peft::DoraNorm::Fast);
  expect_backward(lin, x, {{"A", &l.A}, {"B", &l.B}, {"magnitude", &l.magnitude}}, dropout, what);
  lin.adapters.clear();
}

OPCHECK(DoraLinear, ForwardAndGrads) {
  check_dora(0.0f);
}
OPCHECK(DoraLinear, GradsWithDropout) {
  check_dora(0.3f);
}

// A LoRA adapter active before a DoRA one on the same Linear is part of what DoRA rescales
// (PEFT's base_result): without dropout its gradient is k ⊙ dy (DoRA's upstream_grad), with
// dropout dy. Both against finite differences, every parameter of both adapters.
void check_lora_then_dora(float dropout) {
  Linear lin(kIn, kOut, true);
  randomize_base(lin, 31);
  peft::LoraLinear lora(lin, kRank, 4.0, false, 0.0f);
  lora.init(lin, peft::LoraInit::Random, 33);
  peft::DoraLinear dora(lin, kRank, 5.0, false, dropout);
  dora.init(lin, peft::LoraInit::Random, 35);
  for (int64_t i = 0; i < kOut; ++i)
    dora.magnitude.value.f32()[i] *= 0.6f + 0.15f * static_cast<float>(i);
  for (Parameter* p : {&lora.A, &lora.B, &dora.A, &dora.B, &dora.magnitude}) p->set_trainable(true);
  lin.adapters = {&lora, &dora};
  dora.fixed_norm = dora.weight_norm(lin, peft::DoraNorm::Fast);
  const std::string what = std::string("LoRA then DoRA") + (dropout > 0 ? " dropout" : "");
  expect_backward(lin, opcheck::random({2, 3, kIn}, 37),
                  {{"lora A", &lora.A},
                   {"lora B", &lora.B},
                   {"dora A", &dora.A},
                   {"dora B", &dora.B},
                   {"magnitude", &dora.magnitude}},
                  dropout, what);
  lin.adapters.clear();
}

OPCHECK(DoraLinear, AfterLoraOnOneLinear) {
  check_lora_then_dora(0.0f);
}
OPCHECK(DoraLinear, AfterLoraWithDropout) {
  check_lora_then_dora(0.3f);
}

// ---- AdaLoRA: y = x Wᵀ + b + s · x (A ⊙ E)ᵀ Bᵀ, s = alpha / (ranknum + 1e-5)
// ----------------------

void check_svd(float dropout) {
  Linear lin(kIn, kOut, true);
  randomize_base(lin, 21);
  peft::SVDLinear l(lin, kRank, 6.0, kRank, dropout);
  l.init_svd(/*init_lora_weights=*/false, 5);  // A, E, B all nonzero
  for (Parameter* p : {&l.A, &l.E, &l.B}) p->set_trainable(true);
  lin.adapters.push_back(&l);
  const double s = static_cast<double>(6.0f / (3.0f + 1e-5f));
  std::vector<double> ae = to_d(l.A.value);
  for (int64_t a = 0; a < kRank; ++a)
    for (int64_t j = 0; j < kIn; ++j) ae[a * kIn + j] *= l.E.value.f32()[a];
  Tensor x = opcheck::random({2, 3, kIn}, 3);
  const std::string what = std::string("AdaLoRA") + (dropout > 0 ? " dropout" : "");
  expect_forward(lin, x, affine(x, adapted(lin.weight.value, ae, l.B.value, s), lin.bias.value),
                 what);
  expect_backward(lin, x, {{"A", &l.A}, {"E", &l.E}, {"B", &l.B}}, dropout, what);
  lin.adapters.clear();
}

OPCHECK(SVDLinear, ForwardAndGrads) {
  check_svd(0.0f);
}
OPCHECK(SVDLinear, GradsWithDropout) {
  check_svd(0.3f);
}

}  // namespace
