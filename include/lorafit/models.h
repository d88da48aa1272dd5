// lorafit models: pretrained architectures built from nn modules, loaded from a Hugging Face
// folder (config.json + *.safetensors) or a llama.cpp GGUF file, matching transformers' outputs.
//
//   BERT family (config.json model_type "bert", "roberta", "distilbert"): embeddings (word +
//     position + token type, LayerNorm), post-LN encoder layers with GELU MLPs and the
//     sequence-classification head of *ForSequenceClassification (BERT's pooler + classifier,
//     RoBERTa's classifier.dense/out_proj, DistilBERT's pre_classifier + classifier).
//   Llama family (model_type "llama", GGUF general.architecture "llama"): RMSNorm, RoPE (HF
//     rotate-half on HF-layout weights), grouped-query attention, SwiGLU, tied or separate
//     `lm_head`, with a KV cache for generation.
//
// Module paths are Hugging Face's (BertForSequenceClassification / LlamaForCausalLM names), so
// that PEFT target_modules and adapter keys line up: `bert.encoder.layer.0.attention.self.query`,
// `model.layers.0.self_attn.q_proj`, `classifier`, `lm_head`.
//
// Weights: a model owns its weights (copied out of the file mapping, so they may be modified,
// e.g. by a merge). Linear weights and embedding tables keep their stored dtype when nn multiplies
// it through fp32 tiles (F32, F16, BF16, Q8_0, Q4_0, Q4_1, and GGUF's K-quants Q4_K, Q5_K, Q6_K);
// LoadOptions::dequantize makes every weight F32. Norm weights
// and biases are always F32. Llama GGUF attn_q/attn_k rows are un-permuted at load, so internal
// weights are always in HF layout. Every parameter is frozen after loading; set_trainable() on a
// parameter or module opts it in (only F32 parameters can be trainable).
//
// Shapes: ids/masks [B, T]; hidden states [B, T, C]; logits [B, T, V] (causal LM) or [B, L]
// (classification). Masks are I32 or F32, 1 = token, 0 = padding.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "lorafit/nn.h"
#include "lorafit/tensor.h"

namespace lorafit::models {

using tensor::DType;
using tensor::Shape;
using tensor::Tensor;

// Hyper-parameters of a loaded model, whatever the file format.
struct ModelConfig {
  std::string arch;    // registry key: "bert", "roberta", "distilbert", "llama"
  std::string source;  // folder or .gguf path it was loaded from
  std::string format;  // "safetensors" or "gguf"
  int64_t vocab = 0;
  int64_t hidden = 0;
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t intermediate = 0;
  int64_t max_positions = 0;
  float norm_eps = 0.0f;
  // BERT
  int64_t type_vocab = 0;
  int64_t num_labels = 0;
  int64_t pad_token_id = 0;  // RoBERTa position ids
  std::string hidden_act;    // "gelu" (erf), "gelu_new"/"gelu_pytorch_tanh" (tanh), "silu"
  // Llama
  float rope_theta = 10000.0f;
  nn::RopeScaling rope_scaling;  // config.json rope_scaling / GGUF llama.rope.scaling.*
  bool tied_embeddings = false;
  bool attention_bias = false;
  bool mlp_bias = false;
};

// Options for loading.
struct LoadOptions {
  // BERT: number of classifier outputs when the checkpoint has no `classifier` (0: config's
  // num_labels / id2label size, else 2). A missing classifier or pooler is initialized as
  // transformers does: N(0, 0.02²) weights, zero bias, drawn from `seed`.
  int64_t num_labels = 0;
  uint64_t seed = 0;
  // Store every weight as F32 (for merging or full fine-tuning) instead of its stored dtype.
  bool dequantize = false;
  // Quantize on load (`--quantize`): the Linear weights of the transformer layers (not the
  // embeddings, lm_head or classification head) of a full-precision (F32/F16/BF16) Hugging Face
  // folder are quantized as they are read: "nf4", "nf4-dq" (double-quantized statistics), "fp4"
  // (bitsandbytes 4-bit, byte-identical to bitsandbytes' quantize_4bit of the fp32 values),
  // "q8_0", "q4_0", "q4_1" (ggml blocks of 32; a weight whose rows are not whole blocks stays as
  // stored). "" or "none": as stored. Weights already quantized in the file (a bitsandbytes
  // 4-bit folder) are kept; a GGUF keeps its own types (any other value is refused for one).
  // With dequantize, the quantized values are what becomes F32 (a merge onto the base a QLoRA
  // adapter was trained on).
  std::string quantize;
};

// Whether a module path is an output head that quantize-on-load leaves in full precision
// (lm_head, classifier, pooler, pre_classifier, score), and that head's name ("" if none).
bool is_head_module(const std::string& path);
std::string head_module_name(const std::string& path);

// The --quantize values, and a check of one (throws Error naming `what` and the choices).
const std::vector<std::string>& quantize_choices();
void check_quantize(const std::string& q, const std::string& what);

using NamedLinears = std::vector<std::pair<std::string, nn::Linear*>>;

// Keys (after RoPE) and values of every layer for incremental decoding, [B, capacity, KV, D]
// each (nn::Attention's cache); positions [0, len()) are filled.
struct KvCache {
  std::vector<nn::Attention::KVCache> layers;
  int64_t len() const { return layers.empty() ? 0 : layers[0].len; }
  int64_t capacity() const { return layers.empty() ? 0 : layers[0].capacity(); }
  void reset() {
    for (auto& l : layers) l.reset();
  }
};


class Model {
 public:
  virtual ~Model() = default;
  const ModelConfig& config() const { return cfg_; }
  // Every Linear with its Hugging Face module path, in module order (the output head last).
  virtual NamedLinears linears() = 0;

