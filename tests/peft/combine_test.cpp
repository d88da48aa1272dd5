// Combining adapters (add_weighted_adapter cat / linear / svd), PiSSA / OLoRA init and mixed-batch
// inference, against PEFT 0.21.2 fixtures (tools/ref_peft_combine.py) and numpy's SVD.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "lorafit/io.h"
#include "lorafit/models.h"
#include "lorafit/peft.h"
#include "peft_test_util.h"

namespace {

using peft_test::max_abs;
using peft_test::max_abs_diff;
using peft_test::nan_max;

namespace fs = std::filesystem;
using lorafit::Error;
using lorafit::nn::Context;
using lorafit::peft::AdapterConfig;
using lorafit::peft::MixedBatch;
using lorafit::peft::PeftModel;
using lorafit::tensor::Tensor;
namespace io = lorafit::io;
namespace models = lorafit::models;
namespace peft = lorafit::peft;

const std::string kRoot = std::string(LORAFIT_SOURCE_DIR) + "/";
const std::string kFix = std::string(LORAFIT_FIXTURES) + "/peft_combine/";
const std::string kLlama = kRoot + "tests/fixtures/models/tiny_llama";

std::unique_ptr<models::Model> llama() {
  models::LoadOptions lo;
  lo.dequantize = true;
  return models::load_model(kLlama, lo);
}

// one, two (r 4 / r 2, different targets), three (r 4, same targets as one).
std::unique_ptr<PeftModel> three_adapters(models::Model& m) {
  auto pm = PeftModel::from_pretrained(m, kFix + "one", "one");
  pm->load_adapter(kFix + "two", "two");
  pm->load_adapter(kFix + "three", "three");
  return pm;
}

std::vector<std::string> sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}

// ---- add_weighted_adapter ----------------------------------------------------------------------

TEST(Combine, CatAndLinearEqualPeft) {
  auto m = llama();
  auto pm = three_adapters(*m);
  io::SafetensorsFile ref = io::SafetensorsFile::open(kFix + "combine_ref.safetensors");
  pm->add_weighted_adapter({"one", "two"}, {0.7, -0.4}, "cat", "cat");
  pm->add_weighted_adapter({"one", "three"}, {0.6, 0.5}, "lin", "linear");
  for (const auto& [name, pre] : {std::pair<std::string, std::string>{"cat", "cat."}, {"lin", "linear."}}) {
    auto state = pm->adapter_state(name);
    int n = 0;
    for (const auto& rk : ref.names())
      if (rk.rfind(pre, 0) == 0) ++n;
    EXPECT_EQ(static_cast<int>(state.size()), n) << name;
    for (auto& [k, t] : state) {
      ASSERT_TRUE(ref.contains(pre + k)) << k;
      EXPECT_LT(max_abs_diff(t, ref.get_f32(pre + k)), 1e-6) << name << " " << k;
    }
  }
  // PEFT's new config: r = lora_alpha = Σ ranks (cat) / the common rank (linear), union of targets.
  EXPECT_EQ(pm->config("cat").r, 6);
  EXPECT_EQ(pm->config("cat").lora_alpha, 6.0);
  EXPECT_EQ(sorted(pm->config("cat").target_modules),
            (std::vector<std::string>{"o_proj", "q_proj", "v_proj"}));
  EXPECT_EQ(pm->config("lin").r, 4);
  EXPECT_EQ(pm->config("lin").lora_alpha, 4.0);
  // cat is exact: s·B A = 0.7·ΔW_one + (−0.4)·ΔW_two on every module.
  io::SafetensorsFile ref2 = io::SafetensorsFile::open(kFix + "combine_ref.safetensors");
  for (auto& [path, l] : pm->lora_layers("cat")) {
    Tensor full = ref2.get_f32("full." + path);
    EXPECT_LT(max_abs_diff(l->delta_weight(), full), 1e-5) << path;
    EXPECT_GT(max_abs(full), 0.05);
  }
  // The new adapter is inactive (as PEFT's): the active one is unchanged.
  EXPECT_EQ(pm->active_adapters(), std::vector<std::string>{"one"});
}

