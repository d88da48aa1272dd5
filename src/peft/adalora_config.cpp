// AdaLoRA's adapter_config.json fields, apart from the rank allocator (adalora.cpp) so that the
// config reader (and its fuzz target) needs no nn/ code.
#include <algorithm>
#include <cmath>
#include <string>

#include "lorafit/peft.h"
#include "peft/peft_internal.h"

namespace lorafit::peft {

// ---- adapter_config.json
// ---------------------------------------------------------------------------

AdaloraSchedule adalora_default_schedule(int64_t total_step) {
  AdaloraSchedule s;
  if (total_step <= 0) return s;
  s.tinit = total_step * 12 / 100;
  s.tfinal = total_step * 44 / 100;
  s.deltaT = std::max<int64_t>(1, total_step / 500);
  return s;
}

void adalora_validate(const AdapterConfig& c, const std::string& where) {
  auto bad = [&](const std::string& field, const std::string& what) {
    fail(where + ": field '" + field + "': " + what);
  };
  if (c.total_step <= 0)
    bad("total_step", "AdaLoRA needs the total number of training steps (> 0), got " +
                          std::to_string(c.total_step));
  if (c.init_r <= 0) bad("init_r", "must be positive, got " + std::to_string(c.init_r));
  if (c.target_r < 0 || c.target_r > c.init_r)
    bad("target_r", "must be in [0, init_r = " + std::to_string(c.init_r) + "], got " +
                        std::to_string(c.target_r));
  if (c.tinit < 0 || c.tfinal < 0) bad(c.tinit < 0 ? "tinit" : "tfinal", "must not be negative");
  if (c.tinit >= c.total_step - c.tfinal)
    bad("tinit", "tinit (" + std::to_string(c.tinit) + ") >= total_step − tfinal (" +
                     std::to_string(c.total_step - c.tfinal) +
                     "): no budgeting phase (decrease tfinal/tinit or increase total_step)");
  if (c.deltaT <= 0) bad("deltaT", "must be positive, got " + std::to_string(c.deltaT));
  if (!(c.beta1 > 0 && c.beta1 < 1)) bad("beta1", "must be in (0, 1)");
  if (!(c.beta2 > 0 && c.beta2 < 1)) bad("beta2", "must be in (0, 1)");
  if (!(c.orth_reg_weight >= 0)) bad("orth_reg_weight", "must be >= 0");
  if (c.use_dora) bad("use_dora", "AdaLoRA does not support DoRA");
  for (const auto& [k, v] : c.adalora_rank_pattern)
    if (static_cast<int64_t>(v.size()) != c.init_r)
      bad("rank_pattern." + k,
          "has " + std::to_string(v.size()) + " entries, init_r is " + std::to_string(c.init_r));
}

void adalora_config_from_json(const io::json& j, AdapterConfig& c, const std::string& where) {
  const AdapterConfig d;  // defaults: AdapterConfig's (PEFT AdaLoraConfig's)
  c.target_r = io::json_int(j, "target_r", where, d.target_r);
  c.init_r = io::json_int(j, "init_r", where, d.init_r);
  c.tinit = io::json_int(j, "tinit", where, d.tinit);
  c.tfinal = io::json_int(j, "tfinal", where, d.tfinal);
  c.deltaT = io::json_int(j, "deltaT", where, d.deltaT);
  c.beta1 = io::json_number(j, "beta1", where, d.beta1);
  c.beta2 = io::json_number(j, "beta2", where, d.beta2);
  c.orth_reg_weight = io::json_number(j, "orth_reg_weight", where, d.orth_reg_weight);
  c.total_step =
      io::json_int(j, "total_step", where, d.total_step);  // null/missing: validate names it
  if (!io::json_has(j, "rank_pattern")) return;
  const auto& m = j.at("rank_pattern");
  if (!m.is_object())
    fail(where + ": field 'rank_pattern': expected an object of keep masks, got " +
         io::json_type_name(m));
  for (auto it = m.begin(); it != m.end(); ++it) {
    const std::string w = where + ": field 'rank_pattern." + it.key() + "'";
    if (!it->is_array()) fail(w + ": expected a list of booleans, got " + io::json_type_name(*it));
    std::vector<bool> mask;
    for (const auto& b : *it) {
      if (b.is_boolean())
        mask.push_back(b.get<bool>());
      else if (b.is_number_integer() && (b.get<int64_t>() == 0 || b.get<int64_t>() == 1))
        mask.push_back(b.get<int64_t>() == 1);
      else
        fail(w + ": expected booleans, got " + io::json_type_name(b));
    }
    std::string key = it.key();
    // Live (unsaved) PEFT keys carry the adapter name: "<path>.lora_E.<adapter>".
    const size_t pos = key.rfind(".lora_E");
    if (pos == std::string::npos) fail(w + ": key must end in '.lora_E'");
    key = key.substr(0, pos + 7);
    c.adalora_rank_pattern.emplace_back(key, std::move(mask));
  }
}

void adalora_config_to_json(const AdapterConfig& c, io::json& j) {
  j["target_r"] = c.target_r;
  j["init_r"] = c.init_r;
  j["tinit"] = c.tinit;
  j["tfinal"] = c.tfinal;
  j["deltaT"] = c.deltaT;
  j["beta1"] = c.beta1;
  j["beta2"] = c.beta2;
  j["orth_reg_weight"] = c.orth_reg_weight;
  j["total_step"] = c.total_step;
  if (c.adalora_rank_pattern.empty()) {
    j["rank_pattern"] = io::json();
  } else {
    io::json rp = io::json::object();
    for (const auto& [k, v] : c.adalora_rank_pattern) rp[k] = v;
    j["rank_pattern"] = rp;
  }
}

}  // namespace lorafit::peft
