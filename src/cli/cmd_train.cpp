// lorafit train: maps the options onto train::RunParams, runs the library's training job and
// prints what it did. Everything else (data, model, adapter, hooks, run folder) is the library's.
#include <cstdio>
#include <string>
#include <vector>

#include "cli/cli.h"
#include "lorafit/kernels.h"
#include "lorafit/train.h"

namespace train = lorafit::train;
using namespace lorafit::cli;

namespace {

const std::vector<OptSpec> kTrainOpts = {
    {"config", "str", "", "JSON or YAML (.yaml/.yml) file of options (keys as the flags, - or _)"},
    {"model", "str", "",
     "model folder (config.json + safetensors), .gguf, or a folder holding one .gguf (required)"},
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
     "adapter init as PEFT's init_lora_weights: true | false | gaussian | pissa | pissa_niter_K | "
     "olora"},
    {"init-r", "int", "12", "AdaLoRA: initial rank of every module (--method adalora)"},
    {"target-r", "int", "8", "AdaLoRA: average rank the budget shrinks to"},
    {"tinit", "int", "-1",
     "AdaLoRA: first steps at the full budget (-1: 12% of the run's steps, the AdaLoRA paper's "
     "SST-2 fraction; PEFT's default is 0)"},
    {"tfinal", "int", "-1",
     "AdaLoRA: last steps with the final mask frozen (-1: 44% of the run's steps, as the paper's "
     "SST-2 run; PEFT's default is 0)"},
    {"delta-t", "int", "-1",
     "AdaLoRA: steps between two reallocations, PEFT deltaT (-1: steps/500, at least 1, as the "
     "paper's 100 of 50,520; PEFT's default is 1)"},
    {"beta1", "num", "0.85", "AdaLoRA: EMA factor of the sensitivity"},
    {"beta2", "num", "0.85", "AdaLoRA: EMA factor of the uncertainty"},
    {"orth-reg-weight", "num", "0.1",
     "AdaLoRA: weight of the orthogonal regularization added to the loss (the paper's GLUE "
     "value; PEFT's default is 0.5)"},
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
     "held-out part when --validation is not given (LM: the last part of the text; 0: no validation)"},
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
    {"attention", "str", "full",
     "LM training attention: full | s2 (LongLoRA's shifted sparse attention; eval is always full)"},
    {"s2-ratio", "num", "0.25", "--attention s2: group size as a fraction of the block"},
    {"quantize", "str", "none",
     "quantize the base's layer Linears on load (QLoRA): none | nf4 | nf4-dq | fp4 | q8_0 | "
     "q4_0 | q4_1 (a Hugging Face folder; a GGUF keeps its types)"},
    {"rope-scaling", "str", "",
     "extend a Llama model's context: TYPE:FACTOR, TYPE linear | dynamic | yarn | llama3 (e.g. "
     "linear:2); kept with the adapter, applied again by eval, generate and merge"},
    {"gradient-checkpointing", "bool", "false",
     "keep only each layer's input and re-run the layer in backward (same gradients, "
     "less memory, about one more forward of time)"},
    {"trainable-extra", "list", "",
     "Llama LoRA: also train embed (token embeddings) and/or norm (every RMSNorm), as LongLoRA; "
     "saved as PEFT modules_to_save (a llama.cpp LoRA GGUF cannot hold them)"},
    kComputeDtypeOpt,
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

Example (SST-2 with MiniLM, the main job: about 50 s of training on an idle 2-core machine;
the data from `bash tools/fetch_data.sh`):
  lorafit train --model models/all-MiniLM-L6-v2 --train data/sst2/train.tsv \
      --validation data/sst2/dev.tsv --output runs/sst2 --max-steps 300
)";

