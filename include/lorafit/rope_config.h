// RoPE scaling in the files we read and write: config.json's rope_scaling object (transformers'
// keys), GGUF's llama.rope.scaling.* keys (llama.cpp's), and the --rope-scaling option.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "lorafit/io.h"
#include "lorafit/nn.h"

namespace lorafit::models {

// A config.json rope_scaling / rope_parameters object (rope_type or type; factor;
// original_max_position_embeddings, default max_positions; low/high_freq_factor; beta_fast,
// beta_slow, attention_factor, mscale, mscale_all_dim, truncate). Errors name `where` and the field.
nn::RopeScaling rope_scaling_from_json(const io::json& obj, int64_t max_positions,
                                       const std::string& where);
// theta and scaling from a whole config.json: rope_theta and rope_scaling (transformers < 5) or
// rope_parameters {rope_theta, rope_type, ...} (transformers >= 5, which wins).
void rope_from_config_json(const io::json& config, int64_t max_positions, const std::string& where,
                           double* theta, nn::RopeScaling* s);
// The object transformers reads back (rope_type and the type's fields; no rope_theta).
io::json rope_scaling_to_json(const nn::RopeScaling& s);

// --rope-scaling TYPE:FACTOR (linear, dynamic, yarn, llama3) on a model of context `context`:
// original_max_positions = context, the other parameters transformers' defaults (llama3:
// low_freq_factor 1, high_freq_factor 4). *max_positions receives the extended context
// (context·factor; dynamic keeps `context`, as transformers scales beyond max_position_embeddings).
nn::RopeScaling parse_rope_scaling_option(const std::string& spec, int64_t context,
                                          int64_t* max_positions);

// "linear factor 2 (original 8192)" for logs and `info`.
std::string rope_scaling_str(const nn::RopeScaling& s);

// GGUF metadata that carries `s` for llama.cpp (arch.rope.scaling.type / factor /
// original_context_length; yarn: attn_factor and the betas). Dynamic NTK and llama3 without
// stored factors have no GGUF form: throws lorafit::Error saying so.
struct GgufRopeKeys {
  std::map<std::string, std::string> strings;
  std::map<std::string, double> floats;  // written as F32
  std::map<std::string, int64_t> ints;   // written as U32
};
GgufRopeKeys rope_scaling_gguf_keys(const nn::RopeScaling& s, const std::string& arch);

}  // namespace lorafit::models
