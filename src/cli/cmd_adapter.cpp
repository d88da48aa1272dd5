// lorafit adapter info|merge|combine|export-gguf: inspect a PEFT adapter folder, merge it into its
// base model (HF folder or GGUF), combine several into one, or convert one to a llama.cpp LoRA
// GGUF.
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <unistd.h>

#include "cli/cli.h"
#include "lorafit/io.h"
#include "lorafit/models.h"
#include "lorafit/peft.h"
#include "lorafit/train.h"

namespace {

const char* kAdapterUsage = R"(Usage:
  lorafit adapter info ADAPTER_DIR [--base MODEL]
      adapter_config.json fields, tensors and sizes; with --base (default: the config's
      base_model_name_or_path when it exists) also checks the adapter fits the model and prints
      PEFT's trainable-parameter line.
  lorafit adapter merge ADAPTER_DIR --base MODEL_DIR --out OUT_DIR [--quantize Q] [--type T]
      W += s·B·A for every LoRA module, then writes a plain Hugging Face folder (tokenizer files
      copied, model.safetensors in F32). config.json is the base's; a classifier's names its task
      (e.g. BertForSequenceClassification, num_labels, id2label/label2id from the run's labels).
      A quantized base (a bitsandbytes 4-bit folder, or --quantize: default as the run was trained
      with train --quantize) is merged as the adapter saw it: W = its dequantized values.
      --type nf4-dq|nf4|fp4 re-quantizes the merged layer weights into the bitsandbytes 4-bit
      layout (as lorafit quantize), after printing how far the rounding moves them relative to
      the adapter's own change (as for a GGUF below; refused above 1 unless --force).
  lorafit adapter merge ADAPTER_DIR --base MODEL.gguf --out OUT.gguf [--type f16] [--force]
      Same for a GGUF base (Llama family): a plain GGUF with every metadata key (tokenizer
      included) copied, the merged weights stored as --type (f32, f16, q8_0, q4_0, q4_1; default
      f16) and every other tensor copied byte for byte. For f16 and the quantized types it first
      measures, per module, how far rounding moves the merged weight relative to the adapter's own
      change (|Q(W+dW) - (W+dW)| / |dW|, Frobenius norms), prints the worst module, and refuses
      above 1 (rounding would move the weights more than the adapter does: q4_0/q4_1 often do)
      unless --force.
  lorafit adapter convert-to-lora ADAPTER_DIR --base MODEL --out OUT_DIR [--initial INIT_DIR]
      A PiSSA / OLoRA adapter (init_lora_weights "pissa", "pissa_niter_K", "olora") as a plain
      LoRA against the original base, as PEFT's save_pretrained(path_initial_model_for_weight_
      conversion=INIT_DIR): rank 2r, lora_A = [A; A0], lora_B = [B, -B0], lora_alpha doubled.
      A0, B0: from INIT_DIR (the adapter saved right after the init; needed for a PEFT
      "pissa_niter_K" run) or recomputed from MODEL by the init (exact SVD / QR).
  lorafit adapter combine DIR1 DIR2 ... --base MODEL --weights W1,W2,... --out OUT_DIR
                          [--type cat|linear|svd] [--svd-rank K]
      One adapter from a weighted combination (PEFT's add_weighted_adapter): cat (exact, rank =
      sum of ranks), linear (PEFT's approximation; equal ranks), svd (default; best rank-K
      approximation of sum wi·si·Bi·Ai, K default the largest rank). Writes a PEFT folder.
  lorafit adapter export-gguf ADAPTER_DIR --base MODEL --out FILE.gguf
      llama.cpp LoRA GGUF (Llama-family bases). A PiSSA / OLoRA adapter is converted first (as
      convert-to-lora, A0 and B0 from the init on MODEL): llama.cpp applies it to the original base.
Every subcommand also reads its options from --config FILE (JSON or YAML, keys as the flags).
)";

using lorafit::cli::Options;
using lorafit::cli::OptSpec;

std::string num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.3g", v);
  return b;
}

