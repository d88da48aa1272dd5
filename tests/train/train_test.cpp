// train layer: AdamW vs its formula, schedules, metrics, data errors with file:line, gradient
// accumulation, exact resume, and an end-to-end `lorafit train` run on the tiny BERT fixture.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <algorithm>
#include <fstream>
#include <iterator>

#include "lorafit/io.h"
#include "lorafit/kernels.h"
#include "lorafit/models.h"
#include "lorafit/train.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace lorafit;
using namespace lorafit::train;

namespace {

using test_util::nan_max;

fs::path temp_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("lorafit_train_" + name + "_" + std::to_string(getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

void write(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

template <class F>
void expect_error(F f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    for (auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << " lacks " << p;
  }
}

const std::vector<std::string> kWords = {"good", "bad", "great", "awful", "movie", "film", "plot",
                                         "fine", "dull", "fun", "the", "a", "is", "was", "very", "not"};

// A sentiment-like TSV: label 1 when the sentence has a positive word.
std::string synthetic_tsv(int n, uint64_t seed) {
  std::string s = "label\tsentence\n";
  for (int i = 0; i < n; ++i) {
    uint64_t r = nn::random_u64(seed, static_cast<uint64_t>(i));
    const int len = 2 + static_cast<int>(r % 7);
    const bool pos = (r >> 8) & 1;
    std::string t = pos ? (r >> 9 & 1 ? "good" : "great") : (r >> 9 & 1 ? "bad" : "awful");
    for (int k = 0; k < len; ++k) t += " " + kWords[6 + (r >> (12 + 3 * k)) % 10];
    s += std::string(pos ? "1" : "0") + "\t" + t + "\n";
  }
  return s;
}

// A copy of the tiny BERT fixture with tests/fixtures/tokens/tiny_bert_wordpiece: a WordPiece
// tokenizer over kWords whose ids fit the tiny BERT's 99-row vocabulary (also used by tests/mpi
// and tests/scripts).
fs::path tiny_model_dir() {
  static fs::path d = [] {
    fs::path dir = temp_dir("tiny_bert");
    for (auto f : {"config.json", "model.safetensors"})
      fs::copy_file(fs::path(LORAFIT_FIXTURES) / "models/tiny_bert" / f, dir / f);
    fs::copy_file(fs::path(LORAFIT_FIXTURES) / "tokens/tiny_bert_wordpiece/tokenizer.json",
                  dir / "tokenizer.json");
    return dir;
  }();
  return d;
}

}  // namespace

// ---- AdamW ------------------------------------------------------------------------------------

TEST(AdamW, TwoStepsMatchTheFormula) {
  nn::Parameter p;
  p.value = Tensor::from_vector({4}, {1.0f, -2.0f, 0.5f, 0.0f});
  p.set_trainable(true);
  const float lr = 0.01f, wd = 0.1f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
  AdamW opt({{"w", &p, 1.0f, wd}}, {b1, b2, eps});
  std::vector<double> x = {1.0, -2.0, 0.5, 0.0}, m(4, 0), v(4, 0);
  const std::vector<std::vector<float>> grads = {{0.1f, -0.3f, 2.0f, 0.0f}, {-0.2f, 0.05f, 1.0f, 3.0f}};
  for (int t = 1; t <= 2; ++t) {
    for (int i = 0; i < 4; ++i) p.grad.f32()[i] = grads[t - 1][i];
    opt.step(lr);
    for (int i = 0; i < 4; ++i) {
      const double g = grads[t - 1][i];
      x[i] *= 1.0 - lr * wd;
      m[i] = b1 * m[i] + (1 - b1) * g;
      v[i] = b2 * v[i] + (1 - b2) * g * g;
      const double mh = m[i] / (1 - std::pow(b1, t)), vh = v[i] / (1 - std::pow(b2, t));
      x[i] -= lr * mh / (std::sqrt(vh) + eps);
      EXPECT_NEAR(p.value.f32()[i], x[i], 1e-6) << "step " << t << " element " << i;
    }
  }
  // Step 1 by hand for element 0: 1 * (1 - 0.001) - 0.01 * sign(0.1) = 0.989.
  EXPECT_EQ(opt.steps(), 2);
  // A LoRA+ multiplier scales that group's lr.
  nn::Parameter q;
  q.value = Tensor::from_vector({1}, {1.0f});
  q.set_trainable(true);
  AdamW o2({{"lora_B", &q, 16.0f, 0.0f}});
  q.grad.f32()[0] = 0.5f;
  o2.step(0.001f);
  EXPECT_NEAR(q.value.f32()[0], 1.0 - 0.016, 1e-6);
}

TEST(AdamW, StateRoundTripsThroughNamedTensors) {
  nn::Parameter p;
  p.value = Tensor::from_vector({3}, {1, 2, 3});
  p.set_trainable(true);
  AdamW a({{"w", &p, 1.0f, 0.0f}});
  p.grad.fill(0.5f);
  a.step(0.1f);
  std::map<std::string, Tensor> st;
  for (auto& [n, t] : a.state()) st[n] = t.clone();
  nn::Parameter p2;
  p2.value = p.value.clone();
  p2.set_trainable(true);
  AdamW b({{"w", &p2, 1.0f, 0.0f}});
  b.load_state(st, "test");
  EXPECT_EQ(b.steps(), 1);
  p.grad.fill(-0.25f);
  p2.grad.fill(-0.25f);
  a.step(0.1f);
  b.step(0.1f);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(p.value.f32()[i], p2.value.f32()[i]);
  st.erase("w.exp_avg");
  expect_error([&] { b.load_state(st, "opt.safetensors"); }, {"opt.safetensors", "w.exp_avg"});
}

TEST(Clip, ScalesToMaxNorm) {
  nn::Parameter p;
  p.value = Tensor::zeros({2});
  p.set_trainable(true);
  p.grad.f32()[0] = 3;
  p.grad.f32()[1] = 4;
  std::vector<ParamGroup> g = {{"p", &p, 1, 0}};
  EXPECT_DOUBLE_EQ(clip_grad_norm(g, 1.0), 5.0);
  EXPECT_NEAR(p.grad.f32()[0], 0.6, 1e-6);
  EXPECT_NEAR(p.grad.f32()[1], 0.8, 1e-6);
  EXPECT_NEAR(clip_grad_norm(g, 10.0), 1.0, 1e-6);  // below max: unchanged
  EXPECT_NEAR(p.grad.f32()[1], 0.8, 1e-6);
}

// ---- schedules --------------------------------------------------------------------------------

TEST(Schedule, WarmupThenDecayAsTransformers) {
  using K = ScheduleKind;
  EXPECT_FLOAT_EQ(lr_multiplier(K::Linear, 0, 10, 110), 0.0f);
  EXPECT_FLOAT_EQ(lr_multiplier(K::Linear, 5, 10, 110), 0.5f);
  EXPECT_FLOAT_EQ(lr_multiplier(K::Linear, 10, 10, 110), 1.0f);
  EXPECT_FLOAT_EQ(lr_multiplier(K::Linear, 60, 10, 110), 0.5f);
  EXPECT_FLOAT_EQ(lr_multiplier(K::Linear, 110, 10, 110), 0.0f);
  EXPECT_FLOAT_EQ(lr_multiplier(K::Cosine, 60, 10, 110), 0.5f);
  EXPECT_NEAR(lr_multiplier(K::Cosine, 35, 10, 110), 0.5 * (1 + std::cos(M_PI * 0.25)), 1e-6);
  EXPECT_FLOAT_EQ(lr_multiplier(K::Constant, 3, 4, 100), 0.75f);
  EXPECT_FLOAT_EQ(lr_multiplier(K::Constant, 99, 4, 100), 1.0f);
  EXPECT_FLOAT_EQ(lr_multiplier(K::Linear, 0, 0, 10), 1.0f);  // no warmup
  EXPECT_EQ(parse_schedule("cosine"), K::Cosine);
  expect_error([] { parse_schedule("step"); }, {"'step'", "constant, linear or cosine"});
}

// ---- metrics ----------------------------------------------------------------------------------

TEST(Metrics, BinaryByHand) {
  // TP 3, FN 1, FP 1, TN 3.
  auto m = classification_metrics({1, 0, 1, 0, 1, 0, 1, 0}, {1, 1, 1, 0, 0, 0, 1, 0}, 2);
  EXPECT_DOUBLE_EQ(m.accuracy, 0.75);
  EXPECT_DOUBLE_EQ(m.f1, 0.75);                // 2·3 / (2·3 + 1 + 1)
  EXPECT_NEAR(m.mcc, 0.5, 1e-12);              // (3·3 − 1·1) / √(4·4·4·4)
  auto all_one = classification_metrics({1, 1, 1}, {1, 0, 1}, 2);
  EXPECT_DOUBLE_EQ(all_one.mcc, 0.0);          // a constant prediction: MCC 0 by convention
  EXPECT_NEAR(all_one.f1, 0.8, 1e-12);         // 2·2 / (2·2 + 1)
}

TEST(Metrics, MulticlassByHand) {
  auto m = classification_metrics({0, 2, 1, 0, 0, 2}, {0, 1, 2, 0, 1, 2}, 3);
  EXPECT_DOUBLE_EQ(m.accuracy, 0.5);
  EXPECT_NEAR(m.f1, (0.8 + 0.0 + 0.5) / 3, 1e-12);     // macro F1
  EXPECT_NEAR(m.mcc, 6.0 / std::sqrt(22.0 * 24.0), 1e-12);  // Gorodkin: (3·6 − 12) / √(22·24)
}

// ---- data -------------------------------------------------------------------------------------

TEST(Data, DetectsColumnsAndMapsLabels) {
  auto d = temp_dir("cols");
  write(d / "a.tsv", "label\tsentence\n1\tgood film\n0\tbad plot\n");
  write(d / "b.tsv", "label\tcontent\n0\tdull\n");
  auto a = read_classification((d / "a.tsv").string(), {});
  ASSERT_EQ(a.examples.size(), 2u);
  EXPECT_EQ(a.examples[0].text, "good film");
  EXPECT_EQ(a.examples[0].label, 1);
  EXPECT_EQ(a.examples[1].line, 3);
  auto b = read_classification((d / "b.tsv").string(), {}, a.label_names);
  EXPECT_EQ(b.examples[0].text, "dull");
  write(d / "c.jsonl", "{\"text\": \"x\", \"label\": \"pos\"}\n{\"text\": \"y\", \"label\": \"neg\"}\n");
  auto c = read_classification((d / "c.jsonl").string(), {});
  ASSERT_EQ(c.label_names, (std::vector<std::string>{"neg", "pos"}));
  EXPECT_EQ(c.examples[0].label, 1);
  write(d / "p.csv", "question1,question2,label\n\"a, b\",\"say \"\"hi\"\"\",1\n");
  auto p = read_classification((d / "p.csv").string(), {});
  EXPECT_EQ(p.examples[0].text, "a, b");
  EXPECT_EQ(p.examples[0].text_pair, "say \"hi\"");
  fs::remove_all(d);
}

TEST(Data, ErrorsNameFileAndLine) {
  auto d = temp_dir("errors");
  const std::string f = (d / "x.tsv").string();
  write(f, "label\ttext_a\n1\thello\n");
  expect_error([&] { read_classification(f, {}); }, {f + ":1", "no text column", "text_a"});
  write(f, "sentence\n hello\n");
  expect_error([&] { read_classification(f, {}); }, {f + ":1", "no label column"});
  write(f, "label\tsentence\n1\tgood\n1\tbad\textra\n");
  expect_error([&] { read_classification(f, {}); }, {f + ":3", "expected 2 fields, got 3"});
  write(f, "label\tsentence\n1\tgood\n7\tbad\n");
  expect_error([&] { read_classification(f, {}, {"0", "1"}); }, {f + ":3", "unknown label '7'"});
  write(f, "label\tsentence\n1\tgo\xC3\x28od\n");
  expect_error([&] { read_classification(f, {}); }, {f + ":2", "invalid UTF-8"});
  write(f, "");
  expect_error([&] { read_classification(f, {}); }, {f, "no examples"});
  write(f, "label\tsentence\n1\t" + std::string(200, 'a') + "\n");
  ColumnOptions small;
  small.max_line_bytes = 100;
  expect_error([&] { read_classification(f, small); }, {f + ":2", "longer than 100"});
  const std::string j = (d / "x.jsonl").string();
  write(j, "{\"text\": \"a\", \"label\": 0}\n{\"label\": 1}\n");
  expect_error([&] { read_classification(j, {}); }, {j + ":2", "'text' is missing"});
  write(j, "{\"text\": \"a\", \"label\": 0}\nnot json\n");
  expect_error([&] { read_classification(j, {}); }, {j + ":2", "not valid JSON"});
  fs::remove_all(d);
}

TEST(Data, BatchesAreBucketedPaddedAndSeeded) {
  std::vector<Sample> s;
  for (int i = 0; i < 100; ++i) s.push_back({std::vector<int32_t>(1 + i % 17, 5), {}, {}, i % 2});
  auto e0 = epoch_batches(s, 8, 1, 0, true);
  EXPECT_EQ(e0, epoch_batches(s, 8, 1, 0, true));
  EXPECT_NE(e0, epoch_batches(s, 8, 1, 1, true));
  size_t seen = 0;
  for (auto& b : e0) seen += b.size();
  EXPECT_EQ(seen, 100u);
  // Bucketing: padding is far below that of random batches (max length 17 each).
  int64_t padded = 0, real = 0;
  for (auto& idx : e0) {
    Batch b = make_batch(s, idx, 0, false);
    padded += b.ids.numel();
    real += b.tokens;
    ASSERT_EQ(b.mask.i32()[0], 1);
  }
  EXPECT_LT(static_cast<double>(padded), 1.3 * static_cast<double>(real));
}

// ---- gradient accumulation --------------------------------------------------------------------

TEST(Accumulation, MicroBatchesEqualOneBigBatch) {
  auto dir = tiny_model_dir();
  auto tok = text::Tokenizer::from_file(dir.string());
  auto tsv = temp_dir("accum") / "d.tsv";
  write(tsv, synthetic_tsv(8, 3));
  auto samples = tokenize_classification(read_classification(tsv.string(), {}), tok, 32);
  auto model = models::load_model(dir.string());
  model->set_trainable(true);
  Task task{model.get(), false};
  nn::Context ctx;  // eval mode: dropout off, so both runs see the same function
  auto grads = [&] {
    nn::NamedParameters ps = model->named_parameters();
    std::vector<std::vector<float>> g;
    for (auto& [n, p] : ps) g.emplace_back(p->grad.f32(), p->grad.f32() + p->grad.numel());
    return g;
  };
  model->zero_grad();
  task.forward_backward(ctx, make_batch(samples, {0, 1, 2, 3, 4, 5, 6, 7}, 0, false), 1.0f);
  auto big = grads();
  model->zero_grad();
  for (std::vector<size_t> idx : {std::vector<size_t>{0, 1, 2, 3}, std::vector<size_t>{4, 5, 6, 7}})
    task.forward_backward(ctx, make_batch(samples, idx, 0, false), 0.5f);
  auto acc = grads();
  ASSERT_EQ(big.size(), acc.size());
  double max_abs = 0;
  for (size_t i = 0; i < big.size(); ++i)
    for (size_t j = 0; j < big[i].size(); ++j) {
      EXPECT_NEAR(acc[i][j], big[i][j], 1e-5 + 1e-4 * std::fabs(big[i][j])) << "param " << i << " elem " << j;
      max_abs = std::max(max_abs, static_cast<double>(std::fabs(big[i][j])));
    }
  EXPECT_GT(max_abs, 1e-4);  // the gradients are not trivially zero
}

// ---- evaluation order ---------------------------------------------------------------------------

// evaluate() batches examples of similar length together; the probabilities come back in file
// order, equal to evaluating each example alone, and the metrics are those of file order.
TEST(Evaluate, LengthSortedBatchesKeepFileOrder) {
  auto dir = tiny_model_dir();
  auto tok = text::Tokenizer::from_file(dir.string());
  auto tsv = temp_dir("eval_order") / "d.tsv";
  write(tsv, synthetic_tsv(23, 11));
  auto samples = tokenize_classification(read_classification(tsv.string(), {}), tok, 32);
  size_t lmin = 1000, lmax = 0;
  for (auto& s : samples) lmin = std::min(lmin, s.ids.size()), lmax = std::max(lmax, s.ids.size());
  ASSERT_LT(lmin, lmax);  // lengths differ, so sorting reorders
  auto model = models::load_model(dir.string());
  Task task{model.get(), false};
  std::vector<std::vector<float>> batched, alone;
  EvalResult rb = evaluate(task, samples, 5, 0, 0, &batched);
  EvalResult ra = evaluate(task, samples, 1, 0, 0, &alone);
  ASSERT_EQ(batched.size(), samples.size());
  ASSERT_EQ(alone.size(), samples.size());
  for (size_t i = 0; i < samples.size(); ++i)
    for (size_t j = 0; j < alone[i].size(); ++j)
      EXPECT_NEAR(batched[i][j], alone[i][j], 1e-5) << "example " << i;
  EXPECT_EQ(rb.cls.n, ra.cls.n);
  EXPECT_DOUBLE_EQ(rb.cls.accuracy, ra.cls.accuracy);
  EXPECT_NEAR(rb.loss, ra.loss, 1e-5);
  // tokens: the real tokens of every example (no padding); seconds: the forward's wall time.
  int64_t real = 0;
  for (auto& s : samples) real += static_cast<int64_t>(s.ids.size());
  EXPECT_EQ(rb.tokens, real);
  EXPECT_EQ(ra.tokens, real);
  EXPECT_GT(rb.seconds, 0.0);
  EXPECT_GT(ra.seconds, 0.0);
  // --eval-max-batches takes the first examples in file order: 2 batches of 5 = examples 0..9.
  std::vector<std::vector<float>> first;
  evaluate(task, samples, 5, 0, 2, &first);
  ASSERT_EQ(first.size(), 10u);
  for (size_t i = 0; i < first.size(); ++i)
    for (size_t j = 0; j < alone[i].size(); ++j) EXPECT_NEAR(first[i][j], alone[i][j], 1e-5) << i;
}

// ---- resume -----------------------------------------------------------------------------------

TEST(Resume, StoppedAndResumedEqualsUninterrupted) {
  auto dir = tiny_model_dir();
  auto tok = text::Tokenizer::from_file(dir.string());
  auto work = temp_dir("resume");
  write(work / "d.tsv", synthetic_tsv(48, 5));
  auto samples = tokenize_classification(read_classification((work / "d.tsv").string(), {}), tok, 32);
  auto [tr, va] = split_samples(samples, 0.25, 1);
  TrainOptions o;
  o.max_steps = 7;  // crosses an epoch boundary (36 examples / batch 8 = 5 batches)
  o.batch_size = 8;
  o.grad_accum = 1;
  o.lr = 1e-2f;
  o.weight_decay = 0.01f;
  o.eval_every = 3;
  o.quiet = true;
  o.seed = 11;
  auto train_once = [&](const std::string& out, int64_t stop_after, const std::string& resume) {
    auto model = models::load_model(dir.string());
    model->set_trainable(true);  // every weight (the tiny model is F32); dropout stays on
    Task t{model.get(), false};
    auto ps = model->named_parameters();
    TrainOptions oo = o;
    oo.output_dir = out;
    oo.stop_after = stop_after;
    auto s = run_training(t, ps, tr, va, 0, oo, resume);
    std::vector<std::vector<float>> vals;
    for (auto& [n, p] : ps) vals.emplace_back(p->value.f32(), p->value.f32() + p->value.numel());
    return std::make_pair(s, vals);
  };
  auto [full, full_vals] = train_once((work / "a").string(), 0, "");
  EXPECT_FALSE(full.interrupted);
  EXPECT_EQ(full.steps, 7);
  auto [part, part_vals] = train_once((work / "b").string(), 4, "");
  EXPECT_TRUE(part.interrupted);
  EXPECT_EQ(part.steps, 4);
  ASSERT_TRUE(fs::exists(work / "b/checkpoint/optimizer.safetensors"));
  auto [rest, rest_vals] = train_once((work / "b").string(), 0, (work / "b/checkpoint").string());
  EXPECT_EQ(rest.steps, 7);
  ASSERT_EQ(full_vals.size(), rest_vals.size());
  bool changed = false;
  for (size_t i = 0; i < full_vals.size(); ++i) {
    ASSERT_EQ(full_vals[i], rest_vals[i]) << "parameter " << i << " differs after resume";
    changed = changed || full_vals[i] != part_vals[i];
  }
  EXPECT_TRUE(changed);  // steps 5..7 did something
  auto st = io::read_json_file((work / "b/checkpoint/trainer_state.json").string());
  EXPECT_EQ(st["step"], 7);
  EXPECT_TRUE(fs::exists(work / "b/best/trainable.safetensors"));
  EXPECT_TRUE(fs::exists(work / "b/report.html"));
  // The appended log reads as one run: steps 1..7 once each, the final summary (not the
  // interrupted part's), and the same evaluations as the uninterrupted run.
  RunLog rb = read_run_dir((work / "b").string()), ra = read_run_dir((work / "a").string());
  ASSERT_EQ(rb.steps.size(), 7u);
  for (size_t i = 0; i < rb.steps.size(); ++i)
    EXPECT_EQ(rb.steps[i].step, static_cast<int64_t>(i + 1));
  EXPECT_TRUE(rb.summary.present);
  EXPECT_FALSE(rb.summary.interrupted);
  ASSERT_EQ(rb.evals.size(), ra.evals.size());
  for (size_t i = 0; i < ra.evals.size(); ++i)
    EXPECT_EQ(rb.evals[i].metrics, ra.evals[i].metrics) << i;
  fs::remove_all(work);
}

// The in-step hooks (AdaLoRA's): after_backward once per optimizer step with the gradients of all
// micro-batches in place, its loss added to the logged loss; after_step with the 1-based step,
// after the update and before zero_grad (the gradients are still there).
TEST(Hooks, RunInPeftOrderWithOneBasedSteps) {
  auto dir = tiny_model_dir();
  auto tok = text::Tokenizer::from_file(dir.string());
  auto work = temp_dir("hooks");
  write(work / "d.tsv", synthetic_tsv(40, 8));
  auto samples = tokenize_classification(read_classification((work / "d.tsv").string(), {}), tok, 32);
  auto model = models::load_model(dir.string());
  model->set_trainable(false);
  nn::NamedParameters ps;
  for (auto& [n, p] : model->named_parameters())
    if (n.rfind("classifier", 0) == 0) p->set_trainable(true), ps.emplace_back(n, p);
  ASSERT_FALSE(ps.empty());
  TrainOptions o;
  o.max_steps = 4;
  o.batch_size = 8;
  o.grad_accum = 2;
  o.warmup_steps = 0;  // the first update moves the weights
  o.quiet = true;
  o.output_dir = (work / "out").string();
  EXPECT_EQ(total_optimizer_steps(samples.size(), o), 4);
  std::vector<std::string> events;
  std::vector<float> before_step;
  o.after_backward = [&]() {
    events.push_back("backward");
    before_step.assign(ps[0].second->value.f32(), ps[0].second->value.f32() + ps[0].second->value.numel());
    double g = 0;
    for (auto& [n, p] : ps)
      for (int64_t i = 0; i < p->grad.numel(); ++i) g += std::fabs(p->grad.f32()[i]);
    EXPECT_GT(g, 0.0);  // the micro-batches' gradients are in place
    return 100.0;
  };
  o.after_step = [&](int64_t step) {
    events.push_back("step " + std::to_string(step));
    double g = 0;
    for (auto& [n, p] : ps)
      for (int64_t i = 0; i < p->grad.numel(); ++i) g += std::fabs(p->grad.f32()[i]);
    EXPECT_GT(g, 0.0);  // not zeroed yet
    bool moved = false;  // the optimizer already updated the weights
    for (int64_t i = 0; i < ps[0].second->value.numel(); ++i)
      moved = moved || ps[0].second->value.f32()[i] != before_step[static_cast<size_t>(i)];
    EXPECT_TRUE(moved) << "step " << step;
  };
  Task t{model.get(), false};
  run_training(t, ps, samples, {}, 0, o);
  EXPECT_EQ(events, (std::vector<std::string>{"backward", "step 1", "backward", "step 2", "backward",
                                              "step 3", "backward", "step 4"}));
  // The logged training loss includes the hook's term.
  std::string log = io::read_file((work / "out/log.jsonl").string());
  int step_lines = 0;
  for (size_t pos = 0, end; (end = log.find('\n', pos)) != std::string::npos; pos = end + 1) {
    auto j = io::json::parse(log.substr(pos, end - pos));
    if (j.value("type", "") != "step") continue;
    ++step_lines;
    EXPECT_GT(j["loss"].get<double>(), 100.0) << j.dump();
  }
  EXPECT_EQ(step_lines, 4);
  fs::remove_all(work);
}

// ---- end to end through the CLI ---------------------------------------------------------------

namespace {
int run(const std::string& cmd) {
  int rc = std::system((cmd + " > /dev/null 2>&1").c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}
// Exit status and stderr of a command.
std::pair<int, std::string> run_err(const std::string& cmd) {
  std::string err;
  FILE* p = popen((cmd + " 2>&1 >/dev/null").c_str(), "r");
  if (!p) return {-1, ""};
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) err.append(buf, n);
  int rc = pclose(p);
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, err};
}
}  // namespace

TEST(Cli, TrainWritesAdapterLogAndReport) {
  auto dir = tiny_model_dir();
  auto work = temp_dir("cli");
  write(work / "train.tsv", synthetic_tsv(64, 9));
  const std::string bin = LORAFIT_BINARY;
  const std::string base = bin + " train --model " + dir.string() + " --train " + (work / "train.tsv").string() +
                           " --max-steps 4 --batch-size 8 --threads 1 --output " + (work / "out").string();
  ASSERT_EQ(run(base), 0);
  for (auto f : {"final/trainable.safetensors", "final/adapter_config.json", "final/adapter_model.safetensors",
                 "checkpoint/optimizer.safetensors", "checkpoint/trainer_state.json", "best/trainable.safetensors",
                 "log.jsonl", "report.html"})
    EXPECT_TRUE(fs::exists(work / "out" / f)) << f;
  std::string report = io::read_file((work / "out/report.html").string());
  EXPECT_NE(report.find("<svg"), std::string::npos);
  EXPECT_NE(report.find("trainable parameters"), std::string::npos);
  // The log as the report reads it: memory on every step line, and the closing summary record.
  RunLog rl = read_run_dir((work / "out").string());
  ASSERT_EQ(rl.steps.size(), 4u);
  for (auto& s : rl.steps) {
    EXPECT_GT(s.rss_bytes, 0) << s.step;
    EXPECT_GE(s.peak_rss_bytes, s.rss_bytes) << s.step;
  }
  ASSERT_TRUE(rl.summary.present);
  EXPECT_FALSE(rl.summary.interrupted);
  EXPECT_EQ(rl.summary.steps, 4);
  EXPECT_GT(rl.summary.trainable_params, 0);
  EXPECT_EQ(rl.summary.best_step, 4);
  EXPECT_EQ(rl.summary.config_value("method"), "lora");
  EXPECT_EQ(rl.summary.config_value("max_steps"), "4");
  // lorafit report renders the run folder again.
  EXPECT_EQ(run(bin + " report " + (work / "out").string() + " --output " +
                (work / "again.html").string()),
            0);
  EXPECT_NE(io::read_file((work / "again.html").string()).find("<tr><td>accuracy</td>"),
            std::string::npos);
  // Never overwrite without --overwrite; a bad flag explains itself (exit 1, not a crash).
  EXPECT_EQ(run(base), 1);
  EXPECT_EQ(run(base + " --overwrite --method full"), 0);
  EXPECT_EQ(run(base + " --overwrite --lr-rate 3"), 1);
  EXPECT_EQ(run(base + " --overwrite --method full --lora-r 4"), 1);
  // eval and predict on the trained weights.
  const std::string ev = " --model " + dir.string() + " --adapter " + (work / "out/final").string() +
                         " --data " + (work / "train.tsv").string();
  // Both say how fast the forward ran, on stderr: "forward only: N tokens in S s, R tokens/s".
  auto forward_line_ok = [](const std::string& err) {
    const size_t at = err.find("forward only: ");
    if (at == std::string::npos) return false;
    long long n = 0;
    double s = -1, r = -1;
    return std::sscanf(err.c_str() + at, "forward only: %lld tokens in %lf s, %lf tokens/s", &n, &s,
                       &r) == 3 &&
           n > 0 && s > 0 && r > 0;
  };
  auto [erc, eerr] = run_err(bin + " eval" + ev);
  EXPECT_EQ(erc, 0) << eerr;
  EXPECT_TRUE(forward_line_ok(eerr)) << eerr;
  auto [prc, perr] = run_err(bin + " predict" + ev + " --output " + (work / "p.tsv").string());
  EXPECT_EQ(prc, 0) << perr;
  EXPECT_TRUE(forward_line_ok(perr)) << perr;
  std::string preds = io::read_file((work / "p.tsv").string());
  EXPECT_EQ(std::count(preds.begin(), preds.end(), '\n'), 65);  // header + 64 rows
  EXPECT_EQ(run(bin + " train --help"), 0);
  // --init-lora-weights goes through peft's own init_lora_weights parsing, as PEFT writes it.
  ASSERT_EQ(run(base + " --overwrite --init-lora-weights gaussian"), 0);
  EXPECT_EQ(
      io::read_json_file((work / "out/final/adapter_config.json").string())["init_lora_weights"],
      "gaussian");
  auto [rc, err] = run_err(base + " --overwrite --init-lora-weights bogus");
  EXPECT_EQ(rc, 1);
  EXPECT_NE(err.find("--init-lora-weights: field 'init_lora_weights': \"bogus\" is not a PEFT init "
                     "(expected true, false, \"gaussian\", \"pissa\", \"pissa_niter_K\", \"olora\""),
            std::string::npos)
      << err;
  fs::remove_all(work);
}

// The same run from flags, a YAML config and a JSON config: identical weights; flags override
// the file; a broken YAML file is refused with its line.
TEST(Cli, YamlAndJsonConfigsEqualFlags) {
  auto dir = tiny_model_dir();
  auto work = temp_dir("cli_config");
  write(work / "train.tsv", synthetic_tsv(32, 6));
  const std::string bin = LORAFIT_BINARY;
  const std::string common = bin + " train --model " + dir.string() + " --train " +
                             (work / "train.tsv").string() + " --threads 1";
  ASSERT_EQ(
      run(common + " --output " + (work / "flags").string() +
          " --max-steps 3 --batch-size 8 --lr 1e-2 --lora-r 4 --target-modules query,key,value"),
      0);
  write(work / "c.yaml",
        "# same options as the flags\nmax_steps: 3\nbatch-size: 8\nlr: 1e-2\nlora_r: 4\n"
        "target_modules:\n  - query\n  - key\n  - value\nseed: 99  # overridden below\n");
  ASSERT_EQ(run(common + " --output " + (work / "yaml").string() + " --config " +
                (work / "c.yaml").string() + " --seed 42"),
            0);
  write(work / "c.json",
        "{\"max_steps\": 3, \"batch_size\": 8, \"lr\": 1e-2, \"lora_r\": 4, "
        "\"target_modules\": [\"query\", \"key\", \"value\"]}");
  ASSERT_EQ(run(common + " --output " + (work / "json").string() + " --config " +
                (work / "c.json").string()),
            0);
  // Nested keys join with '-': lora: {r: 4} is --lora-r 4 (YAML and JSON alike).
  write(work / "n.yaml",
        "max_steps: 3\nbatch_size: 8\nlr: 1e-2\nlora:\n  r: 4\ntarget:\n  modules: [query, key, "
        "value]\n");
  ASSERT_EQ(run(common + " --output " + (work / "nyaml").string() + " --config " +
                (work / "n.yaml").string()),
            0);
  write(work / "n.json",
        "{\"max_steps\": 3, \"batch_size\": 8, \"lr\": 1e-2, \"lora\": {\"r\": 4}, "
        "\"target_modules\": [\"query\", \"key\", \"value\"]}");
  ASSERT_EQ(run(common + " --output " + (work / "njson").string() + " --config " +
                (work / "n.json").string()),
            0);
  auto ref = io::SafetensorsFile::open((work / "flags/final/trainable.safetensors").string());
  for (const char* other : {"yaml", "json", "nyaml", "njson"}) {
    auto o = io::SafetensorsFile::open((work / other / "final/trainable.safetensors").string());
    ASSERT_EQ(o.names(), ref.names()) << other;
    for (auto& n : ref.names()) {
      tensor::Tensor a = o.get_f32(n), b = ref.get_f32(n);
      ASSERT_EQ(a.numel(), b.numel()) << other << " " << n;
      for (int64_t i = 0; i < a.numel(); ++i)
        ASSERT_EQ(a.f32()[i], b.f32()[i]) << other << " " << n << " [" << i << "]";
    }
  }
  write(work / "bad.yaml", "max_steps: 3\nlora:\n  r: [4\n");
  auto [rc, err] = run_err(common + " --output " + (work / "bad").string() + " --config " +
                           (work / "bad.yaml").string());
  EXPECT_EQ(rc, 1);
  EXPECT_NE(err.find("[yaml] " + (work / "bad.yaml").string() + ": line 4"), std::string::npos)
      << err;
  EXPECT_FALSE(fs::exists(work / "bad"));
  // A key no option has is refused with the file and a suggestion.
  write(work / "typo.yaml", "max_steps: 3\nlora:\n  rank: 4\n");
  auto [rc2, err2] = run_err(common + " --output " + (work / "bad").string() + " --config " +
                             (work / "typo.yaml").string());
  EXPECT_EQ(rc2, 1);
  EXPECT_NE(err2.find("typo.yaml: key 'lora-rank' (did you mean --lora-r"), std::string::npos)
      << err2;
  EXPECT_FALSE(fs::exists(work / "bad"));
  fs::remove_all(work);
}

TEST(Cli, LoraResumeThroughTheCliIsExact) {
  auto dir = tiny_model_dir();
  auto work = temp_dir("cli_resume");
  write(work / "train.tsv", synthetic_tsv(48, 4));
  const std::string base = std::string(LORAFIT_BINARY) + " train --model " + dir.string() + " --train " +
                           (work / "train.tsv").string() + " --max-steps 5 --batch-size 8 --threads 1 --lr 1e-2";
  ASSERT_EQ(run(base + " --output " + (work / "a").string()), 0);
  EXPECT_EQ(run(base + " --output " + (work / "b").string() + " --stop-after 2"), 130);  // as after Ctrl-C
  ASSERT_TRUE(fs::exists(work / "b/checkpoint/trainer_state.json"));
  EXPECT_FALSE(fs::exists(work / "b/final"));
  ASSERT_EQ(run(base + " --output " + (work / "b").string() + " --resume " + (work / "b/checkpoint").string()), 0);
  auto a = io::SafetensorsFile::open((work / "a/final/trainable.safetensors").string());
  auto b = io::SafetensorsFile::open((work / "b/final/trainable.safetensors").string());
  ASSERT_EQ(a.names(), b.names());
  bool has_lora = false;
  for (auto& n : a.names()) {
    has_lora = has_lora || n.find("lora_B") != std::string::npos;
    Tensor ta = a.get_f32(n), tb = b.get_f32(n);
    ASSERT_EQ(ta.numel(), tb.numel());
    for (int64_t i = 0; i < ta.numel(); ++i) ASSERT_EQ(ta.f32()[i], tb.f32()[i]) << n << " element " << i;
  }
  EXPECT_TRUE(has_lora);
  // Resuming with other options is refused rather than silently changing the run.
  EXPECT_EQ(run(std::string(LORAFIT_BINARY) + " train --model " + dir.string() + " --train " +
                (work / "train.tsv").string() + " --max-steps 9 --batch-size 8 --output " + (work / "b").string() +
                " --resume " + (work / "b/checkpoint").string()),
            1);
  fs::remove_all(work);
}

// ---- causal LM: plain text and instruction data ------------------------------------------------

namespace {

// The tiny Llama fixture with tests/fixtures/tokens/tiny_llama_bpe: a byte-level BPE over
// letters, digits, a few marks, space and newline, with ChatML special tokens (ids fit the tiny
// Llama's 100-row vocabulary); its tokenizer_config.json carries a ChatML chat template as Hugging
// Face folders do. The same files serve tests/mpi and fuzz/.
fs::path tiny_llama_dir() {
  static fs::path d = [] {
    fs::path dir = temp_dir("tiny_llama_lm");
    for (auto f : {"config.json", "model.safetensors"})
      fs::copy_file(fs::path(LORAFIT_FIXTURES) / "models/tiny_llama" / f, dir / f);
    for (auto f : {"tokenizer.json", "tokenizer_config.json"})
      fs::copy_file(fs::path(LORAFIT_FIXTURES) / "tokens/tiny_llama_bpe" / f, dir / f);
    return dir;
  }();
  return d;
}

// Runs a command and returns its stdout (stderr dropped) and exit code.
std::pair<int, std::string> run_out(const std::string& cmd) {
  std::string out;
  FILE* p = popen((cmd + " 2>/dev/null").c_str(), "r");
  if (!p) return {-1, ""};
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int rc = pclose(p);
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, out};
}

double value_after(const std::string& out, const std::string& key) {
  auto p = out.find(key + " ");
  if (p == std::string::npos) return std::nan("");
  return std::atof(out.c_str() + p + key.size() + 1);
}

}  // namespace

TEST(Instruction, LossOnlyOnRepliesAndTheirEndToken) {
  auto dir = tiny_llama_dir();
  auto work = temp_dir("instr");
  write(work / "d.jsonl",
        "{\"prompt\": \"add 2 and 3\", \"response\": \"5\"}\n"
        "\n"
        "{\"instruction\": \"Say hi\", \"input\": \"to Ann\", \"output\": \"Hi Ann!\", \"system\": \"Be kind.\"}\n"
        "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"b\"},"
        " {\"role\": \"user\", \"content\": \"c\"}, {\"role\": \"assistant\", \"content\": \"dd\"}]}\n");
  auto tok = text::Tokenizer::from_file(dir.string());
  auto tpl = text::ChatTemplate::for_tokenizer(tok);
  ASSERT_EQ(tpl.format(), text::ChatFormat::ChatML);
  train::InstructionStats st;
  auto s = train::read_instruction_data((work / "d.jsonl").string(), tok, tpl, 64, &st);
  ASSERT_EQ(s.size(), 3u);
  const std::vector<std::string> want = {"5<|im_end|>", "Hi Ann!<|im_end|>", "b<|im_end|>dd<|im_end|>"};
  const std::vector<std::string> whole = {
      "<|im_start|>user\nadd 2 and 3<|im_end|>\n<|im_start|>assistant\n5<|im_end|>\n",
      "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nSay hi\n\nto Ann<|im_end|>\n"
      "<|im_start|>assistant\nHi Ann!<|im_end|>\n",
      "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n<|im_start|>user\nc<|im_end|>\n"
      "<|im_start|>assistant\ndd<|im_end|>\n"};
  for (size_t i = 0; i < s.size(); ++i) {
    EXPECT_EQ(tok.decode(s[i].ids, false), whole[i]);
    ASSERT_EQ(s[i].targets.size(), s[i].ids.size());
    std::vector<int32_t> trained;
    for (size_t t = 0; t < s[i].targets.size(); ++t) {
      if (s[i].targets[t] == -100) continue;
      ASSERT_LT(t + 1, s[i].ids.size());
      EXPECT_EQ(s[i].targets[t], s[i].ids[t + 1]);  // next-token targets
      trained.push_back(s[i].targets[t]);
    }
    EXPECT_EQ(tok.decode(trained, false), want[i]) << i;
  }
  EXPECT_EQ(st.truncated, 0u);
  // Cut to 24 tokens: the first two replies start beyond (skipped and counted), the third example
  // keeps its first reply "b<|im_end|>" only.
  auto cut = train::read_instruction_data((work / "d.jsonl").string(), tok, tpl, 24, &st);
  EXPECT_EQ(st.truncated, 3u);
  EXPECT_EQ(st.skipped, 2u);
  ASSERT_EQ(cut.size(), 1u);
  EXPECT_EQ(cut[0].ids.size(), 24u);
  std::vector<int32_t> kept;
  for (auto t : cut[0].targets)
    if (t != -100) kept.push_back(t);
  EXPECT_EQ(tok.decode(kept, false), "b<|im_end|>");
  // Nothing left at all is an error that says what to change.
  expect_error([&] { train::read_instruction_data((work / "d.jsonl").string(), tok, tpl, 8); },
               {"d.jsonl", "no usable example", "--block-size"});
  fs::remove_all(work);
}

TEST(Instruction, BadLinesNameFileLineAndWhatWasExpected) {
  auto dir = tiny_llama_dir();
  auto work = temp_dir("instr_bad");
  auto tok = text::Tokenizer::from_file(dir.string());
  auto tpl = text::ChatTemplate::for_tokenizer(tok);
  auto bad = [&](const std::string& content, std::initializer_list<std::string> parts) {
    write(work / "b.jsonl", content);
    expect_error([&] { train::read_instruction_data((work / "b.jsonl").string(), tok, tpl, 64); }, parts);
  };
  bad("{\"prompt\": \"a\", \"response\": \"b\"}\n{\"question\": \"x\"}\n", {"b.jsonl:2", "'messages'", "'prompt'"});
  bad("{\"prompt\": \"a\"}\n", {"b.jsonl:1", "'response'"});
  bad("{\"messages\": [{\"role\": \"user\", \"content\": \"only a question\"}]}\n", {"b.jsonl:1", "no assistant"});
  bad("{\"messages\": [{\"role\": \"user\"}]}\n", {"b.jsonl:1", "messages[0]"});
  bad("{\"prompt\": \"a\", \"response\": 3}\n", {"b.jsonl:1", "'response' must be a string"});
  bad("{\"prompt\": \"a\xff\", \"response\": \"b\"}\n", {"b.jsonl:1", "invalid UTF-8"});
  bad("not json\n", {"b.jsonl:1", "not valid JSON"});
  bad("", {"b.jsonl", "no usable example", "empty"});
  bad("{\"prompt\": \"" + std::string(2 << 20, 'a') + "\", \"response\": \"b\"}\n", {"b.jsonl:1", "longer than"});
  fs::remove_all(work);
}

TEST(Cli, LmTrainingLowersHeldOutPerplexity) {
  auto dir = tiny_llama_dir();
  auto work = temp_dir("cli_lm");
  // Text with structure a model can learn quickly: a few short sentences in seeded order.
  const std::vector<std::string> lines = {"the cat sat on the mat.", "a dog ran to the park.",
                                          "the sun is warm today.", "we like to read books."};
  std::string txt;
  for (int i = 0; i < 160; ++i) txt += lines[nn::random_u64(3, static_cast<uint64_t>(i)) % lines.size()] + "\n";
  write(work / "all.txt", txt);
  write(work / "heldout.txt", txt.substr(txt.size() * 9 / 10));
  const std::string bin = LORAFIT_BINARY;
  auto before = run_out(bin + " eval --model " + dir.string() + " --data " + (work / "heldout.txt").string() +
                        " --block-size 32 --threads 1");
  ASSERT_EQ(before.first, 0) << before.second;
  const double ppl0 = value_after(before.second, "perplexity");
  auto tr = run_out(bin + " train --model " + dir.string() + " --train " + (work / "all.txt").string() +
                    " --output " + (work / "out").string() +
                    " --block-size 32 --batch-size 8 --max-steps 40 --lr 1e-2 --lora-dropout 0 --threads 1"
                    " --target-modules q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj");
  ASSERT_EQ(tr.first, 0) << tr.second;
  const double ppl_val = value_after(tr.second, "perplexity");  // on the last 10%, held out
  auto after = run_out(bin + " eval --model " + dir.string() + " --adapter " + (work / "out/final").string() +
                       " --data " + (work / "heldout.txt").string() + " --block-size 32 --threads 1");
  ASSERT_EQ(after.first, 0) << after.second;
  const double ppl1 = value_after(after.second, "perplexity");
  EXPECT_GT(ppl0, 50.0);  // a random 100-token model: about uniform
  EXPECT_LT(ppl1, 0.5 * ppl0) << "before " << ppl0 << " after " << ppl1;
  EXPECT_NEAR(ppl_val, ppl1, 0.25 * ppl1);  // the trainer's held-out evaluation says the same
  fs::remove_all(work);
}

// --compute-dtype bf16 (frozen products in BF16, fp32 sums; adapters and optimizer fp32): the
// same run as fp32 has near-identical losses step by step and held-out perplexity, but not the
// same bits (the BF16 path did run). Where the CPU or build has no BF16 it is refused by name.
std::vector<double> step_losses(const fs::path& log) {
  std::vector<double> v;
  std::ifstream f(log);
  for (std::string line; std::getline(f, line);) {
    io::json j = io::json::parse(line);
    if (j.value("type", "") == "step") v.push_back(j.at("loss").get<double>());
  }
  return v;
}

TEST(Cli, Bf16ComputeTrainsLikeFp32) {
  auto dir = tiny_llama_dir();
  auto work = temp_dir("cli_bf16");
  const std::vector<std::string> lines = {"the cat sat on the mat.", "a dog ran to the park.",
                                          "the sun is warm today.", "we like to read books."};
  std::string txt;
  for (int i = 0; i < 160; ++i) txt += lines[nn::random_u64(5, static_cast<uint64_t>(i)) % lines.size()] + "\n";
  write(work / "all.txt", txt);
  const std::string bin = LORAFIT_BINARY;
  auto train = [&](const std::string& dt) {
    return run_out(bin + " train --model " + dir.string() + " --train " + (work / "all.txt").string() +
                   " --output " + (work / dt).string() +
                   " --block-size 32 --batch-size 8 --max-steps 20 --lr 1e-2 --lora-dropout 0 --threads 1"
                   " --log-every 1 --target-modules all-linear --compute-dtype " + dt);
  };
  auto f = train("fp32");
  ASSERT_EQ(f.first, 0) << f.second;
  if (!kernels::bf16_gemm_supported()) {
    const std::string cmd = "{ { " + bin + " train --model " + dir.string() + " --train " + (work / "all.txt").string() +
                            " --output " + (work / "x").string() + " --compute-dtype bf16; } 2>&1; }";  // stderr too
    auto r = run_out(cmd);
    EXPECT_EQ(r.first, 1);
    EXPECT_NE(r.second.find("bf16 is not available"), std::string::npos) << r.second;
    fs::remove_all(work);
    return;
  }
  auto b = train("bf16");
  ASSERT_EQ(b.first, 0) << b.second;
  const auto lf = step_losses(work / "fp32/log.jsonl"), lb = step_losses(work / "bf16/log.jsonl");
  ASSERT_EQ(lf.size(), 20u);
  ASSERT_EQ(lb.size(), lf.size());
  bool differ = false;
  for (size_t i = 0; i < lf.size(); ++i) {
    // BF16 operands carry 8 significant bits (relative rounding 2^-9 each): a loss of ~2-4 moves
    // by far less than 1% over 20 steps; a wrong product (unscaled, transposed) moves it by 100s.
    EXPECT_NEAR(lb[i], lf[i], 0.01 * lf[i]) << "step " << i + 1;
    differ = differ || lb[i] != lf[i];
  }
  EXPECT_TRUE(differ) << "bf16 gave fp32's losses bit for bit: the BF16 path did not run";
  EXPECT_LT(lf.back(), 0.8 * lf.front());  // it learned
  const double pf = value_after(f.second, "perplexity"), pb = value_after(b.second, "perplexity");
  EXPECT_NEAR(pb, pf, 0.01 * pf);
  // eval takes the option too, and the run records it.
  auto e = run_out(bin + " eval --model " + dir.string() + " --adapter " + (work / "bf16/final").string() +
                   " --data " + (work / "all.txt").string() + " --block-size 32 --threads 1 --compute-dtype bf16");
  ASSERT_EQ(e.first, 0) << e.second;
  std::ifstream st(work / "bf16/checkpoint/trainer_state.json");
  std::string state((std::istreambuf_iterator<char>(st)), std::istreambuf_iterator<char>());
  EXPECT_NE(state.find("\"compute_dtype\": \"bf16\""), std::string::npos) << state;
  auto bad = run_out("{ { " + bin + " train --model " + dir.string() + " --train " + (work / "all.txt").string() +
                     " --output " + (work / "y").string() + " --compute-dtype fp8; } 2>&1; }");  // stderr too
  EXPECT_EQ(bad.first, 1);
  EXPECT_NE(bad.second.find("'fp8' is not a compute dtype (fp32, bf16, auto)"), std::string::npos) << bad.second;
  fs::remove_all(work);
}

// --attention s2 (LongLoRA's S²-Attn) changes training only: the adapter differs from a full-
// attention run with the same seed, the run records it, and bad uses are refused by name.
TEST(Cli, ShiftedSparseAttentionTrainsAndIsRefusedWhereItDoesNotApply) {
  auto dir = tiny_llama_dir();
  auto work = temp_dir("cli_s2");
  std::string txt;
  for (int i = 0; i < 40; ++i) txt += "the cat sat on the mat. a dog ran to the park.\n";
  write(work / "all.txt", txt);
  const std::string bin = LORAFIT_BINARY;
  const std::string common = " train --model " + dir.string() + " --train " + (work / "all.txt").string() +
                             " --block-size 32 --batch-size 4 --max-steps 3 --lora-dropout 0 --threads 1 --quiet";
  ASSERT_EQ(run(bin + common + " --output " + (work / "full").string()), 0);
  ASSERT_EQ(run(bin + common + " --output " + (work / "s2").string() + " --attention s2 --s2-ratio 0.25"), 0);
  auto read_all = [](const fs::path& f) {
    std::ifstream in(f, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  const std::string a = read_all(work / "full/final/adapter_model.safetensors");
  const std::string b = read_all(work / "s2/final/adapter_model.safetensors");
  ASSERT_FALSE(a.empty());
  ASSERT_EQ(a.size(), b.size());
  EXPECT_NE(a, b) << "S2 attention left training unchanged";
  std::string state = read_all(work / "s2/checkpoint/trainer_state.json");
  state.erase(std::remove(state.begin(), state.end(), ' '), state.end());
  EXPECT_NE(state.find("\"attention\":\"s2\""), std::string::npos) << state;
  auto bad = run_err(bin + common + " --output " + (work / "x").string() + " --attention sparse");
  EXPECT_EQ(bad.first, 1);
  EXPECT_NE(bad.second.find("--attention 'sparse': expected full or s2"), std::string::npos) << bad.second;
  bad = run_err(bin + common + " --output " + (work / "y").string() + " --attention s2 --s2-ratio 0");
  EXPECT_EQ(bad.first, 1);
  EXPECT_NE(bad.second.find("--s2-ratio must be in (0, 1]"), std::string::npos) << bad.second;
  fs::remove_all(work);
}

// LongLoRA's options together: --rope-scaling (recorded with the adapter and applied again by
// eval and merge), --gradient-checkpointing (the same adapter, bit for bit), --trainable-extra
// (PEFT modules_to_save, refused by the llama.cpp LoRA export), eval --stride; bad uses refused.
TEST(Cli, LongContextOptionsRecordedAppliedAndRefused) {
  auto dir = tiny_llama_dir();  // max_position_embeddings 64
  auto work = temp_dir("cli_long");
  std::string txt;
  for (int i = 0; i < 60; ++i) txt += "the cat sat on the mat. a dog ran to the park.\n";
  write(work / "all.txt", txt);
  const std::string bin = LORAFIT_BINARY;
  const std::string common = " train --model " + dir.string() + " --train " + (work / "all.txt").string() +
                             " --block-size 96 --batch-size 2 --max-steps 2 --threads 1 --quiet"
                             " --rope-scaling linear:2 --attention s2 --trainable-extra embed,norm";
  ASSERT_EQ(run(bin + common + " --output " + (work / "a").string()), 0);
  ASSERT_EQ(run(bin + common + " --output " + (work / "b").string() + " --gradient-checkpointing"), 0);
  auto read_all = [](const fs::path& f) {
    std::ifstream in(f, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  const std::string a = read_all(work / "a/final/adapter_model.safetensors");
  ASSERT_FALSE(a.empty());
  EXPECT_EQ(a, read_all(work / "b/final/adapter_model.safetensors")) << "recomputation changed the adapter";
  // the note and modules_to_save
  io::json task = io::read_json_file((work / "a/final/lorafit_task.json").string());
  EXPECT_EQ(task["rope"]["rope_scaling"]["rope_type"], "linear");
  EXPECT_EQ(task["rope"]["max_position_embeddings"], 128);
  io::json acfg = io::read_json_file((work / "a/final/adapter_config.json").string());
  EXPECT_EQ(acfg["modules_to_save"].dump(), R"(["embed_tokens","input_layernorm","post_attention_layernorm","norm"])");
  auto st = io::SafetensorsFile::open((work / "a/final/adapter_model.safetensors").string());
  EXPECT_TRUE(st.contains("base_model.model.model.embed_tokens.weight"));
  EXPECT_TRUE(st.contains("base_model.model.model.layers.1.post_attention_layernorm.weight"));
  EXPECT_TRUE(st.contains("base_model.model.model.norm.weight"));
  // eval applies the note: the adapter's perplexity at 96 tokens, and the base with the scaling
  const std::string data = " --data " + (work / "all.txt").string() + " --block-size 96 --threads 1";
  auto with = run_out(bin + " eval --model " + dir.string() + " --adapter " + (work / "a/final").string() + data);
  ASSERT_EQ(with.first, 0) << with.second;
  auto scaled = run_out(bin + " eval --model " + dir.string() + " --rope-scaling linear:2" + data);
  auto plain = run_out(bin + " eval --model " + dir.string() + data);
  ASSERT_EQ(scaled.first, 0);
  ASSERT_EQ(plain.first, 0);
  EXPECT_NE(value_after(scaled.second, "perplexity"), value_after(plain.second, "perplexity"));
  auto twice = run_err(bin + " eval --model " + dir.string() + " --adapter " + (work / "a/final").string() +
                       " --rope-scaling linear:2" + data);
  EXPECT_EQ(twice.first, 1);
  EXPECT_NE(twice.second.find("records the run's RoPE scaling already"), std::string::npos) << twice.second;
  // sliding windows: every predicted token once, however the windows overlap
  auto blocks = run_out(bin + " eval --model " + dir.string() + " --data " + (work / "all.txt").string() +
                        " --block-size 32 --stride 32 --threads 1");
  auto slide = run_out(bin + " eval --model " + dir.string() + " --data " + (work / "all.txt").string() +
                       " --block-size 32 --stride 8 --threads 1");
  ASSERT_EQ(slide.first, 0) << slide.second;
  auto ntok = [](const std::string& out) {
    auto p = out.find('(');
    return p == std::string::npos ? -1.0 : std::atof(out.c_str() + p + 1);
  };
  const double n_all = ntok(slide.second);
  EXPECT_GT(n_all, ntok(blocks.second));  // blocks drop the last partial block
  EXPECT_EQ(n_all, static_cast<double>(train::read_lm_text((work / "all.txt").string(),
                                           text::Tokenizer::from_file(dir.string()), 4096)[0].ids.size()));
  auto bad_stride = run_err(bin + " eval --model " + dir.string() + " --data " + (work / "all.txt").string() +
                            " --block-size 32 --stride 33");
  EXPECT_NE(bad_stride.second.find("--stride 33: expected 0 (blocks) to the block size 32"), std::string::npos)
      << bad_stride.second;
  auto pr = run_err(bin + " predict --model " + dir.string() + " --adapter " + (work / "a/final").string() +
                    " --data " + (work / "all.txt").string() + " --stride 8");
  EXPECT_NE(pr.second.find("--rope-scaling and --stride are for LM evaluation"), std::string::npos) << pr.second;
  // merge: config.json carries the scaling for transformers
  ASSERT_EQ(run(bin + " adapter merge " + (work / "a/final").string() + " --base " + dir.string() +
                " --out " + (work / "merged").string()), 0);
  io::json mcfg = io::read_json_file((work / "merged/config.json").string());
  EXPECT_FALSE(mcfg.contains("rope_scaling"));  // transformers >= 5 form, as the base's
  EXPECT_EQ(mcfg["rope_parameters"]["rope_type"], "linear");
  EXPECT_EQ(mcfg["rope_parameters"]["rope_theta"], 100000.0);
  EXPECT_EQ(mcfg["rope_parameters"]["factor"], 2.0);
  EXPECT_EQ(mcfg["max_position_embeddings"], 128);
  // the llama.cpp LoRA GGUF cannot hold the trained embeddings and norms: refused, not dropped
  auto gg = run_err(bin + " adapter export-gguf " + (work / "a/final").string() + " --base " + dir.string() +
                    " --out " + (work / "a.gguf").string());
  EXPECT_EQ(gg.first, 1);
  EXPECT_NE(gg.second.find("modules_to_save cannot be stored in a llama.cpp LoRA GGUF"), std::string::npos)
      << gg.second;
  EXPECT_FALSE(fs::exists(work / "a.gguf"));
  // bad uses
  const std::string base = " train --model " + dir.string() + " --train " + (work / "all.txt").string() +
                           " --block-size 32 --max-steps 1 --quiet";
  auto e1 = run_err(bin + base + " --output " + (work / "x").string() + " --trainable-extra embed,bias");
  EXPECT_NE(e1.second.find("--trainable-extra 'bias': expected embed and/or norm"), std::string::npos) << e1.second;
  auto e2 = run_err(bin + base + " --output " + (work / "y").string() + " --rope-scaling linear");
  EXPECT_NE(e2.second.find("--rope-scaling 'linear': expected TYPE:FACTOR"), std::string::npos) << e2.second;
  auto e3 = run_err(bin + base + " --output " + (work / "z").string() + " --method full --trainable-extra norm");
  EXPECT_NE(e3.second.find("--trainable-extra needs --method lora or adalora"), std::string::npos) << e3.second;
  fs::remove_all(work);
}

TEST(Cli, InstructionTrainingLearnsTheReplies) {
  auto dir = tiny_llama_dir();
  auto work = temp_dir("cli_instr");
  std::string d;
  const std::vector<std::pair<std::string, std::string>> qa = {{"color of sky", "blue"}, {"color of grass", "green"},
                                                               {"color of snow", "white"}, {"color of coal", "black"}};
  for (int i = 0; i < 64; ++i) {
    auto& [q, a] = qa[static_cast<size_t>(i) % qa.size()];
    d += "{\"prompt\": \"" + q + "\", \"response\": \"" + a + "\"}\n";
  }
  write(work / "qa.jsonl", d);
  const std::string bin = LORAFIT_BINARY;
  const std::string ev = " --model " + dir.string() + " --data " + (work / "qa.jsonl").string() + " --threads 1";
  auto before = run_out(bin + " eval" + ev);
  ASSERT_EQ(before.first, 0) << before.second;
  auto tr = run_out(bin + " train --model " + dir.string() + " --train " + (work / "qa.jsonl").string() +
                    " --output " + (work / "out").string() +
                    " --batch-size 8 --max-steps 40 --lr 1e-2 --lora-dropout 0 --threads 1 --block-size 48"
                    " --target-modules q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj");
  ASSERT_EQ(tr.first, 0) << tr.second;
  auto after = run_out(bin + " eval" + ev + " --adapter " + (work / "out/final").string());
  ASSERT_EQ(after.first, 0) << after.second;
  const double l0 = value_after(before.second, "loss"), l1 = value_after(after.second, "loss");
  EXPECT_LT(l1, 0.5 * l0) << "reply loss before " << l0 << " after " << l1;
  // The loss counts only reply tokens: "blue<|im_end|>" is 5 ids, and so on (5+6+6+6 per 4 rows).
  EXPECT_NE(after.second.find("examples 64 (368 reply tokens)"), std::string::npos) << after.second;
  // Unknown template choice explains itself.
  EXPECT_EQ(run(bin + " train --model " + dir.string() + " --train " + (work / "qa.jsonl").string() + " --output " +
                (work / "o2").string() + " --chat-template vicuna"),
            1);
  fs::remove_all(work);
}

// DoRA through the CLI: the magnitude is trained and saved (PEFT keys), resume is exact, and
// `lorafit analyze` reads the run (merged on the fly) and a full fine-tune beside it.
TEST(Cli, DoraTrainResumeAndAnalyze) {
  auto dir = tiny_model_dir();
  auto work = temp_dir("cli_dora");
  write(work / "train.tsv", synthetic_tsv(48, 5));
  const std::string bin = LORAFIT_BINARY;
  const std::string base = bin + " train --model " + dir.string() + " --train " + (work / "train.tsv").string() +
                           " --max-steps 5 --batch-size 8 --threads 1 --lr 1e-2 --use-dora";
  ASSERT_EQ(run(base + " --output " + (work / "a").string()), 0);
  auto cfg = io::read_json_file((work / "a/final/adapter_config.json").string());
  EXPECT_EQ(cfg["use_dora"], true);
  auto info = run_out(bin + " adapter info " + (work / "a/final").string());
  ASSERT_EQ(info.first, 0) << info.second;
  EXPECT_NE(info.second.find("use_dora    true"), std::string::npos) << info.second;
  auto ad = io::SafetensorsFile::open((work / "a/final/adapter_model.safetensors").string());
  int mags = 0;
  for (auto& n : ad.names())
    if (n.size() > 21 && n.compare(n.size() - 21, 21, "lora_magnitude_vector") == 0) {
      ++mags;
      EXPECT_EQ(ad.entry(n).shape.size(), 1u) << n;
    }
  EXPECT_EQ(mags, 4);  // query and value of the tiny BERT's 2 layers
  // The magnitude moved from its initial row norms (it is trained).
  auto model = models::load_model(dir.string());
  const std::string key = "base_model.model.bert.encoder.layer.0.attention.self.query.lora_magnitude_vector";
  ASSERT_TRUE(ad.contains(key));
  Tensor m = ad.get_f32(key);
  Tensor w;
  for (auto& [p, l] : model->linears())
    if (p == "bert.encoder.layer.0.attention.self.query") w = l->weight.value;
  ASSERT_TRUE(w.defined());
  double moved = 0;
  for (int64_t i = 0; i < m.numel(); ++i) {
    double n2 = 0;
    for (int64_t j = 0; j < w.dim(1); ++j) n2 += static_cast<double>(w.f32()[i * w.dim(1) + j]) * w.f32()[i * w.dim(1) + j];
    moved = nan_max(moved, std::fabs(m.f32()[i] - std::sqrt(n2)));
  }
  EXPECT_GT(moved, 1e-4);
  // Stop after 2 steps, resume: bit-identical to the uninterrupted run.
  EXPECT_EQ(run(base + " --output " + (work / "b").string() + " --stop-after 2"), 130);
  ASSERT_EQ(run(base + " --output " + (work / "b").string() + " --resume " + (work / "b/checkpoint").string()), 0);
  auto ta = io::SafetensorsFile::open((work / "a/final/trainable.safetensors").string());
  auto tb = io::SafetensorsFile::open((work / "b/final/trainable.safetensors").string());
  ASSERT_EQ(ta.names(), tb.names());
  for (auto& n : ta.names()) {
    Tensor x = ta.get_f32(n), y = tb.get_f32(n);
    for (int64_t i = 0; i < x.numel(); ++i) ASSERT_EQ(x.f32()[i], y.f32()[i]) << n << " element " << i;
  }
  EXPECT_EQ(run(base + " --output " + (work / "c").string() + " --method full"), 1);  // DoRA is a LoRA option
  // analyze: DoRA run (adapter merged on the fly) and a full fine-tune (trainable.safetensors).
  ASSERT_EQ(run(bin + " train --model " + dir.string() + " --train " + (work / "train.tsv").string() +
                " --max-steps 3 --batch-size 8 --threads 1 --method full --output " + (work / "full").string()),
            0);
  const std::string an = bin + " analyze --base " + dir.string() + " --result dora=" + (work / "a/final").string() +
                         " --result dora@mid=" + (work / "b/checkpoint").string() + " --result ft=" +
                         (work / "full/final").string() + " --out " + (work / "an").string();
  ASSERT_EQ(run(an), 0);
  std::string csv = io::read_file((work / "an/analysis.csv").string());
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 1 + 3 * 4);  // header + 3 results × 4 modules
  EXPECT_NE(csv.find("dora,final,0,attention.self.query,"), std::string::npos) << csv;
  EXPECT_NE(csv.find("dora,mid,1,attention.self.value,"), std::string::npos) << csv;
  EXPECT_NE(csv.find("ft,final,1,attention.self.value,"), std::string::npos) << csv;
  std::string svg = io::read_file((work / "an/analysis.svg").string());
  EXPECT_NE(svg.find(">dora</text>"), std::string::npos);
  EXPECT_NE(svg.find(">ft</text>"), std::string::npos);
  // Bad inputs explain themselves (exit 1) or show the usage (exit 2).
  EXPECT_EQ(run(bin + " analyze --base " + dir.string() + " --result x=" + work.string() + " --out " +
                (work / "an2").string()),
            1);
  EXPECT_EQ(run(bin + " analyze --base " + dir.string() + " --out " + (work / "an3").string()), 2);
  EXPECT_EQ(run(bin + " analyze --help"), 0);
  fs::remove_all(work);
}

// AdaLoRA through the CLI: the allocator runs inside the loop (no user call), total_step is the
// run's step count, the budget reaches target_r per module, final/ holds the pruned tensors and the
// rank_pattern, and a stopped + resumed run (allocator state in the checkpoint) equals an
// uninterrupted one.
TEST(Cli, AdaLoraPrunesToTheTargetBudgetAndResumesExactly) {
  auto dir = tiny_model_dir();
  auto work = temp_dir("cli_adalora");
  write(work / "train.tsv", synthetic_tsv(64, 6));
  const std::string base = std::string(LORAFIT_BINARY) + " train --model " + dir.string() + " --train " +
                           (work / "train.tsv").string() +
                           " --method adalora --init-r 4 --target-r 2 --tinit 2 --tfinal 3 --delta-t 2"
                           " --max-steps 12 --batch-size 8 --threads 1 --lr 1e-2 --lora-dropout 0";
  ASSERT_EQ(run(base + " --output " + (work / "a").string()), 0);
  auto cfg = io::read_json_file((work / "a/final/adapter_config.json").string());
  EXPECT_EQ(cfg["peft_type"], "ADALORA");
  EXPECT_EQ(cfg["total_step"], 12);
  EXPECT_EQ(cfg["init_r"], 4);
  EXPECT_EQ(cfg["target_r"], 2);
  ASSERT_TRUE(cfg["rank_pattern"].is_object());
  ASSERT_EQ(cfg["rank_pattern"].size(), 4u);  // query and value of both layers
  auto st = io::SafetensorsFile::open((work / "a/final/adapter_model.safetensors").string());
  int64_t kept_total = 0;
  for (auto it = cfg["rank_pattern"].begin(); it != cfg["rank_pattern"].end(); ++it) {
    auto mask = it.value().get<std::vector<bool>>();
    ASSERT_EQ(mask.size(), 4u);
    const int64_t kept = std::count(mask.begin(), mask.end(), true);
    kept_total += kept;
    const std::string mod = "base_model.model." + it.key().substr(0, it.key().size() - 7);  // - ".lora_E"
    EXPECT_EQ(st.get(mod + ".lora_A").shape(), (tensor::Shape{kept, 32})) << mod;
    EXPECT_EQ(st.get(mod + ".lora_E").shape(), (tensor::Shape{kept, 1})) << mod;
    EXPECT_EQ(st.get(mod + ".lora_B").shape(), (tensor::Shape{32, kept})) << mod;
  }
  EXPECT_EQ(kept_total, 2 * 4);  // the target budget: target_r × modules
  // `adapter info` shows the AdaLoRA schedule and the kept ranks.
  auto info = run_out(std::string(LORAFIT_BINARY) + " adapter info " + (work / "a/final").string());
  ASSERT_EQ(info.first, 0) << info.second;
  EXPECT_NE(info.second.find("init_r 4, target_r 2"), std::string::npos) << info.second;
  EXPECT_NE(info.second.find("rank_pattern 4 modules, 8 of 16 singular values kept"),
            std::string::npos)
      << info.second;
  // The pruned folder loads for evaluation.
  EXPECT_EQ(run(std::string(LORAFIT_BINARY) + " eval --model " + dir.string() + " --adapter " +
                (work / "a/final").string() + " --data " + (work / "train.tsv").string()),
            0);
  // Stop after 5 steps (mid-budgeting), resume: identical weights and mask.
  EXPECT_EQ(run(base + " --output " + (work / "b").string() + " --stop-after 5"), 130);
  ASSERT_TRUE(fs::exists(work / "b/checkpoint/adalora_state.safetensors"));
  ASSERT_EQ(run(base + " --output " + (work / "b").string() + " --resume " + (work / "b/checkpoint").string()), 0);
  auto a = io::SafetensorsFile::open((work / "a/final/trainable.safetensors").string());
  auto b = io::SafetensorsFile::open((work / "b/final/trainable.safetensors").string());
  ASSERT_EQ(a.names(), b.names());
  for (auto& n : a.names()) {
    Tensor ta = a.get_f32(n), tb = b.get_f32(n);
    ASSERT_EQ(ta.numel(), tb.numel());
    for (int64_t i = 0; i < ta.numel(); ++i) ASSERT_EQ(ta.f32()[i], tb.f32()[i]) << n << " element " << i;
  }
  EXPECT_EQ(io::read_json_file((work / "b/final/adapter_config.json").string())["rank_pattern"], cfg["rank_pattern"]);
  // AdaLoRA flags belong to --method adalora; --lora-r does not apply to it.
  EXPECT_EQ(run(base + " --output " + (work / "c").string() + " --lora-r 4"), 1);
  EXPECT_EQ(run(std::string(LORAFIT_BINARY) + " train --model " + dir.string() + " --train " +
                (work / "train.tsv").string() + " --init-r 4 --output " + (work / "d").string()),
            1);
  fs::remove_all(work);
}

// The CLI's AdaLoRA schedule defaults scale with the run (the paper's SST-2 fractions: tinit 12%,
// tfinal 44%, deltaT steps/500; orth_reg_weight 0.1); PEFT's own defaults stay one flag away.
TEST(Cli, AdaLoraDefaultScheduleScalesWithTheRun) {
  auto dir = tiny_model_dir();
  auto work = temp_dir("cli_adalora_defaults");
  write(work / "train.tsv", synthetic_tsv(64, 6));
  const std::string base = std::string(LORAFIT_BINARY) + " train --model " + dir.string() +
                           " --train " + (work / "train.tsv").string() +
                           " --method adalora --init-r 4 --target-r 2"
                           " --batch-size 8 --threads 1 --quiet";
  ASSERT_EQ(run(base + " --max-steps 25 --output " + (work / "a").string()), 0);
  auto cfg = io::read_json_file((work / "a/final/adapter_config.json").string());
  EXPECT_EQ(cfg["total_step"], 25);
  EXPECT_EQ(cfg["tinit"], 3);    // 25 · 12 / 100
  EXPECT_EQ(cfg["tfinal"], 11);  // 25 · 44 / 100
  EXPECT_EQ(cfg["deltaT"], 1);
  EXPECT_DOUBLE_EQ(cfg["orth_reg_weight"].get<double>(), 0.1);
  ASSERT_EQ(run(base + " --max-steps 5 --tinit 0 --tfinal 0 --delta-t 1 --orth-reg-weight 0.5"
                       " --output " + (work / "b").string()),
            0);
  cfg = io::read_json_file((work / "b/final/adapter_config.json").string());
  EXPECT_EQ(cfg["tinit"], 0);
  EXPECT_EQ(cfg["tfinal"], 0);
  EXPECT_EQ(cfg["deltaT"], 1);
  EXPECT_DOUBLE_EQ(cfg["orth_reg_weight"].get<double>(), 0.5);
  fs::remove_all(work);
}

// ---- the training job through the C++ API -------------------------------------------------------

namespace {
void expect_same_tensors(const fs::path& a_path, const fs::path& b_path) {
  auto a = io::SafetensorsFile::open(a_path.string());
  auto b = io::SafetensorsFile::open(b_path.string());
  ASSERT_EQ(a.names(), b.names());
  for (auto& n : a.names()) {
    Tensor ta = a.get_f32(n), tb = b.get_f32(n);
    ASSERT_EQ(ta.numel(), tb.numel()) << n;
    for (int64_t i = 0; i < ta.numel(); ++i) ASSERT_EQ(ta.f32()[i], tb.f32()[i]) << n << " element " << i;
  }
}
}  // namespace

// A C++ caller gets what the CLI gets: every saved folder is a complete PEFT folder with the
// task info, and the run folder loads back for evaluation.
TEST(Job, RunParamsWriteCompletePeftFolders) {
  auto work = temp_dir("job");
  write(work / "train.tsv", synthetic_tsv(48, 3));
  RunParams p;
  p.model = tiny_model_dir().string();
  p.train_data = (work / "train.tsv").string();
  p.output = (work / "run").string();
  p.max_steps = 3;
  p.batch_size = 8;
  p.threads = 1;
  p.quiet = true;
  auto job = TrainingJob::prepare(p);
  EXPECT_EQ(job->info().task, "classification");
  EXPECT_FLOAT_EQ(job->info().lr, 3e-3f);  // the library's default for a classification adapter
  JobResult r = job->run();
  EXPECT_FALSE(r.summary.interrupted);
  EXPECT_EQ(r.summary.steps, 3);
  for (auto d : {"final", "best", "checkpoint"})
    for (auto f : {"adapter_config.json", "adapter_model.safetensors", "lorafit_task.json",
                   "trainable.safetensors"})
      EXPECT_TRUE(fs::exists(work / "run" / d / f)) << d << "/" << f;
  EXPECT_TRUE(fs::exists(work / "run/checkpoint/optimizer.safetensors"));
  EXPECT_TRUE(fs::exists(work / "run/log.jsonl"));
  EXPECT_TRUE(fs::exists(work / "run/report.html"));
  auto cfg = io::read_json_file((work / "run/checkpoint/adapter_config.json").string());
  EXPECT_EQ(cfg["target_modules"], io::json::array({"query", "value"}));  // default targets
  EXPECT_EQ(read_task_info((work / "run/final").string())["task"], "classification");
  // The same folder refused a second time, unless overwrite.
  expect_error([&] { TrainingJob::prepare(p); }, {"exists and is not empty", "--overwrite"});
  // evaluation of the run's final/ equals the summary's final evaluation on the same data.
  EvalParams ep;
  ep.model = p.model;
  ep.adapter = (work / "run/final").string();
  ep.data = p.train_data;
  EvalReport er = evaluate_file(ep);
  EXPECT_FALSE(er.lm);
  EXPECT_EQ(er.result.cls.n, 48);
  PredictReport pr = predict_file(ep);
  ASSERT_EQ(pr.rows.size(), 48u);
  EXPECT_EQ(pr.rows[0].probabilities.size(), 2u);
  // An option of another method is refused with its name.
  RunParams bad = p;
  bad.overwrite = true;
  bad.method = "full";
  bad.lora_r = 4;
  expect_error([&] { TrainingJob::prepare(bad); }, {"--lora-*", "method is full"});
  fs::remove_all(work);
}

// AdaLoRA through the API: stopped after 5 steps and resumed from checkpoint/ (allocator state
// included) equals the uninterrupted run, weights and rank_pattern.
TEST(Job, AdaLoraResumesExactlyThroughTheApi) {
  auto work = temp_dir("job_adalora");
  write(work / "train.tsv", synthetic_tsv(64, 6));
  RunParams p;
  p.model = tiny_model_dir().string();
  p.train_data = (work / "train.tsv").string();
  p.method = "adalora";
  p.init_r = 4;
  p.target_r = 2;
  p.tinit = 2;
  p.tfinal = 3;
  p.delta_t = 2;
  p.max_steps = 12;
  p.batch_size = 8;
  p.threads = 1;
  p.lr = 1e-2;
  p.lora_dropout = 0;
  p.quiet = true;
  RunParams a = p, b = p;
  a.output = (work / "a").string();
  b.output = (work / "b").string();
  JobResult ra = run_job(a);
  EXPECT_EQ(ra.adalora_target_budget, 8);
  int64_t kept = 0;
  for (int64_t k : ra.adalora_ranks) kept += k;
  EXPECT_EQ(kept, 8);
  b.stop_after = 5;
  EXPECT_TRUE(run_job(b).summary.interrupted);
  ASSERT_TRUE(fs::exists(work / "b/checkpoint/adalora_state.safetensors"));
  ASSERT_TRUE(fs::exists(work / "b/checkpoint/adapter_config.json"));
  // The checkpoint knows its run: resume_params reads the options back (stop_after cleared).
  RunParams rb = resume_params((work / "b/checkpoint").string());
  EXPECT_EQ(rb.method, "adalora");
  EXPECT_EQ(rb.init_r, 4);
  EXPECT_EQ(rb.output, b.output);
  EXPECT_EQ(rb.stop_after, 0);
  EXPECT_FALSE(run_job(rb).summary.interrupted);
  expect_same_tensors(work / "a/final/trainable.safetensors", work / "b/final/trainable.safetensors");
  EXPECT_EQ(io::read_json_file((work / "b/final/adapter_config.json").string())["rank_pattern"],
            io::read_json_file((work / "a/final/adapter_config.json").string())["rank_pattern"]);
  fs::remove_all(work);
}

// ---- one option parser: errors name the option and what it expects ----------------------------

TEST(Cli, UnknownAndMalformedOptionsNameTheOption) {
  const std::string bin = LORAFIT_BINARY;
  const std::string fix = LORAFIT_FIXTURES;
  struct Case {
    std::string args;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {"train --model m --lr-rate 3",
       {"lorafit train: [train] unknown option --lr-rate", "did you mean --lr",
        "lorafit train --help"}},
      {"train --model m --lora-r four", {"[train] --lora-r: expected an integer, got 'four'"}},
      {"train --model m --lr 1e-3x", {"[train] --lr: expected a number, got '1e-3x'"}},
      {"train --model m --use-dora=maybe",
       {"[train] --use-dora: expected true or false, got 'maybe'"}},
      {"train --model", {"[train] --model needs a value"}},
      {"train --model m stray", {"[train] unexpected argument 'stray'"}},
      {"eval --model m --batch-size 1.5",
       {"lorafit eval: [eval] --batch-size: expected an integer, got '1.5'"}},
      {"generate --model m --top-k abc", {"[generate] --top-k: expected an integer, got 'abc'"}},
      {"logits --model m --prompt a --threads x",
       {"lorafit logits: [logits] --threads: expected an integer, got 'x'"}},
      {"logits --model m --prompt a --num-label 2",
       {"[logits] unknown option --num-label", "did you mean --num-labels"}},
      {"adapter merge " + fix + "/peft/llama_qv --base b --out o --bogus 1",
       {"lorafit adapter merge: [adapter merge] unknown option --bogus"}},
      {"adapter info " + fix + "/peft/llama_qv --bas x",
       {"[adapter info] unknown option --bas", "did you mean --base"}},
      {"adapter combine a b --base m --weights 1,1 --out o --svd-rank x",
       {"[adapter combine] --svd-rank: expected an integer, got 'x'"}},
      {"analyze --base m --out o --result a=b --modules", {"[analyze] --modules needs a value"}},
      {"info --foo " + fix + "/models/tiny_bert", {"lorafit info: [info] unknown option --foo"}},
  };
  for (const auto& c : cases) {
    auto [rc, err] = run_err(bin + " " + c.args);
    EXPECT_EQ(rc, 1) << c.args << "\n" << err;
    for (const auto& part : c.parts)
      EXPECT_NE(err.find(part), std::string::npos) << c.args << "\n" << err;
    EXPECT_EQ(err.find("stoll"), std::string::npos) << err;
  }
}

// `lorafit info` takes every form a model comes in, the folder holding one .gguf included.
TEST(Cli, InfoAcceptsAFolderHoldingOneGguf) {
  auto work = temp_dir("info_gguf");
  fs::create_directories(work / "m");
  fs::copy_file(fs::path(LORAFIT_FIXTURES) / "models/tiny_llama.gguf", work / "m/tiny.gguf");
  auto [rc, out] = run_out(std::string(LORAFIT_BINARY) + " info " + (work / "m").string());
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("architecture:  llama"), std::string::npos) << out;
  EXPECT_NE(out.find("tiny.gguf (gguf)"), std::string::npos) << out;
  // Two .gguf files: which one is meant is unclear, and the message says so.
  fs::copy_file(fs::path(LORAFIT_FIXTURES) / "models/tiny_llama_tied.gguf", work / "m/other.gguf");
  auto [rc2, err] = run_err(std::string(LORAFIT_BINARY) + " info " + (work / "m").string());
  EXPECT_EQ(rc2, 1);
  EXPECT_NE(err.find("no config.json and 2 .gguf files"), std::string::npos) << err;
  fs::remove_all(work);
}

// generate through the CLI and the library give the same text; greedy-only options are refused.
TEST(Cli, GenerateMatchesTheLibraryAndChecksItsOptions) {
  const std::string model = tiny_llama_dir().string();
  GenerateParams p;
  p.model = model;
  p.prompt = "hello world";
  p.sampling.max_new_tokens = 6;
  p.sampling.temperature = 0.9;
  p.sampling.top_k = 20;
  p.sampling.seed = 5;
  std::string pieces;
  const std::string text = generate_text(p, [&](const std::string& s) { pieces += s; });
  EXPECT_EQ(pieces, text);
  EXPECT_EQ(generate_text(p), text);  // seeded
  const std::string bin = LORAFIT_BINARY;
  auto [rc, out] = run_out(bin + " generate --model " + model +
                           " --prompt 'hello world' --max-new-tokens 6 --temperature 0.9 --top-k "
                           "20 --seed 5 --threads 1");
  ASSERT_EQ(rc, 0);
  EXPECT_EQ(out, "hello world" + text + "\n");
  auto [rc2, err] = run_err(bin + " generate --model " + model + " --prompt hi --top-k 5");
  EXPECT_EQ(rc2, 1);
  EXPECT_NE(err.find("--top-k/--top-p only matter when sampling"), std::string::npos) << err;
  auto [rc3, err3] = run_err(bin + " generate --model " + model + " --prompt hi --system 'be brief'");
  EXPECT_EQ(rc3, 1);
  EXPECT_NE(err3.find("--system and --chat-template need --chat"), std::string::npos) << err3;
}

// QLoRA through the CLI: LoRA on an NF4 (double-quantized) base learns as on the fp32 base (the
// held-out perplexities after the same run within 10%), the run records --quantize so eval loads
// the same base by itself, and info shows the stored and in-memory types.
TEST(Cli, QloraTrainsLikeTheFp32BaseAndEvalReloadsTheQuantizedBase) {
  auto dir = tiny_llama_dir();
  auto work = temp_dir("cli_qlora");
  const std::vector<std::string> lines = {"the cat sat on the mat.", "a dog ran to the park.",
                                          "the sun is warm today.", "we like to read books."};
  std::string txt;
  for (int i = 0; i < 160; ++i) txt += lines[nn::random_u64(3, static_cast<uint64_t>(i)) % lines.size()] + "\n";
  write(work / "all.txt", txt);
  write(work / "heldout.txt", txt.substr(txt.size() * 9 / 10));
  const std::string bin = LORAFIT_BINARY;
  double ppl[2];
  for (int q = 0; q < 2; ++q) {
    const std::string out = (work / (q ? "nf4" : "f32")).string();
    auto tr = run_out(bin + " train --model " + dir.string() + " --train " + (work / "all.txt").string() +
                      " --output " + out + " --block-size 32 --batch-size 8 --max-steps 40 --lr 1e-2"
                      " --lora-dropout 0 --threads 1 --target-modules all-linear" +
                      (q ? " --quantize nf4-dq" : ""));
    ASSERT_EQ(tr.first, 0) << tr.second;
    auto task = io::read_json_file(out + "/final/lorafit_task.json");
    EXPECT_EQ(task.value("quantize", ""), q ? "nf4-dq" : "none");
    auto ev = run_out(bin + " eval --model " + dir.string() + " --adapter " + out + "/final --data " +
                      (work / "heldout.txt").string() + " --block-size 32 --threads 1");
    ASSERT_EQ(ev.first, 0) << ev.second;
    ppl[q] = value_after(ev.second, "perplexity");
    if (q) {
      // The same adapter on the fp32 base is another model: its perplexity differs.
      auto ev32 = run_out(bin + " eval --model " + dir.string() + " --adapter " + out +
                          "/final --quantize none --data " + (work / "heldout.txt").string() +
                          " --block-size 32 --threads 1");
      ASSERT_EQ(ev32.first, 0) << ev32.second;
      EXPECT_NE(value_after(ev32.second, "perplexity"), ppl[q]);
    }
  }
  std::printf("held-out perplexity after 40 steps: fp32 base %.4f, nf4-dq base %.4f\n", ppl[0], ppl[1]);
  EXPECT_LT(ppl[0], 30.0);
  EXPECT_NEAR(ppl[1], ppl[0], 0.1 * ppl[0]);
  // --quantize is refused where it cannot apply, by name.
  auto full = run_err(bin + " train --model " + dir.string() + " --train " + (work / "all.txt").string() +
                      " --output " + (work / "x").string() + " --method full --quantize nf4");
  EXPECT_EQ(full.first, 1);
  EXPECT_NE(full.second.find("--quantize nf4 needs --method lora or adalora"), std::string::npos)
      << full.second;
  auto bad = run_err(bin + " train --model " + dir.string() + " --train " + (work / "all.txt").string() +
                     " --output " + (work / "x").string() + " --quantize int3");
  EXPECT_EQ(bad.first, 1);
  EXPECT_NE(bad.second.find("--quantize: 'int3' is not a quantization type"), std::string::npos)
      << bad.second;
  auto info = run_out(bin + " info " + dir.string() + " --quantize nf4-dq");
  ASSERT_EQ(info.first, 0) << info.second;
  EXPECT_NE(info.second.find("stored dtypes: F32 x"), std::string::npos) << info.second;
  EXPECT_NE(info.second.find("model.layers.*.mlp.down_proj"), std::string::npos) << info.second;
  EXPECT_NE(info.second.find("[48 -> 32] NF4"), std::string::npos)
      << info.second;
  EXPECT_NE(info.second.find("weight memory:"), std::string::npos) << info.second;
  fs::remove_all(work);
}
