// LoraLinear: the LoRA branch of one Linear (Hu et al. 2021, eq. 3; PEFT peft/tuners/lora/layer.py
// Linear.forward): y = x Wᵀ + b + s · drop(x) Aᵀ Bᵀ.
// Conventions (as llm.c): parameter gradients accumulate (+=); the input gradient of the branch
// is added to the Linear's dx.
#include <cmath>
#include <vector>

#include "lorafit/kernels.h"
#include "lorafit/peft.h"
#include "peft/peft_internal.h"

namespace lorafit::peft {

namespace {

// Keep mask draw i of a dropout reservation: kept with probability 1 − p.
inline bool keep(uint64_t seed, uint64_t counter, float p) {
  return nn::random_uniform(seed, counter) >= static_cast<double>(p);
}

}  // namespace

// ---- InputDropout ----------------------------------------------------------------------------

InputDropout::InputDropout(float p) : p_(p) {
  if (!(p >= 0.0f && p < 1.0f)) fail("lora_dropout must be in [0, 1), got " + std::to_string(p));
}

Tensor InputDropout::forward(nn::Context& ctx, const Tensor& x, int64_t n, int64_t in) {
  dropped_ = ctx.training && p_ > 0.0f && n > 0;
  if (!dropped_) return x.view({n, in});
  seed_ = ctx.seed;
  counter_ = ctx.take_rng(static_cast<uint64_t>(n * in));
  Tensor xd = ctx.alloc({n, in});
  const float* xs = x.f32();
  float* d = xd.f32();
  const float scale = 1.0f / (1.0f - p_);
  for (int64_t i = 0; i < n * in; ++i)
    d[i] = keep(seed_, counter_ + static_cast<uint64_t>(i), p_) ? xs[i] * scale : 0.0f;
  return xd;
}

void InputDropout::backward_add(const Tensor& g, Tensor& dx) const {
  // forward was: xd[i] = x[i] · mask[i] / (1 − p)
  const int64_t n = g.numel();
  const float* s = g.f32();
  float* d = dx.f32();
  if (!dropped_) {
    for (int64_t i = 0; i < n; ++i) d[i] += s[i];
    return;
  }
  const float scale = 1.0f / (1.0f - p_);
  for (int64_t i = 0; i < n; ++i)
    if (keep(seed_, counter_ + static_cast<uint64_t>(i), p_)) d[i] += s[i] * scale;
}

// ---- AdapterLayer ----------------------------------------------------------------------------

void AdapterLayer::append_state(const AdapterConfig&, const std::string& key,
                                std::vector<std::pair<std::string, Tensor>>& out) const {
  for (auto& [suffix, p] : named_tensors()) out.emplace_back(key + "." + suffix, p->value);
}

void AdapterLayer::set_trainable(bool t) {
  for (auto& [suffix, p] : named_tensors())
    if (p->trainable != t) p->set_trainable(t);
}

// ---- LoraLinear --------------------------------------------------------------------------------

LoraLinear::LoraLinear(const nn::Linear& base, int64_t r, double alpha, bool use_rslora,
                       float dropout_p)
    : AdapterLayer(dropout_p), r_(r), alpha_(alpha) {
  if (r <= 0) fail("LoRA rank must be positive, got " + std::to_string(r));
  scaling_ = static_cast<float>(use_rslora ? alpha / std::sqrt(static_cast<double>(r))
                                           : alpha / static_cast<double>(r));
  A.value = Tensor::zeros({r, base.in_features()});
  B.value = Tensor::zeros({base.out_features(), r});
}

std::vector<std::pair<std::string, nn::Parameter*>> LoraLinear::named_tensors() const {
  auto* self = const_cast<LoraLinear*>(this);
  return {{"lora_A.weight", &self->A}, {"lora_B.weight", &self->B}};
}

void LoraLinear::init(nn::Linear& base, LoraInit how, uint64_t seed) {
  const int64_t in = base.in_features();
  uint64_t counter = 0;
  // nn.init.kaiming_uniform_(a=√5) on a [rows, fan_in] weight: gain √(2/(1+5)) = √(1/3),
  // bound = gain·√(3/fan_in) = 1/√fan_in (torch's nn.Linear default).
  auto kaiming = [&](Tensor& t, int64_t fan_in) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
    float* p = t.f32();
    for (int64_t i = 0; i < t.numel(); ++i)
      p[i] = static_cast<float>((2.0 * nn::random_uniform(seed, counter++) - 1.0) * bound);
  };
  // Standard normal draw (Box–Muller from two uniforms; 1 − u keeps the log finite).
  auto normal = [&]() {
    double u1 = 1.0 - nn::random_uniform(seed, counter++);
    double u2 = nn::random_uniform(seed, counter++);
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
  };
  switch (how) {
    case LoraInit::Default:  // PEFT reset_lora_parameters(init_lora_weights=True)
    case LoraInit::Eva:      // PEFT update_layer: B = 0, A keeps nn.Linear's init (EVA's data
                             // step, initialize_lora_eva_weights, is separate and not run here)
    case LoraInit::LoraGa:   // PEFT lora_ga_init without gradients (a load): reset as true
      kaiming(A.value, in);
      B.value.zero();
      break;
    case LoraInit::Orthogonal: {  // PEFT orthogonal_init: B A = 0 from orthogonal rows of Q
      if (r_ % 2 != 0)
        fail("init_lora_weights \"orthogonal\" needs an even rank, got " + std::to_string(r_));
      const int64_t h = r_ / 2, out = base.out_features();
      std::vector<double> X(static_cast<size_t>(r_ * r_)), Q, R;
      for (auto& x : X) x = normal();
      linalg::qr(X, r_, r_, Q, R);  // Q [r, r]; q_odd = Q[0::2], q_even = Q[1::2] ([h, r])
      std::vector<double> g1(static_cast<size_t>(in * h)), g2(static_cast<size_t>(h * out));
      for (auto& x : g1) x = normal();  // randn(in, h)
      for (auto& x : g2) x = normal();  // randn(h, out)
      float* a = A.value.f32();         // A = (g1 · q_odd)ᵀ / 10  [r, in]
      float* b = B.value.f32();         // B = g2ᵀ · q_even / 10    [out, r]
      for (int64_t j = 0; j < r_; ++j) {
        for (int64_t c = 0; c < in; ++c) {
          double d = 0;
          for (int64_t k = 0; k < h; ++k) d += g1[c * h + k] * Q[(2 * k) * r_ + j];
          a[j * in + c] = static_cast<float>(d / 10.0);
        }
        for (int64_t o = 0; o < out; ++o) {
          double d = 0;
          for (int64_t k = 0; k < h; ++k) d += g2[k * out + o] * Q[(2 * k + 1) * r_ + j];
          b[o * r_ + j] = static_cast<float>(d / 10.0);
        }
      }
      break;
    }
    case LoraInit::Random:  // init_lora_weights=False: both keep nn.Linear's init
      kaiming(A.value, in);
      kaiming(B.value, r_);
      break;
    case LoraInit::Gaussian: {  // nn.init.normal_(A, std=1/r), B = 0
      float* p = A.value.f32();
      for (int64_t i = 0; i < A.value.numel(); ++i)
        p[i] = static_cast<float>(normal() / static_cast<double>(r_));
      B.value.zero();
      break;
    }
    case LoraInit::Pissa:  // principal singular vectors / QR of W; base becomes W − s·B A
    case LoraInit::Olora:
    case LoraInit::Mica:  // minor singular vectors of W in B, A = 0; base unchanged
      init_from_weight(*this, base, how);
      break;
    default:
      fail(std::string("init_lora_weights \"") + lora_init_name(how) + "\" is not supported yet");
  }
}

