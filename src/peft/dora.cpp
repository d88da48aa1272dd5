// DoraLinear: weight-decomposed low-rank adaptation (Liu et al. 2024) as PEFT 0.21 computes it
// (peft/tuners/lora/dora.py DoraLinearLayer, variants.py DoraLinearVariant):
//   y = W x + b + (k − 1) ⊙ u + k ⊙ s · B A drop(x),  k = m / ‖W + s·B A‖ (row-wise, detached).
// The row norms come without materializing W + s·B A (DoraNorm::Fast):
//   ‖w_i + s·B_i A‖² = ‖w_i‖² + 2s · B_i (A w_i) + s² · B_i (A Aᵀ) B_iᵀ
// which costs one [r, in] × [in, out] product and an r × r Gram matrix per forward, against
// PEFT's [out, in] temporaries (its issue #2651). ‖w_i‖² is recomputed each forward: it is a
// pass over W (1/n of the base product's work for n tokens) and so can never go stale when the
// base weight changes (merges of other adapters, PiSSA), unlike a cache.
#include <algorithm>
#include <cmath>
#include <vector>

#include "lorafit/kernels.h"
#include "lorafit/peft.h"
#include "peft/peft_internal.h"

namespace lorafit::peft {

namespace {

// Elementwise passes over [tokens, out] run on all threads from this size on.
constexpr int64_t kParallelElems = 1 << 15;

std::string shape_of(const nn::Linear& base) {
  std::string s = "[";  // (appended step by step: GCC 12 warns falsely on "[" + std::string)
  s += std::to_string(base.out_features());
  s += ", ";
  s += std::to_string(base.in_features());
  return s + "]";
}

}  // namespace

DoraLinear::DoraLinear(const nn::Linear& base, int64_t r, double alpha, bool use_rslora,
                       float dropout_p)
    : LoraLinear(base, r, alpha, use_rslora, dropout_p) {
  magnitude.value = Tensor::zeros({base.out_features()});
}

std::vector<std::pair<std::string, nn::Parameter*>> DoraLinear::named_tensors() const {
  auto v = LoraLinear::named_tensors();
  v.emplace_back("lora_magnitude_vector", const_cast<nn::Parameter*>(&magnitude));
  return v;
}

void DoraLinear::init(nn::Linear& base, LoraInit how, uint64_t seed) {
  LoraLinear::init(base, how, seed);
  // PEFT dora_init: m = ‖W + s·B A‖ (reference path: the same numbers PEFT would take).
  magnitude.value.copy_from(weight_norm(base, DoraNorm::Reference));
}

Tensor DoraLinear::weight_norm(const nn::Linear& base, DoraNorm how) const {
  const int64_t in = base.in_features(), out = base.out_features(), r = this->r();
  if (A.value.dim(1) != in || B.value.dim(0) != out || magnitude.value.numel() != out)
    fail("DoRA on Linear " + shape_of(base) + ": lora_A is " + A.value.str() + ", lora_B is " +
         B.value.str() + ", lora_magnitude_vector is " + magnitude.value.str());
  const double s = scaling();
  std::vector<double> n2(static_cast<size_t>(out), 0.0);
  if (how == DoraNorm::Reference) {
    // W + s·B A, materialized [out, in] (what PEFT's get_weight_norm does).
    Tensor w = Tensor::zeros({out, in});
    base.weight_rows(0, out, w.f32());
    kernels::gemm(B.value, false, A.value, false, w, scaling(), 1.0f);
    for (int64_t i = 0; i < out; ++i) {
      const float* row = w.f32() + i * in;
      double acc = 0;
      for (int64_t j = 0; j < in; ++j) acc += static_cast<double>(row[j]) * row[j];
      n2[static_cast<size_t>(i)] = acc;
    }
  } else {
    // ‖w_i‖²: rows of W in tiles of about 64 KiB (dequantized for a quantized base), kept while
    // the base is frozen and unchanged (every forward needs them; W is the bulk of the work).
    const bool keep = !base.weight.trainable;
    const uint64_t gen = nn::weight_generation();
    if (!keep || w_norm2_src_ != base.weight.value.raw() || w_norm2_gen_ != gen ||
        w_norm2_.size() != static_cast<size_t>(out)) {
      w_norm2_.assign(static_cast<size_t>(out), 0.0);
      const int64_t tr = std::clamp<int64_t>((16 * 1024) / std::max<int64_t>(in, 1), 1, out);
      const int64_t tiles = (out + tr - 1) / tr;
#pragma omp parallel if (tiles > 1)
      {
        std::vector<float> tile(static_cast<size_t>(tr * in));
#pragma omp for schedule(static)
        for (int64_t ti = 0; ti < tiles; ++ti) {
          const int64_t r0 = ti * tr, r1 = std::min(out, r0 + tr);
          base.weight_rows(r0, r1, tile.data());
          for (int64_t i = r0; i < r1; ++i) {
            const float* row = tile.data() + (i - r0) * in;
            double acc = 0;
            for (int64_t j = 0; j < in; ++j) acc += static_cast<double>(row[j]) * row[j];
            w_norm2_[static_cast<size_t>(i)] = acc;
          }
        }
      }
      w_norm2_src_ = keep ? base.weight.value.raw() : nullptr;
      w_norm2_gen_ = gen;
    }
    n2 = w_norm2_;
    // AW = A Wᵀ [r, out]; G = A Aᵀ [r, r].
    Tensor aw = Tensor::zeros({r, out});
    base.matmul_weight(A.value, aw);
    Tensor g = Tensor::zeros({r, r});
    kernels::gemm(A.value, false, A.value, true, g);
    const float* pb = B.value.f32();
    const float* paw = aw.f32();
    const float* pg = g.f32();
    for (int64_t i = 0; i < out; ++i) {
      const float* bi = pb + i * r;
      double cross = 0, quad = 0;
      for (int64_t a = 0; a < r; ++a) {
        cross += static_cast<double>(bi[a]) * paw[a * out + i];
        double gb = 0;
        for (int64_t c = 0; c < r; ++c) gb += static_cast<double>(pg[a * r + c]) * bi[c];
        quad += static_cast<double>(bi[a]) * gb;
      }
      n2[static_cast<size_t>(i)] += 2.0 * s * cross + s * s * quad;
    }
  }
  Tensor norm = Tensor::zeros({out});
  for (int64_t i = 0; i < out; ++i)
    norm.f32()[i] = static_cast<float>(std::sqrt(std::max(0.0, n2[static_cast<size_t>(i)])));
  return norm;
}

void DoraLinear::forward(nn::Context& ctx, const nn::Linear& base, const Tensor& x, Tensor& y) {
  const int64_t in = base.in_features(), out = base.out_features(), r = this->r();
  const int64_t n = x.numel() / in;
  const float s = scaling();
  // k = m / ‖W + s·B A‖ (a constant for backward).
  norm_ = fixed_norm.defined() ? fixed_norm.clone() : weight_norm(base, norm_mode);
  k_ = Tensor::zeros({out});
  for (int64_t i = 0; i < out; ++i) k_.f32()[i] = magnitude.value.f32()[i] / norm_.f32()[i];

  Tensor xd = drop.forward(ctx, x, n, in);
  const bool dropped = drop.dropped();
  // Another active adapter before this one has already added to y: PEFT folds it into u (and
  // upstream_grad gives it k ⊙ dy).
  xd_ = xd;
  h_ = ctx.alloc({n, r});
  v_ = ctx.alloc({n, out});
  if (n == 0) return;
  Tensor y2 = y.view({n, out});
  float* pv = v_.f32();
  float* py = y2.f32();
  // u: the base output without bias (PEFT's base_result).
  // y = y − u + k ⊙ (u + s·h Bᵀ), i.e. y += (k − 1) ⊙ u + k ⊙ s·B A drop(x).
  const bool par = n * out >= kParallelElems;
  if (dropped) {
    base.matmul_weight(xd, v_);  // u = drop(x) Wᵀ
#pragma omp parallel for schedule(static) if (par)
    for (int64_t t = 0; t < n; ++t)
      for (int64_t i = 0; i < out; ++i) py[t * out + i] -= pv[t * out + i];
  } else {
    const float* b = base.has_bias() ? base.bias.value.f32() : nullptr;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t t = 0; t < n; ++t)
      for (int64_t i = 0; i < out; ++i) {  // u = y − b; y − u = b
        const float u = b ? py[t * out + i] - b[i] : py[t * out + i];
        pv[t * out + i] = u;
        py[t * out + i] -= u;
      }
  }
  kernels::gemm(xd, false, A.value, true, h_);                // h [n, r] = drop(x) Aᵀ
  kernels::gemm(h_, false, B.value, true, v_, s, 1.0f);       // v = u + s · h Bᵀ
  const float* k = k_.f32();
#pragma omp parallel for schedule(static) if (par)
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < out; ++i) py[t * out + i] += k[i] * pv[t * out + i];
}

