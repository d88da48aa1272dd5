// report.html: a run's log.jsonl (or several runs' logs) as one self-contained page. Charts are
// inline SVG drawn here, styles are inline CSS; there is no script and nothing is fetched, so the
// page works offline and prints as it shows.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "train_internal.h"

namespace lorafit::train {

namespace fs = std::filesystem;

// ---- axis ticks -------------------------------------------------------------------------------

namespace {

// The shortest text that reads back as v (to a small fraction of the tick step): "0.25", "40",
// "1e12", "-2.5e-7". Fixed notation for ordinary magnitudes, exponent notation for the rest.
std::string tick_label(double v, double step) {
  if (v == 0) return "0";
  const double a = std::abs(v);
  const bool fixed = step >= 1e-4 && a < 1e7;
  char buf[64];
  if (fixed) {
    const int decimals = std::max(0, static_cast<int>(std::ceil(-std::log10(step) - 1e-9)));
    for (int d = 0; d <= decimals + 1; ++d) {
      std::snprintf(buf, sizeof buf, "%.*f", d, v);
      if (std::abs(std::strtod(buf, nullptr) - v) <= step * 1e-6) break;
    }
    return buf;
  }
  for (int p = 1; p <= 17; ++p) {
    std::snprintf(buf, sizeof buf, "%.*e", p - 1, v);
    if (std::abs(std::strtod(buf, nullptr) - v) <= step * 1e-6) break;
  }
  // "2.5e-07" -> "2.5e-7", "1e+12" -> "1e12"
  std::string s = buf;
  const auto e = s.find('e');
  std::string mant = s.substr(0, e), ex = s.substr(e + 1);
  const bool neg = ex[0] == '-';
  ex = ex.substr(ex[0] == '-' || ex[0] == '+' ? 1 : 0);
  while (ex.size() > 1 && ex[0] == '0') ex.erase(0, 1);
  return mant + "e" + (neg ? "-" : "") + ex;
}

}  // namespace

AxisTicks nice_ticks(double lo, double hi, int max_intervals) {
  AxisTicks t;
  max_intervals = std::max(1, max_intervals);
  if (!std::isfinite(lo) || !std::isfinite(hi) || !std::isfinite(hi - lo)) lo = 0, hi = 1;
  if (lo > hi) std::swap(lo, hi);
  // Values that differ only in their last digits (a metric that does not move) are one value:
  // steps finer than that would not even be representable.
  if (hi - lo <= 1e-12 * std::max(std::abs(lo), std::abs(hi))) lo = hi = (lo + hi) / 2;
  if (lo == hi) {  // a single value: a span of 10% around it (or [-1, 1] around 0)
    const double d = lo == 0 ? 1.0 : std::abs(lo) * 0.1;
    lo -= d;
    hi += d;
  }
  // The smallest step m * 10^e (m in 1, 2, 5) whose multiples cover [lo, hi] in at most
  // max_intervals intervals. Start one decade below span / max_intervals and walk up.
  const double span = hi - lo;
  int e = static_cast<int>(std::floor(std::log10(span / max_intervals))) - 1;
  for (;; ++e) {
    for (int m : {1, 2, 5}) {
      // step = m * 10^e, written so that k * step is exact where it can be (0.1 * 3 != 0.3).
      const double p10 = std::pow(10.0, std::abs(e));
      const double step = e >= 0 ? m * p10 : m / p10;
      const double k0 = std::floor(lo / step + 1e-9), k1 = std::ceil(hi / step - 1e-9);
      if (k1 - k0 > max_intervals) continue;
      t.step = step;
      for (int i = 0; i <= static_cast<int>(k1 - k0); ++i) {
        const double k = k0 + i;
        double v = e >= 0 ? k * m * p10 : k * m / p10;
        if (v == 0) v = 0;  // no "-0"
        t.values.push_back(v);
        t.labels.push_back(tick_label(v, step));
      }
      t.lo = t.values.front();
      t.hi = t.values.back();
      if (t.lo == t.hi) t.hi = t.lo + step;  // cannot happen for lo < hi; kept for safety
      return t;
    }
  }
}

// ---- reading a log ----------------------------------------------------------------------------

namespace {

[[noreturn]] void log_error(const std::string& where, const std::string& what) {
  throw Error("[report] " + where + ": " + what);
}

// A numeric field; JSON null reads as NaN (the log writes a NaN loss as null).
double num_field(const io::json& j, const char* key, const std::string& where, bool required,
                 double dflt = 0) {
  auto it = j.find(key);
  if (it == j.end()) {
    if (required) log_error(where, std::string("no \"") + key + "\" (a number) in this record");
    return dflt;
  }
  if (it->is_null()) return NAN;
  if (!it->is_number())
    log_error(where, std::string("\"") + key + "\" is " + it->dump() + ", expected a number");
  return it->get<double>();
}

int64_t int_field(const io::json& j, const char* key, const std::string& where, bool required,
                  int64_t dflt = 0) {
  auto it = j.find(key);
  if (it == j.end()) {
    if (required) log_error(where, std::string("no \"") + key + "\" (an integer) in this record");
    return dflt;
  }
  if (!it->is_number_integer())
    log_error(where, std::string("\"") + key + "\" is " + it->dump() + ", expected an integer");
  return it->get<int64_t>();
}

std::vector<std::pair<std::string, double>> metrics_of(const io::json& j,
                                                       const std::string& where) {
  std::vector<std::pair<std::string, double>> m;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "type" || it.key() == "step") continue;
    if (it->is_null())
      m.emplace_back(it.key(), NAN);
    else if (it->is_number())
      m.emplace_back(it.key(), it->get<double>());
    else if (!it->is_string())  // a note is fine; a list or object is not a metric
      log_error(where, "metric \"" + it.key() + "\" is " + it->dump() + ", expected a number");
  }
  // loss first, then the rest as written (sorted keys)
  std::stable_partition(m.begin(), m.end(), [](auto& p) { return p.first == "loss"; });
  return m;
}

