// AdamW, gradient clipping, learning-rate schedules, classification metrics.
#include <cmath>
#include <numbers>

#include "lorafit/train.h"

namespace lorafit::train {

AdamW::AdamW(std::vector<ParamGroup> groups, AdamWOptions opt)
    : groups_(std::move(groups)), opt_(opt) {
  for (auto& g : groups_) {
    LORAFIT_CHECK(g.param && g.param->trainable, "adamw",
                  "parameter '" + g.name + "' is not trainable");
    m_.push_back(Tensor::zeros(g.param->value.shape()));
    v_.push_back(Tensor::zeros(g.param->value.shape()));
  }
}

void AdamW::step(float lr) {
  ++t_;
  // Bias corrections in double: 1 - b^t loses digits in fp32 for b2 = 0.999 and small t.
  const double bc1 = 1.0 - std::pow(static_cast<double>(opt_.beta1), static_cast<double>(t_));
  const double bc2 = 1.0 - std::pow(static_cast<double>(opt_.beta2), static_cast<double>(t_));
  const float b1 = opt_.beta1, b2 = opt_.beta2;
  for (size_t i = 0; i < groups_.size(); ++i) {
    const auto& g = groups_[i];
    const float glr = lr * g.lr_mult;
    const auto step_size = static_cast<float>(glr / bc1);
    const auto sqrt_bc2 = static_cast<float>(std::sqrt(bc2));
    float* p = g.param->value.f32();
    const float* gr = g.param->grad.f32();
    float* m = m_[i].f32();
    float* v = v_[i].f32();
    const int64_t n = g.param->value.numel();
    const float decay = 1.0f - glr * g.weight_decay;  // decoupled (Loshchilov & Hutter, alg. 2)
    for (int64_t j = 0; j < n; ++j) {
      p[j] *= decay;
      m[j] = b1 * m[j] + (1.0f - b1) * gr[j];
      v[j] = b2 * v[j] + (1.0f - b2) * gr[j] * gr[j];
      p[j] -= step_size * m[j] / (std::sqrt(v[j]) / sqrt_bc2 + opt_.eps);
    }
  }
}

void AdamW::zero_grad() {
  for (auto& g : groups_) g.param->zero_grad();
}

std::vector<std::pair<std::string, Tensor>> AdamW::state() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (size_t i = 0; i < groups_.size(); ++i) {
    out.emplace_back(groups_[i].name + ".exp_avg", m_[i]);
    out.emplace_back(groups_[i].name + ".exp_avg_sq", v_[i]);
  }
  // The step count as an I32 pair (low, high) so that safetensors can hold it exactly.
  out.emplace_back("step", Tensor::from_ints({2}, {static_cast<int32_t>(t_ & 0x7FFFFFFF),
                                                   static_cast<int32_t>(t_ >> 31)}));
  return out;
}

void AdamW::load_state(const std::map<std::string, Tensor>& st, const std::string& origin) {
  auto get = [&](const std::string& k) -> const Tensor& {
    auto it = st.find(k);
    if (it == st.end()) throw Error("[adamw] " + origin + ": no tensor '" + k + "'");
    return it->second;
  };
  for (size_t i = 0; i < groups_.size(); ++i) {
    for (auto [suffix, dst] : {std::pair{".exp_avg", &m_[i]}, std::pair{".exp_avg_sq", &v_[i]}}) {
      const Tensor& t = get(groups_[i].name + suffix);
      if (t.shape() != dst->shape() || t.dtype() != tensor::DType::F32)
        throw Error("[adamw] " + origin + ": '" + groups_[i].name + suffix + "' is " + t.str() +
                    ", expected F32" + tensor::shape_str(dst->shape()));
      dst->copy_from(t);
    }
  }
  const Tensor& s = get("step");
  LORAFIT_CHECK(s.numel() == 2 && s.dtype() == tensor::DType::I32, "adamw",
                origin + ": bad 'step'");
  t_ = static_cast<int64_t>(s.i32()[0]) | (static_cast<int64_t>(s.i32()[1]) << 31);
}

