// AdaLoRA tests: SVDLinear and the orthogonal regularization against finite differences; parity
// with PEFT 0.21.2 (tools/ref_adalora.py): logits, loss and gradients of A, E, B; the rank
// allocator replayed over a recorded 60-step PEFT run (budget, threshold, scores and masks at every
// step, the final rank_pattern); the pruned folder loading and saving as PEFT's.
#include <gtest/gtest.h>

#include <unistd.h>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "lorafit/io.h"
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
using lorafit::peft::PeftModel;
using lorafit::peft::RankAllocator;
using lorafit::peft::SVDLinear;
using lorafit::tensor::Tensor;
namespace io = lorafit::io;
namespace models = lorafit::models;
namespace peft = lorafit::peft;

const std::string kFix = std::string(LORAFIT_FIXTURES) + "/adalora/";
const std::string kRoot = std::string(LORAFIT_SOURCE_DIR) + "/";

// ---- SVDLinear and orth reg against finite differences ----------------------------------------

void check_svd_layer(float dropout) {
  Linear lin(7, 5, true);
  lin.weight.value = opcheck::random({5, 7}, 1);
  lin.bias.value = opcheck::random({5}, 2);
  SVDLinear l(lin, 3, 6.0, 3, dropout);
  l.init_svd(/*init_lora_weights=*/false, 5);  // A, E, B all nonzero
  for (auto* p : {&l.A, &l.E, &l.B}) p->set_trainable(true);
  lin.adapters.push_back(&l);
  EXPECT_FLOAT_EQ(l.svd_scaling(), 6.0f / (3.0f + 1e-5f));
  Tensor x = opcheck::random({2, 3, 7}, 3);
  Tensor r = opcheck::random({2, 3, 5}, 4);
  Context ctx;
  ctx.training = dropout > 0;
  ctx.seed = 77;
  auto loss = [&]() {
    Context c2 = ctx;
    return opcheck::dot(lin.forward(c2, x), r);
  };
  Context c1 = ctx;
  lin.forward(c1, x);
  Tensor dx = lin.backward(c1, r);
  opcheck::expect_grad(dx, opcheck::finite_diff(x, loss, 1e-2f), 1e-4, "dx");
  opcheck::expect_grad(l.A.grad, opcheck::finite_diff(l.A.value, loss, 1e-2f), 1e-4, "dA");
  opcheck::expect_grad(l.E.grad, opcheck::finite_diff(l.E.value, loss, 1e-2f), 1e-4, "dE");
  opcheck::expect_grad(l.B.grad, opcheck::finite_diff(l.B.value, loss, 1e-2f), 1e-4, "dB");
  // ΔW: the branch equals x ΔWᵀ (no dropout).
  if (dropout == 0.0f) {
    Tensor d = l.delta_weight();
    lin.adapters.clear();
    Context c3;
    Tensor base = lin.forward(c3, x).clone();
    lin.adapters.push_back(&l);
    Tensor full = lin.forward(c3, x).clone();
    for (int64_t n = 0; n < 6; ++n)
      for (int64_t o = 0; o < 5; ++o) {
        double s = 0;
        for (int64_t i = 0; i < 7; ++i)
          s += static_cast<double>(x.f32()[n * 7 + i]) * d.f32()[o * 7 + i];
        EXPECT_NEAR(full.f32()[n * 5 + o] - base.f32()[n * 5 + o], s, 1e-5);
      }
  }
  lin.adapters.clear();
}

TEST(SVDLinear, FiniteDifferences) {
  check_svd_layer(0.0f);
}
TEST(SVDLinear, FiniteDifferencesDropout) {
  check_svd_layer(0.25f);
}

TEST(SVDLinear, PeftInitIsZeroEAndSmallGaussians) {
  Linear lin(64, 48, false);
  SVDLinear l(lin, 6, 8.0, 6, 0.0f);
  l.init_svd(true, 3);
  EXPECT_EQ(max_abs(l.E.value), 0.0);
  double s2 = 0;
  for (int64_t i = 0; i < l.A.value.numel(); ++i) s2 += l.A.value.f32()[i] * l.A.value.f32()[i];
  EXPECT_NEAR(std::sqrt(s2 / l.A.value.numel()), 0.02, 0.003);  // N(0, 0.02²)
}

