// lorafit train: data sets and batches, AdamW, learning-rate schedules, metrics, checkpoints,
// the training loop with evaluation, and the run log / report.
//
// The trainer works on a list of trainable nn::Parameter* (named as in the model's or the
// adapter's named_parameters()), so the same loop trains LoRA adapters, a classifier head, or
// every weight (full fine-tuning). Frozen parameters get no gradient and no optimizer state.
//
// Reproducibility: one seed fixes the shuffling (per epoch: seed + epoch), the dropout stream
// (ctx.rng_counter is set from the micro-batch index), and the train/validation split, so a run
// resumed from a checkpoint ends with the same parameters as an uninterrupted one.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "lorafit/io.h"
#include "lorafit/models.h"
#include "lorafit/nn.h"
#include "lorafit/tensor.h"
#include "lorafit/text.h"

namespace lorafit::peft {
class PeftModel;  // lorafit/peft.h
}

namespace lorafit::train {

using tensor::Tensor;

// ---- data -------------------------------------------------------------------------------------

// Column names of a classification file; empty = detect. Detected text columns: sentence,
// content, text, sentence1, question, premise, review; pairs: sentence2, question2, hypothesis,
// passage; labels: label, labels, class, target.
struct ColumnOptions {
  std::string text, text_pair, label;
  size_t max_line_bytes = 1 << 20;  // a longer line is an error (a wrong file, not a sentence)
};

struct ClassificationExample {
  std::string text, text_pair;
  int32_t label = -1;  // -1: unlabeled (predict)
  int64_t line = 0;    // 1-based line in the file (JSONL/TSV/CSV), for messages
};

struct ClassificationData {
  std::string path;
  std::vector<ClassificationExample> examples;
  std::vector<std::string> label_names;  // id -> name
};

// Reads TSV (.tsv), CSV (.csv) or JSONL (.jsonl/.json) by extension. With a header (TSV/CSV) or
// keys (JSONL) naming the columns. Labels: when every label is an integer 0..n-1 they are used as
// ids; otherwise names sorted get ids 0, 1, ... `label_names` (non-empty) fixes the mapping (for a
// validation file: the training file's), and a label outside it is an error with file:line.
// require_label = false accepts files without a label column (prediction).
ClassificationData read_classification(const std::string& path, const ColumnOptions& cols,
                                       const std::vector<std::string>& label_names = {},
                                       bool require_label = true);

// A tokenized example. Classification: target = label. LM: targets[t] is the id to predict at t
// (-100 = no loss there).
struct Sample {
  std::vector<int32_t> ids, type_ids, targets;
  int32_t label = -1;
};

std::vector<Sample> tokenize_classification(const ClassificationData& data,
                                            const text::Tokenizer& tok, size_t max_length);
// Plain text -> blocks of block_size tokens (the last partial block dropped unless it is the only
// one); targets are the next token. Invalid UTF-8 is an error naming the file and line.
// With 0 < stride < block_size: sliding windows of block_size tokens starting every `stride`
// tokens (the last may be shorter), each scoring only the targets no earlier window scored (the
// others -100), as transformers' perplexity guide; every token is scored exactly once.
std::vector<Sample> read_lm_text(const std::string& path, const text::Tokenizer& tok,
                                 size_t block_size, int64_t begin_byte = 0, int64_t end_byte = -1,
                                 size_t stride = 0);
// Instruction / chat data for a causal LM: JSONL, one example per line, as
//   {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
//   {"prompt": "...", "response": "..."}           ("completion" for "response"; "system" optional)
//   {"instruction": "...", "input": "...", "output": "..."}   (Alpaca; input optional)
// rendered with `tpl` (the model's chat template) and tokenized; the loss is taken only on the
// assistant replies and the token that ends each reply (targets -100 elsewhere). Examples longer
// than max_length tokens are cut; one with no reply token left is skipped (counted in stats).
// Errors name file:line (bad JSON, missing fields, no assistant message, invalid UTF-8, a line
// longer than max_line_bytes).
struct InstructionStats {
  size_t truncated = 0, skipped = 0;
};
std::vector<Sample> read_instruction_data(const std::string& path, const text::Tokenizer& tok,
                                          const text::ChatTemplate& tpl, size_t max_length,
                                          InstructionStats* stats = nullptr,
                                          size_t max_line_bytes = 1 << 20);
// The byte offset at `fraction` of a text file, moved to the next line start (the LM split).
int64_t text_split_offset(const std::string& path, double fraction);

// Splits off the validation part: a seeded shuffle, then the last `fraction` of it.
std::pair<std::vector<Sample>, std::vector<Sample>> split_samples(std::vector<Sample> all,
                                                                  double fraction, uint64_t seed);

struct Batch {
  Tensor ids, mask, type_ids;  // I32 [B, T]
  Tensor targets;              // I32 [B] (classification) or [B, T] (LM)
  int64_t tokens = 0;          // real (unpadded) tokens
  int64_t counted = 0;         // rows that carry loss (B, or LM target tokens)
  std::vector<size_t> index;   // sample indices
};

// Pads to the longest sample in the batch (dynamic padding) with pad_id.
Batch make_batch(const std::vector<Sample>& samples, const std::vector<size_t>& index,
                 int32_t pad_id, bool lm);

// The batches of one epoch: a seeded shuffle (seed + epoch), then groups of 50 batches are sorted
// by length so that a batch holds similar lengths (length bucketing), and the batch order is
// shuffled again. shuffle = false keeps file order (evaluation).
std::vector<std::vector<size_t>> epoch_batches(const std::vector<Sample>& samples,
                                               size_t batch_size, uint64_t seed, int64_t epoch,
                                               bool shuffle);

// ---- optimisation -----------------------------------------------------------------------------

struct ParamGroup {
  std::string name;
  nn::Parameter* param = nullptr;
  float lr_mult = 1.0f;       // LoRA+: lora_B gets ratio x
  float weight_decay = 0.0f;  // decoupled; 0 for biases and norms
};

// torch.optim.AdamW: p -= lr*wd*p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g²;
// p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps).
struct AdamWOptions {
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
};

class AdamW {
 public:
  AdamW(std::vector<ParamGroup> groups, AdamWOptions opt = {});
  void step(float lr);  // one update from the current grads
  void zero_grad();
  int64_t steps() const { return t_; }
  const std::vector<ParamGroup>& groups() const { return groups_; }
  // State as named tensors ("<name>.exp_avg", "<name>.exp_avg_sq", "step").
  std::vector<std::pair<std::string, Tensor>> state() const;
  void load_state(const std::map<std::string, Tensor>& st, const std::string& origin);

