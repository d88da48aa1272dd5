// lorafit command-line tool. Thin: parse arguments, call the library, print.
#include <cstdio>
#include <cstring>
#include <string>

#include "lorafit/tensor.h"

int cmd_info(int argc, char** argv);  // cmd_info.cpp

namespace {

const char* kUsage = R"(lorafit — parameter-efficient fine-tuning (LoRA, DoRA, AdaLoRA, QLoRA) on the CPU

Usage: lorafit <command> [options]

Commands:
  --help, -h       show this help
  --version        print the version
  info PATH        architecture, sizes and targetable modules of a model folder or .gguf

Work in progress: model loading, adapters and training arrive with the next milestones
(see README.md).
)";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") ||
      !std::strcmp(argv[1], "help")) {
    std::fputs(kUsage, stdout);
    return argc < 2 ? 1 : 0;
  }
  if (!std::strcmp(argv[1], "--version")) {
    std::printf("lorafit %s\n", LORAFIT_VERSION);
    return 0;
  }
  if (!std::strcmp(argv[1], "info")) return cmd_info(argc - 1, argv + 1);
  std::fprintf(stderr, "lorafit: unknown command '%s' (try lorafit --help)\n", argv[1]);
  return 2;
}
