// peft layer tests: LoRA layer finite differences, parity with PEFT 0.21.2 fixtures
// (tools/ref_peft.py: logits, disabled-adapter logits, gradients of every adapter tensor, parameter
// counts), merge/unmerge, save/load round trip, several adapters, config errors.
#include <gtest/gtest.h>

#include <map>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <string>

#include "lorafit/io.h"
#include "lorafit/kernels.h"
#include "lorafit/models.h"
#include "lorafit/peft.h"
#include "ops/op_check.h"
#include "peft_test_util.h"

namespace {

using peft_test::max_abs;
using peft_test::max_abs_diff;
using peft_test::nan_max;

namespace fs = std::filesystem;
using lorafit::Error;
using lorafit::nn::Context;
using lorafit::nn::Linear;
using lorafit::peft::AdapterConfig;
using lorafit::peft::LoraLinear;
using lorafit::peft::PeftModel;
using lorafit::tensor::Tensor;
namespace io = lorafit::io;
namespace models = lorafit::models;
namespace peft = lorafit::peft;

const std::string kFix = std::string(LORAFIT_FIXTURES) + "/peft/";
const std::string kRoot = std::string(LORAFIT_SOURCE_DIR) + "/";

std::string temp_dir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("lorafit_peft_test_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(p);
  return p.string();
}

// ---- the LoRA layer against finite differences -------------------------------------------------

struct LoraCase {
  bool bias, rslora, trainable_base;
  float dropout;
};

void check_lora_layer(const LoraCase& c) {
  Linear lin(7, 5, c.bias);
  lin.weight.value = opcheck::random({5, 7}, 1);
  if (c.bias) lin.bias.value = opcheck::random({5}, 2);
  LoraLinear lora(lin, 3, 5.0, c.rslora, c.dropout);
  lora.init(lin, peft::LoraInit::Random, 7);  // A and B nonzero
  lora.A.set_trainable(true);
  lora.B.set_trainable(true);
  if (c.trainable_base) lin.set_trainable(true);
  lora.enabled = true;
  lin.adapters.push_back(&lora);
  Tensor x = opcheck::random({2, 3, 7}, 3);
  Tensor r = opcheck::random({2, 3, 5}, 4);
  Context ctx;
  ctx.training = c.dropout > 0;
  ctx.seed = 99;
  auto loss = [&]() {
    Context c2 = ctx;  // same dropout mask every evaluation
    return opcheck::dot(lin.forward(c2, x), r);
  };
  Context c1 = ctx;
  lin.forward(c1, x);
  Tensor dx = lin.backward(c1, r);
  opcheck::expect_grad(dx, opcheck::finite_diff(x, loss, 1e-2f), 1e-4, "dx");
  opcheck::expect_grad(lora.A.grad, opcheck::finite_diff(lora.A.value, loss, 1e-2f), 1e-4, "dA");
  opcheck::expect_grad(lora.B.grad, opcheck::finite_diff(lora.B.value, loss, 1e-2f), 1e-4, "dB");
  if (c.trainable_base)
    opcheck::expect_grad(lin.weight.grad, opcheck::finite_diff(lin.weight.value, loss, 1e-2f), 1e-4,
                         "dW");
  // Scaling as PEFT: alpha / r or alpha / sqrt(r).
  EXPECT_FLOAT_EQ(lora.scaling(), c.rslora ? 5.0f / std::sqrt(3.0f) : 5.0f / 3.0f);
  // Frozen A and B get no gradient and no buffer; backward without dx still fills B's grad.
  lin.adapters.clear();
}

TEST(LoraLinear, FiniteDifferences) { check_lora_layer({true, false, false, 0.0f}); }
TEST(LoraLinear, FiniteDifferencesRsloraNoBias) { check_lora_layer({false, true, false, 0.0f}); }
TEST(LoraLinear, FiniteDifferencesDropout) { check_lora_layer({true, false, false, 0.3f}); }
TEST(LoraLinear, FiniteDifferencesTrainableBase) { check_lora_layer({true, false, true, 0.0f}); }

TEST(LoraLinear, NoInputGradStillAccumulatesAdapterGrads) {
  Linear lin(4, 3, true);
  lin.weight.value = opcheck::random({3, 4}, 1);
  LoraLinear lora(lin, 2, 2.0, false, 0.0f);
  lora.init(lin, peft::LoraInit::Random, 1);
  lora.A.set_trainable(true);
  lora.B.set_trainable(true);
  lin.adapters.push_back(&lora);
  Context ctx;
  Tensor x = opcheck::random({5, 4}, 2);
  lin.forward(ctx, x);
  Tensor dx = lin.backward(ctx, opcheck::random({5, 3}, 3), false);
  EXPECT_FALSE(dx.defined());
  EXPECT_GT(max_abs(lora.A.grad), 0.0);
  EXPECT_GT(max_abs(lora.B.grad), 0.0);
}

TEST(LoraLinear, DefaultInitIsKaimingUniformAndZeroB) {
  Linear lin(100, 6, false);
  LoraLinear lora(lin, 8, 16.0, false, 0.0f);
  lora.init(lin, peft::LoraInit::Default, 5);
  const double bound = 1.0 / std::sqrt(100.0);
  double lo = 1, hi = -1;
  for (int64_t i = 0; i < lora.A.value.numel(); ++i) {
    lo = std::min<double>(lo, lora.A.value.f32()[i]);
    hi = std::max<double>(hi, lora.A.value.f32()[i]);
  }
  EXPECT_LE(hi, bound);
  EXPECT_GE(lo, -bound);
  EXPECT_GT(hi, 0.8 * bound);  // 800 draws fill the interval
  EXPECT_LT(lo, -0.8 * bound);
  EXPECT_EQ(max_abs(lora.B.value), 0.0);
  // Same seed, same values; another seed, other values.
  LoraLinear again(lin, 8, 16.0, false, 0.0f), other(lin, 8, 16.0, false, 0.0f);
  again.init(lin, peft::LoraInit::Default, 5);
  other.init(lin, peft::LoraInit::Default, 6);
  EXPECT_EQ(max_abs_diff(lora.A.value, again.A.value), 0.0);
  EXPECT_GT(max_abs_diff(lora.A.value, other.A.value), 0.0);
}

// ---- parity with PEFT --------------------------------------------------------------------------

struct ModelRun {
  Tensor logits;
  double loss = 0;
};

// Forward + loss (cross-entropy / causal-LM as tools/ref_peft.py) + backward.
ModelRun run_model(models::Model& m, const io::SafetensorsFile& ref, bool backward,
                   lorafit::tensor::Arena* arena = nullptr, bool no_grad = false) {
  Context ctx;
  ctx.arena = arena;
  ctx.no_grad = no_grad;
  ModelRun out;
  Tensor ids = ref.get("input_ids").clone();
  Tensor mask = ref.get("attention_mask").clone();
  if (auto* bert = dynamic_cast<models::BertModel*>(&m)) {
    Tensor tt = ref.get("token_type_ids").clone();
    Tensor labels = ref.get("labels");
    Tensor h = bert->forward(ctx, ids, mask, tt);
    out.logits = bert->classify(ctx, h).clone();
    const int64_t B = out.logits.dim(0), L = out.logits.dim(1);
    Tensor dl = Tensor::zeros({B, L});
    for (int64_t b = 0; b < B; ++b) {
      const float* z = out.logits.f32() + b * L;
      double mx = z[0], s = 0;
      for (int64_t j = 1; j < L; ++j) mx = std::max<double>(mx, z[j]);
      for (int64_t j = 0; j < L; ++j) s += std::exp(z[j] - mx);
      const int y = labels.i32()[b];
      out.loss += (std::log(s) + mx - z[y]) / B;
      for (int64_t j = 0; j < L; ++j)
        dl.f32()[b * L + j] = static_cast<float>((std::exp(z[j] - mx) / s - (j == y)) / B);
    }
    if (backward) bert->backward(ctx, bert->classify_backward(ctx, dl));
  } else {
    auto* llama = dynamic_cast<models::LlamaModel*>(&m);
    EXPECT_NE(llama, nullptr);
    out.logits = llama->forward(ctx, ids, mask).clone();
    const int64_t B = out.logits.dim(0), T = out.logits.dim(1), V = out.logits.dim(2);
    const double n = static_cast<double>(B * (T - 1));
    Tensor dl = Tensor::zeros({B, T, V});
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t + 1 < T; ++t) {
        const float* z = out.logits.f32() + (b * T + t) * V;
        double mx = z[0], s = 0;
        for (int64_t j = 1; j < V; ++j) mx = std::max<double>(mx, z[j]);
        for (int64_t j = 0; j < V; ++j) s += std::exp(z[j] - mx);
        const int y = ids.i32()[b * T + t + 1];
        out.loss += (std::log(s) + mx - z[y]) / n;
        float* d = dl.f32() + (b * T + t) * V;
        for (int64_t j = 0; j < V; ++j) d[j] = static_cast<float>((std::exp(z[j] - mx) / s - (j == y)) / n);
      }
    if (backward) llama->backward(ctx, dl);
  }
  return out;
}

