// Merged GGUF output: base + adapter written as one plain GGUF (lorafit adapter merge with a
// GGUF base). Untouched tensors keep their exact bytes (a zero-copy view of the mapped base goes
// straight to write_gguf), merged ones are re-encoded from the F32 merged weights with the
// byte-exact quantizers of tensor/quant.
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <set>
#include <vector>

#include "lorafit/rope_config.h"
#include "lorafit/peft.h"
#include "lorafit/quant.h"
#include "peft/peft_internal.h"

namespace lorafit::peft {

void save_merged_gguf(models::Model& model, const std::vector<std::string>& merged_modules,
                      const std::string& base_gguf, const std::string& out_path,
                      tensor::DType type) {
  using tensor::DType;
  const models::ModelConfig& mc = model.config();
  if (mc.arch != "llama")
    fail(out_path + ": merged GGUF output supports Llama-family models, not '" + mc.arch + "'");
  if (type != DType::F32 && type != DType::F16 && type != DType::Q8_0 && type != DType::Q4_0 &&
      type != DType::Q4_1)
    fail(out_path + ": merged tensor type " + tensor::dtype_name(type) +
         " is not supported (f32, f16, q8_0, q4_0, q4_1)");
  io::GgufFile base = io::GgufFile::open(base_gguf);
  if (base.get_string("general.architecture", "") != "llama")
    fail(base_gguf + ": key 'general.architecture': expected \"llama\", got \"" +
         base.get_string("general.architecture", "") + "\"");
  std::map<std::string, nn::Linear*> lins;
  for (auto& [path, l] : model.linears()) lins[path] = l;
  // GGUF tensor name -> the merged Linear.
  std::map<std::string, std::pair<std::string, nn::Linear*>> merged;
  for (const auto& path : merged_modules) {
    auto it = lins.find(path);
    if (it == lins.end()) fail(out_path + ": module '" + path + "' is not a Linear of the model");
    const std::string g = models::llama_gguf_name(path + ".weight");
    if (!base.has_tensor(g))
      fail(base_gguf + ": no tensor '" + g + "' for merged module '" + path + "'" +
           (path == "lm_head" ? " (the output head is tied to token_embd.weight)" : ""));
    merged[g] = {path, it->second};
  }
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const auto& ti : base.tensors()) {
    auto it = merged.find(ti.name);
    if (it == merged.end()) {
      if (!ti.has_dtype)
        fail(base_gguf + ": tensor '" + ti.name + "' is " + io::ggml_type_name(ti.ggml_type) +
             ", which lorafit cannot write back byte for byte (F32, F16, BF16, Q8_0, Q4_0, Q4_1)");
      tensors.emplace_back(ti.name, base.tensor(ti.name));  // the mapped bytes, unchanged
      continue;
    }
    nn::Linear& lin = *it->second.second;
    Tensor w = lin.weight.value.dtype() == DType::F32 ? lin.weight.value
                                                      : lin.weight.value.to(DType::F32);
    if (w.shape() != ti.shape)
      fail(base_gguf + ": tensor '" + ti.name + "' has shape " + tensor::shape_str(ti.shape) +
           ", the merged module '" + it->second.first + "' is " + w.str());
    if (ti.name.find(".attn_q.") != std::string::npos) w = models::llama_qk_to_gguf(w, mc.n_heads);
    if (ti.name.find(".attn_k.") != std::string::npos)
      w = models::llama_qk_to_gguf(w, mc.n_kv_heads);
    if (type != DType::F32 && type != DType::F16 && w.dim(1) % tensor::kQK != 0)
      fail(out_path + ": tensor '" + ti.name + "' has rows of " + std::to_string(w.dim(1)) +
           " values, not a multiple of the " + tensor::dtype_name(type) + " block size 32");
    tensors.emplace_back(ti.name, type == DType::F32 ? w : tensor::quantize(w, type));
  }
  // A model extended with --rope-scaling: llama.cpp reads the scaling and the new context from
  // the metadata (rope.scaling.*; a dynamic or llama3 scaling has no such form and is refused).
  auto kv = base.metadata();
  const nn::RopeScaling& rs = mc.rope_scaling;
  if (rs.type != nn::RopeScaling::Type::None) {
    models::GgufRopeKeys keys;
    try {
      keys = models::rope_scaling_gguf_keys(rs, "llama");
    } catch (const Error& e) {
      fail(out_path + ": " + e.what());
    }
    auto set = [&kv](const std::string& key, io::GgufValue v) {
      for (auto& [k, val] : kv)
        if (k == key) {
          val = std::move(v);
          return;
        }
      kv.emplace_back(key, std::move(v));
    };
    for (auto& [k, v] : keys.strings) set(k, io::GgufValue::string(v));
    for (auto& [k, v] : keys.floats) set(k, io::GgufValue::f32(static_cast<float>(v)));
    for (auto& [k, v] : keys.ints) set(k, io::GgufValue::u32(static_cast<uint32_t>(v)));
    set("llama.context_length", io::GgufValue::u32(static_cast<uint32_t>(mc.max_positions)));
  }
  io::write_gguf(out_path, kv, tensors);
}

