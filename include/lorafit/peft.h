// lorafit peft: LoRA adapters exactly as Hugging Face PEFT builds, trains, saves and merges them.
//
//   AdapterConfig      PEFT's LoraConfig field names and defaults; adapter_config.json read/write
//   (internal)         one adapter layer per targeted nn::Linear (an nn::LinearAdapter), LoRA:
//                        y = x Wᵀ + b + s · dropout(x) Aᵀ Bᵀ,  s = alpha / r  (rsLoRA: alpha / √r)
//                      A = lora_A.weight [r, in], B = lora_B.weight [out, r], both F32 trainable;
//                      DoRA and AdaLoRA likewise (src/peft/layers.h).
//   RankAllocator      AdaLoRA's rank budget (peft_type "ADALORA"; section at the end of this file)
//   PeftModel          injects named adapters into a models::Model by target_modules, freezes the
//                      base, lists trainable parameters, saves/loads PEFT adapter folders,
//                      merges / unmerges / merge_and_unload, combines adapters
//                      (add_weighted_adapter: cat / linear / svd).
//   MixedBatch         inference where each example of a batch names its adapter (or the base).
//   save_llama_cpp_lora / save_merged_gguf / save_merged_hf   llama.cpp LoRA GGUF, merged GGUF
//                      or Hugging Face folder.
//
// The model's own forward/backward is unchanged: nn::Linear calls its attached adapters, so
// training runs model.forward → loss → model.backward and then steps PeftModel's trainable
// parameters (every other parameter is frozen and has no gradient buffer).
//
// Names: parameters are listed with the keys of adapter_model.safetensors (no adapter name):
//   base_model.model.<module path>.lora_A.weight, ...lora_B.weight,
//   base_model.model.<modules_to_save path>.weight / .bias
// Errors are lorafit::Error starting with "[peft]" and naming the file, field or tensor.
#pragma once

#include <cstdint>
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

namespace lorafit::peft {

using tensor::Shape;
using tensor::Tensor;

// ---- configuration ---------------------------------------------------------------------------

// PEFT's init_lora_weights: true (Kaiming-uniform A, B = 0), false (A and B both as nn.Linear's
// default init, so the adapter is not a no-op; for tests), "gaussian" (A ~ N(0, 1/r²), B = 0),
// "pissa" / "pissa_niter_K" (principal singular vectors of W; the base becomes W − s·B A),
// "olora" (QR of W; same), "orthogonal" (PEFT's orthogonal_init, even r), and three that lorafit
// loads but does not make (the PeftModel constructor refuses them): "eva" (PEFT's update_layer:
// B = 0; its data-driven step is separate), "mica" (B = the r last left singular vectors of W,
// A = 0; PEFT freezes B in training), "lora_ga" (PEFT's load falls back to true: no gradients).
// Pissa and Olora change the base: loading such a folder runs the init on the base once, then
// loads the saved A and B (as PEFT). "loftq" and "corda" are refused by name (config.cpp).
enum class LoraInit { Default, Random, Gaussian, Pissa, Olora, Eva, Orthogonal, Mica, LoraGa };
const char* lora_init_name(LoraInit init);  // "true", "false", "gaussian", "pissa", "olora", ...

// PEFT LoraConfig (peft 0.21 names and defaults). Only the fields below are read or written.
struct AdapterConfig {
  std::string peft_type = "LORA";  // "LORA" or "ADALORA"
  std::string task_type;           // "SEQ_CLS", "CAUSAL_LM", ... ("" = null)
  std::string base_model_name_or_path;
  int64_t r = 8;
  double lora_alpha = 8.0;
  double lora_dropout = 0.0;
  // target_modules as PEFT takes it: a list of names, each matching a module path equal to it
  // or ending in "." + name; or (target_modules_regex) one regex that must match the whole path;
  // or the single name "all-linear": every Linear except the output head (lm_head / classifier
  // for seq-cls). Empty list = error at injection (PEFT would guess from the architecture).
  std::vector<std::string> target_modules;
  bool target_modules_regex = false;  // true: target_modules[0] is a regex (JSON string form)
  // Only layers with these indices (module path "...<layers_pattern>.<i>.<...>"; pattern empty =
  // any of "layer", "layers", "h", "blocks"). Empty = all layers.
  std::vector<int64_t> layers_to_transform;
  std::vector<std::string> layers_pattern;
  // Per-module overrides; keys match as regex (.*\.)?(KEY)$ against the module path, first
  // match (in this order) wins.
  std::vector<std::pair<std::string, int64_t>> rank_pattern;
  std::vector<std::pair<std::string, double>> alpha_pattern;
  // Modules made fully trainable and saved whole (e.g. "classifier"). nullopt = JSON null.
  // For task_type SEQ_CLS PEFT adds the classifier head itself (see PeftModel).
  std::optional<std::vector<std::string>> modules_to_save;
  std::string bias = "none";  // only "none" is supported; others are refused
  bool use_rslora = false;
  bool use_dora = false;      // DoRA: adapters are DoraLinear (magnitude vector per row)
  bool fan_in_fan_out = false;  // must be false (no Conv1D models here)
  LoraInit init_lora_weights = LoraInit::Default;
  // "pissa_niter_K": K (PEFT's randomized svd_lowrank iterations; saved back as written). -1 =
  // "pissa". lorafit always takes the exact SVD (docs/PEFT_COMPAT.md: PEFT's randomized result
  // depends on torch's global RNG, so even PEFT's own loads of one folder differ).
  int64_t pissa_niter = -1;
  // Does this init rewrite the base weight (PiSSA, OLoRA)?
  bool init_changes_base() const {
    return init_lora_weights == LoraInit::Pissa || init_lora_weights == LoraInit::Olora;
  }
  bool inference_mode = false;