struct ParityCase {
  const char* name;
  double logits_tol;
};

class PeftParity : public ::testing::TestWithParam<ParityCase> {};

TEST_P(PeftParity, LogitsGradientsCountsMerge) {
  const ParityCase c = GetParam();
  const std::string ref_path = kFix + c.name + "_ref.safetensors";
  ASSERT_TRUE(fs::exists(ref_path)) << ref_path << " missing (tools/make_reference.py peft)";
  io::SafetensorsFile ref = io::SafetensorsFile::open(ref_path);
  const std::string base = kRoot + ref.metadata().at("base");
  ASSERT_TRUE(fs::exists(base)) << base << " missing: run tools/fetch_models.sh";
  models::LoadOptions lo;
  lo.num_labels = ref.get("logits").ndim() == 2 ? ref.get("logits").dim(1) : 0;
  auto model = models::load_model(base, lo);
  auto pm = PeftModel::from_pretrained(*model, kFix + c.name, "default", /*is_trainable=*/true);

  // Parameter counts as PEFT's get_nb_trainable_parameters.
  peft::ParameterCount cnt = pm->count_parameters();
  EXPECT_EQ(cnt.trainable, std::stoll(ref.metadata().at("trainable"))) << c.name;
  EXPECT_EQ(cnt.total, std::stoll(ref.metadata().at("all"))) << c.name;

  // Logits and loss.
  ModelRun run = run_model(*model, ref, true);
  const double err = max_abs_diff(run.logits, ref.get("logits"));
  std::printf("[ %s ] max |logits - PEFT| = %.3g (scale %.3g)\n", c.name, err, max_abs(ref.get("logits")));
  EXPECT_LT(err, c.logits_tol) << c.name;
  EXPECT_NEAR(run.loss, ref.get("loss").f32()[0], 1e-5 * std::max(1.0, std::fabs(run.loss)));
  // The adapter changes the output (random B), so the comparison above is not the base model's.
  EXPECT_GT(max_abs_diff(ref.get("logits"), ref.get("base_logits")), 100 * c.logits_tol);

  // Gradients of every adapter tensor (relative to the largest entry of the reference).
  auto params = pm->trainable_parameters();
  int checked = 0;
  double worst = 0;
  for (auto& [key, p] : params) {
    ASSERT_TRUE(ref.contains("grad." + key)) << "PEFT has no gradient for " << key;
    Tensor want = ref.get("grad." + key);
    const double rel = max_abs_diff(p->grad, want) / std::max(max_abs(want), 1e-12);
    worst = nan_max(worst, rel);
    EXPECT_LT(rel, 1e-4) << c.name << " " << key;
    ++checked;
  }
  int ref_grads = 0;
  for (const auto& n : ref.names()) ref_grads += n.rfind("grad.", 0) == 0;
  EXPECT_EQ(checked, ref_grads) << "trainable parameters vs PEFT's gradients";
  std::printf("[ %s ] %d gradients, max relative error %.3g\n", c.name, checked, worst);

  // With an arena (the trainer's way: each layer's backward temporaries are released as soon as
  // the layer is done, and a second step reuses the chunks) the logits and every gradient are
  // bit-identical to the run without one.
  {
    std::map<std::string, Tensor> g0;
    for (auto& [key, p] : params) g0[key] = p->grad.clone();
    lorafit::tensor::Arena arena(1 << 12);  // small first chunk: the step spans several chunks
    arena.poison = true;                    // freed memory turns to NaN: use after release shows
    for (int rep = 0; rep < 2; ++rep) {
      pm->zero_grad();
      ModelRun ar = run_model(*model, ref, true, &arena);
      // Bitwise (max_abs_diff would pass NaNs: std::max ignores them).
      auto same = [](const Tensor& a, const Tensor& b) {
        return a.numel() == b.numel() &&
               std::memcmp(a.f32(), b.f32(), sizeof(float) * a.numel()) == 0;
      };
      EXPECT_TRUE(same(ar.logits, run.logits)) << c.name << " step " << rep;
      for (auto& [key, p] : params) EXPECT_TRUE(same(p->grad, g0[key])) << c.name << " " << key;
      arena.reset();
      // Forward only (evaluation): each layer's activations are freed as the next layer starts;
      // the logits are still bit-identical, and a backward after it is refused.
      lorafit::tensor::Arena fa(1 << 12), keep(1 << 12);
      fa.poison = true;
      ModelRun nr = run_model(*model, ref, false, &fa, /*no_grad=*/true);
      EXPECT_TRUE(same(nr.logits, run.logits)) << c.name << " no_grad step " << rep;
      run_model(*model, ref, false, &keep,
                /*no_grad=*/false);  // the same forward keeping everything
      EXPECT_LT(fa.peak(), keep.peak()) << c.name;
    }
    pm->zero_grad();
    run_model(*model, ref, false, &arena, /*no_grad=*/true);
    EXPECT_THROW(run_model(*model, ref, true, nullptr, /*no_grad=*/true), lorafit::Error);
    arena.reset();
  }

  // Disabled adapters give the base model.
  // (Only when the base is the checkpoint's: a head missing from it, like MiniLM's classifier, is
  // initialized differently by transformers and by our loader.)
  pm->disable_adapters();
  ModelRun base_run = run_model(*model, ref, false);
  if (model->initialized().empty())
    EXPECT_LT(max_abs_diff(base_run.logits, ref.get("base_logits")), c.logits_tol);
  else
    EXPECT_GT(max_abs_diff(base_run.logits, run.logits), 100 * c.logits_tol);  // head swapped back
  pm->enable_adapters();

  // Merge: same logits; unmerge: W back.
  std::vector<std::pair<Linear*, Tensor>> before;
  for (auto& [path, l] : model->linears()) before.emplace_back(l, l->weight.value.clone());
  pm->merge();
  EXPECT_TRUE(pm->merged());
  ModelRun merged = run_model(*model, ref, false);
  EXPECT_LT(max_abs_diff(merged.logits, run.logits), 1e-5 * std::max(1.0, max_abs(run.logits)));
  pm->unmerge();
  double werr = 0;
  for (auto& [l, w] : before) werr = nan_max(werr, max_abs_diff(l->weight.value, w));
  EXPECT_LT(werr, 1e-6);
  ModelRun again = run_model(*model, ref, false);
  EXPECT_LT(max_abs_diff(again.logits, run.logits), 1e-6 * std::max(1.0, max_abs(run.logits)));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, PeftParity,
                         ::testing::Values(ParityCase{"bert_qv", 1e-5}, ParityCase{"bert_all_rslora", 1e-5},
                                           ParityCase{"llama_qv", 1e-5},
                                           ParityCase{"llama_all_rslora", 1e-5},
                                           ParityCase{"llama_layers", 1e-5},
                                           ParityCase{"minilm_qv", 1e-4}),
                         [](const auto& info) { return std::string(info.param.name); });

