// BERT family encoder (BertForSequenceClassification): embeddings, post-LN layers, pooler and
// classifier. Conventions as nn/: activation gradients are new tensors; parameter gradients
// accumulate only for trainable parameters.
//
// Per layer (post-LN, transformers BertLayer):
//   h1 = LN_attn(x + drop(attn(x)))         attention.output.LayerNorm
//   h2 = LN_out(h1 + drop(mlp(h1)))         output.LayerNorm, mlp = output.dense(gelu(intermediate.dense))
#include <cmath>
#include <cstring>
#include <filesystem>

#include "models/models_internal.h"

namespace lorafit::models {

namespace {

Tensor add_new(nn::Context& ctx, const Tensor& a, const Tensor& b) {
  Tensor y = ctx.alloc(a.shape());
  kernels::add(a, b, y);
  return y;
}

}  // namespace

BertModel::BertModel(const ModelConfig& c) {
  cfg_ = c;
  const int64_t C = c.hidden;
  word = nn::Embedding(c.vocab, C);
  position = nn::Embedding(c.max_positions, C);
  token_type = nn::Embedding(c.type_vocab, C);
  emb_norm = nn::LayerNorm(C, c.norm_eps);
  emb_drop = nn::Dropout(hidden_dropout);
  const kernels::GeluKind gk =
      c.hidden_act == "gelu" ? kernels::GeluKind::Erf : kernels::GeluKind::Tanh;
  layers.resize(static_cast<size_t>(c.n_layers));
  for (auto& l : layers) {
    nn::AttentionConfig ac;
    ac.hidden = C;
    ac.n_heads = c.n_heads;
    ac.n_kv_heads = c.n_heads;
    ac.head_dim = c.head_dim;
    ac.qkv_bias = true;
    ac.out_bias = true;
    l.attn = nn::Attention(ac);
    l.attn_norm = nn::LayerNorm(C, c.norm_eps);
    l.mlp = nn::MLP(nn::MlpKind::Gelu, C, c.intermediate, true, gk);
    l.out_norm = nn::LayerNorm(C, c.norm_eps);
  }
  pooler = nn::Linear(C, C, true);
  classifier = nn::Linear(C, c.num_labels, true);
}

void BertModel::set_dropout(float hidden_p, float attention_p, float classifier_p) {
  hidden_dropout = hidden_p;
  emb_drop = nn::Dropout(hidden_p);
  for (auto& l : layers) {
    l.attn.cfg.dropout = attention_p;
    l.attn_drop = nn::Dropout(hidden_p);
    l.out_drop = nn::Dropout(hidden_p);
  }
  cls_drop = nn::Dropout(classifier_p);
}

Tensor BertModel::forward(nn::Context& ctx, const Tensor& ids, const Tensor& mask,
                          const Tensor& token_types) {
  detail::check(ids.defined() && ids.dtype() == DType::I32 && ids.ndim() == 2,
                "bert forward: ids is " + (ids.defined() ? ids.str() : std::string("undefined")) +
                    ", expected I32[B, T]");
  Tensor e = word.forward(ctx, ids);  // [B, T, C]
  Tensor h = forward_embeds(ctx, e, mask, token_types);
  word_from_ids_ = true;
  return h;
}

Tensor BertModel::forward_embeds(nn::Context& ctx, const Tensor& embeds, const Tensor& mask,
                                 const Tensor& token_types) {
  const int64_t C = cfg_.hidden;
  detail::check(embeds.defined() && embeds.dtype() == DType::F32 && embeds.ndim() == 3 &&
                    embeds.dim(2) == C,
                "bert forward: embeds is " +
                    (embeds.defined() ? embeds.str() : std::string("undefined")) +
                    ", expected F32[B, T, " + std::to_string(C) + "]");
  word_from_ids_ = false;
  const int64_t B = embeds.dim(0), T = embeds.dim(1);
  detail::check(T <= cfg_.max_positions, "bert forward: sequence length " + std::to_string(T) +
                                             " exceeds max_position_embeddings " +
                                             std::to_string(cfg_.max_positions));
  // position ids 0..T-1 for every row (absolute positions, no past); token types default 0
  Tensor pos = Tensor::empty({B, T}, DType::I32);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) pos.i32()[b * T + t] = static_cast<int32_t>(t);
  Tensor tt = token_types;
  if (!tt.defined()) tt = Tensor::zeros({B, T}, DType::I32);
  detail::check(tt.dtype() == DType::I32 && tt.shape() == Shape{B, T},
                "bert forward: token_types is " + tt.str() + ", expected I32[" +
                    std::to_string(B) + ", " + std::to_string(T) + "]");
  mask_f32_ = detail::mask_f32(mask, B, T);