TEST(AdaLoraOrthReg, FiniteDifferences) {
  Linear l1(6, 5, false), l2(4, 9, false);
  SVDLinear a(l1, 3, 4.0, 3, 0.0f), b(l2, 2, 4.0, 2, 0.0f);
  a.init_svd(false, 1);
  b.init_svd(false, 2);
  std::vector<SVDLinear*> layers{&a, &b};
  for (auto* l : layers) l->A.set_trainable(true), l->B.set_trainable(true);
  const double w = 0.7;
  const double loss0 = peft::adalora_orth_reg(layers, w, 1.0);
  // Direct formula: w · mean of the four norms.
  auto norm = [](const Tensor& p, bool rows) {
    const int64_t R = p.dim(0), C = p.dim(1), k = rows ? R : C;
    double f = 0;
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < k; ++j) {
        double s = 0;
        auto v = [&](int64_t a, int64_t b) { return static_cast<double>(p.f32()[a * C + b]); };
        if (rows)
          for (int64_t c = 0; c < C; ++c) s += v(i, c) * v(j, c);
        else
          for (int64_t r = 0; r < R; ++r) s += v(r, i) * v(r, j);
        s -= i == j;
        f += s * s;
      }
    return std::sqrt(f);
  };
  const double want = w *
                      (norm(a.A.value, true) + norm(a.B.value, false) + norm(b.A.value, true) +
                       norm(b.B.value, false)) /
                      4.0;
  EXPECT_NEAR(loss0, want, 1e-9 * want);
  auto loss = [&]() { return peft::adalora_orth_reg(layers, w, 0.0); };
  for (auto* l : layers) {
    opcheck::expect_grad(l->A.grad, opcheck::finite_diff(l->A.value, loss, 1e-3f), 1e-4, "orth dA");
    opcheck::expect_grad(l->B.grad, opcheck::finite_diff(l->B.value, loss, 1e-3f), 1e-4, "orth dB");
  }
}

// ---- parity with PEFT: logits, loss (ce + orth), gradients of A, E, B ---------------------------

struct BertRun {
  Tensor logits;
  double ce = 0;
};

BertRun run_bert(models::Model& m, const Tensor& ids, const Tensor& mask, const Tensor& tt,
                 const Tensor* labels) {
  auto* bert = dynamic_cast<models::BertModel*>(&m);
  EXPECT_NE(bert, nullptr);
  Context ctx;
  BertRun out;
  Tensor h = bert->forward(ctx, ids, mask, tt);
  out.logits = bert->classify(ctx, h).clone();
  if (!labels) return out;
  const int64_t B = out.logits.dim(0), L = out.logits.dim(1);
  Tensor dl = Tensor::zeros({B, L});
  for (int64_t b = 0; b < B; ++b) {
    const float* z = out.logits.f32() + b * L;
    double mx = z[0], s = 0;
    for (int64_t j = 1; j < L; ++j) mx = std::max<double>(mx, z[j]);
    for (int64_t j = 0; j < L; ++j) s += std::exp(z[j] - mx);
    const int y = labels->i32()[b];
    out.ce += (std::log(s) + mx - z[y]) / B;
    for (int64_t j = 0; j < L; ++j)
      dl.f32()[b * L + j] = static_cast<float>((std::exp(z[j] - mx) / s - (j == y)) / B);
  }
  bert->backward(ctx, bert->classify_backward(ctx, dl));
  return out;
}

std::vector<SVDLinear*> svd_layers(PeftModel& pm) {
  std::vector<SVDLinear*> v;
  for (auto& [p, l] : pm.adalora_layers()) v.push_back(l);
  return v;
}