void flatten(const io::json& j, const std::string& prefix,
             std::vector<std::pair<std::string, std::string>>& out) {
  if (j.is_object() && !j.empty()) {
    for (auto it = j.begin(); it != j.end(); ++it)
      flatten(it.value(), prefix.empty() ? it.key() : prefix + "." + it.key(), out);
    return;
  }
  std::string v;
  if (j.is_string()) {
    v = j.get<std::string>();
  } else if (j.is_null()) {
  } else if (j.is_number_float()) {
    // 7 digits: a float option (lr 0.003) reads as written, not as 0.003000000026077032.
    char b[32];
    std::snprintf(b, sizeof b, "%.7g", j.get<double>());
    v = b;
  } else {
    v = j.dump();
  }
  out.emplace_back(prefix, v);
}

}  // namespace

std::string RunSummary::config_value(const std::string& key) const {
  for (auto& [k, v] : config)
    if (k == key) return v;
  return "";
}

RunLog read_run_log(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error("[report] " + path + ": cannot read the run log");
  RunLog r;
  r.path = path;
  r.name = fs::path(path).parent_path().filename().string();
  if (r.name.empty()) r.name = path;
  std::string line;
  int64_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(lineno);
    io::json j;
    try {
      j = io::json::parse(line);
    } catch (const std::exception& e) {
      std::string what = e.what();
      if (auto p = what.find("] "); what.starts_with("[json.exception") && p != std::string::npos)
        what = what.substr(p + 2);
      log_error(where, "not a JSON line (" + what + ")");
    }
    if (!j.is_object()) log_error(where, "expected a JSON object, found " + j.dump().substr(0, 40));
    auto t = j.find("type");
    if (t == j.end() || !t->is_string())
      log_error(where, "a record without a \"type\" (\"step\", \"eval\" or \"summary\")");
    const std::string type = t->get<std::string>();
    if (type == "step") {
      StepRecord s;
      s.step = int_field(j, "step", where, true);
      s.loss = num_field(j, "loss", where, true);
      s.lr = num_field(j, "lr", where, false, NAN);
      s.grad_norm = num_field(j, "grad_norm", where, false, NAN);
      s.tokens = int_field(j, "tokens", where, false);
      s.tokens_per_s = num_field(j, "tokens_per_s", where, false, NAN);
      s.elapsed_s = num_field(j, "elapsed_s", where, false, NAN);
      s.epoch = int_field(j, "epoch", where, false);
      s.rss_bytes = int_field(j, "rss_bytes", where, false, -1);
      s.peak_rss_bytes = int_field(j, "peak_rss_bytes", where, false, -1);
      if (!r.steps.empty() && s.step <= r.steps.back().step) {
        // Resumed from an older checkpoint: what the log holds from this step on was redone.
        std::erase_if(r.steps, [&](const StepRecord& o) { return o.step >= s.step; });
        std::erase_if(r.evals, [&](const EvalRecord& o) { return o.step >= s.step; });
      }
      r.summary = RunSummary{};  // a summary before more steps was an interrupted part
      r.steps.push_back(s);
    } else if (type == "eval") {
      EvalRecord e;
      e.step = int_field(j, "step", where, true);
      e.metrics = metrics_of(j, where);
      r.evals.push_back(std::move(e));
    } else if (type == "summary") {
      RunSummary s;
      s.present = true;
      auto st = j.find("status");
      s.interrupted = st != j.end() && st->is_string() && st->get<std::string>() == "interrupted";
      if (auto f = j.find("finished_utc"); f != j.end() && f->is_string()) s.finished_utc = *f;
      s.steps = int_field(j, "steps", where, true);
      s.total_steps = int_field(j, "total_steps", where, false, s.steps);
      s.seconds = num_field(j, "seconds", where, true);
      s.tokens_per_second = num_field(j, "tokens_per_second", where, false);
      s.peak_rss_bytes = int_field(j, "peak_rss_bytes", where, false);
      s.trainable_params = int_field(j, "trainable_params", where, false);
      s.total_params = int_field(j, "total_params", where, false);
      if (auto lm = j.find("lm"); lm != j.end() && lm->is_boolean()) s.lm = *lm;
      if (auto b = j.find("best"); b != j.end() && !b->is_null()) {
        if (!b->is_object())
          log_error(where, "\"best\" is " + b->dump() + ", expected {\"step\", \"eval\"}");
        s.best_step = int_field(*b, "step", where + ": best", true);
        auto ev = b->find("eval");
        if (ev == b->end() || !ev->is_object()) log_error(where, "\"best\" has no \"eval\" object");
        s.best = metrics_of(*ev, where + ": best.eval");
      }
      if (auto c = j.find("config"); c != j.end() && !c->is_null()) {
        if (!c->is_object())
          log_error(where, "\"config\" is " + c->dump().substr(0, 40) + ", expected an object");
        flatten(*c, "", s.config);
      }
      r.summary = std::move(s);
    }
    // Other record types are for other readers; skipped.
  }
  return r;
}

RunLog read_run_dir(const std::string& path) {
  std::string log = path;
  if (fs::is_directory(path)) {
    log = (fs::path(path) / "log.jsonl").string();
    if (!fs::exists(log))
      throw Error("[report] " + path + ": not a run folder (no log.jsonl in it)");
  } else if (!fs::exists(path)) {
    throw Error("[report] " + path + ": no such run folder or log file");
  }
  RunLog r = read_run_log(log);
  const fs::path dir = fs::is_directory(path) ? fs::path(path) : fs::path(path).parent_path();
  std::string name = fs::weakly_canonical(dir).filename().string();
  r.name = name.empty() ? path : name;
  return r;
}