TEST(Combine, SvdFullRankIsExactAndTruncatedIsBestApproximation) {
  auto m = llama();
  auto pm = three_adapters(*m);
  io::SafetensorsFile ref = io::SafetensorsFile::open(kFix + "combine_ref.safetensors");
  pm->add_weighted_adapter({"one", "two"}, {0.7, -0.4}, "svd6", "svd", 6);
  pm->add_weighted_adapter({"one", "two"}, {0.7, -0.4}, "svd2", "svd", 2);
  pm->add_weighted_adapter({"one", "two"}, {0.7, -0.4}, "svd_default", "svd");
  EXPECT_EQ(pm->config("svd6").r, 6);
  EXPECT_EQ(pm->config("svd_default").r, 4);  // the largest rank
  int modules = 0;
  for (auto& [path, l] : pm->lora_layers("svd6")) {
    Tensor full = ref.get_f32("full." + path);
    // svd_rank ≥ Σ ranks: ΔW is the combination itself, as PEFT's svd.
    EXPECT_LT(max_abs_diff(l->delta_weight(), full), 1e-5) << path;
    EXPECT_LT(max_abs_diff(l->delta_weight(), ref.get_f32("svd." + path)), 1e-5) << path;
    ++modules;
  }
  EXPECT_EQ(modules, 6);
  int truncated = 0;
  for (auto& [path, l] : pm->lora_layers("svd2")) {
    Tensor full = ref.get_f32("full." + path);
    Tensor d = l->delta_weight();
    // Rank 2: numpy's truncated SVD (the best rank-2 approximation, Eckart–Young) ...
    EXPECT_LT(max_abs_diff(d, ref.get_f32("best2." + path)), 1e-5) << path;
    // ... whose error is the tail of the singular values: ‖ΔW − ΔW₂‖²_F = Σ_{i≥2} σᵢ².
    Tensor sv = ref.get_f32("sv." + path);
    double tail = 0, err = 0;
    for (int64_t i = 2; i < sv.numel(); ++i) tail += static_cast<double>(sv.f32()[i]) * sv.f32()[i];
    for (int64_t i = 0; i < d.numel(); ++i) {
      const double e = static_cast<double>(full.f32()[i]) - d.f32()[i];
      err += e * e;
    }
    if (tail > 1e-3) ++truncated;  // o_proj has only adapter two (rank 2): nothing cut there
    EXPECT_NEAR(err, tail, 1e-4 * tail + 1e-9) << path;
  }
  EXPECT_EQ(truncated, 4);  // q_proj and v_proj of both layers: the truncation matters
}

TEST(Combine, RsloraIsScaledOnce) {
  auto m = llama();
  AdapterConfig c;
  c.r = 4;
  c.lora_alpha = 8;
  c.use_rslora = true;
  c.target_modules = {"q_proj", "v_proj"};
  c.init_lora_weights = peft::LoraInit::Random;
  PeftModel pm(*m, c, 1, "p");
  c.r = 2;
  pm.add_adapter("q", c, 2);
  for (const char* type : {"cat", "svd"}) {
    const std::string name = std::string("mix_") + type;
    pm.add_weighted_adapter({"p", "q"}, {0.5, 1.5}, name, type, 6);
    EXPECT_TRUE(pm.config(name).use_rslora);
    auto p = pm.lora_layers("p"), q = pm.lora_layers("q"), mix = pm.lora_layers(name);
    ASSERT_EQ(mix.size(), p.size());
    for (size_t i = 0; i < mix.size(); ++i) {
      EXPECT_NEAR(mix[i].second->scaling(), std::sqrt(6.0), 1e-6);  // alpha 6 / √6: not 1
      Tensor want = p[i].second->delta_weight();
      Tensor dq = q[i].second->delta_weight();
      for (int64_t j = 0; j < want.numel(); ++j)
        want.f32()[j] = 0.5f * want.f32()[j] + 1.5f * dq.f32()[j];
      EXPECT_LT(max_abs_diff(mix[i].second->delta_weight(), want), 1e-5) << type << " " << mix[i].first;
    }
  }
}

