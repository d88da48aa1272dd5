// lorafit command-line tool. Thin: parse arguments, call the library, print.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "lorafit/blas_restart.h"
#include "lorafit/kernels.h"
#include "lorafit/tensor.h"
#include "lorafit_commit.h"  // generated at build time: LORAFIT_COMMIT

int cmd_info(int argc, char** argv);  // cmd_info.cpp
int cmd_train(int argc, char** argv);  // cmd_train.cpp
int cmd_eval(int argc, char** argv, bool predict);  // cmd_eval.cpp
int cmd_generate(int argc, char** argv);  // cmd_generate.cpp
int cmd_adapter(int argc, char** argv);  // cmd_adapter.cpp
int cmd_logits(int argc, char** argv);   // cmd_logits.cpp
int cmd_analyze(int argc, char** argv);  // cmd_analyze.cpp
int cmd_report(int argc, char** argv);   // cmd_report.cpp
int cmd_quantize(int argc, char** argv);  // cmd_quantize.cpp

namespace {

const char* kUsage =
    R"(lorafit — parameter-efficient fine-tuning (LoRA, DoRA, AdaLoRA, QLoRA) on the CPU

Usage: lorafit <command> [options]

Commands:
  --help, -h       show this help
  --version        print the version
  info PATH        architecture, sizes and targetable modules of a model folder or .gguf
  train            fine-tune with LoRA, DoRA or AdaLoRA (or fully) on classification or text data
  eval             accuracy/F1/MCC or perplexity of a model (+ adapter) on a file
  predict          classify a file, with probabilities (TSV or JSONL)
  generate         continue a prompt (greedy or sampled, KV cache)
  adapter          info | merge | combine | export-gguf of PEFT adapter folders
  logits           logits of prompts (+ adapters, or one adapter per prompt: mixed batch)
  analyze          DoRA's magnitude/direction analysis of fine-tuned weights (CSV + SVG)
  report RUN_DIR…  an HTML report of training runs (several: side by side in one page)
  quantize MODEL   write a Hugging Face folder in the bitsandbytes 4-bit layout (NF4 / FP4)

Each command explains itself: lorafit <command> --help

QLoRA: train --quantize nf4-dq (or nf4, fp4, q8_0, q4_0, q4_1) quantizes a Hugging Face base on
load; a bitsandbytes 4-bit folder (lorafit quantize, or saved by transformers) and GGUF bases in
Q4_0/Q4_1/Q8_0 train LoRA on top as stored.
)";

}  // namespace

int main(int argc, char** argv) {
  lorafit::kernels::restart_with_vector_blas(argv);
  // A file-size limit (ulimit -f) then fails the write with EFBIG, which the atomic writers
  // report and clean up as they do a full disk, instead of killing the process mid-file.
  std::signal(SIGXFSZ, SIG_IGN);
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") ||
      !std::strcmp(argv[1], "help")) {
    std::fputs(kUsage, stdout);
    return argc < 2 ? 1 : 0;
  }
  if (!std::strcmp(argv[1], "--version")) {
    std::printf("lorafit %s (commit %s)\n", LORAFIT_VERSION, LORAFIT_COMMIT);
    // What --compute-dtype bf16 would use here, or why it is not available.
    std::printf("bf16 compute: %s (%s)\n", lorafit::kernels::bf16_gemm_supported() ? "yes" : "no",
                lorafit::kernels::bf16_gemm_info().c_str());
    if (lorafit::kernels::bf16_gemm_supported()) {  // what --compute-dtype auto measures and picks
      const double s = lorafit::kernels::bf16_speedup();
      std::printf("auto compute: %s (bf16 products %.2fx the speed of fp32 here, %d thread%s)\n",
                  lorafit::kernels::auto_picks_bf16(s) ? "bf16" : "fp32", s,
                  lorafit::kernels::num_threads(), lorafit::kernels::num_threads() == 1 ? "" : "s");
    }
    const char* fallback = std::getenv("LORAFIT_BLAS_FALLBACK");
    const std::string core = lorafit::kernels::blas_core();
    if (fallback && *fallback)
      std::printf("blas: OpenBLAS, %s kernels (OpenBLAS chose %s for this CPU; set by lorafit)\n",
                  core.c_str(), fallback);
    else
      std::printf("blas: OpenBLAS, %s kernels\n", core.c_str());
    return 0;
  }
  if (!std::strcmp(argv[1], "info")) return cmd_info(argc - 1, argv + 1);
  if (!std::strcmp(argv[1], "train")) return cmd_train(argc - 1, argv + 1);
  if (!std::strcmp(argv[1], "eval")) return cmd_eval(argc - 1, argv + 1, false);
  if (!std::strcmp(argv[1], "predict")) return cmd_eval(argc - 1, argv + 1, true);
  if (!std::strcmp(argv[1], "generate")) return cmd_generate(argc - 1, argv + 1);
  if (!std::strcmp(argv[1], "adapter")) return cmd_adapter(argc - 1, argv + 1);
  if (!std::strcmp(argv[1], "logits")) return cmd_logits(argc - 1, argv + 1);
  if (!std::strcmp(argv[1], "analyze")) return cmd_analyze(argc - 1, argv + 1);
  if (!std::strcmp(argv[1], "report")) return cmd_report(argc - 1, argv + 1);
  if (!std::strcmp(argv[1], "quantize")) return cmd_quantize(argc - 1, argv + 1);
  std::fprintf(stderr, "lorafit: unknown command '%s' (try lorafit --help)\n", argv[1]);
  return 2;
}
