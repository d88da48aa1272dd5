// models/: whole-model parity with Hugging Face transformers (fixtures made by
// tools/ref_models.py), GGUF loading, KV cache, gradients, config errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "lorafit/io.h"
#include "lorafit/kernels.h"
#include "lorafit/models.h"
#include "lorafit/quant.h"
#include "test_util.h"

namespace fs = std::filesystem;
using lorafit::Error;
using lorafit::tensor::DType;
using lorafit::tensor::Tensor;
namespace models = lorafit::models;
namespace io = lorafit::io;
namespace nn = lorafit::nn;

namespace {

const std::string kFix = std::string(LORAFIT_FIXTURES) + "/models";
const std::string kModels = std::string(LORAFIT_SOURCE_DIR) + "/models";

// max |a - b| (over the entries a [B, T] mask keeps), NaN propagating: the shared helper.
using test_util::finite_diff_at;
using test_util::max_abs_diff;
using test_util::nan_max;

struct Ref {
  io::SafetensorsFile f;
  explicit Ref(const std::string& name) : f(io::SafetensorsFile::open(kFix + "/" + name)) {}
  Tensor f32(const std::string& n) const { return f.get_f32(n).clone(); }
  Tensor i32(const std::string& n) const { return f.get(n).clone(); }
};

template <class T>
std::unique_ptr<T> load_as(const std::string& path) {
  auto m = models::load_model(path);
  T* p = dynamic_cast<T*>(m.get());
  EXPECT_NE(p, nullptr) << path;
  m.release();
  return std::unique_ptr<T>(p);
}

void require_model(const std::string& path) {
  ASSERT_TRUE(fs::exists(path)) << path << " is missing: run tools/fetch_models.sh first (CI does)";
}

// Mean cross-entropy of logits [N, V] against targets [N] (ignore -100) and its gradient.
float ce_loss(const Tensor& logits, const Tensor& targets, Tensor& dlogits) {
  Tensor probs = Tensor::empty(logits.shape());
  float loss = lorafit::kernels::cross_entropy_forward(logits, targets, -100, probs);
  dlogits = Tensor::empty(logits.shape());
  lorafit::kernels::cross_entropy_backward(probs, targets, -100, 1.0f, dlogits);
  return loss;
}

}  // namespace

// ---- tiny BERT ------------------------------------------------------------------------------

Tensor token_types_of(const Ref& ref) {
  return ref.f.contains("token_type_ids") ? ref.i32("token_type_ids") : Tensor();
}

const char* const kEncoders[] = {"tiny_bert", "tiny_roberta", "tiny_distilbert"};

TEST(TinyBert, HiddenPooledLogitsMatchTransformers) {
  for (const std::string name : kEncoders) {
    Ref ref(name + "_ref.safetensors");
    auto m = load_as<models::BertModel>(kFix + "/" + name);
    EXPECT_EQ(m->config().arch, name.substr(5));
    EXPECT_EQ(m->config().num_labels, 3);
    EXPECT_TRUE(m->initialized().empty());
    nn::Context ctx;
    Tensor ids = ref.i32("input_ids"), mask = ref.i32("attention_mask");
    Tensor h = m->forward(ctx, ids, mask, token_types_of(ref));
    const double dh = max_abs_diff(h, ref.f32("last_hidden"));
    const double dp = max_abs_diff(models::mean_pool(h, mask), ref.f32("mean_pooled"));
    const double dl = max_abs_diff(m->classify(ctx, h), ref.f32("logits"));
    std::printf("%s max abs err: hidden %.3g, pooled %.3g, logits %.3g\n", name.c_str(), dh, dp,
                dl);
    EXPECT_LT(dh, 1e-5) << name;
    EXPECT_LT(dp, 1e-5) << name;
    EXPECT_LT(dl, 1e-5) << name;
  }
}

