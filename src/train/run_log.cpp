// Run state (checkpoint JSON), the JSONL log with the console display, and report.html.
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
  io::json j = {{"type", "step"},  {"step", step},       {"loss", loss},   {"lr", lr},
                {"grad_norm", gnorm}, {"tokens", tokens}, {"tokens_per_s", tps},
                {"elapsed_s", elapsed}, {"epoch", epoch}};
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

namespace {

std::string html_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '&': o += "&amp;"; break;
      case '"': o += "&quot;"; break;
      default: o += c;
    }
  }
  return o;
}

// A line chart as inline SVG: x = step, one or more series.
std::string svg_chart(const std::string& title,
                      const std::vector<std::pair<std::string, std::vector<std::pair<double, double>>>>& series) {
  const double W = 640, H = 260, L = 60, R = 20, T = 30, B = 40;
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  for (auto& [n, pts] : series)
    for (auto [x, y] : pts) {
      if (!std::isfinite(y)) continue;
      x0 = std::min(x0, x); x1 = std::max(x1, x);
      y0 = std::min(y0, y); y1 = std::max(y1, y);
    }
  std::ostringstream o;
  o << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H
    << "' style='background:#fff;border:1px solid #ddd'>";
  o << "<text x='" << L << "' y='18' font-size='14' font-family='sans-serif'>" << html_escape(title) << "</text>";
  if (x0 > x1) {
    o << "<text x='" << L << "' y='" << H / 2 << "' font-size='12'>no data</text></svg>";
    return o.str();
  }
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) { y1 += 0.5; y0 -= 0.5; }
  auto px = [&](double x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
  auto py = [&](double y) { return T + (1 - (y - y0) / (y1 - y0)) * (H - T - B); };
  o << "<rect x='" << L << "' y='" << T << "' width='" << W - L - R << "' height='" << H - T - B
    << "' fill='none' stroke='#999'/>";
  char buf[64];
  for (int i = 0; i <= 4; ++i) {
    double y = y0 + (y1 - y0) * i / 4;
    std::snprintf(buf, sizeof buf, "%.4g", y);
    o << "<text x='" << L - 4 << "' y='" << py(y) + 4 << "' font-size='10' text-anchor='end'>" << buf << "</text>";
    double x = x0 + (x1 - x0) * i / 4;
    std::snprintf(buf, sizeof buf, "%.0f", x);
    o << "<text x='" << px(x) << "' y='" << H - B + 14 << "' font-size='10' text-anchor='middle'>" << buf << "</text>";
  }
  o << "<text x='" << (W + L) / 2 << "' y='" << H - 8 << "' font-size='11' text-anchor='middle'>step</text>";
  const char* colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd"};
  int ci = 0;
  for (auto& [name, pts] : series) {
    const char* col = colors[ci % 4];
    o << "<polyline fill='none' stroke='" << col << "' stroke-width='1.5' points='";
    for (auto [x, y] : pts)
      if (std::isfinite(y)) o << px(x) << "," << py(y) << " ";
    o << "'/>";
    if (pts.size() <= 40)
      for (auto [x, y] : pts)
        if (std::isfinite(y)) o << "<circle cx='" << px(x) << "' cy='" << py(y) << "' r='2.5' fill='" << col << "'/>";
    o << "<text x='" << W - R - 4 << "' y='" << T + 14 + 14 * ci << "' font-size='11' text-anchor='end' fill='"
      << col << "'>" << html_escape(name) << "</text>";
    ++ci;
  }
  o << "</svg>";
  return o.str();
}

}  // namespace

void write_report(const std::string& path, const std::string& log_path, const ReportInfo& info) {
  std::vector<std::pair<double, double>> loss, loss_smooth, lr;
  std::map<std::string, std::vector<std::pair<double, double>>> evals;
  std::ifstream in(log_path);
  std::string line;
  double ema = NAN;
  while (std::getline(in, line)) {
    io::json j;
    try {
      j = io::json::parse(line);
    } catch (...) {
      continue;
    }
    const auto step = static_cast<double>(j.value("step", 0));
    if (j.value("type", "") == "step") {
      const double l = j.value("loss", NAN);
      ema = std::isnan(ema) ? l : 0.95 * ema + 0.05 * l;
      loss.emplace_back(step, l);
      loss_smooth.emplace_back(step, ema);
      lr.emplace_back(step, j.value("lr", 0.0));
    } else if (j.value("type", "") == "eval") {
      for (auto it = j.begin(); it != j.end(); ++it)
        if (it.key() != "type" && it.key() != "step" && it.key() != "n" && it.value().is_number())
          evals[it.key()].emplace_back(step, it.value().get<double>());
    }
  }
  std::ostringstream o;
  o << "<!doctype html><html><head><meta charset='utf-8'><title>" << html_escape(info.title)
    << "</title><style>body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}"
       "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
       "pre{background:#f6f6f6;padding:1em;overflow:auto}</style></head><body>";
  o << "<h1>" << html_escape(info.title) << "</h1>";
  std::time_t now = std::time(nullptr);
  char tbuf[64];
  std::strftime(tbuf, sizeof tbuf, "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&now));
  auto pct = info.total_params > 0 ? 100.0 * static_cast<double>(info.trainable) / static_cast<double>(info.total_params) : 0.0;
  char buf[512];
  o << "<table>";
  std::snprintf(buf, sizeof buf, "<tr><th>finished</th><td>%s</td></tr><tr><th>steps</th><td>%lld of %lld</td></tr>",
                tbuf, static_cast<long long>(info.steps), static_cast<long long>(info.total_steps));
  o << buf;
  std::snprintf(buf, sizeof buf,
                "<tr><th>trainable parameters</th><td>%lld of %lld (%.3f%%)</td></tr>"
                "<tr><th>training time</th><td>%.1f s</td></tr><tr><th>throughput</th><td>%.0f tokens/s</td></tr>"
                "<tr><th>peak memory (maxrss)</th><td>%.1f MiB</td></tr>",
                static_cast<long long>(info.trainable), static_cast<long long>(info.total_params), pct,
                info.seconds, info.tokens_per_second, static_cast<double>(info.peak_rss) / (1024.0 * 1024.0));
  o << buf;
  if (!info.best.is_null() && !info.best.empty())
    o << "<tr><th>best evaluation (step " << info.best_step << ")</th><td>" << html_escape(info.best.dump()) << "</td></tr>";
  o << "</table>";
  o << "<h2>Training loss</h2>" << svg_chart("loss per step (raw and EMA 0.95)", {{"loss", loss}, {"ema", loss_smooth}});
  o << "<h2>Learning rate</h2>" << svg_chart("lr", {{"lr", lr}});
  o << "<h2>Evaluation</h2>";
  if (evals.empty()) o << "<p>No evaluation was run.</p>";
  for (auto& [name, pts] : evals) o << svg_chart(name, {{name, pts}}) << "<br>";
  o << "<h2>Configuration</h2><pre>";
  try {
    o << html_escape(io::json::parse(info.config_json.empty() ? "{}" : info.config_json).dump(2));
  } catch (...) {
    o << html_escape(info.config_json);
  }
  o << "</pre></body></html>\n";
  io::write_file_atomic(path, o.str());
}

}  // namespace lorafit::train