 private:
  std::vector<ParamGroup> groups_;
  AdamWOptions opt_;
  std::vector<Tensor> m_, v_;
  int64_t t_ = 0;
};

// Global L2 norm of the gradients; scaled down to max_norm when larger (torch's
// clip_grad_norm_, coefficient max_norm / (norm + 1e-6)). max_norm <= 0: only measure.
double clip_grad_norm(const std::vector<ParamGroup>& groups, double max_norm);

enum class ScheduleKind { Constant, Linear, Cosine };
ScheduleKind parse_schedule(const std::string& s);
const char* schedule_name(ScheduleKind k);

// Multiplier of the base lr before update number `step` (0-based), as transformers'
// get_{constant,linear,cosine}_schedule_with_warmup: step/warmup during warmup, then 1, or a
// linear / half-cosine decay to 0 at total_steps.
float lr_multiplier(ScheduleKind kind, int64_t step, int64_t warmup_steps, int64_t total_steps);

// ---- metrics ----------------------------------------------------------------------------------

struct ClassMetrics {
  double accuracy = 0, f1 = 0, mcc = 0;  // F1: of class 1 when binary, macro otherwise
  int64_t n = 0;
};
ClassMetrics classification_metrics(const std::vector<int32_t>& pred,
                                    const std::vector<int32_t>& gold, int64_t num_labels);

// ---- run log and report -----------------------------------------------------------------------

// A run's log.jsonl, parsed. The trainer writes one JSON object per line: a "step" record per
// optimizer step, an "eval" record per evaluation and, when the run ends (finished or
// interrupted), a "summary" record with sizes, time, memory, the best evaluation and the
// configuration. A resumed run appends to the same file; a step that comes again (a run resumed
// from an older checkpoint) replaces the records from that step on.
struct StepRecord {
  int64_t step = 0, tokens = 0, epoch = 0;
  double loss = 0, lr = 0, grad_norm = 0, tokens_per_s = 0, elapsed_s = 0;
  int64_t rss_bytes = -1, peak_rss_bytes = -1;  // -1: not in the log (written before they were)
};

struct EvalRecord {
  int64_t step = 0;
  std::vector<std::pair<std::string, double>> metrics;  // in log order: loss, accuracy, ...
};

struct RunSummary {
  bool present = false;      // false: the run has not ended (or crashed): no summary record
  bool interrupted = false;  // stopped by Ctrl-C / --stop-after
  std::string finished_utc;
  int64_t steps = 0, total_steps = 0, trainable_params = 0, total_params = 0, peak_rss_bytes = 0;
  double seconds = 0, tokens_per_second = 0;
  bool lm = false;
  int64_t best_step = -1;  // -1: no evaluation
  std::vector<std::pair<std::string, double>> best;
  // The run configuration flattened to "key" / "adapter.r" -> value as text, sorted by key.
  std::vector<std::pair<std::string, std::string>> config;
  std::string config_value(const std::string& key) const;  // "" when absent
};

struct RunLog {
  std::string path;  // the log.jsonl read
  std::string name;  // how a comparison names the run (its folder)
  std::vector<StepRecord> steps;
  std::vector<EvalRecord> evals;
  RunSummary summary;
};

// Reads a log.jsonl. A line that is not a JSON object, or a record with a missing or mistyped
// field, is an Error naming the file and line ("[report] out/log.jsonl:7: ...").
RunLog read_run_log(const std::string& path);
// The run folder's log: RUN_DIR/log.jsonl (or the .jsonl file itself); a folder without one is an
// Error naming the path. The run is named after the folder.
RunLog read_run_dir(const std::string& path);

// A self-contained HTML page (inline SVG charts and CSS, no script, nothing fetched): for one run
// its header, charts (training and evaluation loss on one set of axes, evaluation metrics,
// learning rate, gradient norm, tokens/s and resident memory over time), best evaluation and
// configuration; for several runs the same curves overlaid per metric, a table of their best
// evaluations and their configurations side by side with the differences marked.
std::string report_html(const std::vector<RunLog>& runs, const std::string& title = "");
// report_html written atomically to `path`.
void write_report_html(const std::string& path, const std::vector<RunLog>& runs,
                       const std::string& title = "");

// ---- model task -------------------------------------------------------------------------------

// Loss and gradients for one batch on a BERT classifier or a causal LM. Used by the trainer and
// by `lorafit eval`. Returns the mean loss over batch.counted; backward (when dloss != 0)
// accumulates gradients scaled by dloss.
struct Task {
  models::Model* model = nullptr;
  bool lm = false;
  // probs_out: the softmax probabilities of every row, [rows × classes or vocab], replaced.
  float forward_backward(nn::Context& ctx, const Batch& b, float dloss,
                         std::vector<float>* probs_out = nullptr);
};

// ---- training ---------------------------------------------------------------------------------

struct TrainOptions {
  std::string output_dir;
  int64_t epochs = 1;
  int64_t max_steps = 0;  // > 0: stop after this many optimizer steps (overrides epochs)
  size_t batch_size = 16;
  int64_t grad_accum = 1;
  float lr = 5e-4f;
  float weight_decay = 0.0f;
  AdamWOptions adam;
  ScheduleKind schedule = ScheduleKind::Linear;
  double warmup_ratio = 0.06;
  int64_t warmup_steps = -1;  // >= 0 overrides warmup_ratio
  double max_grad_norm = 1.0;
  float loraplus_ratio = 1.0f;  // lr multiplier of lora_B parameters
  int64_t eval_every = 0;       // steps; 0 = only at the end
  int64_t save_every = 0;       // steps; 0 = only at the end (and on SIGINT)
  int64_t log_every = 10;
  uint64_t seed = 42;
  int64_t eval_batches = 0;     // > 0: limit each evaluation to this many batches
  bool progress_bar = true;     // when stderr is a TTY
  bool quiet = false;
  std::string config_json;      // the run configuration, for the checkpoint and the report
  // Saves the trainable state (adapter folder / safetensors) into a folder; set by the CLI.
  std::function<void(const std::string& dir)> save_weights;
  int64_t stop_after = 0;       // testing: stop (with a checkpoint) after this many steps
  int64_t total_params = 0;     // for the report's trainable %; 0 = the model's own count
  // Hooks for methods that act inside a step (AdaLoRA), in PEFT's documented order
  // (loss.backward(); optimizer.step(); update_and_allocate(step); zero_grad()):
  // after_backward runs once per optimizer step, after every micro-batch's backward and before
  // clipping; it may add to the gradients (a regularizer) and returns the loss term it added.
  // after_step(step) runs after the optimizer update and before zero_grad; step is 1-based.
  std::function<double()> after_backward;
  std::function<void(int64_t step)> after_step;
};

// The number of optimizer steps run_training makes: max_steps when > 0, else epochs ×
// max(1, ⌈n_train / batch_size⌉ / grad_accum) (AdaLoRA's total_step needs it up front).
int64_t total_optimizer_steps(size_t n_train, const TrainOptions& opt);

struct EvalResult {
  double loss = 0;
  double perplexity = 0;  // LM
  ClassMetrics cls;       // classification
  int64_t tokens = 0;     // real tokens of the evaluated batches (padding not counted)
  double seconds = 0;     // wall time of the batches (forward only; no loading or tokenizing)
};

// arena: activations come from it (reset after each batch) instead of a fresh one; the trainer
// passes its own, so an evaluation reuses the training step's memory instead of adding to it.
EvalResult evaluate(Task& task, const std::vector<Sample>& samples, size_t batch_size,
                    int32_t pad_id, int64_t max_batches = 0,
                    std::vector<std::vector<float>>* probs = nullptr,
                    tensor::Arena* arena = nullptr);

struct TrainSummary {
  int64_t steps = 0;
  double seconds = 0, tokens_per_second = 0;
  int64_t peak_rss_bytes = 0;
  EvalResult final_eval;
  std::optional<EvalResult> best_eval;
  int64_t best_step = 0;
  bool interrupted = false;
  std::string report_path;
};

// Runs training. params: the trainable parameters by name. `resume`: a checkpoint folder to
// continue from (its optimizer state, step, data position and RNG). Writes into output_dir:
// log.jsonl, checkpoint/ (latest, for --resume), best/ (best evaluation), final/, report.html.
TrainSummary run_training(Task& task, const nn::NamedParameters& params,
                          const std::vector<Sample>& train_set, const std::vector<Sample>& val_set,
                          int32_t pad_id, const TrainOptions& opt,
                          const std::string& resume = "");

// Trainable parameter tensors <-> a safetensors file (names as given).
void save_parameters(const std::string& path, const nn::NamedParameters& params);
void load_parameters(const std::string& path, const nn::NamedParameters& params);

// Peak resident memory of this process (getrusage maxrss), bytes.
int64_t peak_rss_bytes();

// Installs a SIGINT handler that asks the running training to save and stop; a second Ctrl-C
// exits at once.
void install_sigint_handler();

// The processes of a data-parallel run (`mpirun -np N lorafit train ...`, built with LORAFIT_MPI):
// this one's rank and their number; 0 and 1 without MPI. Rank 0 alone prints and writes files.
int process_rank();
int process_count();
// Ends every process of the run (MPI_Abort under mpirun, exit otherwise).
[[noreturn]] void abort_all_processes(int code);

// ---- models and run folders ------------------------------------------------------------------

// A model and its tokenizer, opened the one way every command does: models::resolve_model_path
// (a folder with config.json, a .gguf, or a folder holding exactly one .gguf), the tokenizer
// from the GGUF's metadata or the folder's tokenizer.json.
struct LoadedModel {
  std::string path;  // the resolved folder or .gguf
  text::Tokenizer tokenizer;
  std::unique_ptr<models::Model> model;
};
LoadedModel open_model(const std::string& path, const models::LoadOptions& opt = {});
text::Tokenizer open_tokenizer(const std::string& resolved_path);
// A Llama-family model (GGUF, or a folder whose config.json says model_type "llama").
bool is_causal_lm_path(const std::string& resolved_path);
// The padding id batches use: pad, else eos, else 0.
int32_t pad_id_of(const text::Tokenizer& tok);

// Defaults that live here once: adapter targets by architecture (BERT query,value; DistilBERT
// q_lin,v_lin; Llama q_proj,v_proj) and the learning rate by method and task (full 5e-5;
// adapters 3e-3 for classification, 5e-4 for LM; docs/RESULTS.md).
std::vector<std::string> default_target_modules(const std::string& arch);
double default_learning_rate(const std::string& method, bool lm);

// lorafit_task.json of a run folder's final/, best/ or checkpoint/ (task, method, model, labels,
// max_length, block_size, chat_template), read from `dir` or its run's final/; {} when none.
io::json read_task_info(const std::string& dir);

// Applies the weights a run trained onto `model`: a PEFT folder (a run's final/, best/,
// checkpoint/ or any adapter folder) returns its PeftModel; a --method full/head folder (only
// trainable.safetensors) is copied into the model's parameters and returns null.
std::unique_ptr<peft::PeftModel> load_run_weights(models::Model& model, const std::string& dir);

// --rope-scaling TYPE:FACTOR on a Llama model (models::parse_rope_scaling_option over its
// context); returns the note lorafit_task.json keeps under "rope" ({rope_scaling,
// max_position_embeddings, option}). A model that already has a scaling is refused.
io::json apply_rope_scaling(models::Model& model, const std::string& spec);
// Applies the "rope" note of a run's lorafit_task.json (`info`, read from `dir`) to the base model;
// nothing when there is none or the model already has that scaling (a merged model).
void apply_rope_note(models::Model& model, const io::json& info, const std::string& dir);

// ---- the training job ------------------------------------------------------------------------

// Everything `lorafit train` takes, with its defaults (the flag --x-y is the field x_y).
struct RunParams {
  std::string model;            // model folder or .gguf (required)
  std::string train_data;       // .tsv/.csv/.jsonl classification; .txt or instruction .jsonl LM
  std::string validation;       // none: split off val_fraction of the training data
  std::string output;           // the run folder (required)
  std::string task = "auto";    // classification | lm | auto (BERT: classification, Llama: lm)
  std::string method = "lora";  // lora | adalora | full | head
  // LoRA / DoRA (method lora; dropout and targets also adalora)
  int64_t lora_r = 8;
  double lora_alpha = 16, lora_dropout = 0.1;
  std::vector<std::string> target_modules;                  // empty: default_target_modules(arch)
  std::optional<std::vector<std::string>> modules_to_save;  // nullopt: PEFT's (classifier)
  bool use_rslora = false, use_dora = false;
  std::string init_lora_weights = "true";  // as PEFT writes it: true|false|gaussian|pissa|olora
  // AdaLoRA (method adalora)
  // tinit, tfinal, delta_t -1: scaled to the run's steps (peft::adalora_default_schedule);
  // orth_reg_weight 0.1: the AdaLoRA paper's GLUE value (PEFT's default is 0.5).
  int64_t init_r = 12, target_r = 8, tinit = -1, tfinal = -1, delta_t = -1;
  double beta1 = 0.85, beta2 = 0.85, orth_reg_weight = 0.1;
  std::vector<std::string> train_modules;  // method full: only names containing one of these
  // optimisation
  std::optional<double> lr;  // nullopt: default_learning_rate(method, lm)
  double loraplus_ratio = 1, weight_decay = 0.01;
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_eps = 1e-8;
  std::string schedule = "linear";  // constant | linear | cosine
  double warmup_ratio = 0.06;
  int64_t warmup_steps = -1;  // >= 0 overrides warmup_ratio
  int64_t epochs = 1, max_steps = 0, max_train_samples = 0;
  int64_t batch_size = 32, grad_accum = 1;
  double max_grad_norm = 1.0;
  // data
  int64_t max_length = 128, block_size = 128;
  std::string chat_template = "auto";  // auto | chatml | llama3 | plain
  double val_fraction = 0.1;
  std::string text_column, text_pair_column, label_column;
  // cadence
  int64_t eval_every = 0, eval_max_batches = 0, save_every = 0, log_every = 10;
  uint64_t seed = 42;
  int64_t threads = 0;  // 0: all cores
  std::string resume;   // a run's checkpoint/ folder to continue
  bool overwrite = false, quiet = false;
  int64_t stop_after = 0;  // stop (with a checkpoint) after N steps of this call; for tests
  // LongLoRA's shifted sparse attention in training (LM only): "full" | "s2", groups of
  // round(T * s2_ratio) tokens; evaluation and generation always attend fully.
  std::string attention = "full";
  double s2_ratio = 0.25;
  // QLoRA: quantize the base's layer Linear weights on load (models::LoadOptions::quantize:
  // none | nf4 | nf4-dq | fp4 | q8_0 | q4_0 | q4_1); recorded in lorafit_task.json, so eval,
  // predict and generate load the same base by default.
  std::string quantize = "none";
  // RoPE scaling to extend a Llama model's context, TYPE:FACTOR (linear:2, dynamic:2, yarn:4,
  // llama3:8; "" = the model's own): recorded in the adapter's lorafit_task.json, which eval,
  // generate and merge apply again.
  std::string rope_scaling;
  // Activation recomputation per layer (Llama, BERT family): keep each layer's input only, re-run the layer
  // forward in backward; same gradients, a fraction of the activation memory.
  bool gradient_checkpointing = false;
  // LongLoRA's trainable extras beside the adapter: "embed" (the token embeddings) and/or "norm"
  // (every RMSNorm), added to modules_to_save (PEFT trains and saves them whole).
  std::vector<std::string> trainable_extra;
  // perf: the frozen products x·Wᵀ and dy·W in "fp32" | "bf16" (BF16 operands, fp32 sums;
  // adapters, gradients and optimizer stay fp32) | "auto" (bf16 where the CPU has it).
  std::string compute_dtype = "fp32";
};

// The effective configuration as JSON (keys as the fields; "train" for train_data), written
// into checkpoint/trainer_state.json and the report.
io::json run_params_to_json(const RunParams& p);
// The inverse (unknown keys ignored; a wrong type names the key and `origin`).
RunParams run_params_from_json(const io::json& j, const std::string& origin);
// The parameters of the run that wrote `checkpoint_dir` (its trainer_state.json), set to resume
// from there: resume = checkpoint_dir, overwrite and stop_after cleared. run_job() on them
// continues that run exactly (AdaLoRA's allocator state included).
RunParams resume_params(const std::string& checkpoint_dir);

// What prepare() found, for display.
struct JobInfo {
  std::string model_path, arch, task, method;
  bool lm = false;
  float lr = 0;
  int64_t trainable_params = 0, total_params = 0, train_tokens = 0;
  size_t n_train = 0, n_val = 0;
  std::vector<std::string> labels;
  // instruction data: the chat template used and examples cut / skipped at block_size
  std::string chat_format;
  size_t truncated = 0, skipped = 0;
};

struct JobResult {
  TrainSummary summary;
  std::string final_dir;
  // AdaLoRA: kept rank of each module and the target budget (empty / 0 otherwise).
  std::vector<int64_t> adalora_ranks;
  int64_t adalora_target_budget = 0;
};

// A prepared run: model, tokenizer, data, adapter, optimizer groups, AdaLoRA allocator and
// hooks; resume included. prepare() checks every option and file before it touches an existing
// output folder (removed only with overwrite). run() writes the run folder:
//   final/, best/, checkpoint/   each a PEFT folder (adapter_config.json +
//                                adapter_model.safetensors; none for full/head) with
//                                trainable.safetensors, lorafit_task.json and, for AdaLoRA,
//                                adalora_state.safetensors; checkpoint/ adds optimizer.safetensors
//                                and trainer_state.json
//   log.jsonl, report.html
class TrainingJob {
 public:
  static std::unique_ptr<TrainingJob> prepare(const RunParams& params);
  ~TrainingJob();
  const JobInfo& info() const;
  JobResult run();