// ---- formatting -------------------------------------------------------------------------------

namespace {

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '<':
        o += "&lt;";
        break;
      case '>':
        o += "&gt;";
        break;
      case '&':
        o += "&amp;";
        break;
      case '"':
        o += "&quot;";
        break;
      case '\'':
        o += "&#39;";
        break;
      default:
        o += c;
    }
  }
  return o;
}

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

// 1234567 -> "1,234,567"
std::string grouped(int64_t n) {
  std::string s = std::to_string(n < 0 ? -n : n), o;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) o += ',';
    o += s[i];
  }
  return n < 0 ? "-" + o : o;
}

std::string duration(double s) {
  if (!std::isfinite(s)) return "–";
  if (s < 60) return fmt("%.1f s", s);
  const auto t = static_cast<int64_t>(std::llround(s));
  char b[64];
  if (t < 3600)
    std::snprintf(b, sizeof b, "%lld min %02lld s", static_cast<long long>(t / 60),
                  static_cast<long long>(t % 60));
  else
    std::snprintf(b, sizeof b, "%lld h %02lld min", static_cast<long long>(t / 3600),
                  static_cast<long long>(t / 60 % 60));
  return b;
}

std::string bytes(double b) {
  if (!(b > 0)) return "–";
  const double mib = b / 1048576.0;
  return mib >= 1024 ? fmt("%.2f GiB", mib / 1024) : fmt("%.0f MiB", mib);
}

// A metric's value in a table: integers as integers (n), the rest with 4 decimals.
std::string metric_text(const std::string& name, double v) {
  if (!std::isfinite(v)) return "NaN";
  if (name == "n" || (v == std::floor(v) && std::abs(v) >= 1000))
    return grouped(static_cast<int64_t>(v));
  if (std::abs(v) >= 1000) return fmt("%.1f", v);
  return fmt("%.4f", v);
}

std::string metric_title(const std::string& name) {
  if (name == "n") return "examples";
  if (name == "f1") return "F1";
  if (name == "mcc") return "MCC";
  return name;
}

bool lower_is_better(const std::string& name) {
  return name == "perplexity" || name.ends_with("loss");
}

const char* kPalette[] = {"#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1",
                          "#76b7b2", "#edc948", "#9c755f", "#ff9da7", "#bab0ac"};
const char* run_color(size_t i) {
  return kPalette[i % 10];
}

std::string model_name(const RunLog& r) {
  std::string m = r.summary.config_value("model");
  if (m.empty()) return "–";
  while (m.size() > 1 && m.back() == '/') m.pop_back();
  return fs::path(m).filename().string();
}

// ---- charts -----------------------------------------------------------------------------------

using Points = std::vector<std::pair<double, double>>;

struct Series {
  std::string name, color;
  Points pts;
  double width = 2.0, opacity = 1.0;
  bool dashed = false, markers = false, legend = true;
};

struct Chart {
  std::string title, x_label, y_label;
  std::vector<Series> series;
  bool y_from_zero = false;  // sizes and rates: the axis starts at 0
  bool x_from_zero = true;   // steps and time: every chart of a page starts at 0
};

// Bias-corrected EMA (as TensorBoard's smoothing): the first points are not pulled to 0.
Points smoothed(const Points& p, double beta) {
  Points o;
  double m = 0, w = 0;
  for (auto [x, y] : p) {
    if (!std::isfinite(y)) continue;
    m = beta * m + (1 - beta) * y;
    w = beta * w + (1 - beta);
    o.emplace_back(x, m / w);
  }
  return o;
}

// Enough smoothing to read a trend, not so much that a short run lags: beta from the count.
double smoothing_beta(size_t n) {
  return std::clamp(1.0 - 8.0 / static_cast<double>(std::max<size_t>(n, 1)), 0.6, 0.95);
}

constexpr size_t kMaxMarkers = 30;  // more evaluations than this: a line without dots

// A long run has more points than the chart has pixels: keep, per pixel column, the lowest and
// the highest point (in x order), so that the envelope of a noisy loss stays as it is and the
// page stays small (100k steps: at most ~900 points a curve instead of 100k).
Series thinned(const Series& s, double plot_width) {
  const auto columns = static_cast<size_t>(plot_width);
  if (s.pts.size() <= 2 * columns) return s;
  double x0 = INFINITY, x1 = -INFINITY;
  for (auto [x, y] : s.pts)
    if (std::isfinite(x)) x0 = std::min(x0, x), x1 = std::max(x1, x);
  if (!(x1 > x0)) return s;
  Series o = s;
  o.pts.clear();
  size_t col = SIZE_MAX;
  std::pair<double, double> lo{}, hi{};
  bool gap = false;
  auto flush = [&] {
    if (col == SIZE_MAX) return;
    if (lo == hi)
      o.pts.push_back(lo);
    else if (lo.first <= hi.first)
      o.pts.push_back(lo), o.pts.push_back(hi);
    else
      o.pts.push_back(hi), o.pts.push_back(lo);
  };
  for (auto p : s.pts) {
    if (!std::isfinite(p.first) || !std::isfinite(p.second)) {
      gap = true;  // keep the gap: close the column, then a NaN point
      continue;
    }
    const auto c =
        static_cast<size_t>((p.first - x0) / (x1 - x0) * static_cast<double>(columns - 1));
    if (c != col || gap) {
      flush();
      if (gap) o.pts.emplace_back(p.first, NAN), gap = false;
      col = c, lo = hi = p;
    } else {
      if (p.second < lo.second) lo = p;
      if (p.second > hi.second) hi = p;
    }
  }
  flush();
  return o;
}