TEST(Combine, Errors) {
  auto m = llama();
  auto pm = three_adapters(*m);
  auto msg = [&](auto&& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(msg([&] { pm->add_weighted_adapter({"one", "two"}, {1, 1}, "x", "linear"); })
                .find("same r"), std::string::npos);
  EXPECT_NE(msg([&] { pm->add_weighted_adapter({"one", "nope"}, {1, 1}, "x", "cat"); })
                .find("nope"), std::string::npos);
  EXPECT_NE(msg([&] { pm->add_weighted_adapter({"one"}, {1, 1}, "x", "cat"); }).find("weights"),
            std::string::npos);
  EXPECT_NE(msg([&] { pm->add_weighted_adapter({"one", "two"}, {1, 1}, "x", "ties"); })
                .find("'ties'"), std::string::npos);
  EXPECT_NE(msg([&] { pm->add_weighted_adapter({"one", "two"}, {1, 1}, "two", "cat"); })
                .find("already exists"), std::string::npos);
  EXPECT_EQ(pm->adapter_names(), (std::vector<std::string>{"one", "two", "three"}));
}

TEST(Combine, SavedFolderReloads) {
  auto m = llama();
  auto pm = three_adapters(*m);
  pm->add_weighted_adapter({"one", "two"}, {0.7, -0.4}, "cat", "cat");
  const std::string dir = (fs::temp_directory_path() / ("lorafit_combine_" + std::to_string(::getpid()))).string();
  fs::remove_all(dir);
  pm->save_pretrained(dir, "cat");
  auto m2 = llama();
  auto back = PeftModel::from_pretrained(*m2, dir, "cat");
  auto a = pm->lora_layers("cat"), b = back->lora_layers("cat");
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_EQ(max_abs_diff(a[i].second->delta_weight(), b[i].second->delta_weight()), 0.0);
  fs::remove_all(dir);
}

// ---- PiSSA / OLoRA -----------------------------------------------------------------------------

TEST(InitFromWeight, PissaAndOloraMatchPeft) {
  io::SafetensorsFile ref = io::SafetensorsFile::open(kFix + "init_ref.safetensors");
  auto plain = llama();
  Context c0;
  Tensor ids = Tensor::from_ints({2, 6}, {5, 17, 3, 88, 41, 9, 60, 2, 33, 71, 14, 26});
  Tensor base_logits = dynamic_cast<models::LlamaModel&>(*plain).forward(c0, ids).clone();
  for (auto init : {peft::LoraInit::Pissa, peft::LoraInit::Olora}) {
    const std::string pre = peft::lora_init_name(init);
    auto m = llama();
    std::map<std::string, Tensor> orig;
    for (auto& [path, lin] : m->linears()) orig[path] = lin->weight.value.clone();
    AdapterConfig c;
    c.r = 4;
    c.lora_alpha = 8;
    c.target_modules = {"q_proj", "v_proj", "down_proj"};
    c.init_lora_weights = init;
    PeftModel pm(*m, c, 0);
    int n = 0;
    std::map<std::string, lorafit::nn::Linear*> lins;
    for (auto& [path, lin] : m->linears()) lins[path] = lin;
    for (auto& [path, l] : pm.lora_layers()) {
      const Tensor& res = lins[path]->weight.value;
      EXPECT_LT(max_abs_diff(res, ref.get_f32(pre + ".res." + path)), 1e-5) << pre << " " << path;
      EXPECT_LT(max_abs_diff(l->delta_weight(), ref.get_f32(pre + ".ba." + path)), 1e-5) << pre << " " << path;
      EXPECT_GT(max_abs(l->delta_weight()), 1e-2);  // the base really moved into the adapter
      // Residual + s·B A is the original weight.
      Tensor sum = res.clone();
      lorafit::kernels::axpy(1.0f, l->delta_weight(), sum);
      EXPECT_LT(max_abs_diff(sum, orig[path]), 1e-5);
      // A, B equal PEFT's up to the sign of each rank component (SVD / QR sign freedom).
      Tensor A = ref.get_f32(pre + ".A." + path), B = ref.get_f32(pre + ".B." + path);
      const int64_t r = A.dim(0), in = A.dim(1), out = B.dim(0);
      for (int64_t j = 0; j < r; ++j) {
        double dp = 0, dm = 0;
        for (int64_t k = 0; k < in; ++k) {
          dp = nan_max(dp, std::fabs(static_cast<double>(l->A.value.f32()[j * in + k]) -
                                     A.f32()[j * in + k]));
          dm = nan_max(dm, std::fabs(static_cast<double>(l->A.value.f32()[j * in + k]) +
                                     A.f32()[j * in + k]));
        }
        EXPECT_LT(std::min(dp, dm), 1e-4) << pre << " " << path << " row " << j;
        const float sgn = dp <= dm ? 1.0f : -1.0f;
        for (int64_t o = 0; o < out; ++o)
          EXPECT_NEAR(l->B.value.f32()[o * r + j], sgn * B.f32()[o * r + j], 1e-4);
      }
      ++n;
    }
    EXPECT_EQ(n, 6);
    // At init the adapted model is the original model.
    Context ctx;
    Tensor lg = dynamic_cast<models::LlamaModel&>(*m).forward(ctx, ids);
    EXPECT_LT(max_abs_diff(lg, base_logits), 1e-4) << pre;
  }
}

TEST(InitFromWeight, NeedsF32Base) {
  auto m = models::load_model(kRoot + "tests/fixtures/models/tiny_llama_bf16");
  AdapterConfig c;
  c.target_modules = {"q_proj"};
  c.init_lora_weights = peft::LoraInit::Pissa;
  try {
    PeftModel pm(*m, c, 0);
    FAIL() << "pissa on a BF16 base did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("F32 base weight"), std::string::npos) << e.what();
  }
}

// ---- mixed batch -------------------------------------------------------------------------------

// True while some LoRA layer of pm still routes per example (MixedBatch sets it, its end clears
// it).
bool any_layer_routing(PeftModel& pm) {
  for (const auto& a : pm.adapter_names())
    for (auto& [path, l] : pm.lora_layers(a))
      if (l->route != nullptr) return true;
  return false;
}

// Logits of example b alone with adapter `name` ("__base__": adapters disabled).
Tensor alone(PeftModel& pm, const std::string& name, const std::function<Tensor(Context&, int64_t)>& run,
             int64_t b) {
  if (name == MixedBatch::kBase) {
    pm.disable_adapters();
  } else {
    pm.enable_adapters();
    pm.set_adapter(name);
  }
  Context ctx;
  Tensor t = run(ctx, b).clone();
  pm.enable_adapters();
  return t;
}

TEST(MixedBatch, LlamaRowsEqualEachExampleAlone) {
  auto m = llama();
  auto& lm = dynamic_cast<models::LlamaModel&>(*m);
  auto pm = three_adapters(*m);
  const int64_t B = 4, T = 7, V = m->config().vocab;
  std::vector<int32_t> v;
  for (int64_t i = 0; i < B * T; ++i) v.push_back(static_cast<int32_t>((i * 37 + 11) % V));
  Tensor ids = Tensor::from_ints({B, T}, v);
  const std::vector<std::string> names = {"one", "__base__", "two", "one"};
  Tensor mixed;
  {
    Context ctx;
    MixedBatch mb(*pm, ctx, names);
    mixed = lm.forward(ctx, ids).clone();
    // Cached generation routes the same way: prefix then the last token.
    Context c2;
    MixedBatch mb2(*pm, c2, names);
    models::KvCache cache = lm.new_cache(B, T);
    Tensor pre = Tensor::from_ints({B, T - 1}, [&] {
      std::vector<int32_t> p;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < T - 1; ++t) p.push_back(v[b * T + t]);
      return p;
    }());
    lm.forward_cached(c2, pre, cache);
    std::vector<int32_t> last;
    for (int64_t b = 0; b < B; ++b) last.push_back(v[b * T + T - 1]);
    Tensor step = lm.forward_cached(c2, Tensor::from_ints({B, 1}, last), cache).clone();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < V; ++j)
        EXPECT_NEAR(step.f32()[b * V + j], mixed.f32()[(b * T + T - 1) * V + j], 1e-5);
  }
  EXPECT_EQ(pm->active_adapters(), std::vector<std::string>{"one"});  // restored
  auto run = [&](Context& ctx, int64_t b) {
    return lm.forward(ctx, Tensor::from_ints({1, T}, std::vector<int32_t>(v.begin() + b * T, v.begin() + (b + 1) * T)));
  };
  Tensor base0 = alone(*pm, "__base__", run, 0);
  for (int64_t b = 0; b < B; ++b) {
    Tensor want = alone(*pm, names[b], run, b);
    Tensor got = Tensor::from_vector({1, T, V}, std::vector<float>(mixed.f32() + b * T * V, mixed.f32() + (b + 1) * T * V));
    EXPECT_LT(max_abs_diff(got, want), 1e-6) << "example " << b << " (" << names[b] << ")";
  }
  // The adapters matter, so the routing is really tested.
  EXPECT_GT(max_abs_diff(alone(*pm, "one", run, 0), base0), 1e-3);
  EXPECT_GT(max_abs_diff(alone(*pm, "two", run, 0), base0), 1e-3);
}

