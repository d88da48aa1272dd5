// PeftModel::add_weighted_adapter: a new adapter from a weighted combination of existing ones, as
// PEFT 0.21 LoraModel.add_weighted_adapter (peft/tuners/lora/model.py) for combination_type
// "cat", "linear" and "svd".
//
// What PEFT does and we do the same:
//   * one adapter given: "linear" whatever was asked;
//   * rank of an adapter = max(r, rank_pattern values); "linear" needs equal ranks (new rank = it),
//     "cat" sums them, "svd" takes svd_rank or else the largest;
//   * config = the first adapter's, with r = lora_alpha = new rank, rank/alpha_pattern cleared,
//     target_modules the union of the lists (or "(re1)|(re2)" for regex targets);
//   * modules_to_save: refused when two adapters keep a copy of the same module; the new adapter
//     gets fresh copies of the base module (as PEFT's inject_adapter);
//   * cat:    A = [w₁s₁A₁; w₂s₂A₂; ...], B = [B₁ B₂ ...]  (exact: B A = Σ wᵢsᵢBᵢAᵢ)
//     linear: A = Σ sgn(wᵢsᵢ)√|wᵢsᵢ| Aᵢ, B = Σ √|wᵢsᵢ| Bᵢ (PEFT's approximation)
//     svd:    ΔW = Σ wᵢ·sᵢ·BᵢAᵢ = U S Vᵀ;  B = U_k S_k, A = V_kᵀ  (best rank-k approximation)
// Where we differ from PEFT, on purpose:
//   * PEFT leaves the new adapter with scaling lora_alpha / r = 1 only without rsLoRA; with
//     use_rslora its scaling is √r and the combined ΔW comes out √r times too large (the A, B
//     above already carry each sᵢ, so the scale is applied twice). We divide B by the new
//     adapter's scaling, so s_new·B A is exactly the combination above (scaled once), for all
//     three types. Without rsLoRA (s_new = 1) our A, B equal PEFT's.
//   * svd factors in double precision (PEFT: the adapters' dtype) and, when svd_rank exceeds
//     min(out, in), leaves the extra rank rows zero (PEFT fails on the shape).
//   * an existing new_name is an error (PEFT silently returns).
#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "lorafit/peft.h"
#include "peft/peft_internal.h"

