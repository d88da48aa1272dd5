// Decoding a causal LM with its KV cache: greedy or seeded temperature / top-k / top-p sampling.
#include <algorithm>
#include <cmath>
#include <filesystem>

#include "models/models_internal.h"

namespace lorafit::models {

namespace fs = std::filesystem;

bool is_gguf_path(const std::string& p) {
  return p.size() > 5 && p.ends_with(".gguf");
}

std::string resolve_model_path(const std::string& p) {
  if (fs::is_directory(p) && !fs::exists(fs::path(p) / "config.json")) {
    std::vector<std::string> ggufs;
    for (auto& e : fs::directory_iterator(p))
      if (is_gguf_path(e.path().string())) ggufs.push_back(e.path().string());
    if (ggufs.size() == 1) return ggufs[0];
    throw Error("[model] " + p + ": no config.json and " + std::to_string(ggufs.size()) +
                " .gguf files; give a model folder or one .gguf file");
  }
  if (!fs::exists(p))
    throw Error("[model] " + p +
                ": not found (run `bash tools/fetch_models.sh` for the bundled models)");
  if (!fs::is_directory(p)) detail::check_model_file(p);  // before a tokenizer is read from it
  return p;
}

KvCache Model::new_cache(int64_t, int64_t) const {
  throw Error("[models] " + cfg_.arch + " is not a causal LM: it has no KV cache");
}

Tensor Model::forward_cached(nn::Context&, const Tensor&, KvCache&, const Tensor&, const Tensor&) {
  throw Error("[models] " + cfg_.arch + " is not a causal LM: it cannot decode incrementally");
}

std::optional<float> Model::lm_loss_chunked(nn::Context&, const Tensor&, const Tensor&,
                                            const Tensor&, int32_t, float, int64_t) {
  return std::nullopt;  // a classifier: its few logits are kept whole
}

void validate(const GenerateOptions& o) {
  if (o.temperature < 0 || o.top_p <= 0 || o.top_p > 1 || o.top_k < 0 || o.max_new_tokens < 0)
    throw Error(
        "[generate] need --temperature >= 0, 0 < --top-p <= 1, --top-k >= 0, --max-new-tokens >= "
        "0");
}

int32_t sample_next(const float* row, int64_t V, const GenerateOptions& o, int64_t step) {
  if (o.temperature == 0) return static_cast<int32_t>(std::max_element(row, row + V) - row);
  // Unnormalized probabilities exp((l - max) / T), most likely first.
  std::vector<std::pair<float, int32_t>> c(static_cast<size_t>(V));
  const float mx = *std::max_element(row, row + V);
  for (int64_t i = 0; i < V; ++i)
    c[static_cast<size_t>(i)] = {std::exp((row[i] - mx) / static_cast<float>(o.temperature)),
                                 static_cast<int32_t>(i)};
  std::sort(c.begin(), c.end(), [](auto& a, auto& b) { return a.first > b.first; });
  if (o.top_k > 0 && static_cast<size_t>(o.top_k) < c.size())
    c.resize(static_cast<size_t>(o.top_k));
  double z = 0;
  for (auto& e : c) z += e.first;
  double cum = 0;
  size_t keep = c.size();
  for (size_t i = 0; i < c.size(); ++i) {
    cum += c[i].first / z;
    if (cum >= o.top_p) {
      keep = i + 1;
      break;
    }
  }
  c.resize(keep);
  double z2 = 0;
  for (auto& e : c) z2 += e.first;
  double u = nn::random_uniform(o.seed, static_cast<uint64_t>(step)) * z2;
  for (auto& e : c) {
    u -= e.first;
    if (u <= 0) return e.second;
  }
  return c.back().second;
}

std::vector<int32_t> generate(Model& model, const std::vector<int32_t>& prompt,
                              const GenerateOptions& opt,
                              const std::function<bool(int32_t)>& on_token) {
  validate(opt);
  detail::check(!prompt.empty(), "generate: the prompt has no tokens");
  const auto n = static_cast<int64_t>(prompt.size());
  auto cache = model.new_cache(1, n + opt.max_new_tokens + 1);
  tensor::Arena arena;
  nn::Context ctx;
  ctx.arena = &arena;
  ctx.training = false;
  Tensor logits = model.forward_cached(ctx, Tensor::from_ints({1, n}, prompt), cache);
  std::vector<int32_t> out;
  const int64_t V = logits.dim(-1);
  for (int64_t s = 0; s < opt.max_new_tokens; ++s) {
    const int32_t next = sample_next(logits.f32() + (logits.numel() - V), V, opt, s);
    if (std::find(opt.stop_ids.begin(), opt.stop_ids.end(), next) != opt.stop_ids.end()) break;
    out.push_back(next);
    if (on_token && !on_token(next)) break;
    if (s + 1 == opt.max_new_tokens) break;  // no logits needed after the last token
    arena.reset();
    logits = model.forward_cached(ctx, Tensor::from_ints({1, 1}, {next}), cache);
  }
  return out;
}

}  // namespace lorafit::models