TEST(MixedBatch, BertClassifierWithModulesToSave) {
  models::LoadOptions lo;
  lo.dequantize = true;
  auto m = models::load_model(kRoot + "tests/fixtures/models/tiny_bert", lo);
  auto& bert = dynamic_cast<models::BertModel&>(*m);
  const std::string pf = std::string(LORAFIT_FIXTURES) + "/peft/";
  auto pm = PeftModel::from_pretrained(*m, pf + "bert_qv", "qv");  // classifier copy (SEQ_CLS)
  pm->load_adapter(pf + "bert_all_rslora", "rs");
  const int64_t B = 5, T = 6, V = m->config().vocab;
  std::vector<int32_t> v, mk;
  for (int64_t i = 0; i < B * T; ++i) v.push_back(static_cast<int32_t>(3 + (i * 29 + 5) % (V - 3)));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) mk.push_back(t < T - b % 3 ? 1 : 0);  // some padding
  Tensor ids = Tensor::from_ints({B, T}, v), mask = Tensor::from_ints({B, T}, mk);
  const std::vector<std::string> names = {"rs", "qv", "__base__", "qv", "rs"};
  Tensor mixed;
  {
    Context ctx;
    MixedBatch mb(*pm, ctx, names);
    mixed = bert.classify(ctx, bert.forward(ctx, ids, mask)).clone();
  }
  const int64_t L = mixed.dim(1);
  auto run = [&](Context& ctx, int64_t b) {
    Tensor i1 = Tensor::from_ints({1, T}, std::vector<int32_t>(v.begin() + b * T, v.begin() + (b + 1) * T));
    Tensor m1 = Tensor::from_ints({1, T}, std::vector<int32_t>(mk.begin() + b * T, mk.begin() + (b + 1) * T));
    return bert.classify(ctx, bert.forward(ctx, i1, m1));
  };
  for (int64_t b = 0; b < B; ++b) {
    Tensor want = alone(*pm, names[b], run, b);
    Tensor got = Tensor::from_vector({1, L}, std::vector<float>(mixed.f32() + b * L, mixed.f32() + (b + 1) * L));
    EXPECT_LT(max_abs_diff(got, want), 1e-6) << "example " << b << " (" << names[b] << ")";
  }
  Tensor base1 = alone(*pm, "__base__", run, 1);
  EXPECT_GT(max_abs_diff(alone(*pm, "qv", run, 1), base1), 1e-3);
  EXPECT_GT(max_abs_diff(alone(*pm, "rs", run, 1), base1), 1e-3);
}

