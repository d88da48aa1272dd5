// The training job: RunParams -> prepare (model, tokenizer, data, adapter, optimizer groups,
// AdaLoRA allocator + hooks, resume) -> run -> the run folder. `lorafit train` is this with
// flags; a C++ caller gets the same folder.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "lorafit/io.h"
#include "lorafit/kernels.h"
#include "lorafit/models.h"
#include "lorafit/peft.h"
#include "lorafit/train.h"
#include "comm.h"

namespace lorafit::train {

namespace fs = std::filesystem;
using io::json;

namespace {

[[noreturn]] void fail(const std::string& what) {
  throw Error("[train] " + what);
}

// Refuses an existing output folder without overwrite; removes it only when `remove` (after
// every other check passed, so a bad option never costs the user a previous run).
void check_output_dir(const std::string& out, bool overwrite, bool resume, bool remove) {
  if (resume) return;
  // A file in the way is never deleted, --overwrite or not: it is not a run folder.
  if (fs::exists(out) && !fs::is_directory(out))
    fail("output " + out + " exists and is not a folder; give a folder for --output");
  if (fs::exists(out) && !fs::is_empty(out)) {
    if (!overwrite)
      fail("output folder " + out +
           " exists and is not empty; pass --overwrite to replace it, or --resume " + out +
           "/checkpoint to continue that run");
    if (remove) fs::remove_all(out);
  }
}

bool is_txt(const std::string& p) {
  return p.size() > 4 && p.ends_with(".txt");
}

// Options that only one method reads: a non-default value under another method is a mistake
// the user should hear about, not a silent no-op.
void check_method_options(const RunParams& p) {
  const RunParams d;
  const std::string& m = p.method;
  if (m != "lora" && m != "adalora" && m != "full" && m != "head")
    fail("--method '" + m + "': expected lora, adalora, full or head");
  const bool adapter = m == "lora" || m == "adalora";
  if (!adapter && (p.lora_r != d.lora_r || !p.target_modules.empty() ||
                   p.lora_alpha != d.lora_alpha || p.use_dora))
    fail("--lora-* and --target-modules apply to --method lora/adalora only (method is " + m + ")");
  if (m == "adalora" && p.use_dora)
    fail("--use-dora applies to --method lora (PEFT has no DoRA for AdaLoRA)");
  if (m == "adalora" && p.lora_r != d.lora_r)
    fail("--lora-r does not apply to --method adalora: its ranks are --init-r and --target-r");
  const std::pair<const char*, bool> ada[] = {
      {"init-r", p.init_r != d.init_r},
      {"target-r", p.target_r != d.target_r},
      {"tinit", p.tinit != d.tinit},
      {"tfinal", p.tfinal != d.tfinal},
      {"delta-t", p.delta_t != d.delta_t},
      {"beta1", p.beta1 != d.beta1},
      {"beta2", p.beta2 != d.beta2},
      {"orth-reg-weight", p.orth_reg_weight != d.orth_reg_weight}};
  for (auto& [k, changed] : ada)
    if (m != "adalora" && changed)
      fail(std::string("--") + k + " applies to --method adalora only (method is " + m + ")");
  if (m != "full" && !p.train_modules.empty())
    fail(
        "--train-modules applies to --method full only; with LoRA use --target-modules / "
        "--modules-to-save");
  if (!adapter && p.init_lora_weights != d.init_lora_weights)
    fail("--init-lora-weights applies to --method lora/adalora only (method is " + m + ")");
  if (p.batch_size < 1 || p.grad_accum < 1 || p.epochs < 1 || p.max_steps < 0)
    fail("--batch-size, --grad-accum and --epochs must be >= 1, --max-steps >= 0");
  if (p.lr && *p.lr <= 0) fail("--lr must be positive");
  if (p.warmup_ratio < 0 || p.warmup_ratio >= 1) fail("--warmup-ratio must be in [0, 1)");
  if (!adapter && p.loraplus_ratio != 1.0) fail("--loraplus-ratio needs --method lora or adalora");
  if (!adapter && !p.trainable_extra.empty())
    fail("--trainable-extra needs --method lora or adalora (it adds to the adapter's "
         "modules_to_save)");
  if (p.threads < 0) fail("--threads must be >= 0");
  if (p.max_length < 1 || p.block_size < 1) fail("--max-length and --block-size must be >= 1");
  if (p.attention != "full" && p.attention != "s2")
    fail("--attention '" + p.attention + "': expected full or s2");
  if (!(p.s2_ratio > 0.0 && p.s2_ratio <= 1.0))
    fail("--s2-ratio must be in (0, 1], got " + std::to_string(p.s2_ratio));
  models::check_quantize(p.quantize, "[train] --quantize");
  if (p.quantize != "none" && !p.quantize.empty() && !adapter)
    fail("--quantize " + p.quantize + " needs --method lora or adalora (a quantized base is "
         "frozen; method is " + m + ")");
}

}  // namespace

json run_params_to_json(const RunParams& p) {
  json j = {{"model", p.model},
            {"train", p.train_data},
            {"validation", p.validation},
            {"output", p.output},
            {"task", p.task},
            {"method", p.method},
            {"lora_r", p.lora_r},
            {"lora_alpha", p.lora_alpha},
            {"lora_dropout", p.lora_dropout},
            {"target_modules", p.target_modules},
            {"use_rslora", p.use_rslora},
            {"use_dora", p.use_dora},
            {"init_lora_weights", p.init_lora_weights},
            {"init_r", p.init_r},
            {"target_r", p.target_r},
            {"tinit", p.tinit},
            {"tfinal", p.tfinal},
            {"delta_t", p.delta_t},
            {"beta1", p.beta1},
            {"beta2", p.beta2},
            {"orth_reg_weight", p.orth_reg_weight},
            {"train_modules", p.train_modules},
            {"loraplus_ratio", p.loraplus_ratio},
            {"weight_decay", p.weight_decay},
            {"adam_beta1", p.adam_beta1},
            {"adam_beta2", p.adam_beta2},
            {"adam_eps", p.adam_eps},
            {"schedule", p.schedule},
            {"warmup_ratio", p.warmup_ratio},
            {"warmup_steps", p.warmup_steps},
            {"epochs", p.epochs},
            {"max_steps", p.max_steps},
            {"max_train_samples", p.max_train_samples},
            {"batch_size", p.batch_size},
            {"grad_accum", p.grad_accum},
            {"max_grad_norm", p.max_grad_norm},
            {"max_length", p.max_length},
            {"block_size", p.block_size},
            {"chat_template", p.chat_template},
            {"val_fraction", p.val_fraction},
            {"eval_every", p.eval_every},
            {"eval_max_batches", p.eval_max_batches},
            {"save_every", p.save_every},
            {"log_every", p.log_every},
            {"text_column", p.text_column},
            {"text_pair_column", p.text_pair_column},
            {"label_column", p.label_column},
            {"seed", p.seed},
            {"threads", p.threads},
            {"resume", p.resume},
            {"overwrite", p.overwrite},
            {"quiet", p.quiet},
            {"stop_after", p.stop_after},
            {"attention", p.attention},
            {"s2_ratio", p.s2_ratio},
            {"quantize", p.quantize},
            {"rope_scaling", p.rope_scaling},
            {"gradient_checkpointing", p.gradient_checkpointing},
            {"trainable_extra", p.trainable_extra},
            {"compute_dtype", p.compute_dtype}};
  j["modules_to_save"] = p.modules_to_save ? json(*p.modules_to_save) : json(nullptr);
  j["lr"] = p.lr ? json(*p.lr) : json(nullptr);
  return j;
}

RunParams run_params_from_json(const json& j, const std::string& origin) {
  RunParams p;
  auto get = [&](const char* key, auto& field) {
    if (!j.contains(key) || j.at(key).is_null()) return;
    try {
      j.at(key).get_to(field);
    } catch (const std::exception&) {
      fail(origin + ": field '" + key + "' has the wrong type (" + j.at(key).type_name() + ")");
    }
  };
  get("model", p.model);
  get("train", p.train_data);
  get("validation", p.validation);
  get("output", p.output);
  get("task", p.task);
  get("method", p.method);
  get("lora_r", p.lora_r);
  get("lora_alpha", p.lora_alpha);
  get("lora_dropout", p.lora_dropout);
  get("target_modules", p.target_modules);
  get("use_rslora", p.use_rslora);
  get("use_dora", p.use_dora);
  get("init_lora_weights", p.init_lora_weights);
  get("init_r", p.init_r);
  get("target_r", p.target_r);
  get("tinit", p.tinit);
  get("tfinal", p.tfinal);
  get("delta_t", p.delta_t);
  get("beta1", p.beta1);
  get("beta2", p.beta2);
  get("orth_reg_weight", p.orth_reg_weight);
  get("train_modules", p.train_modules);
  get("loraplus_ratio", p.loraplus_ratio);
  get("weight_decay", p.weight_decay);
  get("adam_beta1", p.adam_beta1);
  get("adam_beta2", p.adam_beta2);
  get("adam_eps", p.adam_eps);
  get("schedule", p.schedule);
  get("warmup_ratio", p.warmup_ratio);
  get("warmup_steps", p.warmup_steps);
  get("epochs", p.epochs);
  get("max_steps", p.max_steps);
  get("max_train_samples", p.max_train_samples);
  get("batch_size", p.batch_size);
  get("grad_accum", p.grad_accum);
  get("max_grad_norm", p.max_grad_norm);
  get("max_length", p.max_length);
  get("block_size", p.block_size);
  get("chat_template", p.chat_template);
  get("val_fraction", p.val_fraction);
  get("eval_every", p.eval_every);
  get("eval_max_batches", p.eval_max_batches);
  get("save_every", p.save_every);
  get("log_every", p.log_every);
  get("text_column", p.text_column);
  get("text_pair_column", p.text_pair_column);
  get("label_column", p.label_column);
  get("seed", p.seed);
  get("threads", p.threads);
  get("resume", p.resume);
  get("overwrite", p.overwrite);
  get("quiet", p.quiet);
  get("stop_after", p.stop_after);
  get("attention", p.attention);
  get("s2_ratio", p.s2_ratio);
  get("quantize", p.quantize);
  get("rope_scaling", p.rope_scaling);
  get("gradient_checkpointing", p.gradient_checkpointing);
  get("trainable_extra", p.trainable_extra);
  get("compute_dtype", p.compute_dtype);
  if (j.contains("modules_to_save") && !j.at("modules_to_save").is_null()) {
    p.modules_to_save.emplace();
    get("modules_to_save", *p.modules_to_save);
  }
  if (j.contains("lr") && !j.at("lr").is_null()) {
    p.lr.emplace();
    get("lr", *p.lr);
  }
  return p;
}

RunParams resume_params(const std::string& checkpoint_dir) {
  const std::string path = checkpoint_dir + "/trainer_state.json";
  if (!fs::exists(path))
    fail(checkpoint_dir + ": no trainer_state.json (give a run's checkpoint/ folder)");
  const json st = io::read_json_file(path);
  if (!st.contains("config") || !st.at("config").is_object())
    fail(path + ": field 'config' is missing (a checkpoint written by another version?)");
  RunParams p = run_params_from_json(st.at("config"), path);
  p.resume = checkpoint_dir;
  p.overwrite = false;
  p.stop_after = 0;
  return p;
}

struct TrainingJob::Impl {
  RunParams p;
  JobInfo info;
  std::unique_ptr<LoadedModel> lm;  // Tokenizer has no empty state
  std::vector<Sample> tr, va;
  std::unique_ptr<peft::PeftModel> pm;
  std::unique_ptr<peft::RankAllocator> alloc;
  nn::NamedParameters params;
  TrainOptions to;
  json task_info;
};

TrainingJob::TrainingJob() : impl_(std::make_unique<Impl>()) {}
TrainingJob::~TrainingJob() = default;
const JobInfo& TrainingJob::info() const {
  return impl_->info;
}

std::unique_ptr<TrainingJob> TrainingJob::prepare(const RunParams& params) {
  std::unique_ptr<TrainingJob> job(new TrainingJob());
  Impl& J = *job->impl_;
  J.p = params;
  const RunParams& p = J.p;
  JobInfo& info = J.info;
  if (p.model.empty())
    fail("--model is required (a model folder or .gguf; see lorafit train --help)");
  if (p.train_data.empty()) fail("--train is required (the training data file)");
  if (p.output.empty())
    fail("--output is required: the folder for the adapter, checkpoints and report");
  const bool resume = !p.resume.empty();
  check_output_dir(p.output, p.overwrite, resume, false);
  if (resume && p.overwrite)
    fail("--resume and --overwrite together would delete the checkpoint being resumed");
  check_method_options(p);
  {
    // --threads per process; by default several ranks on one machine share its cores.
    int threads = static_cast<int>(p.threads);
    const int local = world().local_size();
    if (threads == 0 && local > 1)
      threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / local);
    kernels::set_num_threads(threads);
    kernels::set_compute_dtype(kernels::parse_compute_dtype(p.compute_dtype));
  }
  const std::string& method = p.method;
  const bool adapter_method = method == "lora" || method == "adalora";