// ---- save / load -------------------------------------------------------------------------------

TEST(PeftSave, RoundTripMatchesPeftFolder) {
  for (const char* name : {"bert_qv", "bert_all_rslora", "llama_layers"}) {
    io::SafetensorsFile ref = io::SafetensorsFile::open(kFix + name + "_ref.safetensors");
    models::LoadOptions lo;
    lo.num_labels = ref.get("logits").ndim() == 2 ? ref.get("logits").dim(1) : 0;
    auto model = models::load_model(kRoot + ref.metadata().at("base"), lo);
    auto pm = PeftModel::from_pretrained(*model, kFix + name);
    const std::string out = temp_dir(name);
    pm->save_pretrained(out);
    io::SafetensorsFile ours = io::SafetensorsFile::open(out + "/adapter_model.safetensors");
    io::SafetensorsFile theirs = io::SafetensorsFile::open(kFix + name + "/adapter_model.safetensors");
    EXPECT_EQ(ours.metadata().at("format"), "pt");
    auto sorted = [](std::vector<std::string> v) { std::sort(v.begin(), v.end()); return v; };
    EXPECT_EQ(sorted(ours.names()), sorted(theirs.names())) << name;
    for (const auto& k : theirs.names()) {
      if (!ours.contains(k)) continue;
      EXPECT_EQ(max_abs_diff(ours.get_f32(k), theirs.get_f32(k)), 0.0) << k;
    }
    io::json a = io::read_json_file(out + "/adapter_config.json");
    io::json b = io::read_json_file(kFix + name + "/adapter_config.json");
    for (const char* k : {"peft_type", "r", "lora_alpha", "use_rslora", "task_type", "bias",
                          "rank_pattern", "alpha_pattern", "layers_to_transform"})
      EXPECT_EQ(a[k], b[k]) << name << " " << k;
    auto ta = a["target_modules"].get<std::vector<std::string>>();
    auto tb = b["target_modules"].get<std::vector<std::string>>();
    EXPECT_EQ(sorted(ta), sorted(tb)) << name;
    auto ma = a["modules_to_save"], mb = b["modules_to_save"];
    EXPECT_EQ(ma.is_null(), mb.is_null()) << name;
    // No temporary folder left behind; saving again over the folder works.
    pm->save_pretrained(out);
    for (auto& e : fs::directory_iterator(fs::path(out).parent_path()))
      EXPECT_EQ(e.path().filename().string().find(fs::path(out).filename().string() + ".tmp."),
                std::string::npos);
    // And it loads back to the same logits.
    auto model2 = models::load_model(kRoot + ref.metadata().at("base"), lo);
    auto pm2 = PeftModel::from_pretrained(*model2, out);
    EXPECT_LT(max_abs_diff(run_model(*model2, ref, false).logits, ref.get("logits")), 1e-5);
    fs::remove_all(out);
  }
}

