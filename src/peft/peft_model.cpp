// PeftModel: injection by target_modules, named adapters, modules_to_save, trainable parameters,
// PEFT adapter folders (save/load), merge/unmerge, merged Hugging Face folder.
#include <algorithm>
#include <cstring>
#include <map>
#include <cstdio>
#include <filesystem>
#include <set>
#include <unistd.h>

#include "lorafit/rope_config.h"
#include "lorafit/kernels.h"
#include "lorafit/quant.h"
#include "lorafit/peft.h"
#include "peft/peft_internal.h"

namespace lorafit::peft {

namespace fs = std::filesystem;

namespace {

const std::string kPrefix = "base_model.model.";

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + v[i];
  return s;
}

std::string thousands(int64_t v) {
  std::string d = std::to_string(v < 0 ? -v : v), out;
  for (size_t i = 0; i < d.size(); ++i) {
    if (i && (d.size() - i) % 3 == 0) out += ',';
    out += d[i];
  }
  return (v < 0 ? "-" : "") + out;
}

}  // namespace

std::string ParameterCount::str() const {
  char pct[64];
  std::snprintf(pct, sizeof pct, "%.4f", percent());
  return "trainable params: " + thousands(trainable) + " || all params: " + thousands(total) +
         " || trainable%: " + pct;
}

// One named adapter: its LoRA layers and its own copies of the modules_to_save parameters.
struct PeftModel::Adapter {
  std::string name;
  AdapterConfig cfg;
  bool trainable = true;
  std::vector<std::pair<std::string, nn::Linear*>> targets;  // module path, base Linear
  std::vector<std::unique_ptr<LoraLinear>> layers;           // parallel to targets
  std::vector<std::pair<std::string, SVDLinear*>> svd;       // AdaLoRA: the layers, as SVDLinear
  struct Saved {
    std::string name;       // HF parameter name, e.g. "classifier.weight"
    nn::Parameter* param;   // the model's parameter
    nn::Parameter own;      // this adapter's copy (value, grad when trainable)
  };
  std::vector<Saved> saved;
  // PiSSA / OLoRA: the initial A₀, B₀ per target (parallel to targets) whose s·B₀A₀ the init took
  // out of the base weight; delete_adapter and the destructor add it back. Empty otherwise.
  std::vector<std::pair<Tensor, Tensor>> init_ab;
  // Gives the base back what a weight-based init took out of it (W_res + s·B₀A₀ = W).
  void restore_base() {
    for (size_t i = 0; i < init_ab.size(); ++i)
      add_low_rank(targets[i].second->weight.value, init_ab[i].second, init_ab[i].first,
                   layers[i]->scaling());
    init_ab.clear();
  }
};

namespace {

// modules_to_save for a config: the config's list, plus PEFT's automatic head for SEQ_CLS
// (PeftModelForSequenceClassification adds ["classifier", "score"]).
std::vector<std::string> effective_modules_to_save(AdapterConfig& cfg) {
  std::vector<std::string> m = cfg.modules_to_save.value_or(std::vector<std::string>{});
  if (cfg.task_type == "SEQ_CLS") {
    for (const char* h : {"classifier", "score"})
      if (std::find(m.begin(), m.end(), h) == m.end()) m.push_back(h);
    cfg.modules_to_save = m;
  }
  return m;
}

}  // namespace

PeftModel::PeftModel(models::Model& model, const AdapterConfig& cfg, uint64_t seed,
                     const std::string& name)
    : model_(&model) {
  const LoraInit i = cfg.init_lora_weights;
  if (i == LoraInit::Eva || i == LoraInit::Mica || i == LoraInit::LoraGa)
    fail(std::string("init_lora_weights \"") + lora_init_name(i) +
         "\": lorafit loads such adapters (as PEFT "
         "does) but cannot make them: " +
         (i == LoraInit::Eva    ? "EVA's init is an SVD of activations on the training data"
          : i == LoraInit::Mica ? "MiCA freezes lora_B, which lorafit's trainer does not"
                                : "LoRA-GA's init needs gradients of the training data") +
         " (use true, gaussian, pissa or olora)");
  model.set_trainable(false);
  add_adapter(name, cfg, seed);
  // A new "pissa_niter_K" adapter is factored by the exact SVD here, so it is saved as "pissa":
  // PEFT then loads it with the residual it was trained on (its svd_lowrank would not).
  find(name).cfg.pissa_niter = -1;
  set_adapter(name);
}

