// PiSSA / OLoRA adapter -> plain LoRA against the original base (PEFT 0.21 peft_model.py
// save_pretrained with path_initial_model_for_weight_conversion, and
// LoraModel.subtract_mutated_init):
//   W = W_res + s·B₀A₀ and the trained model is W_res + s·B A, so
//   ΔW = s·(B A − B₀ A₀) = s·[B | −B₀] · [A ; A₀]   (rank 2r, the same scaling s)
#include <unistd.h>
#include <cmath>
#include <filesystem>
#include <map>

#include "lorafit/peft.h"
#include "peft/peft_internal.h"

namespace lorafit::peft {

namespace fs = std::filesystem;

namespace {

const std::string kPrefix = "base_model.model.";

bool ends_with(const std::string& s, const std::string& e) {
  return s.size() >= e.size() && s.compare(s.size() - e.size(), e.size(), e) == 0;
}

// rows of a [r1, n] and b [r2, n] stacked: [r1 + r2, n].
Tensor cat_rows(const Tensor& a, const Tensor& b) {
  Tensor out = Tensor::zeros({a.dim(0) + b.dim(0), a.dim(1)});
  std::copy(a.f32(), a.f32() + a.numel(), out.f32());
  std::copy(b.f32(), b.f32() + b.numel(), out.f32() + a.numel());
  return out;
}

// columns of a [m, r1] and sign·b [m, r2] side by side: [m, r1 + r2].
Tensor cat_cols(const Tensor& a, const Tensor& b, float sign) {
  const int64_t m = a.dim(0), r1 = a.dim(1), r2 = b.dim(1);
  Tensor out = Tensor::zeros({m, r1 + r2});
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < r1; ++j) out.f32()[i * (r1 + r2) + j] = a.f32()[i * r1 + j];
    for (int64_t j = 0; j < r2; ++j) out.f32()[i * (r1 + r2) + r1 + j] = sign * b.f32()[i * r2 + j];
  }
  return out;
}

}  // namespace

void convert_to_lora(models::Model& base, const std::string& adapter_dir,
                     const std::string& out_dir, const std::string& initial_dir) {
  const std::string where = adapter_dir + "/adapter_config.json";
  AdapterConfig cfg = read_adapter_config(adapter_dir);
  const bool ga = cfg.init_lora_weights == LoraInit::LoraGa;  // PEFT's conversion covers it too
  if (ga && initial_dir.empty())
    fail(where +
         ": field 'init_lora_weights': lora_ga: the initial A0, B0 come from gradients of the "
         "training data; give the adapter saved right after the init (--initial)");
  if (!cfg.init_changes_base() && !ga)
    fail(where + ": field 'init_lora_weights': " + init_lora_weights_str(cfg) +
         " leaves the base unchanged; the folder already is a plain LoRA (nothing to convert)");
  if (cfg.use_dora)
    fail(where +
         ": field 'use_dora': a DoRA magnitude is taken on the residual base, so no "
         "rank-2r LoRA reproduces it; merge the adapter instead (lorafit adapter merge)");
  if (cfg.use_rslora && (!cfg.rank_pattern.empty() || !cfg.alpha_pattern.empty()))
    fail(where +
         ": use_rslora with rank_pattern / alpha_pattern cannot be converted (PEFT refuses "
         "it too: doubling alpha by √2 per pattern is not defined there)");
  const std::string wpath = adapter_dir + "/adapter_model.safetensors";
  if (!io::file_exists(wpath)) fail(adapter_dir + ": no adapter_model.safetensors");
  io::SafetensorsFile trained = io::SafetensorsFile::open(wpath);

  // A₀, B₀ by key.
  std::map<std::string, Tensor> init;
  if (!initial_dir.empty()) {
    const std::string ip = initial_dir + "/adapter_model.safetensors";
    if (!io::file_exists(ip))
      fail(initial_dir + ": no adapter_model.safetensors (the initial adapter)");
    io::SafetensorsFile f = io::SafetensorsFile::open(ip);
    for (const auto& n : f.names())
      if (ends_with(n, ".lora_A.weight") || ends_with(n, ".lora_B.weight")) init[n] = f.get_f32(n);
  } else {
    // Run the init on the original base; the PeftModel's destructor gives the base back.
    PeftModel pm(base, cfg, 0, "initial");
    for (auto& [path, l] : pm.lora_layers()) {
      init[kPrefix + path + ".lora_A.weight"] = l->A.value.clone();
      init[kPrefix + path + ".lora_B.weight"] = l->B.value.clone();
    }
  }

  std::vector<std::pair<std::string, Tensor>> out;
  for (const auto& n : trained.names()) {
    Tensor t = trained.get_f32(n);
    const bool is_a = ends_with(n, ".lora_A.weight"), is_b = ends_with(n, ".lora_B.weight");
    if (!is_a && !is_b) {  // modules_to_save: whole tensors, as trained
      out.emplace_back(n, t);
      continue;
    }
    auto it = init.find(n);
    if (it == init.end())
      fail((initial_dir.empty() ? std::string("the init on the base") : initial_dir) +
           ": no initial tensor '" + n + "' for " + wpath);
    const Tensor& t0 = it->second;
    const bool fits = is_a ? t0.dim(1) == t.dim(1) : t0.dim(0) == t.dim(0);
    if (t0.shape().size() != 2 || !fits ||
        (is_a ? t0.dim(0) : t0.dim(1)) != (is_a ? t.dim(0) : t.dim(1)))
      fail(wpath + ": tensor '" + n + "' is " + t.str() + " but the initial one is " + t0.str());
    out.emplace_back(n, is_a ? cat_rows(t, t0) : cat_cols(t, t0, -1.0f));
  }

  AdapterConfig lc = cfg;  // PEFT: r * 2, alpha * 2 (rsLoRA: * √2), patterns * 2, init true
  lc.r *= 2;
  lc.lora_alpha *= cfg.use_rslora ? std::sqrt(2.0) : 2.0;
  for (auto& [k, v] : lc.rank_pattern) v *= 2;
  for (auto& [k, v] : lc.alpha_pattern) v *= 2;
  lc.init_lora_weights = LoraInit::Default;
  lc.pissa_niter = -1;
  lc.inference_mode = true;
  if (lc.base_model_name_or_path.empty()) lc.base_model_name_or_path = base.config().source;

  // Write into a temporary folder next to out_dir, then move it (or its files) in.
  fs::path target(out_dir);
  fs::path parent = target.has_parent_path() ? target.parent_path() : fs::path(".");
  std::error_code ec;
  fs::create_directories(parent, ec);
  fs::path tmp = parent / (target.filename().string() + ".tmp." + std::to_string(::getpid()));
  fs::remove_all(tmp, ec);
  if (!fs::create_directory(tmp, ec))
    fail(tmp.string() + ": cannot create folder: " + ec.message());
  try {
    io::write_json_file((tmp / "adapter_config.json").string(), config_to_json(lc));
    io::write_safetensors((tmp / "adapter_model.safetensors").string(), out, {{"format", "pt"}});
    if (!fs::exists(target)) {
      fs::rename(tmp, target);
    } else {
      if (!fs::is_directory(target)) fail(out_dir + ": exists and is not a folder");
      for (auto& e : fs::directory_iterator(tmp))
        fs::rename(e.path(), target / e.path().filename());
      fs::remove_all(tmp);
    }
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
}

}  // namespace lorafit::peft