TEST(AdaLoraParity, LogitsLossGradientsWithPeft) {
  const std::string ref_path = kFix + "bert_adalora_ref.safetensors";
  ASSERT_TRUE(fs::exists(ref_path)) << ref_path << " missing (tools/make_reference.py adalora)";
  io::SafetensorsFile ref = io::SafetensorsFile::open(ref_path);
  models::LoadOptions lo;
  lo.num_labels = ref.get("logits").dim(1);
  auto model = models::load_model(kRoot + "tests/fixtures/models/tiny_bert", lo);
  auto pm = PeftModel::from_pretrained(*model, kFix + "bert_adalora", "default", true);
  const AdapterConfig& cfg = pm->config();
  EXPECT_TRUE(cfg.is_adalora());
  EXPECT_EQ(cfg.init_r, 4);
  EXPECT_DOUBLE_EQ(cfg.orth_reg_weight, 0.3);
  auto layers = svd_layers(*pm);
  ASSERT_EQ(layers.size(), 4u);
  for (auto* l : layers) EXPECT_EQ(l->rank(), 4);

  peft::ParameterCount cnt = pm->count_parameters();
  EXPECT_EQ(cnt.trainable, std::stoll(ref.metadata().at("trainable")));
  EXPECT_EQ(cnt.total, std::stoll(ref.metadata().at("all")));

  Tensor labels = ref.get("labels");
  BertRun run = run_bert(*model, ref.get("input_ids").clone(), ref.get("attention_mask").clone(),
                         ref.get("token_type_ids").clone(), &labels);
  const double orth = peft::adalora_orth_reg(layers, cfg.orth_reg_weight, 1.0);
  EXPECT_LT(max_abs_diff(run.logits, ref.get("logits")), 1e-5);
  EXPECT_NEAR(run.ce, ref.get("ce").f32()[0], 1e-5 * std::fabs(run.ce));
  EXPECT_NEAR(orth, ref.get("orth").f32()[0], 1e-5 * orth);
  EXPECT_GT(orth, 0.1);  // the term is not negligible here

  int checked = 0, svd_keys = 0;
  double worst = 0;
  for (auto& [key, p] : pm->trainable_parameters()) {
    ASSERT_TRUE(ref.contains("grad." + key)) << "PEFT has no gradient for " << key;
    Tensor want = ref.get("grad." + key).view(p->grad.shape());
    const double rel = max_abs_diff(p->grad, want) / std::max(max_abs(want), 1e-12);
    EXPECT_LT(rel, 1e-4) << key;
    EXPECT_GT(max_abs(want), 0.0) << key;
    worst = nan_max(worst, rel);
    ++checked;
    svd_keys += key.find(".lora_") != std::string::npos;
  }
  int ref_grads = 0;
  for (const auto& n : ref.names()) ref_grads += n.rfind("grad.", 0) == 0;
  EXPECT_EQ(checked, ref_grads);
  EXPECT_EQ(svd_keys, 12);  // A, E, B of 4 modules
  std::printf(
      "[ bert_adalora ] max |logits - PEFT| = %.3g, |ce - PEFT| = %.3g, |orth - PEFT| = %.3g, "
      "%d gradients, max relative error %.3g\n",
      max_abs_diff(run.logits, ref.get("logits")), std::fabs(run.ce - ref.get("ce").f32()[0]),
      std::fabs(orth - ref.get("orth").f32()[0]), checked, worst);

  // Merge gives the same logits; unmerge restores.
  pm->merge();
  BertRun merged = run_bert(*model, ref.get("input_ids").clone(), ref.get("attention_mask").clone(),
                            ref.get("token_type_ids").clone(), nullptr);
  EXPECT_LT(max_abs_diff(merged.logits, run.logits), 1e-5);
  pm->unmerge();
}

// ---- the rank allocator replayed over PEFT's run
// -------------------------------------------------

std::vector<std::string> json_strings(const std::string& s) {
  return io::json::parse(s).get<std::vector<std::string>>();
}