  // The task head, whatever the architecture, so that callers need no cast:
  //   causal LM (Llama): next-token logits [B, T, V] (token_types ignored);
  //   classifier (BERT family): class logits [B, L] = classify(forward(ids, mask, token_types)).
  // logits_backward takes dlogits of that shape, accumulates the trainable parameters'
  // gradients and returns the gradient w.r.t. the input embeddings [B, T, C].
  virtual bool is_causal_lm() const = 0;
  virtual Tensor logits(nn::Context& ctx, const Tensor& ids, const Tensor& mask = Tensor(),
                        const Tensor& token_types = Tensor()) = 0;
  virtual Tensor logits_backward(nn::Context& ctx, const Tensor& dlogits) = 0;
  // false: the caller does not want that input gradient (the trainer), so logits_backward and
  // lm_loss_chunked stop at the lowest layer with something to train (a trainable parameter or
  // an active adapter): no input gradient below it, none of that layer's own input gradient, and
  // logits_backward returns an undefined tensor. The parameter gradients are bitwise those of
  // the full backward. Ignored (full backward) when an embedding or the embedding norm trains.
  bool input_grad = true;
  // Incremental decoding (causal LMs; the base class throws: no KV cache for a classifier).
  virtual KvCache new_cache(int64_t batch, int64_t capacity) const;
  virtual Tensor forward_cached(nn::Context& ctx, const Tensor& ids, KvCache& cache,
                                const Tensor& mask = Tensor(), const Tensor& positions = Tensor());
  // Causal LM loss without the whole logits: the mean cross-entropy of targets [B, T] (rows with
  // ignore_index count for nothing) and, when dloss != 0, the backward of dloss · loss through
  // the model, running the output head over chunks of chunk_rows tokens so that neither the
  // [B·T, V] logits nor their gradient exists at once (SmolLM2: 200 MB each at 1,024 tokens).
  // Equal to logits() + kernels::cross_entropy_forward/backward + logits_backward up to fp32
  // rounding. nullopt (nothing run) where the head needs every logit: a classifier (the base
  // class), an active adapter on the head or a trainable head weight.
  virtual std::optional<float> lm_loss_chunked(nn::Context& ctx, const Tensor& ids,
                                               const Tensor& mask, const Tensor& targets,
                                               int32_t ignore_index, float dloss,
                                               int64_t chunk_rows);

  // Every parameter with its Hugging Face name ("<path>.weight"); a tied lm_head is not listed
  // separately (as torch's named_parameters()).
  virtual nn::NamedParameters named_parameters() = 0;
  // Stored dtype of every tensor read from the file ("F32", "BF16", "Q4_1", ...), by HF name.
  const std::map<std::string, std::string>& source_dtypes() const { return source_dtypes_; }
  // Names of parameters that were not in the checkpoint and were freshly initialized.
  const std::vector<std::string>& initialized() const { return initialized_; }
  int64_t num_parameters();

  void set_trainable(bool t);  // every parameter
  void zero_grad();

  // For loaders.
  void record_source(const std::string& name, const std::string& dtype) {
    source_dtypes_[name] = dtype;
  }
  void mark_initialized(const std::string& name) { initialized_.push_back(name); }

