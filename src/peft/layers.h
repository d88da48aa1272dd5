// The adapter layers: one per targeted nn::Linear, owned by PeftModel (internal to peft; tests
// and benchmarks include it to check a layer alone).
//
//   AdapterLayer   what PeftModel and MixedBatch use of every layer: its named tensors (with
//                  the keys they are saved under), forward / backward (nn::LinearAdapter),
//                  ΔW, merge / unmerge, the active flags and mixed-batch routing.
//   InputDropout   PEFT's lora_dropout on the layer input, written once for the three layers.
//   LoraLinear     LoRA; DoraLinear (use_dora) and SVDLinear (AdaLoRA) build on it.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "lorafit/nn.h"
#include "lorafit/peft.h"
#include "lorafit/tensor.h"

namespace lorafit::peft {

// ---- the adapter interface ---------------------------------------------------------------------

// Inverted dropout on an adapter's input x [n, in]: in training with p > 0 each value is kept
// with probability 1 − p (draw i of a counter-based reservation from ctx: random_uniform >= p)
// and scaled by 1 / (1 − p). The mask is not stored: backward regenerates it from the
// (seed, counter) that forward reserved.
class InputDropout {
 public:
  explicit InputDropout(float p = 0.0f);  // throws unless p in [0, 1)
  float p() const { return p_; }
  // drop(x) as [n, in]: a view of x when not dropping, else a new tensor from ctx.
  Tensor forward(nn::Context& ctx, const Tensor& x, int64_t n, int64_t in);
  bool dropped() const { return dropped_; }  // the last forward applied a mask
  // dx [n, in] += mask ⊙ g / (1 − p) (the last forward's mask); dx += g when it did not drop.
  void backward_add(const Tensor& g, Tensor& dx) const;

 private:
  float p_ = 0.0f;
  bool dropped_ = false;
  uint64_t seed_ = 0, counter_ = 0;
};

class AdapterLayer : public nn::LinearAdapter {
 public:
  // The layer's tensors with the key suffix each is saved under after
  // "base_model.model.<module path>.", in saved order (LoRA: lora_A.weight, lora_B.weight;
  // DoRA adds lora_magnitude_vector; AdaLoRA: lora_A, lora_B, lora_E, without ".weight").
  // (const: listing changes nothing; the pointers are the layer's own parameters.)
  virtual std::vector<std::pair<std::string, nn::Parameter*>> named_tensors() const = 0;
  // The tensors save_pretrained writes for this layer under key = "base_model.model.<path>":
  // named_tensors() by default; AdaLoRA prunes them by cfg's rank_pattern.
  virtual void append_state(const AdapterConfig& cfg, const std::string& key,
                            std::vector<std::pair<std::string, Tensor>>& out) const;
  // Parameters PEFT counts besides named_tensors() (AdaLoRA's ranknum buffer: 1).
  virtual int64_t extra_parameter_count() const { return 0; }
  virtual const char* method() const = 0;  // "LoRA", "DoRA", "AdaLoRA" (for messages)
  // ΔW [out, in] the layer adds to the base weight (merge takes it; DoRA also rescales rows).
  virtual Tensor delta_weight() const = 0;
  virtual void merge(nn::Linear& base) = 0;
  virtual void unmerge(nn::Linear& base) = 0;

  // Mixed-batch routing (MixedBatch) makes every layer active; it then applies to its rows only.
  bool active() const override { return (enabled || route != nullptr) && !merged; }
  // Every named tensor trainable (with a zero gradient) or frozen.
  void set_trainable(bool t);

  bool enabled = true;       // part of the active set (PeftModel::set_adapter)
  bool merged = false;       // ΔW is inside base.weight: forward adds nothing
  std::string adapter_name;  // the adapter this layer belongs to (mixed-batch routing)
  // Set by MixedBatch while it lives: one adapter name per example of the batch; forward then
  // adds this layer's part to the rows of the examples naming adapter_name only.
  const std::vector<std::string>* route = nullptr;
  InputDropout drop;  // lora_dropout

 protected:
  explicit AdapterLayer(float dropout) : drop(dropout) {}
};

// ---- LoRA ----------------------------------------------------------------------------------

// ---- the LoRA layer --------------------------------------------------------------------------

// LoRA branch on one Linear. forward adds s · B A drop(x) to y; backward accumulates A.grad and
// B.grad (when trainable) and adds the input gradient of the branch to dx:
//   h = drop(x) Aᵀ [n, r];  y += s · h Bᵀ
//   dB += s · dyᵀ h;  dh = s · dy B;  dA += dhᵀ drop(x);  dx += drop'(dh A)
// Saved for backward: x (a reference) and h [n, r]; the dropout mask is regenerated.
class LoraLinear : public AdapterLayer {
 public:
  // A [r, in], B [out, r] allocated zero; init() fills them.
  LoraLinear(const nn::Linear& base, int64_t r, double alpha, bool use_rslora, float dropout);