  Tensor s = add_new(ctx, embeds, position.forward(ctx, pos));
  s = add_new(ctx, s, token_type.forward(ctx, tt));
  Tensor x = emb_drop.forward(ctx, emb_norm.forward(ctx, s));
  for (auto& l : layers) {
    Tensor a = l.attn_drop.forward(ctx, l.attn.forward(ctx, x, mask_f32_));
    Tensor h1 = l.attn_norm.forward(ctx, add_new(ctx, x, a));
    Tensor m = l.out_drop.forward(ctx, l.mlp.forward(ctx, h1));
    x = l.out_norm.forward(ctx, add_new(ctx, h1, m));
  }
  return x;
}

Tensor BertModel::backward(nn::Context& ctx, const Tensor& dhidden) {
  Tensor dx = dhidden;
  for (size_t i = layers.size(); i-- > 0;) {
    BertLayer& l = layers[i];
    // forward was: x' = LN_out(h1 + drop(mlp(h1)))
    Tensor ds2 = l.out_norm.backward(ctx, dx);
    Tensor dh1 = add_new(ctx, ds2, l.mlp.backward(ctx, l.out_drop.backward(ctx, ds2)));
    // forward was: h1 = LN_attn(x + drop(attn(x)))
    Tensor ds1 = l.attn_norm.backward(ctx, dh1);
    dx = add_new(ctx, ds1, l.attn.backward(ctx, l.attn_drop.backward(ctx, ds1)));
  }
  // forward was: x0 = drop(LN(word + pos + type))
  Tensor de = emb_norm.backward(ctx, emb_drop.backward(ctx, dx));
  if (position.weight.trainable) position.backward(ctx, de);
  if (token_type.weight.trainable) token_type.backward(ctx, de);
  if (word_from_ids_ && word.weight.trainable) word.backward(ctx, de);
  return de;
}

Tensor BertModel::classify(nn::Context& ctx, const Tensor& hidden) {
  const int64_t C = cfg_.hidden;
  detail::check(hidden.defined() && hidden.dtype() == DType::F32 && hidden.ndim() == 3 &&
                    hidden.dim(2) == C,
                "bert classify: hidden is " +
                    (hidden.defined() ? hidden.str() : std::string("undefined")) +
                    ", expected F32[B, T, " + std::to_string(C) + "]");
  const int64_t B = hidden.dim(0), T = hidden.dim(1);
  hidden_shape_ = hidden.shape();
  Tensor cls = ctx.alloc({B, C});  // h[:, 0, :]
  for (int64_t b = 0; b < B; ++b)
    std::memcpy(cls.f32() + b * C, hidden.f32() + b * T * C, sizeof(float) * C);
  Tensor z = pooler.forward(ctx, cls);
  pooled_ = ctx.alloc({B, C});
  for (int64_t i = 0; i < B * C; ++i) pooled_.f32()[i] = std::tanh(z.f32()[i]);
  return classifier.forward(ctx, cls_drop.forward(ctx, pooled_));
}

Tensor BertModel::classify_backward(nn::Context& ctx, const Tensor& dlogits) {
  detail::check(pooled_.defined(), "bert classify_backward called before classify");
  const int64_t B = hidden_shape_[0], T = hidden_shape_[1], C = hidden_shape_[2];
  Tensor dp = cls_drop.backward(ctx, classifier.backward(ctx, dlogits));
  // forward was: p = tanh(z)  ->  dz = dp (1 - p²)
  Tensor dz = ctx.alloc({B, C});
  for (int64_t i = 0; i < B * C; ++i) {
    const float p = pooled_.f32()[i];
    dz.f32()[i] = dp.f32()[i] * (1.0f - p * p);
  }
  Tensor dcls = pooler.backward(ctx, dz);
  Tensor dh = ctx.zeros({B, T, C});
  for (int64_t b = 0; b < B; ++b)
    std::memcpy(dh.f32() + b * T * C, dcls.f32() + b * C, sizeof(float) * C);
  return dh;
}

