// Run state (checkpoint JSON) and the JSONL log with the console display (report.cpp renders it).
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <fstream>
#include <sstream>

#include "train_internal.h"

namespace lorafit::train {

io::json RunState::to_json() const {
  return io::json{{"step", step},
                  {"epoch", epoch},
                  {"batch_in_epoch", batch_pos},
                  {"total_steps", total_steps},
                  {"warmup_steps", warmup_steps},
                  {"tokens", tokens},
                  {"seconds", seconds},
                  {"rng", {{"note", "shuffle seed + epoch; dropout counter = micro-batch << 32"}}},
                  {"best", has_best ? io::json{{"score", best_score}, {"step", best_step},
                                               {"eval", best_eval}}
                                    : io::json(nullptr)}};
}

void RunState::from_json(const io::json& j, const std::string& origin) {
  step = io::json_int(j, "step", origin);
  epoch = io::json_int(j, "epoch", origin);
  batch_pos = io::json_int(j, "batch_in_epoch", origin);
  total_steps = io::json_int(j, "total_steps", origin);
  warmup_steps = io::json_int(j, "warmup_steps", origin);
  tokens = io::json_int(j, "tokens", origin, 0);
  seconds = io::json_number(j, "seconds", origin, 0.0);
  if (io::json_has(j, "best")) {
    const auto& b = j["best"];
    has_best = true;
    best_score = io::json_number(b, "score", origin + ": best");
    best_step = io::json_int(b, "step", origin + ": best");
    best_eval = b.value("eval", io::json::object());
  }
}

void load_checkpoint(const std::string& dir, const nn::NamedParameters& params, AdamW& adam,
                     RunState& st) {
  const std::string sp = dir + "/trainer_state.json";
  check(io::file_exists(sp), "train", dir + ": not a lorafit checkpoint (no trainer_state.json)");
  st.from_json(io::read_json_file(sp), sp);
  load_parameters(dir + "/trainable.safetensors", params);
  auto f = io::SafetensorsFile::open(dir + "/optimizer.safetensors");
  std::map<std::string, Tensor> m;
  for (auto& n : f.names()) m[n] = f.get(n).clone();
  adam.load_state(m, dir + "/optimizer.safetensors");
  check(adam.steps() == st.step, "train", dir + ": optimizer step and trainer_state.json disagree");
}

Logger::Logger(const std::string& path, bool append, const TrainOptions& opt, int64_t total)
    : tty_(opt.progress_bar && isatty(2)), quiet_(opt.quiet), log_every_(std::max<int64_t>(1, opt.log_every)),
      total_(total) {
  f_ = std::fopen(path.c_str(), append ? "a" : "w");
  check(f_ != nullptr, "train", path + ": cannot open the run log for writing");
}

Logger::~Logger() {
  if (f_) std::fclose(f_);
}

void Logger::step(int64_t step, double loss, float lr, double gnorm, int64_t tokens, double tps,
                  double elapsed, double eta, int64_t epoch) {
  // Memory per line (current and peak resident), for the report's memory-over-time chart. The
  // kernel's maxrss lags the resident count by a few pages, so the peak is at least the current.
  const int64_t rss = current_rss_bytes(), peak = std::max(rss, peak_rss_bytes());
  io::json j = {{"type", "step"},
                {"step", step},
                {"loss", loss},
                {"lr", lr},
                {"grad_norm", gnorm},
                {"tokens", tokens},
                {"tokens_per_s", tps},
                {"elapsed_s", elapsed},
                {"epoch", epoch},
                {"rss_bytes", rss},
                {"peak_rss_bytes", peak}};
  std::fprintf(f_, "%s\n", j.dump().c_str());
  std::fflush(f_);
  loss_avg_ += loss;
  ++loss_n_;
  if (quiet_) return;
  char buf[256];
  if (tty_) {
    const int width = 24;
    const int fill = static_cast<int>(width * step / std::max<int64_t>(1, total_));
    std::string bar(static_cast<size_t>(fill), '#');
    bar.resize(width, '.');
    auto t = static_cast<int64_t>(eta);
    std::snprintf(buf, sizeof buf, "\r[%s] %lld/%lld loss %.4f lr %.2e %.0f tok/s ETA %lld:%02lld  ",
                  bar.c_str(), static_cast<long long>(step), static_cast<long long>(total_), loss, lr,
                  tps, static_cast<long long>(t / 60), static_cast<long long>(t % 60));
    std::fputs(buf, stderr);
    bar_shown_ = true;
  } else if (step % log_every_ == 0 || step == total_) {
    auto t = static_cast<int64_t>(eta);
    std::snprintf(buf, sizeof buf,
                  "step %lld/%lld  loss %.4f (avg %.4f)  lr %.2e  grad_norm %.3f  %.0f tok/s  "
                  "elapsed %.0fs  ETA %lld:%02lld\n",
                  static_cast<long long>(step), static_cast<long long>(total_), loss,
                  loss_avg_ / static_cast<double>(loss_n_), lr, gnorm, tps, elapsed,
                  static_cast<long long>(t / 60), static_cast<long long>(t % 60));
    std::fputs(buf, stderr);
    loss_avg_ = 0;
    loss_n_ = 0;
  }
}

void Logger::eval(int64_t step, const io::json& metrics) {
  io::json j = {{"type", "eval"}, {"step", step}};
  j.update(metrics);
  std::fprintf(f_, "%s\n", j.dump().c_str());
  std::fflush(f_);
  if (quiet_) return;
  clear_line();
  std::string s = "eval @ step " + std::to_string(step) + ":";
  for (auto it = metrics.begin(); it != metrics.end(); ++it) {
    char b[64];
    if (it.value().is_number_float()) std::snprintf(b, sizeof b, " %s %.4f", it.key().c_str(), it.value().get<double>());
    else std::snprintf(b, sizeof b, " %s %s", it.key().c_str(), it.value().dump().c_str());
    s += b;
  }
  std::fprintf(stderr, "%s\n", s.c_str());
}

void Logger::summary(const ReportInfo& info) {
  std::time_t now = std::time(nullptr);
  char tbuf[64];
  std::strftime(tbuf, sizeof tbuf, "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&now));
  io::json config = io::json::object();
  if (!info.config_json.empty()) config = io::json::parse(info.config_json);
  io::json best = nullptr;
  if (info.best.is_object() && !info.best.empty())
    best = io::json{{"step", info.best_step}, {"eval", info.best}};
  io::json j = {{"type", "summary"},
                {"status", info.interrupted ? "interrupted" : "finished"},
                {"finished_utc", tbuf},
                {"steps", info.steps},
                {"total_steps", info.total_steps},
                {"seconds", info.seconds},
                {"tokens_per_second", info.tokens_per_second},
                {"peak_rss_bytes", info.peak_rss},
                {"trainable_params", info.trainable},
                {"total_params", info.total_params},
                {"lm", info.lm},
                {"best", best},
                {"config", config}};
  std::fprintf(f_, "%s\n", j.dump().c_str());
  std::fflush(f_);
}

int64_t current_rss_bytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return -1;
  long long pages = 0, resident = 0;
  const int n = std::fscanf(f, "%lld %lld", &pages, &resident);
  std::fclose(f);
  return n == 2 ? resident * static_cast<long long>(sysconf(_SC_PAGESIZE)) : -1;
}

void Logger::note(const std::string& s) {
  clear_line();
  if (!quiet_) std::fprintf(stderr, "%s\n", s.c_str());
}

void Logger::clear_line() {
  if (bar_shown_) {
    std::fputs("\n", stderr);
    bar_shown_ = false;
  }
}

}  // namespace lorafit::train