  // AdaLoRA (peft_type "ADALORA", PEFT AdaLoraConfig; see the AdaLoRA section below). Every
  // target starts at init_r (r, rank_pattern and alpha_pattern above are not used).
  int64_t target_r = 8, init_r = 12, tinit = 0, tfinal = 0, deltaT = 1;
  double beta1 = 0.85, beta2 = 0.85, orth_reg_weight = 0.5;
  int64_t total_step = 0;  // required > 0, as PEFT
  // AdaLoRA's rank_pattern: "<module path>.lora_E" -> keep mask (length init_r). Set by the rank
  // allocator; save_pretrained keeps only the kept rows/columns; empty = JSON null (unpruned).
  std::vector<std::pair<std::string, std::vector<bool>>> adalora_rank_pattern;
  bool is_adalora() const { return peft_type == "ADALORA"; }

  // Scaling for a module with rank r and alpha a: a / r, or a / √r with use_rslora.
  double scaling(int64_t rank, double alpha) const;
  // Rank and alpha for a module path after rank_pattern / alpha_pattern.
  int64_t rank_for(const std::string& module_path) const;
  double alpha_for(const std::string& module_path) const;
  // Throws "[peft] <where>: field 'r': must be positive, got 0" etc.
  void validate(const std::string& where = "adapter_config.json") const;
};

// Sets cfg.init_lora_weights (and pissa_niter) from PEFT's string form: "true", "false",
// "gaussian", "pissa", "pissa_niter_K", "olora", "eva", "orthogonal", "mica", "lora_ga"; refuses
// "loftq", "corda"
// and unknown values by name ("<where>: field 'init_lora_weights': ...").
void set_init_lora_weights(AdapterConfig& cfg, const std::string& value, const std::string& where);
std::string init_lora_weights_str(const AdapterConfig& cfg);  // as saved ("pissa_niter_4", ...)

// JSON <-> config. from_json validates and names the field in errors ("where" names the source,
// usually the file path). to_json writes only keys PEFT knows.
AdapterConfig config_from_json(const io::json& j, const std::string& where);
io::json config_to_json(const AdapterConfig& cfg);
AdapterConfig read_adapter_config(const std::string& adapter_dir);  // <dir>/adapter_config.json
// Outputs of the classification head saved in <dir>/adapter_model.safetensors (modules_to_save
// classifier / classifier.out_proj / score), 0 when the adapter keeps no head. Load the base with
// this many labels so that the head fits.
int64_t adapter_num_labels(const std::string& adapter_dir);

// Does a target_modules entry / the config select this Linear? (head = the model's output head)
bool target_matches(const AdapterConfig& cfg, const std::string& module_path, bool is_head);

// The adapter layers (LoraLinear, DoraLinear, SVDLinear: one per targeted Linear) are internal
// (src/peft/layers.h); the API below hands them out only as opaque pointers.
class LoraLinear;
class SVDLinear;

// ---- the adapted model -----------------------------------------------------------------------

struct ParameterCount {
  int64_t trainable = 0;
  int64_t total = 0;  // as PEFT counts (base + adapters + modules_to_save copies)
  double percent() const { return total ? 100.0 * static_cast<double>(trainable) / total : 0.0; }
  // PEFT's print_trainable_parameters line:
  // "trainable params: 294,912 || all params: 109,778,690 || trainable%: 0.2686"
  std::string str() const;
};

// One model with one or more named adapters. The Model is not owned and must outlive this; its
// Linear modules point at adapters owned here. The destructor leaves the model as it was (merged
// deltas removed, adapters detached, modules_to_save originals back) unless merge_and_unload()
// ran.
//
// Training with it (what train/ does):
//   PeftModel pm(*model, cfg, seed);              // or from_pretrained(..., is_trainable = true)
//   auto params = pm.trainable_parameters();      // A, B (+ modules_to_save), PEFT key names
//   loop: pm.zero_grad(); model forward (ctx.training = true for lora_dropout) -> loss ->
//         model backward (Linear calls the LoRA backward) -> optimizer step on params
//   pm.save_pretrained(dir);                      // PEFT folder; save_llama_cpp_lora for GGUF
class PeftModel {
 public:
  // Injects adapter `name` into `model` per cfg (validated), initialized from `seed`, and makes
  // it the active adapter. Every base parameter is frozen; the adapter's A, B and its
  // modules_to_save are trainable. Throws when no module matches target_modules.
  PeftModel(models::Model& model, const AdapterConfig& cfg, uint64_t seed = 0,
            const std::string& name = "default");
  // Loads a PEFT adapter folder (adapter_config.json + adapter_model.safetensors) onto `model`.
  // Trainable only when is_trainable (as PEFT). Errors name the field or tensor: unknown
  // peft_type, r = 0, target matching no module, missing / unexpected / misshapen tensors.
  static std::unique_ptr<PeftModel> from_pretrained(models::Model& model,
                                                    const std::string& adapter_dir,
                                                    const std::string& name = "default",
                                                    bool is_trainable = false);
  ~PeftModel();
  PeftModel(const PeftModel&) = delete;
  PeftModel& operator=(const PeftModel&) = delete;