Tensor DoraLinear::upstream_grad(nn::Context& ctx, const Tensor& dy) const {
  // Without dropout u = y − b is what arrived here (x Wᵀ and the adapters before this one), and
  // y − b = k ⊙ u + k ⊙ s·h Bᵀ: u's gradient is k ⊙ dy. Linear takes it through x Wᵀ (no second
  // product with W) and gives it to the earlier adapters. With dropout u is a product of its own
  // (drop(x) Wᵀ, in backward): the base output only passes through.
  if (drop.dropped() || !k_.defined() || !h_.defined()) return dy;
  const int64_t out = k_.numel(), n = dy.numel() / out;
  Tensor g = Tensor::empty(dy.shape());  // heap: freed when Linear::backward returns
  const float* k = k_.f32();
  const float* s = dy.f32();
  float* d = g.f32();
#pragma omp parallel for schedule(static) if (n * out >= kParallelElems)
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < out; ++i) d[t * out + i] = k[i] * s[t * out + i];
  return g;
}

void DoraLinear::backward(nn::Context& ctx, const nn::Linear& base, const Tensor& dy, Tensor* dx) {
  if (!h_.defined()) fail("DoRA backward called before forward");
  const int64_t in = base.in_features(), out = base.out_features(), r = this->r();
  const int64_t n = h_.dim(0);
  if (n == 0) return;
  const float s = scaling();
  Tensor dy2 = dy.view({n, out});
  const float* pdy = dy2.f32();
  const float* k = k_.f32();
  // dm_i += Σ_t dy[t, i] · v[t, i] / ‖·‖_i
  const bool par = n * out >= kParallelElems;
  if (magnitude.trainable) {
    // Partial sums over fixed blocks of rows, added in block order: the same result on any
    // number of threads.
    constexpr int64_t kRows = 64;
    const int64_t blocks = (n + kRows - 1) / kRows;
    std::vector<double> part(static_cast<size_t>(blocks * out), 0.0);
    const float* pv = v_.f32();
#pragma omp parallel for schedule(static) if (par && blocks > 1)
    for (int64_t bl = 0; bl < blocks; ++bl) {
      double* acc = part.data() + bl * out;
      for (int64_t t = bl * kRows; t < std::min(n, (bl + 1) * kRows); ++t)
        for (int64_t i = 0; i < out; ++i)
          acc[i] += static_cast<double>(pdy[t * out + i]) * pv[t * out + i];
    }
    float* gm = magnitude.grad.f32();
    for (int64_t i = 0; i < out; ++i) {
      double acc = 0;
      for (int64_t bl = 0; bl < blocks; ++bl) acc += part[static_cast<size_t>(bl * out + i)];
      gm[i] += static_cast<float>(acc / norm_.f32()[i]);
    }
  }
  const bool need_dh = A.trainable || dx != nullptr;
  if (!B.trainable && !need_dh) return;
  // g = k ⊙ dy: the LoRA branch's output gradient. A heap temporary, freed on return (the arena
  // would hold it until the end of the step).
  Tensor g = Tensor::empty({n, out});
  float* pg = g.f32();
#pragma omp parallel for schedule(static) if (par)
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < out; ++i) pg[t * out + i] = k[i] * pdy[t * out + i];
  if (B.trainable) kernels::gemm(g, true, h_, false, B.grad, s, 1.0f);  // dB += s gᵀ h
  if (!need_dh) return;
  Tensor dh = ctx.alloc({n, r});
  kernels::gemm(g, false, B.value, false, dh, s, 0.0f);  // dh = s · g B
  if (A.trainable) kernels::gemm(dh, true, xd_, false, A.grad, 1.0f, 1.0f);  // dA += dhᵀ drop(x)
  const bool dropped = drop.dropped();
  if (dx == nullptr && !(dropped && base.weight.trainable)) return;
  if (dx == nullptr) {
    for (int64_t t = 0; t < n; ++t)
      for (int64_t i = 0; i < out; ++i) pg[t * out + i] = (k[i] - 1.0f) * pdy[t * out + i];
    Tensor wg = base.weight.grad;
    kernels::gemm(g, true, xd_, false, wg, 1.0f, 1.0f);
    return;
  }
  Tensor dx2 = dx->view({n, in});
  if (!dropped) {
    // ((k − 1) ⊙ dy) W is already in dx: Linear used k ⊙ dy for the base (upstream_grad).
    kernels::gemm(dh, false, A.value, false, dx2, 1.0f, 1.0f);
    return;
  }
  // d(drop x) = ((k − 1) ⊙ dy) W + dh A; g is reused for (k − 1) ⊙ dy.
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < out; ++i) pg[t * out + i] = (k[i] - 1.0f) * pdy[t * out + i];
  if (base.weight.trainable) {  // a trainable base (not PEFT's use): u = drop(x) Wᵀ adds to dW
    Tensor wg = base.weight.grad;  // shares the gradient's storage
    kernels::gemm(g, true, xd_, false, wg, 1.0f, 1.0f);
  }
  Tensor dxd = ctx.alloc({n, in});
  base.matmul_weight_t(g, dxd);
  kernels::gemm(dh, false, A.value, false, dxd, 1.0f, 1.0f);
  drop.backward_add(dxd, dx2);
}