TEST(TinyBert, GradientsMatchTorch) {
  for (const std::string name : kEncoders) {
    Ref ref(name + "_ref.safetensors");
    auto m = load_as<models::BertModel>(kFix + "/" + name);
    m->classifier.set_trainable(true);
    nn::Context ctx;
    Tensor ids = ref.i32("input_ids");
    Tensor emb = m->word.forward(ctx, ids);  // inputs_embeds, as the fixture's torch run
    Tensor h = m->forward_embeds(ctx, emb, ref.i32("attention_mask"), token_types_of(ref));
    Tensor logits = m->classify(ctx, h);
    EXPECT_LT(max_abs_diff(logits, ref.f32("logits_from_embeds")), 1e-5) << name;
    Tensor dlogits;
    const float loss = ce_loss(logits, ref.i32("labels"), dlogits);
    EXPECT_NEAR(loss, ref.f32("loss").f32()[0], 1e-5) << name;
    Tensor demb = m->backward(ctx, m->classify_backward(ctx, dlogits));
    const double de = max_abs_diff(demb, ref.f32("grad_inputs_embeds"));
    const double dw = max_abs_diff(m->classifier.weight.grad, ref.f32("grad_classifier_weight"));
    const double db = max_abs_diff(m->classifier.bias.grad, ref.f32("grad_classifier_bias"));
    std::printf("%s grad max abs err: inputs_embeds %.3g, classifier.weight %.3g, bias %.3g\n",
                name.c_str(), de, dw, db);
    EXPECT_LT(de, 1e-5) << name;
    EXPECT_LT(dw, 1e-5) << name;
    EXPECT_LT(db, 1e-5) << name;
    // Frozen parameters got no gradient memory.
    EXPECT_FALSE(m->layers[0].attn.q.weight.grad.defined());
  }
}

// Central finite differences of the loss (fp32 forward) against our backward, on a few input
// embedding entries and classifier weights. eps 1e-2 on O(1) inputs: truncation ~eps² and
// rounding ~1e-7/eps, so |fd - analytic| <= 1e-3 · max(1, |g|·10) is a real check.
TEST(TinyBert, FiniteDifferenceInputAndHeadGradient) {
  Ref ref("tiny_bert_ref.safetensors");
  auto m = load_as<models::BertModel>(kFix + "/tiny_bert");
  m->classifier.set_trainable(true);
  Tensor ids = ref.i32("input_ids"), mask = ref.i32("attention_mask"),
         tt = ref.i32("token_type_ids"), labels = ref.i32("labels");
  nn::Context ctx;
  Tensor emb = m->word.forward(ctx, ids).clone();
  auto loss_of = [&](const Tensor& e) {
    nn::Context c;
    Tensor d;
    return static_cast<double>(
        ce_loss(m->classify(c, m->forward_embeds(c, e, mask, tt)), labels, d));
  };
  Tensor dlogits;
  ce_loss(m->classify(ctx, m->forward_embeds(ctx, emb, mask, tt)), labels, dlogits);
  Tensor g = m->backward(ctx, m->classify_backward(ctx, dlogits)).clone();
  Tensor gw = m->classifier.weight.grad.clone();
  const float eps = 1e-2f;
  double worst = 0;
  Tensor e = emb.clone();
  for (int64_t i : {0L, 7L, 33L, 100L, 321L, 500L, 31 + 32 * 11L, 32 * 25L + 3}) {
    const double fd = finite_diff_at(
        e, i, [&] { return loss_of(e); }, eps);
    worst = nan_max(worst, std::fabs(fd - g.f32()[i]) / std::max(1e-2, std::fabs(fd)));
    EXPECT_NEAR(fd, g.f32()[i], 2e-4 + 2e-2 * std::fabs(fd)) << "inputs_embeds[" << i << "]";
  }
  for (int64_t i : {0L, 5L, 40L, 95L}) {
    const double fd = finite_diff_at(
        m->classifier.weight.value, i, [&] { return loss_of(emb); }, eps);
    EXPECT_NEAR(fd, gw.f32()[i], 2e-4 + 2e-2 * std::fabs(fd)) << "classifier.weight[" << i << "]";
  }
  std::printf("tiny bert finite-difference worst rel err (inputs_embeds): %.3g\n", worst);
}

TEST(TinyBert, NamesAreHuggingFaceNames) {
  const char* first[] = {"bert.encoder.layer.0.attention.self.query",
                         "roberta.encoder.layer.0.attention.self.query",
                         "distilbert.transformer.layer.0.attention.q_lin"};
  const char* head[] = {"classifier", "classifier.out_proj", "classifier"};
  for (int i = 0; i < 3; ++i) {
    const std::string name = kEncoders[i];
    auto m = load_as<models::BertModel>(kFix + "/" + name);
    io::SafetensorsFolder st = io::SafetensorsFolder::open(kFix + "/" + name);
    const std::vector<std::string> names = st.names();
    std::set<std::string> want(names.begin(), names.end()), got;
    for (const auto& [n, p] : m->named_parameters()) got.insert(n);
    EXPECT_EQ(got, want) << name;
    auto lin = m->linears();
    ASSERT_EQ(lin.size(), 2u * 6 + 2);
    EXPECT_EQ(lin[0].first, first[i]);
    EXPECT_EQ(lin.back().first, head[i]);
    EXPECT_EQ(lin.back().second, &m->classifier);
  }
}