TEST(PeftInject, CountsAndNamesMiniLM) {
  const std::string base = kRoot + "models/all-MiniLM-L6-v2";
  ASSERT_TRUE(fs::exists(base)) << base << " missing: run tools/fetch_models.sh";
  auto model = models::load_model(base);
  AdapterConfig cfg;
  cfg.r = 8;
  cfg.lora_alpha = 16;
  cfg.target_modules = {"query", "value"};
  PeftModel pm(*model, cfg, 42);
  // 6 layers x 2 modules x (8·384 + 384·8), as the formula in REFERENCE.md.
  EXPECT_EQ(pm.count_parameters().trainable, 6 * 2 * (8 * 384 * 2));
  auto params = pm.trainable_parameters();
  ASSERT_EQ(params.size(), 24u);
  EXPECT_EQ(params[0].first, "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight");
  EXPECT_EQ(params[1].first, "base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.weight");
  for (auto& [n, p] : model->named_parameters()) EXPECT_FALSE(p->trainable) << n;
  EXPECT_NE(pm.count_parameters().str().find("trainable params: 73,728 || all params: "),
            std::string::npos)
      << pm.count_parameters().str();
  // B = 0 at init: the adapted model equals the base model.
  for (auto& [path, l] : pm.lora_layers()) EXPECT_EQ(max_abs(l->B.value), 0.0) << path;
}

TEST(PeftInject, SeveralAdaptersAddUpAndMerge) {
  io::SafetensorsFile ref = io::SafetensorsFile::open(kFix + "llama_qv_ref.safetensors");
  auto model = models::load_model(kRoot + "tests/fixtures/models/tiny_llama");
  auto pm = PeftModel::from_pretrained(*model, kFix + "llama_qv", "one");
  pm->load_adapter(kFix + "llama_all_rslora", "two");
  EXPECT_EQ(pm->adapter_names(), (std::vector<std::string>{"one", "two"}));
  pm->set_adapter("one");
  Tensor one = run_model(*model, ref, false).logits;
  EXPECT_LT(max_abs_diff(one, ref.get("logits")), 1e-5);
  pm->set_adapter("two");
  io::SafetensorsFile ref2 = io::SafetensorsFile::open(kFix + "llama_all_rslora_ref.safetensors");
  EXPECT_LT(max_abs_diff(run_model(*model, ref2, false).logits, ref2.get("logits")), 1e-5);
  // Both active: equals the base with both deltas merged in.
  pm->set_adapters({"one", "two"});
  Tensor both = run_model(*model, ref, false).logits;
  EXPECT_GT(max_abs_diff(both, one), 1e-3);
  pm->merge();
  EXPECT_LT(max_abs_diff(run_model(*model, ref, false).logits, both), 1e-5);
  pm->unmerge();
  pm->delete_adapter("two");
  EXPECT_EQ(pm->active_adapters(), (std::vector<std::string>{"one"}));
  EXPECT_LT(max_abs_diff(run_model(*model, ref, false).logits, one), 1e-6);
  EXPECT_THROW(pm->set_adapter("two"), Error);
}

TEST(PeftMerge, MergeAndUnloadWritesPlainHfFolder) {
  io::SafetensorsFile ref = io::SafetensorsFile::open(kFix + "bert_qv_ref.safetensors");
  const std::string base = kRoot + "tests/fixtures/models/tiny_bert";
  models::LoadOptions lo;
  lo.num_labels = 3;
  auto model = models::load_model(base, lo);
  {
    auto pm = PeftModel::from_pretrained(*model, kFix + "bert_qv");
    pm->merge_and_unload();
  }
  for (auto& [p, l] : model->linears()) EXPECT_TRUE(l->adapters.empty()) << p;
  EXPECT_LT(max_abs_diff(run_model(*model, ref, false).logits, ref.get("logits")), 1e-5);
  const std::string out = temp_dir("merged");
  peft::save_merged_hf(*model, base, out);
  EXPECT_TRUE(fs::exists(out + "/config.json"));
  auto plain = models::load_model(out, lo);
  EXPECT_LT(max_abs_diff(run_model(*plain, ref, false).logits, ref.get("logits")), 1e-5);
  fs::remove_all(out);
}

// ---- errors ------------------------------------------------------------------------------------

