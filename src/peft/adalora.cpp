// AdaLoRA (Zhang et al. 2023) as PEFT 0.21.2 implements it (peft/tuners/adalora/{config,layer,
// model}.py): SVDLinear, the orthogonal regularization, the RankAllocator and the AdaLoraConfig
// fields of adapter_config.json.
#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "lorafit/kernels.h"
#include "lorafit/peft.h"
#include "peft/peft_internal.h"

namespace lorafit::peft {

namespace {

const std::string kPrefix = "base_model.model.";

// The rank_pattern entry of a module path (key "<path>.lora_E"), or null.
const std::vector<bool>* mask_for(const AdapterConfig& cfg, const std::string& path) {
  const std::string key = path + ".lora_E";
  for (const auto& [k, v] : cfg.adalora_rank_pattern)
    if (k == key) return &v;
  return nullptr;
}

}  // namespace

// ---- SVDLinear ----------------------------------------------------------------------------------

SVDLinear::SVDLinear(const nn::Linear& base, int64_t r, double alpha, int64_t ranknum,
                     float dropout_p)
    : LoraLinear(base, r, alpha, false, dropout_p), ranknum_(ranknum) {
  E.value = Tensor::zeros({r, 1});
  // PEFT: scaling = lora_alpha (or r when alpha <= 0); ranknum is an fp32 tensor, + 1e-5 in fp32.
  const double scaling = alpha > 0 ? alpha : static_cast<double>(r);
  const float rn = static_cast<float>(ranknum) + 1e-5f;
  svd_scaling_ = static_cast<float>(scaling / static_cast<double>(rn));
}

void SVDLinear::init_svd(bool init_lora_weights, uint64_t seed) {
  uint64_t counter = 0;
  auto normal = [&](Tensor& t, double std) {
    float* p = t.f32();
    for (int64_t i = 0; i < t.numel(); ++i) {
      double u1 = 1.0 - nn::random_uniform(seed, counter++);  // Box–Muller, log stays finite
      double u2 = nn::random_uniform(seed, counter++);
      p[i] = static_cast<float>(std * std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
    }
  };
  normal(A.value, init_lora_weights ? 0.02 : 1.0);
  normal(B.value, init_lora_weights ? 0.02 : 1.0);
  if (init_lora_weights)
    E.value.zero();
  else
    normal(E.value, 1.0);
}

void SVDLinear::forward(nn::Context& ctx, const nn::Linear& base, const Tensor& x, Tensor& y) {
  const int64_t in = base.in_features(), out = base.out_features(), r = rank();
  const int64_t n = x.numel() / in;
  if (A.value.dim(1) != in || B.value.dim(0) != out || B.value.dim(1) != r || E.value.dim(0) != r)
    fail("AdaLoRA on Linear [" + std::to_string(out) + ", " + std::to_string(in) + "]: lora_A is " +
         A.value.str() + ", lora_E is " + E.value.str() + ", lora_B is " + B.value.str());
  Tensor xd = drop.forward(ctx, x, n, in);
  xd_ = xd;
  ae_ = ctx.alloc({r, in});  // A ⊙ E: row i of A times E_i
  const float* a = A.value.f32();
  const float* e = E.value.f32();
  float* ae = ae_.f32();
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < in; ++j) ae[i * in + j] = a[i * in + j] * e[i];
  h_ = ctx.alloc({n, r});
  if (n == 0 || r == 0) return;
  kernels::gemm(xd, false, ae_, true, h_);  // h [n, r] = xd · AEᵀ
  Tensor y2 = y.view({n, out});
  kernels::gemm(h_, false, B.value, true, y2, svd_scaling_, 1.0f);  // y += s · h Bᵀ
}

void SVDLinear::backward(nn::Context& ctx, const nn::Linear& base, const Tensor& dy, Tensor* dx) {
  if (!h_.defined()) fail("AdaLoRA backward called before forward");
  const int64_t in = base.in_features(), out = base.out_features(), r = rank();
  const int64_t n = h_.dim(0);
  if (n == 0 || r == 0) return;
  Tensor dy2 = dy.view({n, out});
  if (B.trainable) kernels::gemm(dy2, true, h_, false, B.grad, svd_scaling_, 1.0f);  // dB += s dyᵀh
  if (!A.trainable && !E.trainable && dx == nullptr) return;
  Tensor dh = ctx.alloc({n, r});
  kernels::gemm(dy2, false, B.value, false, dh, svd_scaling_, 0.0f);  // dh = s · dy B
  if (A.trainable || E.trainable) {
    Tensor dae = ctx.alloc({r, in});
    kernels::gemm(dh, true, xd_, false, dae);  // dAE [r, in] = dhᵀ xd
    const float* g = dae.f32();
    const float* a = A.value.f32();
    const float* e = E.value.f32();
    for (int64_t i = 0; i < r; ++i) {
      double de = 0.0;
      for (int64_t j = 0; j < in; ++j) {
        if (A.trainable) A.grad.f32()[i * in + j] += g[i * in + j] * e[i];
        de += static_cast<double>(g[i * in + j]) * a[i * in + j];
      }
      if (E.trainable) E.grad.f32()[i] += static_cast<float>(de);
    }
  }
  if (dx == nullptr) return;
  Tensor dx2 = dx->view({n, in});
  if (!drop.dropped()) {
    kernels::gemm(dh, false, ae_, false, dx2, 1.0f, 1.0f);  // dx += dh AE
    return;
  }
  Tensor dxd = ctx.alloc({n, in});
  kernels::gemm(dh, false, ae_, false, dxd);
  drop.backward_add(dxd, dx2);
}

std::vector<std::pair<std::string, nn::Parameter*>> SVDLinear::named_tensors() const {
  auto* self = const_cast<SVDLinear*>(this);
  return {{"lora_A", &self->A}, {"lora_B", &self->B}, {"lora_E", &self->E}};
}

Tensor SVDLinear::delta_weight() const {
  const int64_t r = rank(), in = A.value.dim(1);
  Tensor ae = Tensor::zeros({r, in});
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < in; ++j)
      ae.f32()[i * in + j] = A.value.f32()[i * in + j] * E.value.f32()[i];
  Tensor d = Tensor::zeros({B.value.dim(0), in});
  if (r > 0) kernels::gemm(B.value, false, ae, false, d, svd_scaling_, 0.0f);
  return d;
}

