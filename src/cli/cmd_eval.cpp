// lorafit eval | predict: metrics or predictions of a model (+ a run's weights) on a file, by
// the library's train::evaluate_file / predict_file.
#include <cstdio>
#include <string>

#include "cli/cli.h"
#include "lorafit/io.h"
#include "lorafit/kernels.h"
#include "lorafit/train.h"

namespace train = lorafit::train;
using namespace lorafit::cli;

namespace {

// The forward's own speed (what the "forward only >= 2.5x the training tokens/s" reads),
// on stderr so that predictions on stdout stay clean.
void print_forward_speed(int64_t tokens, double seconds) {
  std::fprintf(stderr, "forward only: %lld tokens in %.3f s, %.0f tokens/s\n",
               static_cast<long long>(tokens), seconds,
               seconds > 0 ? static_cast<double>(tokens) / seconds : 0.0);
}

const std::vector<OptSpec> kEvalOpts = {
    {"config", "str", "", "JSON or YAML (.yaml/.yml) file of options"},
    {"model", "str", "", "base model folder, .gguf, or a folder holding one .gguf (required)"},
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
    {"quantize", "str", "",
     "quantize the base on load: none | nf4 | nf4-dq | fp4 | q8_0 | q4_0 | q4_1 (default: as "
     "the adapter was trained, else none)"},
    {"threads", "int", "0", "compute threads (0: all cores)"},
    {"stride", "int", "0",
     "LM plain text: score sliding windows of --block-size tokens every N tokens, each token "
     "once with up to block-size - N tokens of context (0: separate blocks)"},
    {"rope-scaling", "str", "",
     "LM: TYPE:FACTOR RoPE scaling on the base model (e.g. linear:2; default: as the adapter's "
     "run recorded)"},
    kComputeDtypeOpt,
};

train::EvalParams eval_params(const Options& o) {
  train::EvalParams p;
  p.model = o.str("model");
  p.adapter = o.str("adapter");
  p.data = o.str("data");
  p.task = o.str("task");
  p.batch_size = o.integer("batch-size");
  p.max_length = o.integer("max-length");
  p.block_size = o.integer("block-size");
  p.chat_template = o.str("chat-template");
  p.text_column = o.str("text-column");
  p.text_pair_column = o.str("text-pair-column");
  p.label_column = o.str("label-column");
  p.quantize = o.str("quantize");
  p.rope_scaling = o.str("rope-scaling");
  p.stride = o.integer("stride");
  p.compute_dtype = o.str("compute-dtype");
  return p;
}

}  // namespace

int cmd_eval(int argc, char** argv, bool predict) {
  const char* cmd = predict ? "predict" : "eval";
  if (wants_help(argc, argv)) {
    print_help(
        predict ? "Usage: lorafit predict --model PATH --adapter DIR --data FILE [--output "
                  "preds.tsv]\n\n"
                  "Classifies every row of FILE (.tsv/.csv/.jsonl; a label column is optional) and "
                  "writes\n"
                  "line, predicted label and the probability of each label (TSV or JSONL by "
                  "--output's extension).\n"
                : "Usage: lorafit eval --model PATH [--adapter DIR] --data FILE\n\n"
                  "Classification: accuracy, F1 and Matthews correlation on a labeled file.\n"
                  "Causal LM: loss and perplexity on a text file (cut into --block-size blocks).\n",
        kEvalOpts, nullptr);
    return 0;
  }
  try {
    Options o(kEvalOpts, cmd);
    o.parse(argc, argv);
    if (!o.positional.empty())
      throw Error(std::string("[") + cmd + "] unexpected argument '" + o.positional[0] +
                  "'; options start with --");
    lorafit::kernels::set_num_threads(static_cast<int>(o.integer("threads")));
    const train::EvalParams p = eval_params(o);
    if (predict && (o.has("rope-scaling") || o.has("stride")))
      throw Error("[predict] --rope-scaling and --stride are for LM evaluation (lorafit eval)");
    if (!predict) {
      const train::EvalReport r = train::evaluate_file(p);
      print_forward_speed(r.result.tokens, r.result.seconds);
      if (r.lm)
        std::printf("loss %.4f\nperplexity %.3f\n%s %zu (%lld %s)\n", r.result.loss,
                    r.result.perplexity, r.plain_text ? "blocks" : "examples", r.units,
                    static_cast<long long>(r.counted_tokens),
                    r.plain_text ? "predicted tokens" : "reply tokens");
      else
        std::printf("accuracy %.4f\nf1 %.4f\nmcc %.4f\nloss %.4f\nexamples %lld\n",
                    r.result.cls.accuracy, r.result.cls.f1, r.result.cls.mcc, r.result.loss,
                    static_cast<long long>(r.result.cls.n));
      return 0;
    }
    const std::string outp = o.str("output");
    const train::PredictReport r = train::predict_file(p);
    print_forward_speed(r.tokens, r.seconds);
    const std::string text =
        train::format_predictions(r, outp.size() > 6 && outp.ends_with(".jsonl"));
    if (outp.empty()) {
      std::fputs(text.c_str(), stdout);
    } else {
      lorafit::io::write_file_atomic(outp, text);
      std::fprintf(stderr, "wrote %zu predictions to %s\n", r.rows.size(), outp.c_str());
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lorafit %s: %s\n", cmd, e.what());
    return 1;
  }
}