  models::Model& model() { return *model_; }

  // ---- several named adapters ----
  void add_adapter(const std::string& name, const AdapterConfig& cfg, uint64_t seed = 0);
  void load_adapter(const std::string& adapter_dir, const std::string& name,
                    bool is_trainable = false);
  // Active adapters add up in forward. set_adapter makes exactly these active (and trainable
  // ones trainable, as PEFT). Throws for an unknown name.
  void set_adapter(const std::string& name);
  void set_adapters(const std::vector<std::string>& names);
  const std::vector<std::string>& active_adapters() const { return active_; }
  std::vector<std::string> adapter_names() const;
  void disable_adapters();  // base model only (modules_to_save: original weights)
  bool adapters_disabled() const { return disabled_; }
  void enable_adapters();
  void delete_adapter(const std::string& name);
  const AdapterConfig& config(const std::string& name = "") const;  // "" = first active

  // PEFT's add_weighted_adapter (combine.cpp): a new inactive adapter `new_name` combining
  // `adapters` with `weights`. combination_type "cat" (exact, rank Σ rᵢ: ΔW = Σ wᵢ·sᵢ·BᵢAᵢ),
  // "linear" (PEFT's approximation Σ√(wᵢsᵢ)Bᵢ · Σ√(wᵢsᵢ)Aᵢ, equal ranks) or "svd" (best rank
  // svd_rank approximation of Σ wᵢ·sᵢ·BᵢAᵢ; 0 = the largest rank). New config as PEFT's:
  // r = lora_alpha = new rank, union of target_modules. Scaling is applied once also with
  // rsLoRA (PEFT applies it twice there; see combine.cpp). Throws for unknown adapters, rank
  // mismatch (linear), two adapters with the same modules_to_save module, an existing new_name.
  void add_weighted_adapter(const std::vector<std::string>& adapters,
                            const std::vector<double>& weights, const std::string& new_name,
                            std::string combination_type = "svd", int64_t svd_rank = 0);