// ---- orthogonal regularization
// -------------------------------------------------------------------

double adalora_orth_reg(const std::vector<SVDLinear*>& layers, double weight, double grad_scale) {
  if (layers.empty()) return 0.0;
  const double num = 2.0 * static_cast<double>(layers.size());  // every lora_A and lora_B
  double total = 0.0;
  // One matrix P [rows, cols]: M = P Pᵀ − I over rows (A: rows = r) or Pᵀ P − I over cols
  // (B: cols = r); f = ‖M‖_F; df/dP = 2 M P / f resp. 2 P M / f.
  auto term = [&](nn::Parameter& p, bool rows) {
    const int64_t R = p.value.dim(0), C = p.value.dim(1);
    const int64_t k = rows ? R : C;  // size of M
    const float* v = p.value.f32();
    auto at = [&](int64_t i, int64_t j) { return static_cast<double>(v[i * C + j]); };
    std::vector<double> m(static_cast<size_t>(k * k));
    for (int64_t a = 0; a < k; ++a)
      for (int64_t b = 0; b < k; ++b) {
        double s = 0.0;
        if (rows)
          for (int64_t j = 0; j < C; ++j) s += at(a, j) * at(b, j);
        else
          for (int64_t i = 0; i < R; ++i) s += at(i, a) * at(i, b);
        m[a * k + b] = s - (a == b ? 1.0 : 0.0);
      }
    double f2 = 0.0;
    for (double x : m) f2 += x * x;
    const double f = std::sqrt(f2);
    total += f;
    if (grad_scale == 0.0 || !p.trainable || f == 0.0) return;
    const double c = grad_scale * weight / num * 2.0 / f;
    float* g = p.grad.f32();
    for (int64_t i = 0; i < R; ++i)
      for (int64_t j = 0; j < C; ++j) {
        double s = 0.0;
        if (rows)
          for (int64_t b = 0; b < k; ++b) s += m[i * k + b] * at(b, j);  // (M A)_ij
        else
          for (int64_t b = 0; b < k; ++b) s += at(i, b) * m[b * k + j];  // (B M)_ij
        g[i * C + j] += static_cast<float>(c * s);
      }
  };
  for (SVDLinear* l : layers) {
    term(l->A, true);
    term(l->B, false);
  }
  return weight * total / num;
}

// ---- RankAllocator
// ---------------------------------------------------------------------------------