std::string svg_chart(const Chart& c) {
  const double W = 540, H = 300, L = 62, R = 22, B = 44;
  // Legend entries laid out in rows under the title (about 6.6 px a character at 12 px).
  struct Item {
    std::string name, color;
    bool dashed, markers;
    double x;
    int row;
  };
  std::vector<Item> items;
  double lx = L;
  int row = 0;
  for (auto& s : c.series) {
    if (!s.legend) continue;
    const double w = 30 + 6.6 * static_cast<double>(s.name.size()) + 14;
    if (lx + w > W - R && lx > L) lx = L, ++row;
    const auto n_finite = std::count_if(s.pts.begin(), s.pts.end(), [](auto& p) {
      return std::isfinite(p.first) && std::isfinite(p.second);
    });
    const bool dots = s.markers && static_cast<size_t>(n_finite) <= kMaxMarkers;
    items.push_back({s.name, s.color, s.dashed, dots, lx, row});
    lx += w;
  }
  const int rows = items.empty() ? 0 : row + 1;
  const double T = 34 + 17.0 * rows + 6;
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  for (auto& s : c.series)
    for (auto [x, y] : s.pts) {
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
    }
  std::ostringstream o;
  o << "<svg class='chart' xmlns='http://www.w3.org/2000/svg' viewBox='0 0 " << W << " " << H
    << "' width='" << W << "' height='" << H << "' role='img' aria-label='" << esc(c.title) << "'>"
    << "<rect width='" << W << "' height='" << H << "' fill='#fff'/>"
    << "<text x='" << L << "' y='22' class='ct'>" << esc(c.title) << "</text>";
  if (!(x0 <= x1)) {
    o << "<text x='" << (W + L - R) / 2 << "' y='" << H / 2
      << "' text-anchor='middle' class='nd'>not in this log</text></svg>";
    return o.str();
  }
  if (c.y_from_zero) y0 = std::min(y0, 0.0);
  if (c.x_from_zero) x0 = std::min(x0, 0.0);
  const AxisTicks tx = nice_ticks(x0, x1, 6), ty = nice_ticks(y0, y1, 5);
  const double pw = W - L - R, ph = H - T - B;
  auto px = [&](double x) { return L + (x - tx.lo) / (tx.hi - tx.lo) * pw; };
  auto py = [&](double y) { return T + (1 - (y - ty.lo) / (ty.hi - ty.lo)) * ph; };
  auto num = [](double v) { return fmt("%.1f", v); };
  for (size_t i = 0; i < ty.values.size(); ++i) {
    const double y = py(ty.values[i]);
    o << "<line x1='" << L << "' x2='" << W - R << "' y1='" << num(y) << "' y2='" << num(y)
      << "' class='grid'/>"
      << "<text x='" << L - 7 << "' y='" << num(y + 4) << "' text-anchor='end' class='tk'>"
      << ty.labels[i] << "</text>";
  }
  for (size_t i = 0; i < tx.values.size(); ++i) {
    const double x = px(tx.values[i]);
    o << "<line x1='" << num(x) << "' x2='" << num(x) << "' y1='" << T << "' y2='" << T + ph
      << "' class='grid'/>"
      << "<text x='" << num(x) << "' y='" << T + ph + 17 << "' text-anchor='middle' class='tk'>"
      << tx.labels[i] << "</text>";
  }
  o << "<path d='M" << L << " " << T << "V" << T + ph << "H" << W - R << "' class='axis'/>";
  o << "<text x='" << L + pw / 2 << "' y='" << H - 8 << "' text-anchor='middle' class='al'>"
    << esc(c.x_label) << "</text>";
  o << "<text transform='translate(15 " << T + ph / 2
    << ") rotate(-90)' text-anchor='middle' class='al'>" << esc(c.y_label) << "</text>";
  for (auto& series : c.series) {
    const Series s = thinned(series, pw);
    // A polyline per finite stretch: a NaN (a diverged loss) leaves a gap.
    std::vector<std::string> runs(1);
    size_t n_finite = 0;
    for (auto [x, y] : s.pts) {
      if (!std::isfinite(x) || !std::isfinite(y)) {
        if (!runs.back().empty()) runs.emplace_back();
        continue;
      }
      runs.back() += num(px(x)) + "," + num(py(y)) + " ";
      ++n_finite;
    }
    const std::string style =
        "fill='none' stroke='" + s.color + "' stroke-width='" + fmt("%.1f", s.width) +
        "' stroke-linejoin='round' stroke-linecap='round'" +
        (s.opacity < 1 ? " stroke-opacity='" + fmt("%.2f", s.opacity) + "'" : "") +
        (s.dashed ? " stroke-dasharray='6 4'" : "");
    for (auto& r : runs)
      if (!r.empty()) o << "<polyline " << style << " points='" << r << "'/>";
    if ((s.markers && n_finite <= kMaxMarkers) || n_finite == 1)
      for (auto [x, y] : s.pts)
        if (std::isfinite(x) && std::isfinite(y))
          o << "<circle cx='" << num(px(x)) << "' cy='" << num(py(y)) << "' r='3.5' fill='"
            << s.color << "' stroke='#fff' stroke-width='1'/>";
  }
  for (auto& it : items) {
    const double y = 40 + 17.0 * it.row;
    o << "<line x1='" << num(it.x) << "' x2='" << num(it.x + 22) << "' y1='" << y - 4 << "' y2='"
      << y - 4 << "' stroke='" << it.color << "' stroke-width='2.5'"
      << (it.dashed ? " stroke-dasharray='6 4'" : "") << "/>";
    if (it.markers)
      o << "<circle cx='" << num(it.x + 11) << "' cy='" << y - 4 << "' r='3.5' fill='" << it.color
        << "'/>";
    o << "<text x='" << num(it.x + 28) << "' y='" << y << "' class='lg'>" << esc(it.name)
      << "</text>";
  }
  o << "</svg>";
  return o.str();
}

