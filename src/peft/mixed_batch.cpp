// Mixed-batch inference: each example of a batch names its adapter (PEFT's adapter_names forward
// argument, LoraLayer._mixed_batch_forward and ModulesToSaveWrapper._mixed_batch_forward). The
// routing is held by the peft layers themselves (LoraLinear::route, and an Override adapter on a
// modules_to_save Linear), so models and nn need no change: every LoRA layer adds
// s·B A x only to the rows of its own examples, and a modules_to_save Linear recomputes the rows
// of examples whose adapter keeps a copy of it.
#include <algorithm>
#include <map>
#include <set>

#include "lorafit/kernels.h"
#include "lorafit/peft.h"
#include "peft/peft_internal.h"

namespace lorafit::peft {

namespace {

// Rows per example of a Linear input with n rows for a batch of `batch` examples.
int64_t rows_per_example(int64_t n, size_t batch, const char* who) {
  if (batch == 0 || n % static_cast<int64_t>(batch) != 0)
    fail(std::string(who) + ": mixed batch of " + std::to_string(batch) + " adapter names, but the " +
         "layer input has " + std::to_string(n) + " rows (not a multiple; one name per example)");
  return n / static_cast<int64_t>(batch);
}

// Runs [e0, e1) of consecutive examples whose name is `name`, calling f(e0, e1).
template <class F>
void for_runs(const std::vector<std::string>& names, const std::string& name, F&& f) {
  const size_t b = names.size();
  for (size_t e = 0; e < b;) {
    if (names[e] != name) { ++e; continue; }
    size_t e1 = e;
    while (e1 < b && names[e1] == name) ++e1;
    f(static_cast<int64_t>(e), static_cast<int64_t>(e1));
    e = e1;
  }
}

}  // namespace

void LoraLinear::forward_routed(nn::Context& ctx, const nn::Linear& base, const Tensor& x,
                                Tensor& y) {
  if (ctx.training)
    fail("mixed-batch (adapter_names) forward is inference only; it was called with training on");
  routed_ = true;
  const int64_t in = base.in_features(), out = base.out_features();
  const int64_t n = x.numel() / in;
  const auto& names = *route;
  const int64_t rpe = rows_per_example(n, names.size(), "LoRA");
  const float* xs = x.f32();
  float* ys = y.f32();
  for_runs(names, adapter_name, [&](int64_t e0, int64_t e1) {
    const int64_t r0 = e0 * rpe, m = (e1 - e0) * rpe;
    std::vector<float> h(static_cast<size_t>(m * r_));
    // h [m, r] = x_rows Aᵀ;  y_rows += s · h Bᵀ  (no dropout: inference)
    kernels::gemm_raw(false, true, m, r_, in, 1.0f, xs + r0 * in, in, A.value.f32(), in, 0.0f,
                      h.data(), r_);
    kernels::gemm_raw(false, true, m, out, r_, scaling_, h.data(), r_, B.value.f32(), r_, 1.0f,
                      ys + r0 * out, out);
  });
}

// modules_to_save on a Linear: rows of examples whose adapter keeps its own copy are recomputed
// with that copy (the Linear itself ran with the base weights).
struct MixedBatch::Override : nn::LinearAdapter {
  std::map<std::string, std::pair<Tensor, Tensor>> copies;  // adapter -> weight, bias
  const std::vector<std::string>* names_of = nullptr;       // one adapter name per example
  void forward(nn::Context& ctx, const nn::Linear& base, const Tensor& x, Tensor& y) override {
    if (ctx.training) fail("mixed-batch (adapter_names) forward is inference only");
    const int64_t in = base.in_features(), out = base.out_features();
    const int64_t n = x.numel() / in;
    const auto& names = *names_of;
    const int64_t rpe = rows_per_example(n, names.size(), "modules_to_save");
    for (auto& [name, wb] : copies) {
      const Tensor& w = wb.first;
      const Tensor& b = wb.second;
      for_runs(names, name, [&](int64_t e0, int64_t e1) {
        const int64_t r0 = e0 * rpe, m = (e1 - e0) * rpe;
        float* yr = y.f32() + r0 * out;
        kernels::gemm_raw(false, true, m, out, in, 1.0f, x.f32() + r0 * in, in, w.f32(), in, 0.0f,
                          yr, out);
        if (b.defined())
          for (int64_t i = 0; i < m; ++i)
            for (int64_t o = 0; o < out; ++o) yr[i * out + o] += b.f32()[o];
      });
    }
  }
  void backward(nn::Context&, const nn::Linear&, const Tensor&, Tensor*) override {
    fail("mixed-batch (adapter_names) forward is inference only: no backward");
  }
};

MixedBatch::MixedBatch(PeftModel& pm, nn::Context& ctx, std::vector<std::string> names)
    : pm_(pm), names_(std::move(names)), was_disabled_(pm.adapters_disabled()) {
  if (names_.empty()) fail("mixed batch: no adapter names given");
  if (ctx.training) fail("mixed batch (adapter_names) is inference only; the context is training");
  if (pm.merged()) fail("mixed batch (adapter_names) cannot run while an adapter is merged");
  const std::vector<std::string> have = pm.adapter_names();
  std::set<std::string> used;
  for (size_t i = 0; i < names_.size(); ++i) {
    const std::string& n = names_[i];
    if (n != kBase && std::find(have.begin(), have.end(), n) == have.end()) {
      std::string h;
      for (auto& a : have) h += (h.empty() ? "" : ", ") + a;
      fail("mixed batch: example " + std::to_string(i) + " names adapter '" + n +
           "', which does not exist (have: " + h + ", or " + kBase + ")");
    }
    if (n != kBase) used.insert(n);
  }
  // Routing is implemented for plain LoRA layers; a DoRA or AdaLoRA layer would not honour it.
  for (const auto& a : have)
    for (auto& [path, l] : pm.lora_layers(a))
      if (std::string(l->method()) != "LoRA")
        fail("mixed batch: adapter '" + a + "' is " + l->method() + " (at " + path +
             "); per-example routing supports plain LoRA adapters only: "
             "delete it (or merge it into the base) first, or run its examples separately");
  // modules_to_save copies of the adapters used, by Linear.
  std::map<std::string, nn::Linear*> lins;
  for (auto& [path, l] : pm.model().linears()) lins[path] = l;
  std::map<nn::Linear*, std::unique_ptr<Override>> ov;
  const std::string pre = "base_model.model.";
  for (const auto& a : used) {
    for (auto& [key, t] : pm.adapter_state(a)) {
      const auto ends = [&](const std::string& suf) {
        return key.size() >= suf.size() && key.compare(key.size() - suf.size(), suf.size(), suf) == 0;
      };
      if (ends(".lora_A.weight") || ends(".lora_B.weight")) continue;
      const bool is_w = ends(".weight"), is_b = ends(".bias");
      const std::string path =
          key.substr(pre.size(), key.size() - pre.size() - (is_w ? 7 : is_b ? 5 : 0));
      auto it = lins.find(path);
      if ((!is_w && !is_b) || it == lins.end())
        fail("mixed batch: adapter '" + a + "' keeps a modules_to_save copy of '" +
             key.substr(pre.size()) + "', which is not a Linear; only Linear modules_to_save "
             "(classifier heads) can be routed per example");
      auto& o = ov[it->second];
      if (!o) o = std::make_unique<Override>();
      (is_w ? o->copies[a].first : o->copies[a].second) = t;
    }
  }
  // Base weights in the model (originals for modules_to_save), every LoRA layer routing.
  pm.disable_adapters();
  for (const auto& a : have)
    for (auto& [path, l] : pm.lora_layers(a)) {
      layers_.emplace_back(l, l->route);
      l->route = &names_;
    }
  for (auto& [lin, o] : ov) {
    o->names_of = &names_;
    lin->adapters.push_back(o.get());
    overrides_.emplace_back(lin, std::move(o));
  }
}

MixedBatch::~MixedBatch() {
  for (auto& [lin, o] : overrides_) {
    auto& v = lin->adapters;
    v.erase(std::remove(v.begin(), v.end(), o.get()), v.end());
  }
  for (auto& [l, prev] : layers_) l->route = prev;  // an enclosing MixedBatch's, or none
  if (!was_disabled_) pm_.enable_adapters();
}

}  // namespace lorafit::peft