// Labels a lorafit run recorded next to its adapter (lorafit_task.json "labels"), else none.
std::vector<std::string> run_labels(const std::string& dir) {
  namespace fs = std::filesystem;
  for (auto p : {fs::path(dir) / "lorafit_task.json",
                 fs::path(dir).parent_path() / "final" / "lorafit_task.json"}) {
    if (!fs::exists(p)) continue;
    auto j = lorafit::io::read_json_file(p.string());
    if (j.contains("labels") && j["labels"].is_array())
      return j["labels"].get<std::vector<std::string>>();
  }
  return {};
}

// The --quantize a lorafit run trained with (lorafit_task.json "quantize"), else "none".
std::string run_quantize(const std::string& dir) {
  namespace fs = std::filesystem;
  for (auto p : {fs::path(dir) / "lorafit_task.json",
                 fs::path(dir).parent_path() / "final" / "lorafit_task.json"}) {
    if (!fs::exists(p)) continue;
    auto j = lorafit::io::read_json_file(p.string());
    if (j.contains("quantize") && j["quantize"].is_string()) return j["quantize"].get<std::string>();
  }
  return "none";
}

// Clones of the base weights an adapter folder targets (before loading it: a PiSSA / OLoRA load
// changes them), for measuring the adapter's own change after merging.
std::vector<std::pair<std::string, lorafit::tensor::Tensor>> targeted_weights(
    lorafit::models::Model& m, const std::string& dir) {
  namespace peft = lorafit::peft;
  const peft::AdapterConfig cfg = peft::read_adapter_config(dir);
  auto lins = m.linears();
  std::vector<std::pair<std::string, lorafit::tensor::Tensor>> out;
  for (size_t i = 0; i < lins.size(); ++i)
    if (peft::target_matches(cfg, lins[i].first, i + 1 == lins.size()))
      out.emplace_back(lins[i].first,
                       lins[i].second->weight.value.to(lorafit::tensor::DType::F32).clone());
  return out;
}


const std::vector<OptSpec> kInfoOpts = {
    {"base", "str", "", "check the adapter against this model (default: base_model_name_or_path)"}};
const std::vector<OptSpec> kMergeOpts = {
    {"base", "str", "", "the base model folder or .gguf (required)"},
    {"out", "str", "", "output folder (HF base) or .gguf file (GGUF base) (required)"},
    {"type", "str", "f16",
     "dtype of the merged weights: GGUF base f32 | f16 (default) | q8_0 | q4_0 | q4_1; "
     "folder base f32 (default) | nf4-dq | nf4 | fp4"},
    {"force", "bool", "false",
     "write the merge even when rounding moves the weights more than the adapter does"},
    {"quantize", "str", "",
     "folder base: quantize it on load as the adapter was trained (default: the run's "
     "lorafit_task.json, else none)"}};
const std::vector<OptSpec> kConvertOpts = {
    {"base", "str", "", "the original base model (required)"},
    {"out", "str", "", "output PEFT folder of the plain LoRA (required)"},
    {"initial", "str", "",
     "the adapter saved right after the PiSSA/OLoRA init (default: recomputed from --base)"}};
const std::vector<OptSpec> kCombineOpts = {
    {"base", "str", "", "the base model (required)"},
    {"weights", "str", "", "W1,W2,...: one weight per adapter (required)"},
    {"out", "str", "", "output PEFT folder (required)"},
    {"type", "str", "svd", "cat | linear | svd"},
    {"svd-rank", "int", "0", "svd: rank of the result (0: the largest rank)"}};
const std::vector<OptSpec> kExportOpts = {
    {"base", "str", "", "the base model (required)"},
    {"out", "str", "", "the llama.cpp LoRA .gguf to write (required)"}};

// Parses `adapter <sub> ...`: positionals are the adapter folders.
Options parse_sub(const std::string& sub, const std::vector<OptSpec>& specs, int argc,
                  char** argv) {
  Options o(specs, "adapter " + sub);
  o.parse(argc - 1, argv + 1);
  if (o.positional.empty())
    throw lorafit::Error("[adapter " + sub + "] expected an adapter folder");
  if (sub != "combine" && o.positional.size() > 1)
    throw lorafit::Error("[adapter " + sub + "] unexpected argument '" + o.positional[1] +
                         "'; give one adapter folder");
  return o;
}