PeftModel::~PeftModel() {
  // Leave the model as it was: merged deltas out, adapters detached, modules_to_save originals
  // back (merge_and_unload() empties this object first, so its merge stays).
  unmerge();
  for (auto& a : adapters_)
    for (auto& [path, lin] : a->targets) lin->adapters.clear();
  // Latest first, so that each restore undoes exactly the init it follows.
  for (auto it = adapters_.rbegin(); it != adapters_.rend(); ++it) (*it)->restore_base();
  for (auto& [p, orig] : originals_) {
    p->value = orig;
    p->grad = Tensor();
    p->trainable = false;
  }
}

PeftModel::Adapter& PeftModel::find(const std::string& name) {
  const std::string n = name.empty() ? (active_.empty() ? std::string() : active_[0]) : name;
  for (auto& a : adapters_)
    if (a->name == n) return *a;
  fail("no adapter named '" + n + "' (have: " + join(adapter_names()) + ")");
}

const PeftModel::Adapter& PeftModel::find(const std::string& name) const {
  return const_cast<PeftModel*>(this)->find(name);
}

std::vector<std::string> PeftModel::adapter_names() const {
  std::vector<std::string> v;
  for (auto& a : adapters_) v.push_back(a->name);
  return v;
}

const AdapterConfig& PeftModel::config(const std::string& name) const { return find(name).cfg; }

void PeftModel::add_adapter(const std::string& name, const AdapterConfig& cfg_in, uint64_t seed) {
  if (name.empty()) fail("adapter name must not be empty");
  for (auto& a : adapters_)
    if (a->name == name) fail("adapter '" + name + "' already exists");
  auto ad = std::make_unique<Adapter>();
  ad->name = name;
  ad->cfg = cfg_in;
  ad->cfg.validate("adapter '" + name + "' config");
  std::vector<std::string> mts = effective_modules_to_save(ad->cfg);
  AdapterConfig& cfg = ad->cfg;

  models::NamedLinears lins = model_->linears();
  std::vector<std::string> matched;
  for (size_t i = 0; i < lins.size(); ++i) {
    const auto& [path, lin] = lins[i];
    const bool is_head = i + 1 == lins.size();
    if (!target_matches(cfg, path, is_head)) continue;
    if (!mts.empty() && inside_any(mts, path)) continue;  // replaced whole by modules_to_save
    std::unique_ptr<LoraLinear> layer;
    if (cfg.is_adalora()) {  // SVDLinear at init_r (or the rank_pattern's kept rank)
      std::unique_ptr<SVDLinear> s =
          make_svd_layer(cfg, path, *lin, nn::random_u64(seed, 0x10000 + i));
      ad->svd.emplace_back(path, s.get());
      layer = std::move(s);
    } else {
      const int64_t r = cfg.rank_for(path);
      if (cfg.use_dora)
        layer = std::make_unique<DoraLinear>(*lin, r, cfg.alpha_for(path), cfg.use_rslora,
                                             static_cast<float>(cfg.lora_dropout));
      else
        layer = std::make_unique<LoraLinear>(*lin, r, cfg.alpha_for(path), cfg.use_rslora,
                                             static_cast<float>(cfg.lora_dropout));
      // One stream per module: seed mixed with the module's index, so adding a target does not
      // shift the others' initial values.
      layer->init(*lin, cfg.init_lora_weights, nn::random_u64(seed, 0x10000 + i));
      if (cfg.init_changes_base())
        ad->init_ab.emplace_back(layer->A.value.clone(), layer->B.value.clone());
    }
    layer->adapter_name = name;
    ad->targets.emplace_back(path, lin);
    ad->layers.push_back(std::move(layer));
    matched.push_back(path);
  }
  if (ad->targets.empty()) {
    std::string t = cfg.target_modules_regex ? "regex '" + cfg.target_modules[0] + "'"
                                             : "[" + join(cfg.target_modules) + "]";
    fail("adapter '" + name + "': field 'target_modules': " + t + " matches no Linear module of the " +
         model_->config().arch + " model (e.g. '" + (lins.empty() ? "" : lins[0].first) + "')");
  }
  // PEFT saves "all-linear" expanded to the matched module paths.
  if (!cfg.target_modules_regex && cfg.target_modules.size() == 1 &&
      cfg.target_modules[0] == "all-linear")
    cfg.target_modules = matched;

  // modules_to_save: every model parameter inside a listed module gets an adapter-owned copy.
  if (!mts.empty()) {
    for (auto& [pname, p] : model_->named_parameters()) {
      const size_t dot = pname.rfind('.');
      const std::string mod = dot == std::string::npos ? pname : pname.substr(0, dot);
      if (!inside_any(mts, mod)) continue;
      if (!originals_.count(p)) originals_[p] = p->value;
      Adapter::Saved s{pname, p, nn::Parameter(p->role)};
      s.own.value = originals_[p].to(tensor::DType::F32).clone();
      ad->saved.push_back(std::move(s));
    }
    if (ad->saved.empty() && cfg.modules_to_save && !cfg.modules_to_save->empty() &&
        cfg.task_type != "SEQ_CLS")
      fail("adapter '" + name + "': field 'modules_to_save': [" + join(*cfg.modules_to_save) +
           "] matches no module of the model");
  }
  // Attach: adapters are inactive until set_adapter(s).
  for (size_t i = 0; i < ad->targets.size(); ++i) {
    ad->layers[i]->enabled = false;
    ad->targets[i].second->adapters.push_back(ad->layers[i].get());
  }
  adapters_.push_back(std::move(ad));
}

