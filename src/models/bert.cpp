// BERT family encoder (Bert/Roberta/DistilBert ForSequenceClassification): embeddings, post-LN
// layers, classification head. Conventions as nn/: activation gradients are new tensors;
// parameter gradients accumulate only for trainable parameters.
//
// Per layer (post-LN, transformers BertLayer / DistilBERT TransformerBlock):
//   h1 = LN_attn(x + drop(attn(x)))
//   x' = LN_out(h1 + drop(mlp(h1)))          mlp = down(gelu(up(h1)))
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

// Hugging Face module names of one flavor, relative to the model prefix ("bert." ...) or, for
// the head, absolute.
struct BertNames {
  std::string prefix, layer, q, k, v, o, attn_norm, up, down, out_norm, head_dense, head_out;
  bool token_types = true;
  bool tanh_head = true;
};

constexpr int64_t kMaxLabels = int64_t{1} << 20;  // classes of a classification head

const BertNames& names_of(const std::string& arch) {
  static const BertNames bert{"bert.",
                              "encoder.layer.",
                              "attention.self.query",
                              "attention.self.key",
                              "attention.self.value",
                              "attention.output.dense",
                              "attention.output.LayerNorm",
                              "intermediate.dense",
                              "output.dense",
                              "output.LayerNorm",
                              "bert.pooler.dense",
                              "classifier",
                              true,
                              true};
  static const BertNames roberta{"roberta.",
                                 "encoder.layer.",
                                 "attention.self.query",
                                 "attention.self.key",
                                 "attention.self.value",
                                 "attention.output.dense",
                                 "attention.output.LayerNorm",
                                 "intermediate.dense",
                                 "output.dense",
                                 "output.LayerNorm",
                                 "classifier.dense",
                                 "classifier.out_proj",
                                 true,
                                 true};
  static const BertNames distil{"distilbert.",
                                "transformer.layer.",
                                "attention.q_lin",
                                "attention.k_lin",
                                "attention.v_lin",
                                "attention.out_lin",
                                "sa_layer_norm",
                                "ffn.lin1",
                                "ffn.lin2",
                                "output_layer_norm",
                                "pre_classifier",
                                "classifier",
                                false,
                                false};
  if (arch == "roberta") return roberta;
  if (arch == "distilbert") return distil;
  return bert;
}

}  // namespace

BertModel::BertModel(const ModelConfig& c) {
  cfg_ = c;
  prefix_ = names_of(c.arch).prefix;
  const int64_t C = c.hidden;
  word = nn::Embedding(c.vocab, C);
  position = nn::Embedding(c.max_positions, C);
  if (c.type_vocab > 0) token_type = nn::Embedding(c.type_vocab, C);
  emb_norm = nn::LayerNorm(C, c.norm_eps);
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
  head_dense = nn::Linear(C, C, true);
  classifier = nn::Linear(C, c.num_labels, true);
}

void BertModel::set_dropout(float hidden_p, float attention_p, float classifier_p) {
  const bool distil = cfg_.arch == "distilbert";
  emb_drop = nn::Dropout(hidden_p);
  for (auto& l : layers) {
    l.attn.cfg.dropout = attention_p;
    l.attn_drop = nn::Dropout(distil ? 0.0f : hidden_p);  // DistilBERT: none after out_lin
    l.out_drop = nn::Dropout(hidden_p);
  }
  head_in_drop = nn::Dropout(cfg_.arch == "roberta" ? classifier_p : 0.0f);
  cls_drop = nn::Dropout(classifier_p);
}

Tensor BertModel::forward(nn::Context& ctx, const Tensor& ids, const Tensor& mask,
                          const Tensor& token_types) {
  detail::check(ids.defined() && ids.dtype() == DType::I32 && ids.ndim() == 2,
                cfg_.arch + " forward: ids is " +
                    (ids.defined() ? ids.str() : std::string("undefined")) +
                    ", expected I32[B, T]");
  const int64_t B = ids.dim(0), T = ids.dim(1);
  Tensor pos;
  if (cfg_.arch == "roberta") {
    // transformers' create_position_ids_from_input_ids: real tokens count up from pad + 1,
    // padding tokens sit at pad.
    pos = Tensor::empty({B, T}, DType::I32);
    const int32_t pad = static_cast<int32_t>(cfg_.pad_token_id);
    for (int64_t b = 0; b < B; ++b) {
      int32_t n = 0;
      for (int64_t t = 0; t < T; ++t) {
        const bool real = ids.i32()[b * T + t] != pad;
        n += real;
        pos.i32()[b * T + t] = real ? n + pad : pad;
      }
    }
  }
  Tensor e = word.forward(ctx, ids);  // [B, T, C]
  Tensor h = encode(ctx, e, mask, token_types, pos);
  word_from_ids_ = true;
  return h;
}

