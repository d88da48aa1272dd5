// AdapterConfig: PEFT's LoraConfig fields, adapter_config.json read/write, target matching
// (peft/tuners/tuners_utils.py check_target_module_exists, peft 0.21).
#include <cctype>
#include <cmath>
#include <regex>

#include "lorafit/peft.h"
#include "peft/peft_internal.h"

namespace lorafit::peft {

const char* lora_init_name(LoraInit init) {
  switch (init) {
    case LoraInit::Default: return "true";
    case LoraInit::Random: return "false";
    case LoraInit::Gaussian: return "gaussian";
    case LoraInit::Pissa: return "pissa";
    case LoraInit::Olora: return "olora";
    case LoraInit::Eva:
      return "eva";
    case LoraInit::Orthogonal:
      return "orthogonal";
    case LoraInit::Mica:
      return "mica";
    case LoraInit::LoraGa:
      return "lora_ga";
  }
  return "?";
}

// The values PEFT 0.21 writes for init_lora_weights (LoraLayer.update_layer): bools and these
// strings. PEFT dispatches with startswith("pissa"), startswith("corda"), lower() == "olora",
// lower() == "mica", == "loftq", == "eva", == "orthogonal", == "lora_ga", and lower() ==
// "gaussian" in reset_lora_parameters.
void set_init_lora_weights(AdapterConfig& c, const std::string& v, const std::string& where) {
  auto bad = [&](const std::string& why) {
    fail(where + ": field 'init_lora_weights': \"" + v + "\" " + why);
  };
  std::string low = v;
  for (auto& ch : low) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  c.pissa_niter = -1;
  if (v == "true")
    c.init_lora_weights = LoraInit::Default;
  else if (v == "false")
    c.init_lora_weights = LoraInit::Random;
  else if (low == "gaussian")
    c.init_lora_weights = LoraInit::Gaussian;
  else if (low == "olora")
    c.init_lora_weights = LoraInit::Olora;
  else if (v == "eva")
    c.init_lora_weights = LoraInit::Eva;
  else if (v == "orthogonal")
    c.init_lora_weights = LoraInit::Orthogonal;
  else if (low == "mica")
    c.init_lora_weights = LoraInit::Mica;
  else if (v == "lora_ga")
    c.init_lora_weights = LoraInit::LoraGa;
  else if (v == "pissa")
    c.init_lora_weights = LoraInit::Pissa;
  else if (v.rfind("pissa", 0) == 0) {
    // PEFT: len(s.split("_niter_")) == 2, then int() of the second part.
    const std::string pre = "pissa_niter_";
    const std::string k = v.rfind(pre, 0) == 0 ? v.substr(pre.size()) : "";
    if (k.empty() || k.size() > 9 || k.find_first_not_of("0123456789") != std::string::npos)
      bad("is not \"pissa\" or \"pissa_niter_K\" with K a number of iterations, e.g. "
          "\"pissa_niter_4\"");
    c.init_lora_weights = LoraInit::Pissa;
    c.pissa_niter = std::stoll(k);
  } else if (v == "loftq") {
    bad("is not supported: LoftQ replaces the base weights with its own quantization of W - B A "
        "(PEFT's loftq_init), which lorafit does not compute; use the LoftQ base model the adapter "
        "was made with and set init_lora_weights to true");
  } else if (v.rfind("corda", 0) == 0) {
    bad("is not supported: CorDA's init needs covariance statistics of the training data (PEFT's "
        "preprocess_corda; PEFT cannot load the folder without them either); convert the adapter "
        "to a plain LoRA with PEFT's "
        "save_pretrained(path_initial_model_for_weight_conversion=...)");
  } else {
    bad("is not a PEFT init (expected true, false, \"gaussian\", \"pissa\", \"pissa_niter_K\", "
        "\"olora\", \"eva\", \"orthogonal\", \"mica\", \"lora_ga\")");
  }
}

std::string init_lora_weights_str(const AdapterConfig& c) {
  if (c.init_lora_weights == LoraInit::Pissa && c.pissa_niter >= 0)
    return "pissa_niter_" + std::to_string(c.pissa_niter);
  return lora_init_name(c.init_lora_weights);
}

double AdapterConfig::scaling(int64_t rank, double alpha) const {
  return use_rslora ? alpha / std::sqrt(static_cast<double>(rank))
                    : alpha / static_cast<double>(rank);
}

namespace {

// PEFT: re.match(rf"(.*\.)?({key})$", module_path); first key (in dict order) that matches.
bool pattern_matches(const std::string& key, const std::string& path) {
  try {
    return std::regex_match(path, std::regex("(.*\\.)?(" + key + ")"));
  } catch (const std::regex_error&) {
    fail("rank_pattern/alpha_pattern key '" + key + "' is not a valid regex");
  }
}

}  // namespace

int64_t AdapterConfig::rank_for(const std::string& module_path) const {
  for (const auto& [k, v] : rank_pattern)
    if (pattern_matches(k, module_path)) return v;
  return r;
}

double AdapterConfig::alpha_for(const std::string& module_path) const {
  for (const auto& [k, v] : alpha_pattern)
    if (pattern_matches(k, module_path)) return v;
  return lora_alpha;
}

void AdapterConfig::validate(const std::string& where) const {
  auto bad = [&](const std::string& field, const std::string& what) {
    fail(where + ": field '" + field + "': " + what);
  };
  if (peft_type != "LORA" && peft_type != "ADALORA")
    bad("peft_type", "'" + peft_type + "' is not supported (\"LORA\" or \"ADALORA\")");
  if (is_adalora()) adalora_validate(*this, where);
  if (r <= 0) bad("r", "must be a positive integer, got " + std::to_string(r));
  // Limits before allocation: an adapter's matrices are allocated from its ranks before any
  // tensor is read, so a rank beyond every weight's size is refused here.
  constexpr int64_t kMaxRank = int64_t{1} << 16;
  auto rank_limit = [&](const std::string& field, int64_t v) {
    if (v > kMaxRank) bad(field, std::to_string(v) + " exceeds the limit of " + std::to_string(kMaxRank));
  };
  rank_limit("r", r);
  if (is_adalora()) rank_limit("init_r", init_r);
  for (const auto& [k, v] : rank_pattern) rank_limit("rank_pattern." + k, v);
  if (!std::isfinite(lora_alpha)) bad("lora_alpha", "must be a finite number");
  if (!(lora_dropout >= 0.0 && lora_dropout < 1.0))
    bad("lora_dropout", "must be in [0, 1), got " + std::to_string(lora_dropout));
  if (target_modules.empty()) bad("target_modules", "is empty or null (name the modules to adapt)");
  if (target_modules_regex) {
    try {
      std::regex re(target_modules[0]);
    } catch (const std::regex_error& e) {
      bad("target_modules", "'" + target_modules[0] + "' is not a valid regex: " + e.what());
    }
  }
  if (bias != "none")
    bad("bias", "'" + bias + "' is not supported (only \"none\"; bias training is not implemented)");
  if (fan_in_fan_out) bad("fan_in_fan_out", "must be false (no Conv1D layers here)");
  if (init_lora_weights == LoraInit::Orthogonal) {  // PEFT's orthogonal_init raises for odd ranks
    if (r % 2 != 0)
      bad("init_lora_weights", "\"orthogonal\" needs an even r, got " + std::to_string(r));
    for (const auto& [k, v] : rank_pattern)
      if (v % 2 != 0)
        bad("init_lora_weights",
            "\"orthogonal\" needs even ranks, rank_pattern '" + k + "' is " + std::to_string(v));
  }
  if (is_adalora() && init_lora_weights != LoraInit::Default &&
      init_lora_weights != LoraInit::Random)
    bad("init_lora_weights", std::string("\"") + lora_init_name(init_lora_weights) +
                                 "\" does not apply to AdaLoRA (true or false)");
  for (const auto& [k, v] : rank_pattern)
    if (v <= 0) bad("rank_pattern", "rank for '" + k + "' must be positive, got " + std::to_string(v));
  const bool str_targets =
      target_modules_regex || (target_modules.size() == 1 && target_modules[0] == "all-linear");
  if (!layers_to_transform.empty() && str_targets)  // as PEFT's LoraConfig.__post_init__
    bad("layers_to_transform", "cannot be used when target_modules is a string");
  if (!layers_pattern.empty() && layers_to_transform.empty())
    bad("layers_pattern", "needs layers_to_transform");
  if (!layers_to_transform.empty())
    for (int64_t i : layers_to_transform)
      if (i < 0) bad("layers_to_transform", "negative layer index " + std::to_string(i));
}

AdapterConfig config_from_json(const io::json& j, const std::string& where) {
  if (!j.is_object()) fail(where + ": expected a JSON object, got " + io::json_type_name(j));
  // Missing fields take the defaults of AdapterConfig (PEFT's, stated once in peft.h).
  const AdapterConfig d;
  AdapterConfig c;
  c.peft_type = io::json_string(j, "peft_type", where);  // required, as PEFT
  c.task_type = io::json_string(j, "task_type", where, d.task_type);
  c.base_model_name_or_path =
      io::json_string(j, "base_model_name_or_path", where, d.base_model_name_or_path);
  c.r = io::json_int(j, "r", where, d.r);
  c.lora_alpha = io::json_number(j, "lora_alpha", where, d.lora_alpha);
  c.lora_dropout = io::json_number(j, "lora_dropout", where, d.lora_dropout);
  if (io::json_has(j, "target_modules")) {
    const auto& t = j.at("target_modules");
    if (t.is_string()) {
      std::string s = t.get<std::string>();
      c.target_modules = {s};
      c.target_modules_regex = s != "all-linear";
    } else {
      c.target_modules = io::json_string_list(j, "target_modules", where);
    }
  }
  if (io::json_has(j, "layers_to_transform")) {
    const auto& t = j.at("layers_to_transform");
    if (t.is_number_integer())
      c.layers_to_transform = {t.get<int64_t>()};
    else
      c.layers_to_transform = io::json_int_list(j, "layers_to_transform", where);
  }
  if (io::json_has(j, "layers_pattern"))
    c.layers_pattern = io::json_string_list(j, "layers_pattern", where);
  auto read_map = [&](const char* field, auto& out, bool integer) {
    if (!io::json_has(j, field)) return;
    const auto& m = j.at(field);
    if (!m.is_object())
      fail(where + ": field '" + field + "': expected object, got " + io::json_type_name(m));
    for (auto it = m.begin(); it != m.end(); ++it) {
      const std::string w = where + ": field '" + field + "." + it.key() + "'";
      if (integer) {
        if (!it->is_number_integer()) fail(w + ": expected integer, got " + io::json_type_name(*it));
      } else if (!it->is_number()) {
        fail(w + ": expected number, got " + io::json_type_name(*it));
      }
      out.emplace_back(it.key(), it->template get<typename std::decay_t<decltype(out)>::value_type::second_type>());
    }
  };
  if (c.is_adalora()) adalora_config_from_json(j, c, where);  // rank_pattern: keep masks
  else read_map("rank_pattern", c.rank_pattern, true);
  read_map("alpha_pattern", c.alpha_pattern, false);
  if (io::json_has(j, "modules_to_save"))
    c.modules_to_save = io::json_string_list(j, "modules_to_save", where);
  c.bias = io::json_string(j, "bias", where, d.bias);
  c.use_rslora = io::json_bool(j, "use_rslora", where, d.use_rslora);
  c.use_dora = io::json_bool(j, "use_dora", where, d.use_dora);
  c.fan_in_fan_out = io::json_bool(j, "fan_in_fan_out", where, d.fan_in_fan_out);
  c.inference_mode = io::json_bool(j, "inference_mode", where, d.inference_mode);
  if (io::json_has(j, "init_lora_weights")) {
    const auto& v = j.at("init_lora_weights");
    if (v.is_boolean()) {
      c.init_lora_weights = v.get<bool>() ? LoraInit::Default : LoraInit::Random;
    } else if (v.is_string()) {
      set_init_lora_weights(c, v.get<std::string>(), where);
    } else {
      fail(where + ": field 'init_lora_weights': expected bool or string, got " +
           io::json_type_name(v));
    }
  }
  // Keys PEFT has but we cannot honour: refuse rather than silently ignore.
  for (const char* k : {"layer_replication", "loftq_config", "megatron_config", "exclude_modules",
                        "target_parameters", "trainable_token_indices"}) {
    if (!io::json_has(j, k)) continue;
    const auto& v = j.at(k);
    if ((v.is_object() || v.is_array()) && v.empty()) continue;
    fail(where + std::string(": field '") + k + "' is not supported (expected null)");
  }
  if (io::json_has(j, "lora_bias") && io::json_bool(j, "lora_bias", where))
    fail(where + ": field 'lora_bias': true is not supported");
  c.validate(where);
  return c;
}

io::json config_to_json(const AdapterConfig& c) {
  io::json j = io::json::object();
  j["peft_type"] = c.peft_type;
  j["task_type"] = c.task_type.empty() ? io::json() : io::json(c.task_type);
  j["base_model_name_or_path"] =
      c.base_model_name_or_path.empty() ? io::json() : io::json(c.base_model_name_or_path);
  j["r"] = c.r;
  // PEFT writes lora_alpha as given (an int in the usual case).
  if (c.lora_alpha == std::floor(c.lora_alpha) && std::abs(c.lora_alpha) < 1e15)
    j["lora_alpha"] = static_cast<int64_t>(c.lora_alpha);
  else
    j["lora_alpha"] = c.lora_alpha;
  j["lora_dropout"] = c.lora_dropout;
  if (c.target_modules_regex)
    j["target_modules"] = c.target_modules.at(0);
  else
    j["target_modules"] = c.target_modules;
  j["layers_to_transform"] =
      c.layers_to_transform.empty() ? io::json() : io::json(c.layers_to_transform);
  j["layers_pattern"] = c.layers_pattern.empty() ? io::json() : io::json(c.layers_pattern);
  io::json rp = io::json::object(), ap = io::json::object();
  for (const auto& [k, v] : c.rank_pattern) rp[k] = v;
  for (const auto& [k, v] : c.alpha_pattern) ap[k] = v;
  j["rank_pattern"] = rp;
  j["alpha_pattern"] = ap;
  j["modules_to_save"] = c.modules_to_save ? io::json(*c.modules_to_save) : io::json();
  j["bias"] = c.bias;
  j["use_rslora"] = c.use_rslora;
  j["use_dora"] = c.use_dora;
  j["fan_in_fan_out"] = c.fan_in_fan_out;
  switch (c.init_lora_weights) {
    case LoraInit::Default: j["init_lora_weights"] = true; break;
    case LoraInit::Random: j["init_lora_weights"] = false; break;
    default:
      j["init_lora_weights"] = init_lora_weights_str(c);
  }
  j["inference_mode"] = c.inference_mode;
  if (c.is_adalora()) adalora_config_to_json(c, j);
  return j;
}

AdapterConfig read_adapter_config(const std::string& adapter_dir) {
  const std::string path = adapter_dir + "/adapter_config.json";
  if (!io::file_exists(path)) fail(adapter_dir + ": no adapter_config.json");
  AdapterConfig c = config_from_json(io::read_json_file(path), path);
  // "First match wins" follows the file's key order (Python dict order); io::json sorts keys, so
  // take the order from an order-preserving parse of the same (already validated) text.
  const auto ordered = nlohmann::ordered_json::parse(io::read_file(path));
  auto reorder = [&](const char* field, auto& pats) {
    if (!ordered.contains(field) || !ordered[field].is_object()) return;
    std::decay_t<decltype(pats)> out;
    for (auto it = ordered[field].begin(); it != ordered[field].end(); ++it)
      for (auto& kv : pats)
        if (kv.first == it.key()) out.push_back(kv);
    pats = out;
  };
  reorder("rank_pattern", c.rank_pattern);
  reorder("alpha_pattern", c.alpha_pattern);
  return c;
}

namespace {

bool name_matches(const std::string& t, const std::string& key) {
  return key == t || (key.size() > t.size() && key.compare(key.size() - t.size(), t.size(), t) == 0 &&
                      key[key.size() - t.size() - 1] == '.');
}

}  // namespace

bool path_matches_any(const std::vector<std::string>& names, const std::string& key) {
  for (const auto& t : names)
    if (name_matches(t, key)) return true;
  return false;
}

bool inside_any(const std::vector<std::string>& names, const std::string& key) {
  for (size_t end = key.size(); end != std::string::npos && end > 0;) {
    if (path_matches_any(names, key.substr(0, end))) return true;
    end = key.rfind('.', end - 1);
  }
  return false;
}

bool target_matches(const AdapterConfig& cfg, const std::string& key, bool is_head) {
  bool found = false;
  if (cfg.target_modules_regex) {
    found = std::regex_match(key, std::regex(cfg.target_modules[0]));
  } else if (cfg.target_modules.size() == 1 && cfg.target_modules[0] == "all-linear") {
    // Every Linear but the output head and what modules_to_save replaces (PEFT wraps those).
    found = !is_head && !(cfg.modules_to_save && inside_any(*cfg.modules_to_save, key));
  } else {
    found = path_matches_any(cfg.target_modules, key);
  }
  if (found && !cfg.layers_to_transform.empty()) {
    // Layer index from "...<pattern>.<i>." (PEFT: re.match(r".*\.[^.]*\.(\d+)\.", key) with no
    // pattern, else rf".*\.{pattern}\.(\d+)\." for each pattern).
    std::smatch m;
    bool have = false;
    if (cfg.layers_pattern.empty()) {
      static const std::regex any_layer("^.*\\.[^.]*\\.(\\d+)\\.");
      have = std::regex_search(key, m, any_layer);
    } else {
      for (const auto& p : cfg.layers_pattern)
        if ((have = std::regex_search(key, m, std::regex("^.*\\." + p + "\\.(\\d+)\\.")))) break;
    }
    if (!have) return false;
    const int64_t idx = std::stoll(m[1].str());
    found = false;
    for (int64_t i : cfg.layers_to_transform) found = found || i == idx;
  }
  return found;
}

}  // namespace lorafit::peft