  const std::string model_path = models::resolve_model_path(p.model);
  text::Tokenizer tok = open_tokenizer(model_path);
  std::string task = p.task;
  if (task == "auto")
    task = is_causal_lm_path(model_path) || is_txt(p.train_data) ? "lm" : "classification";
  if (task != "lm" && task != "classification")
    fail("--task '" + task + "': expected classification, lm or auto");
  const bool lm = task == "lm";
  if (method == "head" && lm) fail("--method head needs a classification task");

  if (!(p.val_fraction >= 0 && p.val_fraction < 1))
    fail("--val-fraction " + std::to_string(p.val_fraction) +
         ": expected a fraction in [0, 1) (0: no validation)");
  // Data first: the number of labels sizes the classifier.
  std::vector<Sample>& tr = J.tr;
  std::vector<Sample>& va = J.va;
  std::vector<std::string> label_names;
  const ColumnOptions cols{p.text_column, p.text_pair_column, p.label_column};
  if (lm && !is_txt(p.train_data)) {
    // JSONL prompt/response or chat messages, rendered with the chat template.
    const auto bs = static_cast<size_t>(p.block_size);
    const auto tpl = text::ChatTemplate::for_tokenizer(tok, p.chat_template);
    InstructionStats ist, vst;
    auto all = read_instruction_data(p.train_data, tok, tpl, bs, &ist);
    if (!p.validation.empty()) {
      tr = std::move(all);
      va = read_instruction_data(p.validation, tok, tpl, bs, &vst);
    } else if (p.val_fraction > 0) {
      std::tie(tr, va) = split_samples(std::move(all), p.val_fraction, p.seed);
    } else {
      tr = std::move(all);  // --val-fraction 0: no validation
    }
    info.chat_format = text::chat_format_name(tpl.format());
    info.truncated = ist.truncated + vst.truncated;
    info.skipped = ist.skipped + vst.skipped;
  } else if (lm) {
    const auto bs = static_cast<size_t>(p.block_size);
    if (p.validation.empty() && p.val_fraction > 0) {
      const int64_t cut = text_split_offset(p.train_data, 1.0 - p.val_fraction);
      tr = read_lm_text(p.train_data, tok, bs, 0, cut);
      va = read_lm_text(p.train_data, tok, bs, cut, -1);
    } else if (p.validation.empty()) {
      tr = read_lm_text(p.train_data, tok, bs);  // --val-fraction 0: no validation
    } else {
      tr = read_lm_text(p.train_data, tok, bs);
      va = read_lm_text(p.validation, tok, bs);
    }
  } else {
    auto d = read_classification(p.train_data, cols);
    label_names = d.label_names;
    const auto ml = static_cast<size_t>(p.max_length);
    auto all = tokenize_classification(d, tok, ml);
    if (p.validation.empty() && p.val_fraction > 0) {
      std::tie(tr, va) = split_samples(std::move(all), p.val_fraction, p.seed);
    } else if (p.validation.empty()) {
      tr = std::move(all);  // --val-fraction 0: no validation
    } else {
      tr = std::move(all);
      va = tokenize_classification(read_classification(p.validation, cols, label_names), tok, ml);
    }
  }
  if (p.max_train_samples > 0 && static_cast<size_t>(p.max_train_samples) < tr.size()) {
    // A seeded subset, not the first lines: files are often sorted.
    auto idx = epoch_batches(tr, 1, p.seed + 7, 0, true);
    std::vector<Sample> sub;
    for (int64_t i = 0; i < p.max_train_samples; ++i)
      sub.push_back(tr[idx[static_cast<size_t>(i)][0]]);
    tr = std::move(sub);
  }

