// lorafit nn: modules with explicit forward and backward (DESIGN.md decision 1, as llm.c).
// A module keeps what its backward needs during forward (in the Context's arena when it has one)
// and its backward computes the input gradient and, for trainable parameters only, parameter
// gradients. Parameter gradients accumulate (+=); call zero_grad() between steps. Frozen
// parameters never get gradient buffers.
//
// Shapes: activations are [B, T, C] (or [N, C]); Linear works on any [..., in].
#pragma once

#include <cstdint>
#include <functional>
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
  uint64_t seed = 0;
  uint64_t rng_counter = 0;  // advanced by every random draw, so a step is reproducible

  Tensor alloc(const Shape& shape, DType dtype = DType::F32);
  Tensor zeros(const Shape& shape, DType dtype = DType::F32);
};

// A weight with a trainable flag. grad exists (same shape, F32) only while trainable.
struct Parameter {
  Tensor value;
  Tensor grad;
  bool trainable = false;

  void set_trainable(bool t);
  void zero_grad();
};

using NamedParameters = std::vector<std::pair<std::string, Parameter*>>;

class Module {
 public:
  virtual ~Module() = default;
  // Appends this module's parameters as "<prefix><name>" (Hugging Face names: weight, bias).
  virtual void parameters(const std::string& prefix, NamedParameters& out) = 0;
  void zero_grad();
  void set_trainable(bool t);
};

// y = x Wᵀ + b. weight [out, in] (F32; frozen weights may also be F16/BF16, multiplied through
// fp32 tiles), bias [out] optional. Input gradient is computed only when need_input_grad.
class Linear : public Module {
 public:
  Linear() = default;
  Linear(int64_t in_features, int64_t out_features, bool bias);
  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  bool has_bias() const { return bias.value.defined(); }

  Tensor forward(Context& ctx, const Tensor& x);  // x [..., in] -> [..., out]
  Tensor backward(Context& ctx, const Tensor& dy, bool need_input_grad = true);
  void parameters(const std::string& prefix, NamedParameters& out) override;

  Parameter weight;
  Parameter bias;

 private:
  int64_t in_ = 0, out_ = 0;
  Tensor x_;  // saved input
};

// out[..., :] = table[ids[...], :]; table [V, C].
class Embedding : public Module {
 public:
  Embedding() = default;
  Embedding(int64_t vocab, int64_t dim);
  Tensor forward(Context& ctx, const Tensor& ids);  // ids I32 [...] -> [..., C]
  void backward(Context& ctx, const Tensor& dy);     // weight grad only (ids are not differentiable)
  void parameters(const std::string& prefix, NamedParameters& out) override;

  Parameter weight;

 private:
  Tensor ids_;
};

class LayerNorm : public Module {
 public:
  LayerNorm() = default;
  LayerNorm(int64_t dim, float eps, bool bias = true);
  Tensor forward(Context& ctx, const Tensor& x);  // [..., C]
  Tensor backward(Context& ctx, const Tensor& dy);
  void parameters(const std::string& prefix, NamedParameters& out) override;

  Parameter weight;
  Parameter bias;
  float eps = 1e-12f;

 private:
  Tensor x_, mean_, rstd_;
};

class RMSNorm : public Module {
 public:
  RMSNorm() = default;
  RMSNorm(int64_t dim, float eps);
  Tensor forward(Context& ctx, const Tensor& x);
  Tensor backward(Context& ctx, const Tensor& dy);
  void parameters(const std::string& prefix, NamedParameters& out) override;

  Parameter weight;
  float eps = 1e-6f;

 private:
  Tensor x_, rstd_;
};

// Inverted dropout: in training, zero with probability p and scale the rest by 1/(1-p); identity
// otherwise. The mask comes from (ctx.seed, ctx.rng_counter), so a seeded run is reproducible.
class Dropout : public Module {
 public:
  Dropout() = default;
  explicit Dropout(float p) : p(p) {}
  Tensor forward(Context& ctx, const Tensor& x);
  Tensor backward(Context& ctx, const Tensor& dy);
  void parameters(const std::string&, NamedParameters&) override {}

  float p = 0.0f;

 private:
  Tensor mask_;  // scaled keep mask, undefined when identity
};

// Feed-forward block. Gelu: down(gelu(up(x))) (BERT: intermediate.dense / output.dense).
// SwiGLU: down(silu(gate(x)) * up(x)) (Llama: gate_proj, up_proj, down_proj).
enum class MlpKind { Gelu, SwiGLU };

class MLP : public Module {
 public:
  MLP() = default;
  MLP(MlpKind kind, int64_t dim, int64_t hidden, bool bias,
      kernels::GeluKind gelu = kernels::GeluKind::Erf);
  Tensor forward(Context& ctx, const Tensor& x);
  Tensor backward(Context& ctx, const Tensor& dy);
  void parameters(const std::string& prefix, NamedParameters& out) override;

  MlpKind kind = MlpKind::Gelu;
  kernels::GeluKind gelu = kernels::GeluKind::Erf;
  Linear gate;  // SwiGLU only
  Linear up;    // Gelu: the first projection
  Linear down;

 private:
  Tensor h_pre_, gate_out_, up_out_;
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
};

// Multi-head attention with grouped-query heads, optional RoPE on q and k, a padding mask and a
// causal mask. q, k, v, o are Linear modules so that adapters can target them.
class Attention : public Module {
 public:
  Attention() = default;
  explicit Attention(const AttentionConfig& cfg);
  // x [B, T, C]. pad_mask [B, T] F32: 1 = real token, 0 = padding (undefined: no padding).
  // positions [T] or [B, T] I32 for RoPE (undefined: 0..T-1).
  Tensor forward(Context& ctx, const Tensor& x, const Tensor& pad_mask = Tensor(),
                 const Tensor& positions = Tensor());
  Tensor backward(Context& ctx, const Tensor& dy);
  void parameters(const std::string& prefix, NamedParameters& out) override;

  AttentionConfig cfg;
  Linear q, k, v, o;

 private:
  Tensor q_, k_, v_, att_, ctx_out_, pad_mask_, positions_;
  int64_t b_ = 0, t_ = 0;
};

}  // namespace lorafit::nn
