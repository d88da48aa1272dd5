// lorafit train | eval | predict | generate: the commands that fine-tune and try a model.
// Thin: parse options (flags and/or a JSON config file), build the model, adapter and data, call
// the train layer, print.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "lorafit/io.h"
#include "lorafit/kernels.h"
#include "lorafit/models.h"
#include "lorafit/peft.h"
#include "lorafit/text.h"
#include "lorafit/train.h"

namespace fs = std::filesystem;
using lorafit::Error;
using lorafit::io::json;
namespace train = lorafit::train;
namespace models = lorafit::models;
namespace peft = lorafit::peft;

namespace {

// ---- options ----------------------------------------------------------------------------------

struct OptSpec {
  const char* name;   // with dashes, as on the command line
  const char* kind;   // "str", "int", "num", "bool", "list"
  const char* dflt;   // shown in --help ("" = none)
  const char* help;
};

// Options: config file (--config: JSON, or YAML for .yaml/.yml) first, command-line flags override.
// Keys use dashes on the command line and either dashes or underscores in the file.
class Options {
 public:
  Options(const std::vector<OptSpec>& specs, const std::string& cmd) : specs_(specs), cmd_(cmd) {}

  void parse(int argc, char** argv) {
    std::vector<std::pair<std::string, std::string>> flags;
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a.rfind("--", 0) != 0) {
        positional.push_back(a);
        continue;
      }
      std::string key = a.substr(2), val;
      bool has_val = false;
      if (auto eq = key.find('='); eq != std::string::npos) {
        val = key.substr(eq + 1);
        key = key.substr(0, eq);
        has_val = true;
      }
      const OptSpec* s = find(key);
      if (!s) fail_unknown(key, "flag --");
      if (!has_val) {
        if (!std::strcmp(s->kind, "bool")) {
          val = "true";
        } else {
          if (i + 1 >= argc) throw Error("[" + cmd_ + "] --" + key + " needs a value (" + s->help + ")");
          val = argv[++i];
        }
      }
      flags.emplace_back(key, val);
    }
    for (auto& [k, v] : flags)
      if (k == "config") {
        const auto ends = [&](const std::string& e) {
          return v.size() >= e.size() && v.compare(v.size() - e.size(), e.size(), e) == 0;
        };
        const bool yaml = ends(".yaml") || ends(".yml");
        json j = yaml ? lorafit::io::read_yaml_file(v) : lorafit::io::read_json_file(v);
        if (!j.is_object()) throw Error("[" + cmd_ + "] " + v + ": expected a JSON object of options");
        for (auto it = j.begin(); it != j.end(); ++it) {
          std::string key = it.key();
          std::replace(key.begin(), key.end(), '_', '-');
          const OptSpec* s = find(key);
          if (!s) fail_unknown(key, v + ": key '");
          const auto& val = it.value();
          values_[key] = val.is_string() ? val.get<std::string>()
                         : val.is_array()
                             ? [&] {
                                 std::string r;
                                 for (auto& e : val) {
                                   if (!r.empty()) r.push_back(',');
                                   r.append(e.is_string() ? e.get<std::string>() : e.dump());
                                 }
                                 return r;
                               }()
                             : val.dump();
        }
      }
    for (auto& [k, v] : flags)
      if (k != "config") values_[k] = v;
  }

  bool has(const std::string& k) const { return values_.count(k) > 0; }
  std::string str(const std::string& k) const {
    auto it = values_.find(k);
    if (it != values_.end()) return it->second;
    return find(k)->dflt;
  }
  int64_t integer(const std::string& k) const {
    std::string v = str(k);
    try {
      size_t pos = 0;
      long long x = std::stoll(v, &pos);
      if (pos == v.size()) return x;
    } catch (...) {
    }
    throw Error("[" + cmd_ + "] --" + k + ": expected an integer, got '" + v + "'");
  }
  double number(const std::string& k) const {
    std::string v = str(k);
    try {
      size_t pos = 0;
      double x = std::stod(v, &pos);
      if (pos == v.size() && std::isfinite(x)) return x;
    } catch (...) {
    }
    throw Error("[" + cmd_ + "] --" + k + ": expected a number, got '" + v + "'");
  }
  bool flag(const std::string& k) const {
    std::string v = str(k);
    if (v == "true" || v == "1" || v == "yes") return true;
    if (v == "false" || v == "0" || v == "no" || v.empty()) return false;
    throw Error("[" + cmd_ + "] --" + k + ": expected true or false, got '" + v + "'");
  }
  std::vector<std::string> list(const std::string& k) const {
    std::vector<std::string> out;
    std::string v = str(k), cur;
    for (char c : v + ",") {
      if (c == ',') {
        if (!cur.empty()) out.push_back(cur);
        cur.clear();
      } else if (c != ' ') {
        cur += c;
      }
    }
    return out;
  }
  // The effective configuration (defaults + given), for the checkpoint and the report.
  json to_json() const {
    json j = json::object();
    for (auto& s : specs_) {
      if (!std::strcmp(s.name, "config")) continue;
      std::string key = s.name;
      std::replace(key.begin(), key.end(), '-', '_');
      std::string v = str(s.name);
      if (!std::strcmp(s.kind, "int") || !std::strcmp(s.kind, "num")) {
        try {
          j[key] = json::parse(v);
          continue;
        } catch (...) {
        }
      }
      if (!std::strcmp(s.kind, "bool")) j[key] = v == "true" || v == "1";
      else j[key] = v;
    }
    return j;
  }

  std::vector<std::string> positional;

 private:
  const OptSpec* find(const std::string& k) const {
    for (auto& s : specs_)
      if (k == s.name) return &s;
    return nullptr;
  }
  [[noreturn]] void fail_unknown(const std::string& key, const std::string& where) const {
    // Suggest the closest known name (shared prefix), so a typo explains itself.
    std::string best;
    size_t best_len = 0;
    for (auto& s : specs_) {
      size_t n = 0;
      while (n < key.size() && s.name[n] && s.name[n] == key[n]) ++n;
      if (n > best_len) best_len = n, best = s.name;
    }
    throw Error("[" + cmd_ + "] unknown option " + (where == "flag --" ? "--" + key : where + key + "'") +
                (best_len >= 2 ? " (did you mean --" + best + "?)" : "") + "; see lorafit " + cmd_ + " --help");
  }
  std::vector<OptSpec> specs_;
  std::string cmd_;
  std::map<std::string, std::string> values_;
};

