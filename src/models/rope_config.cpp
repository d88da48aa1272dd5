// RoPE scaling as config.json (transformers), GGUF (llama.cpp) and --rope-scaling spell it.
#include "lorafit/rope_config.h"

#include <cmath>
#include <cstdlib>

#include "models/models_internal.h"

namespace lorafit::models {

using T = nn::RopeScaling::Type;

nn::RopeScaling rope_scaling_from_json(const io::json& j, int64_t max_positions,
                                       const std::string& where) {
  nn::RopeScaling s;
  const std::string type =
      io::json_string(j, "rope_type", where, io::json_string(j, "type", where, "default"));
  s.type = nn::rope_type_from_name(type, where + ": field 'rope_type'");
  if (s.type == T::None) return s;
  s.factor = io::json_number(j, "factor", where);
  detail::check(std::isfinite(s.factor) && s.factor >= 1.0,
                where + ": field 'factor' must be >= 1, got " + std::to_string(s.factor));
  // transformers' dynamic NTK scales beyond max_position_embeddings (its own field ignored)
  s.original_max_positions =
      s.type == T::Dynamic
          ? max_positions
          : io::json_int(j, "original_max_position_embeddings", where, max_positions);
  if (s.type == T::Llama3) {
    s.low_freq_factor = io::json_number(j, "low_freq_factor", where);
    s.high_freq_factor = io::json_number(j, "high_freq_factor", where);
  }
  if (s.type == T::Yarn) {
    s.beta_fast = io::json_number(j, "beta_fast", where, 32.0);
    s.beta_slow = io::json_number(j, "beta_slow", where, 1.0);
    s.attention_factor = io::json_number(j, "attention_factor", where, 0.0);
    s.mscale = io::json_number(j, "mscale", where, 0.0);
    s.mscale_all_dim = io::json_number(j, "mscale_all_dim", where, 0.0);
    s.truncate = io::json_bool(j, "truncate", where, true);
  }
  return s;
}

void rope_from_config_json(const io::json& j, int64_t max_positions, const std::string& where,
                           double* theta, nn::RopeScaling* s) {
  *theta = io::json_number(j, "rope_theta", where, 10000.0);
  *s = nn::RopeScaling();
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    if (!io::json_has(j, key)) continue;
    const std::string w = where + ": " + key;
    detail::check(j[key].is_object(), where + ": field '" + key + "': expected object, got " +
                                          io::json_type_name(j[key]));
    *theta = io::json_number(j[key], "rope_theta", w, *theta);
    *s = rope_scaling_from_json(j[key], max_positions, w);
  }
}

io::json rope_scaling_to_json(const nn::RopeScaling& s) {
  io::json j;
  j["rope_type"] = nn::rope_type_name(s.type);
  if (s.type == T::None) return j;
  j["factor"] = s.factor;
  if (s.type != T::Linear) j["original_max_position_embeddings"] = s.original_max_positions;
  if (s.type == T::Llama3) {
    j["low_freq_factor"] = s.low_freq_factor;
    j["high_freq_factor"] = s.high_freq_factor;
  }
  if (s.type == T::Yarn) {
    j["beta_fast"] = s.beta_fast;
    j["beta_slow"] = s.beta_slow;
    if (s.attention_factor > 0.0) j["attention_factor"] = s.attention_factor;
    if (s.mscale != 0.0) j["mscale"] = s.mscale;
    if (s.mscale_all_dim != 0.0) j["mscale_all_dim"] = s.mscale_all_dim;
    if (!s.truncate) j["truncate"] = false;
  }
  return j;
}

nn::RopeScaling parse_rope_scaling_option(const std::string& spec, int64_t context,
                                          int64_t* max_positions) {
  const std::string what = "--rope-scaling '" + spec + "'";
  const size_t colon = spec.find(':');
  detail::check(colon != std::string::npos && colon > 0 && colon + 1 < spec.size(),
                what + ": expected TYPE:FACTOR (linear, dynamic, yarn or llama3; e.g. linear:2)");
  nn::RopeScaling s;
  s.type = nn::rope_type_from_name(spec.substr(0, colon), what);
  detail::check(s.type != T::None, what + ": TYPE must be linear, dynamic, yarn or llama3");
  const std::string num = spec.substr(colon + 1);
  char* end = nullptr;
  s.factor = std::strtod(num.c_str(), &end);
  detail::check(end && *end == '\0' && std::isfinite(s.factor) && s.factor > 1.0,
                what + ": FACTOR must be a number > 1, got '" + num + "'");
  detail::check(context > 0, what + ": the model declares no context length to extend");
  s.original_max_positions = context;
  if (s.type == T::Llama3) s.low_freq_factor = 1.0, s.high_freq_factor = 4.0;
  *max_positions = s.type == T::Dynamic
                       ? context
                       : static_cast<int64_t>(std::llround(static_cast<double>(context) * s.factor));
  return s;
}

std::string rope_scaling_str(const nn::RopeScaling& s) {
  if (!s.active()) return "none";
  if (s.type == T::None) return "GGUF frequency factors (rope_freqs)";
  char buf[160];
  std::snprintf(buf, sizeof buf, "%s factor %g", nn::rope_type_name(s.type), s.factor);
  std::string out = buf;
  if (s.type != T::Linear) out += " (original " + std::to_string(s.original_max_positions) + ")";
  if (!s.freq_factors.empty()) out += " + rope_freqs";
  return out;
}

GgufRopeKeys rope_scaling_gguf_keys(const nn::RopeScaling& s, const std::string& arch) {
  GgufRopeKeys k;
  const std::string p = arch + ".rope.scaling.";
  switch (s.type) {
    case T::None: break;
    case T::Linear:
      k.strings[p + "type"] = "linear";
      k.floats[p + "factor"] = s.factor;
      break;
    case T::Yarn: {
      k.strings[p + "type"] = "yarn";
      k.floats[p + "factor"] = s.factor;
      k.ints[p + "original_context_length"] = s.original_max_positions;
      k.floats[p + "yarn_beta_fast"] = s.beta_fast;
      k.floats[p + "yarn_beta_slow"] = s.beta_slow;
      // llama.cpp multiplies attn_factor by its own 0.1·ln(factor) + 1
      const double ours = nn::rope_frequencies(10000.0, 4, s, 0).factor;
      const double dflt = 0.1 * std::log(s.factor) + 1.0;
      if (std::fabs(ours / dflt - 1.0) > 1e-12) k.floats[p + "attn_factor"] = ours / dflt;
      break;
    }
    case T::Dynamic:
      throw Error("[models] RoPE scaling 'dynamic' (NTK) has no llama.cpp GGUF form "
                  "(llama.rope.scaling.type is none, linear or yarn)");
    case T::Llama3:
      throw Error("[models] RoPE scaling 'llama3' is stored in GGUF as a rope_freqs tensor, "
                  "which lorafit does not write; use linear or yarn for a GGUF");
  }
  return k;
}

}  // namespace lorafit::models