  // Fills A and B as PEFT does for `init`, drawing from `seed` (counter-based, reproducible).
  // Pissa/Olora also rewrite base.weight (must be F32) to W − s·B A.
  // (virtual: DoraLinear also sets its magnitude.)
  virtual void init(nn::Linear& base, LoraInit init, uint64_t seed);

  void forward(nn::Context& ctx, const nn::Linear& base, const Tensor& x, Tensor& y) override;
  void backward(nn::Context& ctx, const nn::Linear& base, const Tensor& dy, Tensor* dx) override;

  // lora_A.weight, lora_B.weight.
  std::vector<std::pair<std::string, nn::Parameter*>> named_tensors() const override;
  const char* method() const override { return "LoRA"; }
  // ΔW = s · B A [out, in] (merge/unmerge use it).
  Tensor delta_weight() const override;
  // W += ΔW / W −= ΔW on an F32 base weight (throws for a quantized base: dequantize first).
  void merge(nn::Linear& base) override;
  void unmerge(nn::Linear& base) override;

  int64_t r() const { return r_; }
  double alpha() const { return alpha_; }
  float scaling() const { return scaling_; }

  nn::Parameter A{nn::ParamRole::LowRankA};  // lora_A.weight [r, in]
  nn::Parameter B{nn::ParamRole::LowRankB};  // lora_B.weight [out, r]

 private:
  int64_t r_ = 0;
  double alpha_ = 0.0;
  float scaling_ = 1.0f;
  Tensor x_, h_;
  bool routed_ = false;  // last forward was a mixed batch (no backward)
  void forward_routed(nn::Context& ctx, const nn::Linear& base, const Tensor& x, Tensor& y);
};

// ---- DoRA (Liu et al. 2024; PEFT use_dora) ----------------------------------------------------

// How DoraLinear gets the row norms ‖W + s·B A‖ [out]:
//   Fast       ‖w_i‖² + 2s·B_i (A w_i) + s²·B_i (A Aᵀ) B_iᵀ: one [r, in]·Wᵀ product and an r×r
//              Gram matrix; nothing of size [out, in] is allocated.
//   Reference  materializes W + s·B A [out, in] and takes its row norms, as PEFT does (kept for
//              tests and for the benchmark).
enum class DoraNorm { Fast, Reference };

// DoRA on one Linear: W' = m ⊙ (W + s·B A) / ‖W + s·B A‖ row-wise, with the norm treated as a
// constant in backward (DoRA §4.3; PEFT always detaches it). Forward as PEFT's DoraLinearLayer,
// with k = m / ‖W + s·B A‖ [out]:
//   no dropout (or eval):  u = y − b (y as it arrives: x Wᵀ + b plus any adapter attached
//                          before this one, exactly as PEFT's base_result)
//   dropout in training:   u = drop(x) Wᵀ (a second product with the base weight)
//   y += (k − 1) ⊙ u + k ⊙ s · drop(x) Aᵀ Bᵀ
// Backward (v = u + s · h Bᵀ saved [n, out], h = drop(x) Aᵀ [n, r]):
//   dm += Σ_rows dy ⊙ v / ‖·‖;  g = k ⊙ dy;  dB += s gᵀ h;  dh = s g B;  dA += dhᵀ drop(x)
//   dx += drop'(((k − 1) ⊙ dy) W + dh A)
// Without dropout the (k − 1) term is folded into the base product instead (upstream_grad()
// returns k ⊙ dy: Linear computes (k ⊙ dy) W once, as autograd does for PEFT), so DoRA adds no
// product with W to LoRA's backward; with dropout it is a second product, as in PEFT. An adapter
// active before this one on the same Linear is part of u, so it gets k ⊙ dy too.
// magnitude = lora_magnitude_vector [out], F32, trainable with A and B.
class DoraLinear : public LoraLinear {
 public:
  DoraLinear(const nn::Linear& base, int64_t r, double alpha, bool use_rslora, float dropout);

  // LoRA init, then m = ‖W + s·B A‖ per row, as PEFT's dora_init (so the adapted weight starts
  // equal to W + s·B A; with B = 0, m = ‖W‖).
  void init(nn::Linear& base, LoraInit init, uint64_t seed) override;

  void forward(nn::Context& ctx, const nn::Linear& base, const Tensor& x, Tensor& y) override;
  void backward(nn::Context& ctx, const nn::Linear& base, const Tensor& dy, Tensor* dx) override;