Tensor BertModel::forward_embeds(nn::Context& ctx, const Tensor& embeds, const Tensor& mask,
                                 const Tensor& token_types) {
  return encode(ctx, embeds, mask, token_types, Tensor());
}

Tensor BertModel::encode(nn::Context& ctx, const Tensor& embeds, const Tensor& mask,
                         const Tensor& token_types, const Tensor& positions) {
  const int64_t C = cfg_.hidden;
  detail::check(
      embeds.defined() && embeds.dtype() == DType::F32 && embeds.ndim() == 3 && embeds.dim(2) == C,
      cfg_.arch + " forward: embeds is " +
          (embeds.defined() ? embeds.str() : std::string("undefined")) + ", expected F32[B, T, " +
          std::to_string(C) + "]");
  word_from_ids_ = false;
  const int64_t B = embeds.dim(0), T = embeds.dim(1);
  // Absolute positions 0..T-1 (RoBERTa: pad+1.. unless computed from the ids).
  const int64_t off = cfg_.arch == "roberta" ? cfg_.pad_token_id + 1 : 0;
  detail::check(T + off <= cfg_.max_positions,
                cfg_.arch + " forward: sequence length " + std::to_string(T) +
                    " exceeds max_position_embeddings " + std::to_string(cfg_.max_positions) +
                    (off ? " - " + std::to_string(off) : std::string()));
  Tensor pos = positions;
  if (!pos.defined()) {
    pos = Tensor::empty({B, T}, DType::I32);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t) pos.i32()[b * T + t] = static_cast<int32_t>(t + off);
  }
  mask_f32_ = detail::mask_f32(mask, B, T);

  Tensor s = add_new(ctx, embeds, position.forward(ctx, pos));
  if (cfg_.type_vocab > 0) {
    Tensor tt = token_types;
    if (!tt.defined()) tt = Tensor::zeros({B, T}, DType::I32);
    detail::check(tt.dtype() == DType::I32 && tt.shape() == Shape{B, T},
                  cfg_.arch + " forward: token_types is " + tt.str() + ", expected I32[" +
                      std::to_string(B) + ", " + std::to_string(T) + "]");
    s = add_new(ctx, s, token_type.forward(ctx, tt));
  }
  Tensor x = emb_drop.forward(ctx, emb_norm.forward(ctx, s));
  no_grad_forward_ = ctx.no_grad;
  // Recomputation: keep each layer's input and starting RNG counter only (see LlamaModel).
  ckpt_ = gradient_checkpointing && !ctx.no_grad;
  ckpt_in_.clear();
  ckpt_rng_.clear();
  if (ckpt_)
    for (size_t i = 0; i < layers.size(); ++i) ckpt_in_.push_back(ctx.alloc(x.shape()));
  // no_grad or recomputation: keep one layer's activations at a time
  detail::LayerScope scope(ctx, x.shape(), ctx.no_grad || ckpt_);
  for (size_t i = 0; i < layers.size(); ++i) {
    if (ckpt_) {
      std::copy(x.f32(), x.f32() + x.numel(), ckpt_in_[i].f32());
      ckpt_rng_.push_back(ctx.rng_counter);
    }
    scope.begin();
    x = scope.end(layer_forward(ctx, layers[i], x));
  }
  return x;
}

Tensor BertModel::layer_forward(nn::Context& ctx, BertLayer& l, const Tensor& x) {
  Tensor a = l.attn_drop.forward(ctx, l.attn.forward(ctx, x, mask_f32_));
  Tensor h1 = l.attn_norm.forward(ctx, add_new(ctx, x, a));
  Tensor m = l.out_drop.forward(ctx, l.mlp.forward(ctx, h1));
  return l.out_norm.forward(ctx, add_new(ctx, h1, m));
}