bool ends_with(const std::string& s, const std::string& e) {
  return s.size() >= e.size() && s.compare(s.size() - e.size(), e.size(), e) == 0;
}

// lorafit adapter combine DIR... --base MODEL --weights W,... --out DIR [--type T] [--svd-rank K]
int cmd_combine(const Options& o) {
  namespace peft = lorafit::peft;
  const std::vector<std::string>& dirs = o.positional;
  const std::string base = o.str("base"), out = o.str("out"), ws = o.str("weights");
  const std::string type = o.str("type");
  if (base.empty() || out.empty() || ws.empty()) {
    std::fputs("lorafit adapter combine: --base, --weights and --out are required\n", stderr);
    std::fputs(kAdapterUsage, stderr);
    return 2;
  }
  try {
    std::vector<double> weights;
    size_t a = 0;
    while (a <= ws.size()) {
      size_t b = ws.find(',', a);
      if (b == std::string::npos) b = ws.size();
      const std::string w = ws.substr(a, b - a);
      char* end = nullptr;
      const double v = std::strtod(w.c_str(), &end);
      if (w.empty() || *end)
        throw lorafit::Error("[adapter] --weights: '" + w + "' is not a number");
      weights.push_back(v);
      a = b + 1;
    }
    lorafit::models::LoadOptions lo;
    lo.num_labels = peft::adapter_num_labels(dirs.front());
    auto model = lorafit::models::load_model(base, lo);
    std::unique_ptr<peft::PeftModel> pm;
    std::vector<std::string> names;
    for (size_t i = 0; i < dirs.size(); ++i) {
      const std::string name = "adapter" + std::to_string(i);
      if (!pm) pm = peft::PeftModel::from_pretrained(*model, dirs[i], name);
      else pm->load_adapter(dirs[i], name);
      names.push_back(name);
    }
    pm->add_weighted_adapter(names, weights, "combined", type, o.integer("svd-rank"));
    pm->save_pretrained(out, "combined");
    std::printf("combined %zu adapters (%s, r %lld) -> %s\n", dirs.size(), type.c_str(),
                static_cast<long long>(pm->config("combined").r), out.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lorafit adapter combine: %s\n", e.what());
    return 1;
  }
}

}  // namespace