 private:
  TrainingJob();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// prepare + run.
JobResult run_job(const RunParams& params);

// ---- evaluation, prediction, generation --------------------------------------------------------

struct EvalParams {
  std::string model;    // base model (required)
  std::string adapter;  // a run's final/ or best/, or a PEFT folder ("" = the base model)
  std::string data;     // required
  std::string task = "auto";
  int64_t batch_size = 32;
  int64_t max_length = 0;     // 0: as trained, else 128
  int64_t block_size = 0;     // 0: as trained, else 128
  std::string chat_template;  // "": as trained, else auto
  std::string text_column, text_pair_column, label_column;
  std::string quantize;  // models::LoadOptions::quantize; "": as the adapter was trained, else none
  std::string rope_scaling;  // TYPE:FACTOR on the base model ("": as trained, else the model's)
  int64_t stride = 0;        // LM plain text: sliding windows every `stride` tokens (0: blocks)
  std::string compute_dtype = "fp32";  // as RunParams::compute_dtype
};

struct EvalReport {
  bool lm = false;
  EvalResult result;
  // LM: blocks (plain text) or examples (instruction data) and the tokens with a loss
  size_t units = 0;
  int64_t counted_tokens = 0;
  bool plain_text = false;
};
EvalReport evaluate_file(const EvalParams& p);

struct Prediction {
  int64_t line = 0;  // in the data file
  std::string label;
  std::vector<float> probabilities;
};
struct PredictReport {
  std::vector<std::string> labels;
  std::vector<Prediction> rows;
  int64_t tokens = 0;  // as EvalResult: the forward's real tokens and its wall time
  double seconds = 0;
};
PredictReport predict_file(const EvalParams& p);
// TSV (line, prediction, p_<label>...) or JSONL, by the path's extension (.jsonl).
std::string format_predictions(const PredictReport& r, bool jsonl);

struct GenerateParams {
  std::string model, adapter, prompt;
  models::GenerateOptions sampling;
  bool chat = false;   // the prompt is a user message in the chat template
  std::string system;  // with chat
  std::string chat_template = "auto";
  std::string quantize;  // as EvalParams::quantize
};
// Generates text; on_text(piece) receives the continuation as it grows (decoded whole each time,
// so BPE bytes that join are shown once complete). Returns the whole continuation.
std::string generate_text(const GenerateParams& p,
                          const std::function<void(const std::string&)>& on_text = {});

}  // namespace lorafit::train
