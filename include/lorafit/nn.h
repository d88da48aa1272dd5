// lorafit nn: modules with explicit forward and backward (DESIGN.md decision 1, as llm.c).
// A module keeps what its backward needs during forward (in the Context's arena when it has one)
// and its backward computes the input gradient and, for trainable parameters only, parameter
// gradients. Parameter gradients accumulate (+=); call zero_grad() between steps. Frozen
// parameters never get gradient buffers. Input gradients are written (=) into new tensors.
//
// Shapes: activations are [B, T, C] (or [N, C]); Linear works on any [..., in]. All activations
// are F32. A module remembers only its last forward: call backward before the next forward of the
// same module instance, and do not overwrite a tensor that a module saved (noted per module)
// before its backward ran.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "lorafit/kernels.h"
#include "lorafit/tensor.h"

namespace lorafit::nn {

using tensor::DType;
using tensor::Shape;
using tensor::Tensor;

// Names of every module type, for the op checker's coverage test.
const std::vector<std::string>& module_names();

// Carries what a forward/backward pass needs besides its inputs: where activations live, whether
// we train (dropout on), and the seeded random stream for dropout.
struct Context {
  tensor::Arena* arena = nullptr;  // per-step activations; nullptr = heap
  bool training = false;
  // Forward only: no backward follows, so models free each layer's activations as soon as the
  // next layer has its input (with an arena). Set by evaluation and prediction.
  bool no_grad = false;
  uint64_t seed = 0;
  uint64_t rng_counter = 0;  // advanced by every random draw, so a step is reproducible