  models::LoadOptions lo;
  lo.seed = p.seed;
  lo.num_labels = lm ? 0 : static_cast<int64_t>(std::max<size_t>(2, label_names.size()));
  lo.dequantize = method == "full";
  lo.quantize = p.quantize;
  J.lm = std::make_unique<LoadedModel>(
      LoadedModel{model_path, std::move(tok), models::load_model(model_path, lo)});
  models::Model& model = *J.lm->model;
  const auto& mc = model.config();
  if (lm && !model.is_causal_lm())
    fail("task lm needs a Llama-family model; " + model_path + " is " + mc.arch);
  if (!lm && model.is_causal_lm())
    fail("classification needs a BERT-family model; " + model_path + " is " + mc.arch +
         " (use a .txt file for LM training)");
  if (!model.is_causal_lm()) {
    // Learned positions (BERT family): a sample longer than the position table would fail at
    // its first forward; refuse it before training, naming the limit.
    size_t longest = 0;
    for (const auto* v : {&tr, &va})
      for (const Sample& s : *v) longest = std::max(longest, s.ids.size());
    if (static_cast<int64_t>(longest) > mc.max_positions)
      fail("a sample of " + std::to_string(longest) + " tokens (--max-length " +
           std::to_string(p.max_length) + ") is beyond max_position_embeddings " +
           std::to_string(mc.max_positions) + " of " + model_path +
           ": use --max-length " + std::to_string(mc.max_positions) + " or less");
  }
  if (p.attention == "s2") {
    // S²-Attn (LongLoRA): training only; nn::Attention attends fully outside ctx.training.
    auto* llama = dynamic_cast<models::LlamaModel*>(&model);
    if (!llama)
      fail("--attention s2 (LongLoRA's shifted sparse attention) needs a Llama-family causal LM; " +
           model_path + " is " + mc.arch);
    for (auto& layer : llama->layers) layer.attn.cfg.s2_ratio = static_cast<float>(p.s2_ratio);
  }
  if (p.gradient_checkpointing) {
    if (auto* llama = dynamic_cast<models::LlamaModel*>(&model))
      llama->gradient_checkpointing = true;
    else if (auto* bert = dynamic_cast<models::BertModel*>(&model))
      bert->gradient_checkpointing = true;
    else
      fail("--gradient-checkpointing: not implemented for " + mc.arch);
  }
  json rope_note;  // the scaling this run applied, for lorafit_task.json
  if (!p.rope_scaling.empty()) {
    rope_note = apply_rope_scaling(model, p.rope_scaling);
  }