// ---- series from a log ------------------------------------------------------------------------

Points step_points(const RunLog& r, double StepRecord::*field) {
  Points p;
  for (auto& s : r.steps) p.emplace_back(static_cast<double>(s.step), s.*field);
  return p;
}

Points eval_points(const RunLog& r, const std::string& metric) {
  Points p;
  for (auto& e : r.evals)
    for (auto& [k, v] : e.metrics)
      if (k == metric) p.emplace_back(static_cast<double>(e.step), v);
  return p;
}

std::vector<std::string> eval_metric_names(const std::vector<RunLog>& runs) {
  std::vector<std::string> names;
  for (auto& r : runs)
    for (auto& e : r.evals)
      for (auto& [k, v] : e.metrics)
        if (k != "n" && std::find(names.begin(), names.end(), k) == names.end()) names.push_back(k);
  return names;
}

// Time in minutes when the run is long enough that seconds read badly.
struct TimeAxis {
  double scale = 1;
  std::string label = "time (s)";
};
TimeAxis time_axis(const std::vector<RunLog>& runs) {
  double t = 0;
  for (auto& r : runs)
    for (auto& s : r.steps)
      if (std::isfinite(s.elapsed_s)) t = std::max(t, s.elapsed_s);
  if (t > 3 * 3600) return {1.0 / 3600, "time (h)"};
  if (t > 600) return {1.0 / 60, "time (min)"};
  return {};
}

// Training throughput over windows of about a fortieth of the run, leaving out windows that
// contain an evaluation (its time is not training time).
Points windowed_tokens_per_s(const RunLog& r, double time_scale) {
  Points p;
  const size_t n = r.steps.size();
  const size_t w = std::max<size_t>(1, n / 40);
  std::set<int64_t> eval_steps;
  for (auto& e : r.evals) eval_steps.insert(e.step);
  for (size_t b = w; b < n; b += w) {
    const size_t a = b - w;
    const double dt = r.steps[b].elapsed_s - r.steps[a].elapsed_s;
    if (!(dt > 0)) continue;
    bool has_eval = false;
    for (size_t i = a; i < b && !has_eval; ++i) has_eval = eval_steps.count(r.steps[i].step) > 0;
    int64_t tok = 0;
    for (size_t i = a + 1; i <= b; ++i) tok += r.steps[i].tokens;
    p.emplace_back(r.steps[b].elapsed_s * time_scale,
                   has_eval ? NAN : static_cast<double>(tok) / dt);
  }
  return p;
}

// Memory in MiB or GiB, whichever reads better for these runs.
struct MemAxis {
  double scale = 1.0 / 1048576.0;
  std::string label = "MiB";
};
MemAxis mem_axis(const std::vector<RunLog>& runs) {
  int64_t m = 0;
  for (auto& r : runs)
    for (auto& s : r.steps) m = std::max({m, s.rss_bytes, s.peak_rss_bytes});
  if (m >= 4LL << 30) return {1.0 / 1073741824.0, "GiB"};
  return {};
}

Points time_points(const RunLog& r, double time_scale, double value_scale,
                   int64_t StepRecord::*field) {
  Points p;
  for (auto& s : r.steps)
    p.emplace_back(s.elapsed_s * time_scale,
                   s.*field >= 0 ? static_cast<double>(s.*field) * value_scale : NAN);
  return p;
}

Points time_points(const RunLog& r, double time_scale, double StepRecord::*field) {
  Points p;
  for (auto& s : r.steps) p.emplace_back(s.elapsed_s * time_scale, s.*field);
  return p;
}

// ---- page -------------------------------------------------------------------------------------

const char* kStyle = R"(
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#222;
 background:#f4f5f7;margin:0;padding:24px 28px}