void PeftModel::set_adapter(const std::string& name) { set_adapters({name}); }

void PeftModel::set_adapters(const std::vector<std::string>& names) {
  for (const auto& n : names) (void)find(n);  // throws for unknown names
  active_ = names;
  attach_all();
}

void PeftModel::disable_adapters() {
  disabled_ = true;
  attach_all();
}

void PeftModel::enable_adapters() {
  disabled_ = false;
  attach_all();
}

// Applies active_/disabled_: LoRA layers enabled and trainable, modules_to_save copies swapped in.
void PeftModel::attach_all() {
  for (auto& [p, o] : originals_) {  // originals back first
    p->value = o;
    p->grad = Tensor();
    p->trainable = false;
  }
  for (auto& a : adapters_) {
    const bool on = !disabled_ &&
                    std::find(active_.begin(), active_.end(), a->name) != active_.end();
    for (auto& l : a->layers) {
      l->enabled = on;
      l->set_trainable(on && a->trainable);
    }
    for (auto& s : a->saved) {
      const bool t = on && a->trainable;
      if (s.own.trainable != t) s.own.set_trainable(t);
    }
  }
  if (disabled_) return;
  // modules_to_save: the first active adapter that has a copy of a parameter provides it.
  std::set<const nn::Parameter*> done;
  for (const auto& n : active_) {
    Adapter& a = find(n);
    for (auto& s : a.saved) {
      if (!done.insert(s.param).second) continue;
      s.param->value = s.own.value;
      s.param->grad = s.own.grad;
      s.param->trainable = s.own.trainable;
    }
  }
}

