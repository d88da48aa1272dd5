// llama.cpp LoRA adapter GGUF export (llama.cpp src/llama-adapter.cpp reads it; the layout is the
// one convert_lora_to_gguf.py writes: "<base>.lora_a" ne [in, r], "<base>.lora_b" ne [r, out]).
#include <cmath>

#include "lorafit/peft.h"
#include "peft/peft_internal.h"

namespace lorafit::peft {

void save_llama_cpp_lora(const PeftModel& pm_const, const std::string& path, const std::string& name) {
  auto& pm = const_cast<PeftModel&>(pm_const);  // lora_layers() is non-const; nothing is changed
  const models::ModelConfig& mc = pm.model().config();
  if (mc.arch != "llama")
    fail(path + ": llama.cpp LoRA export supports Llama-family models, not '" + mc.arch + "'");
  auto layers = pm.lora_layers(name);
  const AdapterConfig& cfg = pm.config(name);
  if (cfg.is_adalora())  // lora_a/lora_b would drop lora_E; merge the adapter instead
    fail(path + ": llama.cpp LoRA export of an AdaLoRA adapter is not supported (lorafit adapter merge)");
  if (cfg.modules_to_save && !cfg.modules_to_save->empty())
    fail(path + ": modules_to_save cannot be stored in a llama.cpp LoRA GGUF");
  const double alpha = static_cast<double>(layers.at(0).second->scaling()) * layers[0].second->r();
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (auto& [hf, l] : layers) {
    const std::string base = models::llama_gguf_name(hf + ".weight");
    Tensor b = l->B.value.clone();
    // llama.cpp applies (alpha / r) · B A; we need s · B A.
    const double fold = static_cast<double>(l->scaling()) * l->r() / alpha;
    if (std::fabs(fold - 1.0) > 1e-12)
      for (int64_t i = 0; i < b.numel(); ++i) b.f32()[i] = static_cast<float>(b.f32()[i] * fold);
    if (base.find(".attn_q.") != std::string::npos) b = models::llama_qk_to_gguf(b, mc.n_heads);
    if (base.find(".attn_k.") != std::string::npos) b = models::llama_qk_to_gguf(b, mc.n_kv_heads);
    tensors.emplace_back(base + ".lora_a", l->A.value);  // torch [r, in] = ne [in, r]
    tensors.emplace_back(base + ".lora_b", b);           // torch [out, r] = ne [r, out]
  }
  std::vector<std::pair<std::string, io::GgufValue>> meta = {
      {"general.architecture", io::GgufValue::string("llama")},
      {"general.type", io::GgufValue::string("adapter")},
      {"adapter.type", io::GgufValue::string("lora")},
      {"adapter.lora.alpha", io::GgufValue::f32(static_cast<float>(alpha))},
  };
  io::write_gguf(path, meta, tensors);
}

}  // namespace lorafit::peft
