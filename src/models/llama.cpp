// Llama family decoder (LlamaForCausalLM): RMSNorm, RoPE (rotate-half on HF-layout q/k), GQA,
// SwiGLU, tied or separate lm_head, KV-cached decoding. Loaded from a HF folder or a GGUF file.
//
// Per layer (pre-norm, transformers LlamaDecoderLayer):
//   h = x + attn(input_layernorm(x))
//   x' = h + mlp(post_attention_layernorm(h))
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <optional>

#include "lorafit/rope_config.h"
#include "models/models_internal.h"

namespace lorafit::models {

namespace {

Tensor add_new(nn::Context& ctx, const Tensor& a, const Tensor& b) {
  Tensor y = ctx.alloc(a.shape());
  kernels::add(a, b, y);
  return y;
}

}  // namespace

LlamaModel::LlamaModel(const ModelConfig& c) {
  cfg_ = c;
  embed = nn::Embedding(c.vocab, c.hidden);
  layers.resize(static_cast<size_t>(c.n_layers));
  auto rope_cache = std::make_shared<nn::RopeCache>();  // one cos/sin table for every layer
  for (auto& l : layers) {
    l.attn_norm = nn::RMSNorm(c.hidden, c.norm_eps);
    nn::AttentionConfig ac;
    ac.hidden = c.hidden;
    ac.n_heads = c.n_heads;
    ac.n_kv_heads = c.n_kv_heads;
    ac.head_dim = c.head_dim;
    ac.qkv_bias = c.attention_bias;
    ac.out_bias = c.attention_bias;
    ac.causal = true;
    ac.rope = true;
    ac.rope_theta = c.rope_theta;
    ac.rope_style = kernels::RopeStyle::HalfRotate;
    ac.rope_scaling = c.rope_scaling;
    ac.rope_cache = rope_cache;
    l.attn = nn::Attention(ac);
    l.mlp_norm = nn::RMSNorm(c.hidden, c.norm_eps);
    l.mlp = nn::MLP(nn::MlpKind::SwiGLU, c.hidden, c.intermediate, c.mlp_bias);
  }
  norm = nn::RMSNorm(c.hidden, c.norm_eps);
  lm_head = nn::Linear(c.hidden, c.vocab, false);
}

void LlamaModel::set_rope_scaling(const nn::RopeScaling& s, int64_t max_positions) {
  detail::check(max_positions > 0, "set_rope_scaling: max_positions must be positive, got " +
                                      std::to_string(max_positions));
  nn::rope_frequencies(cfg_.rope_theta, cfg_.head_dim, s, max_positions);  // validates
  cfg_.rope_scaling = s;
  cfg_.max_positions = max_positions;
  for (auto& l : layers) l.attn.cfg.rope_scaling = s;
}

Tensor LlamaModel::forward(nn::Context& ctx, const Tensor& ids, const Tensor& mask,
                           const Tensor& positions) {
  detail::check(ids.defined() && ids.dtype() == DType::I32 && ids.ndim() == 2,
                "llama forward: ids is " + (ids.defined() ? ids.str() : std::string("undefined")) +
                    ", expected I32[B, T]");
  Tensor logits = forward_embeds(ctx, embed.forward(ctx, ids), mask, positions);
  embed_from_ids_ = true;
  return logits;
}

Tensor LlamaModel::forward_embeds(nn::Context& ctx, const Tensor& embeds, const Tensor& mask,
                                  const Tensor& positions) {
  detail::check(embeds.defined() && embeds.dtype() == DType::F32 && embeds.ndim() == 3 &&
                    embeds.dim(2) == cfg_.hidden,
                "llama forward: embeds is " +
                    (embeds.defined() ? embeds.str() : std::string("undefined")) +
                    ", expected F32[B, T, " + std::to_string(cfg_.hidden) + "]");
  embed_from_ids_ = false;
  Tensor x = embeds;
  no_grad_forward_ = ctx.no_grad;
  // Recomputation (gradient checkpointing): keep only each layer's input and the RNG counter it
  // started from; backward re-runs the layer's forward from them.
  ckpt_ = gradient_checkpointing && !ctx.no_grad;
  ckpt_in_.clear();
  ckpt_rng_.clear();
  if (ckpt_) {
    ckpt_mask_ = mask;
    ckpt_pos_ = positions;
    for (size_t i = 0; i < layers.size(); ++i) ckpt_in_.push_back(ctx.alloc(x.shape()));
  }
  // no_grad or recomputation: keep one layer's activations at a time
  detail::LayerScope scope(ctx, x.shape(), ctx.no_grad || ckpt_);
  for (size_t i = 0; i < layers.size(); ++i) {
    if (ckpt_) {
      std::copy(x.f32(), x.f32() + x.numel(), ckpt_in_[i].f32());
      ckpt_rng_.push_back(ctx.rng_counter);
    }
    scope.begin();
    x = scope.end(layer_forward(ctx, layers[i], x, mask, positions));
  }
  Tensor hn = norm.forward(ctx, x);
  return head_ ? lm_head.forward(ctx, hn) : hn;
}

Tensor LlamaModel::layer_forward(nn::Context& ctx, LlamaLayer& l, const Tensor& x,
                                 const Tensor& mask, const Tensor& positions) {
  Tensor h = add_new(ctx, x, l.attn.forward(ctx, l.attn_norm.forward(ctx, x), mask, positions));
  return add_new(ctx, h, l.mlp.forward(ctx, l.mlp_norm.forward(ctx, h)));
}

Tensor LlamaModel::backward(nn::Context& ctx, const Tensor& dlogits) {
  detail::check(!no_grad_forward_,
                "llama backward: the last forward ran with ctx.no_grad (no activations kept)");
  // forward was: logits = lm_head(norm(x))
  return backward_hidden(ctx, lm_head.backward(ctx, dlogits));
}

std::optional<float> LlamaModel::lm_loss_chunked(nn::Context& ctx, const Tensor& ids,
                                                 const Tensor& mask, const Tensor& targets,
                                                 int32_t ignore_index, float dloss,
                                                 int64_t chunk_rows) {
  for (const nn::LinearAdapter* a : lm_head.adapters)
    if (a->active()) return std::nullopt;
  if (lm_head.weight.trainable || lm_head.has_bias()) return std::nullopt;
  detail::check(chunk_rows > 0, "lm_loss_chunked: chunk_rows must be positive, got " +
                                    std::to_string(chunk_rows));
  detail::check(targets.defined() && targets.dtype() == DType::I32 &&
                    targets.numel() == ids.numel(),
                "lm_loss_chunked: targets is " +
                    (targets.defined() ? targets.str() : std::string("undefined")) +
                    ", expected I32 like ids " + ids.str());
  head_ = false;
  Tensor hn;
  try {
    hn = forward(ctx, ids, mask);  // norm(x) [B, T, C]
  } catch (...) {
    head_ = true;
    throw;
  }
  head_ = true;
  const int64_t C = cfg_.hidden, V = cfg_.vocab, N = hn.numel() / C;
  Tensor h2 = hn.view({N, C});
  Tensor tg = targets.view({N});
  const int32_t* pt = tg.i32();
  int64_t count = 0;
  for (int64_t i = 0; i < N; ++i) count += pt[i] != ignore_index;
  const bool grad = dloss != 0.0f;
  Tensor dh = grad ? ctx.alloc({N, C}) : Tensor();
  const int64_t rows = std::min(chunk_rows, std::max<int64_t>(N, 1));
  const tensor::Arena::Mark m = ctx.arena ? ctx.arena->mark() : tensor::Arena::Mark{};
  {
    Tensor logits = ctx.alloc({rows, V}), probs = ctx.alloc({rows, V});
    double total = 0;
    for (int64_t r0 = 0; r0 < N; r0 += rows) {
      const int64_t r1 = std::min(N, r0 + rows), n = r1 - r0;
      Tensor lc = logits.rows(0, n), pc = probs.rows(0, n), tc = tg.rows(r0, r1);
      Tensor hc = h2.rows(r0, r1);
      lm_head.matmul_weight(hc, lc);  // logits of these tokens
      const float mean = kernels::cross_entropy_forward(lc, tc, ignore_index, pc);
      int64_t cc = 0;
      for (int64_t i = r0; i < r1; ++i) cc += pt[i] != ignore_index;
      total += static_cast<double>(mean) * static_cast<double>(cc);
      if (!grad) continue;
      Tensor dhc = dh.rows(r0, r1);
      if (cc == 0) {
        dhc.zero();
        continue;
      }
      // The kernel divides by this chunk's count; the loss is the mean over all counted rows.
      kernels::cross_entropy_backward(
          pc, tc, ignore_index,
          static_cast<float>(static_cast<double>(dloss) * static_cast<double>(cc) /
                             static_cast<double>(count)),
          lc);
      lm_head.matmul_weight_t(lc, dhc);  // d norm(x) of these tokens
    }
    if (ctx.arena) ctx.arena->release(m);  // the chunk buffers only (dh came before the mark)
    const float loss = count == 0 ? 0.0f : static_cast<float>(total / static_cast<double>(count));
    if (grad) {
      detail::check(!no_grad_forward_,
                    "llama backward: the last forward ran with ctx.no_grad (no activations kept)");
      backward_hidden(ctx, dh.view(hn.shape()));
    }
    return loss;
  }
}

Tensor LlamaModel::backward_hidden(nn::Context& ctx, const Tensor& dnormed) {
  Tensor dx = norm.backward(ctx, dnormed);
  // Without input_grad, layers below `lowest` (the lowest one with something to train) are not
  // visited at all, and `lowest` itself computes only what reaches its trainable parts.
  const bool embed_trains = embed_from_ids_ && embed.weight.trainable;
  size_t lowest = 0;
  if (!input_grad && !embed_trains) {
    lowest = layers.size();
    for (size_t i = 0; i < layers.size(); ++i) {
      LlamaLayer& l = layers[i];
      if (detail::module_trains(l.attn_norm) || detail::attention_trains(l.attn) ||
          detail::module_trains(l.mlp_norm) || detail::mlp_trains(l.mlp)) {
        lowest = i;
        break;
      }
    }
  }
  detail::LayerScope scope(ctx, dx.shape());
  for (size_t i = layers.size(); i-- > lowest;) {
    LlamaLayer& l = layers[i];
    scope.begin();
    if (ckpt_) {
      // Re-run this layer's forward from its saved input, drawing the same random numbers
      // (dropout masks) as the first time, so that the modules hold the very activations.
      const uint64_t counter = ctx.rng_counter;
      ctx.rng_counter = ckpt_rng_[i];
      layer_forward(ctx, l, ckpt_in_[i].view(dx.shape()), ckpt_mask_, ckpt_pos_);
      ctx.rng_counter = counter;
    }
    // The layer's input gradient is wanted below it; in the lowest layer only as far as
    // something trains: the attention half (attn_norm, attn) needs dh, attn_norm needs the
    // attention's input gradient.
    const bool full = i > lowest || input_grad || embed_trains;
    const bool attn_norm_trains = full || detail::module_trains(l.attn_norm);
    const bool attn_half_trains = attn_norm_trains || detail::attention_trains(l.attn);
    // forward was: x' = h + mlp(mlp_norm(h))
    Tensor dmlp = l.mlp.backward(ctx, dx, attn_half_trains || detail::module_trains(l.mlp_norm));
    if (!attn_half_trains) {
      if (dmlp.defined()) l.mlp_norm.backward(ctx, dmlp);  // its weight gradient only
      break;
    }
    Tensor dh = add_new(ctx, dx, l.mlp_norm.backward(ctx, dmlp));
    // forward was: h = x + attn(attn_norm(x))
    Tensor dattn = l.attn.backward(ctx, dh, attn_norm_trains);
    if (!full) {
      if (dattn.defined()) l.attn_norm.backward(ctx, dattn);  // its weight gradient only
      break;
    }
    dx = scope.end(add_new(ctx, dh, l.attn_norm.backward(ctx, dattn)));
  }
  if (embed_trains) embed.backward(ctx, dx);
  return input_grad || embed_trains ? dx : Tensor();
}

KvCache LlamaModel::new_cache(int64_t batch, int64_t capacity) const {
  KvCache c;
  for (const auto& l : layers) c.layers.push_back(l.attn.make_cache(batch, capacity));
  return c;
}

Tensor LlamaModel::forward_cached(nn::Context& ctx, const Tensor& ids, KvCache& cache,
                                  const Tensor& mask, const Tensor& positions) {
  detail::check(ids.defined() && ids.dtype() == DType::I32 && ids.ndim() == 2,
                "forward_cached: ids is " + (ids.defined() ? ids.str() : std::string("undefined")) +
                    ", expected I32[B, T]");
  detail::check(cache.layers.size() == layers.size(),
                "forward_cached: the cache has " + std::to_string(cache.layers.size()) +
                    " layers, the model " + std::to_string(layers.size()) + " (use new_cache)");
  const int64_t Tn = ids.dim(1);
  detail::check(cache.len() + Tn <= cache.capacity(),
                "forward_cached: cache holds " + std::to_string(cache.len()) + " of " +
                    std::to_string(cache.capacity()) + " positions, cannot append " +
                    std::to_string(Tn));
  // Same block as forward(), with each attention reading and extending its layer's cache.
  Tensor x = embed.forward(ctx, ids);
  for (size_t i = 0; i < layers.size(); ++i) {
    LlamaLayer& l = layers[i];
    Tensor a =
        l.attn.forward_cached(ctx, l.attn_norm.forward(ctx, x), cache.layers[i], mask, positions);
    Tensor h = add_new(ctx, x, a);
    x = add_new(ctx, h, l.mlp.forward(ctx, l.mlp_norm.forward(ctx, h)));
  }
  return lm_head.forward(ctx, norm.forward(ctx, x));
}

NamedLinears LlamaModel::linears() {
  NamedLinears out;
  for (size_t i = 0; i < layers.size(); ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    out.emplace_back(p + "self_attn.q_proj", &layers[i].attn.q);
    out.emplace_back(p + "self_attn.k_proj", &layers[i].attn.k);
    out.emplace_back(p + "self_attn.v_proj", &layers[i].attn.v);
    out.emplace_back(p + "self_attn.o_proj", &layers[i].attn.o);
    out.emplace_back(p + "mlp.gate_proj", &layers[i].mlp.gate);
    out.emplace_back(p + "mlp.up_proj", &layers[i].mlp.up);
    out.emplace_back(p + "mlp.down_proj", &layers[i].mlp.down);
  }
  out.emplace_back("lm_head", &lm_head);
  return out;
}

nn::NamedParameters LlamaModel::named_parameters() {
  nn::NamedParameters out;
  embed.parameters("model.embed_tokens.", out);
  for (size_t i = 0; i < layers.size(); ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LlamaLayer& l = layers[i];
    l.attn_norm.parameters(p + "input_layernorm.", out);
    l.attn.parameters(p + "self_attn.", out);
    l.mlp_norm.parameters(p + "post_attention_layernorm.", out);
    l.mlp.parameters(p + "mlp.", out);
  }
  norm.parameters("model.norm.", out);
  if (!cfg_.tied_embeddings) lm_head.parameters("lm_head.", out);
  return out;
}

namespace detail {

namespace {

void check_llama_config(const ModelConfig& c, const std::string& where) {
  check(c.vocab > 0 && c.hidden > 0 && c.n_layers > 0 && c.n_heads > 0 && c.n_kv_heads > 0 &&
            c.intermediate > 0 && c.head_dim > 0,
        where + ": sizes must be positive (vocab " + std::to_string(c.vocab) + ", hidden " +
            std::to_string(c.hidden) + ", layers " + std::to_string(c.n_layers) + ", heads " +
            std::to_string(c.n_heads) + "/" + std::to_string(c.n_kv_heads) + ", intermediate " +
            std::to_string(c.intermediate) + ")");
  check(c.n_heads % c.n_kv_heads == 0,
        where + ": the number of key/value heads (" + std::to_string(c.n_kv_heads) +
            ") must divide the number of heads (" + std::to_string(c.n_heads) + ")");
  check(c.head_dim % 2 == 0, where + ": head_dim must be even for RoPE");
  // Before the RoPE frequency table (head_dim / 2 entries) is made from it.
  constexpr int64_t kMaxHeadDim = int64_t{1} << 16;
  check(c.head_dim <= kMaxHeadDim, where + ": field 'head_dim': " + std::to_string(c.head_dim) +
                                       " is beyond the limit of " + std::to_string(kMaxHeadDim));
  try {
    nn::rope_frequencies(c.rope_theta, c.head_dim, c.rope_scaling, c.max_positions);
  } catch (const Error& e) {
    throw Error("[models] " + where + ": RoPE scaling: " + e.what());
  }
}

// The parameters LlamaModel(c) allocates (lm_head too, even when tied), in double: no overflow.
double llama_params(const ModelConfig& c) {
  const double V = static_cast<double>(c.vocab), H = static_cast<double>(c.hidden),
               I = static_cast<double>(c.intermediate), D = static_cast<double>(c.head_dim);
  const double q = static_cast<double>(c.n_heads) * D, kv = static_cast<double>(c.n_kv_heads) * D;
  const double layer = 2 * H * q + 2 * H * kv + 3 * H * I + 2 * H + 2 * q + 2 * kv + 3 * I;
  return 2 * V * H + static_cast<double>(c.n_layers) * layer + H;
}

const char* const kLlamaSizeFields =
    "the sizes (fields 'intermediate_size', 'num_attention_heads', 'num_key_value_heads', "
    "'head_dim')";

// Loads every tensor given a name mapping HF -> file name. q/k rows are fixed by `fix_qk`.
void load_llama_weights(LlamaModel& m, const WeightReader& r,
                        const std::function<std::string(const std::string&)>& file_name,
                        const std::function<Tensor(Tensor, bool is_q)>& fix_qk) {
  const ModelConfig& c = m.config();
  // nn::Embedding gathers (and dequantizes) rows of any stored dtype; a tied lm_head shares it.
  m.embed.weight.value = read_weight(r, file_name("model.embed_tokens.weight"), {c.vocab, c.hidden},
                                     true, m, "model.embed_tokens.weight");
  auto lin = [&](nn::Linear& l, const std::string& hf, int fix) {
    load_linear(r, file_name(hf), l, m, hf);
    if (fix) {
      l.weight.value = fix_qk(l.weight.value, fix == 1);
      if (l.has_bias()) l.bias.value = fix_qk(l.bias.value, fix == 1);
    }
  };
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LlamaLayer& l = m.layers[static_cast<size_t>(i)];
    l.attn_norm.weight.value = read_weight(r, file_name(p + "input_layernorm.weight"), {c.hidden},
                                           false, m, p + "input_layernorm.weight");
    lin(l.attn.q, p + "self_attn.q_proj", 1);
    lin(l.attn.k, p + "self_attn.k_proj", 2);
    lin(l.attn.v, p + "self_attn.v_proj", 0);
    lin(l.attn.o, p + "self_attn.o_proj", 0);
    l.mlp_norm.weight.value =
        read_weight(r, file_name(p + "post_attention_layernorm.weight"), {c.hidden}, false, m,
                    p + "post_attention_layernorm.weight");
    lin(l.mlp.gate, p + "mlp.gate_proj", 0);
    lin(l.mlp.up, p + "mlp.up_proj", 0);
    lin(l.mlp.down, p + "mlp.down_proj", 0);
  }
  m.norm.weight.value =
      read_weight(r, file_name("model.norm.weight"), {c.hidden}, false, m, "model.norm.weight");
  if (c.tied_embeddings)
    m.lm_head.weight.value = m.embed.weight.value;  // same storage, as torch's tied parameter
  else
    load_linear(r, file_name("lm_head"), m.lm_head, m, "lm_head");
}

}  // namespace

std::unique_ptr<Model> load_llama_folder(const std::string& dir, const io::json& j,
                                         const LoadOptions& opts) {
  const std::string where = (std::filesystem::path(dir) / "config.json").string();
  ModelConfig c;
  c.arch = "llama";
  c.source = dir;
  c.format = "safetensors";
  c.vocab = io::json_int(j, "vocab_size", where);
  c.hidden = io::json_int(j, "hidden_size", where);
  c.n_layers = io::json_int(j, "num_hidden_layers", where);
  c.n_heads = io::json_int(j, "num_attention_heads", where);
  c.n_kv_heads = io::json_int(j, "num_key_value_heads", where, c.n_heads);
  c.intermediate = io::json_int(j, "intermediate_size", where);
  c.max_positions = io::json_int(j, "max_position_embeddings", where, 2048);
  c.norm_eps = static_cast<float>(io::json_number(j, "rms_norm_eps", where, 1e-6));
  check(c.n_heads > 0, where + ": field 'num_attention_heads' must be positive");
  c.head_dim = io::json_int(j, "head_dim", where, c.hidden / c.n_heads);
  c.hidden_act = io::json_string(j, "hidden_act", where, "silu");
  check(c.hidden_act == "silu",
        where + ": field 'hidden_act': '" + c.hidden_act + "' is not supported (silu)");
  c.tied_embeddings = io::json_bool(j, "tie_word_embeddings", where, false);
  c.attention_bias = io::json_bool(j, "attention_bias", where, false);
  c.mlp_bias = io::json_bool(j, "mlp_bias", where, false);
  double theta = 0.0;
  rope_from_config_json(j, c.max_positions, where, &theta, &c.rope_scaling);
  c.rope_theta = static_cast<float>(theta);
  check_llama_config(c, where);

  auto st = std::make_shared<io::SafetensorsFolder>(io::SafetensorsFolder::open(dir));
  WeightReader r = folder_reader(st, dir);
  r.dequantize = opts.dequantize;
  r.quantize = opts.quantize;
  if (!c.tied_embeddings)
    check(r.has("lm_head.weight"), r.file + ": tensor 'lm_head.weight' is missing and " + where +
                                       " does not set tie_word_embeddings");
  {  // limits before allocation: LlamaModel(c) allocates all the config claims
    auto shape_of = [&st](const std::string& n) {
      return st->contains(n) ? &st->entry(n).shape : nullptr;
    };
    check_claimed_shape(where, "fields 'vocab_size' and 'hidden_size'", r.file,
                        "model.embed_tokens.weight", shape_of("model.embed_tokens.weight"),
                        {c.vocab, c.hidden});
    const std::string last =
        "model.layers." + std::to_string(c.n_layers - 1) + ".input_layernorm.weight";
    check_claimed_shape(where, "field 'num_hidden_layers'", r.file, last, shape_of(last),
                        {c.hidden});
    check_claimed_params(where, kLlamaSizeFields, llama_params(c), folder_data_bytes(*st), r.file);
  }
  auto m = std::make_unique<LlamaModel>(c);
  load_llama_weights(
      *m, r, [](const std::string& n) { return n; }, [](Tensor t, bool) { return t; });
  return m;
}

std::unique_ptr<Model> load_llama_gguf(const io::GgufFile& f, const LoadOptions& opts) {
  const std::string& where = f.path();
  ModelConfig c;
  c.arch = "llama";
  c.source = where;
  c.format = "gguf";
  c.hidden = f.get_int("llama.embedding_length");
  c.n_layers = f.get_int("llama.block_count");
  c.n_heads = f.get_int("llama.attention.head_count");
  c.n_kv_heads = f.get_int("llama.attention.head_count_kv", c.n_heads);
  c.intermediate = f.get_int("llama.feed_forward_length");
  c.max_positions = f.get_int("llama.context_length", 2048);
  c.norm_eps = static_cast<float>(f.get_float("llama.attention.layer_norm_rms_epsilon", 1e-5));
  c.rope_theta = static_cast<float>(f.get_float("llama.rope.freq_base", 10000.0));
  check(c.n_heads > 0, where + ": key 'llama.attention.head_count' must be positive");
  c.head_dim = f.get_int("llama.attention.key_length", c.hidden / c.n_heads);
  check(f.get_int("llama.rope.dimension_count", c.head_dim) == c.head_dim,
        where +
            ": key 'llama.rope.dimension_count' differs from the head size; partial RoPE is "
            "not supported");
  // llama.cpp: rope.scaling.type none | linear | yarn (+ factor, original_context_length, the
  // yarn betas and attn_factor); the older rope.scale_linear; llama3 as a rope_freqs tensor.
  {
    nn::RopeScaling& s = c.rope_scaling;
    std::string t = f.get_string("llama.rope.scaling.type", "none");
    if (t == "none" && f.has("llama.rope.scale_linear") &&
        f.get_float("llama.rope.scale_linear") != 1.0)
      t = "linear";
    check(t == "none" || t == "linear" || t == "yarn",
          where + ": key 'llama.rope.scaling.type': '" + t +
              "' is not supported (none, linear, yarn)");
    if (t != "none") {
      s.type = t == "linear" ? nn::RopeScaling::Type::Linear : nn::RopeScaling::Type::Yarn;
      s.factor = f.has("llama.rope.scaling.factor") ? f.get_float("llama.rope.scaling.factor")
                                                    : f.get_float("llama.rope.scale_linear");
      check(std::isfinite(s.factor) && s.factor >= 1.0,
            where + ": key 'llama.rope.scaling.factor' must be >= 1, got " +
                std::to_string(s.factor));
      s.original_max_positions =
          f.get_int("llama.rope.scaling.original_context_length", c.max_positions);
      if (s.type == nn::RopeScaling::Type::Yarn) {
        s.beta_fast = f.get_float("llama.rope.scaling.yarn_beta_fast", 32.0);
        s.beta_slow = f.get_float("llama.rope.scaling.yarn_beta_slow", 1.0);
        const double attn = f.get_float("llama.rope.scaling.attn_factor", 1.0);
        if (attn != 1.0) s.attention_factor = attn * (0.1 * std::log(s.factor) + 1.0);
      }
    }
    if (f.has_tensor("rope_freqs.weight")) {
      Tensor ff = f.tensor_f32("rope_freqs.weight");
      check(ff.numel() == c.head_dim / 2,
            where + ": tensor 'rope_freqs.weight' is " + ff.str() + ", expected " +
                std::to_string(c.head_dim / 2) + " values (head size / 2)");
      s.freq_factors.assign(ff.f32(), ff.f32() + ff.numel());
    }
  }
  c.hidden_act = "silu";
  check(f.has_tensor("token_embd.weight"), where + ": tensor 'token_embd.weight' is missing");
  c.vocab = f.tensor_info("token_embd.weight").shape.at(0);
  c.tied_embeddings = !f.has_tensor("output.weight");
  c.attention_bias = f.has_tensor("blk.0.attn_q.bias");
  check_llama_config(c, where);
  {  // limits before allocation: LlamaModel(c) allocates all the metadata claims
    auto shape_of = [&f](const std::string& n) {
      return f.has_tensor(n) ? &f.tensor_info(n).shape : nullptr;
    };
    check_claimed_shape(where, "key 'llama.embedding_length'", where, "token_embd.weight",
                        shape_of("token_embd.weight"), {c.vocab, c.hidden});
    const std::string last = "blk." + std::to_string(c.n_layers - 1) + ".attn_norm.weight";
    check_claimed_shape(where, "key 'llama.block_count'", where, last, shape_of(last), {c.hidden});
    uint64_t bytes = 0;
    for (const io::GgufTensorInfo& t : f.tensors()) bytes += t.nbytes;
    check_claimed_params(where,
                         "the sizes (keys 'llama.feed_forward_length', "
                         "'llama.attention.head_count', 'llama.attention.head_count_kv', "
                         "'llama.attention.key_length')",
                         llama_params(c), bytes, where);
  }

  WeightReader r;
  r.file = where;
  r.dequantize = opts.dequantize;
  r.has = [&f](const std::string& n) { return f.has_tensor(n); };
  r.release = [&f](const std::string& n) { f.release(n); };
  // Zero-copy views with the stored dtype (K-quants included); other types throw naming them.
  r.get = [&f](const std::string& n) { return f.tensor(n); };
  r.dtype_name = [&f](const std::string& n) {
    return io::ggml_type_name(f.tensor_info(n).ggml_type);
  };
  auto m = std::make_unique<LlamaModel>(c);
  const int64_t nh = c.n_heads, nkv = c.n_kv_heads;
  load_llama_weights(*m, r, llama_gguf_name, [nh, nkv](Tensor t, bool is_q) {
    return llama_qk_from_gguf(t, is_q ? nh : nkv);
  });
  return m;
}

}  // namespace detail