void PeftModel::delete_adapter(const std::string& name) {
  Adapter& a = find(name);
  for (size_t i = 0; i < a.targets.size(); ++i) {
    auto& v = a.targets[i].second->adapters;
    if (a.layers[i]->merged) a.layers[i]->unmerge(*a.targets[i].second);
    v.erase(std::remove(v.begin(), v.end(), a.layers[i].get()), v.end());
  }
  // PiSSA / OLoRA: the base gets back s·B₀A₀ (PEFT's delete_adapter leaves the residual in the
  // base; we undo it so that a deleted adapter leaves no trace, e.g. a failed load_adapter).
  a.restore_base();
  active_.erase(std::remove(active_.begin(), active_.end(), name), active_.end());
  adapters_.erase(std::remove_if(adapters_.begin(), adapters_.end(),
                                 [&](const auto& p) { return p.get() == &a; }),
                  adapters_.end());
  attach_all();
}

nn::NamedParameters PeftModel::trainable_parameters() {
  nn::NamedParameters out;
  for (const auto& n : active_) {
    Adapter& a = find(n);
    for (size_t i = 0; i < a.targets.size(); ++i)
      for (auto& [key, p] : a.layers[i]->named_tensors())
        if (p->trainable) out.emplace_back(kPrefix + a.targets[i].first + "." + key, p);
    for (auto& s : a.saved)
      if (s.param->trainable && s.param->value.same_storage(s.own.value))
        out.emplace_back(kPrefix + s.name, s.param);
  }
  return out;
}

void PeftModel::zero_grad() {
  for (auto& [n, p] : trainable_parameters()) p->zero_grad();
}

ParameterCount PeftModel::count_parameters() {
  ParameterCount c;
  c.total = model_->num_parameters();
  for (auto& a : adapters_) {
    for (auto& l : a->layers) {
      for (auto& [key, p] : l->named_tensors()) {
        c.total += p->value.numel();
        if (p->trainable) c.trainable += p->value.numel();
      }
      c.total += l->extra_parameter_count();  // AdaLoRA: PEFT's ranknum [1]
    }
    for (auto& s : a->saved) {
      c.total += s.own.value.numel();  // PEFT keeps the original and a copy per adapter
      if (s.own.trainable) c.trainable += s.own.value.numel();
    }
  }
  return c;
}

std::vector<std::pair<std::string, LoraLinear*>> PeftModel::lora_layers(const std::string& name) {
  Adapter& a = find(name);
  std::vector<std::pair<std::string, LoraLinear*>> v;
  for (size_t i = 0; i < a.targets.size(); ++i) v.emplace_back(a.targets[i].first, a.layers[i].get());
  return v;
}

std::vector<std::pair<std::string, SVDLinear*>> PeftModel::adalora_layers(const std::string& name) {
  return find(name).svd;
}

void PeftModel::set_adalora_rank_pattern(
    const std::vector<std::pair<std::string, std::vector<bool>>>& rp, const std::string& name) {
  Adapter& a = find(name);
  if (!a.cfg.is_adalora()) fail("adapter '" + a.name + "' is not an AdaLoRA adapter");
  a.cfg.adalora_rank_pattern = rp;
}

// ---- files ----

std::vector<std::pair<std::string, Tensor>> PeftModel::adapter_state(const std::string& name) const {
  const Adapter& a = find(name);
  std::vector<std::pair<std::string, Tensor>> t;
  for (size_t i = 0; i < a.targets.size(); ++i)  // AdaLoRA: pruned by the rank_pattern
    a.layers[i]->append_state(a.cfg, kPrefix + a.targets[i].first, t);
  for (auto& s : a.saved) t.emplace_back(kPrefix + s.name, s.own.value);
  return t;
}

void PeftModel::save_pretrained(const std::string& dir, const std::string& name) const {
  const Adapter& a = find(name);
  AdapterConfig cfg = a.cfg;
  if (cfg.base_model_name_or_path.empty()) cfg.base_model_name_or_path = model_->config().source;
  cfg.inference_mode = true;  // PEFT writes inference_mode true
  auto state = adapter_state(name);
  // Merge: other files in the folder (a checkpoint's optimizer state, a README) stay.
  io::write_folder_atomic(
      dir,
      [&](const std::string& tmp) {
        io::write_json_file(tmp + "/adapter_config.json", config_to_json(cfg));
        io::write_safetensors(tmp + "/adapter_model.safetensors", state, {{"format", "pt"}});
      },
      io::FolderWrite::Merge);
}

