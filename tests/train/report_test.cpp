// report.html and `lorafit report`: round axis ticks, reading log.jsonl (errors with file:line, a
// resumed log), the tables' content, the comparison page, and the page rendered by headless
// Chromium into a PNG that shows the charts' colours.
#include <gtest/gtest.h>
#include <png.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "lorafit/io.h"
#include "lorafit/train.h"
#include "train/train_internal.h"

namespace fs = std::filesystem;
using namespace lorafit;
using namespace lorafit::train;

namespace {

fs::path temp_dir(const std::string& name) {
  fs::path d =
      fs::temp_directory_path() / ("lorafit_report_" + name + "_" + std::to_string(getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

void write(const fs::path& p, const std::string& s) {
  std::ofstream(p, std::ios::binary) << s;
}

template <class F>
void expect_error(F f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    for (auto& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << " lacks " << p;
  }
}

std::string ticks_text(const AxisTicks& t) {
  std::string s;
  for (auto& l : t.labels) s += (s.empty() ? "" : " ") + l;
  return s;
}

// A log.jsonl as the trainer writes it: a falling loss with noise, an evaluation every 10 steps,
// growing memory, and the summary record. acc_gain shifts the accuracies (a better run).
std::string synthetic_log(int steps, double lr, double acc_gain, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> noise(0, 0.05);
  std::string s;
  double t = 0;
  io::json best;
  int64_t best_step = 0;
  double best_acc = -1;
  for (int i = 1; i <= steps; ++i) {
    const double loss = 0.3 + 0.4 * std::exp(-i / (20.0 * 3e-3 / lr)) + noise(rng);
    const int64_t tokens = 300 + static_cast<int64_t>(rng() % 200);
    t += tokens / 2600.0;
    io::json j = {{"type", "step"},
                  {"step", i},
                  {"loss", loss},
                  {"lr", lr * std::min(1.0, i / 3.0) * (1.0 - i / static_cast<double>(steps + 1))},
                  {"grad_norm", 1.5 + noise(rng)},
                  {"tokens", tokens},
                  {"tokens_per_s", 2600.0 + 30 * noise(rng)},
                  {"elapsed_s", t},
                  {"epoch", 0},
                  {"rss_bytes", (600LL << 20) + i * (1LL << 20)},
                  {"peak_rss_bytes", (610LL << 20) + i * (1LL << 20)}};
    s += j.dump() + "\n";
    if (i % 10 == 0) {
      const double acc = 0.5 + acc_gain + 0.3 * (1 - std::exp(-i / 15.0));
      io::json e = {
          {"type", "eval"},  {"step", i},        {"loss", 0.35 + 0.3 * std::exp(-i / 15.0)},
          {"accuracy", acc}, {"f1", acc - 0.01}, {"mcc", 2 * acc - 1.05},
          {"n", 160}};
      s += e.dump() + "\n";
      if (acc > best_acc) {
        best_acc = acc, best_step = i;
        best = e;
        best.erase("type");
        best.erase("step");
      }
      t += 1.5;  // the evaluation's time
    }
  }
  io::json config = {
      {"model", "models/all-MiniLM-L6-v2"},
      {"method", "lora"},
      {"task", "classification"},
      {"lr", lr},
      {"batch_size", 16},
      {"schedule", "linear"},
      {"grad_accum", 1},
      {"adapter", {{"r", 8}, {"lora_alpha", 16}, {"target_modules", {"query", "value"}}}}};
  io::json sum = {{"type", "summary"},
                  {"status", "finished"},
                  {"finished_utc", "2026-12-01 19:00:00 UTC"},
                  {"steps", steps},
                  {"total_steps", steps},
                  {"seconds", t},
                  {"tokens_per_second", 2603.5},
                  {"peak_rss_bytes", (610LL << 20) + steps * (1LL << 20)},
                  {"trainable_params", 294912},
                  {"total_params", 22713216},
                  {"lm", false},
                  {"best", {{"step", best_step}, {"eval", best}}},
                  {"config", config}};
  s += sum.dump() + "\n";
  return s;
}

int run_quiet(const std::string& cmd, const fs::path& err) {
  int rc = std::system((cmd + " > /dev/null 2> " + err.string()).c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

}  // namespace

// ---- ticks ------------------------------------------------------------------------------------

TEST(ReportTicks, RoundStepsForTypicalRanges) {
  EXPECT_EQ(ticks_text(nice_ticks(0, 1)), "0 0.2 0.4 0.6 0.8 1");
  EXPECT_EQ(ticks_text(nice_ticks(1, 40, 6)), "0 10 20 30 40");
  EXPECT_EQ(ticks_text(nice_ticks(0.3, 0.72)),
            "0.3 0.4 0.5 0.6 0.7 0.8");  // not 0.30000000000000004
  EXPECT_EQ(ticks_text(nice_ticks(0.2512, 0.2547)), "0.251 0.252 0.253 0.254 0.255");
  EXPECT_EQ(ticks_text(nice_ticks(0, 12000)), "0 5000 10000 15000");
  EXPECT_EQ(ticks_text(nice_ticks(1, 3, 4)), "1 1.5 2 2.5 3");
  auto t = nice_ticks(0.3, 0.72);
  EXPECT_DOUBLE_EQ(t.step, 0.1);
  EXPECT_EQ(t.lo, 0.3);
  EXPECT_EQ(t.hi, 0.8);
}

TEST(ReportTicks, TinyHugeNegativeAndAcrossZero) {
  EXPECT_EQ(ticks_text(nice_ticks(1e-9, 3e-9)), "1e-9 1.5e-9 2e-9 2.5e-9 3e-9");
  EXPECT_EQ(ticks_text(nice_ticks(2.1e-5, 2.9e-5)), "2e-5 2.2e-5 2.4e-5 2.6e-5 2.8e-5 3e-5");
  EXPECT_EQ(ticks_text(nice_ticks(0, 3.2e12)), "0 1e12 2e12 3e12 4e12");
  EXPECT_EQ(ticks_text(nice_ticks(-3.7, -1.2)), "-4 -3 -2 -1");
  EXPECT_EQ(ticks_text(nice_ticks(-0.35, 0.8)), "-0.5 0 0.5 1");  // a plain 0, never "-0"
  EXPECT_EQ(ticks_text(nice_ticks(-250, -0.5)), "-250 -200 -150 -100 -50 0");
}

TEST(ReportTicks, SinglePointReversedAndNonFinite) {
  EXPECT_EQ(ticks_text(nice_ticks(5, 5)), "4.5 5 5.5");
  EXPECT_EQ(ticks_text(nice_ticks(0, 0)), "-1 -0.5 0 0.5 1");
  EXPECT_EQ(ticks_text(nice_ticks(-2e-7, -2e-7)), "-2.2e-7 -2.1e-7 -2e-7 -1.9e-7 -1.8e-7");
  EXPECT_EQ(ticks_text(nice_ticks(1, 0)), ticks_text(nice_ticks(0, 1)));
  EXPECT_EQ(ticks_text(nice_ticks(NAN, 3)), "0 0.2 0.4 0.6 0.8 1");
  EXPECT_EQ(ticks_text(nice_ticks(0, INFINITY)), "0 0.2 0.4 0.6 0.8 1");
  EXPECT_EQ(ticks_text(nice_ticks(-1.7e308, 1.7e308)), "0 0.2 0.4 0.6 0.8 1");  // span overflows
  // A value that differs only in its last bit (a metric that does not move) is one value.
  EXPECT_EQ(ticks_text(nice_ticks(0.6931471805599453, std::nextafter(0.6931471805599453, 1.0))),
            "0.6 0.65 0.7 0.75 0.8");
}

// Over many random ranges: the step is 1, 2 or 5 x 10^k, the ticks are its multiples, cover the
// range within the interval budget, and every label reads back as its value.
TEST(ReportTicks, PropertiesOverRandomRanges) {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> u(-1, 1);
  std::uniform_int_distribution<int> ex(-12, 12);
  for (int trial = 0; trial < 2000; ++trial) {
    const double scale = std::pow(10.0, ex(rng));
    double lo = u(rng) * scale, hi = lo + std::abs(u(rng)) * scale * (trial % 3 ? 1 : 1e-3);
    const int max_iv = 3 + trial % 6;
    const AxisTicks t = nice_ticks(lo, hi, max_iv);
    const double m = t.step / std::pow(10.0, std::floor(std::log10(t.step) + 1e-12));
    ASSERT_TRUE(std::abs(m - 1) < 1e-9 || std::abs(m - 2) < 1e-9 || std::abs(m - 5) < 1e-9)
        << lo << " " << hi << " step " << t.step;
    ASSERT_GE(t.values.size(), 2u);
    ASSERT_LE(t.values.size(), static_cast<size_t>(max_iv + 1)) << lo << " " << hi;
    ASSERT_LE(t.lo, lo + t.step * 1e-9);
    ASSERT_GE(t.hi, hi - t.step * 1e-9);
    for (size_t i = 0; i < t.values.size(); ++i) {
      const double k = t.values[i] / t.step;
      ASSERT_NEAR(k, std::round(k), 1e-6) << t.values[i];
      if (i) {
        ASSERT_NEAR(t.values[i] - t.values[i - 1], t.step, t.step * 1e-6);
      }
      ASSERT_NEAR(std::strtod(t.labels[i].c_str(), nullptr), t.values[i], t.step * 1e-6)
          << t.labels[i];
      // Short labels where the span is of the values' magnitude ("-2.5e-7", "0.35", "4e12"); a
      // narrow span far from 0 needs more digits to tell its ticks apart.
      if (trial % 3) {
        ASSERT_LE(t.labels[i].size(), 9u) << t.labels[i];
      }
    }
  }
}

// ---- reading logs -----------------------------------------------------------------------------

TEST(ReportLog, ReadsStepsEvalsAndSummary) {
  auto work = temp_dir("read");
  fs::create_directories(work / "run");
  write(work / "run/log.jsonl", synthetic_log(40, 3e-3, 0.0, 1));
  RunLog r = read_run_dir((work / "run").string());
  EXPECT_EQ(r.name, "run");
  ASSERT_EQ(r.steps.size(), 40u);
  EXPECT_EQ(r.steps[39].step, 40);
  EXPECT_GT(r.steps[0].rss_bytes, 600LL << 20);
  ASSERT_EQ(r.evals.size(), 4u);
  EXPECT_EQ(r.evals[0].metrics[0].first, "loss");  // loss first, then the rest
  ASSERT_TRUE(r.summary.present);
  EXPECT_EQ(r.summary.best_step, 40);
  EXPECT_EQ(r.summary.trainable_params, 294912);
  EXPECT_EQ(r.summary.config_value("adapter.r"), "8");
  EXPECT_EQ(r.summary.config_value("adapter.target_modules"), "[\"query\",\"value\"]");
  EXPECT_EQ(r.summary.config_value("model"), "models/all-MiniLM-L6-v2");
  fs::remove_all(work);
}

// A run resumed from an older checkpoint logs steps again: the later records replace the earlier
// ones from that step on, and only the last summary counts.
TEST(ReportLog, AResumedLogReplacesTheRedoneSteps) {
  auto work = temp_dir("resume");
  std::string s;
  auto step = [](int i, double loss) {
    return io::json{{"type", "step"}, {"step", i}, {"loss", loss}, {"elapsed_s", i * 1.0}}.dump() +
           "\n";
  };
  for (int i = 1; i <= 4; ++i) s += step(i, 1.0);
  s += io::json{{"type", "eval"}, {"step", 4}, {"loss", 0.9}}.dump() + "\n";
  s += io::json{{"type", "summary"}, {"status", "interrupted"}, {"steps", 4}, {"seconds", 4.0}}
           .dump() +
       "\n";
  for (int i = 3; i <= 6; ++i) s += step(i, 0.5);
  s +=
      io::json{{"type", "summary"}, {"status", "finished"}, {"steps", 6}, {"seconds", 7.0}}.dump() +
      "\n";
  write(work / "log.jsonl", s);
  RunLog r = read_run_log((work / "log.jsonl").string());
  ASSERT_EQ(r.steps.size(), 6u);
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(r.steps[i].step, i + 1);
    EXPECT_EQ(r.steps[i].loss, i < 2 ? 1.0 : 0.5) << i;
  }
  EXPECT_TRUE(r.evals.empty());  // the eval at step 4 was redone away
  EXPECT_TRUE(r.summary.present);
  EXPECT_FALSE(r.summary.interrupted);
  EXPECT_EQ(r.summary.steps, 6);
  EXPECT_EQ(r.steps[0].rss_bytes, -1);  // an older log without memory: unknown, not 0
  fs::remove_all(work);
}

TEST(ReportLog, ErrorsNameTheFileAndLine) {
  auto work = temp_dir("errors");
  const std::string ok = R"({"type": "step", "step": 1, "loss": 0.5})";
  const std::string p = (work / "log.jsonl").string();
  write(p, ok + "\n" + ok + "\n{\"type\": \"step\", \"step\": 2, \n");
  expect_error([&] { read_run_log(p); }, {p + ":3:", "not a JSON line"});
  write(p, ok + "\n[1, 2]\n");
  expect_error([&] { read_run_log(p); }, {p + ":2:", "expected a JSON object"});
  write(p, ok + "\n{\"step\": 2}\n");
  expect_error([&] { read_run_log(p); }, {p + ":2:", "without a \"type\""});
  write(p, ok + "\n\n{\"type\": \"step\", \"step\": 2, \"loss\": \"high\"}\n");
  expect_error([&] { read_run_log(p); }, {p + ":3:", "\"loss\" is \"high\", expected a number"});
  write(p, "{\"type\": \"eval\", \"loss\": 0.3}\n");
  expect_error([&] { read_run_log(p); }, {p + ":1:", "no \"step\""});
  write(p, "{\"type\": \"step\", \"step\": 1.5, \"loss\": 0.3}\n");
  expect_error([&] { read_run_log(p); }, {p + ":1:", "\"step\" is 1.5, expected an integer"});
  write(p, R"({"type": "summary", "steps": 1, "seconds": 2, "config": [1]})"
           "\n");
  expect_error([&] { read_run_log(p); }, {p + ":1:", "\"config\"", "expected an object"});
  // A NaN loss is logged as null: read as NaN, not refused.
  write(p, R"({"type": "step", "step": 1, "loss": null})"
           "\n");
  EXPECT_TRUE(std::isnan(read_run_log(p).steps.at(0).loss));
  fs::create_directories(work / "empty_run");
  expect_error([&] { read_run_dir((work / "empty_run").string()); },
               {(work / "empty_run").string(), "not a run folder (no log.jsonl in it)"});
  expect_error([&] { read_run_dir((work / "missing").string()); },
               {(work / "missing").string(), "no such run folder"});
  fs::remove_all(work);
}

// ---- page content -----------------------------------------------------------------------------

TEST(ReportHtml, OneRunShowsHeaderBestEvaluationAndConfigAsTables) {
  auto work = temp_dir("one");
  fs::create_directories(work / "run");
  write(work / "run/log.jsonl", synthetic_log(40, 3e-3, 0.0, 1));
  RunLog r = read_run_dir((work / "run").string());
  const std::string h = report_html({r});
  // Header: model, method, trainable count and share, wall time, peak memory.
  EXPECT_NE(h.find("<title>lorafit run: all-MiniLM-L6-v2 · lora</title>"), std::string::npos);
  EXPECT_NE(h.find("<div class='v'>294,912</div><div class='x'>1.298% of 22,713,216</div>"),
            std::string::npos);
  EXPECT_NE(h.find("trainable parameters"), std::string::npos);
  const int64_t peak = (610LL << 20) + 40 * (1LL << 20);
  char mem[64];
  std::snprintf(mem, sizeof mem, "<div class='v'>%.0f MiB</div>",
                static_cast<double>(peak) / 1048576.0);
  EXPECT_NE(h.find(mem), std::string::npos) << mem;
  // The best evaluation as rows of a table, with the values of the best eval record.
  const auto& best = r.summary.best;
  ASSERT_EQ(best.size(), 5u);
  // (Here the best is the last evaluation, step 40: both columns hold its values.)
  EXPECT_NE(h.find("<tr><th>metric</th><th>best</th><th>last</th></tr>"), std::string::npos);
  EXPECT_NE(h.find("<tr><td>step</td><td class='n'>40</td><td class='n'>40</td></tr>"),
            std::string::npos);
  for (auto& [k, v] : best) {
    char row[200];
    if (k == "n")
      std::snprintf(row, sizeof row,
                    "<tr><td>examples</td><td class='n'>%.0f</td><td class='n'>%.0f</td></tr>", v,
                    v);
    else
      std::snprintf(row, sizeof row, "<td class='n'>%.4f</td><td class='n'>%.4f</td></tr>", v, v);
    EXPECT_NE(h.find(row), std::string::npos) << row;
  }
  // A best that is not the last: the two columns differ.
  RunLog r2 = r;
  r2.summary.best_step = 20;
  r2.summary.best = {{"loss", 0.25}, {"accuracy", 0.9375}};
  const std::string h2 = report_html({r2});
  char row[200];
  std::snprintf(row, sizeof row,
                "<tr><td>accuracy</td><td class='n'>0.9375</td><td class='n'>%.4f</td></tr>",
                r.evals.back().metrics[1].second);
  EXPECT_NE(h2.find(row), std::string::npos) << row;
  EXPECT_NE(h.find("<tr><td>F1</td>"), std::string::npos);
  EXPECT_EQ(h.find("{\"accuracy\""), std::string::npos);  // no raw JSON
  // The configuration as a table, nested keys dotted.
  EXPECT_NE(h.find("<tr><td>adapter.lora_alpha</td><td>16</td></tr>"), std::string::npos);
  EXPECT_NE(h.find("<tr><td>schedule</td><td>linear</td></tr>"), std::string::npos);
  // Charts: inline SVG, the evaluation loss on the training loss's axes, memory and throughput.
  EXPECT_GE(std::count(h.begin(), h.end(), '\n'), 1);
  size_t charts = 0;
  for (size_t p = 0; (p = h.find("<svg class='chart'", p)) != std::string::npos; ++p) ++charts;
  EXPECT_EQ(charts, 6u);
  const auto loss_chart =
      h.substr(h.find("aria-label='Loss'"),
               h.find("</svg>", h.find("aria-label='Loss'")) - h.find("aria-label='Loss'"));
  EXPECT_NE(loss_chart.find(">training (smoothed"), std::string::npos);
  EXPECT_NE(loss_chart.find(">evaluation</text>"), std::string::npos);
  EXPECT_NE(loss_chart.find("stroke='#f28e2b'"), std::string::npos);  // eval in its own colour
  EXPECT_NE(h.find("aria-label='Memory (resident)'"), std::string::npos);
  EXPECT_NE(h.find("aria-label='Throughput'"), std::string::npos);
  // Self-contained: no script, nothing fetched.
  EXPECT_EQ(h.find("<script"), std::string::npos);
  EXPECT_EQ(h.find("src="), std::string::npos);
  EXPECT_EQ(h.find("href="), std::string::npos);
  fs::remove_all(work);
}

TEST(ReportHtml, SeveralRunsSideBySideWithDifferencesMarked) {
  auto work = temp_dir("cmp");
  fs::create_directories(work / "lr3e-3");
  fs::create_directories(work / "lr1e-3");
  write(work / "lr3e-3/log.jsonl", synthetic_log(40, 3e-3, 0.05, 1));
  write(work / "lr1e-3/log.jsonl", synthetic_log(40, 1e-3, 0.0, 2));
  std::vector<RunLog> runs = {read_run_dir((work / "lr3e-3").string()),
                              read_run_dir((work / "lr1e-3").string())};
  const std::string h = report_html(runs);
  EXPECT_NE(h.find("<title>lorafit: 2 runs compared</title>"), std::string::npos);
  // Each curve chart names both runs in its legend.
  const auto acc = h.find("aria-label='Evaluation accuracy'");
  ASSERT_NE(acc, std::string::npos);
  const auto chart = h.substr(acc, h.find("</svg>", acc) - acc);
  EXPECT_NE(chart.find("class='lg'>lr3e-3</text>"), std::string::npos);
  EXPECT_NE(chart.find("class='lg'>lr1e-3</text>"), std::string::npos);
  // Best evaluations: one row per run, the higher accuracy in bold.
  char cell[96];
  std::snprintf(cell, sizeof cell, "<td class='n best'>%.4f</td>", runs[0].summary.best[1].second);
  ASSERT_EQ(runs[0].summary.best[1].first, "accuracy");
  EXPECT_NE(h.find(cell), std::string::npos) << cell;
  std::snprintf(cell, sizeof cell, "<td class='n'>%.4f</td>", runs[1].summary.best[1].second);
  EXPECT_NE(h.find(cell), std::string::npos) << cell;
  // Configurations side by side: lr differs (marked, listed first), batch-size does not.
  EXPECT_NE(h.find("<tr class='diff'><td>lr</td><td>0.003</td><td>0.001</td></tr>"),
            std::string::npos);
  EXPECT_NE(h.find("<tr><td>batch_size</td><td>16</td><td>16</td></tr>"), std::string::npos);
  EXPECT_NE(h.find("1 of 10 settings differ: lr"), std::string::npos);
  EXPECT_LT(h.find("<td>lr</td>"), h.find("<td>batch_size</td>"));
  fs::remove_all(work);
}

// A run that has not ended (or was killed) has no summary record: the page says so, is named
// after the folder, and its best evaluation comes from the eval records by the trainer's rule.
TEST(ReportHtml, ARunWithoutSummaryStillShowsItsBestEvaluation) {
  auto work = temp_dir("nosummary");
  fs::create_directories(work / "crashed");
  std::string log = synthetic_log(40, 3e-3, 0.0, 1);
  log.erase(log.rfind("{\"best\""));  // the summary is the last line
  write(work / "crashed/log.jsonl", log);
  RunLog r = read_run_dir((work / "crashed").string());
  ASSERT_FALSE(r.summary.present);
  ASSERT_EQ(r.evals.size(), 4u);
  const std::string h = report_html({r});
  EXPECT_NE(h.find("<title>lorafit run: crashed</title>"), std::string::npos);
  EXPECT_NE(h.find("not finished (no summary record)"), std::string::npos);
  // Accuracy rises in this log, so the best is the last evaluation, step 40.
  EXPECT_NE(h.find("<tr><td>step</td><td class='n'>40</td><td class='n'>40</td></tr>"),
            std::string::npos);
  char row[120];
  std::snprintf(row, sizeof row, "<tr><td>accuracy</td><td class='n'>%.4f</td>",
                r.evals[3].metrics[1].second);
  EXPECT_NE(h.find(row), std::string::npos) << row;
  fs::remove_all(work);
}

// A long run: each curve is thinned to the chart's pixel columns (lowest and highest point of
// each), so the page stays small; the lowest training loss is still drawn.
TEST(ReportHtml, ALongRunStaysSmall) {
  auto work = temp_dir("long");
  fs::create_directories(work / "run");
  write(work / "run/log.jsonl", synthetic_log(20000, 3e-3, 0.0, 6));
  RunLog r = read_run_dir((work / "run").string());
  ASSERT_EQ(r.steps.size(), 20000u);
  const std::string h = report_html({r});
  EXPECT_LT(h.size(), 400u * 1024)
      << "20,000 steps should not make a page of " << h.size() << " bytes";
  // The raw loss curve of the loss chart: its lowest point is the lowest loss of the log.
  const auto c = h.find("aria-label='Loss'");
  const auto poly = h.find("<polyline", c);
  const std::string pts =
      h.substr(h.find("points='", poly) + 8, h.find("'/>", poly) - h.find("points='", poly) - 8);
  double max_y = -1;  // SVG y grows downwards: the lowest loss has the largest y
  size_t n = 0;
  for (size_t p = 0; p < pts.size();) {
    const size_t comma = pts.find(',', p), sp = pts.find(' ', comma);
    max_y = std::max(max_y, std::stod(pts.substr(comma + 1, sp - comma - 1)));
    ++n;
    p = sp + 1;
  }
  EXPECT_LE(n, 2u * 462);  // at most two points a pixel column
  EXPECT_GT(n, 400u);
  // Where the lowest loss belongs: the axis path is M<left> <top>V<bottom>, the y ticks span the
  // raw loss's range (the smoothed and evaluation losses lie inside it here).
  const auto axis = h.find("<path d='M62 ", c) + std::strlen("<path d='M62 ");
  const double top = std::stod(h.substr(axis)), bottom = std::stod(h.substr(h.find('V', axis) + 1));
  double lo = INFINITY, hi = -INFINITY;
  for (auto& s : r.steps) lo = std::min(lo, s.loss), hi = std::max(hi, s.loss);
  const AxisTicks ty = nice_ticks(lo, hi);
  const double expected = top + (1 - (lo - ty.lo) / (ty.hi - ty.lo)) * (bottom - top);
  EXPECT_NEAR(max_y, expected, 0.06);
  fs::remove_all(work);
}

// ---- the command ------------------------------------------------------------------------------

TEST(ReportCli, WritesTheComparisonAndRefusesBadInput) {
  auto work = temp_dir("cli");
  fs::create_directories(work / "a");
  fs::create_directories(work / "b");
  write(work / "a/log.jsonl", synthetic_log(20, 3e-3, 0.0, 3));
  write(work / "b/log.jsonl", synthetic_log(20, 1e-3, 0.0, 4));
  const std::string bin = LORAFIT_BINARY;
  const fs::path err = work / "err.txt";
  const std::string out = (work / "cmp.html").string();
  ASSERT_EQ(run_quiet(bin + " report " + (work / "a").string() + " " + (work / "b").string() +
                          " --output " + out,
                      err),
            0)
      << io::read_file(err.string());
  const std::string h = io::read_file(out);
  EXPECT_NE(h.find("2 runs compared"), std::string::npos);
  EXPECT_NE(h.find("<tr class='diff'><td>lr</td>"), std::string::npos);
  EXPECT_FALSE(fs::exists(out + ".tmp"));
  // One run, --output=FILE form: that run's own page.
  ASSERT_EQ(run_quiet(bin + " report " + (work / "a").string() + " --output=" + out, err), 0);
  EXPECT_NE(io::read_file(out).find("lorafit run: all-MiniLM-L6-v2"), std::string::npos);
  // Errors name the flag, the folder, the file and line.
  EXPECT_EQ(run_quiet(bin + " report " + (work / "a").string() + " --bogus", err), 1);
  EXPECT_NE(io::read_file(err.string()).find("unknown option '--bogus'"), std::string::npos)
      << io::read_file(err.string());
  EXPECT_EQ(run_quiet(bin + " report " + (work / "a").string() + " --output", err), 1);
  EXPECT_NE(io::read_file(err.string()).find("--output needs a value"), std::string::npos)
      << io::read_file(err.string());
  EXPECT_EQ(run_quiet(bin + " report", err), 1);
  EXPECT_NE(io::read_file(err.string()).find("no RUN_DIR given"), std::string::npos);
  fs::create_directories(work / "c");
  EXPECT_EQ(run_quiet(bin + " report " + (work / "a").string() + " " + (work / "c").string() +
                          " --output " + out,
                      err),
            1);
  EXPECT_NE(io::read_file(err.string())
                .find((work / "c").string() + ": not a run folder (no log.jsonl in it)"),
            std::string::npos)
      << io::read_file(err.string());
  write(work / "c/log.jsonl", "{\"type\": \"step\", \"step\": 1, \"loss\": 0.5}\nnot json\n");
  EXPECT_EQ(run_quiet(bin + " report " + (work / "c").string() + " --output " + out, err), 1);
  EXPECT_NE(
      io::read_file(err.string()).find((work / "c/log.jsonl").string() + ":2: not a JSON line"),
      std::string::npos)
      << io::read_file(err.string());
  EXPECT_EQ(run_quiet(bin + " report --help", err), 0);
  fs::remove_all(work);
}

// ---- rendered by a browser --------------------------------------------------------------------

namespace {

struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // row-major, 3 bytes a pixel
};

Image read_png(const std::string& path) {
  png_image img{};
  img.version = PNG_IMAGE_VERSION;
  Image out;
  if (!png_image_begin_read_from_file(&img, path.c_str())) {
    ADD_FAILURE() << path << ": not a PNG (" << img.message << ")";
    return out;
  }
  img.format = PNG_FORMAT_RGB;
  out.width = static_cast<int>(img.width), out.height = static_cast<int>(img.height);
  out.rgb.resize(PNG_IMAGE_SIZE(img));
  if (!png_image_finish_read(&img, nullptr, out.rgb.data(), 0, nullptr))
    ADD_FAILURE() << path << ": " << img.message;
  png_image_free(&img);
  return out;
}

size_t count_color(const Image& im, uint8_t r, uint8_t g, uint8_t b, int tol = 6) {
  size_t n = 0;
  for (size_t i = 0; i + 2 < im.rgb.size(); i += 3)
    if (std::abs(im.rgb[i] - r) <= tol && std::abs(im.rgb[i + 1] - g) <= tol &&
        std::abs(im.rgb[i + 2] - b) <= tol)
      ++n;
  return n;
}

std::string chromium_binary() {
  for (const char* c : {"chromium", "chromium-browser"}) {
    const std::string cmd = std::string("command -v ") + c + " > /dev/null 2>&1";
    if (std::system(cmd.c_str()) == 0) return c;
  }
  return "";
}

// Renders file://html into png with headless Chromium, window 1200 x 2000.
void screenshot(const fs::path& html, const fs::path& png, const fs::path& work) {
  const std::string chrome = chromium_binary();
  ASSERT_FALSE(chrome.empty())
      << "headless Chromium is needed (Debian package chromium; scripts/setup.sh "
         "installs it with the test dependencies)";
  const std::string cmd =
      chrome + " --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir=" +
      (work / "profile").string() + " --screenshot=" + png.string() +
      " --window-size=1200,2000 file://" + html.string() + " > " +
      (work / "chromium.log").string() + " 2>&1";
  const int rc = std::system(cmd.c_str());
  ASSERT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == 0)
      << cmd << "\n"
      << io::read_file((work / "chromium.log").string());
  ASSERT_TRUE(fs::exists(png)) << io::read_file((work / "chromium.log").string());
}

}  // namespace

// The page as a browser draws it: not blank, and the charts' colours are on screen (the training
// loss's blue, the evaluation loss's orange, the memory curve's purple), as are the table rows
// (Chromium's DOM has the best-evaluation table).
TEST(ReportBrowser, ChromiumRendersTheChartsAndTables) {
  auto work = temp_dir("chromium");
  fs::create_directories(work / "run");
  write(work / "run/log.jsonl", synthetic_log(60, 3e-3, 0.0, 5));
  const fs::path html = work / "report.html", png = work / "report.png";
  write_report_html(html.string(), {read_run_dir((work / "run").string())});
  screenshot(html, png, work);
  const Image im = read_png(png.string());
  ASSERT_EQ(im.width, 1200);
  ASSERT_EQ(im.height, 2000);
  double mean = 0, var = 0;
  for (uint8_t v : im.rgb) mean += v;
  mean /= static_cast<double>(im.rgb.size());
  for (uint8_t v : im.rgb) var += (v - mean) * (v - mean);
  var /= static_cast<double>(im.rgb.size());
  EXPECT_GT(var, 200.0) << "the screenshot is (nearly) uniform: mean " << mean;
  EXPECT_GT(count_color(im, 0x4e, 0x79, 0xa7), 300u) << "training loss (blue) not drawn";
  EXPECT_GT(count_color(im, 0xf2, 0x8e, 0x2b), 150u) << "evaluation loss (orange) not drawn";
  EXPECT_GT(count_color(im, 0xb0, 0x7a, 0xa1), 150u) << "memory curve (purple) not drawn";
  // The DOM as Chromium parsed it: the charts and the rows of the best-evaluation table.
  const std::string cmd =
      chromium_binary() +
      " --headless --no-sandbox --disable-gpu --user-data-dir=" + (work / "profile").string() +
      " --dump-dom file://" + html.string() + " > " + (work / "dom.html").string() + " 2> " +
      (work / "chromium.log").string();
  ASSERT_EQ(std::system(cmd.c_str()), 0) << io::read_file((work / "chromium.log").string());
  const std::string dom = io::read_file((work / "dom.html").string());
  size_t svgs = 0, polylines = 0;
  for (size_t p = 0; (p = dom.find("<svg", p)) != std::string::npos; ++p) ++svgs;
  for (size_t p = 0; (p = dom.find("<polyline", p)) != std::string::npos; ++p) ++polylines;
  EXPECT_EQ(svgs, 6u);
  EXPECT_GE(polylines, 9u);
  EXPECT_NE(dom.find("<tr><td>accuracy</td><td class=\"n\">"), std::string::npos);
  fs::remove_all(work);
}
