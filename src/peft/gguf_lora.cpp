// llama.cpp LoRA adapter GGUF export (llama.cpp src/llama-adapter.cpp reads it; the layout is the
// one convert_lora_to_gguf.py writes: "<base>.lora_a" ne [in, r], "<base>.lora_b" ne [r, out]).
#include <cmath>
#include <cstring>

#include "lorafit/peft.h"
#include "peft/peft_internal.h"

namespace lorafit::peft {

std::string llama_gguf_name(const std::string& hf) {
  static const std::pair<const char*, const char*> kMap[] = {
      {"self_attn.q_proj", "attn_q"},      {"self_attn.k_proj", "attn_k"},
      {"self_attn.v_proj", "attn_v"},      {"self_attn.o_proj", "attn_output"},
      {"mlp.gate_proj", "ffn_gate"},       {"mlp.up_proj", "ffn_up"},
      {"mlp.down_proj", "ffn_down"}};
  if (hf == "lm_head") return "output.weight";
  const std::string pre = "model.layers.";
  if (hf.rfind(pre, 0) == 0) {
    const size_t dot = hf.find('.', pre.size());
    if (dot != std::string::npos) {
      const std::string layer = hf.substr(pre.size(), dot - pre.size());
      const std::string rest = hf.substr(dot + 1);
      for (const auto& [h, g] : kMap)
        if (rest == h) return "blk." + layer + "." + g + ".weight";
    }
  }
  fail("module '" + hf + "' has no llama.cpp GGUF name");
}

// HF -> GGUF row order of q/k (llama.cpp convert_hf_to_gguf.py LlamaModel.permute):
// reshape(n_head, 2, D/2, cols).swapaxes(1, 2): gguf[h*D + 2*i + j] = hf[h*D + j*(D/2) + i].
Tensor permute_rows(const Tensor& w, int64_t n_head) {
  const int64_t rows = w.dim(0), cols = w.dim(1), D = rows / n_head;
  if (n_head <= 0 || rows % n_head != 0 || D % 2 != 0)
    fail("cannot permute " + w.str() + " rows for " + std::to_string(n_head) + " heads");
  Tensor out = Tensor::empty(w.shape());
  for (int64_t h = 0; h < n_head; ++h)
    for (int64_t i = 0; i < D / 2; ++i)
      for (int64_t j = 0; j < 2; ++j)
        std::memcpy(out.f32() + (h * D + 2 * i + j) * cols, w.f32() + (h * D + j * (D / 2) + i) * cols,
                    static_cast<size_t>(cols) * sizeof(float));
  return out;
}

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
    const std::string base = llama_gguf_name(hf);
    Tensor b = l->B.value.clone();
    // llama.cpp applies (alpha / r) · B A; we need s · B A.
    const double fold = static_cast<double>(l->scaling()) * l->r() / alpha;
    if (std::fabs(fold - 1.0) > 1e-12)
      for (int64_t i = 0; i < b.numel(); ++i) b.f32()[i] = static_cast<float>(b.f32()[i] * fold);
    if (base.find(".attn_q.") != std::string::npos) b = permute_rows(b, mc.n_heads);
    if (base.find(".attn_k.") != std::string::npos) b = permute_rows(b, mc.n_kv_heads);
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