void PeftModel::load_adapter(const std::string& adapter_dir, const std::string& name,
                             bool is_trainable) {
  AdapterConfig cfg = read_adapter_config(adapter_dir);
  const std::string wpath = adapter_dir + "/adapter_model.safetensors";
  if (!io::file_exists(wpath))
    fail(adapter_dir + ": no adapter_model.safetensors (adapter_model.bin is not supported)");
  io::SafetensorsFile f = io::SafetensorsFile::open(wpath);
  add_adapter(name, cfg, 0);
  Adapter& a = *adapters_.back();
  a.trainable = is_trainable;
  try {
    std::set<std::string> expected;
    auto take = [&](const std::string& key, Tensor& dst) {
      expected.insert(key);
      if (!f.contains(key))
        fail(wpath + ": tensor '" + key + "' is missing (adapter_config.json targets this module)");
      const io::SafetensorsEntry& e = f.entry(key);
      if (e.shape != dst.shape())
        fail(wpath + ": tensor '" + key + "' has shape " + tensor::shape_str(e.shape) +
             ", the base model needs " + tensor::shape_str(dst.shape()));
      dst.copy_from(f.get_f32(key));
    };
    for (size_t i = 0; i < a.targets.size(); ++i)
      for (auto& [key, p] : a.layers[i]->named_tensors())
        take(kPrefix + a.targets[i].first + "." + key, p->value);
    for (auto& s : a.saved) {
      const std::string key = kPrefix + s.name;
      take(key, s.own.value);
    }
    nn::weights_changed();
    for (const auto& n : f.names())
      if (!expected.count(n))
        fail(wpath + ": unexpected tensor '" + n +
             "' (no such LoRA module or modules_to_save parameter for this config and model)");
  } catch (...) {
    delete_adapter(name);
    throw;
  }
  attach_all();
}

int64_t adapter_num_labels(const std::string& adapter_dir) {
  const std::string st = adapter_dir + "/adapter_model.safetensors";
  if (!std::filesystem::exists(st)) return 0;
  auto f = io::SafetensorsFile::open(st);
  for (const char* head : {"classifier.weight", "classifier.out_proj.weight", "score.weight"}) {
    const std::string key = std::string("base_model.model.") + head;
    if (f.contains(key) && !f.entry(key).shape.empty()) return f.entry(key).shape[0];
  }
  return 0;
}

std::unique_ptr<PeftModel> PeftModel::from_pretrained(models::Model& model,
                                                      const std::string& adapter_dir,
                                                      const std::string& name, bool is_trainable) {
  AdapterConfig cfg = read_adapter_config(adapter_dir);
  // The constructor needs an adapter; make it with an init that leaves the base alone (PiSSA /
  // OLoRA must run once, in load_adapter, as PEFT's from_pretrained does), then replace it.
  cfg.init_lora_weights = LoraInit::Default;
  cfg.pissa_niter = -1;
  std::unique_ptr<PeftModel> pm(new PeftModel(model, cfg, 0, name));
  pm->delete_adapter(name);
  pm->load_adapter(adapter_dir, name, is_trainable);
  pm->set_adapter(name);
  return pm;
}

// ---- merging ----

void PeftModel::merge() {
  for (const auto& n : active_) {
    Adapter& a = find(n);
    for (size_t i = 0; i < a.targets.size(); ++i) a.layers[i]->merge(*a.targets[i].second);
  }
}

void PeftModel::unmerge() {
  for (auto& a : adapters_)
    for (size_t i = 0; i < a->targets.size(); ++i) a->layers[i]->unmerge(*a->targets[i].second);
}

bool PeftModel::merged() const {
  for (auto& a : adapters_)
    for (auto& l : a->layers)
      if (l->merged) return true;
  return false;
}