void print_help(const char* usage, const std::vector<OptSpec>& specs, const char* tail) {
  std::fputs(usage, stdout);
  std::fputs(
      "\nOptions (also as keys of a JSON or YAML file given with --config; flags override it):\n",
      stdout);
  for (auto& s : specs) {
    const std::string kind = s.kind;
    const char* meta = kind == "bool" ? "" : kind == "list" ? " A,B" : kind == "int" ? " N" : kind == "num" ? " X" : " S";
    std::string left = "  --";
    left.append(s.name).append(meta);
    std::printf("%-28s %s", left.c_str(), s.help);
    if (*s.dflt) std::printf(" [default: %s]", s.dflt);
    std::printf("\n");
  }
  if (tail) std::fputs(tail, stdout);
}

bool wants_help(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) return true;
  return false;
}

// ---- model, tokenizer, adapter ----------------------------------------------------------------

bool is_gguf(const std::string& p) { return p.size() > 5 && p.substr(p.size() - 5) == ".gguf"; }

lorafit::text::Tokenizer load_tokenizer(const std::string& model_path) {
  if (is_gguf(model_path)) return lorafit::text::Tokenizer::from_gguf(model_path);
  return lorafit::text::Tokenizer::from_file(model_path);
}

// A model folder / .gguf, or a folder holding exactly one .gguf (models/SmolLM2-135M-Instruct).
std::string resolve_model(const std::string& p) {
  if (fs::is_directory(p) && !fs::exists(fs::path(p) / "config.json")) {
    std::vector<std::string> ggufs;
    for (auto& e : fs::directory_iterator(p))
      if (is_gguf(e.path().string())) ggufs.push_back(e.path().string());
    if (ggufs.size() == 1) return ggufs[0];
    throw Error("[model] " + p + ": no config.json and " + std::to_string(ggufs.size()) +
                " .gguf files; give a model folder or one .gguf file");
  }
  if (!fs::exists(p))
    throw Error("[model] " + p + ": not found (run `bash tools/fetch_models.sh` for the bundled models)");
  return p;
}

// A Llama-family model (GGUF, or an HF folder whose config.json says model_type "llama").
bool is_causal_lm(const std::string& model_path) {
  if (is_gguf(model_path)) return true;
  const fs::path cfg = fs::path(model_path) / "config.json";
  return fs::exists(cfg) && lorafit::io::read_json_file(cfg.string()).value("model_type", "") == "llama";
}

int32_t pad_id_of(const lorafit::text::Tokenizer& tok) {
  const auto& sp = tok.special_ids();
  if (sp.pad >= 0) return sp.pad;
  if (sp.eos >= 0) return sp.eos;
  return 0;
}

std::vector<std::string> default_targets(const std::string& arch) {
  if (arch == "llama") return {"q_proj", "v_proj"};
  if (arch == "distilbert") return {"q_lin", "v_lin"};
  return {"query", "value"};  // bert, roberta
}

// The weights a run trained, from a folder written by `lorafit train` (final/, best/,
// checkpoint/) or a plain PEFT adapter folder. Returns the PeftModel when it holds an adapter.
std::unique_ptr<peft::PeftModel> apply_weights(models::Model& model, const std::string& dir) {
  if (dir.empty()) return nullptr;
  if (fs::exists(fs::path(dir) / "adapter_config.json"))
    return peft::PeftModel::from_pretrained(model, dir);
  const std::string st = dir + "/trainable.safetensors";
  if (!fs::exists(st))
    throw Error("[adapter] " + dir + ": neither adapter_config.json nor trainable.safetensors; give "
                "a PEFT adapter folder or a lorafit run's final/ or best/ folder");
  auto f = lorafit::io::SafetensorsFile::open(st);
  lorafit::nn::NamedParameters ps;
  for (auto& [n, p] : model.named_parameters())
    if (f.contains(n)) ps.emplace_back(n, p);
  if (ps.empty()) throw Error("[adapter] " + st + ": no tensor names this model's parameters");
  train::load_parameters(st, ps);
  return nullptr;
}

json read_task_info(const std::string& dir) {
  for (auto p : {fs::path(dir) / "lorafit_task.json", fs::path(dir).parent_path() / "final" / "lorafit_task.json"})
    if (fs::exists(p)) return lorafit::io::read_json_file(p.string());
  return json::object();
}

// ---- train ------------------------------------------------------------------------------------