main{max-width:1112px;margin:0 auto}
h1{font-size:22px;margin:0 0 2px}h2{font-size:16px;margin:26px 0 10px;color:#333}
.sub{color:#666;margin:0 0 16px}
.cards{display:grid;grid-template-columns:repeat(4,1fr);gap:10px}
.card{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:8px 12px}
.card .k{font-size:12px;color:#666}.card .v{font-size:17px;font-weight:600;word-break:break-all}
.card .x{font-size:12px;color:#666}
.charts{display:grid;grid-template-columns:repeat(2,1fr);gap:14px}
svg.chart{width:100%;height:auto;border:1px solid #dde1e6;border-radius:6px;display:block}
svg .ct{font:600 14px system-ui,"DejaVu Sans",sans-serif;fill:#222}
svg .tk{font:11px system-ui,"DejaVu Sans",sans-serif;fill:#555}
svg .al{font:12px system-ui,"DejaVu Sans",sans-serif;fill:#444}
svg .lg{font:12px system-ui,"DejaVu Sans",sans-serif;fill:#333}
svg .nd{font:13px system-ui,"DejaVu Sans",sans-serif;fill:#888}
svg .grid{stroke:#e8e8e8;stroke-width:1}svg .axis{stroke:#888;fill:none;stroke-width:1}
table{border-collapse:collapse;background:#fff;border:1px solid #dde1e6}
th,td{padding:5px 12px;border-bottom:1px solid #eceef1;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.diff td{background:#fff4d6}td.best{font-weight:700}
.cfg{display:flex;gap:14px;align-items:flex-start;flex-wrap:wrap}
.cfg td,table.cmp td{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12.5px}
.sw{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:6px;vertical-align:-1px}
.note{color:#666;font-size:13px}
)";

void card(std::ostringstream& o, const std::string& k, const std::string& v,
          const std::string& x = "") {
  o << "<div class='card'><div class='k'>" << esc(k) << "</div><div class='v'>" << esc(v)
    << "</div>";
  if (!x.empty()) o << "<div class='x'>" << esc(x) << "</div>";
  o << "</div>";
}

std::string trainable_text(const RunSummary& s) {
  return s.trainable_params > 0 ? grouped(s.trainable_params) : "–";
}
std::string trainable_pct(const RunSummary& s) {
  if (s.trainable_params <= 0 || s.total_params <= 0) return "";
  const double p =
      100.0 * static_cast<double>(s.trainable_params) / static_cast<double>(s.total_params);
  return (p < 0.01 ? fmt("%.2g", p)
          : p < 10 ? fmt("%.3f", p)
                   : fmt("%.1f", p)) +
         "% of " + grouped(s.total_params);
}

double run_seconds(const RunLog& r) {
  if (r.summary.present) return r.summary.seconds;
  return r.steps.empty() ? NAN : r.steps.back().elapsed_s;
}
int64_t run_peak(const RunLog& r) {
  int64_t m = r.summary.present ? r.summary.peak_rss_bytes : 0;
  for (auto& s : r.steps) m = std::max(m, s.peak_rss_bytes);
  return m;
}
std::string run_status(const RunLog& r) {
  if (!r.summary.present) return "not finished (no summary record)";
  return r.summary.interrupted ? "interrupted" : "finished";
}

void config_tables(std::ostringstream& o,
                   const std::vector<std::pair<std::string, std::string>>& cfg) {
  if (cfg.empty()) {
    o << "<p class='note'>The log holds no configuration.</p>";
    return;
  }
  // Two tables side by side: a long configuration stays on one screen.
  const size_t half = (cfg.size() + 1) / 2;
  o << "<div class='cfg'>";
  for (size_t part = 0; part < 2; ++part) {
    const size_t a = part * half, b = std::min(cfg.size(), a + half);
    if (a >= b) break;
    o << "<table><tr><th>setting</th><th>value</th></tr>";
    for (size_t i = a; i < b; ++i)
      o << "<tr><td>" << esc(cfg[i].first) << "</td><td>" << esc(cfg[i].second) << "</td></tr>";
    o << "</table>";
  }
  o << "</div>";
}

std::string page_start(const std::string& title) {
  return "<!doctype html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
         "content='width=device-width,initial-scale=1'><title>" +
         esc(title) + "</title><style>" + kStyle + "</style></head><body><main>";
}

std::string single_run(const RunLog& r, const std::string& title_in) {
  const RunSummary& s = r.summary;
  const std::string method = s.config_value("method").empty() ? "–" : s.config_value("method");
  // Named after the model and method, or the run's folder where the log does not say them.
  const std::string title = !title_in.empty()  ? title_in
                            : s.config.empty() ? "lorafit run: " + r.name
                                               : "lorafit run: " + model_name(r) + " · " + method;
  std::ostringstream o;
  o << page_start(title) << "<h1>" << esc(title) << "</h1><p class='sub'>" << esc(r.path) << " · "
    << esc(run_status(r)) << (s.finished_utc.empty() ? "" : " " + esc(s.finished_utc)) << "</p>";
  o << "<div class='cards'>";
  card(o, "model", model_name(r), s.config_value("model"));
  card(o, "method", method, s.config_value("task"));
  card(o, "trainable parameters", trainable_text(s), trainable_pct(s));
  card(o, "wall time", duration(run_seconds(r)),
       (s.present ? grouped(s.steps) + " of " + grouped(s.total_steps)
                  : grouped(r.steps.empty() ? 0 : r.steps.back().step)) +
           " steps");
  card(o, "peak memory (RSS)", bytes(static_cast<double>(run_peak(r))));
  card(o, "throughput", s.present ? fmt("%.0f tokens/s", s.tokens_per_second) : "–");
  card(o, "learning rate", s.config_value("lr").empty() ? "–" : s.config_value("lr"),
       s.config_value("schedule"));
  card(o, "batch", s.config_value("batch_size").empty() ? "–" : s.config_value("batch_size"),
       s.config_value("grad_accum").empty()
           ? ""
           : "gradient accumulation " + s.config_value("grad_accum"));
  o << "</div>";

  o << "<h2>Best evaluation</h2>";
  if (s.best_step >= 0 && !s.best.empty()) {
    // The best next to the last evaluation: how much the end of the run gave back.
    const EvalRecord* last = r.evals.empty() ? nullptr : &r.evals.back();
    auto last_value = [&](const std::string& k) {
      if (last)
        for (auto& [n, v] : last->metrics)
          if (n == k) return metric_text(k, v);
      return std::string("–");
    };
    o << "<table class='best'><tr><th>metric</th><th>best</th>" << (last ? "<th>last</th>" : "")
      << "</tr>";
    o << "<tr><td>step</td><td class='n'>" << grouped(s.best_step) << "</td>"
      << (last ? "<td class='n'>" + grouped(last->step) + "</td>" : "") << "</tr>";
    for (auto& [k, v] : s.best)
      o << "<tr><td>" << esc(metric_title(k)) << "</td><td class='n'>" << metric_text(k, v)
        << "</td>" << (last ? "<td class='n'>" + last_value(k) + "</td>" : "") << "</tr>";
    o << "</table>";
    o << "<p class='note'>Best by " << (s.lm ? "lowest evaluation loss" : "highest accuracy")
      << "; the adapter of that step is in best/.</p>";
  } else {
    o << "<p class='note'>No evaluation was run (no validation set, or the run stopped before "
         "one).</p>";
  }

  o << "<h2>Curves</h2><div class='charts'>";
  const Points loss = step_points(r, &StepRecord::loss);
  const double beta = smoothing_beta(loss.size());
  Chart lc{"Loss", "step", "loss", {}, false};
  lc.series.push_back({"training", "#4e79a7", loss, 1.0, 0.3, false, false, false});
  lc.series.push_back(
      {"training (smoothed, EMA " + fmt("%.2f", beta) + ")", "#4e79a7", smoothed(loss, beta), 2.2});
  lc.series.push_back({"evaluation", "#f28e2b", eval_points(r, "loss"), 2.2, 1, false, true});
  o << svg_chart(lc);
  Chart mc{"Evaluation metrics", "step", "score", {}, false};
  Chart pc{"Evaluation perplexity", "step", "perplexity", {}, false};
  size_t ci = 2;
  for (auto& m : eval_metric_names({r})) {
    if (m == "loss") continue;
    if (m == "perplexity")
      pc.series.push_back({m, "#e15759", eval_points(r, m), 2.2, 1, false, true});
    else
      mc.series.push_back(
          {metric_title(m), run_color(ci++), eval_points(r, m), 2.2, 1, false, true});
  }
  if (!mc.series.empty() || pc.series.empty()) o << svg_chart(mc);
  if (!pc.series.empty()) o << svg_chart(pc);
  const TimeAxis ta = time_axis({r});
  Chart tc{"Throughput", ta.label, "tokens/s", {}, true};
  tc.series.push_back({"per interval", "#59a14f", windowed_tokens_per_s(r, ta.scale), 1.6, 0.8});
  tc.series.push_back(
      {"average since start", "#2f6b2a", time_points(r, ta.scale, &StepRecord::tokens_per_s), 2.2});
  o << svg_chart(tc);
  const MemAxis ma = mem_axis({r});
  Chart rc{"Memory (resident)", ta.label, ma.label, {}, true};
  // Peak first, so that the current RSS is drawn over it where they agree.
  rc.series.push_back({"peak RSS", "#76b7b2",
                       time_points(r, ta.scale, ma.scale, &StepRecord::peak_rss_bytes), 1.8, 1,
                       true});
  rc.series.push_back(
      {"RSS", "#b07aa1", time_points(r, ta.scale, ma.scale, &StepRecord::rss_bytes), 2.2});
  o << svg_chart(rc);
  Chart lrc{"Learning rate", "step", "lr", {}, true};
  lrc.series.push_back(
      {"lr", "#9c755f", step_points(r, &StepRecord::lr), 2.2, 1, false, false, false});
  o << svg_chart(lrc);
  Chart gc{"Gradient norm (before clipping)", "step", "L2 norm", {}, true};
  gc.series.push_back({"grad norm", "#4e79a7", step_points(r, &StepRecord::grad_norm), 1.6, 0.9,
                       false, false, false});
  o << svg_chart(gc);
  o << "</div>";

  o << "<h2>Configuration</h2>";
  config_tables(o, s.config);
  o << "</main></body></html>\n";
  return o.str();
}

std::string several_runs(const std::vector<RunLog>& runs, const std::string& title_in) {
  const std::string title =
      title_in.empty() ? "lorafit: " + std::to_string(runs.size()) + " runs compared" : title_in;
  std::ostringstream o;
  o << page_start(title) << "<h1>" << esc(title) << "</h1><p class='sub'>";
  for (size_t i = 0; i < runs.size(); ++i) o << (i ? " · " : "") << esc(runs[i].path);
  o << "</p>";

  o << "<h2>Runs</h2><table><tr><th>run</th><th>model</th><th>method</th><th>steps</th><th>wall "
       "time</th>"
       "<th>tokens/s</th><th>peak memory</th><th>trainable parameters</th><th>status</th></tr>";
  for (size_t i = 0; i < runs.size(); ++i) {
    const RunLog& r = runs[i];
    const RunSummary& s = r.summary;
    o << "<tr><td><span class='sw' style='background:" << run_color(i) << "'></span>" << esc(r.name)
      << "</td><td>" << esc(model_name(r)) << "</td><td>" << esc(s.config_value("method"))
      << "</td><td class='n'>" << grouped(r.steps.empty() ? 0 : r.steps.back().step)
      << "</td><td class='n'>" << duration(run_seconds(r)) << "</td><td class='n'>"
      << (s.present ? fmt("%.0f", s.tokens_per_second) : "–") << "</td><td class='n'>"
      << bytes(static_cast<double>(run_peak(r))) << "</td><td class='n'>" << trainable_text(s)
      << (trainable_pct(s).empty()
              ? ""
              : " (" + esc(trainable_pct(s).substr(0, trainable_pct(s).find(" of"))) + ")")
      << "</td><td>" << esc(run_status(r)) << "</td></tr>";
  }
  o << "</table>";

  // Best evaluations: one row per run, the best value of each column in bold.
  std::vector<std::string> cols;
  for (auto& r : runs)
    for (auto& [k, v] : r.summary.best)
      if (std::find(cols.begin(), cols.end(), k) == cols.end()) cols.push_back(k);
  o << "<h2>Best evaluations</h2>";
  if (cols.empty()) {
    o << "<p class='note'>None of these runs has an evaluation.</p>";
  } else {
    auto value = [](const RunLog& r, const std::string& k) {
      for (auto& [n, v] : r.summary.best)
        if (n == k) return v;
      return static_cast<double>(NAN);
    };
    o << "<table class='best'><tr><th>run</th><th>step</th>";
    for (auto& k : cols) o << "<th>" << esc(metric_title(k)) << "</th>";
    o << "</tr>";
    for (size_t i = 0; i < runs.size(); ++i) {
      const RunLog& r = runs[i];
      o << "<tr><td><span class='sw' style='background:" << run_color(i) << "'></span>"
        << esc(r.name) << "</td><td class='n'>"
        << (r.summary.best_step >= 0 ? grouped(r.summary.best_step) : "–") << "</td>";
      for (auto& k : cols) {
        const double v = value(r, k);
        bool best = std::isfinite(v) && k != "n" && runs.size() > 1;
        for (auto& other : runs) {
          const double w = value(other, k);
          if (std::isfinite(w) && (lower_is_better(k) ? w < v : w > v)) best = false;
        }
        o << "<td class='n" << (best ? " best" : "") << "'>"
          << (std::isfinite(v) ? metric_text(k, v) : "–") << "</td>";
      }
      o << "</tr>";
    }
    o << "</table><p class='note'>Bold: the best value of a column (lowest loss and perplexity, "
         "highest otherwise).</p>";
  }

  o << "<h2>Curves</h2><div class='charts'>";
  Chart lc{"Training loss (smoothed)", "step", "loss", {}, false};
  for (size_t i = 0; i < runs.size(); ++i) {
    const Points loss = step_points(runs[i], &StepRecord::loss);
    lc.series.push_back({runs[i].name, run_color(i), loss, 1.0, 0.22, false, false, false});
    lc.series.push_back(
        {runs[i].name, run_color(i), smoothed(loss, smoothing_beta(loss.size())), 2.2});
  }
  o << svg_chart(lc);
  for (auto& m : eval_metric_names(runs)) {
    Chart c{"Evaluation " + metric_title(m), "step", metric_title(m), {}, false};
    for (size_t i = 0; i < runs.size(); ++i)
      c.series.push_back(
          {runs[i].name, run_color(i), eval_points(runs[i], m), 2.2, 1, false, true});
    o << svg_chart(c);
  }
  const TimeAxis ta = time_axis(runs);
  Chart tc{"Throughput (average since start)", ta.label, "tokens/s", {}, true};
  for (size_t i = 0; i < runs.size(); ++i)
    tc.series.push_back({runs[i].name, run_color(i),
                         time_points(runs[i], ta.scale, &StepRecord::tokens_per_s), 2.2});
  o << svg_chart(tc);
  const MemAxis ma = mem_axis(runs);
  Chart rc{"Memory (resident)", ta.label, ma.label, {}, true};
  for (size_t i = 0; i < runs.size(); ++i)
    rc.series.push_back({runs[i].name, run_color(i),
                         time_points(runs[i], ta.scale, ma.scale, &StepRecord::rss_bytes), 2.2});
  o << svg_chart(rc);
  Chart lrc{"Learning rate", "step", "lr", {}, true};
  for (size_t i = 0; i < runs.size(); ++i)
    lrc.series.push_back({runs[i].name, run_color(i), step_points(runs[i], &StepRecord::lr), 2.2});
  o << svg_chart(lrc);
  o << "</div>";

  // Configurations side by side; the settings that differ come first and are marked.
  std::vector<std::string> keys;
  for (auto& r : runs)
    for (auto& [k, v] : r.summary.config)
      if (std::find(keys.begin(), keys.end(), k) == keys.end()) keys.push_back(k);
  std::sort(keys.begin(), keys.end());
  auto differs = [&](const std::string& k) {
    for (auto& r : runs)
      if (r.summary.config_value(k) != runs[0].summary.config_value(k)) return true;
    return false;
  };
  std::stable_partition(keys.begin(), keys.end(), differs);
  std::vector<std::string> diff;
  for (auto& k : keys)
    if (differs(k)) diff.push_back(k);
  o << "<h2>Configuration</h2>";
  if (keys.empty()) {
    o << "<p class='note'>The logs hold no configuration.</p>";
  } else {
    o << "<p class='note'>" << diff.size() << " of " << keys.size() << " settings differ";
    for (size_t i = 0; i < diff.size(); ++i) o << (i ? ", " : ": ") << esc(diff[i]);
    o << " (marked, listed first).</p><table class='cmp'><tr><th>setting</th>";
    for (size_t i = 0; i < runs.size(); ++i)
      o << "<th><span class='sw' style='background:" << run_color(i) << "'></span>"
        << esc(runs[i].name) << "</th>";
    o << "</tr>";
    for (auto& k : keys) {
      o << "<tr" << (differs(k) ? " class='diff'" : "") << "><td>" << esc(k) << "</td>";
      for (auto& r : runs) o << "<td>" << esc(r.summary.config_value(k)) << "</td>";
      o << "</tr>";
    }
    o << "</table>";
  }
  o << "</main></body></html>\n";
  return o.str();
}

}  // namespace

namespace {

double metric_of(const EvalRecord& e, const std::string& name) {
  for (auto& [k, v] : e.metrics)
    if (k == name) return v;
  return NAN;
}

// A log without a summary (a run still going, or killed) still has its evaluations: its best is
// found by the trainer's rule (highest accuracy; lowest loss where there is no accuracy).
RunLog with_best(RunLog r) {
  if (r.summary.best_step >= 0 || r.evals.empty()) return r;
  const bool cls = std::isfinite(metric_of(r.evals[0], "accuracy"));
  const EvalRecord* best = nullptr;
  for (auto& e : r.evals) {
    const double v = cls ? metric_of(e, "accuracy") : -metric_of(e, "loss");
    if (std::isfinite(v) &&
        (!best || v > (cls ? metric_of(*best, "accuracy") : -metric_of(*best, "loss"))))
      best = &e;
  }
  if (!best) return r;
  r.summary.best_step = best->step;
  r.summary.best = best->metrics;
  r.summary.lm = !cls;
  return r;
}

}  // namespace

std::string report_html(const std::vector<RunLog>& runs_in, const std::string& title) {
  check(!runs_in.empty(), "report", "no run to report on");
  std::vector<RunLog> runs;
  for (auto& r : runs_in) runs.push_back(with_best(r));
  return runs.size() == 1 ? single_run(runs[0], title) : several_runs(runs, title);
}

void write_report_html(const std::string& path, const std::vector<RunLog>& runs,
                       const std::string& title) {
  io::write_file_atomic(path, report_html(runs, title));
}

void write_report(const std::string& path, const std::string& log_path) {
  write_report_html(path, {read_run_dir(log_path)});
}

}  // namespace lorafit::train