// ---- tiny Llama -----------------------------------------------------------------------------

TEST(TinyLlama, LogitsMatchTransformers) {
  Ref ref("tiny_llama_ref.safetensors");
  for (const char* name : {"tiny_llama", "tiny_llama_tied", "tiny_llama_bf16"}) {
    auto m = load_as<models::LlamaModel>(kFix + "/" + name);
    nn::Context ctx;
    const double d =
        max_abs_diff(m->forward(ctx, ref.i32("input_ids")), ref.f32(std::string(name) + "_logits"));
    std::printf("%s logits max abs err %.3g\n", name, d);
    EXPECT_LT(d, 1e-5) << name;
  }
  auto tied = load_as<models::LlamaModel>(kFix + "/tiny_llama_tied");
  EXPECT_TRUE(tied->config().tied_embeddings);
  EXPECT_TRUE(tied->lm_head.weight.value.same_storage(tied->embed.weight.value));
  auto bf = load_as<models::LlamaModel>(kFix + "/tiny_llama_bf16");
  EXPECT_EQ(bf->layers[0].attn.q.weight.value.dtype(), DType::BF16);  // kept as stored
  EXPECT_EQ(bf->source_dtypes().at("model.layers.0.self_attn.q_proj.weight"), "BF16");
}

TEST(TinyLlama, PaddedBatchesMatchTransformers) {
  Ref ref("tiny_llama_ref.safetensors");
  for (const char* name : {"tiny_llama", "tiny_llama_tied"}) {
    auto m = load_as<models::LlamaModel>(kFix + "/" + name);
    nn::Context ctx;
    Tensor rm = ref.i32("pad_right_mask"), lm = ref.i32("pad_left_mask");
    // Only real-token positions are meaningful (padded query rows differ by convention).
    const double dr = max_abs_diff(m->forward(ctx, ref.i32("pad_right_ids"), rm),
                                   ref.f32(std::string(name) + "_pad_right_logits"), rm);
    const double dl =
        max_abs_diff(m->forward(ctx, ref.i32("pad_left_ids"), lm, ref.i32("pad_left_positions")),
                     ref.f32(std::string(name) + "_pad_left_logits"), lm);
    std::printf("%s padded logits max abs err: right %.3g, left %.3g\n", name, dr, dl);
    EXPECT_LT(dr, 1e-5) << name;
    EXPECT_LT(dl, 1e-5) << name;
  }
}

TEST(TinyLlama, GgufEqualsFolderAndTransformers) {
  Ref ref("tiny_llama_ref.safetensors");
  for (const char* name : {"tiny_llama", "tiny_llama_tied"}) {
    auto g = load_as<models::LlamaModel>(kFix + "/" + name + ".gguf");
    auto f = load_as<models::LlamaModel>(kFix + "/" + name);
    EXPECT_EQ(g->config().format, "gguf");
    EXPECT_EQ(g->config().tied_embeddings, std::string(name) == "tiny_llama_tied");
    EXPECT_EQ(g->config().n_kv_heads, 2);
    EXPECT_FLOAT_EQ(g->config().rope_theta, 100000.0f);
    // Weights identical after un-permuting q/k.
    for (size_t l = 0; l < 2; ++l) {
      EXPECT_EQ(max_abs_diff(g->layers[l].attn.q.weight.value, f->layers[l].attn.q.weight.value),
                0.0);
      EXPECT_EQ(max_abs_diff(g->layers[l].attn.k.weight.value, f->layers[l].attn.k.weight.value),
                0.0);
    }
    nn::Context ctx;
    Tensor ids = ref.i32("input_ids");
    Tensor lg = g->forward(ctx, ids);
    EXPECT_EQ(max_abs_diff(lg, f->forward(ctx, ids)), 0.0) << name;
    const double d = max_abs_diff(lg, ref.f32(std::string(name) + "_logits"));
    std::printf("%s.gguf logits max abs err %.3g\n", name, d);
    EXPECT_LT(d, 1e-5);
  }
}