// Copies a fixture folder, lets `edit` change it, and expects loading to throw a message
// containing `needle`.
void expect_load_error(const std::function<void(const std::string&)>& edit, const std::string& needle) {
  const std::string dir = temp_dir("bad");
  fs::copy(kFix + "bert_qv", dir);
  edit(dir);
  models::LoadOptions lo;
  lo.num_labels = 3;
  auto model = models::load_model(kRoot + "tests/fixtures/models/tiny_bert", lo);
  try {
    PeftModel::from_pretrained(*model, dir);
    ADD_FAILURE() << "expected an error containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).rfind("[", 0), 0u) << e.what();
  }
  // A failed load leaves the model untouched.
  for (auto& [p, l] : model->linears()) EXPECT_TRUE(l->adapters.empty()) << p;
  fs::remove_all(dir);
}

void edit_config(const std::string& dir, const std::function<void(io::json&)>& f) {
  io::json j = io::read_json_file(dir + "/adapter_config.json");
  f(j);
  io::write_json_file(dir + "/adapter_config.json", j);
}

void edit_tensors(const std::string& dir,
                  const std::function<void(std::vector<std::pair<std::string, Tensor>>&)>& f) {
  io::SafetensorsFile in = io::SafetensorsFile::open(dir + "/adapter_model.safetensors");
  std::vector<std::pair<std::string, Tensor>> t;
  for (const auto& n : in.names()) t.emplace_back(n, in.get_f32(n).clone());
  f(t);
  io::write_safetensors(dir + "/adapter_model.safetensors", t, {{"format", "pt"}});
}

TEST(PeftErrors, BadConfigsNameTheField) {
  expect_load_error([](auto& d) { edit_config(d, [](io::json& j) { j["peft_type"] = "IA3"; }); },
                    "'peft_type'");
  expect_load_error([](auto& d) { edit_config(d, [](io::json& j) { j["r"] = 0; }); }, "'r'");
  expect_load_error([](auto& d) { edit_config(d, [](io::json& j) { j["r"] = "8"; }); }, "'r'");
  expect_load_error(
      [](auto& d) { edit_config(d, [](io::json& j) { j["target_modules"] = {"q_proj"}; }); },
      "'target_modules': [q_proj] matches no Linear");
  expect_load_error([](auto& d) { edit_config(d, [](io::json& j) { j["bias"] = "all"; }); },
                    "'bias'");
  // use_dora on a plain LoRA folder: the magnitude vectors are missing.
  expect_load_error([](auto& d) { edit_config(d, [](io::json& j) { j["use_dora"] = true; }); },
                    ".lora_magnitude_vector' is missing");
  expect_load_error([](auto& d) { edit_config(d, [](io::json& j) { j.erase("peft_type"); }); },
                    "'peft_type' is missing");
  expect_load_error([](auto& d) { fs::remove(d + "/adapter_config.json"); }, "adapter_config.json");
  // r in the config does not fit the tensors.
  expect_load_error([](auto& d) { edit_config(d, [](io::json& j) { j["r"] = 8; }); },
                    "lora_A.weight' has shape [4, 32], the base model needs [8, 32]");
}

TEST(PeftErrors, BadTensorsNameTheTensor) {
  const std::string key = "base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight";
  expect_load_error(
      [&](auto& d) {
        edit_tensors(d, [&](auto& t) {
          std::erase_if(t, [&](auto& p) { return p.first == key; });
        });
      },
      "'" + key + "' is missing");
  expect_load_error(
      [&](auto& d) {
        edit_tensors(d, [&](auto& t) { t.emplace_back("base_model.model.bert.x.lora_A.weight", Tensor::zeros({4, 32})); });
      },
      "unexpected tensor 'base_model.model.bert.x.lora_A.weight'");
  expect_load_error(
      [&](auto& d) {
        edit_tensors(d, [&](auto& t) {
          for (auto& p : t)
            if (p.first == key) p.second = Tensor::zeros({32, 5});
        });
      },
      "'" + key + "' has shape [32, 5]");
}

TEST(PeftConfig, PatternsAndMatching) {
  AdapterConfig c;
  c.target_modules = {"query", "value"};
  EXPECT_TRUE(peft::target_matches(c, "bert.encoder.layer.0.attention.self.query", false));
  EXPECT_FALSE(peft::target_matches(c, "bert.encoder.layer.0.attention.self.xquery", false));
  c.target_modules = {".*layer\\.1\\..*(query|key)"};
  c.target_modules_regex = true;
  EXPECT_TRUE(peft::target_matches(c, "bert.encoder.layer.1.attention.self.key", false));
  EXPECT_FALSE(peft::target_matches(c, "bert.encoder.layer.0.attention.self.key", false));
  c.target_modules = {"all-linear"};
  c.target_modules_regex = false;
  EXPECT_TRUE(peft::target_matches(c, "model.layers.0.mlp.up_proj", false));
  EXPECT_FALSE(peft::target_matches(c, "lm_head", true));
  c.target_modules = {"q_proj"};
  c.layers_to_transform = {1};
  EXPECT_TRUE(peft::target_matches(c, "model.layers.1.self_attn.q_proj", false));
  EXPECT_FALSE(peft::target_matches(c, "model.layers.0.self_attn.q_proj", false));
  c.rank_pattern = {{"q_proj", 3}, {"layers.1.self_attn.q_proj", 5}};
  c.alpha_pattern = {{"v_.*", 2.5}};
  EXPECT_EQ(c.rank_for("model.layers.1.self_attn.q_proj"), 3);  // first match wins
  EXPECT_EQ(c.rank_for("model.layers.1.self_attn.k_proj"), 8);
  EXPECT_EQ(c.alpha_for("model.layers.0.self_attn.v_proj"), 2.5);
  EXPECT_EQ(c.alpha_for("model.layers.0.self_attn.xv_proj"), 8.0);
  // JSON round trip keeps the pattern order and the fields.
  AdapterConfig back = peft::config_from_json(peft::config_to_json(c), "roundtrip");
  EXPECT_EQ(back.rank_pattern.size(), 2u);
  EXPECT_EQ(back.layers_to_transform, c.layers_to_transform);
  // The file's key order decides (as Python's dict order), not the sorted order.
  const std::string d = temp_dir("order");
  fs::create_directories(d);
  std::ofstream(d + "/adapter_config.json")
      << R"({"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"],
             "rank_pattern": {"q_proj": 3, "layers.1.self_attn.q_proj": 5}})";
  EXPECT_EQ(peft::read_adapter_config(d).rank_for("model.layers.1.self_attn.q_proj"), 3);
  fs::remove_all(d);
  // PEFT refuses layers_to_transform with a string target_modules.
  io::json j = peft::config_to_json(c);
  j["target_modules"] = "all-linear";
  EXPECT_THROW(peft::config_from_json(j, "x"), Error);
}