  // ‖W + s·B A‖ per output row [out] (F32; accumulated in double), by `how`.
  Tensor weight_norm(const nn::Linear& base, DoraNorm how) const;
  // W ← (m / ‖W + s·B A‖) ⊙ (W + s·B A) row-wise (F32 base); the norm is kept for unmerge, which
  // computes W ← W / (m / norm) − s·B A. Throws when another adapter is merged into the same
  // base (PEFT then takes the norm of the weight without it; not supported here).
  void merge(nn::Linear& base) override;
  void unmerge(nn::Linear& base) override;
  // lora_A.weight, lora_B.weight, lora_magnitude_vector.
  std::vector<std::pair<std::string, nn::Parameter*>> named_tensors() const override;
  const char* method() const override { return "DoRA"; }
  // k ⊙ dy after a forward without dropout (see above); dy otherwise.
  Tensor upstream_grad(nn::Context& ctx, const Tensor& dy) const override;

  nn::Parameter magnitude{nn::ParamRole::Scale};  // lora_magnitude_vector [out]
  DoraNorm norm_mode = DoraNorm::Fast;
  // For finite-difference checks only: when defined ([out]), forward uses it as ‖W + s·B A‖, so
  // the norm is a true constant and the detached-norm gradients are exact derivatives.
  Tensor fixed_norm;

 private:
  Tensor xd_, h_, v_, norm_, k_;  // saved by forward
  Tensor merged_norm_;            // ‖W + s·B A‖ at merge time
  // ‖w_i‖² of a frozen base, kept between forwards (the fast norm's one pass over all of W);
  // made again when the weight's storage or nn::weight_generation() changes.
  mutable std::vector<double> w_norm2_;
  mutable const void* w_norm2_src_ = nullptr;
  mutable uint64_t w_norm2_gen_ = 0;
};

// ---- AdaLoRA (Zhang et al. 2023; PEFT peft/tuners/adalora, peft 0.21.2) ----------------------
//
// SVDLinear       the SVD-shaped branch on one Linear: y += (drop(x) (A ⊙ E)ᵀ Bᵀ) · s,
//                 s = lora_alpha / (ranknum + 1e-5) (lora_alpha <= 0: r), ranknum = init_r (it
//                 stays init_r after pruning, as PEFT's resize keeps it). A = lora_A [r, in],
//                 E = lora_E [r, 1], B = lora_B [out, r]; saved keys have no ".weight":
//                 base_model.model.<path>.lora_A / .lora_E / .lora_B.
// (adalora_orth_reg and RankAllocator: lorafit/peft.h.)
class SVDLinear : public LoraLinear {
 public:
  // A, E, B allocated zero with rank r; init_svd fills them.
  SVDLinear(const nn::Linear& base, int64_t r, double alpha, int64_t ranknum, float dropout);
  // PEFT reset_lora_parameters: E = 0, A, B ~ N(0, 0.02²) (init_lora_weights true); false keeps
  // torch.randn: A, E, B ~ N(0, 1). Counter-based stream from `seed`.
  void init_svd(bool init_lora_weights, uint64_t seed);

  // forward: AE = A ⊙ E, h = xd AEᵀ [n, r], y += s · h Bᵀ. backward:
  //   dB += s dyᵀ h;  dh = s dy B;  dAE = dhᵀ xd;  dA += dAE ⊙ E;  dE_i += Σ_j dAE_ij A_ij;
  //   dx += drop'(dh AE)
  void forward(nn::Context& ctx, const nn::Linear& base, const Tensor& x, Tensor& y) override;
  void backward(nn::Context& ctx, const nn::Linear& base, const Tensor& dy, Tensor* dx) override;
  Tensor delta_weight() const override;  // s · B (A ⊙ E) [out, in]
  // lora_A, lora_B, lora_E (PEFT's AdaLoRA keys have no ".weight").
  std::vector<std::pair<std::string, nn::Parameter*>> named_tensors() const override;
  // Pruned as PEFT's resize_state_dict_by_rank_pattern: rows of A and E, columns of B where
  // cfg's rank_pattern keeps them (unpruned when it has no entry for this module).
  void append_state(const AdapterConfig& cfg, const std::string& key,
                    std::vector<std::pair<std::string, Tensor>>& out) const override;
  int64_t extra_parameter_count() const override { return 1; }  // PEFT's ranknum [1]
  const char* method() const override { return "AdaLoRA"; }

  int64_t rank() const { return A.value.dim(0); }
  int64_t ranknum() const { return ranknum_; }
  float svd_scaling() const { return svd_scaling_; }

  nn::Parameter E{nn::ParamRole::Scale};  // lora_E [r, 1]

 private:
  int64_t ranknum_ = 0;
  float svd_scaling_ = 1.0f;
  Tensor xd_, h_, ae_;
};

// Test access to the RankAllocator's last triplet scores S (per layer, of the last mask
// computation).
struct RankAllocatorProbe {
  static const std::vector<std::vector<float>>& last_scores(const RankAllocator& a) {
    return a.scores_;
  }
};

}  // namespace lorafit::peft