TEST(TinyLlama, InputGradientMatchesTorch) {
  Ref ref("tiny_llama_ref.safetensors");
  auto m = load_as<models::LlamaModel>(kFix + "/tiny_llama");
  nn::Context ctx;
  Tensor ids = ref.i32("input_ids");
  const int64_t B = ids.dim(0), T = ids.dim(1), V = m->config().vocab;
  Tensor logits = m->forward_embeds(ctx, m->embed.forward(ctx, ids));
  // Causal-LM loss as transformers: logits[:, t] predicts ids[:, t + 1]; the last is ignored.
  Tensor targets = Tensor::empty({B * T}, DType::I32);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      targets.i32()[b * T + t] = t + 1 < T ? ids.i32()[b * T + t + 1] : -100;
  Tensor dlogits;
  const float loss = ce_loss(logits.view({B * T, V}), targets, dlogits);
  EXPECT_NEAR(loss, ref.f32("tiny_llama_loss").f32()[0], 1e-5);
  Tensor demb = m->backward(ctx, dlogits.view({B, T, V}));
  const double d = max_abs_diff(demb, ref.f32("tiny_llama_grad_inputs_embeds"));
  std::printf("tiny llama grad inputs_embeds max abs err %.3g\n", d);
  EXPECT_LT(d, 1e-5);
}

// The chunked head + loss (Model::lm_loss_chunked, what training uses) equals the whole-logits
// path: loss, the gradient of every trainable parameter (all but the head) and, on a poisoned
// arena, nothing read after the chunk buffers were released. Chunks of 5 rows over B·T rows
// leave a remainder; some targets are ignored, one chunk entirely.
TEST(TinyLlama, ChunkedLmLossEqualsWholeLogits) {
  Ref ref("tiny_llama_ref.safetensors");
  auto m = load_as<models::LlamaModel>(kFix + "/tiny_llama");
  for (auto& [name, p] : m->named_parameters())
    if (name != "lm_head.weight") p->set_trainable(true);
  Tensor ids = ref.i32("input_ids");
  const int64_t B = ids.dim(0), T = ids.dim(1), V = m->config().vocab, N = B * T;
  ASSERT_GT(N, 12);
  Tensor targets = Tensor::empty({B, T}, DType::I32);
  for (int64_t i = 0; i < N; ++i) {
    const int64_t t = i % T;
    targets.i32()[i] = t + 1 < T && i % 7 != 3 ? ids.i32()[i + 1] : -100;
  }
  for (int64_t i = 5; i < 10; ++i) targets.i32()[i] = -100;  // rows 5..9: a whole chunk ignored
  auto grads = [&] {
    std::map<std::string, Tensor> g;
    for (auto& [name, p] : m->named_parameters())
      if (p->trainable) g[name] = p->grad.clone();
    return g;
  };
  for (auto& [name, p] : m->named_parameters()) p->zero_grad();
  lorafit::tensor::Arena arena;
  arena.poison = true;
  nn::Context ctx;
  ctx.arena = &arena;
  Tensor logits = m->forward(ctx, ids);
  Tensor probs = ctx.alloc({N, V}), dlogits = ctx.alloc({N, V});
  Tensor tg = targets.view({N});
  const float whole = lorafit::kernels::cross_entropy_forward(logits.view({N, V}), tg, -100, probs);
  lorafit::kernels::cross_entropy_backward(probs, tg, -100, 0.5f, dlogits);
  m->backward(ctx, dlogits.view({B, T, V}));
  auto g_whole = grads();
  arena.reset();
  for (auto& [name, p] : m->named_parameters()) p->zero_grad();
  auto loss = m->lm_loss_chunked(ctx, ids, Tensor(), targets, -100, 0.5f, 5);
  ASSERT_TRUE(loss.has_value());
  EXPECT_NEAR(*loss, whole, 1e-6 * std::fabs(whole));
  auto g_chunk = grads();
  ASSERT_EQ(g_chunk.size(), g_whole.size());
  ASSERT_GT(g_whole.size(), 5u);
  for (auto& [name, g] : g_whole) {
    double scale = 0;
    for (int64_t i = 0; i < g.numel(); ++i) scale = std::max(scale, std::fabs(double(g.f32()[i])));
    EXPECT_LE(max_abs_diff(g_chunk[name], g), 1e-5 * scale + 1e-12) << name;
    EXPECT_GT(scale, 0.0) << name;
  }
  // Forward only (dloss 0, no_grad as evaluation): the same loss, no gradient.
  arena.reset();
  for (auto& [name, p] : m->named_parameters()) p->zero_grad();
  ctx.no_grad = true;
  auto eval_loss = m->lm_loss_chunked(ctx, ids, Tensor(), targets, -100, 0.0f, 4);
  ctx.no_grad = false;
  ASSERT_TRUE(eval_loss.has_value());
  EXPECT_NEAR(*eval_loss, whole, 1e-6 * std::fabs(whole));
  for (auto& [name, g] : grads()) EXPECT_EQ(max_abs_diff(g, Tensor::zeros(g.shape())), 0.0) << name;
  // A trainable head needs its whole logits: declined, nothing run.
  m->lm_head.weight.set_trainable(true);
  EXPECT_FALSE(m->lm_loss_chunked(ctx, ids, Tensor(), targets, -100, 0.5f, 5).has_value());
}