  TrainOptions& to = J.to;
  to.output_dir = p.output;
  to.epochs = p.epochs;
  to.max_steps = p.max_steps;
  to.batch_size = static_cast<size_t>(p.batch_size);
  to.grad_accum = p.grad_accum;
  to.lr = static_cast<float>(p.lr ? *p.lr : default_learning_rate(method, lm));
  to.weight_decay = static_cast<float>(p.weight_decay);
  to.adam = {static_cast<float>(p.adam_beta1), static_cast<float>(p.adam_beta2),
             static_cast<float>(p.adam_eps)};
  to.schedule = parse_schedule(p.schedule);
  to.warmup_ratio = p.warmup_ratio;
  to.warmup_steps = p.warmup_steps;
  to.max_grad_norm = p.max_grad_norm;
  to.loraplus_ratio = static_cast<float>(p.loraplus_ratio);
  to.eval_every = p.eval_every;
  to.eval_batches = p.eval_max_batches;
  to.save_every = p.save_every;
  to.log_every = p.log_every;
  to.seed = p.seed;
  to.quiet = p.quiet;
  to.stop_after = p.stop_after;

  peft::AdapterConfig acfg;
  if (adapter_method) {
    acfg.task_type = lm ? "CAUSAL_LM" : "SEQ_CLS";
    acfg.base_model_name_or_path = p.model;
    acfg.r = p.lora_r;
    acfg.lora_alpha = p.lora_alpha;
    acfg.lora_dropout = p.lora_dropout;
    acfg.use_rslora = p.use_rslora;
    acfg.use_dora = p.use_dora;
    acfg.target_modules =
        p.target_modules.empty() ? default_target_modules(mc.arch) : p.target_modules;
    acfg.modules_to_save = p.modules_to_save;
    if (!p.trainable_extra.empty()) {
      // LongLoRA trains the embeddings and norms beside LoRA: PEFT's modules_to_save, by the
      // Llama module names (the norms of every layer and the final one).
      if (mc.arch != "llama")
        fail("--trainable-extra is implemented for Llama-family models; " + model_path + " is " +
             mc.arch);
      std::vector<std::string> m = acfg.modules_to_save.value_or(std::vector<std::string>{});
      auto add = [&m](const char* n) {
        if (std::find(m.begin(), m.end(), n) == m.end()) m.push_back(n);
      };
      for (const auto& e : p.trainable_extra) {
        if (e == "embed") {
          add("embed_tokens");
        } else if (e == "norm") {
          add("input_layernorm");
          add("post_attention_layernorm");
          add("norm");
        } else {
          fail("--trainable-extra '" + e + "': expected embed and/or norm (comma-separated)");
        }
      }
      acfg.modules_to_save = m;
    }
    if (method == "adalora") {  // PEFT AdaLoraConfig; total_step = this run's optimizer steps
      acfg.peft_type = "ADALORA";
      acfg.init_r = p.init_r;
      acfg.target_r = p.target_r;
      acfg.total_step = total_optimizer_steps(tr.size(), to);
      const peft::AdaloraSchedule sched = peft::adalora_default_schedule(acfg.total_step);
      acfg.tinit = p.tinit == -1 ? sched.tinit : p.tinit;  // -1: scaled to this run's steps
      acfg.tfinal = p.tfinal == -1 ? sched.tfinal : p.tfinal;
      acfg.deltaT = p.delta_t == -1 ? sched.deltaT : p.delta_t;
      acfg.beta1 = p.beta1;
      acfg.beta2 = p.beta2;
      acfg.orth_reg_weight = p.orth_reg_weight;
    }
    // init_lora_weights as PEFT writes it (true|false|gaussian|pissa|pissa_niter_K|olora), read
    // by peft's own parser so that the CLI and adapter_config.json agree.
    peft::set_init_lora_weights(acfg, p.init_lora_weights, "--init-lora-weights");
    acfg.validate("train options");
    J.pm = std::make_unique<peft::PeftModel>(model, acfg, p.seed);
    J.params = J.pm->trainable_parameters();
    if (method == "adalora")
      J.alloc = std::make_unique<peft::RankAllocator>(J.pm->config(), J.pm->adalora_layers());
  } else {
    model.set_trainable(false);
    for (auto& [n, prm] : model.named_parameters()) {
      bool take;
      if (method == "head") {
        take = n.rfind("classifier", 0) == 0 || n.rfind("pre_classifier", 0) == 0;
      } else {
        take = p.train_modules.empty();
        for (auto& s : p.train_modules) take = take || n.find(s) != std::string::npos;
        if (!lm && n.rfind("classifier", 0) == 0) take = true;  // a new head must learn
      }
      if (take && prm->value.dtype() == tensor::DType::F32) {
        prm->set_trainable(true);
        J.params.emplace_back(n, prm);
      }
    }
    if (J.params.empty()) fail("--train-modules matched no parameter");
  }