models::Model& PeftModel::merge_and_unload() {
  merge();
  // Keep the active modules_to_save copies as the model's parameters (frozen).
  std::map<nn::Parameter*, Tensor> keep;
  for (const auto& n : active_)
    for (auto& s : find(n).saved)
      if (!keep.count(s.param)) keep[s.param] = s.own.value;
  for (auto& a : adapters_)
    for (auto& [path, lin] : a->targets) lin->adapters.clear();
  adapters_.clear();
  active_.clear();
  originals_.clear();
  for (auto& [p, v] : keep) {
    p->value = v;
    p->grad = Tensor();
    p->trainable = false;
  }
  return *model_;
}

void save_merged_hf(models::Model& model, const std::string& base_dir, const std::string& out_dir,
                    const std::vector<std::string>& labels, const std::string& weights,
                    bool as_base) {
  const bool four_bit = weights == "nf4" || weights == "nf4-dq" || weights == "fp4";
  if (!four_bit && weights != "f32")
    fail("save_merged_hf: weights '" + weights + "': expected f32, nf4, nf4-dq or fp4");
  if (!io::file_exists(base_dir + "/config.json"))
    fail(base_dir + ": no config.json (merged Hugging Face output needs a folder base model)");
  const models::ModelConfig& mc = model.config();
  // A classifier: config.json says so (transformers' Auto class reads "architectures"; the labels
  // come from id2label, whose size is num_labels), whatever the base folder's config said.
  io::json cfg = io::read_json_file(base_dir + "/config.json");
  const char* cls = mc.arch == "bert"         ? "BertForSequenceClassification"
                    : mc.arch == "roberta"    ? "RobertaForSequenceClassification"
                    : mc.arch == "distilbert" ? "DistilBertForSequenceClassification"
                                              : nullptr;
  if (cls && mc.num_labels > 0 && !as_base) {
    if (!labels.empty() && static_cast<int64_t>(labels.size()) != mc.num_labels)
      fail(out_dir + ": " + std::to_string(labels.size()) + " label names for a classifier with " +
           std::to_string(mc.num_labels) + " outputs");
    io::json id2label = io::json::object(), label2id = io::json::object();
    for (int64_t i = 0; i < mc.num_labels; ++i) {
      const std::string name =
          labels.empty() ? "LABEL_" + std::to_string(i) : labels[static_cast<size_t>(i)];
      id2label[std::to_string(i)] = name;
      label2id[name] = i;
    }
    cfg["architectures"] = io::json::array({cls});
    cfg["num_labels"] = mc.num_labels;
    cfg["id2label"] = id2label;
    cfg["label2id"] = label2id;
  }
  // A model extended with --rope-scaling: transformers applies the same scaling and the new
  // context, written in the base's own form: rope_parameters {rope_theta, rope_type, ...}
  // (transformers >= 5; a legacy rope_scaling beside it would take over, with the default
  // theta) or rope_theta + rope_scaling (older configs).
  if (mc.rope_scaling.type != nn::RopeScaling::Type::None) {
    io::json rs = models::rope_scaling_to_json(mc.rope_scaling);
    if (cfg.contains("rope_parameters") && cfg["rope_parameters"].is_object()) {
      rs["rope_theta"] = cfg["rope_parameters"].value("rope_theta", static_cast<double>(mc.rope_theta));
      cfg["rope_parameters"] = rs;
      cfg.erase("rope_scaling");
    } else {
      cfg["rope_scaling"] = rs;
    }
    cfg["max_position_embeddings"] = mc.max_positions;
  }
  // 4-bit: which Linear weights go out quantized (those the loader quantizes), and the names
  // transformers must leave as nn.Linear (llm_int8_skip_modules, matched as substrings).
  std::map<std::string, nn::Linear*> quantized;  // "<path>.weight" -> Linear
  std::set<std::string> skip;
  if (four_bit) {
    for (auto& [path, lin] : model.linears()) {
      const Tensor& w = lin->weight.value;
      if (w.dtype() == tensor::DType::NF4 ||
          (!models::is_head_module(path) && w.dim(1) % 2 == 0 &&
           (w.dtype() == tensor::DType::F32 || w.dtype() == tensor::DType::F16 ||
            w.dtype() == tensor::DType::BF16))) {
        quantized[path + ".weight"] = lin;
        continue;
      }
      const std::string head = models::head_module_name(path);
      skip.insert(head.empty() ? path : head);
    }
    const std::string qt = weights == "fp4" ? "fp4" : "nf4";
    cfg["quantization_config"] = {{"_load_in_4bit", true},
                                  {"_load_in_8bit", false},
                                  {"bnb_4bit_compute_dtype", "float32"},
                                  {"bnb_4bit_quant_storage", "uint8"},
                                  {"bnb_4bit_quant_type", qt},
                                  {"bnb_4bit_use_double_quant", weights == "nf4-dq"},
                                  {"llm_int8_enable_fp32_cpu_offload", false},
                                  {"llm_int8_has_fp16_weight", false},
                                  {"llm_int8_skip_modules", std::vector<std::string>(skip.begin(), skip.end())},
                                  {"llm_int8_threshold", 6.0},
                                  {"load_in_4bit", true},
                                  {"load_in_8bit", false},
                                  {"quant_method", "bitsandbytes"}};
  }
  std::set<std::string> fresh;
  if (as_base)
    for (const auto& n : model.initialized()) fresh.insert(n);
  std::vector<io::SafetensorsBlob> blobs;
  for (auto& [name, p] : model.named_parameters()) {
    if (fresh.count(name)) continue;
    auto q = quantized.find(name);
    if (q != quantized.end()) {
      Tensor w = p->value;
      if (w.dtype() != tensor::DType::NF4) {
        // The same bytes as bitsandbytes' quantize_4bit of the fp32 values (quant.h).
        Tensor f = w.dtype() == tensor::DType::F32 ? w : w.to(tensor::DType::F32);
        w = tensor::quant4_tensor(
            tensor::quantize_4bit(f.f32(), f.numel(),
                                  weights == "fp4" ? tensor::Quant4Type::FP4 : tensor::Quant4Type::NF4,
                                  weights == "nf4-dq"),
            w.shape());
      }
      for (auto& b : io::bnb4_blobs(name, w)) blobs.push_back(std::move(b));
      continue;
    }
    Tensor v = p->value.dtype() == tensor::DType::F32 ? p->value : p->value.to(tensor::DType::F32);
    io::SafetensorsBlob b{name, "F32", v.shape(), {}};
    b.bytes.resize(v.nbytes());
    std::memcpy(b.bytes.data(), v.raw(), v.nbytes());
    blobs.push_back(std::move(b));
  }
  // A tied lm_head whose embeddings were trained (modules_to_save embed_tokens): PEFT replaces
  // the input embeddings only, the head keeps the base weight; so must the merged folder.
  if (mc.tied_embeddings)
    for (auto& [path, lin] : model.linears())
      if (path == "lm_head")
        for (auto& [name, p] : model.named_parameters())
          if (name == "model.embed_tokens.weight" && !p->value.same_storage(lin->weight.value)) {
            Tensor v = lin->weight.value.to(tensor::DType::F32);
            io::SafetensorsBlob b{"lm_head.weight", "F32", v.shape(), {}};
            b.bytes.resize(v.nbytes());
            std::memcpy(b.bytes.data(), v.raw(), v.nbytes());
            blobs.push_back(std::move(b));
            cfg["tie_word_embeddings"] = false;
          }
  io::write_folder_atomic(out_dir, [&](const std::string& tmp) {
    io::write_json_file(tmp + "/config.json", cfg);
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "vocab.txt",
                          "special_tokens_map.json", "generation_config.json"})
      if (io::file_exists(base_dir + "/" + f)) fs::copy_file(base_dir + "/" + f, tmp + "/" + f);
    io::write_safetensors_blobs(tmp + "/model.safetensors", blobs, {{"format", "pt"}});
  }, io::FolderWrite::Merge);
}

}  // namespace lorafit::peft