void DoraLinear::merge(nn::Linear& base) {
  if (merged) return;
  if (base.weight.value.dtype() != tensor::DType::F32)
    fail(std::string("DoRA merge needs an F32 base weight, got ") +
         tensor::dtype_name(base.weight.value.dtype()) + " (load the model with dequantize)");
  for (const nn::LinearAdapter* a : base.adapters) {
    auto* l = dynamic_cast<const AdapterLayer*>(a);
    if (a != this && l != nullptr && l->merged)
      fail("DoRA merge on Linear " + shape_of(base) +
           ": another adapter is already merged into this weight (PEFT takes the DoRA norm of the "
           "weight without it); unmerge it first");
  }
  const int64_t in = base.in_features(), out = base.out_features();
  Tensor& w = base.weight.value;
  Tensor d = delta_weight();  // s · B A
  kernels::axpy(1.0f, d, w);  // W + s·B A
  merged_norm_ = Tensor::zeros({out});
  float* pw = w.f32();
  for (int64_t i = 0; i < out; ++i) {
    double acc = 0;
    for (int64_t j = 0; j < in; ++j) acc += static_cast<double>(pw[i * in + j]) * pw[i * in + j];
    const float nrm = static_cast<float>(std::sqrt(acc));
    merged_norm_.f32()[i] = nrm;
    const float f = magnitude.value.f32()[i] / nrm;
    for (int64_t j = 0; j < in; ++j) pw[i * in + j] *= f;
  }
  nn::weights_changed();
  merged = true;
}

void DoraLinear::unmerge(nn::Linear& base) {
  if (!merged) return;
  const int64_t in = base.in_features(), out = base.out_features();
  float* pw = base.weight.value.f32();
  for (int64_t i = 0; i < out; ++i) {
    const float f = magnitude.value.f32()[i] / merged_norm_.f32()[i];
    for (int64_t j = 0; j < in; ++j) pw[i * in + j] /= f;
  }
  Tensor d = delta_weight();
  kernels::axpy(-1.0f, d, base.weight.value);
  merged_norm_ = Tensor();
  nn::weights_changed();
  merged = false;
}

}  // namespace lorafit::peft