double MergeRounding::ratio() const {
  if (delta > 0) return rounding / delta;
  return rounding > 0 ? std::numeric_limits<double>::infinity() : 0.0;
}

namespace {
// The merged model's Linears by module path, and the merged weight of `path`, which must be F32
// of the original's shape: what both merge_rounding overloads compare.
std::map<std::string, nn::Linear*> linears_by_path(models::Model& merged) {
  std::map<std::string, nn::Linear*> lins;
  for (auto& [path, l] : merged.linears()) lins[path] = l;
  return lins;
}
const Tensor& merged_weight(const std::map<std::string, nn::Linear*>& lins, const std::string& path,
                            const Tensor& w0) {
  auto it = lins.find(path);
  if (it == lins.end()) fail("merge_rounding: module '" + path + "' is not a Linear of the model");
  const Tensor& w = it->second->weight.value;
  if (w.dtype() != tensor::DType::F32 || w0.dtype() != tensor::DType::F32 || w.shape() != w0.shape())
    fail("merge_rounding: module '" + path + "': merged " + w.str() + " and original " + w0.str() +
         " must be F32 of one shape");
  return w;
}
}  // namespace

std::vector<MergeRounding> merge_rounding(models::Model& merged,
                                          const std::vector<std::pair<std::string, Tensor>>& before,
                                          tensor::DType type) {
  const std::map<std::string, nn::Linear*> lins = linears_by_path(merged);
  std::vector<MergeRounding> out;
  for (const auto& [path, w0] : before) {
    const Tensor& w = merged_weight(lins, path, w0);
    const int64_t rows = w.dim(0), cols = w.dim(1);
    const size_t bytes = tensor::dtype_nbytes(type, cols);
    if (type != tensor::DType::F32 && type != tensor::DType::F16 && type != tensor::DType::BF16 &&
        cols % tensor::kQK != 0)
      fail("merge_rounding: module '" + path + "': rows of " + std::to_string(cols) +
           " values are not whole " + tensor::dtype_name(type) + " blocks");
    std::vector<uint8_t> q(bytes);
    std::vector<float> back(static_cast<size_t>(cols));
    double r2 = 0, d2 = 0;
    // Row by row (a quantized block never spans rows; the GGUF q/k row permutation moves whole
    // rows, so the norms are the same as for the written tensor).
    for (int64_t i = 0; i < rows; ++i) {
      const float* x = w.f32() + i * cols;
      const float* x0 = w0.f32() + i * cols;
      tensor::quantize_row(type, x, q.data(), cols);
      tensor::dequantize_row(type, q.data(), back.data(), cols);
      for (int64_t j = 0; j < cols; ++j) {
        const double e = static_cast<double>(back[static_cast<size_t>(j)]) - x[j];
        const double d = static_cast<double>(x[j]) - x0[j];
        r2 += e * e;
        d2 += d * d;
      }
    }
    out.push_back({path, std::sqrt(r2), std::sqrt(d2)});
  }
  std::stable_sort(out.begin(), out.end(), [](const MergeRounding& a, const MergeRounding& b) {
    return a.ratio() > b.ratio();
  });
  return out;
}

std::vector<MergeRounding> merge_rounding(models::Model& merged,
                                          const std::vector<std::pair<std::string, Tensor>>& before,
                                          const std::string& quant4_type) {
  if (quant4_type != "nf4" && quant4_type != "nf4-dq" && quant4_type != "fp4")
    fail("merge_rounding: '" + quant4_type + "' is not a 4-bit type (nf4, nf4-dq, fp4)");
  const std::map<std::string, nn::Linear*> lins = linears_by_path(merged);
  std::vector<MergeRounding> out;
  for (const auto& [path, w0] : before) {
    const Tensor& w = merged_weight(lins, path, w0);
    const int64_t n = w.numel();
    tensor::Quant4 q = tensor::quantize_4bit(
        w.f32(), n, quant4_type == "fp4" ? tensor::Quant4Type::FP4 : tensor::Quant4Type::NF4,
        quant4_type == "nf4-dq");
    std::vector<float> back(static_cast<size_t>(n));
    tensor::dequantize_4bit(q, 0, n, back.data());
    double r2 = 0, d2 = 0;
    for (int64_t j = 0; j < n; ++j) {
      const double e = static_cast<double>(back[static_cast<size_t>(j)]) - w.f32()[j];
      const double d = static_cast<double>(w.f32()[j]) - w0.f32()[j];
      r2 += e * e;
      d2 += d * d;
    }
    out.push_back({path, std::sqrt(r2), std::sqrt(d2)});
  }
  std::stable_sort(out.begin(), out.end(), [](const MergeRounding& a, const MergeRounding& b) {
    return a.ratio() > b.ratio();
  });
  return out;
}

}  // namespace lorafit::peft