TEST(AdaLoraAllocator, ReplaysPeftRunStepByStep) {
  const std::string ref_path = kFix + "run_ref.safetensors";
  ASSERT_TRUE(fs::exists(ref_path)) << ref_path << " missing (tools/make_reference.py adalora)";
  io::SafetensorsFile ref = io::SafetensorsFile::open(ref_path);
  AdapterConfig cfg = peft::read_adapter_config(kFix + "run");
  cfg.adalora_rank_pattern.clear();  // the run starts unpruned
  const auto paths = json_strings(ref.metadata().at("layers"));
  const int64_t L = static_cast<int64_t>(paths.size());
  const int64_t T = ref.get("budget").dim(0);
  ASSERT_GE(T, 50);
  ASSERT_EQ(T, cfg.total_step);
  const int64_t r = cfg.init_r;

  std::vector<std::unique_ptr<Linear>> lins;
  std::vector<std::unique_ptr<SVDLinear>> svds;
  std::vector<std::pair<std::string, SVDLinear*>> layers;
  for (int64_t l = 0; l < L; ++l) {
    const Tensor A = ref.get("A." + std::to_string(l)), B = ref.get("B." + std::to_string(l));
    lins.push_back(std::make_unique<Linear>(A.dim(2), B.dim(1), false));
    svds.push_back(std::make_unique<SVDLinear>(*lins.back(), r, cfg.lora_alpha, r, 0.0f));
    for (auto* p : {&svds.back()->A, &svds.back()->E, &svds.back()->B}) p->set_trainable(true);
    layers.emplace_back(paths[static_cast<size_t>(l)], svds.back().get());
  }
  RankAllocator alloc(cfg, layers);
  EXPECT_EQ(alloc.init_budget(), std::stoll(ref.metadata().at("init_bgt")));
  EXPECT_EQ(alloc.target_budget(), std::stoll(ref.metadata().at("target_bgt")));

  const Tensor budget = ref.get("budget"), masked = ref.get("masked"), thr = ref.get("threshold");
  const Tensor scores = ref.get("scores"), keep = ref.get("keep"), e_after = ref.get("E_after");
  int n_masked = 0, n_changes = 0;
  std::vector<std::vector<bool>> prev;
  for (int64_t t = 1; t <= T; ++t) {
    const int64_t s = t - 1;
    // What PEFT's allocator saw: the weights after the optimizer step, and their gradients.
    for (int64_t l = 0; l < L; ++l) {
      SVDLinear& v = *svds[static_cast<size_t>(l)];
      for (auto [name, p] : {std::pair{"A", &v.A}, std::pair{"E", &v.E}, std::pair{"B", &v.B}}) {
        const Tensor w = ref.get(std::string(name) + "." + std::to_string(l));
        const Tensor g = ref.get(std::string("g") + name + "." + std::to_string(l));
        const int64_t n = p->value.numel();
        std::copy_n(w.f32() + s * n, n, p->value.f32());
        std::copy_n(g.f32() + s * n, n, p->grad.f32());
      }
    }
    RankAllocator::Step st = alloc.update_and_allocate(t);
    EXPECT_EQ(st.budget, budget.i32()[s]) << "step " << t;
    EXPECT_EQ(st.masked, masked.i32()[s] == 1) << "step " << t;
    if (std::isfinite(thr.f32()[s])) {
      // The threshold is one of the scores: equal up to the fp32 rounding of torch.mean's sum.
      EXPECT_NEAR(st.threshold, thr.f32()[s], 1e-6 * std::fabs(thr.f32()[s]))
          << "threshold, step " << t;
      for (int64_t l = 0; l < L; ++l)
        for (int64_t i = 0; i < r; ++i) {
          const float want = scores.f32()[(s * L + l) * r + i];
          const float got = peft::RankAllocatorProbe::last_scores(
              alloc)[static_cast<size_t>(l)][static_cast<size_t>(i)];
          EXPECT_NEAR(got, want, 1e-6 * std::fabs(want) + 1e-30)
              << "score " << l << "/" << i << " step " << t;
        }
    }
    if (keep.i32()[(s * L) * r] >= 0) {
      ++n_masked;
      ASSERT_EQ(alloc.rank_pattern().size(), static_cast<size_t>(L));
      std::vector<std::vector<bool>> cur;
      for (int64_t l = 0; l < L; ++l) {
        const auto& [key, mask] = alloc.rank_pattern()[static_cast<size_t>(l)];
        EXPECT_EQ(key, paths[static_cast<size_t>(l)] + ".lora_E");
        for (int64_t i = 0; i < r; ++i)
          EXPECT_EQ(mask[static_cast<size_t>(i)], keep.i32()[(s * L + l) * r + i] == 1)
              << "mask " << paths[static_cast<size_t>(l)] << "[" << i << "] step " << t;
        cur.push_back(mask);
      }
      n_changes += cur != prev;
      prev = cur;
    }
    // lora_E after masking, bit for bit.
    for (int64_t l = 0; l < L; ++l)
      for (int64_t i = 0; i < r; ++i)
        EXPECT_EQ(svds[static_cast<size_t>(l)]->E.value.f32()[i],
                  e_after.f32()[(s * L + l) * r + i])
            << "E after step " << t;
  }
  EXPECT_EQ(n_masked, 26);
  std::printf("[ run ] %lld steps replayed: budget %d -> %d, %d masks equal PEFT's (%d distinct)\n",
              static_cast<long long>(T), budget.i32()[0], budget.i32()[T - 1], n_masked, n_changes);
  EXPECT_GE(n_changes, 3);  // the masks actually moved during the run
  // The final rank_pattern is PEFT's.
  io::json want = io::json::parse(ref.metadata().at("rank_pattern"));
  ASSERT_EQ(want.size(), alloc.rank_pattern().size());
  for (const auto& [key, mask] : alloc.rank_pattern()) {
    ASSERT_TRUE(want.contains(key)) << key;
    EXPECT_EQ(want[key].get<std::vector<bool>>(), mask) << key;
  }
}