  json cfg = run_params_to_json(p);
  cfg["task"] = task;
  cfg["lr"] = to.lr;
  if (adapter_method) cfg["adapter"] = peft::config_to_json(acfg);
  to.config_json = cfg.dump();
  J.task_info = {{"task", task},
                 {"method", method},
                 {"model", p.model},
                 {"labels", label_names},
                 {"max_length", p.max_length},
                 {"block_size", p.block_size},
                 {"chat_template", p.chat_template},
                 {"quantize", p.quantize}};
  if (!rope_note.is_null()) J.task_info["rope"] = rope_note;
  Impl* impl = &J;
  to.save_weights = [impl](const std::string& dir) {
    if (impl->pm) impl->pm->save_pretrained(dir);
    io::write_json_file(dir + "/lorafit_task.json", impl->task_info);
    if (impl->alloc)
      io::write_safetensors(dir + "/adalora_state.safetensors", impl->alloc->state());
  };
  if (J.alloc) {
    // AdaLoRA inside the loop, as PEFT documents it: the orthogonal regularization joins the
    // loss (its gradient before clipping); after each optimizer step the allocator updates the
    // importance and masks lora_E; the saved folder is pruned by the latest rank_pattern.
    std::vector<peft::SVDLinear*> svd;
    for (auto& [path, l] : J.pm->adalora_layers()) svd.push_back(l);
    const double orth = acfg.orth_reg_weight;
    to.after_backward = [svd, orth]() { return peft::adalora_orth_reg(svd, orth, 1.0); };
    to.after_step = [impl](int64_t step) {
      if (impl->alloc->update_and_allocate(step).new_pattern)
        impl->pm->set_adalora_rank_pattern(impl->alloc->rank_pattern());
    };
    if (resume) {
      const std::string sp = p.resume + "/adalora_state.safetensors";
      if (!fs::exists(sp))
        fail(p.resume + ": no adalora_state.safetensors (not an AdaLoRA checkpoint)");
      J.alloc->load_state(io::SafetensorsFile::open(sp), sp);
      if (!J.alloc->rank_pattern().empty()) J.pm->set_adalora_rank_pattern(J.alloc->rank_pattern());
    }
  }

