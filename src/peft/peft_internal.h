// Internal helpers of the peft layer.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "lorafit/peft.h"
#include "lorafit/tensor.h"

namespace lorafit::peft {

[[noreturn]] inline void fail(const std::string& msg) { throw Error("[peft] " + msg); }

// PEFT's list matching: key == t or key ends with "." + t, for any t.
bool path_matches_any(const std::vector<std::string>& names, const std::string& key);
// True when key or one of its parent module paths (cut at '.') matches one of names.
bool inside_any(const std::vector<std::string>& names, const std::string& key);

// AdaLoRA (adalora.cpp): the SVDLinear for one target (rank init_r, or the kept rank of the
// config's rank_pattern), and its saved tensors "<key>.lora_A/E/B" pruned by the rank_pattern.
std::unique_ptr<LoraLinear> make_svd_layer(const AdapterConfig& cfg, const std::string& path,
                                           const nn::Linear& lin, uint64_t seed);
void svd_state(const AdapterConfig& cfg, const std::string& key, const SVDLinear& l,
               std::vector<std::pair<std::string, tensor::Tensor>>& out);

}  // namespace lorafit::peft