NamedLinears BertModel::linears() {
  NamedLinears out;
  for (size_t i = 0; i < layers.size(); ++i) {
    const std::string p = "bert.encoder.layer." + std::to_string(i) + ".";
    out.emplace_back(p + "attention.self.query", &layers[i].attn.q);
    out.emplace_back(p + "attention.self.key", &layers[i].attn.k);
    out.emplace_back(p + "attention.self.value", &layers[i].attn.v);
    out.emplace_back(p + "attention.output.dense", &layers[i].attn.o);
    out.emplace_back(p + "intermediate.dense", &layers[i].mlp.up);
    out.emplace_back(p + "output.dense", &layers[i].mlp.down);
  }
  out.emplace_back("bert.pooler.dense", &pooler);
  out.emplace_back("classifier", &classifier);
  return out;
}

nn::NamedParameters BertModel::named_parameters() {
  nn::NamedParameters out;
  word.parameters("bert.embeddings.word_embeddings.", out);
  position.parameters("bert.embeddings.position_embeddings.", out);
  token_type.parameters("bert.embeddings.token_type_embeddings.", out);
  emb_norm.parameters("bert.embeddings.LayerNorm.", out);
  for (size_t i = 0; i < layers.size(); ++i) {
    const std::string p = "bert.encoder.layer." + std::to_string(i) + ".";
    BertLayer& l = layers[i];
    l.attn.q.parameters(p + "attention.self.query.", out);
    l.attn.k.parameters(p + "attention.self.key.", out);
    l.attn.v.parameters(p + "attention.self.value.", out);
    l.attn.o.parameters(p + "attention.output.dense.", out);
    l.attn_norm.parameters(p + "attention.output.LayerNorm.", out);
    l.mlp.up.parameters(p + "intermediate.dense.", out);
    l.mlp.down.parameters(p + "output.dense.", out);
    l.out_norm.parameters(p + "output.LayerNorm.", out);
  }
  pooler.parameters("bert.pooler.dense.", out);
  classifier.parameters("classifier.", out);
  return out;
}