TEST(AdaLoraAllocator, BudgetScheduleEdges) {
  AdapterConfig c;
  c.peft_type = "ADALORA";
  c.target_modules = {"q"};
  c.init_r = 6, c.target_r = 2, c.tinit = 10, c.tfinal = 20, c.total_step = 100, c.deltaT = 5;
  Linear a(8, 8, false), b(8, 8, false);
  SVDLinear la(a, 6, 8, 6, 0.0f), lb(b, 6, 8, 6, 0.0f);
  RankAllocator al(c, {{"a", &la}, {"b", &lb}});
  EXPECT_EQ(al.budget_schedule(10), (std::pair<int64_t, bool>{12, false}));  // t <= tinit
  EXPECT_EQ(al.budget_schedule(11).first, 11);  // int(8·(1 − 1/70)³ + 4) = 11
  EXPECT_FALSE(al.budget_schedule(11).second);
  EXPECT_TRUE(al.budget_schedule(15).second);                              // t % deltaT == 0
  EXPECT_EQ(al.budget_schedule(80), (std::pair<int64_t, bool>{4, true}));  // t == T − tfinal
  EXPECT_EQ(al.budget_schedule(81), (std::pair<int64_t, bool>{4, true}));
  // A one-step run has no importance to rank before its final mask: refused up front.
  c.tinit = 0, c.tfinal = 0, c.total_step = 1;
  EXPECT_THROW(RankAllocator(c, {{"a", &la}}), Error);
}

// The CLI's default schedule: the AdaLoRA paper's SST-2 fractions of the run (tinit 6000, tfinal
// 22000, deltaT 100 of 50,520 steps), always a valid config for the allocator.
TEST(AdaLoraAllocator, DefaultScheduleIsThePapersFractionsOfTheRun) {
  const peft::AdaloraSchedule paper = peft::adalora_default_schedule(50520);
  EXPECT_EQ(paper.tinit, 6062);   // 12%
  EXPECT_EQ(paper.tfinal, 22228);  // 44%
  EXPECT_EQ(paper.deltaT, 101);    // 50520 / 500
  const peft::AdaloraSchedule s300 = peft::adalora_default_schedule(300);
  EXPECT_EQ(s300.tinit, 36);
  EXPECT_EQ(s300.tfinal, 132);
  EXPECT_EQ(s300.deltaT, 1);
  EXPECT_EQ(peft::adalora_default_schedule(2105).deltaT, 4);  // one SST-2 epoch of 32
  for (int64_t t : {2, 3, 7, 12, 100, 300, 2105}) {
    const peft::AdaloraSchedule d = peft::adalora_default_schedule(t);
    AdapterConfig c;
    c.peft_type = "ADALORA";
    c.target_modules = {"q"};
    c.total_step = t, c.tinit = d.tinit, c.tfinal = d.tfinal, c.deltaT = d.deltaT;
    EXPECT_NO_THROW(c.validate("t")) << t;
    EXPECT_GE(t - d.tfinal, 2) << t;  // a step to measure importance before the final mask
  }
}

// ---- PEFT's pruned folder: load, logits, save back
// -----------------------------------------------