Tensor BertModel::backward(nn::Context& ctx, const Tensor& dhidden) {
  detail::check(
      !no_grad_forward_,
      cfg_.arch + " backward: the last forward ran with ctx.no_grad (no activations kept)");
  Tensor dx = dhidden;
  // Without input_grad (and no embedding part training), layers below the lowest one with
  // something to train are not visited, and that layer computes only what reaches its trainable
  // parts (see Model::input_grad).
  const bool embed_trains = detail::module_trains(emb_norm) || position.weight.trainable ||
                            (cfg_.type_vocab > 0 && token_type.weight.trainable) ||
                            (word_from_ids_ && word.weight.trainable);
  size_t lowest = 0;
  if (!input_grad && !embed_trains) {
    lowest = layers.size();
    for (size_t i = 0; i < layers.size(); ++i) {
      BertLayer& l = layers[i];
      if (detail::attention_trains(l.attn) || detail::module_trains(l.attn_norm) ||
          detail::mlp_trains(l.mlp) || detail::module_trains(l.out_norm)) {
        lowest = i;
        break;
      }
    }
  }
  detail::LayerScope scope(ctx, dhidden.shape());
  for (size_t i = layers.size(); i-- > lowest;) {
    BertLayer& l = layers[i];
    scope.begin();
    if (ckpt_) {  // re-run the layer from its input with the same random draws
      const uint64_t counter = ctx.rng_counter;
      ctx.rng_counter = ckpt_rng_[i];
      layer_forward(ctx, l, ckpt_in_[i].view(dx.shape()));
      ctx.rng_counter = counter;
    }
    const bool full = i > lowest || input_grad || embed_trains;
    const bool attn_half_trains =
        full || detail::module_trains(l.attn_norm) || detail::attention_trains(l.attn);
    // forward was: x' = LN_out(h1 + drop(mlp(h1)))
    Tensor ds2 = l.out_norm.backward(ctx, dx);
    if (!attn_half_trains && !detail::mlp_trains(l.mlp)) break;  // out_norm's gradient only
    Tensor dmlp = l.mlp.backward(ctx, l.out_drop.backward(ctx, ds2), attn_half_trains);
    if (!attn_half_trains) break;
    Tensor dh1 = add_new(ctx, ds2, dmlp);
    // forward was: h1 = LN_attn(x + drop(attn(x)))
    Tensor ds1 = l.attn_norm.backward(ctx, dh1);
    Tensor dattn = l.attn.backward(ctx, l.attn_drop.backward(ctx, ds1), full);
    if (!full) break;
    dx = scope.end(add_new(ctx, ds1, dattn));
  }
  if (!input_grad && !embed_trains) return Tensor();
  // forward was: x0 = drop(LN(word + pos + type))
  Tensor de = emb_norm.backward(ctx, emb_drop.backward(ctx, dx));
  if (position.weight.trainable) position.backward(ctx, de);
  if (cfg_.type_vocab > 0 && token_type.weight.trainable) token_type.backward(ctx, de);
  if (word_from_ids_ && word.weight.trainable) word.backward(ctx, de);
  return de;
}

Tensor BertModel::logits(nn::Context& ctx, const Tensor& ids, const Tensor& mask,
                         const Tensor& token_types) {
  return classify(ctx, forward(ctx, ids, mask, token_types));
}

Tensor BertModel::logits_backward(nn::Context& ctx, const Tensor& dlogits) {
  return backward(ctx, classify_backward(ctx, dlogits));
}

Tensor BertModel::classify(nn::Context& ctx, const Tensor& hidden) {
  const int64_t C = cfg_.hidden;
  detail::check(
      hidden.defined() && hidden.dtype() == DType::F32 && hidden.ndim() == 3 && hidden.dim(2) == C,
      cfg_.arch + " classify: hidden is " +
          (hidden.defined() ? hidden.str() : std::string("undefined")) + ", expected F32[B, T, " +
          std::to_string(C) + "]");
  const int64_t B = hidden.dim(0), T = hidden.dim(1);
  hidden_shape_ = hidden.shape();
  Tensor cls = ctx.alloc({B, C});  // h[:, 0, :]
  for (int64_t b = 0; b < B; ++b)
    std::memcpy(cls.f32() + b * C, hidden.f32() + b * T * C, sizeof(float) * C);
  Tensor z = head_dense.forward(ctx, head_in_drop.forward(ctx, cls));
  head_act_ = ctx.alloc({B, C});
  const bool tanh_head = names_of(cfg_.arch).tanh_head;
  for (int64_t i = 0; i < B * C; ++i)
    head_act_.f32()[i] = tanh_head ? std::tanh(z.f32()[i]) : std::max(z.f32()[i], 0.0f);
  return classifier.forward(ctx, cls_drop.forward(ctx, head_act_));
}