std::string llama_gguf_name(const std::string& hf_name) {
  // HF module (part of a layer) -> GGUF, as llama.cpp's tensor map (gguf-py TENSOR_NAMES).
  static const std::pair<const char*, const char*> kLayer[] = {
      {"input_layernorm", "attn_norm"},    {"self_attn.q_proj", "attn_q"},
      {"self_attn.k_proj", "attn_k"},      {"self_attn.v_proj", "attn_v"},
      {"self_attn.o_proj", "attn_output"}, {"post_attention_layernorm", "ffn_norm"},
      {"mlp.gate_proj", "ffn_gate"},       {"mlp.up_proj", "ffn_up"},
      {"mlp.down_proj", "ffn_down"}};
  static const std::pair<const char*, const char*> kTop[] = {
      {"model.embed_tokens", "token_embd"}, {"model.norm", "output_norm"}, {"lm_head", "output"}};
  std::string module = hf_name, suffix;
  for (const char* s : {".weight", ".bias"})
    if (hf_name.ends_with(s)) {
      suffix = s;
      module = hf_name.substr(0, hf_name.size() - suffix.size());
    }
  for (const auto& [hf, gguf] : kTop)
    if (module == hf) return gguf + suffix;
  const std::string pre = "model.layers.";
  if (module.rfind(pre, 0) == 0) {
    const size_t dot = module.find('.', pre.size());
    const std::string layer =
        module.substr(pre.size(), dot == std::string::npos ? 0 : dot - pre.size());
    const bool numeric =
        !layer.empty() && layer.find_first_not_of("0123456789") == std::string::npos;
    if (numeric && dot != std::string::npos)
      for (const auto& [hf, gguf] : kLayer)
        if (module.compare(dot + 1, std::string::npos, hf) == 0)
          return "blk." + layer + "." + gguf + suffix;
  }
  throw Error("[models] no llama.cpp GGUF name for '" + hf_name + "'");
}