double clip_grad_norm(const std::vector<ParamGroup>& groups, double max_norm) {
  double ss = 0;
  for (auto& g : groups) {
    const float* gr = g.param->grad.f32();
    for (int64_t j = 0, n = g.param->grad.numel(); j < n; ++j) ss += static_cast<double>(gr[j]) * gr[j];
  }
  const double norm = std::sqrt(ss);
  if (max_norm > 0 && norm > max_norm) {
    const auto coef = static_cast<float>(max_norm / (norm + 1e-6));
    for (auto& g : groups) {
      float* gr = g.param->grad.f32();
      for (int64_t j = 0, n = g.param->grad.numel(); j < n; ++j) gr[j] *= coef;
    }
  }
  return norm;
}

ScheduleKind parse_schedule(const std::string& s) {
  if (s == "constant") return ScheduleKind::Constant;
  if (s == "linear") return ScheduleKind::Linear;
  if (s == "cosine") return ScheduleKind::Cosine;
  throw Error("[train] schedule '" + s + "': expected constant, linear or cosine");
}

const char* schedule_name(ScheduleKind k) {
  switch (k) {
    case ScheduleKind::Constant: return "constant";
    case ScheduleKind::Linear: return "linear";
    case ScheduleKind::Cosine: return "cosine";
  }
  return "?";
}

float lr_multiplier(ScheduleKind kind, int64_t step, int64_t warmup, int64_t total) {
  if (step < warmup) return static_cast<float>(step) / static_cast<float>(std::max<int64_t>(1, warmup));
  if (kind == ScheduleKind::Constant) return 1.0f;
  const double progress = static_cast<double>(step - warmup) /
                          static_cast<double>(std::max<int64_t>(1, total - warmup));
  if (kind == ScheduleKind::Linear) return static_cast<float>(std::max(0.0, 1.0 - progress));
  // transformers' cosine with num_cycles = 0.5.
  return static_cast<float>(std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * progress))));
}

ClassMetrics classification_metrics(const std::vector<int32_t>& pred,
                                    const std::vector<int32_t>& gold, int64_t num_labels) {
  LORAFIT_CHECK(pred.size() == gold.size(), "metrics", "predictions and labels differ in count");
  ClassMetrics r;
  r.n = static_cast<int64_t>(gold.size());
  if (gold.empty()) return r;
  const auto k = static_cast<size_t>(std::max<int64_t>(num_labels, 2));
  std::vector<double> conf(k * k, 0.0);  // conf[gold * k + pred]
  for (size_t i = 0; i < gold.size(); ++i) {
    LORAFIT_CHECK(gold[i] >= 0 && static_cast<size_t>(gold[i]) < k && pred[i] >= 0 &&
                      static_cast<size_t>(pred[i]) < k,
                  "metrics", "label out of range");
    conf[static_cast<size_t>(gold[i]) * k + static_cast<size_t>(pred[i])] += 1;
  }
  double correct = 0, n = static_cast<double>(gold.size());
  std::vector<double> t(k, 0), p(k, 0);  // per class: true count, predicted count
  for (size_t a = 0; a < k; ++a)
    for (size_t b = 0; b < k; ++b) {
      t[a] += conf[a * k + b];
      p[b] += conf[a * k + b];
      if (a == b) correct += conf[a * k + b];
    }
  r.accuracy = correct / n;
  auto f1_of = [&](size_t c) {
    double tp = conf[c * k + c];
    double denom = t[c] + p[c];
    return denom > 0 ? 2 * tp / denom : 0.0;
  };
  if (k == 2) {
    r.f1 = f1_of(1);
  } else {
    double s = 0;
    for (size_t c = 0; c < k; ++c) s += f1_of(c);
    r.f1 = s / static_cast<double>(k);
  }
  // Multiclass MCC (Gorodkin 2004), equal to the binary formula for k = 2:
  // (c·s - Σ p_k t_k) / sqrt((s² - Σ p_k²)(s² - Σ t_k²)).
  double sum_pt = 0, sum_pp = 0, sum_tt = 0;
  for (size_t c = 0; c < k; ++c) {
    sum_pt += p[c] * t[c];
    sum_pp += p[c] * p[c];
    sum_tt += t[c] * t[c];
  }
  const double den = std::sqrt((n * n - sum_pp) * (n * n - sum_tt));
  r.mcc = den > 0 ? (correct * n - sum_pt) / den : 0.0;
  return r;
}

}  // namespace lorafit::train