  info.model_path = model_path;
  info.arch = mc.arch;
  info.task = task;
  info.method = method;
  info.lm = lm;
  info.lr = to.lr;
  info.labels = label_names;
  for (auto& [n, prm] : J.params) info.trainable_params += prm->value.numel();
  info.total_params = J.pm ? J.pm->count_parameters().total : model.num_parameters();
  to.total_params = info.total_params;
  info.n_train = tr.size();
  info.n_val = va.size();
  for (auto& s : tr) info.train_tokens += static_cast<int64_t>(s.ids.size());
  // Only now, with every option and file checked, may an old output folder go.
  // Rank 0 alone removes and writes; the others wait so that none sees a half-removed folder.
  if (world().is_root()) check_output_dir(p.output, p.overwrite, resume, true);
  world().barrier("the start-of-training barrier");
  return job;
}

JobResult TrainingJob::run() {
  Impl& J = *impl_;
  Task t{J.lm->model.get(), J.info.lm};
  JobResult r;
  r.summary = run_training(t, J.params, J.tr, J.va, pad_id_of(J.lm->tokenizer), J.to, J.p.resume);
  r.final_dir = J.p.output + "/final";
  if (J.alloc) {
    for (auto& [k, m] : J.alloc->rank_pattern())
      r.adalora_ranks.push_back(std::count(m.begin(), m.end(), true));
    r.adalora_target_budget = J.alloc->target_budget();
  }
  return r;
}

JobResult run_job(const RunParams& params) {
  return TrainingJob::prepare(params)->run();
}

}  // namespace lorafit::train