  // ---- training ----
  // Trainable parameters of the active adapter(s), named as in adapter_model.safetensors
  // (base_model.model.<path>.lora_A.weight, ...; modules_to_save .weight/.bias). Stable order.
  nn::NamedParameters trainable_parameters();
  void zero_grad();
  ParameterCount count_parameters();
  // LoRA layers of adapter `name` ("" = first active) with their module paths, in module order.
  std::vector<std::pair<std::string, LoraLinear*>> lora_layers(const std::string& name = "");
  // AdaLoRA: the SVDLinear layers of adapter `name` (empty for a LoRA adapter), and the
  // rank_pattern that save_pretrained prunes by (the RankAllocator's, set by the trainer).
  std::vector<std::pair<std::string, SVDLinear*>> adalora_layers(const std::string& name = "");
  void set_adalora_rank_pattern(const std::vector<std::pair<std::string, std::vector<bool>>>& rp,
                                const std::string& name = "");

  // ---- files ----
  // Writes <dir>/adapter_config.json and <dir>/adapter_model.safetensors (F32, metadata
  // {"format":"pt"}) for adapter `name` ("" = first active), atomically (temp folder + rename).
  void save_pretrained(const std::string& dir, const std::string& name = "") const;
  // The tensors save_pretrained writes, by key.
  std::vector<std::pair<std::string, Tensor>> adapter_state(const std::string& name = "") const;

  // ---- merging ----
  // W += s·B A for every active adapter (base weights must be F32: load with dequantize).
  void merge();
  void unmerge();  // W −= s·B A: W back within float rounding
  bool merged() const;
  // Merges the active adapters, detaches every adapter and returns the plain model (modules_to_save
  // copies stay in it). The PeftModel is empty afterwards.
  models::Model& merge_and_unload();

 private:
  struct Adapter;
  models::Model* model_;
  std::vector<std::unique_ptr<Adapter>> adapters_;
  std::vector<std::string> active_;
  bool disabled_ = false;
  // Base values of parameters that modules_to_save copies replace, restored when disabled.
  std::map<nn::Parameter*, Tensor> originals_;
  Adapter& find(const std::string& name);
  const Adapter& find(const std::string& name) const;
  void attach_all();
};

// Mixed-batch inference (PEFT's `adapter_names=[...]` forward argument): example i of the batch
// goes through adapter names[i] alone ("__base__": the base model), whatever set_adapter chose.
// While this object lives every LoRA layer of pm holds the names and applies itself only to the
// rows of its examples (a Linear input [B, ..., in] has rows / B rows per example), so the
// models' forward (and cached generation) need no change. names.size() must be
// the batch size: a layer can only check that its row count divides evenly. modules_to_save
// copies are routed too when the module is a Linear (classifier heads); other modules_to_save
// throw. Inference only: a forward with ctx.training and any backward throw; refused while an
// adapter is merged. The destructor restores the PeftModel's active state (gradients of
// trainable adapters are reset).
//   { peft::MixedBatch mb(pm, ctx, {"a", "__base__", "b"}); logits = model.forward(ctx, ids); }
class MixedBatch {
 public:
  static constexpr const char* kBase = "__base__";
  MixedBatch(PeftModel& pm, nn::Context& ctx, std::vector<std::string> names);
  ~MixedBatch();
  MixedBatch(const MixedBatch&) = delete;
  MixedBatch& operator=(const MixedBatch&) = delete;