namespace {

// Row i of the result is row src_row(i) of w (as bytes), for each of the n_head heads.
template <class SrcRow>
Tensor permute_qk_rows(const Tensor& w, int64_t n_head, const char* what, SrcRow src_row) {
  const int64_t rows = w.ndim() >= 1 ? w.dim(0) : 0;
  if (n_head <= 0 || rows % n_head != 0 || (rows / n_head) % 2 != 0)
    throw Error(std::string("[models] ") + what + ": cannot permute the rows of " + w.str() +
                " for " + std::to_string(n_head) +
                " heads (rows must be n_head x an even head size)");
  const int64_t D = rows / n_head;
  const size_t rb = w.nbytes() / static_cast<size_t>(rows);
  Tensor out = Tensor::empty(w.shape(), w.dtype());
  const auto* src = static_cast<const uint8_t*>(w.raw());
  auto* dst = static_cast<uint8_t*>(out.raw());
  for (int64_t h = 0; h < n_head; ++h)
    for (int64_t i = 0; i < D / 2; ++i)
      for (int64_t j = 0; j < 2; ++j) {
        const auto [to, from] = src_row(h * D, D, i, j);
        std::memcpy(dst + static_cast<size_t>(to) * rb, src + static_cast<size_t>(from) * rb, rb);
      }
  return out;
}

}  // namespace

Tensor llama_qk_to_gguf(const Tensor& w, int64_t n_head) {
  // gguf[h*D + 2*i + j] = hf[h*D + j*(D/2) + i]
  return permute_qk_rows(
      w, n_head, "llama_qk_to_gguf", [](int64_t base, int64_t D, int64_t i, int64_t j) {
        return std::pair<int64_t, int64_t>{base + 2 * i + j, base + j * (D / 2) + i};
      });
}

Tensor llama_qk_from_gguf(const Tensor& w, int64_t n_head) {
  // hf[h*D + j*(D/2) + i] = gguf[h*D + 2*i + j]
  return permute_qk_rows(
      w, n_head, "llama_qk_from_gguf", [](int64_t base, int64_t D, int64_t i, int64_t j) {
        return std::pair<int64_t, int64_t>{base + j * (D / 2) + i, base + 2 * i + j};
      });
}

}  // namespace lorafit::models
