// lorafit adapter info|merge|export-gguf: inspect a PEFT adapter folder, merge it into its base
// model, or convert it to a llama.cpp LoRA GGUF.
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "lorafit/models.h"
#include "lorafit/peft.h"

namespace {

const char* kAdapterUsage = R"(Usage:
  lorafit adapter info ADAPTER_DIR [--base MODEL]
      adapter_config.json fields, tensors and sizes; with --base (default: the config's
      base_model_name_or_path when it exists) also checks the adapter fits the model and prints
      PEFT's trainable-parameter line.
  lorafit adapter merge ADAPTER_DIR --base MODEL_DIR --out OUT_DIR
      W += s·B·A for every LoRA module, then writes a plain Hugging Face folder (config.json and
      tokenizer files copied, model.safetensors in F32).
  lorafit adapter export-gguf ADAPTER_DIR --base MODEL --out FILE.gguf
      llama.cpp LoRA GGUF (Llama-family bases).
)";

std::string option(int argc, char** argv, const char* name) {
  for (int i = 0; i + 1 < argc; ++i)
    if (!std::strcmp(argv[i], name)) return argv[i + 1];
  return "";
}

}  // namespace

int cmd_adapter(int argc, char** argv) {
  if (argc < 3 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    std::fputs(kAdapterUsage, argc < 3 ? stderr : stdout);
    return argc < 3 ? 2 : 0;
  }
  const std::string sub = argv[1], dir = argv[2];
  std::string base = option(argc, argv, "--base");
  const std::string out = option(argc, argv, "--out");
  try {
    namespace peft = lorafit::peft;
    peft::AdapterConfig cfg = peft::read_adapter_config(dir);
    if (sub == "info") {
      std::printf("adapter     %s\npeft_type   %s\ntask_type   %s\nbase        %s\n", dir.c_str(),
                  cfg.peft_type.c_str(), cfg.task_type.empty() ? "null" : cfg.task_type.c_str(),
                  cfg.base_model_name_or_path.c_str());
      std::printf("r           %lld\nlora_alpha  %g\nuse_rslora  %s\ndropout     %g\n",
                  static_cast<long long>(cfg.r), cfg.lora_alpha, cfg.use_rslora ? "true" : "false",
                  cfg.lora_dropout);
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
        auto model = lorafit::models::load_model(base);
        auto pm = peft::PeftModel::from_pretrained(*model, dir, "default", true);
        std::printf("fits        %s (%zu LoRA modules)\n%s\n", base.c_str(), pm->lora_layers().size(),
                    pm->count_parameters().str().c_str());
      }
      return 0;
    }
    if (base.empty() || out.empty()) {
      std::fputs(kAdapterUsage, stderr);
      return 2;
    }
    if (sub == "merge") {
      lorafit::models::LoadOptions lo;
      lo.dequantize = true;
      auto model = lorafit::models::load_model(base, lo);
      {
        auto pm = peft::PeftModel::from_pretrained(*model, dir);
        pm->merge_and_unload();
      }
      peft::save_merged_hf(*model, base, out);
      std::printf("merged %s into %s -> %s\n", dir.c_str(), base.c_str(), out.c_str());
      return 0;
    }
    if (sub == "export-gguf") {
      auto model = lorafit::models::load_model(base);
      auto pm = peft::PeftModel::from_pretrained(*model, dir);
      peft::save_llama_cpp_lora(*pm, out);
      std::printf("wrote llama.cpp LoRA %s (%zu modules)\n", out.c_str(), pm->lora_layers().size());
      return 0;
    }
    std::fprintf(stderr, "lorafit adapter: unknown subcommand '%s'\n%s", sub.c_str(), kAdapterUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lorafit adapter %s: %s\n", sub.c_str(), e.what());
    return 1;
  }
}