TEST(AdaLoraFolder, PrunedPeftFolderLoadsAndSavesIdentically) {
  io::SafetensorsFile ref = io::SafetensorsFile::open(kFix + "run_ref.safetensors");
  models::LoadOptions lo;
  lo.num_labels = ref.get("eval_logits").dim(1);
  auto model = models::load_model(kRoot + "tests/fixtures/models/tiny_bert", lo);
  auto pm = PeftModel::from_pretrained(*model, kFix + "run");
  io::json rp = io::json::parse(ref.metadata().at("rank_pattern"));
  for (auto& [path, l] : pm->adalora_layers()) {
    auto mask = rp.at(path + ".lora_E").get<std::vector<bool>>();
    EXPECT_EQ(l->rank(), std::count(mask.begin(), mask.end(), true)) << path;
    EXPECT_EQ(l->ranknum(), 4) << path;  // stays init_r, as PEFT's resize
  }
  BertRun run = run_bert(*model, ref.get("eval_ids").clone(), ref.get("eval_mask").clone(),
                         ref.get("eval_tt").clone(), nullptr);
  EXPECT_LT(max_abs_diff(run.logits, ref.get("eval_logits")), 1e-5);
  std::printf("[ run ] PEFT's pruned folder: max |logits - PEFT| = %.3g\n",
              max_abs_diff(run.logits, ref.get("eval_logits")));

  const std::string out =
      (fs::temp_directory_path() / ("lorafit_adalora_" + std::to_string(::getpid()))).string();
  pm->save_pretrained(out);
  io::SafetensorsFile ours = io::SafetensorsFile::open(out + "/adapter_model.safetensors");
  io::SafetensorsFile theirs = io::SafetensorsFile::open(kFix + "run/adapter_model.safetensors");
  auto sorted = [](std::vector<std::string> v) {
    std::sort(v.begin(), v.end());
    return v;
  };
  EXPECT_EQ(sorted(ours.names()), sorted(theirs.names()));
  for (const auto& k : theirs.names())
    if (ours.contains(k)) {
      EXPECT_EQ(max_abs_diff(ours.get_f32(k), theirs.get_f32(k)), 0.0) << k;
    }
  io::json a = io::read_json_file(out + "/adapter_config.json");
  io::json b = io::read_json_file(kFix + "run/adapter_config.json");
  for (const char* k : {"peft_type", "init_r", "target_r", "tinit", "tfinal", "deltaT", "beta1",
                        "beta2", "orth_reg_weight", "total_step", "lora_alpha", "rank_pattern"})
    EXPECT_EQ(a[k], b[k]) << k;
  fs::remove_all(out);
}

TEST(AdaLoraFolder, TrainedFullRankAdapterSavesPrunedByItsPattern) {
  models::LoadOptions lo;
  lo.num_labels = 3;
  auto model = models::load_model(kRoot + "tests/fixtures/models/tiny_bert", lo);
  AdapterConfig c;
  c.peft_type = "ADALORA";
  c.task_type = "SEQ_CLS";
  c.target_modules = {"query"};
  c.init_r = 3, c.target_r = 1, c.total_step = 10;
  PeftModel pm(*model, c, 7);
  auto layers = pm.adalora_layers();
  ASSERT_EQ(layers.size(), 2u);
  for (auto& [p, l] : layers) {
    l->E.value.f32()[0] = 1.0f, l->E.value.f32()[1] = 2.0f, l->E.value.f32()[2] = 3.0f;
  }
  pm.set_adalora_rank_pattern({{layers[0].first + ".lora_E", {true, false, true}},
                               {layers[1].first + ".lora_E", {false, false, true}}});
  auto st = pm.adapter_state();
  for (auto& [k, t] : st) {
    if (k.find(layers[0].first + ".lora_E") != std::string::npos) {
      ASSERT_EQ(t.dim(0), 2);
      EXPECT_EQ(t.f32()[0], 1.0f);
      EXPECT_EQ(t.f32()[1], 3.0f);
    }
    if (k.find(layers[1].first + ".lora_B") != std::string::npos) {
      EXPECT_EQ(t.dim(1), 1);
    }
  }
}

