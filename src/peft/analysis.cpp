// DoRA's weight-decomposition analysis (Liu et al. 2024, §2.2, Fig. 2): magnitude change ΔM and
// direction change ΔD of fine-tuned weights against the base, as CSV and as an SVG scatter plot
// (written by hand: no plotting library).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>

#include "lorafit/io.h"
#include "lorafit/peft.h"
#include "peft/peft_internal.h"

namespace lorafit::peft {

WeightDelta weight_decomposition_delta(const Tensor& w0, const Tensor& wft, const std::string& what) {
  const std::string name = what.empty() ? std::string("weight") : what;
  if (w0.ndim() != 2 || w0.shape() != wft.shape() || w0.dtype() != tensor::DType::F32 ||
      wft.dtype() != tensor::DType::F32)
    fail("analysis: " + name + ": base is " + w0.str() + ", fine-tuned is " + wft.str() +
         " (expected the same F32 [out, in] shape)");
  const int64_t out = w0.dim(0), in = w0.dim(1);
  WeightDelta d;
  if (out == 0) return d;
  const float* a = w0.f32();
  const float* b = wft.f32();
  for (int64_t i = 0; i < out; ++i) {
    double aa = 0, bb = 0, ab = 0;
    for (int64_t j = 0; j < in; ++j) {
      const double x = a[i * in + j], y = b[i * in + j];
      aa += x * x;
      bb += y * y;
      ab += x * y;
    }
    const double na = std::sqrt(aa), nb = std::sqrt(bb);
    double cos;
    if (na == 0 || nb == 0)
      cos = (na == 0 && nb == 0) ? 1.0 : 0.0;
    else
      cos = std::clamp(ab / (na * nb), -1.0, 1.0);
    d.delta_m += std::fabs(nb - na);
    d.delta_d += 1.0 - cos;
  }
  d.delta_m /= static_cast<double>(out);
  d.delta_d /= static_cast<double>(out);
  return d;
}

std::pair<int64_t, std::string> split_layer_path(const std::string& path) {
  // ... .<layers word>.<digits>.<rest>
  std::vector<std::string> parts;
  std::stringstream ss(path);
  for (std::string p; std::getline(ss, p, '.');) parts.push_back(p);
  for (size_t i = 0; i + 2 < parts.size(); ++i) {
    const std::string& w = parts[i];
    const std::string& n = parts[i + 1];
    if ((w == "layer" || w == "layers" || w == "h" || w == "blocks") && !n.empty() &&
        std::all_of(n.begin(), n.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      std::string rest;
      for (size_t k = i + 2; k < parts.size(); ++k) rest += (rest.empty() ? "" : ".") + parts[k];
      return {std::stoll(n), rest};
    }
  }
  return {-1, path};
}

namespace {

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

std::string num(double v, const char* fmt = "%.9g") {
  char b[64];
  std::snprintf(b, sizeof b, fmt, v);
  return b;
}

std::string xml(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else if (c == '"') o += "&quot;";
    else o += c;
  }
  return o;
}

// "Nice" axis ticks covering [lo, hi] (1, 2, 5 × 10^k steps).
std::vector<double> ticks(double lo, double hi, int target = 5) {
  const double span = std::max(hi - lo, 1e-300);
  const double raw = span / target;
  const double p = std::pow(10.0, std::floor(std::log10(raw)));
  double step = p;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * p >= raw) {
      step = m * p;
      break;
    }
  std::vector<double> t;
  for (double v = std::ceil(lo / step) * step; v <= hi + step * 1e-9; v += step)
    t.push_back(std::fabs(v) < step * 1e-9 ? 0.0 : v);
  return t;
}

std::string tick_label(double v) {
  if (v == 0) return "0";
  const double a = std::fabs(v);
  if (a >= 1e-3 && a < 1e4) return num(v, "%.4g");
  return num(v, "%.1e");
}

// Marker of shape `k` at (x, y), filled or hollow.
std::string marker(int k, double x, double y, const std::string& color, bool filled) {
  const double r = 4.0;
  const std::string style = filled ? "fill=\"" + color + "\" stroke=\"" + color + "\""
                                   : "fill=\"white\" stroke=\"" + color + "\" stroke-width=\"1.5\"";
  switch (k % 4) {
    case 0:
      return "<circle cx=\"" + num(x, "%.2f") + "\" cy=\"" + num(y, "%.2f") + "\" r=\"" + num(r) +
             "\" " + style + "/>";
    case 1:
      return "<rect x=\"" + num(x - r, "%.2f") + "\" y=\"" + num(y - r, "%.2f") + "\" width=\"" +
             num(2 * r) + "\" height=\"" + num(2 * r) + "\" " + style + "/>";
    case 2:
      return "<polygon points=\"" + num(x, "%.2f") + "," + num(y - r - 1, "%.2f") + " " +
             num(x - r - 1, "%.2f") + "," + num(y + r, "%.2f") + " " + num(x + r + 1, "%.2f") + "," +
             num(y + r, "%.2f") + "\" " + style + "/>";
    default:
      return "<polygon points=\"" + num(x, "%.2f") + "," + num(y - r - 1, "%.2f") + " " +
             num(x + r + 1, "%.2f") + "," + num(y, "%.2f") + " " + num(x, "%.2f") + "," +
             num(y + r + 1, "%.2f") + " " + num(x - r - 1, "%.2f") + "," + num(y, "%.2f") + "\" " +
             style + "/>";
  }
}

template <class T>
int index_of(std::vector<T>& v, const T& x) {
  auto it = std::find(v.begin(), v.end(), x);
  if (it != v.end()) return static_cast<int>(it - v.begin());
  v.push_back(x);
  return static_cast<int>(v.size() - 1);
}

}  // namespace