const std::vector<OptSpec> kTrainOpts = {
    {"config", "str", "", "JSON or YAML (.yaml/.yml) file of options (keys as the flags, - or _)"},
    {"model", "str", "", "model folder (config.json + safetensors) or .gguf file (required)"},
    {"train", "str", "",
     "training data: .tsv/.csv/.jsonl (classification); .txt or instruction .jsonl (causal LM) "
     "(required)"},
    {"validation", "str", "",
     "validation file; none: split off --val-fraction of the training data"},
    {"output", "str", "",
     "output folder (required); refused when it exists unless --overwrite or --resume"},
    {"task", "str", "auto", "classification | lm | auto (BERT family: classification, Llama: lm)"},
    {"method", "str", "lora", "lora | adalora | full (every weight) | head (classifier only)"},
    {"lora-r", "int", "8", "LoRA rank"},
    {"lora-alpha", "num", "16", "LoRA alpha (scaling alpha/r)"},
    {"lora-dropout", "num", "0.1", "dropout on the LoRA input"},
    {"target-modules", "list", "",
     "modules that get LoRA; default by architecture: BERT query,value; Llama q_proj,v_proj"},
    {"modules-to-save", "list", "",
     "modules trained whole besides LoRA; default for classification: classifier"},
    {"use-rslora", "bool", "false", "scale by alpha/sqrt(r) (rsLoRA)"},
    {"use-dora", "bool", "false",
     "DoRA: LoRA direction + a trained magnitude per output row (PEFT use_dora)"},
    {"init-lora-weights", "str", "true",
     "LoRA init (PEFT init_lora_weights): true | false | gaussian | pissa | pissa_niter_K | olora; "
     "pissa/olora move the top of W into A, B (F32 base)"},
    {"init-r", "int", "12", "AdaLoRA: initial rank of every module (--method adalora)"},
    {"target-r", "int", "8", "AdaLoRA: average rank the budget shrinks to"},
    {"tinit", "int", "0", "AdaLoRA: first steps at the full budget"},
    {"tfinal", "int", "0", "AdaLoRA: last steps with the final mask frozen"},
    {"delta-t", "int", "1", "AdaLoRA: steps between two reallocations (PEFT deltaT)"},
    {"beta1", "num", "0.85", "AdaLoRA: EMA factor of the sensitivity"},
    {"beta2", "num", "0.85", "AdaLoRA: EMA factor of the uncertainty"},
    {"orth-reg-weight", "num", "0.5",
     "AdaLoRA: weight of the orthogonal regularization added to the loss"},
    {"train-modules", "list", "", "method full: only parameters whose name contains one of these"},
    {"lr", "num", "",
     "peak learning rate [default: full 5e-5; otherwise 3e-3 for classification, 5e-4 for LM]"},
    {"loraplus-ratio", "num", "1", "LoRA+: lr of lora_B = ratio x lr (the paper suggests 16)"},
    {"weight-decay", "num", "0.01", "decoupled AdamW weight decay (not on biases and norms)"},
    {"adam-beta1", "num", "0.9", "AdamW beta1"},
    {"adam-beta2", "num", "0.999", "AdamW beta2"},
    {"adam-eps", "num", "1e-8", "AdamW epsilon"},
    {"schedule", "str", "linear", "learning-rate schedule: constant | linear | cosine"},
    {"warmup-ratio", "num", "0.06", "warmup as a fraction of the steps"},
    {"warmup-steps", "int", "-1", "warmup steps (overrides --warmup-ratio when >= 0)"},
    {"epochs", "int", "1", "passes over the training data"},
    {"max-steps", "int", "0", "stop after N optimizer steps (overrides --epochs when > 0)"},
    {"max-train-samples", "int", "0",
     "use only the first N training examples (after shuffling with --seed)"},
    {"batch-size", "int", "32", "examples (classification) or blocks (LM) per micro-batch"},
    {"grad-accum", "int", "1", "micro-batches per optimizer step"},
    {"max-grad-norm", "num", "1.0", "clip the global gradient norm (0: off)"},
    {"max-length", "int", "128", "classification: tokens per example, longer ones are truncated"},
    {"block-size", "int", "128",
     "LM: tokens per training block (instruction data: longest example)"},
    {"chat-template", "str", "auto",
     "LM instruction data: auto (the model's template) | chatml | llama3 | plain"},
    {"val-fraction", "num", "0.1",
     "held-out part when --validation is not given (LM: the last part of the text)"},
    {"eval-every", "int", "0",
     "evaluate every N steps (0: only at the end); the best is kept in best/"},
    {"eval-max-batches", "int", "0", "limit each evaluation to N batches (0: all)"},
    {"save-every", "int", "0", "checkpoint every N steps (0: only at the end and on Ctrl-C)"},
    {"log-every", "int", "10", "print a line every N steps when stderr is not a terminal"},
    {"text-column", "str", "", "text column/field (detected: sentence, content, text, ...)"},
    {"text-pair-column", "str", "", "second text column for sentence pairs"},
    {"label-column", "str", "", "label column/field (detected: label, labels, class, target)"},
    {"seed", "int", "42", "seed for initialization, dropout, shuffling and the split"},
    {"threads", "int", "0", "compute threads (0: all cores)"},
    {"resume", "str", "", "continue from a checkpoint folder (OUTPUT/checkpoint)"},
    {"overwrite", "bool", "false", "replace an existing output folder"},
    {"quiet", "bool", "false", "no progress output"},
    {"stop-after", "int", "0",
     "stop (saving a checkpoint) after N steps of this invocation; for testing resume"},
};

const char* kTrainUsage = R"(Usage: lorafit train --model PATH --train FILE --output DIR [options]

Fine-tunes a model with LoRA (default), fully, or only its classifier head, on the CPU.

  Classification (BERT family: BERT, RoBERTa, DistilBERT, MiniLM): a .tsv/.csv with a header or
  a .jsonl; columns detected (sentence/content/text..., label) or named with --text-column and
  --label-column. Labels may be integers 0..n-1 or strings (sorted, mapped to 0..n-1).
  Causal LM (Llama family, e.g. SmolLM2 GGUF): a plain .txt cut into --block-size blocks, or
  instruction data as .jsonl, one example per line: {"prompt": ..., "response": ...},
  {"instruction": ..., "input": ..., "output": ...} or {"messages": [{"role", "content"}, ...]}.
  It is rendered with the model's chat template (--chat-template) and the loss is taken only
  on the replies.

Writes into OUTPUT: final/ (adapter_config.json + adapter_model.safetensors, a PEFT folder that
`PeftModel.from_pretrained` loads; trainable.safetensors), best/ (best evaluation), checkpoint/
(for --resume: + optimizer.safetensors, trainer_state.json), log.jsonl, report.html.
Ctrl-C saves a checkpoint and exits; resume with --resume OUTPUT/checkpoint.

Example (SST-2 with MiniLM, the main job: 10-20 minutes on an idle 2-core machine):
  lorafit train --model models/all-MiniLM-L6-v2 --train ../shared/data/sst2/train.tsv \
      --validation ../shared/data/sst2/dev.tsv --output runs/sst2 --max-steps 300
)";

// Refuses an existing output folder without --overwrite; removes it only when `remove` (after
// every other check passed, so a bad flag never costs the user a previous run).
void check_output_dir(const std::string& out, bool overwrite, bool resume, bool remove) {
  if (resume) return;
  if (fs::exists(out) && !fs::is_empty(out)) {
    if (!overwrite)
      throw Error("[train] output folder " + out + " exists and is not empty; pass --overwrite to replace it, "
                  "or --resume " + out + "/checkpoint to continue that run");
    if (remove) fs::remove_all(out);
  }
}

}  // namespace