namespace lorafit::peft {

namespace {

int64_t max_rank(const AdapterConfig& c) {
  int64_t r = c.r;
  for (const auto& [k, v] : c.rank_pattern) r = std::max(r, v);
  return r;
}

}  // namespace

void PeftModel::add_weighted_adapter(const std::vector<std::string>& adapters,
                                     const std::vector<double>& weights,
                                     const std::string& new_name, std::string type,
                                     int64_t svd_rank) {
  const std::string where = "add_weighted_adapter '" + new_name + "': ";
  if (adapters.empty()) fail(where + "no adapters given");
  if (weights.size() != adapters.size())
    fail(where + std::to_string(adapters.size()) + " adapters but " +
         std::to_string(weights.size()) + " weights");
  if (type != "cat" && type != "linear" && type != "svd")
    fail(where + "combination_type '" + type + "' is not supported (cat, linear, svd)");
  if (svd_rank < 0) fail(where + "svd_rank must be positive, got " + std::to_string(svd_rank));
  for (const auto& n : adapter_names())
    if (n == new_name) fail(where + "an adapter with that name already exists");
  for (const auto& n : adapters) (void)config(n);  // throws for unknown names

  // Two adapters keeping a copy of the same module cannot be combined (PEFT's check).
  std::map<std::string, int> saved_by;
  for (const auto& n : adapters)
    for (const auto& m : config(n).modules_to_save.value_or(std::vector<std::string>{}))
      if (++saved_by[m] > 1)
        fail(where + "adapters '" + adapters[0] + "', ... both keep a modules_to_save copy of '" +
             m + "' (PEFT: cannot add weighted adapters if they target the same module with "
             "modules_to_save)");

  if (adapters.size() == 1) type = "linear";
  std::vector<int64_t> ranks;
  for (const auto& n : adapters) ranks.push_back(max_rank(config(n)));
  int64_t new_rank = 0;
  if (type == "linear") {
    for (size_t i = 1; i < ranks.size(); ++i)
      if (ranks[i] != ranks[0])
        fail(where + "combination_type linear needs adapters of the same r, got " +
             std::to_string(ranks[0]) + " ('" + adapters[0] + "') and " + std::to_string(ranks[i]) +
             " ('" + adapters[i] + "')");
    new_rank = ranks[0];
  } else if (type == "cat") {
    for (int64_t r : ranks) new_rank += r;
  } else {
    new_rank = svd_rank > 0 ? svd_rank : *std::max_element(ranks.begin(), ranks.end());
  }

  AdapterConfig cfg = config(adapters[0]);
  for (const auto& n : adapters)
    if (config(n).target_modules_regex != cfg.target_modules_regex)
      fail(where + "adapters mix list and regex target_modules ('" + adapters[0] + "' and '" + n +
           "'), which PEFT does not combine");
  if (cfg.target_modules_regex) {
    std::string re;
    for (const auto& n : adapters) re += (re.empty() ? "(" : "|(") + config(n).target_modules[0] + ")";
    cfg.target_modules = {re};
  } else {
    std::vector<std::string> u;
    for (const auto& n : adapters)
      for (const auto& t : config(n).target_modules)
        if (std::find(u.begin(), u.end(), t) == u.end()) u.push_back(t);
    cfg.target_modules = u;
  }
  cfg.r = new_rank;
  cfg.lora_alpha = static_cast<double>(new_rank);
  cfg.rank_pattern.clear();
  cfg.alpha_pattern.clear();
  cfg.init_lora_weights = LoraInit::Default;  // overwritten below; never touch the base weights
  add_adapter(new_name, cfg, 0);

  // Source layers by module path.
  std::vector<std::map<std::string, LoraLinear*>> src(adapters.size());
  for (size_t i = 0; i < adapters.size(); ++i)
    for (auto& [path, l] : lora_layers(adapters[i])) src[i][path] = l;

  try {
    for (auto& [path, nl] : lora_layers(new_name)) {
      Tensor& A = nl->A.value;  // [R, in]
      Tensor& B = nl->B.value;  // [out, R]
      A.zero();
      B.zero();
      const int64_t R = A.dim(0), in = A.dim(1), out = B.dim(0);
      std::vector<std::pair<LoraLinear*, double>> found;  // layer, weight
      for (size_t i = 0; i < adapters.size(); ++i) {
        auto it = src[i].find(path);
        if (it != src[i].end()) found.emplace_back(it->second, weights[i]);
      }
      if (found.empty()) continue;  // e.g. layers_to_transform differ: the module stays zero
      if (type == "cat") {
        int64_t off = 0;
        for (auto& [l, w] : found) {
          const int64_t r = l->r();
          const float f = static_cast<float>(w * l->scaling());
          for (int64_t j = 0; j < r; ++j)
            for (int64_t c = 0; c < in; ++c)
              A.f32()[(off + j) * in + c] = l->A.value.f32()[j * in + c] * f;
          for (int64_t o = 0; o < out; ++o)
            for (int64_t j = 0; j < r; ++j) B.f32()[o * R + off + j] = l->B.value.f32()[o * r + j];
          off += r;
        }
      } else if (type == "linear") {
        for (auto& [l, w] : found) {
          if (l->r() != R)
            fail(where + "module '" + path + "': combination_type linear needs rank " +
                 std::to_string(R) + " everywhere, got " + std::to_string(l->r()));
          const double ws = w * l->scaling();
          const float fa = static_cast<float>(std::sqrt(std::fabs(ws)) * (ws >= 0 ? 1 : -1));
          const float fb = static_cast<float>(std::sqrt(std::fabs(ws)));
          kernels::axpy(fa, l->A.value, A);
          kernels::axpy(fb, l->B.value, B);
        }
      } else {  // svd of Σ wᵢ·sᵢ·BᵢAᵢ in double
        std::vector<double> d(static_cast<size_t>(out * in), 0.0);
        for (auto& [l, w] : found) {
          const int64_t r = l->r();
          const double f = w * l->scaling();
          const float* a = l->A.value.f32();
          const float* b = l->B.value.f32();
          for (int64_t o = 0; o < out; ++o)
            for (int64_t j = 0; j < r; ++j) {
              const double bj = f * b[o * r + j];
              for (int64_t c = 0; c < in; ++c) d[o * in + c] += bj * a[j * in + c];
            }
        }
        std::vector<double> U, S, Vt;
        linalg::svd(d, out, in, U, S, Vt);
        const int64_t k = static_cast<int64_t>(S.size()), kk = std::min(R, k);
        for (int64_t j = 0; j < kk; ++j) {
          for (int64_t c = 0; c < in; ++c) A.f32()[j * in + c] = static_cast<float>(Vt[j * in + c]);
          for (int64_t o = 0; o < out; ++o)
            B.f32()[o * R + j] = static_cast<float>(U[o * k + j] * S[j]);
        }
      }
      // Scale once: s_new · B A must be the combination (s_new = 1 unless use_rslora).
      const double s_new = nl->scaling();
      if (std::fabs(s_new - 1.0) > 1e-12)
        for (int64_t i = 0; i < B.numel(); ++i)
          B.f32()[i] = static_cast<float>(B.f32()[i] / s_new);
    }
  } catch (...) {
    delete_adapter(new_name);
    throw;
  }
}

}  // namespace lorafit::peft