 private:
  struct Override;  // modules_to_save routing on one Linear
  PeftModel& pm_;
  std::vector<std::string> names_;
  bool was_disabled_;
  std::vector<std::pair<LoraLinear*, const std::vector<std::string>*>>
      layers_;  // and the route before
  std::vector<std::pair<nn::Linear*, std::unique_ptr<Override>>> overrides_;
};

// Writes adapter `name` ("" = first active) of a Llama-family model as a llama.cpp LoRA GGUF:
// general.architecture "llama", general.type "adapter", adapter.type "lora", adapter.lora.alpha
// (f32); tensors "<gguf base name>.lora_a" (ne [in, r], the bytes of lora_A) and ".lora_b"
// (ne [r, out]), F32; lora_b rows of attn_q / attn_k permuted to GGUF order (n_head / n_kv_head).
// llama.cpp scales every module by alpha / r: alpha is written as s·r of the first module, and a
// module whose s·r differs (rsLoRA with rank_pattern, alpha_pattern) gets the ratio folded into
// its lora_b, so llama.cpp applies exactly s · B A. Atomic.
void save_llama_cpp_lora(const PeftModel& pm, const std::string& path, const std::string& name = "");
// (Tensor names and the q/k row order: models::llama_gguf_name, models::llama_qk_to_gguf.)

// Writes a merged Llama-family model as a GGUF next to its GGUF base (gguf_merge.cpp), a plain
// model that llama.cpp and lorafit load with no adapter: every metadata key of `base_gguf` copied
// in order (tokenizer included), tensors in the base's order; the weights of `merged_modules`
// (HF module paths, e.g. the LoRA targets) written from the model's F32 values as `type` (F32,
// F16, Q8_0, Q4_0, Q4_1), attn_q / attn_k rows back in GGUF order; every other tensor copied
// byte for byte. Throws when a merged module has no tensor in the base (e.g. lm_head tied to
// token_embd), for another architecture, or when an untouched tensor's type cannot be written
// (Q4_K, Q6_K: write_gguf has no encoder for them). Atomic.
void save_merged_gguf(models::Model& model, const std::vector<std::string>& merged_modules,
                      const std::string& base_gguf, const std::string& out_path,
                      tensor::DType type = tensor::DType::F16);

// PEFT's save_pretrained(path_initial_model_for_weight_conversion=...) as a function of folders:
// writes the PiSSA / OLoRA (or, with initial_dir, LoRA-GA) adapter `adapter_dir` as a plain LoRA
// against the original base (the weights the init started from), which needs no change to the base
// and mixes with other LoRAs:
//   ΔW = s·(B A − B₀ A₀) = s·[B | −B₀] [A ; A₀]: rank 2r, lora_A = cat(A, A₀) rows, lora_B =
//   cat(B, −B₀) columns, lora_alpha 2·alpha (rsLoRA: √2·alpha; same scaling), rank_pattern and
//   alpha_pattern values doubled, init_lora_weights true; modules_to_save tensors kept as saved.
// A₀, B₀ come from `initial_dir` (the adapter saved right after the init, as PEFT needs; required
// to reproduce a PEFT "pissa_niter_K" run) or, when empty, from running the init on `base` (the
// original model, F32 weights: exact SVD / QR, so only the signs of the factors may differ from
// PEFT's). Refused: inits that keep the base (nothing to convert), DoRA (its magnitude is taken
// on the residual base), rsLoRA with rank_pattern / alpha_pattern (as PEFT). Atomic (convert.cpp).
void convert_to_lora(models::Model& base, const std::string& adapter_dir,
                     const std::string& out_dir, const std::string& initial_dir = "");

// Writes a merged model as a Hugging Face folder: config.json from `base_dir` (the folder the
// model came from), model.safetensors with HF tensor names, all F32 (tokenizer files copied when
// present). A BERT-family classifier gets its task in config.json: architectures
// [<Bert|Roberta|DistilBert>ForSequenceClassification], num_labels, id2label / label2id (from
// `labels`, else LABEL_i), so AutoModelForSequenceClassification loads it as trained. Atomic.
//
// weights: "f32" (default) or a bitsandbytes 4-bit type "nf4", "nf4-dq", "fp4": the layer Linear
// weights (models::LoadOptions::quantize's choice of modules) are written in the transformers +
// bitsandbytes 4-bit layout (io.h, bnb4_blobs; a weight already NF4 in memory is written as it
// is, an F32 one is quantized) and config.json gets transformers' quantization_config
// (BitsAndBytesConfig, load_in_4bit, llm_int8_skip_modules naming the Linears left in F32), so
// AutoModel*.from_pretrained loads it quantized. as_base: write the model as the base folder
// was (config.json's architectures and labels kept, heads the loader initialized left out), for
// `lorafit quantize`.
void save_merged_hf(models::Model& model, const std::string& base_dir, const std::string& out_dir,
                    const std::vector<std::string>& labels = {},
                    const std::string& weights = "f32", bool as_base = false);

// How much writing merged weights as a quantized type moves them, relative to the adapter's own
// change, per merged module: rounding = ‖Q(W') − W'‖_F, delta = ‖W' − W‖_F (W' the merged F32
// weight, W the weight before the adapter, Q a round trip through `type`), ratio = rounding /
// delta. Past 1 the rounding moves the weight more than the adapter does (4-bit types do this
// to ordinary adapters; f16 only to very short runs). The Frobenius ratio is conservative: the
// rounding noise spreads over every direction, the adapter's change over r of them. `before`:
// module path -> W (F32), e.g. cloned before loading the adapter. Sorted worst ratio first
// (gguf_merge.cpp).
struct MergeRounding {
  std::string module;
  double rounding = 0.0, delta = 0.0;
  double ratio() const;
};
std::vector<MergeRounding> merge_rounding(models::Model& merged,
                                          const std::vector<std::pair<std::string, Tensor>>& before,
                                          tensor::DType type);
// The same for a bitsandbytes 4-bit re-quantization ("nf4", "nf4-dq", "fp4"; whole weights, as
// save_merged_hf writes them).
std::vector<MergeRounding> merge_rounding(models::Model& merged,
                                          const std::vector<std::pair<std::string, Tensor>>& before,
                                          const std::string& quant4_type);
// The ratio above which `lorafit adapter merge --type` refuses without --force: the rounding
// would move a merged weight more than the adapter itself does. (The SmolLM2 adapter at
// q4_1: 1.2-1.4, and llama.cpp's top token agreed with base + adapter 60% of the time.)
constexpr double kMergeRoundingLimit = 1.0;

// ---- DoRA's weight-decomposition analysis (Liu et al. 2024, §2.2 and Fig. 2) ------------------

// Magnitude and direction change of a fine-tuned weight W_ft against its base W_0 (both F32
// [out, in]), per output row i (the paper's columns, m = ‖w_i‖):
//   ΔM = mean_i |‖w_ft,i‖ − ‖w_0,i‖|,   ΔD = mean_i (1 − cos(w_ft,i, w_0,i))   (in double).
// A zero row counts as cosine 1 with another zero row and 0 otherwise. Throws on shape mismatch.
struct WeightDelta {
  double delta_m = 0;
  double delta_d = 0;
};
WeightDelta weight_decomposition_delta(const Tensor& w0, const Tensor& wft, const std::string& what = "");

// One point of the analysis: a module of one checkpoint of one method.
struct AnalysisPoint {
  std::string method;      // e.g. "ft", "lora", "dora"
  std::string checkpoint;  // e.g. "final", "step100"
  std::string module_path; // HF path, e.g. "bert.encoder.layer.3.attention.self.query"
  int64_t layer = -1;      // the number after layer/layers/h/blocks in the path (-1: none)
  std::string module;      // the path after "<layers>.<i>." (the whole path when no layer)
  double delta_m = 0, delta_d = 0;
};
// Splits a module path into (layer index, module name) as AnalysisPoint describes.
std::pair<int64_t, std::string> split_layer_path(const std::string& module_path);
// CSV with header method,checkpoint,layer,module,module_path,delta_m,delta_d (%.9g), atomic.
void write_analysis_csv(const std::string& path, const std::vector<AnalysisPoint>& points);
// A standalone SVG like the paper's Fig. 2: one scatter panel per method (in first-seen order),
// ΔD on x, ΔM on y, colour = layer, marker shape = checkpoint, filled/hollow = module; each panel
// notes the Pearson correlation of ΔD and ΔM within each checkpoint (≥ 3 points). Atomic.
void write_analysis_svg(const std::string& path, const std::vector<AnalysisPoint>& points,
                        const std::string& title);
// ---- AdaLoRA (Zhang et al. 2023; PEFT peft/tuners/adalora, peft 0.21.2) ----------------------
//
// AdaLoRA adapters (peft_type "ADALORA") are SVD-shaped layers (y += s · drop(x) (A ⊙ E)ᵀ Bᵀ,
// saved keys base_model.model.<path>.lora_A / .lora_E / .lora_B) that PeftModel builds and
// PeftModel::adalora_layers lists. Training adds:
// adalora_orth_reg   the orthogonal regularization PEFT adds to the loss.
// RankAllocator   importance EMAs, the cubic budget schedule and masking of lora_E, exactly as
//                 PEFT's RankAllocator + AdaLoraModel.update_and_allocate. The trainer calls it
//                 after every optimizer step (before zero_grad) with the 1-based step number.

// orth_reg_weight · (Σ over every A and B of ‖A Aᵀ − I‖_F resp. ‖Bᵀ B − I‖_F) / (2 · #layers)
// (PEFT AdaLoraModel.forward: unsquared Frobenius norms). grad_scale != 0 adds grad_scale times
// its gradient to A.grad / B.grad (d‖M‖/dA = 2 M A / ‖M‖, d‖M‖/dB = 2 B M / ‖M‖; 0 where M = 0).
double adalora_orth_reg(const std::vector<SVDLinear*>& layers, double orth_reg_weight,
                        double grad_scale = 0.0);

// The schedule `lorafit train --method adalora` uses unless told otherwise: the AdaLoRA paper's
// GLUE SST-2 schedule (tinit 6000, tfinal 22000, deltaT 100 of 24 × 2105 = 50,520 steps) as
// fractions of the run's total_step: tinit = 12%, tfinal = 44%, deltaT = max(1, total/500).
// (PEFT's AdaLoraConfig defaults, tinit = tfinal = 0 and deltaT = 1, prune from the first step on
// importance scores that have not formed yet and never train the final pattern.)
struct AdaloraSchedule {
  int64_t tinit = 0, tfinal = 0, deltaT = 1;
};
AdaloraSchedule adalora_default_schedule(int64_t total_step);

class RankAllocator {
 public:
  // layers: (module path, layer) at full rank init_r; cfg supplies init/target r, tinit, tfinal,
  // deltaT, beta1/2 and total_step (> 0). init_bgt = Σ r, target_bgt = target_r · #layers.
  RankAllocator(const AdapterConfig& cfg, std::vector<std::pair<std::string, SVDLinear*>> layers);