void LoraLinear::forward(nn::Context& ctx, const nn::Linear& base, const Tensor& x, Tensor& y) {
  routed_ = false;
  if (route) return forward_routed(ctx, base, x, y);  // mixed_batch.cpp
  if (!enabled) return;  // attached for routing only
  const int64_t in = base.in_features(), out = base.out_features();
  const int64_t n = x.numel() / in;
  if (A.value.dim(1) != in || B.value.dim(0) != out)
    fail("LoRA on Linear [" + std::to_string(out) + ", " + std::to_string(in) + "]: lora_A is " +
         A.value.str() + ", lora_B is " + B.value.str());
  // xd = drop(x) [n, in]: stored when dropout is on (the mask is not kept separately).
  Tensor xd = drop.forward(ctx, x, n, in);
  x_ = xd;
  h_ = ctx.alloc({n, r_});
  if (n == 0) return;
  kernels::gemm(xd, false, A.value, true, h_);  // h [n, r] = xd [n, in] · Aᵀ
  Tensor y2 = y.view({n, out});
  kernels::gemm(h_, false, B.value, true, y2, scaling_, 1.0f);  // y += s · h Bᵀ
}

void LoraLinear::backward(nn::Context& ctx, const nn::Linear& base, const Tensor& dy, Tensor* dx) {
  if (routed_) fail("mixed-batch (adapter_names) forward is inference only: no backward");
  if (!enabled) return;  // forward added nothing (attached for routing only)
  if (!h_.defined()) fail("LoRA backward called before forward");
  const int64_t in = base.in_features(), out = base.out_features();
  const int64_t n = h_.dim(0);
  if (n == 0) return;
  Tensor dy2 = dy.view({n, out});
  // forward was: y += s · h Bᵀ, h = xd Aᵀ
  if (B.trainable) kernels::gemm(dy2, true, h_, false, B.grad, scaling_, 1.0f);  // dB += s dyᵀ h
  if (!A.trainable && dx == nullptr) return;
  Tensor dh = ctx.alloc({n, r_});
  kernels::gemm(dy2, false, B.value, false, dh, scaling_, 0.0f);  // dh [n, r] = s · dy B
  if (A.trainable) kernels::gemm(dh, true, x_, false, A.grad, 1.0f, 1.0f);  // dA += dhᵀ xd
  if (dx == nullptr) return;
  Tensor dx2 = dx->view({n, in});
  if (!drop.dropped()) {
    kernels::gemm(dh, false, A.value, false, dx2, 1.0f, 1.0f);  // dx += dh A
    return;
  }
  Tensor dxd = ctx.alloc({n, in});
  kernels::gemm(dh, false, A.value, false, dxd);  // d(xd) = dh A, then through the mask
  drop.backward_add(dxd, dx2);
}

Tensor LoraLinear::delta_weight() const {
  Tensor d = Tensor::zeros({B.value.dim(0), A.value.dim(1)});
  kernels::gemm(B.value, false, A.value, false, d, scaling_, 0.0f);  // s · B [out, r] · A [r, in]
  return d;
}

void LoraLinear::merge(nn::Linear& base) {
  if (merged) return;
  if (base.weight.value.dtype() != tensor::DType::F32)
    fail(std::string("merge needs an F32 base weight, got ") +
         tensor::dtype_name(base.weight.value.dtype()) + " (load the model with dequantize)");
  Tensor d = delta_weight();
  kernels::axpy(1.0f, d, base.weight.value);
  nn::weights_changed();
  merged = true;
}

void LoraLinear::unmerge(nn::Linear& base) {
  if (!merged) return;
  Tensor d = delta_weight();
  kernels::axpy(-1.0f, d, base.weight.value);
  nn::weights_changed();
  merged = false;
}

}  // namespace lorafit::peft

namespace lorafit::peft {

const std::vector<std::string>& adapter_layer_names() {
  static const std::vector<std::string> names = {"LoraLinear", "DoraLinear", "SVDLinear"};
  return names;
}

}  // namespace lorafit::peft