Tensor BertModel::classify_backward(nn::Context& ctx, const Tensor& dlogits) {
  detail::check(head_act_.defined(), cfg_.arch + " classify_backward called before classify");
  const int64_t B = hidden_shape_[0], T = hidden_shape_[1], C = hidden_shape_[2];
  Tensor da = cls_drop.backward(ctx, classifier.backward(ctx, dlogits));
  // forward was: a = tanh(z) -> dz = da (1 - a²);  a = relu(z) -> dz = da [a > 0]
  const bool tanh_head = names_of(cfg_.arch).tanh_head;
  Tensor dz = ctx.alloc({B, C});
  for (int64_t i = 0; i < B * C; ++i) {
    const float a = head_act_.f32()[i];
    dz.f32()[i] = tanh_head ? da.f32()[i] * (1.0f - a * a) : (a > 0.0f ? da.f32()[i] : 0.0f);
  }
  Tensor dcls = head_in_drop.backward(ctx, head_dense.backward(ctx, dz));
  Tensor dh = ctx.zeros({B, T, C});
  for (int64_t b = 0; b < B; ++b)
    std::memcpy(dh.f32() + b * T * C, dcls.f32() + b * C, sizeof(float) * C);
  return dh;
}

NamedLinears BertModel::linears() {
  const BertNames& n = names_of(cfg_.arch);
  NamedLinears out;
  for (size_t i = 0; i < layers.size(); ++i) {
    const std::string p = n.prefix + n.layer + std::to_string(i) + ".";
    out.emplace_back(p + n.q, &layers[i].attn.q);
    out.emplace_back(p + n.k, &layers[i].attn.k);
    out.emplace_back(p + n.v, &layers[i].attn.v);
    out.emplace_back(p + n.o, &layers[i].attn.o);
    out.emplace_back(p + n.up, &layers[i].mlp.up);
    out.emplace_back(p + n.down, &layers[i].mlp.down);
  }
  out.emplace_back(n.head_dense, &head_dense);
  out.emplace_back(n.head_out, &classifier);
  return out;
}

nn::NamedParameters BertModel::named_parameters() {
  const BertNames& n = names_of(cfg_.arch);
  nn::NamedParameters out;
  const std::string e = n.prefix + "embeddings.";
  word.parameters(e + "word_embeddings.", out);
  position.parameters(e + "position_embeddings.", out);
  if (cfg_.type_vocab > 0) token_type.parameters(e + "token_type_embeddings.", out);
  emb_norm.parameters(e + "LayerNorm.", out);
  for (size_t i = 0; i < layers.size(); ++i) {
    const std::string p = n.prefix + n.layer + std::to_string(i) + ".";
    BertLayer& l = layers[i];
    l.attn.q.parameters(p + n.q + ".", out);
    l.attn.k.parameters(p + n.k + ".", out);
    l.attn.v.parameters(p + n.v + ".", out);
    l.attn.o.parameters(p + n.o + ".", out);
    l.attn_norm.parameters(p + n.attn_norm + ".", out);
    l.mlp.up.parameters(p + n.up + ".", out);
    l.mlp.down.parameters(p + n.down + ".", out);
    l.out_norm.parameters(p + n.out_norm + ".", out);
  }
  head_dense.parameters(n.head_dense + ".", out);
  classifier.parameters(n.head_out + ".", out);
  return out;
}