int cmd_adapter(int argc, char** argv) {
  if (argc == 2 && std::strcmp(argv[1], "--help") != 0 && std::strcmp(argv[1], "-h") != 0) {
    // `lorafit adapter merge` alone: say what is missing before the usage.
    static const char* const kSubs[] = {"info", "merge", "combine", "export-gguf", "convert-to-lora"};
    bool known = false;
    for (const char* k : kSubs) known = known || !std::strcmp(argv[1], k);
    if (known) std::fprintf(stderr, "lorafit adapter %s: expected an adapter folder\n", argv[1]);
    else std::fprintf(stderr, "lorafit adapter: unknown subcommand '%s'\n", argv[1]);
    std::fputs(kAdapterUsage, stderr);
    return 2;
  }
  if (argc < 3 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") ||
      lorafit::cli::wants_help(argc, argv)) {
    std::fputs(kAdapterUsage, argc < 3 ? stderr : stdout);
    return argc < 3 ? 2 : 0;
  }
  const std::string sub = argv[1];
  const std::vector<OptSpec>* specs = sub == "info"          ? &kInfoOpts
                                      : sub == "merge"       ? &kMergeOpts
                                      : sub == "combine"     ? &kCombineOpts
                                      : sub == "export-gguf" ? &kExportOpts
                                      : sub == "convert-to-lora" ? &kConvertOpts
                                                             : nullptr;
  if (!specs) {
    std::fprintf(stderr, "lorafit adapter: unknown subcommand '%s'\n%s", sub.c_str(),
                 kAdapterUsage);
    return 2;
  }
  try {
    const Options o = parse_sub(sub, *specs, argc, argv);
    if (sub == "combine") return cmd_combine(o);
    const std::string dir = o.positional[0];
    std::string base = o.str("base");
    const std::string out = sub == "info" ? "" : o.str("out");
    namespace peft = lorafit::peft;
    peft::AdapterConfig cfg = peft::read_adapter_config(dir);
    if (sub == "info") {
      std::printf("adapter     %s\npeft_type   %s\ntask_type   %s\nbase        %s\n", dir.c_str(),
                  cfg.peft_type.c_str(), cfg.task_type.empty() ? "null" : cfg.task_type.c_str(),
                  cfg.base_model_name_or_path.c_str());
      std::printf("r           %lld\nlora_alpha  %g\nuse_rslora  %s\ndropout     %g\n",
                  static_cast<long long>(cfg.r), cfg.lora_alpha, cfg.use_rslora ? "true" : "false",
                  cfg.lora_dropout);
      if (cfg.use_dora) std::printf("use_dora    true (lora_magnitude_vector per target row)\n");
      if (cfg.is_adalora()) {
        std::printf(
            "adalora     init_r %lld, target_r %lld, tinit %lld, tfinal %lld, deltaT %lld, "
            "total_step %lld\n",
            static_cast<long long>(cfg.init_r), static_cast<long long>(cfg.target_r),
            static_cast<long long>(cfg.tinit), static_cast<long long>(cfg.tfinal),
            static_cast<long long>(cfg.deltaT), static_cast<long long>(cfg.total_step));
        if (!cfg.adalora_rank_pattern.empty()) {
          int64_t kept = 0, all = 0;
          std::string ranks;
          for (auto& [mod, mask] : cfg.adalora_rank_pattern) {
            int64_t k = 0;
            for (bool b : mask) k += b ? 1 : 0;
            kept += k;
            all += static_cast<int64_t>(mask.size());
            if (!ranks.empty()) ranks += ',';
            ranks += std::to_string(k);
          }
          std::printf("rank_pattern %zu modules, %lld of %lld singular values kept: [%s]\n",
                      cfg.adalora_rank_pattern.size(), static_cast<long long>(kept),
                      static_cast<long long>(all), ranks.c_str());
        }
      }
      std::string t;
      for (auto& m : cfg.target_modules) t += (t.empty() ? "" : ", ") + m;
      std::printf("targets     %s%s\n", cfg.target_modules_regex ? "regex " : "", t.c_str());
      lorafit::io::SafetensorsFile f =
          lorafit::io::SafetensorsFile::open(dir + "/adapter_model.safetensors");
      int64_t n = 0;
      for (auto& name : f.names()) n += lorafit::tensor::shape_numel(f.entry(name).shape);
      std::printf("tensors     %zu (%lld values)\n", f.names().size(), static_cast<long long>(n));
      if (base.empty() && std::filesystem::exists(cfg.base_model_name_or_path))
        base = cfg.base_model_name_or_path;
      if (!base.empty()) {
        lorafit::models::LoadOptions lo;
        lo.num_labels = peft::adapter_num_labels(dir);  // the saved head's size, not the config's
        auto model = lorafit::models::load_model(base, lo);
        auto pm = peft::PeftModel::from_pretrained(*model, dir, "default", true);
        std::printf("fits        %s (%zu LoRA modules)\n%s\n", base.c_str(), pm->lora_layers().size(),
                    pm->count_parameters().str().c_str());
      }
      return 0;
    }
    if (base.empty() || out.empty()) {
      std::fprintf(stderr, "lorafit adapter %s: --base and --out are required\n", sub.c_str());
      std::fputs(kAdapterUsage, stderr);
      return 2;
    }
    if (sub == "merge" && ends_with(base, ".gguf")) {
      namespace ts = lorafit::tensor;
      const std::string t = o.str("type");
      ts::DType type = ts::DType::F16;
      if (t == "f32") type = ts::DType::F32;
      else if (t == "q8_0") type = ts::DType::Q8_0;
      else if (t == "q4_0") type = ts::DType::Q4_0;
      else if (t == "q4_1") type = ts::DType::Q4_1;
      else if (t != "f16")
        throw lorafit::Error("[adapter] --type: '" + t + "' is not one of f32, f16, q8_0, q4_0, q4_1");
      lorafit::models::LoadOptions lo;
      lo.dequantize = true;
      auto model = lorafit::models::load_model(base, lo);
      lorafit::train::apply_rope_note(*model, lorafit::train::read_task_info(dir), dir);
      std::vector<std::pair<std::string, ts::Tensor>> before;
      if (type != ts::DType::F32) before = targeted_weights(*model, dir);
      std::vector<std::string> paths;
      {
        auto pm = peft::PeftModel::from_pretrained(*model, dir);
        if (pm->config().modules_to_save && !pm->config().modules_to_save->empty())
          throw lorafit::Error("[adapter] " + dir + ": modules_to_save cannot be merged into a GGUF");
        for (auto& [p, l] : pm->lora_layers()) paths.push_back(p);
        pm->merge_and_unload();
      }
      if (!before.empty()) {
        // Rounding the merged weight to `type` must not swamp what the adapter changed.
        auto rep = peft::merge_rounding(*model, before, type);
        before.clear();
        const auto& w = rep.front();
        std::printf(
            "rounding to %s moves the merged weights by up to %.3g x the adapter's own change "
            "(worst: %s, |Q(W+dW) - (W+dW)| = %.4g, |dW| = %.4g)\n",
            ts::dtype_name(type), w.ratio(), w.module.c_str(), w.rounding, w.delta);
        std::fflush(stdout);  // before a refusal on stderr
        // Suggest only types finer than the one refused.
        const std::string finer = type == ts::DType::F16    ? "f32"
                                  : type == ts::DType::Q8_0 ? "f16 or f32"
                                                            : "q8_0 or f16";
        if (w.ratio() > peft::kMergeRoundingLimit && !o.flag("force"))
          throw lorafit::Error(
              "[adapter] merge --type " + t + ": rounding to " + ts::dtype_name(type) +
              " changes module " + w.module + " by " + num(w.ratio()) +
              " times as much as the adapter does (limit " + num(peft::kMergeRoundingLimit) +
              "), so the merged model would mostly lose the adapter; use --type " + finer +
              " (or keep the adapter separate: lorafit adapter export-gguf), or pass --force to "
              "write it anyway");
      }
      peft::save_merged_gguf(*model, paths, base, out, type);
      std::printf("merged %s into %s -> %s (%zu tensors re-encoded as %s)\n", dir.c_str(),
                  base.c_str(), out.c_str(), paths.size(), ts::dtype_name(type));
      return 0;
    }
    if (sub == "merge") {
      const std::string t = o.has("type") ? o.str("type") : "f32";
      if (t != "f32" && t != "nf4-dq" && t != "nf4" && t != "fp4")
        throw lorafit::Error("[adapter] --type: '" + t +
                             "' is not one of f32, nf4-dq, nf4, fp4 for a model folder base");
      lorafit::models::LoadOptions lo;
      lo.dequantize = true;
      lo.num_labels = peft::adapter_num_labels(dir);
      lo.quantize = o.str("quantize").empty() ? run_quantize(dir) : o.str("quantize");
      lorafit::models::check_quantize(lo.quantize, "[adapter] merge --quantize");
      auto model = lorafit::models::load_model(base, lo);
      std::vector<std::pair<std::string, lorafit::tensor::Tensor>> before;
      if (t != "f32") {
        before = targeted_weights(*model, dir);
        // Only the weights the 4-bit layout quantizes count (heads stay F32).
        std::vector<std::pair<std::string, lorafit::tensor::Tensor>> q;
        for (auto& [p, w] : before)
          if (!lorafit::models::is_head_module(p) && w.dim(1) % 2 == 0) q.emplace_back(p, w);
        before = std::move(q);
      }
      lorafit::train::apply_rope_note(*model, lorafit::train::read_task_info(dir), dir);
      {
        auto pm = peft::PeftModel::from_pretrained(*model, dir);
        pm->merge_and_unload();
      }
      if (!before.empty()) {
        auto rep = peft::merge_rounding(*model, before, t);
        before.clear();
        const auto& w = rep.front();
        std::printf(
            "rounding to %s moves the merged weights by up to %.3g x the adapter's own change "
            "(worst: %s, |Q(W+dW) - (W+dW)| = %.4g, |dW| = %.4g)\n",
            t.c_str(), w.ratio(), w.module.c_str(), w.rounding, w.delta);
        std::fflush(stdout);
        if (w.ratio() > peft::kMergeRoundingLimit && !o.flag("force"))
          throw lorafit::Error(
              "[adapter] merge --type " + t + ": rounding to " + t + " changes module " +
              w.module + " by " + num(w.ratio()) + " times as much as the adapter does (limit " +
              num(peft::kMergeRoundingLimit) +
              "), so the merged model would mostly lose the adapter; use --type f32 (or keep "
              "the adapter separate on the quantized base), or pass --force to write it anyway");
      }
      peft::save_merged_hf(*model, base, out, run_labels(dir), t);
      std::printf("merged %s into %s%s -> %s%s\n", dir.c_str(), base.c_str(),
                  lo.quantize == "none" ? "" : (" (quantized " + lo.quantize + ")").c_str(),
                  out.c_str(), t == "f32" ? "" : (" (layer weights " + t + ")").c_str());
      return 0;
    }
    if (sub == "convert-to-lora") {
      lorafit::models::LoadOptions lo;
      lo.dequantize = true;  // the init factors F32 weights
      lo.num_labels = peft::adapter_num_labels(dir);
      auto model = lorafit::models::load_model(base, lo);
      const std::string initial = o.str("initial");
      peft::convert_to_lora(*model, dir, out, initial);
      std::printf("converted %s (%s, r %lld) to a plain LoRA (r %lld) against %s -> %s\n",
                  dir.c_str(), peft::init_lora_weights_str(cfg).c_str(),
                  static_cast<long long>(cfg.r), static_cast<long long>(2 * cfg.r), base.c_str(),
                  out.c_str());
      return 0;
    }
    if (sub == "export-gguf") {
      std::string src = dir;
      lorafit::models::LoadOptions lo;
      lo.dequantize = cfg.init_changes_base();
      auto model = lorafit::models::load_model(base, lo);
      if (cfg.init_changes_base()) {
        // llama.cpp adds the LoRA to the original weights: export s·(B A − B₀ A₀) (rank 2r).
        src = out + ".lora.tmp." + std::to_string(::getpid());
        peft::convert_to_lora(*model, dir, src);
      }
      try {
        auto pm = peft::PeftModel::from_pretrained(*model, src);
        peft::save_llama_cpp_lora(*pm, out);
        std::printf("wrote llama.cpp LoRA %s (%zu modules%s)\n", out.c_str(),
                    pm->lora_layers().size(),
                    src == dir ? "" : ", converted from PiSSA/OLoRA to rank 2r");
        // A LoRA GGUF has no RoPE keys: the scaling the run trained with must come from the base.
        const auto info = lorafit::train::read_task_info(dir);
        if (info.contains("rope") && info["rope"].contains("option"))
          std::fprintf(stderr,
                       "note: the run trained with --rope-scaling %s, which a LoRA GGUF cannot "
                       "carry: give llama.cpp the same scaling (--rope-scaling TYPE --rope-scale "
                       "FACTOR) or merge into the base (lorafit adapter merge)\n",
                       info["rope"]["option"].get<std::string>().c_str());
      } catch (...) {
        if (src != dir) std::filesystem::remove_all(src);
        throw;
      }
      if (src != dir) std::filesystem::remove_all(src);
      return 0;
    }
    std::fprintf(stderr, "lorafit adapter: unknown subcommand '%s'\n%s", sub.c_str(), kAdapterUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lorafit adapter %s: %s\n", sub.c_str(), e.what());
    return 1;
  }
}