RankAllocator::RankAllocator(const AdapterConfig& cfg,
                             std::vector<std::pair<std::string, SVDLinear*>> layers)
    : cfg_(cfg), layers_(std::move(layers)) {
  adalora_validate(cfg_, "AdaLoRA rank allocator");
  if (layers_.empty()) fail("AdaLoRA rank allocator: the adapter has no AdaLoRA layers");
  // The final mask (step total_step − tfinal) ranks importance from the steps before it; PEFT
  // fails there with a KeyError when there were none.
  if (cfg_.total_step - cfg_.tfinal < 2)
    fail("AdaLoRA rank allocator: field 'total_step': total_step − tfinal = " +
         std::to_string(cfg_.total_step - cfg_.tfinal) +
         " leaves no step to measure importance before the final mask (train longer)");
  for (auto& [path, l] : layers_) init_bgt_ += l->rank();
  target_bgt_ = cfg_.target_r * static_cast<int64_t>(layers_.size());
}

std::pair<int64_t, bool> RankAllocator::budget_schedule(int64_t step) const {
  const int64_t tinit = cfg_.tinit, tfinal = cfg_.tfinal, total = cfg_.total_step;
  if (step <= tinit) return {init_bgt_, false};
  if (step > total - tfinal) return {target_bgt_, true};
  // Python: 1 - (step - tinit) / (total - tfinal - tinit), ** 3, int() truncates.
  const double mul =
      1.0 - static_cast<double>(step - tinit) / static_cast<double>(total - tfinal - tinit);
  const double b = static_cast<double>(init_bgt_ - target_bgt_) * std::pow(mul, 3.0) +
                   static_cast<double>(target_bgt_);
  return {static_cast<int64_t>(b), step % cfg_.deltaT == 0};
}

// PEFT update_ipt, in fp32 exactly as torch evaluates it (one rounding per op):
//   ipt = |p · g|;  ema = β1·ema + (1−β1)·ipt;  unc = β2·unc + (1−β2)·|ipt − ema|.
void RankAllocator::update_ipt() {
  const float b1 = static_cast<float>(cfg_.beta1), c1 = static_cast<float>(1.0 - cfg_.beta1);
  const float b2 = static_cast<float>(cfg_.beta2), c2 = static_cast<float>(1.0 - cfg_.beta2);
  auto upd = [&](const std::string& path, const nn::Parameter& p, Ema& e) {
    if (!p.grad.defined())
      fail("AdaLoRA rank allocator: " + path + " has no gradient (is the adapter trainable?)");
    const size_t n = static_cast<size_t>(p.value.numel());
    if (e.ipt.size() != n) e.ipt.assign(n, 0.0f), e.unc.assign(n, 0.0f);
    const float* v = p.value.f32();
    const float* g = p.grad.f32();
    for (size_t i = 0; i < n; ++i) {
      const float ipt = std::fabs(v[i] * g[i]);
      const float a = b1 * e.ipt[i];
      const float b = c1 * ipt;
      e.ipt[i] = a + b;
      const float d = std::fabs(ipt - e.ipt[i]);
      const float u1 = b2 * e.unc[i];
      const float u2 = c2 * d;
      e.unc[i] = u1 + u2;
    }
  };
  if (!have_ema_) {
    ema_a_.assign(layers_.size(), {});
    ema_e_.assign(layers_.size(), {});
    ema_b_.assign(layers_.size(), {});
    have_ema_ = true;
  }
  for (size_t l = 0; l < layers_.size(); ++l) {
    SVDLinear& s = *layers_[l].second;
    upd(layers_[l].first + ".lora_A", s.A, ema_a_[l]);
    upd(layers_[l].first + ".lora_E", s.E, ema_e_[l]);
    upd(layers_[l].first + ".lora_B", s.B, ema_b_[l]);
  }
}