TEST(TinyLlama, KvCacheEqualsFullForward) {
  Ref ref("tiny_llama_ref.safetensors");
  for (const char* name : {"tiny_llama", "tiny_llama_tied.gguf"}) {
    auto m = load_as<models::LlamaModel>(kFix + "/" + name);
    nn::Context ctx;
    Tensor ids = ref.i32("input_ids");  // [2, 9]
    const int64_t B = 2, T = 9, V = m->config().vocab;
    Tensor full = m->forward(ctx, ids).clone();
    models::KvCache cache = m->new_cache(B, 16);
    // Prompt of 4 tokens, then one token at a time.
    Tensor step_logits = Tensor::empty({B, T, V});
    auto feed = [&](int64_t t0, int64_t t1) {
      Tensor chunk = Tensor::empty({B, t1 - t0}, DType::I32);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = t0; t < t1; ++t)
          chunk.i32()[b * (t1 - t0) + t - t0] = ids.i32()[b * T + t];
      Tensor out = m->forward_cached(ctx, chunk, cache);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = t0; t < t1; ++t)
          for (int64_t v = 0; v < V; ++v)
            step_logits.f32()[(b * T + t) * V + v] = out.f32()[(b * (t1 - t0) + t - t0) * V + v];
    };
    feed(0, 4);
    for (int64_t t = 4; t < T; ++t) feed(t, t + 1);
    EXPECT_EQ(cache.len(), T);
    const double d = max_abs_diff(step_logits, full);
    std::printf("%s kv-cache vs full forward max abs err %.3g\n", name, d);
    EXPECT_LT(d, 1e-5);
    Tensor more = Tensor::zeros({B, 8}, DType::I32);
    EXPECT_THROW(m->forward_cached(ctx, more, cache), Error);  // 9 + 8 > capacity 16
  }
}

// Left-padded batch generation: prefill 5 tokens, then one at a time, with the growing mask and
// HF generate's position ids; real positions equal transformers' full forward.
TEST(TinyLlama, KvCacheLeftPaddedMatchesTransformers) {
  Ref ref("tiny_llama_ref.safetensors");
  auto m = load_as<models::LlamaModel>(kFix + "/tiny_llama");
  Tensor ids = ref.i32("pad_left_ids"), mask = ref.i32("pad_left_mask"),
         pos = ref.i32("pad_left_positions"), want = ref.f32("tiny_llama_pad_left_logits");
  const int64_t B = ids.dim(0), T = ids.dim(1), V = m->config().vocab;
  models::KvCache cache = m->new_cache(B, T);
  Tensor got = Tensor::zeros({B, T, V});
  nn::Context ctx;
  auto cols = [&](const Tensor& src, int64_t t0, int64_t t1) {  // src[:, t0:t1]
    Tensor out = Tensor::empty({B, t1 - t0}, DType::I32);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = t0; t < t1; ++t) out.i32()[b * (t1 - t0) + t - t0] = src.i32()[b * T + t];
    return out;
  };
  for (int64_t t0 = 0, t1 = 5; t0 < T; t0 = t1, t1 = t0 + 1) {
    Tensor out =
        m->forward_cached(ctx, cols(ids, t0, t1), cache, cols(mask, 0, t1), cols(pos, t0, t1));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = t0; t < t1; ++t)
        std::memcpy(got.f32() + (b * T + t) * V, out.f32() + (b * (t1 - t0) + t - t0) * V, V * 4);
  }
  const double d = max_abs_diff(got, want, mask);
  std::printf("tiny_llama left-padded kv-cache max abs err vs transformers %.3g\n", d);
  EXPECT_LT(d, 1e-5);
}

TEST(TinyLlama, NamesAreHuggingFaceNames) {
  auto m = load_as<models::LlamaModel>(kFix + "/tiny_llama");
  io::SafetensorsFolder st = io::SafetensorsFolder::open(kFix + "/tiny_llama");
  const std::vector<std::string> names = st.names();  // by value
  std::set<std::string> want(names.begin(), names.end()), got;
  for (const auto& [n, p] : m->named_parameters()) got.insert(n);
  EXPECT_EQ(got, want);
  auto tied = load_as<models::LlamaModel>(kFix + "/tiny_llama_tied.gguf");
  std::set<std::string> got_tied;
  for (const auto& [n, p] : tied->named_parameters()) got_tied.insert(n);
  want.erase("lm_head.weight");
  EXPECT_EQ(got_tied, want);
  auto lin = m->linears();
  ASSERT_EQ(lin.size(), 2u * 7 + 1);
  EXPECT_EQ(lin[0].first, "model.layers.0.self_attn.q_proj");
  EXPECT_EQ(lin[6].first, "model.layers.0.mlp.down_proj");
  EXPECT_EQ(lin.back().first, "lm_head");
}