 protected:
  ModelConfig cfg_;
  std::map<std::string, std::string> source_dtypes_;
  std::vector<std::string> initialized_;
};

// ---- BERT family ----------------------------------------------------------------------------
// One encoder for three checkpoint layouts (config.json model_type):
//   bert:       bert.encoder.layer.N.attention.self.{query,key,value}, attention.output.dense,
//               intermediate.dense, output.dense; head bert.pooler.dense (tanh) + classifier.
//   roberta:    the same under roberta.; position ids count real tokens from pad_token_id + 1
//               (transformers' create_position_ids_from_input_ids); head classifier.dense (tanh) +
//               classifier.out_proj, no pooler; one token type.
//   distilbert: distilbert.transformer.layer.N.attention.{q_lin,k_lin,v_lin,out_lin}, ffn.lin1,
//               ffn.lin2, sa_layer_norm, output_layer_norm; no token types; head pre_classifier
//               (ReLU) + classifier.
// The layer math is the same post-LN block in all three.

struct BertLayer {
  nn::Attention attn;       // q, k, v, o
  nn::LayerNorm attn_norm;  // attention.output.LayerNorm | sa_layer_norm
  nn::MLP mlp;              // up = intermediate.dense | ffn.lin1; down = output.dense | ffn.lin2
  nn::LayerNorm out_norm;   // output.LayerNorm | output_layer_norm
  nn::Dropout attn_drop, out_drop;  // after the attention output / the MLP output
};

class BertModel : public Model {
 public:
  explicit BertModel(const ModelConfig& cfg);  // cfg.arch: bert, roberta or distilbert

  // Encoder: last hidden states [B, T, C]. ids I32 [B, T]; mask [B, T] (undefined: no padding);
  // token_types I32 [B, T] (undefined: all 0; ignored by distilbert).
  Tensor forward(nn::Context& ctx, const Tensor& ids, const Tensor& mask = Tensor(),
                 const Tensor& token_types = Tensor());
  // Same with the word embeddings given (as transformers' inputs_embeds) [B, T, C]. RoBERTa then
  // numbers positions pad_token_id + 1, ... for every token, as transformers does.
  Tensor forward_embeds(nn::Context& ctx, const Tensor& embeds, const Tensor& mask = Tensor(),
                        const Tensor& token_types = Tensor());
  // dhidden [B, T, C] -> gradient w.r.t. the word embeddings (inputs_embeds) [B, T, C];
  // accumulates gradients of trainable parameters (the word table too when forward got ids).
  Tensor backward(nn::Context& ctx, const Tensor& dhidden);

  // Sequence-classification head on hidden [B, T, C] -> logits [B, L]:
  //   classifier(drop(act(head_dense(drop_in(h[:, 0])))))   act = tanh (BERT pooler, RoBERTa)
  //   or ReLU (DistilBERT). Its backward returns dhidden [B, T, C] (nonzero at position 0 only).
  Tensor classify(nn::Context& ctx, const Tensor& hidden);
  Tensor classify_backward(nn::Context& ctx, const Tensor& dlogits);

  // Dropout probabilities (active only when ctx.training): hidden (embeddings and the residual
  // branches), attention probabilities, classifier. The loader sets the config's values.
  void set_dropout(float hidden_p, float attention_p, float classifier_p);

  // Hugging Face path of a part: "bert.", "roberta." or "distilbert." prefixed names.
  const std::string& prefix() const { return prefix_; }

  NamedLinears linears() override;
  nn::NamedParameters named_parameters() override;
  bool is_causal_lm() const override { return false; }
  Tensor logits(nn::Context& ctx, const Tensor& ids, const Tensor& mask = Tensor(),
                const Tensor& token_types = Tensor()) override;
  Tensor logits_backward(nn::Context& ctx, const Tensor& dlogits) override;

  // Activation recomputation per layer, as LlamaModel::gradient_checkpointing.
  bool gradient_checkpointing = false;

  nn::Embedding word, position, token_type;  // token_type unused (default) for distilbert
  nn::LayerNorm emb_norm;
  nn::Dropout emb_drop;
  std::vector<BertLayer> layers;
  nn::Dropout head_in_drop;  // RoBERTa only
  nn::Linear head_dense;     // bert.pooler.dense | classifier.dense | pre_classifier
  nn::Dropout cls_drop;
  nn::Linear classifier;  // classifier | classifier.out_proj | classifier