train::RunParams run_params(const Options& o) {
  train::RunParams p;
  p.model = o.str("model");
  p.train_data = o.str("train");
  p.validation = o.str("validation");
  p.output = o.str("output");
  p.task = o.str("task");
  p.method = o.str("method");
  p.lora_r = o.integer("lora-r");
  p.lora_alpha = o.number("lora-alpha");
  p.lora_dropout = o.number("lora-dropout");
  p.target_modules = o.list("target-modules");
  if (o.has("modules-to-save")) p.modules_to_save = o.list("modules-to-save");
  p.use_rslora = o.flag("use-rslora");
  p.use_dora = o.flag("use-dora");
  p.init_lora_weights = o.str("init-lora-weights");
  p.init_r = o.integer("init-r");
  p.target_r = o.integer("target-r");
  p.tinit = o.integer("tinit");
  p.tfinal = o.integer("tfinal");
  p.delta_t = o.integer("delta-t");
  p.beta1 = o.number("beta1");
  p.beta2 = o.number("beta2");
  p.orth_reg_weight = o.number("orth-reg-weight");
  p.train_modules = o.list("train-modules");
  if (!o.str("lr").empty()) p.lr = o.number("lr");
  p.loraplus_ratio = o.number("loraplus-ratio");
  p.weight_decay = o.number("weight-decay");
  p.adam_beta1 = o.number("adam-beta1");
  p.adam_beta2 = o.number("adam-beta2");
  p.adam_eps = o.number("adam-eps");
  p.schedule = o.str("schedule");
  p.warmup_ratio = o.number("warmup-ratio");
  p.warmup_steps = o.integer("warmup-steps");
  p.epochs = o.integer("epochs");
  p.max_steps = o.integer("max-steps");
  p.max_train_samples = o.integer("max-train-samples");
  p.batch_size = o.integer("batch-size");
  p.grad_accum = o.integer("grad-accum");
  p.max_grad_norm = o.number("max-grad-norm");
  p.max_length = o.integer("max-length");
  p.block_size = o.integer("block-size");
  p.chat_template = o.str("chat-template");
  p.val_fraction = o.number("val-fraction");
  p.eval_every = o.integer("eval-every");
  p.eval_max_batches = o.integer("eval-max-batches");
  p.save_every = o.integer("save-every");
  p.log_every = o.integer("log-every");
  p.text_column = o.str("text-column");
  p.text_pair_column = o.str("text-pair-column");
  p.label_column = o.str("label-column");
  p.seed = static_cast<uint64_t>(o.integer("seed"));
  p.threads = o.integer("threads");
  p.resume = o.str("resume");
  p.overwrite = o.flag("overwrite");
  p.quiet = o.flag("quiet");
  p.stop_after = o.integer("stop-after");
  p.attention = o.str("attention");
  p.s2_ratio = o.number("s2-ratio");
  p.quantize = o.str("quantize");
  p.rope_scaling = o.str("rope-scaling");
  p.gradient_checkpointing = o.flag("gradient-checkpointing");
  if (o.has("trainable-extra")) p.trainable_extra = o.list("trainable-extra");
  p.compute_dtype = o.str("compute-dtype");
  return p;
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
    if (!o.positional.empty())
      throw Error("[train] unexpected argument '" + o.positional[0] + "'; options start with --");
    const train::RunParams p = run_params(o);
    auto job = train::TrainingJob::prepare(p);
    const train::JobInfo& in = job->info();
    // Several processes (mpirun): rank 0 alone prints.
    const bool root = train::process_rank() == 0;
    if (!p.quiet && root) {
      if (!in.chat_format.empty())
        std::fprintf(stderr,
                     "instruction data: chat template %s; %zu examples cut to --block-size %lld, "
                     "%zu skipped (reply beyond it)\n",
                     in.chat_format.c_str(), in.truncated, static_cast<long long>(p.block_size),
                     in.skipped);
      std::fprintf(stderr, "model %s (%s), task %s, method %s\n", in.model_path.c_str(),
                   in.arch.c_str(), in.task.c_str(), in.method.c_str());
      std::fprintf(stderr, "trainable params: %lld || all params: %lld || trainable%%: %.4f\n",
                   static_cast<long long>(in.trainable_params),
                   static_cast<long long>(in.total_params),
                   100.0 * static_cast<double>(in.trainable_params) /
                       static_cast<double>(std::max<int64_t>(1, in.total_params)));
      std::fprintf(stderr, "data: %zu train (%lld tokens), %zu validation; threads %d\n",
                   in.n_train, static_cast<long long>(in.train_tokens), in.n_val,
                   lorafit::kernels::num_threads());
    }
    train::install_sigint_handler();
    const train::JobResult r = job->run();
    const train::TrainSummary& sum = r.summary;
    if (sum.interrupted) return 130;
    if (!root) return 0;
    std::printf("steps %lld, %.1f s, %.0f tokens/s, peak memory %.0f MiB\n",
                static_cast<long long>(sum.steps), sum.seconds, sum.tokens_per_second,
                static_cast<double>(sum.peak_rss_bytes) / 1048576.0);
    if (in.n_val > 0) {
      if (in.lm)
        std::printf("validation loss %.4f, perplexity %.3f\n", sum.final_eval.loss,
                    sum.final_eval.perplexity);
      else
        std::printf("validation accuracy %.4f, F1 %.4f, MCC %.4f (%lld examples)\n",
                    sum.final_eval.cls.accuracy, sum.final_eval.cls.f1, sum.final_eval.cls.mcc,
                    static_cast<long long>(sum.final_eval.cls.n));
    }
    if (in.method == "adalora") {
      std::string ranks;
      int64_t total_r = 0;
      for (int64_t k : r.adalora_ranks) {
        total_r += k;
        ranks += (ranks.empty() ? "" : ", ") + std::to_string(k);
      }
      std::printf("adalora: rank budget %lld (target %lld), ranks per module [%s]\n",
                  static_cast<long long>(total_r), static_cast<long long>(r.adalora_target_budget),
                  ranks.c_str());
    }
    std::printf("adapter: %s\nreport: %s\n", r.final_dir.c_str(), sum.report_path.c_str());
    return 0;
  } catch (const std::exception& e) {
    if (train::process_count() > 1) {
      // The other ranks would wait for this one in the next all-reduce: end them all.
      std::fprintf(stderr, "lorafit train: rank %d of %d: %s\n", train::process_rank(),
                   train::process_count(), e.what());
      std::fflush(stderr);
      train::abort_all_processes(1);
    }
    std::fprintf(stderr, "lorafit train: %s\n", e.what());
    return 1;
  }
}