// Every parameter knows its role (the optimizer's weight-decay groups): biases and norms as their
// modules say, which is what the names say too.
TEST(Models, ParametersCarryTheirRoles) {
  using lorafit::nn::ParamRole;
  for (const char* name : {"tiny_bert", "tiny_llama"}) {
    auto m = models::load_model(kFix + "/" + name);
    int norms = 0, biases = 0;
    for (auto& [n, p] : m->named_parameters()) {
      const bool norm =
          n.find("norm") != std::string::npos || n.find("LayerNorm") != std::string::npos;
      const ParamRole want = norm                  ? ParamRole::Norm
                             : n.ends_with("bias") ? ParamRole::Bias
                                                   : ParamRole::Weight;
      EXPECT_EQ(static_cast<int>(p->role), static_cast<int>(want)) << name << " " << n;
      norms += p->role == ParamRole::Norm;
      biases += p->role == ParamRole::Bias;
    }
    EXPECT_GT(norms, 0) << name;
    if (std::string(name) == "tiny_bert") {
      EXPECT_GT(biases, 0);
    }
  }
}

// ---- the Llama GGUF layout: one name table and one q/k permutation -------------------------

// llama.cpp's names (gguf-py TENSOR_NAMES for MODEL_ARCH.LLAMA): the output head is "output"
// (LLM_TENSOR_OUTPUT), with ".weight" like every tensor; the loader, the LoRA GGUF and the merged
// GGUF writers all go through llama_gguf_name.
TEST(LlamaGguf, NamesAreLlamaCppNames) {
  EXPECT_EQ(models::llama_gguf_name("lm_head.weight"), "output.weight");
  EXPECT_EQ(models::llama_gguf_name("lm_head"), "output");
  EXPECT_EQ(models::llama_gguf_name("model.embed_tokens.weight"), "token_embd.weight");
  EXPECT_EQ(models::llama_gguf_name("model.norm.weight"), "output_norm.weight");
  EXPECT_EQ(models::llama_gguf_name("model.layers.12.self_attn.q_proj.weight"),
            "blk.12.attn_q.weight");
  EXPECT_EQ(models::llama_gguf_name("model.layers.0.self_attn.k_proj.bias"), "blk.0.attn_k.bias");
  EXPECT_EQ(models::llama_gguf_name("model.layers.3.self_attn.o_proj"), "blk.3.attn_output");
  EXPECT_EQ(models::llama_gguf_name("model.layers.1.post_attention_layernorm.weight"),
            "blk.1.ffn_norm.weight");
  EXPECT_EQ(models::llama_gguf_name("model.layers.1.mlp.down_proj.weight"),
            "blk.1.ffn_down.weight");
  for (const char* bad : {"model.layers.x.self_attn.q_proj", "model.layers.0.self_attn.q_proj_x",
                          "bert.encoder.layer.0.attention.self.query", "output.weight"}) {
    try {
      models::llama_gguf_name(bad);
      ADD_FAILURE() << bad << ": no error";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()),
                std::string("[models] no llama.cpp GGUF name for '") + bad + "'");
    }
  }
  // Against real files (written by gguf-py from the HF folders): every HF tensor has its GGUF
  // tensor with the same number of values, and nothing else is in the GGUF; a tied head has no
  // "output.weight".
  for (const char* name : {"tiny_llama", "tiny_llama_tied"}) {
    io::SafetensorsFolder st = io::SafetensorsFolder::open(kFix + "/" + name);
    io::GgufFile g = io::GgufFile::open(kFix + "/" + name + ".gguf");
    std::set<std::string> mapped, in_gguf;
    for (const std::string& n : st.names()) {
      const std::string gn = models::llama_gguf_name(n);
      mapped.insert(gn);
      ASSERT_TRUE(g.has_tensor(gn)) << name << ": " << n << " -> " << gn;
      EXPECT_EQ(lorafit::tensor::shape_numel(g.tensor_info(gn).shape),
                lorafit::tensor::shape_numel(st.entry(n).shape))
          << gn;
    }
    for (const auto& ti : g.tensors()) in_gguf.insert(ti.name);
    EXPECT_EQ(mapped, in_gguf) << name;
    EXPECT_EQ(g.has_tensor("output.weight"), std::string(name) == "tiny_llama") << name;
  }
}