  Tensor alloc(const Shape& shape, DType dtype = DType::F32);
  Tensor zeros(const Shape& shape, DType dtype = DType::F32);
  // Reserves n draws of the counter-based stream: returns the current rng_counter and advances it
  // by n. Draw i of the reservation is random_u64(seed, returned + i).
  uint64_t take_rng(uint64_t n);
};

// Counter-based random numbers (splitmix64 of the mixed seed plus the counter): the same
// (seed, counter) always gives the same value, so a backward pass can regenerate a dropout mask
// instead of storing it, and threads need no shared state.
inline uint64_t random_u64(uint64_t seed, uint64_t counter) {
  // splitmix64's output function (Steele, Lea, Flood 2014), a bijective avalanche mix, applied
  // to draw `counter` of the splitmix64 sequence started at mix(seed): mixing the seed first
  // keeps nearby seeds (1, 2, ...) from giving shifted copies of the same stream.
  auto mix = [](uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  return mix(mix(seed) + (counter + 1) * 0x9E3779B97F4A7C15ull);
}
// Uniform in [0, 1) with 53 random bits.
inline double random_uniform(uint64_t seed, uint64_t counter) {
  return static_cast<double>(random_u64(seed, counter) >> 11) * (1.0 / 9007199254740992.0);
}

// What a parameter is, for optimizers (weight decay, learning-rate groups); set by the module or
// adapter that owns it, so that no one has to guess it from a name.
enum class ParamRole : uint8_t {
  Weight,    // a weight matrix or an embedding table
  Bias,      // a bias (no weight decay, as transformers' Trainer)
  Norm,      // a LayerNorm / RMSNorm scale or shift (no weight decay)
  LowRankA,  // the input-side factor A of a low-rank update B·A (LoRA's lora_A)
  LowRankB,  // its output-side factor B (lora_B; LoRA+ trains it with a larger learning rate)
  Scale,     // a per-feature or per-rank scale of an update (DoRA's magnitude, AdaLoRA's lora_E)
};

// A weight with a trainable flag. grad exists (same shape, F32, zeroed) only while trainable;
// only an F32 value can be trainable.
struct Parameter {
  Parameter() = default;
  explicit Parameter(ParamRole r) : role(r) {}

  Tensor value;
  Tensor grad;
  bool trainable = false;
  ParamRole role = ParamRole::Weight;

  void set_trainable(bool t);  // true allocates a zero grad, false frees it
  void zero_grad();            // no-op when frozen
};

using NamedParameters = std::vector<std::pair<std::string, Parameter*>>;

class Module {
 public:
  virtual ~Module() = default;
  // Appends this module's parameters as "<prefix><name>" (Hugging Face names: weight, bias;
  // submodules as "<prefix><child>.<name>", e.g. "q_proj.weight").
  virtual void parameters(const std::string& prefix, NamedParameters& out) = 0;
  NamedParameters named_parameters(const std::string& prefix = "");
  void zero_grad();
  void set_trainable(bool t);
};

class Linear;

// An adapter attached to a Linear (LoRA, DoRA, AdaLoRA: peft/), owned elsewhere.
// Linear::forward computes y = x Wᵀ + b, then calls forward() of every attached adapter that is
// active(), in order; Linear::backward calls their backward() in reverse order. An adapter keeps
// what its backward needs (as a module does), may read base.weight / base.bias (DoRA needs W·x
// and row norms of W; recompute W·x from y − b or through the weight), and decides itself which
// rows it applies to (mixed-batch routing). Several adapters on one Linear add up.
class LinearAdapter {
 public:
  virtual ~LinearAdapter() = default;
  // x [..., in]; y [..., out] holds x Wᵀ + b plus what the adapters before this one added: add
  // this adapter's part in place (or transform y − b, see upstream_grad).
  virtual void forward(Context& ctx, const Linear& base, const Tensor& x, Tensor& y) = 0;
  // dy [..., out]: the gradient of this adapter's output. Accumulates the adapter's parameter
  // gradients (+=, trainable ones only) and, when dx is not null, adds the input gradient of the
  // adapter's own path to *dx [..., in].
  virtual void backward(Context& ctx, const Linear& base, const Tensor& dy, Tensor* dx) = 0;
  // false: skipped in forward and backward (disabled, or merged into the weight).
  virtual bool active() const { return true; }
  // The gradient of what arrived at this adapter without the bias (z = x Wᵀ + the parts of the
  // adapters before it; y − b), given dy of this adapter's output, after its forward. Default dy:
  // the adapter only adds to y. An adapter whose output is a function of z too (DoRA without
  // dropout: y − b = k ⊙ z + ...) returns its derivative; Linear then takes W's and x's gradients
  // through x Wᵀ, and the earlier adapters' backward, with it (the bias gets dy: no adapter
  // changes it). Chained over the attached adapters, last to first.
  virtual Tensor upstream_grad(Context& ctx, const Tensor& dy) const { return dy; }
};

// y = x Wᵀ + b. weight [out, in], bias [out] optional (F32). A frozen weight may also be F16,
// BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K or Q6_K (tensor::dequantize_row), or NF4 (bitsandbytes
// NF4/FP4 made by tensor::quant4_tensor): it is multiplied through fp32 tiles of rows (about
// 16 MiB, kept per thread; see tile_rows in linear.cpp), never a full dequantized copy. Other dtypes are refused by
// name in forward and backward.
// Saved for backward: the input x (a reference, not a copy).
class Linear : public Module {
 public:
  Linear() = default;
  // Allocates a zero F32 weight [out, in] (and zero bias [out]); loaders replace weight.value.
  Linear(int64_t in_features, int64_t out_features, bool bias);
  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  bool has_bias() const { return bias.value.defined(); }

  Tensor forward(Context& ctx, const Tensor& x);  // x [..., in] -> [..., out]
  // dy [..., out]. Returns dx [..., in] when need_input_grad, else an undefined tensor.
  // weight.grad += dyᵀ x and bias.grad += sum(dy) only for trainable parameters. Active
  // adapters run their backward either way (dx = nullptr when !need_input_grad).
  Tensor backward(Context& ctx, const Tensor& dy, bool need_input_grad = true);
  void parameters(const std::string& prefix, NamedParameters& out) override;

  // Products with the weight alone (no bias, no adapters), through the same fp32 tiles as
  // forward/backward for a quantized weight (adapters such as DoRA need W·x and row norms of W):
  //   matmul_weight:   y [n, out] = x [n, in] · Wᵀ + beta · y
  //   matmul_weight_t: dx [n, in] = dy [n, out] · W + beta · dx
  //   weight_rows:     rows [r0, r1) of W as fp32 into dst [(r1 - r0) · in]
  void matmul_weight(const Tensor& x, Tensor& y, float beta = 0.0f) const;
  void matmul_weight_t(const Tensor& dy, Tensor& dx, float beta = 0.0f) const;
  void weight_rows(int64_t r0, int64_t r1, float* dst) const;
  // kernels::compute_dtype() == BF16 and the weight is frozen and dense (F32, F16, BF16): the two
  // products above run in BF16 (fp32 accumulation) against a BF16 copy of W made once and kept
  // (a BF16 weight is used as it is). Code that changes a weight in place calls
  // nn::weights_changed() so that the copies are made again.
  bool uses_bf16() const;
  // kernels::compute_dtype() == BF16 and the weight is frozen and block-quantized (Q8_0 ... NF4):
  // each fp32 tile of dequantized rows is rounded to BF16 and multiplied in BF16 (fp32 sums); no
  // copy of W is kept.
  bool uses_bf16_tiles() const;

  Parameter weight;
  Parameter bias{ParamRole::Bias};
  // Attached adapters, not owned (the peft layer attaches and detaches them). Applied after
  // x Wᵀ + b in forward, in reverse in backward.
  std::vector<LinearAdapter*> adapters;

 private:
  int64_t in_ = 0, out_ = 0;
  Tensor x_;  // saved input [..., in]
  struct Bf16Copy;
  mutable std::shared_ptr<Bf16Copy> bf16_;  // the BF16 copy of a frozen F32/F16 weight
  const uint16_t* bf16_weight() const;
};

// Every Linear's BF16 copy of its weight (--compute-dtype bf16) is made again before its next
// use: call after changing a weight in place (merge, unmerge, PiSSA/OLoRA's residual).
void weights_changed();
// How many times weights_changed() was called: caches derived from frozen weights (BF16 copies,
// DoRA's ‖W‖² rows) compare it with the value they were made under.
uint64_t weight_generation();

// out[..., :] = table[ids[...], :]; table [V, C] (F32, or F16/BF16/Q8_0/Q4_0/Q4_1/Q4_K/Q5_K/
// Q6_K when frozen: only the gathered rows are converted).
// Saved for backward: ids.
class Embedding : public Module {
 public:
  Embedding() = default;
  Embedding(int64_t vocab, int64_t dim);
  Tensor forward(Context& ctx, const Tensor& ids);  // ids I32 [...] -> [..., C]
  void backward(Context& ctx, const Tensor& dy);    // weight grad only (ids are not differentiable)
  void parameters(const std::string& prefix, NamedParameters& out) override;

  Parameter weight;

 private:
  Tensor ids_;
};

// y = (x - mean) * rstd * weight + bias over the last dimension. Parameters F32.
// Saved: x (reference) [N, C], mean and rstd [N].
class LayerNorm : public Module {
 public:
  LayerNorm() = default;
  LayerNorm(int64_t dim, float eps, bool bias = true);  // weight = 1, bias = 0
  Tensor forward(Context& ctx, const Tensor& x);        // [..., C]
  Tensor backward(Context& ctx, const Tensor& dy);
  void parameters(const std::string& prefix, NamedParameters& out) override;

  Parameter weight{ParamRole::Norm};
  Parameter bias{ParamRole::Norm};
  float eps = 1e-12f;

 private:
  Tensor x_, mean_, rstd_;
};

// y = x * rsqrt(mean(x²) + eps) * weight (Llama). Saved: x (reference) [N, C], rstd [N].
class RMSNorm : public Module {
 public:
  RMSNorm() = default;
  RMSNorm(int64_t dim, float eps);  // weight = 1
  Tensor forward(Context& ctx, const Tensor& x);
  Tensor backward(Context& ctx, const Tensor& dy);
  void parameters(const std::string& prefix, NamedParameters& out) override;

  Parameter weight{ParamRole::Norm};
  float eps = 1e-6f;

 private:
  Tensor x_, rstd_;
};

// Inverted dropout: in training, zero with probability p and scale the rest by 1/(1-p); identity
// otherwise (then forward returns x itself and backward dy itself, no copy). The mask comes from
// (ctx.seed, ctx.rng_counter) through the counter-based generator (one random_u64 per two
// elements, so a call reserves ceil(numel / 2) counters), so a seeded run is reproducible;
// backward regenerates the mask from the saved (seed, counter) instead of storing it. 0 <= p < 1.
class Dropout : public Module {
 public:
  Dropout() = default;
  explicit Dropout(float p) : p(p) {}
  Tensor forward(Context& ctx, const Tensor& x);
  Tensor backward(Context& ctx, const Tensor& dy);
  void parameters(const std::string&, NamedParameters&) override {}

  float p = 0.0f;

 private:
  bool active_ = false;  // last forward dropped (training and p > 0)
  uint64_t seed_ = 0, counter_ = 0;
  Shape shape_;
};

// Feed-forward block. Gelu: down(gelu(up(x))) (BERT: intermediate.dense / output.dense).
// SwiGLU: down(silu(gate(x)) * up(x)) (Llama: gate_proj, up_proj, down_proj).
enum class MlpKind { Gelu, SwiGLU };

// Saved: Gelu: up's output h_pre [..., hidden] (down saves gelu(h_pre)); SwiGLU: gate and up
// outputs [..., hidden] (down saves silu(gate) * up).
class MLP : public Module {
 public:
  MLP() = default;
  MLP(MlpKind kind, int64_t dim, int64_t hidden, bool bias,
      kernels::GeluKind gelu = kernels::GeluKind::Erf);
  Tensor forward(Context& ctx, const Tensor& x);  // [..., dim] -> [..., dim]
  // Returns dx, or an undefined tensor when !need_input_grad.
  Tensor backward(Context& ctx, const Tensor& dy, bool need_input_grad = true);
  // Hugging Face Llama names: gate_proj, up_proj, down_proj (BERT's split names live in models/).
  void parameters(const std::string& prefix, NamedParameters& out) override;

  MlpKind kind = MlpKind::Gelu;
  kernels::GeluKind gelu = kernels::GeluKind::Erf;
  Linear gate;  // SwiGLU only
  Linear up;    // Gelu: the first projection
  Linear down;

 private:
  Tensor h_pre_, gate_out_, up_out_;
};

// RoPE scaling, as transformers' rope_type (config.json rope_scaling / rope_parameters): how the
// inverse frequencies f_i = theta^(-2i/D) change to reach a longer context.
//   Linear  (position interpolation): f_i / factor.
//   Dynamic (NTK-aware): for a sequence of L > original_max_positions positions, theta becomes
//            theta·(factor·L/orig - (factor - 1))^(D/(D-2)); unchanged up to orig.
//   Llama3:  low frequencies (wavelength > orig/low_freq_factor) / factor, high ones kept,
//            a smooth blend between.
//   Yarn:    per-pair blend of f_i and f_i/factor by a ramp between the beta_fast and beta_slow
//            rotation counts over orig, and cos/sin times attention_factor
//            (default 0.1·ln(factor) + 1, or from mscale/mscale_all_dim).
// freq_factors (GGUF tensor rope_freqs, how llama.cpp stores llama3 scaling): f_i / ff_i, on
// top of the type's frequencies.
struct RopeScaling {
  enum class Type { None, Linear, Dynamic, Llama3, Yarn };
  Type type = Type::None;
  double factor = 1.0;
  int64_t original_max_positions = 0;  // Dynamic, Llama3, Yarn
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // Llama3
  double beta_fast = 32.0, beta_slow = 1.0;              // Yarn
  double attention_factor = 0.0;  // Yarn: 0 = derived
  double mscale = 0.0, mscale_all_dim = 0.0;
  bool truncate = true;
  std::vector<double> freq_factors;
  bool active() const { return type != Type::None || !freq_factors.empty(); }
};
// "default", "linear", "dynamic", "llama3", "yarn" (transformers' rope_type names); parse throws
// lorafit::Error naming `where` for another name.
const char* rope_type_name(RopeScaling::Type t);
RopeScaling::Type rope_type_from_name(const std::string& name, const std::string& where);
// Inverse frequencies [D/2] and the factor on cos/sin for a sequence whose largest position is
// seq_len - 1 (only Dynamic depends on it). Validates the parameters (lorafit::Error).
struct RopeFrequencies {
  std::vector<double> inv_freq;
  double factor = 1.0;
};
RopeFrequencies rope_frequencies(double theta, int64_t d, const RopeScaling& s, int64_t seq_len);

// One cos/sin table for every layer of a model (shared_ptr in each AttentionConfig): built for
// the configuration once, grown as longer sequences come, rebuilt only when Dynamic's length
// changes the frequencies.
class RopeCache {
 public:
  const kernels::RopeTable& table(double theta, int64_t d, const RopeScaling& s, int64_t seq_len);

 private:
  kernels::RopeTable table_;
  bool built_ = false;
  double theta_ = 0.0;
  int64_t d_ = 0, key_len_ = -1;
  RopeScaling scaling_;
};

struct AttentionConfig {
  int64_t hidden = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;  // < n_heads: grouped-query attention; 0 = n_heads
  int64_t head_dim = 0;    // 0 = hidden / n_heads
  bool qkv_bias = false;
  bool out_bias = false;
  bool causal = false;
  bool rope = false;
  float rope_theta = 10000.0f;
  kernels::RopeStyle rope_style = kernels::RopeStyle::HalfRotate;
  RopeScaling rope_scaling;
  // The table this module reads; layers of one model share one (null: the module makes its own).
  std::shared_ptr<RopeCache> rope_cache;
  float dropout = 0.0f;  // on the attention probabilities, in training (BERT: 0.1)
  // Dense keeps P [B, H, T, T] for backward; Tiled (FlashAttention-2: key tiles, online softmax,
  // one log-sum-exp per row, P recomputed in backward) keeps O(T). Auto: Tiled from
  // kTiledFromT tokens on. Tiled refuses dropout.
  enum class Impl { Auto, Dense, Tiled };
  Impl impl = Impl::Auto;
  static constexpr int64_t kTiledFromT = 1024;
  // S²-Attn (LongLoRA), in training only (ctx.training): 0 = full attention. Else the group is
  // G = max(2, round(T · s2_ratio)); heads [0, H/2) attend within [0, G), [G, 2G), ...; heads
  // [H/2, H) within [0, G/2), [G/2, 3G/2), ... (no wrap-around, the last group partial).
  float s2_ratio = 0.0f;
};

// Multi-head attention with grouped-query heads, optional RoPE on q and k, a padding mask and a
// causal mask. q, k, v, o are Linear modules so that adapters can target them:
//   q = x Wqᵀ [B, T, H·D], k, v = x Wkᵀ, x Wvᵀ [B, T, KV·D]   (RoPE rotates q and k per head)
//   P[b,h] = softmax(q_h k_gᵀ / sqrt(D) + mask) [T, T]        g = h / (H / KV), as HF repeat_kv
//   out[b, :, h] = dropout(P[b,h]) v_g;  y = out Woᵀ [B, T, C]
// The mask is additive -inf on padded keys and (causal) on keys after the query. A padded query
// row still sees the real keys, so its output is finite; a row with no visible key gives zeros.
// Saved: q and k after RoPE, v (all [B, T, heads, D]), P [B, H, T, T] (before dropout); o saves
// out; the dropout mask is regenerated from (seed, counter).
// Under kernels::compute_dtype() == BF16 the dense path's products (q·kᵀ, P·v, and in backward
// dout·vᵀ, Pᵀ·dout, dS·k, dSᵀ·q) take BF16-rounded operands with fp32 accumulation
// (kernels::gemm_bf16_bits); softmax, its backward and every sum stay fp32. The tiled path
// stays fp32.
class Attention : public Module {
 public:
  Attention() = default;
  // Validates the config and resolves n_kv_heads and head_dim (cfg holds the resolved values).
  explicit Attention(const AttentionConfig& cfg);
  int64_t head_dim() const { return cfg.head_dim; }
  // x [B, T, C]. pad_mask [B, T] F32 or I32: 1 = real token, 0 = padding (undefined: no padding).
  // positions [T] or [B, T] I32 for RoPE (undefined: 0..T-1).
  Tensor forward(Context& ctx, const Tensor& x, const Tensor& pad_mask = Tensor(),
                 const Tensor& positions = Tensor());
  // Returns dx [B, T, C], or an undefined tensor when !need_input_grad.
  Tensor backward(Context& ctx, const Tensor& dy, bool need_input_grad = true);
  // Hugging Face Llama names: q_proj, k_proj, v_proj, o_proj (BERT's names live in models/).
  void parameters(const std::string& prefix, NamedParameters& out) override;

  // ---- generation (inference only: no backward, no dropout) ----
  // Keys (after RoPE) and values of the tokens seen so far, [B, capacity, KV, D] each.
  struct KVCache {
    Tensor k, v;
    int64_t len = 0;  // tokens stored per sequence
    int64_t capacity() const { return k.defined() ? k.dim(1) : 0; }
    void reset() { len = 0; }
  };
  KVCache make_cache(int64_t batch, int64_t max_len) const;
  // x_new [B, Tn, C] are the tokens at positions cache.len .. cache.len + Tn - 1: their k and v
  // are appended to the cache and each new query attends to cache[0 : len + Tn] (causal among
  // the new tokens when cfg.causal). pad_mask [B, len + Tn] covers every cached token (undefined:
  // none); positions [Tn] or [B, Tn] I32 for RoPE (undefined: len .. len + Tn - 1). Equals the
  // rows of forward() on the whole sequence. Returns [B, Tn, C]. A pending backward() is
  // invalidated (it throws), since the projections' saved inputs change.
  Tensor forward_cached(Context& ctx, const Tensor& x_new, KVCache& cache,
                        const Tensor& pad_mask = Tensor(), const Tensor& positions = Tensor());

  AttentionConfig cfg;
  Linear q, k, v, o;

 private:
  const kernels::RopeTable& rope_table(const Tensor& positions);
  Tensor tiled_backward(Context& ctx, const Tensor& dout, bool need_input_grad);
  Tensor finish_backward(Context& ctx, Tensor& dq, Tensor& dk, Tensor& dv, bool need_input_grad);
  Tensor q_, k_, v_, att_, positions_;
  Tensor out_, lse_, pad_;  // Tiled: the attention output, log-sum-exp [B, H, T], the pad mask
  bool tiled_ = false;
  // Dense under --compute-dtype bf16: the products take BF16 operands (fp32 sums); q, k, v
  // (after RoPE) as BF16 bits, made once per forward and kept for backward.
  bool bf16_ = false;
  Tensor q16_, k16_, v16_;
  int64_t s2_group_ = 0;  // group of the last forward, 0 = full
  int64_t b_ = 0, t_ = 0;
  bool drop_ = false;  // last forward applied dropout to P
  uint64_t drop_seed_ = 0, drop_counter_ = 0;
};

}  // namespace lorafit::nn