int cmd_train(int argc, char** argv) {
  if (wants_help(argc, argv)) {
    print_help(kTrainUsage, kTrainOpts, nullptr);
    return 0;
  }
  try {
    Options o(kTrainOpts, "train");
    o.parse(argc, argv);
    if (!o.positional.empty()) throw Error("[train] unexpected argument '" + o.positional[0] + "'; options start with --");
    if (o.str("model").empty()) throw Error("[train] --model is required (a model folder or .gguf; see lorafit train --help)");
    if (o.str("train").empty()) throw Error("[train] --train is required (the training data file)");
    const std::string resume = o.str("resume");
    const std::string out = o.str("output");
    if (out.empty()) throw Error("[train] --output is required: the folder for the adapter, checkpoints and report");
    check_output_dir(out, o.flag("overwrite"), !resume.empty(), false);
    if (!resume.empty() && o.flag("overwrite")) throw Error("[train] --resume and --overwrite together would delete the checkpoint being resumed");
    const int64_t threads = o.integer("threads");
    if (threads < 0) throw Error("[train] --threads must be >= 0");
    lorafit::kernels::set_num_threads(static_cast<int>(threads));

    const std::string method = o.str("method");
    if (method != "lora" && method != "adalora" && method != "full" && method != "head")
      throw Error("[train] --method '" + method + "': expected lora, adalora, full or head");
    const bool adapter_method = method == "lora" || method == "adalora";
    if (!adapter_method && (o.has("lora-r") || o.has("target-modules") || o.has("lora-alpha") ||
                            o.has("use-dora")))
      throw Error("[train] --lora-* and --target-modules apply to --method lora/adalora only (method is " + method + ")");
    if (method == "adalora" && o.has("use-dora"))
      throw Error("[train] --use-dora applies to --method lora (PEFT has no DoRA for AdaLoRA)");
    if (method == "adalora" && o.has("lora-r"))
      throw Error("[train] --lora-r does not apply to --method adalora: its ranks are --init-r and --target-r");
    for (const char* k : {"init-r", "target-r", "tinit", "tfinal", "delta-t", "beta1", "beta2", "orth-reg-weight"})
      if (method != "adalora" && o.has(k))
        throw Error(std::string("[train] --") + k + " applies to --method adalora only (method is " + method + ")");
    if (method != "full" && o.has("train-modules"))
      throw Error("[train] --train-modules applies to --method full only; with LoRA use --target-modules / --modules-to-save");

    const std::string model_path = resolve_model(o.str("model"));
    const auto tok = load_tokenizer(model_path);
    std::string task = o.str("task");
    const std::string train_path = o.str("train");
    const bool is_txt = train_path.size() > 4 && train_path.substr(train_path.size() - 4) == ".txt";
    if (task == "auto") task = is_causal_lm(model_path) || is_txt ? "lm" : "classification";
    if (task != "lm" && task != "classification")
      throw Error("[train] --task '" + task + "': expected classification, lm or auto");
    const bool lm = task == "lm";
    if (method == "head" && lm) throw Error("[train] --method head needs a classification task");
    const auto seed = static_cast<uint64_t>(o.integer("seed"));

    // Data first: the number of labels sizes the classifier.
    std::vector<train::Sample> tr, va;
    std::vector<std::string> label_names;
    train::ColumnOptions cols{o.str("text-column"), o.str("text-pair-column"), o.str("label-column")};
    const double val_fraction = o.number("val-fraction");
    const bool instruct = lm && !is_txt;
    if (instruct) {
      // JSONL prompt/response or chat messages, rendered with the chat template.
      const auto bs = static_cast<size_t>(o.integer("block-size"));
      const auto tpl = lorafit::text::ChatTemplate::for_tokenizer(tok, o.str("chat-template"));
      train::InstructionStats ist, vst;
      auto all = train::read_instruction_data(train_path, tok, tpl, bs, &ist);
      if (o.str("validation").empty()) {
        std::tie(tr, va) = train::split_samples(std::move(all), val_fraction, seed);
      } else {
        tr = std::move(all);
        va = train::read_instruction_data(o.str("validation"), tok, tpl, bs, &vst);
      }
      if (!o.flag("quiet"))
        std::fprintf(stderr, "instruction data: chat template %s; %zu examples cut to --block-size %zu, %zu skipped "
                     "(reply beyond it)\n", lorafit::text::chat_format_name(tpl.format()),
                     ist.truncated + vst.truncated, bs, ist.skipped + vst.skipped);
    } else if (lm) {
      const auto bs = static_cast<size_t>(o.integer("block-size"));
      if (o.str("validation").empty()) {
        int64_t cut = train::text_split_offset(train_path, 1.0 - val_fraction);
        tr = train::read_lm_text(train_path, tok, bs, 0, cut);
        va = train::read_lm_text(train_path, tok, bs, cut, -1);
      } else {
        tr = train::read_lm_text(train_path, tok, bs);
        va = train::read_lm_text(o.str("validation"), tok, bs);
      }
    } else {
      auto d = train::read_classification(train_path, cols);
      label_names = d.label_names;
      const auto ml = static_cast<size_t>(o.integer("max-length"));
      auto all = train::tokenize_classification(d, tok, ml);
      if (o.str("validation").empty()) {
        std::tie(tr, va) = train::split_samples(std::move(all), val_fraction, seed);
      } else {
        tr = std::move(all);
        auto dv = train::read_classification(o.str("validation"), cols, label_names);
        va = train::tokenize_classification(dv, tok, ml);
      }
    }
    if (int64_t m = o.integer("max-train-samples"); m > 0 && static_cast<size_t>(m) < tr.size()) {
      // A seeded subset, not the first lines: files are often sorted.
      auto idx = train::epoch_batches(tr, 1, seed + 7, 0, true);
      std::vector<train::Sample> sub;
      for (int64_t i = 0; i < m; ++i) sub.push_back(tr[idx[static_cast<size_t>(i)][0]]);
      tr = std::move(sub);
    }

    models::LoadOptions lo;
    lo.seed = seed;
    lo.num_labels = lm ? 0 : static_cast<int64_t>(std::max<size_t>(2, label_names.size()));
    lo.dequantize = method == "full";
    auto model = models::load_model(model_path, lo);
    const auto& mc = model->config();
    if (lm && mc.arch != "llama") throw Error("[train] task lm needs a Llama-family model; " + model_path + " is " + mc.arch);
    if (!lm && mc.arch == "llama") throw Error("[train] classification needs a BERT-family model; " + model_path + " is llama (use a .txt file for LM training)");

    std::unique_ptr<peft::PeftModel> pm;
    lorafit::nn::NamedParameters params;
    peft::AdapterConfig acfg;
    std::unique_ptr<peft::RankAllocator> alloc;
    if (adapter_method) {
      acfg.task_type = lm ? "CAUSAL_LM" : "SEQ_CLS";
      acfg.base_model_name_or_path = o.str("model");
      acfg.r = o.integer("lora-r");
      acfg.lora_alpha = o.number("lora-alpha");
      acfg.lora_dropout = o.number("lora-dropout");
      acfg.use_rslora = o.flag("use-rslora");
      acfg.use_dora = o.flag("use-dora");
      peft::set_init_lora_weights(acfg, o.str("init-lora-weights"), "--init-lora-weights");
      acfg.target_modules = o.list("target-modules");
      if (acfg.target_modules.empty()) acfg.target_modules = default_targets(mc.arch);
      if (o.has("modules-to-save")) acfg.modules_to_save = o.list("modules-to-save");
      if (method == "adalora") {  // PEFT AdaLoraConfig; total_step = this run's optimizer steps
        acfg.peft_type = "ADALORA";
        acfg.init_r = o.integer("init-r");
        acfg.target_r = o.integer("target-r");
        acfg.tinit = o.integer("tinit");
        acfg.tfinal = o.integer("tfinal");
        acfg.deltaT = o.integer("delta-t");
        acfg.beta1 = o.number("beta1");
        acfg.beta2 = o.number("beta2");
        acfg.orth_reg_weight = o.number("orth-reg-weight");
        train::TrainOptions steps;
        steps.batch_size = static_cast<size_t>(std::max<int64_t>(1, o.integer("batch-size")));
        steps.grad_accum = o.integer("grad-accum");
        steps.epochs = o.integer("epochs");
        steps.max_steps = o.integer("max-steps");
        acfg.total_step = train::total_optimizer_steps(tr.size(), steps);
      }
      acfg.validate("train options");
      pm = std::make_unique<peft::PeftModel>(*model, acfg, seed);
      params = pm->trainable_parameters();
      if (method == "adalora") alloc = std::make_unique<peft::RankAllocator>(pm->config(), pm->adalora_layers());
    } else {
      model->set_trainable(false);
      for (auto& [n, p] : model->named_parameters()) {
        bool take;
        if (method == "head") {
          take = n.rfind("classifier", 0) == 0 || n.rfind("pre_classifier", 0) == 0;
        } else {
          auto only = o.list("train-modules");
          take = only.empty();
          for (auto& s : only) take = take || n.find(s) != std::string::npos;
          if (!lm && (n.rfind("classifier", 0) == 0)) take = true;  // a new head must learn
        }
        if (take && p->value.dtype() == lorafit::tensor::DType::F32) {
          p->set_trainable(true);
          params.emplace_back(n, p);
        }
      }
      if (params.empty()) throw Error("[train] --train-modules matched no parameter");
    }

    train::TrainOptions to;
    to.output_dir = out;
    to.epochs = o.integer("epochs");
    to.max_steps = o.integer("max-steps");
    to.batch_size = static_cast<size_t>(o.integer("batch-size"));
    to.grad_accum = o.integer("grad-accum");
    // Defaults from docs/RESULTS.md: on SST-2 with a 300-step budget, LoRA at 3e-3 matched the full
    // fine-tune at 5e-5 (0.8509 both) where 5e-4 was 5 points behind; LM adapters take 5e-4.
    to.lr = static_cast<float>(o.str("lr").empty() ? (method == "full" ? 5e-5
                                                      : lm             ? 5e-4
                                                                       : 3e-3)
                                                   : o.number("lr"));
    to.weight_decay = static_cast<float>(o.number("weight-decay"));
    to.adam = {static_cast<float>(o.number("adam-beta1")), static_cast<float>(o.number("adam-beta2")),
               static_cast<float>(o.number("adam-eps"))};
    to.schedule = train::parse_schedule(o.str("schedule"));
    to.warmup_ratio = o.number("warmup-ratio");
    to.warmup_steps = o.integer("warmup-steps");
    to.max_grad_norm = o.number("max-grad-norm");
    to.loraplus_ratio = static_cast<float>(o.number("loraplus-ratio"));
    to.eval_every = o.integer("eval-every");
    to.eval_batches = o.integer("eval-max-batches");
    to.save_every = o.integer("save-every");
    to.log_every = o.integer("log-every");
    to.seed = seed;
    to.quiet = o.flag("quiet");
    to.stop_after = o.integer("stop-after");
    if (to.batch_size < 1 || to.grad_accum < 1 || to.epochs < 1 || to.max_steps < 0)
      throw Error("[train] --batch-size, --grad-accum and --epochs must be >= 1, --max-steps >= 0");
    if (to.lr <= 0) throw Error("[train] --lr must be positive");
    if (to.warmup_ratio < 0 || to.warmup_ratio >= 1) throw Error("[train] --warmup-ratio must be in [0, 1)");
    if (!adapter_method && to.loraplus_ratio != 1.0f) throw Error("[train] --loraplus-ratio needs --method lora or adalora");
    json cfg = o.to_json();
    cfg["task"] = task;
    cfg["lr"] = to.lr;
    if (adapter_method) cfg["adapter"] = peft::config_to_json(acfg);
    to.config_json = cfg.dump();
    json task_info = {{"task", task}, {"method", method}, {"model", o.str("model")},
                      {"labels", label_names}, {"max_length", o.integer("max-length")},
                      {"block_size", o.integer("block-size")}, {"chat_template", o.str("chat-template")}};
    to.save_weights = [&](const std::string& dir) {
      if (pm) pm->save_pretrained(dir);
      lorafit::io::write_json_file(dir + "/lorafit_task.json", task_info);
      if (alloc) lorafit::io::write_safetensors(dir + "/adalora_state.safetensors", alloc->state());
    };
    if (alloc) {
      // AdaLoRA inside the loop, as PEFT documents it: the orthogonal regularization joins the
      // loss (its gradient before clipping); after each optimizer step the allocator updates the
      // importance and masks lora_E; the saved folder is pruned by the latest rank_pattern.
      std::vector<peft::SVDLinear*> svd;
      for (auto& [path, l] : pm->adalora_layers()) svd.push_back(l);
      const double orth = acfg.orth_reg_weight;
      to.after_backward = [svd, orth]() { return peft::adalora_orth_reg(svd, orth, 1.0); };
      to.after_step = [&](int64_t step) {
        if (alloc->update_and_allocate(step).new_pattern) pm->set_adalora_rank_pattern(alloc->rank_pattern());
      };
      if (!resume.empty()) {
        const std::string sp = resume + "/adalora_state.safetensors";
        if (!fs::exists(sp)) throw Error("[train] " + resume + ": no adalora_state.safetensors (not an AdaLoRA checkpoint)");
        alloc->load_state(lorafit::io::SafetensorsFile::open(sp), sp);
        if (!alloc->rank_pattern().empty()) pm->set_adalora_rank_pattern(alloc->rank_pattern());
      }
    }

    int64_t n_train = 0;
    for (auto& [n, p] : params) n_train += p->value.numel();
    const int64_t n_total = pm ? pm->count_parameters().total : model->num_parameters();
    to.total_params = n_total;
    int64_t tr_tokens = 0;
    for (auto& s : tr) tr_tokens += static_cast<int64_t>(s.ids.size());
    if (!to.quiet) {
      std::fprintf(stderr, "model %s (%s), task %s, method %s\n", model_path.c_str(), mc.arch.c_str(), task.c_str(), method.c_str());
      std::fprintf(stderr, "trainable params: %lld || all params: %lld || trainable%%: %.4f\n",
                   static_cast<long long>(n_train), static_cast<long long>(n_total),
                   100.0 * static_cast<double>(n_train) / static_cast<double>(std::max<int64_t>(1, n_total)));
      std::fprintf(stderr, "data: %zu train (%lld tokens), %zu validation; threads %d\n", tr.size(),
                   static_cast<long long>(tr_tokens), va.size(), lorafit::kernels::num_threads());
    }
    // Only now, with every option and file checked, may an old output folder go.
    check_output_dir(out, o.flag("overwrite"), !resume.empty(), true);
    train::install_sigint_handler();
    train::Task t{model.get(), lm};
    auto sum = train::run_training(t, params, tr, va, pad_id_of(tok), to, resume);
    if (sum.interrupted) return 130;
    std::printf("steps %lld, %.1f s, %.0f tokens/s, peak memory %.0f MiB\n", static_cast<long long>(sum.steps),
                sum.seconds, sum.tokens_per_second, static_cast<double>(sum.peak_rss_bytes) / 1048576.0);
    if (!va.empty()) {
      if (lm) std::printf("validation loss %.4f, perplexity %.3f\n", sum.final_eval.loss, sum.final_eval.perplexity);
      else
        std::printf("validation accuracy %.4f, F1 %.4f, MCC %.4f (%lld examples)\n", sum.final_eval.cls.accuracy,
                    sum.final_eval.cls.f1, sum.final_eval.cls.mcc, static_cast<long long>(sum.final_eval.cls.n));
    }
    if (alloc) {
      std::string ranks;
      int64_t total_r = 0;
      for (auto& [k, m] : alloc->rank_pattern()) {
        const auto r = std::count(m.begin(), m.end(), true);
        total_r += r;
        ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
      }
      std::printf("adalora: rank budget %lld (target %lld), ranks per module [%s]\n", static_cast<long long>(total_r),
                  static_cast<long long>(alloc->target_budget()), ranks.c_str());
    }
    std::printf("adapter: %s/final\nreport: %s\n", out.c_str(), sum.report_path.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lorafit train: %s\n", e.what());
    return 1;
  }
}

// ---- eval / predict ---------------------------------------------------------------------------

namespace {

const std::vector<OptSpec> kEvalOpts = {
    {"config", "str", "", "JSON or YAML (.yaml/.yml) file of options"},
    {"model", "str", "", "base model folder or .gguf (required)"},
    {"adapter", "str", "",
     "a run's final/ or best/ folder, or a PEFT adapter folder (none: the base model)"},
    {"data", "str", "", "file to evaluate / classify (required)"},
    {"output", "str", "",
     "predict: write predictions here (.tsv or .jsonl; default: stdout as TSV)"},
    {"task", "str", "auto", "classification | lm | auto"},
    {"batch-size", "int", "32", "examples per batch"},
    {"max-length", "int", "0", "classification: tokens per example (0: as trained, else 128)"},
    {"block-size", "int", "0", "LM: tokens per block (0: as trained, else 128)"},
    {"chat-template", "str", "",
     "LM instruction .jsonl: auto | chatml | llama3 | plain (default: as trained, else auto)"},
    {"text-column", "str", "", "text column"},
    {"text-pair-column", "str", "", "second text column"},
    {"label-column", "str", "", "label column"},
    {"threads", "int", "0", "compute threads (0: all cores)"},
};

struct Loaded {
  std::unique_ptr<models::Model> model;
  std::unique_ptr<peft::PeftModel> pm;
  lorafit::text::Tokenizer tok;
  json info;
  bool lm = false;
};

Loaded load_for_inference(const Options& o, const std::string& cmd) {
  if (o.str("model").empty()) throw Error("[" + cmd + "] --model is required");
  const std::string model_path = resolve_model(o.str("model"));
  json info = o.str("adapter").empty() ? json::object() : read_task_info(o.str("adapter"));
  std::string task = o.str("task");
  if (task == "auto") task = info.value("task", is_causal_lm(model_path) ? "lm" : "classification");
  models::LoadOptions lo;
  auto labels = info.value("labels", std::vector<std::string>{});
  lo.num_labels = static_cast<int64_t>(labels.size());
  lo.dequantize = info.value("method", "") == "full";
  Loaded l{models::load_model(model_path, lo), nullptr, load_tokenizer(model_path), info, task == "lm"};
  l.pm = apply_weights(*l.model, o.str("adapter"));
  return l;
}

}  // namespace

int cmd_eval(int argc, char** argv, bool predict) {
  const char* cmd = predict ? "predict" : "eval";
  if (wants_help(argc, argv)) {
    print_help(predict ? "Usage: lorafit predict --model PATH --adapter DIR --data FILE [--output preds.tsv]\n\n"
                         "Classifies every row of FILE (.tsv/.csv/.jsonl; a label column is optional) and writes\n"
                         "line, predicted label and the probability of each label (TSV or JSONL by --output's extension).\n"
                       : "Usage: lorafit eval --model PATH [--adapter DIR] --data FILE\n\n"
                         "Classification: accuracy, F1 and Matthews correlation on a labeled file.\n"
                         "Causal LM: loss and perplexity on a text file (cut into --block-size blocks).\n",
               kEvalOpts, nullptr);
    return 0;
  }
  try {
    Options o(kEvalOpts, cmd);
    o.parse(argc, argv);
    if (o.str("data").empty()) throw Error(std::string("[") + cmd + "] --data is required");
    lorafit::kernels::set_num_threads(static_cast<int>(o.integer("threads")));
    Loaded l = load_for_inference(o, cmd);
    if (predict && l.lm) throw Error("[predict] needs a classification model; use lorafit generate for LM");
    const auto bsz = static_cast<size_t>(o.integer("batch-size"));
    train::Task t{l.model.get(), l.lm};
    if (l.lm) {
      int64_t bs = o.integer("block-size");
      if (bs == 0) bs = l.info.value("block_size", 128);
      const std::string data = o.str("data");
      const bool txt = data.size() > 4 && data.substr(data.size() - 4) == ".txt";
      std::vector<train::Sample> samples;
      if (txt) {
        samples = train::read_lm_text(data, l.tok, static_cast<size_t>(bs));
      } else {  // instruction data: loss on the replies only
        std::string choice = o.str("chat-template");
        if (choice.empty()) choice = l.info.value("chat_template", "auto");
        samples = train::read_instruction_data(data, l.tok, lorafit::text::ChatTemplate::for_tokenizer(l.tok, choice),
                                               static_cast<size_t>(bs));
      }
      auto r = train::evaluate(t, samples, bsz, pad_id_of(l.tok));
      int64_t counted = 0;
      for (const auto& s : samples)
        for (int32_t y : s.targets) counted += y != -100;
      std::printf("loss %.4f\nperplexity %.3f\n%s %zu (%lld %s)\n", r.loss, r.perplexity, txt ? "blocks" : "examples",
                  samples.size(), static_cast<long long>(counted), txt ? "predicted tokens" : "reply tokens");
      return 0;
    }
    int64_t ml = o.integer("max-length");
    if (ml == 0) ml = l.info.value("max_length", 128);
    auto labels = l.info.value("labels", std::vector<std::string>{});
    train::ColumnOptions cols{o.str("text-column"), o.str("text-pair-column"), o.str("label-column")};
    auto d = train::read_classification(o.str("data"), cols, labels, !predict);
    if (labels.empty()) labels = d.label_names;
    auto samples = train::tokenize_classification(d, l.tok, static_cast<size_t>(ml));
    std::vector<std::vector<float>> probs;
    auto r = train::evaluate(t, samples, bsz, pad_id_of(l.tok), 0, &probs);
    if (!predict) {
      std::printf("accuracy %.4f\nf1 %.4f\nmcc %.4f\nloss %.4f\nexamples %lld\n", r.cls.accuracy, r.cls.f1,
                  r.cls.mcc, r.loss, static_cast<long long>(r.cls.n));
      return 0;
    }
    const std::string outp = o.str("output");
    const bool jsonl = outp.size() > 6 && outp.substr(outp.size() - 6) == ".jsonl";
    std::string text;
    if (!jsonl) {
      text = "line\tprediction";
      for (size_t k = 0; k < probs.at(0).size(); ++k) text += "\tp_" + (k < labels.size() ? labels[k] : std::to_string(k));
      text += "\n";
    }
    for (size_t i = 0; i < probs.size(); ++i) {
      const auto& p = probs[i];
      auto k = static_cast<size_t>(std::max_element(p.begin(), p.end()) - p.begin());
      std::string name = k < labels.size() ? labels[k] : std::to_string(k);
      if (jsonl) {
        json j = {{"line", d.examples[i].line}, {"prediction", name}, {"probabilities", p}};
        text += j.dump() + "\n";
      } else {
        text += std::to_string(d.examples[i].line) + "\t" + name;
        char b[32];
        for (float v : p) std::snprintf(b, sizeof b, "\t%.6f", v), text += b;
        text += "\n";
      }
    }
    if (outp.empty()) std::fputs(text.c_str(), stdout);
    else {
      lorafit::io::write_file_atomic(outp, text);
      std::fprintf(stderr, "wrote %zu predictions to %s\n", probs.size(), outp.c_str());
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lorafit %s: %s\n", cmd, e.what());
    return 1;
  }
}

// ---- generate ---------------------------------------------------------------------------------

namespace {

const std::vector<OptSpec> kGenOpts = {
    {"config", "str", "", "JSON or YAML (.yaml/.yml) file of options"},
    {"model", "str", "", "Llama-family model folder or .gguf (required)"},
    {"adapter", "str", "", "a run's final/ folder or a PEFT adapter folder"},
    {"prompt", "str", "", "the text to continue (required)"},
    {"max-new-tokens", "int", "64", "tokens to generate"},
    {"temperature", "num", "0", "0: greedy; > 0 samples from softmax(logits / temperature)"},
    {"top-k", "int", "0", "sample among the k most likely tokens (0: all)"},
    {"top-p", "num", "1", "sample among the smallest set with probability >= p"},
    {"seed", "int", "42", "sampling seed"},
    {"chat", "bool", "false",
     "send --prompt as a user message through the chat template; print only the reply"},
    {"system", "str", "", "with --chat: a system message"},
    {"chat-template", "str", "auto", "with --chat: auto (the model's) | chatml | llama3 | plain"},
    {"threads", "int", "0", "compute threads (0: all cores)"},
};

}  // namespace

int cmd_generate(int argc, char** argv) {
  if (wants_help(argc, argv)) {
    print_help("Usage: lorafit generate --model PATH [--adapter DIR] --prompt TEXT [options]\n\n"
               "Continues the prompt with a KV cache: greedy by default, or sampling with --temperature,\n"
               "--top-k and --top-p (seeded, so the same command gives the same text).\n"
               "With --chat the prompt is a user message in the model's chat template (SmolLM2: ChatML)\n"
               "and only the reply is printed, e.g.\n"
               "  lorafit generate --model models/SmolLM2-135M-Instruct --chat --prompt \"Name three rivers.\"\n",
               kGenOpts, nullptr);
    return 0;
  }
  try {
    Options o(kGenOpts, "generate");
    o.parse(argc, argv);
    if (o.str("prompt").empty()) throw Error("[generate] --prompt is required");
    lorafit::kernels::set_num_threads(static_cast<int>(o.integer("threads")));
    const double temp = o.number("temperature"), top_p = o.number("top-p");
    const int64_t top_k = o.integer("top-k"), n_new = o.integer("max-new-tokens");
    if (temp < 0 || top_p <= 0 || top_p > 1 || top_k < 0 || n_new < 0)
      throw Error("[generate] need --temperature >= 0, 0 < --top-p <= 1, --top-k >= 0, --max-new-tokens >= 0");
    if (temp == 0 && (o.has("top-k") || o.has("top-p")))
      throw Error("[generate] --top-k/--top-p only matter when sampling; add --temperature (e.g. 0.8)");
    Options eo(kEvalOpts, "generate");
    const char* fake[] = {"x", "--model", nullptr, "--task", "lm", nullptr, nullptr};
    std::string mp = o.str("model"), ad = o.str("adapter");
    fake[2] = mp.c_str();
    int fc = 5;
    if (!ad.empty()) fake[5] = "--adapter", fake[6] = ad.c_str(), fc = 7;
    eo.parse(fc, const_cast<char**>(fake));
    Loaded l = load_for_inference(eo, "generate");
    auto* llama = dynamic_cast<models::LlamaModel*>(l.model.get());
    if (!llama) throw Error("[generate] needs a Llama-family model");
    const bool chat = o.flag("chat");
    if (!chat && (o.has("system") || o.has("chat-template")))
      throw Error("[generate] --system and --chat-template need --chat");
    std::vector<int32_t> ids;
    std::vector<int32_t> stop = {l.tok.special_ids().eos};
    if (chat) {
      const auto tpl = lorafit::text::ChatTemplate::for_tokenizer(l.tok, o.str("chat-template"));
      std::vector<lorafit::text::ChatMessage> msgs;
      if (!o.str("system").empty()) msgs.push_back({"system", o.str("system")});
      msgs.push_back({"user", o.str("prompt")});
      ids = l.tok.encode(tpl.render_text(msgs, true), false).ids;
      // The end-of-turn token stops a reply too.
      for (const char* t : {"<|im_end|>", "<|eot_id|>"})
        if (auto id = l.tok.token_to_id(t)) stop.push_back(*id);
    } else {
      ids = l.tok.encode(o.str("prompt"), true).ids;
    }
    if (ids.empty()) throw Error("[generate] the prompt encodes to no tokens");
    const auto seed = static_cast<uint64_t>(o.integer("seed"));
    auto cache = llama->new_cache(1, static_cast<int64_t>(ids.size()) + n_new + 1);
    lorafit::tensor::Arena arena;
    lorafit::nn::Context ctx;
    ctx.arena = &arena;
    auto logits = llama->forward_cached(ctx, lorafit::tensor::Tensor::from_ints({1, static_cast<int64_t>(ids.size())}, ids), cache);
    std::vector<int32_t> out;
    const int64_t V = logits.dim(-1);
    if (!chat) std::fputs(o.str("prompt").c_str(), stdout);
    std::string shown;
    for (int64_t s = 0; s < n_new; ++s) {
      const float* row = logits.f32() + (logits.numel() - V);
      int32_t next = 0;
      if (temp == 0) {
        next = static_cast<int32_t>(std::max_element(row, row + V) - row);
      } else {
        std::vector<std::pair<float, int32_t>> c(static_cast<size_t>(V));
        float mx = *std::max_element(row, row + V);
        for (int64_t i = 0; i < V; ++i) c[static_cast<size_t>(i)] = {std::exp((row[i] - mx) / static_cast<float>(temp)), static_cast<int32_t>(i)};
        std::sort(c.begin(), c.end(), [](auto& a, auto& b) { return a.first > b.first; });
        if (top_k > 0 && static_cast<size_t>(top_k) < c.size()) c.resize(static_cast<size_t>(top_k));
        double z = 0;
        for (auto& e : c) z += e.first;
        double cum = 0;
        size_t keep = c.size();
        for (size_t i = 0; i < c.size(); ++i) {
          cum += c[i].first / z;
          if (cum >= top_p) { keep = i + 1; break; }
        }
        c.resize(keep);
        double z2 = 0;
        for (auto& e : c) z2 += e.first;
        double u = lorafit::nn::random_uniform(seed, static_cast<uint64_t>(s)) * z2;
        next = c.back().second;
        for (auto& e : c) {
          u -= e.first;
          if (u <= 0) { next = e.second; break; }
        }
      }
      if (std::find(stop.begin(), stop.end(), next) != stop.end()) break;
      out.push_back(next);
      // Print the new text as it comes (decode the whole continuation: BPE bytes may join).
      std::string text = l.tok.decode(out, true);
      if (text.size() > shown.size() && text.compare(0, shown.size(), shown) == 0) {
        std::fputs(text.c_str() + shown.size(), stdout);
        std::fflush(stdout);
        shown = text;
      }
      arena.reset();
      logits = llama->forward_cached(ctx, lorafit::tensor::Tensor::from_ints({1, 1}, {next}), cache);
    }
    std::fputs("\n", stdout);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lorafit generate: %s\n", e.what());
    return 1;
  }
}
