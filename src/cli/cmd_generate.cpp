// lorafit generate: continue a prompt (or answer a chat message) with the library's
// train::generate_text, printing the text as it comes.
#include <cstdio>
#include <string>

#include "cli/cli.h"
#include "lorafit/kernels.h"
#include "lorafit/train.h"

namespace train = lorafit::train;
using namespace lorafit::cli;

namespace {

const std::vector<OptSpec> kGenOpts = {
    {"config", "str", "", "JSON or YAML (.yaml/.yml) file of options"},
    {"model", "str", "",
     "Llama-family model folder, .gguf, or a folder holding one .gguf (required)"},
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
    {"quantize", "str", "",
     "quantize the base on load: none | nf4 | nf4-dq | fp4 | q8_0 | q4_0 | q4_1 (default: as "
     "the adapter was trained, else none)"},
    {"threads", "int", "0", "compute threads (0: all cores)"},
    kComputeDtypeOpt,
};

}  // namespace

int cmd_generate(int argc, char** argv) {
  if (wants_help(argc, argv)) {
    print_help(
        "Usage: lorafit generate --model PATH [--adapter DIR] --prompt TEXT [options]\n\n"
        "Continues the prompt with a KV cache: greedy by default, or sampling with --temperature,\n"
        "--top-k and --top-p (seeded, so the same command gives the same text).\n"
        "With --chat the prompt is a user message in the model's chat template (SmolLM2: ChatML)\n"
        "and only the reply is printed, e.g.\n"
        "  lorafit generate --model models/SmolLM2-135M-Instruct --chat --prompt \"Name three "
        "rivers.\"\n",
        kGenOpts, nullptr);
    return 0;
  }
  try {
    Options o(kGenOpts, "generate");
    o.parse(argc, argv);
    if (!o.positional.empty())
      throw Error("[generate] unexpected argument '" + o.positional[0] +
                  "'; options start with --");
    lorafit::kernels::set_num_threads(static_cast<int>(o.integer("threads")));
    lorafit::kernels::set_compute_dtype(
        lorafit::kernels::parse_compute_dtype(o.str("compute-dtype")));
    train::GenerateParams p;
    p.model = o.str("model");
    p.adapter = o.str("adapter");
    p.prompt = o.str("prompt");
    p.quantize = o.str("quantize");
    p.sampling.max_new_tokens = o.integer("max-new-tokens");
    p.sampling.temperature = o.number("temperature");
    p.sampling.top_k = o.integer("top-k");
    p.sampling.top_p = o.number("top-p");
    p.sampling.seed = static_cast<uint64_t>(o.integer("seed"));
    p.chat = o.flag("chat");
    p.system = o.str("system");
    p.chat_template = o.str("chat-template");
    if (p.prompt.empty()) throw Error("[generate] --prompt is required");
    lorafit::models::validate(p.sampling);
    if (p.sampling.temperature == 0 && (o.has("top-k") || o.has("top-p")))
      throw Error(
          "[generate] --top-k/--top-p only matter when sampling; add --temperature (e.g. 0.8)");
    if (!p.chat && (o.has("system") || o.has("chat-template")))
      throw Error("[generate] --system and --chat-template need --chat");
    // The prompt is shown once the model is loaded (a load error prints nothing to stdout).
    bool shown = p.chat;
    auto show_prompt = [&] {
      if (!shown) std::fputs(p.prompt.c_str(), stdout);
      shown = true;
    };
    train::generate_text(p, [&](const std::string& piece) {
      show_prompt();
      std::fputs(piece.c_str(), stdout);
      std::fflush(stdout);
    });
    show_prompt();
    std::fputs("\n", stdout);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lorafit generate: %s\n", e.what());
    return 1;
  }
}