TEST(LlamaGguf, QkPermutationIsLlamaCppPermute) {
  const int64_t heads = 3, D = 6, cols = 32;
  Tensor w = Tensor::empty({heads * D, cols});
  for (int64_t r = 0; r < heads * D; ++r)
    for (int64_t c = 0; c < cols; ++c) w.f32()[r * cols + c] = static_cast<float>(r * 1000 + c);
  Tensor g = models::llama_qk_to_gguf(w, heads);
  // convert_hf_to_gguf.py permute: reshape(n_head, 2, D/2, cols).swapaxes(1, 2), i.e.
  // gguf row h*D + 2i + j is hf row h*D + j*D/2 + i.
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < D / 2; ++i)
      for (int64_t j = 0; j < 2; ++j)
        for (int64_t c = 0; c < cols; ++c)
          ASSERT_EQ(g.f32()[(h * D + 2 * i + j) * cols + c],
                    static_cast<float>((h * D + j * (D / 2) + i) * 1000 + c));
  EXPECT_EQ(max_abs_diff(models::llama_qk_from_gguf(g, heads), w), 0.0);
  // Rows move as bytes: a Q8_0 weight round-trips byte for byte, a bias [rows] too.
  Tensor q = lorafit::tensor::quantize(w, DType::Q8_0);
  Tensor back = models::llama_qk_from_gguf(models::llama_qk_to_gguf(q, heads), heads);
  ASSERT_EQ(back.nbytes(), q.nbytes());
  EXPECT_EQ(std::memcmp(back.raw(), q.raw(), q.nbytes()), 0);
  Tensor b = Tensor::empty({heads * D});
  for (int64_t r = 0; r < heads * D; ++r) b.f32()[r] = static_cast<float>(r);
  EXPECT_EQ(models::llama_qk_to_gguf(b, heads).f32()[1], static_cast<float>(D / 2));
  try {
    models::llama_qk_to_gguf(Tensor::empty({heads * 5, cols}), heads);
    ADD_FAILURE() << "odd head size: no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot permute the rows of"), std::string::npos)
        << e.what();
  }
}

// ---- config errors --------------------------------------------------------------------------