namespace detail {

std::unique_ptr<Model> load_bert_folder(const std::string& dir, const io::json& j,
                                        const LoadOptions& opts) {
  const std::string where = (std::filesystem::path(dir) / "config.json").string();
  const std::string arch = io::json_string(j, "model_type", where);
  const bool distil = arch == "distilbert";
  const BertNames& n = names_of(arch);
  ModelConfig c;
  c.arch = arch;
  c.source = dir;
  c.format = "safetensors";
  // DistilBERT has its own field names (dim, n_layers, ...) and fixed LayerNorm eps 1e-12.
  c.vocab = io::json_int(j, "vocab_size", where);
  c.hidden = io::json_int(j, distil ? "dim" : "hidden_size", where);
  c.n_layers = io::json_int(j, distil ? "n_layers" : "num_hidden_layers", where);
  c.n_heads = io::json_int(j, distil ? "n_heads" : "num_attention_heads", where);
  c.n_kv_heads = c.n_heads;
  c.intermediate = io::json_int(j, distil ? "hidden_dim" : "intermediate_size", where);
  c.max_positions = io::json_int(j, "max_position_embeddings", where);
  c.type_vocab = distil ? 0 : io::json_int(j, "type_vocab_size", where, 2);
  c.norm_eps =
      distil ? 1e-12f : static_cast<float>(io::json_number(j, "layer_norm_eps", where, 1e-12));
  c.pad_token_id = io::json_int(j, "pad_token_id", where, arch == "roberta" ? 1 : 0);
  c.hidden_act = io::json_string(j, distil ? "activation" : "hidden_act", where, "gelu");
  check(c.hidden_act == "gelu" || c.hidden_act == "gelu_new" || c.hidden_act == "gelu_pytorch_tanh",
        where + ": field '" + (distil ? "activation" : "hidden_act") + "': '" + c.hidden_act +
            "' is not supported (gelu, gelu_new, gelu_pytorch_tanh)");
  if (distil) {
    check(!io::json_bool(j, "sinusoidal_pos_embds", where, false),
          where + ": field 'sinusoidal_pos_embds': true is not supported");
  } else {
    std::string pe = io::json_string(j, "position_embedding_type", where, "absolute");
    check(pe == "absolute",
          where + ": field 'position_embedding_type': '" + pe + "' is not supported (absolute)");
  }
  check(c.vocab > 0 && c.hidden > 0 && c.n_layers > 0 && c.n_heads > 0 && c.intermediate > 0 &&
            c.max_positions > 0 && c.type_vocab >= 0,
        where + ": sizes must be positive");
  check(c.hidden % c.n_heads == 0, where + ": hidden size " + std::to_string(c.hidden) +
                                       " is not divisible by the number of heads " +
                                       std::to_string(c.n_heads));
  c.head_dim = c.hidden / c.n_heads;
  int64_t labels = opts.num_labels;
  if (labels <= 0) labels = io::json_int(j, "num_labels", where, 0);
  if (labels <= 0 && j.contains("id2label") && j["id2label"].is_object())
    labels = static_cast<int64_t>(j["id2label"].size());
  if (labels <= 0) labels = 2;
  c.num_labels = labels;
  const float hp = static_cast<float>(
      io::json_number(j, distil ? "dropout" : "hidden_dropout_prob", where, 0.1));
  const float ap = static_cast<float>(io::json_number(
      j, distil ? "attention_dropout" : "attention_probs_dropout_prob", where, 0.1));
  const float cp = static_cast<float>(
      io::json_number(j, distil ? "seq_classif_dropout" : "classifier_dropout", where, hp));

  auto st = std::make_shared<io::SafetensorsFolder>(io::SafetensorsFolder::open(dir));
  WeightReader r = folder_reader(st, dir);
  r.dequantize = opts.dequantize;
  r.quantize = opts.quantize;
  // *ForSequenceClassification keys carry the prefix ("bert."); a bare BertModel's do not.
  std::string pre;
  if (r.has(n.prefix + "embeddings.word_embeddings.weight"))
    pre = n.prefix;
  else
    check(r.has("embeddings.word_embeddings.weight"),
          r.file + ": tensor '" + n.prefix +
              "embeddings.word_embeddings.weight' (or "
              "'embeddings.word_embeddings.weight') is missing: not a " +
              arch + " checkpoint?");

  {  // limits before allocation: BertModel(c) allocates all the config claims
    auto shape_of = [&st](const std::string& name) {
      return st->contains(name) ? &st->entry(name).shape : nullptr;
    };
    const std::string h = distil ? "'dim'" : "'hidden_size'";
    const std::string e = pre + "embeddings.";
    check_claimed_shape(where, "fields 'vocab_size' and " + h, r.file,
                        e + "word_embeddings.weight", shape_of(e + "word_embeddings.weight"),
                        {c.vocab, c.hidden});
    check_claimed_shape(where, "field 'max_position_embeddings'", r.file,
                        e + "position_embeddings.weight",
                        shape_of(e + "position_embeddings.weight"), {c.max_positions, c.hidden});
    if (c.type_vocab > 0)
      check_claimed_shape(where, "field 'type_vocab_size'", r.file,
                          e + "token_type_embeddings.weight",
                          shape_of(e + "token_type_embeddings.weight"), {c.type_vocab, c.hidden});
    const std::string last =
        pre + n.layer + std::to_string(c.n_layers - 1) + "." + n.out_norm + ".weight";
    check_claimed_shape(where, distil ? "field 'n_layers'" : "field 'num_hidden_layers'", r.file,
                        last, shape_of(last), {c.hidden});
    const double H = static_cast<double>(c.hidden), I = static_cast<double>(c.intermediate);
    const double params =
        static_cast<double>(c.vocab + c.max_positions + c.type_vocab) * H +
        static_cast<double>(c.n_layers) * (4 * H * H + 2 * H * I + 9 * H + I);
    check_claimed_params(where,
                         distil ? "the sizes (field 'hidden_dim')"
                                : "the sizes (field 'intermediate_size')",
                         params, folder_data_bytes(*st), r.file);
    // A fresh classifier (labels x hidden) is not in the file: a fixed limit.
    check(c.num_labels <= kMaxLabels,
          where + ": " + std::to_string(c.num_labels) + " labels (field 'num_labels', 'id2label' "
                  "or the data's label column) exceed the limit of " +
              std::to_string(kMaxLabels));
  }
  auto m = std::make_unique<BertModel>(c);
  m->set_dropout(hp, ap, cp);
  Model& dt = *m;
  auto emb = [&](nn::Embedding& e, const std::string& name, int64_t rows) {
    e.weight.value = read_weight(r, pre + name + ".weight", {rows, c.hidden}, true, dt,
                                 n.prefix + name + ".weight");
  };
  auto ln = [&](nn::LayerNorm& l, const std::string& name) {
    l.weight.value =
        read_weight(r, pre + name + ".weight", {c.hidden}, false, dt, n.prefix + name + ".weight");
    l.bias.value =
        read_weight(r, pre + name + ".bias", {c.hidden}, false, dt, n.prefix + name + ".bias");
  };
  auto lin = [&](nn::Linear& l, const std::string& name) {
    load_linear(r, pre + name, l, dt, n.prefix + name);
  };
  emb(m->word, "embeddings.word_embeddings", c.vocab);
  emb(m->position, "embeddings.position_embeddings", c.max_positions);
  if (c.type_vocab > 0) emb(m->token_type, "embeddings.token_type_embeddings", c.type_vocab);
  ln(m->emb_norm, "embeddings.LayerNorm");
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string p = n.layer + std::to_string(i) + ".";
    BertLayer& l = m->layers[static_cast<size_t>(i)];
    lin(l.attn.q, p + n.q);
    lin(l.attn.k, p + n.k);
    lin(l.attn.v, p + n.v);
    lin(l.attn.o, p + n.o);
    ln(l.attn_norm, p + n.attn_norm);
    lin(l.mlp.up, p + n.up);
    lin(l.mlp.down, p + n.down);
    ln(l.out_norm, p + n.out_norm);
  }
  // Head: from the checkpoint when there, else initialized as transformers' _init_weights does
  // (normal(0, initializer_range), zero bias). A classifier with another label count is
  // re-initialized (transformers' ignore_mismatched_sizes), so a checkpoint can be fine-tuned for
  // a new task. BERT's pooler sits under the model prefix in the file ("pooler.dense" bare).
  const float init_std = static_cast<float>(io::json_number(j, "initializer_range", where, 0.02));
  auto head = [&](nn::Linear& l, const std::string& key, const std::string& hf, uint64_t stream) {
    if (r.has(key + ".weight") && r.get(key + ".weight").dim(0) == l.out_features()) {
      load_linear(r, key, l, dt, hf);
      return;
    }
    normal_init(l.weight.value, init_std, opts.seed, stream);
    l.bias.value.zero();
    m->mark_initialized(hf + ".weight");
    m->mark_initialized(hf + ".bias");
  };
  const std::string dense_key = arch == "bert" ? pre + "pooler.dense" : n.head_dense;
  head(m->head_dense, dense_key, n.head_dense, 1);
  head(m->classifier, n.head_out, n.head_out, 2);
  return m;
}

}  // namespace detail
}  // namespace lorafit::models