 private:
  std::string prefix_;
  Tensor mask_f32_;     // [B, T]
  Tensor head_act_;     // [B, C] activation output, for backward
  Shape hidden_shape_;  // [B, T, C] of the last classify input
  bool word_from_ids_ = false;
  bool no_grad_forward_ = false;  // last forward freed its activations (ctx.no_grad)
  bool ckpt_ = false;             // the last forward kept only the layer inputs
  std::vector<Tensor> ckpt_in_;
  std::vector<uint64_t> ckpt_rng_;
  Tensor layer_forward(nn::Context& ctx, BertLayer& l, const Tensor& x);
  Tensor encode(nn::Context& ctx, const Tensor& embeds, const Tensor& mask,
                const Tensor& token_types, const Tensor& positions);
};

// Sentence-transformers mean pooling: sum_t h[b,t] m[b,t] / max(sum_t m[b,t], 1e-9) -> [B, C].
Tensor mean_pool(const Tensor& hidden, const Tensor& mask);

// ---- Llama ----------------------------------------------------------------------------------

struct LlamaLayer {
  nn::RMSNorm attn_norm;  // input_layernorm
  nn::Attention attn;     // self_attn.{q,k,v,o}_proj
  nn::RMSNorm mlp_norm;   // post_attention_layernorm
  nn::MLP mlp;            // mlp.{gate,up,down}_proj
};

class LlamaModel : public Model {
 public:
  explicit LlamaModel(const ModelConfig& cfg);

  // Logits [B, T, V]. ids I32 [B, T]; mask [B, T] (undefined: no padding); positions I32 [T] or
  // [B, T] (undefined: 0..T-1; with left padding pass HF generate's cumsum(mask) - 1).
  Tensor forward(nn::Context& ctx, const Tensor& ids, const Tensor& mask = Tensor(),
                 const Tensor& positions = Tensor());
  Tensor forward_embeds(nn::Context& ctx, const Tensor& embeds, const Tensor& mask = Tensor(),
                        const Tensor& positions = Tensor());
  // dlogits [B, T, V] -> gradient w.r.t. the input embeddings [B, T, C].
  Tensor backward(nn::Context& ctx, const Tensor& dlogits);

  // Incremental decoding (inference only): appends ids I32 [B, Tn] after the cache.len() tokens
  // already seen and returns their logits [B, Tn, V], equal to the rows of forward() on the whole
  // sequence. mask [B, len + Tn] covers every token so far (undefined: no padding); positions
  // [Tn] or [B, Tn] I32 (undefined: len .. len + Tn - 1; with left padding pass HF's).
  KvCache new_cache(int64_t batch, int64_t capacity) const override;
  Tensor forward_cached(nn::Context& ctx, const Tensor& ids, KvCache& cache,
                        const Tensor& mask = Tensor(), const Tensor& positions = Tensor()) override;
  std::optional<float> lm_loss_chunked(nn::Context& ctx, const Tensor& ids, const Tensor& mask,
                                       const Tensor& targets, int32_t ignore_index, float dloss,
                                       int64_t chunk_rows) override;

  // Extends the context (--rope-scaling): every layer's RoPE uses `s` from now on, and the
  // config's max_positions becomes `max_positions` (what a saved config.json declares).
  void set_rope_scaling(const nn::RopeScaling& s, int64_t max_positions);

  NamedLinears linears() override;
  nn::NamedParameters named_parameters() override;
  bool is_causal_lm() const override { return true; }
  Tensor logits(nn::Context& ctx, const Tensor& ids, const Tensor& mask = Tensor(),
                const Tensor& token_types = Tensor()) override {
    return forward(ctx, ids, mask);
  }
  Tensor logits_backward(nn::Context& ctx, const Tensor& dlogits) override {
    return backward(ctx, dlogits);
  }

  // Activation recomputation (--gradient-checkpointing): a training forward keeps only each
  // layer's input (one [B, T, C] per layer) and frees the layer's activations (with an arena);
  // backward re-runs the layer forward, with the same random draws, before its backward. The
  // gradients are bitwise those of the stored path.
  bool gradient_checkpointing = false;

  nn::Embedding embed;
  std::vector<LlamaLayer> layers;
  nn::RMSNorm norm;
  // Shares embed's weight tensor when tied (the value only: were both trainable, their
  // gradients would stay separate).
  nn::Linear lm_head;