// PEFT mask_to_budget: triplet scores, kthvalue threshold (k = init_bgt − budget), E_i = 0 where
// S_i <= threshold (ties below or at the threshold all go). Returns the threshold.
double RankAllocator::mask_to_budget(int64_t budget) {
  if (!have_ema_) fail("AdaLoRA rank allocator: masking before any importance update");
  scores_.assign(layers_.size(), {});
  std::vector<float> all;
  for (size_t l = 0; l < layers_.size(); ++l) {
    SVDLinear& s = *layers_[l].second;
    const int64_t r = s.rank(), in = s.A.value.dim(1), out = s.B.value.dim(0);
    auto score = [](const Ema& e, size_t i) { return e.ipt[i] * e.unc[i]; };
    for (int64_t i = 0; i < r; ++i) {
      double sa = 0.0, sb = 0.0;  // torch.mean: the sum, then / n in fp32
      for (int64_t j = 0; j < in; ++j) sa += score(ema_a_[l], static_cast<size_t>(i * in + j));
      for (int64_t j = 0; j < out; ++j) sb += score(ema_b_[l], static_cast<size_t>(j * r + i));
      const float ma = static_cast<float>(sa) / static_cast<float>(in);
      const float mb = static_cast<float>(sb) / static_cast<float>(out);
      const float ab = ma + mb;
      const float v = score(ema_e_[l], static_cast<size_t>(i)) + ab;
      scores_[l].push_back(v);
      all.push_back(v);
    }
  }
  const int64_t k = init_bgt_ - budget;
  // PEFT's kthvalue needs 1 <= k <= n; k = 0 (budget = init_bgt, e.g. target_r == init_r) keeps
  // everything here instead of failing.
  double thr = -INFINITY;
  if (k > static_cast<int64_t>(all.size())) fail("AdaLoRA rank allocator: budget below zero");
  if (k >= 1) {
    std::nth_element(all.begin(), all.begin() + (k - 1), all.end());
    thr = all[static_cast<size_t>(k - 1)];
  }
  pattern_.clear();
  for (size_t l = 0; l < layers_.size(); ++l) {
    SVDLinear& s = *layers_[l].second;
    std::vector<bool> keep_mask;
    for (int64_t i = 0; i < s.rank(); ++i) {
      const bool kp = !(static_cast<double>(scores_[l][static_cast<size_t>(i)]) <= thr);
      if (!kp) s.E.value.f32()[i] = 0.0f;  // masked_fill_ in place
      keep_mask.push_back(kp);
    }
    pattern_.emplace_back(layers_[l].first + ".lora_E", std::move(keep_mask));
  }
  return thr;
}

void RankAllocator::mask_using_pattern() {
  for (size_t l = 0; l < layers_.size() && l < pattern_.size(); ++l) {
    SVDLinear& s = *layers_[l].second;
    for (int64_t i = 0; i < s.rank(); ++i)
      if (!pattern_[l].second[static_cast<size_t>(i)]) s.E.value.f32()[i] = 0.0f;
  }
}

RankAllocator::Step RankAllocator::update_and_allocate(int64_t step) {
  Step r;
  const int64_t freeze = cfg_.total_step - cfg_.tfinal;
  if (step < freeze) {
    update_ipt();
    auto [budget, mask] = budget_schedule(step);
    r.budget = budget;
    if (mask) {
      r.threshold = mask_to_budget(budget);
      r.masked = r.new_pattern = true;
    }
  } else if (step == freeze) {  // force_mask: the final budget, then the mask freezes
    r.budget = budget_schedule(step).first;
    r.threshold = mask_to_budget(r.budget);
    r.masked = r.new_pattern = true;
    ema_a_.clear(), ema_e_.clear(), ema_b_.clear();  // reset_ipt
    have_ema_ = false;
  } else {
    r.budget = target_bgt_;
    mask_using_pattern();
    r.masked = !pattern_.empty();
  }
  return r;
}

std::vector<std::pair<std::string, Tensor>> RankAllocator::state() const {
  std::vector<std::pair<std::string, Tensor>> out;
  auto vec = [](const std::vector<float>& v) {
    Tensor t = Tensor::zeros({static_cast<int64_t>(v.size())});
    std::copy(v.begin(), v.end(), t.f32());
    return t;
  };
  if (have_ema_)
    for (size_t l = 0; l < layers_.size(); ++l)
      for (auto [w, e] : {std::pair{".lora_A", &ema_a_[l]}, std::pair{".lora_E", &ema_e_[l]},
                          std::pair{".lora_B", &ema_b_[l]}}) {
        if (e->ipt.empty()) continue;
        out.emplace_back("exp_avg_ipt." + layers_[l].first + w, vec(e->ipt));
        out.emplace_back("exp_avg_unc." + layers_[l].first + w, vec(e->unc));
      }
  for (const auto& [k, m] : pattern_) {
    std::vector<float> f(m.begin(), m.end());
    out.emplace_back("rank_pattern." + k, vec(f));
  }
  return out;
}