namespace {
std::string copy_with_config(const std::string& src, const std::string& tag,
                             const std::function<void(io::json&)>& edit) {
  fs::path dir =
      fs::temp_directory_path() / ("lorafit_models_test_" + tag + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  fs::copy_file(fs::path(src) / "model.safetensors", dir / "model.safetensors");
  io::json j = io::read_json_file((fs::path(src) / "config.json").string());
  edit(j);
  std::ofstream(dir / "config.json") << j.dump(2);
  return dir.string();
}

std::string error_of(const std::string& path) {
  try {
    models::load_model(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}
}  // namespace

TEST(Config, MissingOrWrongFieldNamesFileAndField) {
  struct Case {
    const char* model;
    const char* tag;
    std::function<void(io::json&)> edit;
    const char* field;
  };
  const Case cases[] = {
      {"tiny_bert", "bert_missing", [](io::json& j) { j.erase("hidden_size"); }, "hidden_size"},
      {"tiny_bert", "bert_type", [](io::json& j) { j["num_hidden_layers"] = "two"; },
       "num_hidden_layers"},
      {"tiny_llama", "llama_missing", [](io::json& j) { j.erase("intermediate_size"); },
       "intermediate_size"},
      {"tiny_llama", "llama_type", [](io::json& j) { j["rms_norm_eps"] = "small"; },
       "rms_norm_eps"},
      {"tiny_llama", "llama_rope", [](io::json& j) { j["rope_parameters"]["rope_type"] = "longrope"; },
       "rope_type"},
      {"tiny_llama", "unknown_arch", [](io::json& j) { j["model_type"] = "gpt_neox"; },
       "model_type"},
      {"tiny_llama", "shape", [](io::json& j) { j["hidden_size"] = 64; },
       "model.embed_tokens.weight"},
  };
  for (const auto& c : cases) {
    std::string dir = copy_with_config(kFix + "/" + c.model, c.tag, c.edit);
    std::string msg = error_of(dir);
    const bool names_file = msg.find(dir + "/config.json") != std::string::npos ||
                            msg.find(dir + "/model.safetensors") != std::string::npos;
    EXPECT_TRUE(names_file) << c.tag << ": " << msg;
    EXPECT_NE(msg.find(c.field), std::string::npos) << c.tag << ": " << msg;
    std::printf("%s: %s\n", c.tag, msg.c_str());
    fs::remove_all(dir);
  }
  EXPECT_NE(error_of(kFix + "/no_such_model").find("no_such_model"), std::string::npos);
}

// ---- real models ----------------------------------------------------------------------------

TEST(MiniLM, HiddenAndMeanPooledMatchTransformers) {
  const std::string dir = kModels + "/all-MiniLM-L6-v2";
  require_model(dir + "/config.json");
  Ref ref("minilm_ref.safetensors");
  auto m = load_as<models::BertModel>(dir);
  EXPECT_EQ(m->config().n_layers, 6);
  EXPECT_EQ(m->config().hidden, 384);
  nn::Context ctx;
  Tensor mask = ref.i32("attention_mask");
  Tensor h = m->forward(ctx, ref.i32("input_ids"), mask, ref.i32("token_type_ids"));
  const double dh = max_abs_diff(h, ref.f32("last_hidden"));
  const double dp = max_abs_diff(models::mean_pool(h, mask), ref.f32("mean_pooled"));
  std::printf("MiniLM max abs err: hidden %.3g, mean pooled %.3g\n", dh, dp);
  EXPECT_LT(dh, 1e-4);
  EXPECT_LT(dp, 1e-4);
}

TEST(SmolLM2, GgufLogitsMatchTransformers) {
  const std::string path = kModels + "/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf";
  require_model(path);
  Ref ref("smollm2_ref.safetensors");
  auto m = load_as<models::LlamaModel>(path);
  EXPECT_EQ(m->config().n_layers, 30);
  EXPECT_EQ(m->config().n_kv_heads, 3);
  EXPECT_TRUE(m->config().tied_embeddings);
  // Stored types stay (multiplied through fp32 tiles); q/k rows were un-permuted as bytes.
  EXPECT_EQ(m->layers[0].attn.q.weight.value.dtype(), DType::Q4_1);
  EXPECT_EQ(m->embed.weight.value.dtype(), DType::Q8_0);
  EXPECT_EQ(m->source_dtypes().at("model.layers.0.self_attn.k_proj.weight"), "Q4_1");
  nn::Context ctx;
  Tensor ids = ref.i32("input_ids");  // [2, 8]
  Tensor logits = m->forward(ctx, ids);
  const int64_t V = m->config().vocab, N = ids.numel();
  Tensor cols = ref.i32("columns");
  const int64_t K = cols.numel();
  Tensor sub = Tensor::empty({ids.dim(0), ids.dim(1), K});
  Tensor lse = Tensor::empty({ids.dim(0), ids.dim(1)});
  Tensor want_argmax = ref.i32("argmax");
  int argmax_mismatch = 0;
  for (int64_t r = 0; r < N; ++r) {
    const float* row = logits.f32() + r * V;
    for (int64_t k = 0; k < K; ++k) sub.f32()[r * K + k] = row[cols.i32()[k]];
    double mx = -INFINITY, s = 0;
    int64_t am = 0;
    for (int64_t v = 0; v < V; ++v)
      if (row[v] > mx) mx = row[v], am = v;
    for (int64_t v = 0; v < V; ++v) s += std::exp(row[v] - mx);
    lse.f32()[r] = static_cast<float>(mx + std::log(s));
    argmax_mismatch += am != want_argmax.i32()[r];
  }
  const double dl = max_abs_diff(sub, ref.f32("logits"));
  const double ds = max_abs_diff(lse, ref.f32("logsumexp"));
  std::printf(
      "SmolLM2 Q4_1 GGUF max abs err: logits (2048 cols x 16 rows) %.3g, logsumexp %.3g, "
      "argmax mismatches %d/16\n",
      dl, ds, argmax_mismatch);
  EXPECT_LT(dl, 1e-3);
  EXPECT_LT(ds, 1e-3);
  EXPECT_EQ(argmax_mismatch, 0);
}

// ---- CLI ------------------------------------------------------------------------------------

TEST(Cli, InfoListsArchitectureAndTargets) {
  const std::string cmd =
      std::string(LORAFIT_BINARY) + " info " + kFix + "/tiny_llama_tied.gguf 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  const int rc = pclose(p);
  EXPECT_EQ(rc, 0) << out;
  for (const char* s : {"architecture:  llama", "layers:        2", "kv heads 2",
                        "model.layers.*.self_attn.q_proj", "tied to embed_tokens", "F32 x"})
    EXPECT_NE(out.find(s), std::string::npos) << "missing '" << s << "' in:\n" << out;
  const std::string bad = std::string(LORAFIT_BINARY) + " info " + kFix + "/nope 2>&1";
  FILE* q = popen(bad.c_str(), "r");
  while (fread(buf, 1, sizeof buf, q)) {
  }
  EXPECT_NE(pclose(q), 0);
}