 private:
  Tensor layer_forward(nn::Context& ctx, LlamaLayer& l, const Tensor& x, const Tensor& mask,
                       const Tensor& positions);
  std::vector<Tensor> resid_;  // saved residual-stream inputs per layer, for backward
  bool ckpt_ = false;          // the last forward kept only the layer inputs
  std::vector<Tensor> ckpt_in_;
  std::vector<uint64_t> ckpt_rng_;
  Tensor ckpt_mask_, ckpt_pos_;
  bool embed_from_ids_ = false;
  bool head_ = true;  // false: forward_embeds stops at the final norm (lm_loss_chunked)
  Tensor backward_hidden(nn::Context& ctx, const Tensor& dnormed);  // from d norm(x)
  bool no_grad_forward_ = false;  // last forward freed its activations (ctx.no_grad)
};

// ---- the Llama GGUF layout (llama.cpp convert_hf_to_gguf.py; the loader, LoRA and merged GGUF
// writers in peft use the same two facts) ------------------------------------------------------

// The llama.cpp GGUF name of a Hugging Face Llama tensor: "model.embed_tokens.weight" ->
// "token_embd.weight", "model.layers.3.self_attn.q_proj.weight" -> "blk.3.attn_q.weight",
// "model.layers.3.input_layernorm.weight" -> "blk.3.attn_norm.weight", "model.norm.weight" ->
// "output_norm.weight", "lm_head.weight" -> "output.weight" (llama.cpp's LLM_TENSOR_OUTPUT, absent
// when the head is tied to token_embd). A module path without ".weight"/".bias" maps the same way
// ("lm_head" -> "output"). Throws "[models] no llama.cpp GGUF name for '<name>'" otherwise.
std::string llama_gguf_name(const std::string& hf_name);

// q/k projection rows: llama.cpp stores them permuted so that its adjacent-pair RoPE equals HF's
// rotate-half (LlamaModel.permute: reshape(n_head, 2, D/2, cols).swapaxes(1, 2)), per head:
//   gguf[h*D + 2*i + j] = hf[h*D + j*(D/2) + i],  i < D/2, j in {0, 1}.
// Rows are moved as bytes, so any dtype works (block-quantized rows too). A 1-D tensor (a bias)
// is one value per row. Throws unless the row count is n_head · D with D even.
Tensor llama_qk_to_gguf(const Tensor& w, int64_t n_head);
Tensor llama_qk_from_gguf(const Tensor& w, int64_t n_head);

// ---- loading (registry) ---------------------------------------------------------------------

// Loads a Hugging Face folder (config.json model_type) or a .gguf file (general.architecture).
// Errors name the file and the field: "[models] /x/config.json: field 'hidden_size' is missing".
std::unique_ptr<Model> load_model(const std::string& path, const LoadOptions& opts = {});

// The one way every command names a model: a folder with config.json, a .gguf file, or a folder
// holding exactly one .gguf (models/SmolLM2-135M-Instruct). Returns the folder or the .gguf
// path; errors name the path and what was expected.
std::string resolve_model_path(const std::string& path);
bool is_gguf_path(const std::string& path);

// ---- generation -----------------------------------------------------------------------------

// Decoding a causal LM with its KV cache: greedy (temperature 0) or seeded sampling from
// softmax(logits / temperature) restricted to the top_k most likely tokens (0: all) and then
// to the smallest set whose probability reaches top_p. The same seed gives the same tokens.
struct GenerateOptions {
  int64_t max_new_tokens = 64;
  double temperature = 0.0;
  int64_t top_k = 0;
  double top_p = 1.0;
  uint64_t seed = 42;
  std::vector<int32_t> stop_ids;  // a sampled id among these ends generation (not returned)
};
// Throws "[generate] need temperature >= 0, 0 < top_p <= 1, ..." for options out of range.
void validate(const GenerateOptions& opt);
// One sampling step on a logits row [V]; `step` picks the random number (seed, step).
int32_t sample_next(const float* logits, int64_t V, const GenerateOptions& opt, int64_t step);
// Continues `prompt` (non-empty ids); on_token(id) sees each new id as it comes and may return
// false to stop. Returns the new ids.
std::vector<int32_t> generate(Model& model, const std::vector<int32_t>& prompt,
                              const GenerateOptions& opt,
                              const std::function<bool(int32_t)>& on_token = {});
// Registered architectures: {"bert", "roberta", "distilbert", "llama"}.
std::vector<std::string> supported_architectures();

}  // namespace lorafit::models