// A field missing from adapter_config.json takes AdapterConfig's default (the one place PEFT's
// defaults are written): a minimal file reads back as a default-constructed config.
TEST(PeftConfig, MissingFieldsTakeTheStructDefaults) {
  for (const char* type : {"LORA", "ADALORA"}) {
    SCOPED_TRACE(type);
    io::json j = {{"peft_type", type}, {"target_modules", {"q_proj"}}};
    AdapterConfig want;
    want.peft_type = type;
    want.target_modules = {"q_proj"};
    if (std::string(type) == "ADALORA") {  // AdaLoRA's total_step has no usable default (> 0)
      j["total_step"] = 100;
      want.total_step = 100;
    }
    EXPECT_EQ(peft::config_to_json(peft::config_from_json(j, "min.json")).dump(),
              peft::config_to_json(want).dump());
  }
  // And the defaults are PEFT 0.21's LoraConfig / AdaLoraConfig ones.
  const AdapterConfig d;
  EXPECT_EQ(d.r, 8);
  EXPECT_EQ(d.lora_alpha, 8.0);
  EXPECT_EQ(d.lora_dropout, 0.0);
  EXPECT_EQ(d.bias, "none");
  EXPECT_EQ(d.init_r, 12);
  EXPECT_EQ(d.target_r, 8);
  EXPECT_EQ(d.beta1, 0.85);
  EXPECT_EQ(d.orth_reg_weight, 0.5);
}

// The optimizer reads each trainable parameter's role (weight decay, LoRA+) instead of its name:
// peft gives lora_A / lora_B / the DoRA magnitude / lora_E theirs, modules_to_save copies keep
// the model's (classifier.bias is a bias).
TEST(PeftModel, TrainableParametersCarryTheirRoles) {
  using lorafit::nn::ParamRole;
  auto role_of = [](const std::string& name) {
    if (name.ends_with("lora_A.weight") || name.ends_with("lora_A")) return ParamRole::LowRankA;
    if (name.ends_with("lora_B.weight") || name.ends_with("lora_B")) return ParamRole::LowRankB;
    if (name.ends_with("lora_magnitude_vector") || name.ends_with("lora_E"))
      return ParamRole::Scale;
    if (name.ends_with(".bias")) return ParamRole::Bias;
    return ParamRole::Weight;
  };
  for (const char* type : {"LORA", "DORA", "ADALORA"}) {
    SCOPED_TRACE(type);
    models::LoadOptions lo;
    lo.num_labels = 3;
    auto model = models::load_model(kRoot + "tests/fixtures/models/tiny_bert", lo);
    AdapterConfig c;
    c.target_modules = {"query", "value"};
    c.task_type = "SEQ_CLS";  // classifier.weight / .bias as modules_to_save
    c.use_dora = std::string(type) == "DORA";
    if (std::string(type) == "ADALORA") {
      c.peft_type = "ADALORA";
      c.total_step = 10;
    }
    PeftModel pm(*model, c, 1);
    std::set<ParamRole> seen;
    for (auto& [name, p] : pm.trainable_parameters()) {
      EXPECT_EQ(static_cast<int>(p->role), static_cast<int>(role_of(name))) << name;
      seen.insert(p->role);
    }
    EXPECT_EQ(seen.size(), std::string(type) == "LORA" ? 4u : 5u);
  }
}

}  // namespace

// ---- export for tools/check_peft_load.py ------------------------------------------------------
// With LORAFIT_PEFT_EXPORT=<dir>, writes adapters made by lorafit (A and B both random, so the
// adapter changes the output) and our logits on a fixed batch: <dir>/<case>/ (PEFT folder) and
// <dir>/<case>_ours.safetensors. The Python side loads them with PeftModel.from_pretrained.
// Without it (CI), the same export goes to a temporary folder and is checked for completeness.
TEST(PeftExport, ForPythonCheck) {
  const char* env_dir = std::getenv("LORAFIT_PEFT_EXPORT");
  const std::string tmp = env_dir ? std::string() : temp_dir("peft_export");
  const char* dir = env_dir ? env_dir : tmp.c_str();
  struct Case {
    const char* name;
    const char* base;
    const char* ref;  // a fixture whose inputs we reuse
    std::vector<std::string> targets;
    bool rslora;
    std::optional<std::vector<std::string>> mts;
    const char* task;
    int64_t labels;
  };
  const std::vector<Case> cases = {
      {"bert_all_linear", "tests/fixtures/models/tiny_bert", "bert_qv", {"all-linear"}, true,
       std::nullopt, "SEQ_CLS", 3},
      {"llama_qv", "tests/fixtures/models/tiny_llama", "llama_qv", {"q_proj", "v_proj"}, false,
       std::nullopt, "CAUSAL_LM", 0},
      {"llama_all_linear", "tests/fixtures/models/tiny_llama", "llama_qv", {"all-linear"}, false,
       std::nullopt, "CAUSAL_LM", 0},
      {"minilm_qv_classifier", "models/all-MiniLM-L6-v2", "minilm_qv", {"query", "value"}, false,
       std::vector<std::string>{"classifier"}, "SEQ_CLS", 2},
  };
  for (const auto& c : cases) {
    ASSERT_TRUE(fs::exists(kRoot + c.base)) << c.base << " missing: run tools/fetch_models.sh";
    io::SafetensorsFile ref = io::SafetensorsFile::open(kFix + c.ref + "_ref.safetensors");
    models::LoadOptions lo;
    lo.num_labels = c.labels;
    lo.seed = 5;
    auto model = models::load_model(kRoot + c.base, lo);
    AdapterConfig cfg;
    cfg.r = 4;
    cfg.lora_alpha = 8;
    cfg.target_modules = c.targets;
    cfg.use_rslora = c.rslora;
    cfg.modules_to_save = c.mts;
    cfg.task_type = c.task;
    cfg.init_lora_weights = peft::LoraInit::Random;
    cfg.base_model_name_or_path = c.base;
    PeftModel pm(*model, cfg, 1234);
    pm.save_pretrained(std::string(dir) + "/" + c.name);
    ModelRun run = run_model(*model, ref, false);
    std::vector<std::pair<std::string, Tensor>> t = {{"logits", run.logits}};
    for (const char* k : {"input_ids", "attention_mask", "token_type_ids"})
      if (ref.contains(k)) t.emplace_back(k, ref.get(k).clone());
    io::write_safetensors(std::string(dir) + "/" + c.name + "_ours.safetensors", t,
                          {{"base", c.base}, {"count", pm.count_parameters().str()}});
    std::printf("exported %s: %s\n", c.name, pm.count_parameters().str().c_str());
    const std::string folder = std::string(dir) + "/" + c.name;
    EXPECT_TRUE(fs::exists(folder + "/adapter_config.json")) << folder;
    EXPECT_TRUE(fs::exists(folder + "/adapter_model.safetensors")) << folder;
    // Reloading our own folder onto a fresh base gives the same logits.
    auto fresh = models::load_model(kRoot + c.base, lo);
    auto back = PeftModel::from_pretrained(*fresh, folder);
    ModelRun again = run_model(*fresh, ref, false);
    EXPECT_EQ(again.logits.shape(), run.logits.shape());
    for (int64_t i = 0; i < run.logits.numel(); ++i)
      ASSERT_NEAR(again.logits.f32()[i], run.logits.f32()[i], 1e-6) << c.name << " at " << i;
  }
  if (!env_dir) fs::remove_all(tmp);
}