TEST(MixedBatch, InferenceOnlyAndNamesChecked) {
  auto m = llama();
  auto& lm = dynamic_cast<models::LlamaModel&>(*m);
  auto pm = three_adapters(*m);
  Tensor ids = Tensor::from_ints({2, 3}, {1, 2, 3, 4, 5, 6});
  Context train;
  train.training = true;
  EXPECT_THROW({ MixedBatch mb(*pm, train, {"one", "two"}); }, Error);
  Context ctx;
  try {
    MixedBatch mb(*pm, ctx, {"one", "nope"});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'nope'"), std::string::npos);
  }
  {
    // 4 names for a batch of 2 × 3 tokens: 6 rows are no whole number of rows per example.
    MixedBatch mb(*pm, ctx, {"one", "two", "three", "one"});
    EXPECT_THROW(lm.forward(ctx, ids), Error);
  }
  {
    MixedBatch mb(*pm, ctx, {"one", "two"});
    EXPECT_TRUE(any_layer_routing(*pm));
    Tensor lg = lm.forward(ctx, ids);
    ctx.training = true;  // switched on afterwards: the forward refuses, no backward either
    EXPECT_THROW(lm.forward(ctx, ids), Error);
    ctx.training = false;
    lm.forward(ctx, ids);
    EXPECT_THROW(lm.backward(ctx, Tensor::zeros(lg.shape())), Error);
  }
  EXPECT_FALSE(any_layer_routing(*pm));  // the routing ended with the MixedBatch
  pm->merge();
  EXPECT_THROW({ MixedBatch mb(*pm, ctx, {"one", "two"}); }, Error);
}

// Routing is for plain LoRA: a DoRA adapter on the model is refused by name, not silently applied
// to every example.
TEST(MixedBatch, DoraAdapterIsRefusedByName) {
  auto m = llama();
  auto pm = three_adapters(*m);
  AdapterConfig c;
  c.r = 2;
  c.target_modules = {"q_proj"};
  c.use_dora = true;
  pm->add_adapter("dora", c, 3);
  Context ctx;
  try {
    MixedBatch mb(*pm, ctx, {"one", "two"});
    FAIL() << "a DoRA adapter was accepted for routing";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("adapter 'dora' is DoRA"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(any_layer_routing(*pm));  // the routing ended with the MixedBatch
  pm->delete_adapter("dora");
  MixedBatch mb(*pm, ctx, {"one", "two"});  // fine once it is gone
}

}  // namespace