// Exports AdaLoRA folders for tools/check_peft_load.py (which runs PeftExport.*): one unpruned, one
// pruned by a rank_pattern (masked E rows zero, as the allocator leaves them), with lorafit's
// logits.
TEST(PeftExport, AdaLoraForPythonCheck) {
  const char* env_dir = std::getenv("LORAFIT_PEFT_EXPORT");
  const std::string tmp =
      (fs::temp_directory_path() / ("lorafit_adalora_export_" + std::to_string(::getpid())))
          .string();
  const std::string dir = env_dir ? std::string(env_dir) : tmp;
  fs::create_directories(dir);
  io::SafetensorsFile ref = io::SafetensorsFile::open(kFix + "bert_adalora_ref.safetensors");
  for (bool pruned : {false, true}) {
    const std::string name = pruned ? "adalora_bert_pruned" : "adalora_bert";
    models::LoadOptions lo;
    lo.num_labels = 3;
    lo.seed = 5;
    auto model = models::load_model(kRoot + "tests/fixtures/models/tiny_bert", lo);
    AdapterConfig c;
    c.peft_type = "ADALORA";
    c.task_type = "SEQ_CLS";
    c.base_model_name_or_path = "tests/fixtures/models/tiny_bert";
    c.target_modules = {"query", "value", "intermediate.dense"};
    c.init_r = 4, c.target_r = 2, c.total_step = 100, c.tinit = 10, c.tfinal = 20, c.deltaT = 5;
    c.lora_alpha = 8;
    c.init_lora_weights = peft::LoraInit::Random;  // E nonzero: the adapter changes the output
    PeftModel pm(*model, c, 99);
    if (pruned) {
      std::vector<std::pair<std::string, std::vector<bool>>> rp;
      int i = 0;
      for (auto& [path, l] : pm.adalora_layers()) {
        std::vector<bool> m(4, false);
        m[static_cast<size_t>(i % 4)] = true;  // 1..3 kept, different rows per module
        if (i % 3 != 0) m[static_cast<size_t>((i + 2) % 4)] = true;
        if (i % 5 == 4) m[static_cast<size_t>((i + 1) % 4)] = true;
        for (size_t k = 0; k < 4; ++k)
          if (!m[k]) l->E.value.f32()[k] = 0.0f;
        rp.emplace_back(path + ".lora_E", m);
        ++i;
      }
      pm.set_adalora_rank_pattern(rp);
    }
    const std::string folder = dir + "/" + name;
    pm.save_pretrained(folder);
    BertRun run = run_bert(*model, ref.get("input_ids").clone(), ref.get("attention_mask").clone(),
                           ref.get("token_type_ids").clone(), nullptr);
    std::vector<std::pair<std::string, Tensor>> t = {{"logits", run.logits}};
    for (const char* k : {"input_ids", "attention_mask", "token_type_ids"})
      t.emplace_back(k, ref.get(k).clone());
    io::write_safetensors(
        dir + "/" + name + "_ours.safetensors", t,
        {{"base", "tests/fixtures/models/tiny_bert"}, {"count", pm.count_parameters().str()}});
    // Our own reload of the folder (pruned ranks, ranknum init_r) gives the same logits.
    auto fresh = models::load_model(kRoot + "tests/fixtures/models/tiny_bert", lo);
    auto back = PeftModel::from_pretrained(*fresh, folder);
    if (pruned) {
      for (auto& [path, l] : back->adalora_layers()) {
        EXPECT_LT(l->rank(), 4) << path;
      }
    }
    BertRun again =
        run_bert(*fresh, ref.get("input_ids").clone(), ref.get("attention_mask").clone(),
                 ref.get("token_type_ids").clone(), nullptr);
    EXPECT_LT(max_abs_diff(again.logits, run.logits), 1e-6) << name;
  }
  if (!env_dir) fs::remove_all(tmp);
}

TEST(AdaLoraConfig, ErrorsNameTheField) {
  auto err = [](const std::string& json_text) {
    try {
      peft::config_from_json(io::json::parse(json_text), "x/adapter_config.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::string base = R"({"peft_type": "ADALORA", "target_modules": ["query"], )";
  EXPECT_NE(err(base + R"("total_step": null})").find("field 'total_step'"), std::string::npos);
  EXPECT_NE(err(base + R"("total_step": 10, "tinit": 10})").find("field 'tinit'"),
            std::string::npos);
  EXPECT_NE(
      err(base + R"("total_step": 10, "target_r": 20, "init_r": 4})").find("field 'target_r'"),
      std::string::npos);
  EXPECT_NE(
      err(base +
          R"("total_step": 10, "init_r": 2, "target_r": 1, "rank_pattern": {"a.lora_E": [true]}})")
          .find("rank_pattern.a.lora_E"),
      std::string::npos);
  EXPECT_NE(err(base + R"("total_step": 10, "rank_pattern": {"a.lora_E": [2]}})").find("booleans"),
            std::string::npos);
  EXPECT_EQ(err(base + R"("total_step": 10})"), "no error");
}

}  // namespace