// ---- llama.cpp LoRA GGUF -----------------------------------------------------------------------
// Reads the file back and rebuilds each module's delta the way llama.cpp does (alpha / r ·
// lora_b · lora_a, r from lora_b's ne[0]) in GGUF row order, un-permutes q/k rows with the
// GGUF -> HF formula of REFERENCE.md and compares with PEFT's s · B A (from the PEFT fixture).
TEST(PeftGguf, LlamaCppLoraMatchesPeftDelta) {
  for (const char* name : {"llama_qv", "llama_all_rslora"}) {
    auto model = models::load_model(kRoot + "tests/fixtures/models/tiny_llama");
    auto pm = PeftModel::from_pretrained(*model, kFix + name);
    const std::string path = temp_dir(std::string(name) + ".gguf");
    peft::save_llama_cpp_lora(*pm, path);
    io::GgufFile f = io::GgufFile::open(path);
    EXPECT_EQ(f.get_string("general.type"), "adapter");
    EXPECT_EQ(f.get_string("adapter.type"), "lora");
    EXPECT_EQ(f.get_string("general.architecture"), "llama");
    const double alpha = f.get_float("adapter.lora.alpha");
    const auto& mc = model->config();
    io::SafetensorsFile theirs = io::SafetensorsFile::open(kFix + name + "/adapter_model.safetensors");
    io::json cfg = io::read_json_file(kFix + name + "/adapter_config.json");
    auto layers = pm->lora_layers();
    EXPECT_EQ(f.tensors().size(), 2 * layers.size());
    for (auto& [hf, l] : layers) {
      const std::string g = models::llama_gguf_name(hf + ".weight");
      Tensor a = f.tensor_f32(g + ".lora_a"), b = f.tensor_f32(g + ".lora_b");
      EXPECT_EQ(f.tensor_info(g + ".lora_a").ne, (std::vector<int64_t>{l->A.value.dim(1), l->r()}));
      EXPECT_EQ(f.tensor_info(g + ".lora_b").ne, (std::vector<int64_t>{l->r(), l->B.value.dim(0)}));
      const int64_t r = b.dim(1), out = b.dim(0), in = a.dim(1);
      Tensor d = Tensor::zeros({out, in});
      lorafit::kernels::gemm(b, false, a, false, d, static_cast<float>(alpha / r), 0.0f);
      const int64_t heads = g.find("attn_q") != std::string::npos   ? mc.n_heads
                            : g.find("attn_k") != std::string::npos ? mc.n_kv_heads
                                                                    : 0;
      if (heads) d = models::llama_qk_from_gguf(d, heads);  // GGUF -> HF row order
      // PEFT's delta from its own files: s · B A with s from its config.
      Tensor A = theirs.get_f32("base_model.model." + hf + ".lora_A.weight");
      Tensor B = theirs.get_f32("base_model.model." + hf + ".lora_B.weight");
      const double rr = static_cast<double>(A.dim(0));
      const double s = cfg["use_rslora"].get<bool>() ? cfg["lora_alpha"].get<double>() / std::sqrt(rr)
                                                     : cfg["lora_alpha"].get<double>() / rr;
      Tensor want = Tensor::zeros({out, in});
      lorafit::kernels::gemm(B, false, A, false, want, static_cast<float>(s), 0.0f);
      EXPECT_LT(max_abs_diff(d, want), 1e-6 * std::max(1.0, max_abs(want))) << name << " " << hf;
    }
    fs::remove(path);
  }
}

TEST(PeftInject, DestructorLeavesTheModelAsItWas) {
  io::SafetensorsFile ref = io::SafetensorsFile::open(kFix + "bert_qv_ref.safetensors");
  models::LoadOptions lo;
  lo.num_labels = 3;
  auto model = models::load_model(kRoot + "tests/fixtures/models/tiny_bert", lo);
  Tensor base = run_model(*model, ref, false).logits;
  EXPECT_LT(max_abs_diff(base, ref.get("base_logits")), 1e-5);
  {
    auto pm = PeftModel::from_pretrained(*model, kFix + "bert_qv", "default", true);
    pm->merge();
    EXPECT_GT(max_abs_diff(run_model(*model, ref, false).logits, base), 1e-3);
  }
  EXPECT_LT(max_abs_diff(run_model(*model, ref, false).logits, base), 1e-6);
  for (auto& [n, p] : model->named_parameters()) EXPECT_FALSE(p->trainable) << n;
}

// ---- no input gradient below the lowest trainable layer (Model::input_grad) --------------------