  // PEFT budget_schedule: (budget, mask now?).
  std::pair<int64_t, bool> budget_schedule(int64_t step) const;

  struct Step {
    int64_t budget = 0;        // -1 when nothing was scheduled (the frozen phase)
    bool masked = false;       // lora_E was masked this step
    double threshold = 0.0;    // the kthvalue threshold when a new mask was computed
    bool new_pattern = false;  // rank_pattern() changed (to save with the adapter)
  };
  // AdaLoraModel.update_and_allocate(global_step): step < T − tfinal: importance update from
  // p · p.grad of every A, E, B, then a mask when scheduled; step == T − tfinal: final mask to
  // target_bgt, importance reset (the mask freezes); step > T − tfinal: the frozen mask again.
  // Masking zeroes E_i (in place) where S_i <= the (init_bgt − budget)-th smallest S
  // (S_i = s(E_i) + mean_j s(A_ij) + mean_j s(B_ji), s = EMA(|p·g|) · EMA(|I − Ī|)).
  Step update_and_allocate(int64_t global_step);

  // The last mask: "<path>.lora_E" -> keep flags (PEFT's rank_pattern; empty before any mask).
  const std::vector<std::pair<std::string, std::vector<bool>>>& rank_pattern() const {
    return pattern_;
  }
  // The allocator's state (importance EMAs, last mask) as named F32 tensors, for checkpoints, and
  // its restore (an exact --resume); errors name `origin` and the tensor.
  std::vector<std::pair<std::string, Tensor>> state() const;
  void load_state(const io::SafetensorsFile& f, const std::string& origin);
  int64_t init_budget() const { return init_bgt_; }
  int64_t target_budget() const { return target_bgt_; }

 private:
  struct Ema {
    std::vector<float> ipt, unc;  // exp_avg_ipt, exp_avg_unc
  };
  AdapterConfig cfg_;
  std::vector<std::pair<std::string, SVDLinear*>> layers_;
  std::vector<Ema> ema_a_, ema_e_, ema_b_;
  bool have_ema_ = false;
  int64_t init_bgt_ = 0, target_bgt_ = 0;
  std::vector<std::pair<std::string, std::vector<bool>>> pattern_;
  std::vector<std::vector<float>> scores_;
  void update_ipt();
  double mask_to_budget(int64_t budget);
  void mask_using_pattern();
  friend struct RankAllocatorProbe;  // internal (peft/layers.h): the scores, for tests
};

}  // namespace lorafit::peft