void RankAllocator::load_state(const io::SafetensorsFile& f, const std::string& origin) {
  auto get = [&](const std::string& name, size_t n) {
    Tensor t = f.get_f32(name);
    if (static_cast<size_t>(t.numel()) != n)
      fail(origin + ": tensor '" + name + "' has " + std::to_string(t.numel()) +
           " values, expected " + std::to_string(n));
    return std::vector<float>(t.f32(), t.f32() + t.numel());
  };
  const std::string probe = "exp_avg_ipt." + layers_[0].first + ".lora_A";
  have_ema_ = f.contains(probe);
  ema_a_.assign(layers_.size(), {});
  ema_e_.assign(layers_.size(), {});
  ema_b_.assign(layers_.size(), {});
  if (!have_ema_) ema_a_.clear(), ema_e_.clear(), ema_b_.clear();
  pattern_.clear();
  for (size_t l = 0; l < layers_.size(); ++l) {
    SVDLinear& s = *layers_[l].second;
    if (have_ema_)
      for (auto [w, e, p] :
           {std::tuple{".lora_A", &ema_a_[l], &s.A}, std::tuple{".lora_E", &ema_e_[l], &s.E},
            std::tuple{".lora_B", &ema_b_[l], &s.B}}) {
        const size_t n = static_cast<size_t>(p->value.numel());
        e->ipt = get("exp_avg_ipt." + layers_[l].first + w, n);
        e->unc = get("exp_avg_unc." + layers_[l].first + w, n);
      }
    const std::string key = "rank_pattern." + layers_[l].first + ".lora_E";
    if (f.contains(key)) {
      std::vector<float> m = get(key, static_cast<size_t>(s.rank()));
      pattern_.emplace_back(layers_[l].first + ".lora_E", std::vector<bool>(m.begin(), m.end()));
    }
  }
  if (!pattern_.empty() && pattern_.size() != layers_.size())
    fail(origin + ": rank_pattern covers " + std::to_string(pattern_.size()) + " of " +
         std::to_string(layers_.size()) + " AdaLoRA modules");
}

// ---- PeftModel hooks
// ---------------------------------------------------------------------------------

std::unique_ptr<SVDLinear> make_svd_layer(const AdapterConfig& cfg, const std::string& path,
                                          const nn::Linear& lin, uint64_t seed) {
  int64_t r = cfg.init_r;
  if (const auto* m = mask_for(cfg, path)) {
    if (static_cast<int64_t>(m->size()) != cfg.init_r)
      fail("field 'rank_pattern." + path + ".lora_E': has " + std::to_string(m->size()) +
           " entries, init_r is " + std::to_string(cfg.init_r));
    r = std::count(m->begin(), m->end(), true);
    if (r == 0)
      fail("field 'rank_pattern." + path +
           ".lora_E': every rank is pruned (rank 0 is not supported)");
  }
  auto l = std::make_unique<SVDLinear>(lin, r, cfg.lora_alpha, cfg.init_r,
                                       static_cast<float>(cfg.lora_dropout));
  l->init_svd(cfg.init_lora_weights != LoraInit::Random, seed);
  return l;
}

void SVDLinear::append_state(const AdapterConfig& cfg, const std::string& key,
                             std::vector<std::pair<std::string, Tensor>>& out) const {
  const SVDLinear& l = *this;
  const std::string path =
      key.compare(0, kPrefix.size(), kPrefix) == 0 ? key.substr(kPrefix.size()) : key;
  const std::vector<bool>* m = mask_for(cfg, path);
  const int64_t r = l.rank(), in = l.A.value.dim(1), o = l.B.value.dim(0);
  if (m == nullptr || static_cast<int64_t>(m->size()) != r) {  // unpruned (or already pruned)
    out.emplace_back(key + ".lora_A", l.A.value);
    out.emplace_back(key + ".lora_B", l.B.value);
    out.emplace_back(key + ".lora_E", l.E.value);
    return;
  }
  // PEFT resize_state_dict_by_rank_pattern: rows of A and E, columns of B where the mask is true.
  const int64_t k = std::count(m->begin(), m->end(), true);
  Tensor A = Tensor::zeros({k, in}), E = Tensor::zeros({k, 1}), B = Tensor::zeros({o, k});
  int64_t row = 0;
  for (int64_t i = 0; i < r; ++i) {
    if (!(*m)[static_cast<size_t>(i)]) continue;
    std::copy_n(l.A.value.f32() + i * in, in, A.f32() + row * in);
    E.f32()[row] = l.E.value.f32()[i];
    for (int64_t j = 0; j < o; ++j) B.f32()[j * k + row] = l.B.value.f32()[j * r + i];
    ++row;
  }
  out.emplace_back(key + ".lora_A", A);
  out.emplace_back(key + ".lora_B", B);
  out.emplace_back(key + ".lora_E", E);
}

}  // namespace lorafit::peft