namespace detail {

std::unique_ptr<Model> load_bert_folder(const std::string& dir, const io::json& j,
                                        const LoadOptions& opts) {
  const std::string where = (std::filesystem::path(dir) / "config.json").string();
  ModelConfig c;
  c.arch = "bert";
  c.source = dir;
  c.format = "safetensors";
  c.vocab = io::json_int(j, "vocab_size", where);
  c.hidden = io::json_int(j, "hidden_size", where);
  c.n_layers = io::json_int(j, "num_hidden_layers", where);
  c.n_heads = io::json_int(j, "num_attention_heads", where);
  c.n_kv_heads = c.n_heads;
  c.intermediate = io::json_int(j, "intermediate_size", where);
  c.max_positions = io::json_int(j, "max_position_embeddings", where);
  c.type_vocab = io::json_int(j, "type_vocab_size", where, 2);
  c.norm_eps = static_cast<float>(io::json_number(j, "layer_norm_eps", where, 1e-12));
  c.hidden_act = io::json_string(j, "hidden_act", where, "gelu");
  check(c.hidden_act == "gelu" || c.hidden_act == "gelu_new" ||
            c.hidden_act == "gelu_pytorch_tanh",
        where + ": field 'hidden_act': '" + c.hidden_act +
            "' is not supported (gelu, gelu_new, gelu_pytorch_tanh)");
  std::string pe = io::json_string(j, "position_embedding_type", where, "absolute");
  check(pe == "absolute", where + ": field 'position_embedding_type': '" + pe +
                              "' is not supported (absolute)");
  check(c.vocab > 0 && c.hidden > 0 && c.n_layers > 0 && c.n_heads > 0 && c.intermediate > 0 &&
            c.max_positions > 0 && c.type_vocab > 0,
        where + ": sizes must be positive");
  check(c.hidden % c.n_heads == 0, where + ": field 'hidden_size' (" + std::to_string(c.hidden) +
                                       ") is not divisible by num_attention_heads (" +
                                       std::to_string(c.n_heads) + ")");
  c.head_dim = c.hidden / c.n_heads;
  int64_t labels = opts.num_labels;
  if (labels <= 0) labels = io::json_int(j, "num_labels", where, 0);
  if (labels <= 0 && j.contains("id2label") && j["id2label"].is_object())
    labels = static_cast<int64_t>(j["id2label"].size());
  if (labels <= 0) labels = 2;
  c.num_labels = labels;
  const float hp = static_cast<float>(io::json_number(j, "hidden_dropout_prob", where, 0.1));
  const float ap =
      static_cast<float>(io::json_number(j, "attention_probs_dropout_prob", where, 0.1));
  const float cp = static_cast<float>(io::json_number(j, "classifier_dropout", where, hp));

  auto st = std::make_shared<io::SafetensorsFolder>(io::SafetensorsFolder::open(dir));
  WeightReader r = folder_reader(st, dir);
  r.dequantize = opts.dequantize;
  // BertForSequenceClassification keys start with "bert."; a bare BertModel's do not.
  std::string pre;
  if (r.has("bert.embeddings.word_embeddings.weight"))
    pre = "bert.";
  else
    check(r.has("embeddings.word_embeddings.weight"),
          r.file + ": tensor 'bert.embeddings.word_embeddings.weight' (or "
                   "'embeddings.word_embeddings.weight') is missing: not a BERT checkpoint?");

  auto m = std::make_unique<BertModel>(c);
  m->set_dropout(hp, ap, cp);
  Model& dt = *m;
  auto emb = [&](nn::Embedding& e, const std::string& n, int64_t rows) {
    e.weight.value = read_weight(r, pre + n + ".weight", {rows, c.hidden}, true, dt, "bert." + n + ".weight");
  };
  auto ln = [&](nn::LayerNorm& l, const std::string& n) {
    l.weight.value = read_weight(r, pre + n + ".weight", {c.hidden}, false, dt, "bert." + n + ".weight");
    l.bias.value = read_weight(r, pre + n + ".bias", {c.hidden}, false, dt, "bert." + n + ".bias");
  };
  emb(m->word, "embeddings.word_embeddings", c.vocab);
  emb(m->position, "embeddings.position_embeddings", c.max_positions);
  emb(m->token_type, "embeddings.token_type_embeddings", c.type_vocab);
  ln(m->emb_norm, "embeddings.LayerNorm");
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string p = "encoder.layer." + std::to_string(i) + ".";
    BertLayer& l = m->layers[static_cast<size_t>(i)];
    load_linear(r, pre + p + "attention.self.query", l.attn.q, dt, "bert." + p + "attention.self.query");
    load_linear(r, pre + p + "attention.self.key", l.attn.k, dt, "bert." + p + "attention.self.key");
    load_linear(r, pre + p + "attention.self.value", l.attn.v, dt, "bert." + p + "attention.self.value");
    load_linear(r, pre + p + "attention.output.dense", l.attn.o, dt, "bert." + p + "attention.output.dense");
    ln(l.attn_norm, p + "attention.output.LayerNorm");
    load_linear(r, pre + p + "intermediate.dense", l.mlp.up, dt, "bert." + p + "intermediate.dense");
    load_linear(r, pre + p + "output.dense", l.mlp.down, dt, "bert." + p + "output.dense");
    ln(l.out_norm, p + "output.LayerNorm");
  }
  // Pooler and classifier: from the checkpoint when there, else initialized as transformers'
  // _init_weights does (normal(0, initializer_range), zero bias).
  const float init_std = static_cast<float>(io::json_number(j, "initializer_range", where, 0.02));
  auto head = [&](nn::Linear& lin, const std::string& key, const std::string& hf, uint64_t stream) {
    // A classifier with another label count is re-initialized (transformers'
    // ignore_mismatched_sizes), so a checkpoint can be fine-tuned for a new task.
    if (r.has(key + ".weight") && r.get(key + ".weight").dim(0) == lin.out_features()) {
      load_linear(r, key, lin, dt, hf);
      return;
    }
    normal_init(lin.weight.value, init_std, opts.seed, stream);
    lin.bias.value.zero();
    m->mark_initialized(hf + ".weight");
    m->mark_initialized(hf + ".bias");
  };
  head(m->pooler, pre + "pooler.dense", "bert.pooler.dense", 1);
  head(m->classifier, "classifier", "classifier", 2);
  return m;
}

}  // namespace detail
}  // namespace lorafit::models