namespace {

struct InputGradCase {
  std::string name;
  std::vector<std::string> targets;        // LoRA target_modules
  std::vector<int64_t> layers;             // layers_to_transform
  std::vector<std::string> extra_trained;  // base parameters made trainable too (norms)
};

struct GradsRun {
  std::vector<std::vector<float>> grads;  // every trainable parameter's gradient, in order
  Tensor dx;                              // what logits_backward returned
  std::optional<float> chunked_loss;
};

// One training forward + backward (dropout on, fixed seed) with the given input_grad; for a
// Llama also lm_loss_chunked (whose backward takes the same path) in a second pass, its
// gradients appended after the first ones'.
GradsRun grads_of(models::Model& m, peft::PeftModel& pm, const io::SafetensorsFile& ref,
                  bool input_grad) {
  GradsRun out;
  auto params = pm.trainable_parameters();
  for (auto& [n, p] : m.named_parameters())
    if (p->trainable) params.emplace_back(n, p);
  auto collect = [&] {
    for (auto& [n, p] : params)
      out.grads.emplace_back(p->grad.f32(), p->grad.f32() + p->grad.numel());
  };
  lorafit::tensor::Arena arena;
  m.input_grad = input_grad;
  m.zero_grad();
  pm.zero_grad();
  Context ctx;
  ctx.arena = &arena;
  ctx.training = true;
  ctx.seed = 7;
  Tensor ids = ref.get("input_ids").clone();
  Tensor mask = ref.get("attention_mask").clone();
  Tensor tt = m.is_causal_lm() ? Tensor() : ref.get("token_type_ids").clone();
  Tensor logits = m.logits(ctx, ids, mask, tt);
  Tensor dl = Tensor::empty(logits.shape());
  for (int64_t i = 0; i < dl.numel(); ++i)
    dl.f32()[i] = 0.01f * static_cast<float>(std::sin(0.37 * static_cast<double>(i) + 0.1));
  Tensor dx = m.logits_backward(ctx, dl);
  out.dx = dx.defined() ? dx.clone() : Tensor();
  collect();
  if (m.is_causal_lm()) {
    m.zero_grad();
    pm.zero_grad();
    arena.reset();
    ctx.rng_counter = 0;
    Tensor targets = ids.clone();
    const int64_t T = ids.dim(1);
    for (int64_t i = 0; i < ids.numel(); ++i)
      targets.i32()[i] = i % T + 1 < T ? ids.i32()[i + 1] : -100;
    out.chunked_loss = m.lm_loss_chunked(ctx, ids, mask, targets, -100, 1.0f, 3);
    collect();
  }
  m.input_grad = true;
  return out;
}

void check_input_grad_case(const std::string& model_dir, const std::string& ref_file,
                           const InputGradCase& c) {
  SCOPED_TRACE(c.name);
  io::SafetensorsFile ref = io::SafetensorsFile::open(kFix + ref_file);
  models::LoadOptions lo;
  lo.num_labels = 3;
  auto model = models::load_model(kRoot + "tests/fixtures/models/" + model_dir, lo);
  AdapterConfig cfg;
  cfg.r = 4;
  cfg.lora_alpha = 8;
  cfg.target_modules = c.targets;
  cfg.layers_to_transform = c.layers;
  PeftModel pm(*model, cfg, 3);
  // B = 0 at init would leave A's gradient zero: give B values.
  uint64_t k = 0;
  for (auto& [path, l] : pm.lora_layers())
    for (int64_t i = 0; i < l->B.value.numel(); ++i)
      l->B.value.f32()[i] = static_cast<float>(lorafit::nn::random_uniform(11, k++) - 0.5) * 0.2f;
  auto named = model->named_parameters();
  for (const std::string& n : c.extra_trained) {
    bool found = false;
    for (auto& [pn, p] : named)
      if (pn == n) p->set_trainable(true), found = true;
    ASSERT_TRUE(found) << n;
  }
  GradsRun full = grads_of(*model, pm, ref, true);
  GradsRun skip = grads_of(*model, pm, ref, false);
  ASSERT_TRUE(full.dx.defined());
  EXPECT_EQ(full.dx.dim(-1), model->config().hidden);
  EXPECT_FALSE(skip.dx.defined());  // not computed
  if (model->is_causal_lm()) {
    ASSERT_TRUE(full.chunked_loss && skip.chunked_loss);
    EXPECT_EQ(*full.chunked_loss, *skip.chunked_loss);
  }
  ASSERT_EQ(full.grads.size(), skip.grads.size());
  ASSERT_FALSE(full.grads.empty());
  for (size_t i = 0; i < full.grads.size(); ++i) {
    ASSERT_EQ(full.grads[i].size(), skip.grads[i].size());
    double mx = 0;
    for (float g : full.grads[i]) mx = std::max(mx, std::fabs(static_cast<double>(g)));
    EXPECT_GT(mx, 0.0) << "parameter " << i << ": a zero gradient compares nothing";
    EXPECT_EQ(std::memcmp(full.grads[i].data(), skip.grads[i].data(),
                          full.grads[i].size() * sizeof(float)),
              0)
        << "parameter " << i << " differs";
  }
}

}  // namespace

// LoRA on the top layer only (and variants that leave only part of the lowest layer training):
// the backward that stops there gives bitwise the gradients of the full one.
TEST(InputGrad, SkippedBelowLowestTrainableLayerBitwiseSameGradients) {
  const std::vector<InputGradCase> llama = {
      {"llama q,v on layer 1", {"q_proj", "v_proj"}, {1}, {}},
      {"llama down_proj on layer 1 (MLP half only)", {"down_proj"}, {1}, {}},
      {"llama o_proj on layer 0", {"o_proj"}, {0}, {}},
      {"llama gate_proj on layer 1 + its post_attention_layernorm",
       {"gate_proj"}, {1}, {"model.layers.1.post_attention_layernorm.weight"}},
      {"llama k_proj on layer 1 + its input_layernorm",
       {"k_proj"}, {1}, {"model.layers.1.input_layernorm.weight"}},
      {"llama q_proj on layer 1 + post_attention_layernorm alone in layer 0",
       {"q_proj"}, {1}, {"model.layers.0.post_attention_layernorm.weight"}},
  };
  for (const auto& c : llama) check_input_grad_case("tiny_llama", "llama_qv_ref.safetensors", c);
  const std::vector<InputGradCase> bert = {
      {"bert query,value on layer 1", {"query", "value"}, {1}, {}},
      {"bert intermediate.dense on layer 1 (MLP half only)", {"intermediate.dense"}, {1}, {}},
      {"bert key on layer 0", {"key"}, {0}, {}},
      {"bert value on layer 1 + its attention LayerNorm",
       {"value"}, {1}, {"bert.encoder.layer.1.attention.output.LayerNorm.weight"}},
      {"bert query on layer 1 + output LayerNorm alone in layer 0",
       {"query"}, {1}, {"bert.encoder.layer.0.output.LayerNorm.bias"}},
  };
  for (const auto& c : bert) check_input_grad_case("tiny_bert", "bert_qv_ref.safetensors", c);
}