void write_analysis_csv(const std::string& path, const std::vector<AnalysisPoint>& points) {
  std::string s = "method,checkpoint,layer,module,module_path,delta_m,delta_d\n";
  for (const auto& p : points)
    s += csv_field(p.method) + "," + csv_field(p.checkpoint) + "," + std::to_string(p.layer) + "," +
         csv_field(p.module) + "," + csv_field(p.module_path) + "," + num(p.delta_m) + "," +
         num(p.delta_d) + "\n";
  io::AtomicWriter w(path);
  w.write(s);
  w.commit();
}

void write_analysis_svg(const std::string& path, const std::vector<AnalysisPoint>& points,
                        const std::string& title) {
  std::vector<std::string> methods, checkpoints, modules;
  std::vector<int64_t> layers;
  for (const auto& p : points) {
    index_of(methods, p.method);
    index_of(checkpoints, p.checkpoint);
    index_of(modules, p.module);
    index_of(layers, p.layer);
  }
  std::sort(layers.begin(), layers.end());
  // A qualitative palette (Tableau 10) for layers.
  static const char* kColors[] = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                                  "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"};
  const double pw = 340, ph = 280, ml = 70, mr = 20, mt = 60, mb = 55;
  const double panel_w = ml + pw + mr;
  const int n_panels = std::max<int>(1, static_cast<int>(methods.size()));
  const double legend_h = 22.0 * static_cast<double>(1 + (layers.size() + 5) / 6) + 22.0;
  const double width = panel_w * n_panels, height = mt + ph + mb + legend_h;
  std::string s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + num(width, "%.0f") +
                  "\" height=\"" + num(height, "%.0f") + "\" viewBox=\"0 0 " + num(width, "%.0f") +
                  " " + num(height, "%.0f") + "\" font-family=\"Helvetica, Arial, sans-serif\">\n";
  s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  s += "<text x=\"" + num(width / 2, "%.1f") + "\" y=\"22\" text-anchor=\"middle\" font-size=\"16\">" +
       xml(title) + "</text>\n";
  for (int pi = 0; pi < n_panels; ++pi) {
    const double x0 = pi * panel_w + ml, y0 = mt;
    std::vector<const AnalysisPoint*> pts;
    for (const auto& p : points)
      if (!methods.empty() && p.method == methods[static_cast<size_t>(pi)]) pts.push_back(&p);
    double xlo = 0, xhi = 0, ylo = 0, yhi = 0;
    bool first = true;
    for (auto* p : pts) {
      if (first) {
        xlo = xhi = p->delta_d;
        ylo = yhi = p->delta_m;
        first = false;
      }
      xlo = std::min(xlo, p->delta_d);
      xhi = std::max(xhi, p->delta_d);
      ylo = std::min(ylo, p->delta_m);
      yhi = std::max(yhi, p->delta_m);
    }
    // Pad the ranges by 8% (a flat range gets a small span around its value).
    auto pad = [](double& lo, double& hi) {
      double span = hi - lo;
      if (span <= 0) span = std::max(std::fabs(hi), 1e-12) * 0.5;
      lo -= 0.08 * span;
      hi += 0.08 * span;
    };
    pad(xlo, xhi);
    pad(ylo, yhi);
    auto X = [&](double v) { return x0 + (v - xlo) / (xhi - xlo) * pw; };
    auto Y = [&](double v) { return y0 + ph - (v - ylo) / (yhi - ylo) * ph; };
    s += "<g>\n<rect x=\"" + num(x0) + "\" y=\"" + num(y0) + "\" width=\"" + num(pw) +
         "\" height=\"" + num(ph) + "\" fill=\"none\" stroke=\"#333\"/>\n";
    for (double t : ticks(xlo, xhi)) {
      const double x = X(t);
      s += "<line x1=\"" + num(x, "%.2f") + "\" y1=\"" + num(y0 + ph) + "\" x2=\"" + num(x, "%.2f") +
           "\" y2=\"" + num(y0 + ph + 5) + "\" stroke=\"#333\"/><text x=\"" + num(x, "%.2f") +
           "\" y=\"" + num(y0 + ph + 18) + "\" text-anchor=\"middle\" font-size=\"10\">" +
           tick_label(t) + "</text>\n";
    }
    for (double t : ticks(ylo, yhi)) {
      const double y = Y(t);
      s += "<line x1=\"" + num(x0 - 5) + "\" y1=\"" + num(y, "%.2f") + "\" x2=\"" + num(x0) +
           "\" y2=\"" + num(y, "%.2f") + "\" stroke=\"#333\"/><text x=\"" + num(x0 - 8) + "\" y=\"" +
           num(y + 3.5, "%.2f") + "\" text-anchor=\"end\" font-size=\"10\">" + tick_label(t) +
           "</text>\n";
    }
    s += "<text x=\"" + num(x0 + pw / 2) + "\" y=\"" + num(y0 + ph + 40) +
         "\" text-anchor=\"middle\" font-size=\"13\">ΔD (direction)</text>\n";
    s += "<text transform=\"translate(" + num(x0 - 55) + "," + num(y0 + ph / 2) +
         ") rotate(-90)\" text-anchor=\"middle\" font-size=\"13\">ΔM (magnitude)</text>\n";
    // Pearson correlation of ΔM and ΔD within each checkpoint (across layers and modules), as
    // the paper reads its figure (full fine-tuning negative, LoRA positive).
    std::string stats;
    for (const auto& ck : checkpoints) {
      double n = 0, mx = 0, my = 0;
      for (auto* p : pts)
        if (p->checkpoint == ck) n += 1, mx += p->delta_d, my += p->delta_m;
      if (n < 3) continue;
      mx /= n;
      my /= n;
      double sxx = 0, syy = 0, sxy = 0;
      for (auto* p : pts) {
        if (p->checkpoint != ck) continue;
        sxx += (p->delta_d - mx) * (p->delta_d - mx);
        syy += (p->delta_m - my) * (p->delta_m - my);
        sxy += (p->delta_d - mx) * (p->delta_m - my);
      }
      if (sxx <= 0 || syy <= 0) continue;
      stats += (stats.empty() ? "r(ΔD, ΔM): " : ", ") + ck + " " + num(sxy / std::sqrt(sxx * syy), "%.2f");
    }
    const std::string name = methods.empty() ? std::string("(no points)") : methods[static_cast<size_t>(pi)];
    s += "<text x=\"" + num(x0 + pw / 2) + "\" y=\"" + num(y0 - 22) +
         "\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">" + xml(name) + "</text>\n";
    if (!stats.empty())
      s += "<text x=\"" + num(x0 + pw / 2) + "\" y=\"" + num(y0 - 7) +
           "\" text-anchor=\"middle\" font-size=\"11\" fill=\"#555\">" + xml(stats) + "</text>\n";
    for (auto* p : pts) {
      const int li = static_cast<int>(std::find(layers.begin(), layers.end(), p->layer) - layers.begin());
      const int ci = index_of(checkpoints, p->checkpoint);
      const int mi = index_of(modules, p->module);
      s += marker(ci, X(p->delta_d), Y(p->delta_m), kColors[li % 10], mi % 2 == 0) + "<title>" +
           xml(p->checkpoint + " " + p->module_path + ": ΔM " + num(p->delta_m, "%.4g") + ", ΔD " +
               num(p->delta_d, "%.4g")) +
           "</title>\n";
    }
    s += "</g>\n";
  }
  // Legend: layers (colours), then checkpoints (shapes) and modules (filled / hollow).
  double ly = mt + ph + mb + 8;
  double lx = 20;
  s += "<text x=\"" + num(lx) + "\" y=\"" + num(ly + 4) + "\" font-size=\"11\">layer:</text>\n";
  lx += 45;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (i && i % 6 == 0) {
      ly += 20;
      lx = 65;
    }
    s += marker(0, lx, ly, kColors[i % 10], true) + "<text x=\"" + num(lx + 8) + "\" y=\"" +
         num(ly + 4) + "\" font-size=\"11\">" + (layers[i] < 0 ? std::string("-") : std::to_string(layers[i])) +
         "</text>\n";
    lx += 40;
  }
  ly += 22;
  lx = 20;
  s += "<text x=\"" + num(lx) + "\" y=\"" + num(ly + 4) + "\" font-size=\"11\">checkpoint:</text>\n";
  lx += 70;
  for (size_t i = 0; i < checkpoints.size(); ++i) {
    s += marker(static_cast<int>(i), lx, ly, "#333", true) + "<text x=\"" + num(lx + 8) + "\" y=\"" +
         num(ly + 4) + "\" font-size=\"11\">" + xml(checkpoints[i]) + "</text>\n";
    lx += 20 + 7.0 * static_cast<double>(checkpoints[i].size());
  }
  lx += 20;
  s += "<text x=\"" + num(lx) + "\" y=\"" + num(ly + 4) + "\" font-size=\"11\">module:</text>\n";
  lx += 52;
  for (size_t i = 0; i < modules.size(); ++i) {
    s += marker(0, lx, ly, "#333", i % 2 == 0) + "<text x=\"" + num(lx + 8) + "\" y=\"" +
         num(ly + 4) + "\" font-size=\"11\">" + xml(modules[i]) + "</text>\n";
    lx += 20 + 7.0 * static_cast<double>(modules[i].size());
  }
  s += "</svg>\n";
  io::AtomicWriter w(path);
  w.write(s);
  w.commit();
}

}  // namespace lorafit::peft
