// lorafit quantize MODEL --type nf4-dq|nf4|fp4 --output DIR: a full-precision Hugging Face folder
// written in the transformers + bitsandbytes 4-bit layout (loads with from_pretrained as a
// load_in_4bit model; lorafit reads it back as NF4).
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>

#include "cli/cli.h"
#include "lorafit/models.h"
#include "lorafit/peft.h"
#include "lorafit/quant.h"

namespace {

using lorafit::cli::Options;
using lorafit::cli::OptSpec;

const std::vector<OptSpec> kQuantizeOpts = {
    {"type", "str", "nf4-dq", "nf4-dq | nf4 | fp4 (bitsandbytes 4-bit; -dq: double quantization)"},
    {"output", "str", "", "the folder to write (required)"},
    {"overwrite", "bool", "false", "replace an existing output folder"},
};

const char* kQuantizeUsage =
    "Usage: lorafit quantize MODEL --type nf4-dq|nf4|fp4 --output DIR\n\n"
    "Writes a Hugging Face folder whose layer Linear weights are bitsandbytes 4-bit (what\n"
    "transformers saves for BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=...,\n"
    "bnb_4bit_use_double_quant=...)): packed uint8 `weight` plus weight.absmax, weight.quant_map\n"
    "(and weight.nested_absmax, weight.nested_quant_map) and weight.quant_state.bitsandbytes__nf4,\n"
    "with quantization_config in config.json. Embeddings, norms and heads stay F32. The codes are\n"
    "byte-identical to bitsandbytes' quantize_4bit of the fp32 weights. Prints the bytes of the\n"
    "quantized weights against F32 and their relative rounding error.\n";

}  // namespace

int cmd_quantize(int argc, char** argv) {
  if (lorafit::cli::wants_help(argc, argv)) {
    lorafit::cli::print_help(kQuantizeUsage, Options(kQuantizeOpts, "quantize").specs());
    return 0;
  }
  return lorafit::cli::run_command("quantize", [&] {
    Options o(kQuantizeOpts, "quantize");
    o.parse(argc, argv);
    if (o.positional.size() != 1)
      throw lorafit::Error("[quantize] expected one MODEL folder, got " +
                           std::to_string(o.positional.size()) + " arguments");
    const std::string type = o.str("type"), out = o.str("output");
    if (type != "nf4-dq" && type != "nf4" && type != "fp4")
      throw lorafit::Error("[quantize] --type '" + type + "': expected nf4-dq, nf4 or fp4");
    if (out.empty()) throw lorafit::Error("[quantize] --output is required");
    const std::string base = lorafit::models::resolve_model_path(o.positional[0]);
    if (lorafit::models::is_gguf_path(base))
      throw lorafit::Error("[quantize] " + base +
                           ": a GGUF keeps its own types; give a Hugging Face model folder");
    if (std::filesystem::exists(out) && !o.flag("overwrite"))
      throw lorafit::Error("[quantize] " + out + " exists (pass --overwrite to replace it)");
    lorafit::models::LoadOptions lo;
    lo.quantize = type;
    auto model = lorafit::models::load_model(base, lo);
    // What the rounding costs, per weight and overall: ||Q(W) - W|| / ||W|| (Frobenius).
    auto full = [&] {
      lorafit::models::LoadOptions f;
      return lorafit::models::load_model(base, f);
    }();
    std::map<std::string, lorafit::nn::Linear*> orig;
    for (auto& [p, l] : full->linears()) orig[p] = l;
    double e2 = 0, w2 = 0;
    size_t n4 = 0, bytes4 = 0, bytes32 = 0;
    for (auto& [p, l] : model->linears()) {
      const auto& w = l->weight.value;
      if (w.dtype() != lorafit::tensor::DType::NF4) continue;
      ++n4;
      bytes4 += lorafit::tensor::quant4_state(w).nbytes();
      bytes32 += static_cast<size_t>(w.numel()) * 4;
      lorafit::tensor::Tensor q = w.to(lorafit::tensor::DType::F32);
      lorafit::tensor::Tensor x = orig.at(p)->weight.value.to(lorafit::tensor::DType::F32);
      for (int64_t i = 0; i < q.numel(); ++i) {
        const double d = static_cast<double>(q.f32()[i]) - x.f32()[i];
        e2 += d * d;
        w2 += static_cast<double>(x.f32()[i]) * x.f32()[i];
      }
    }
    if (n4 == 0)
      throw lorafit::Error("[quantize] " + base +
                           ": no Linear weight could be quantized (none full precision with an "
                           "even row length)");
    lorafit::peft::save_merged_hf(*model, base, out, {}, type, true);
    std::printf(
        "quantized %zu Linear weights of %s to %s -> %s\n"
        "  %.2f MiB of F32 -> %.2f MiB (%.4fx); relative rounding error ||Q(W)-W||/||W|| = %.4g\n",
        n4, base.c_str(), type.c_str(), out.c_str(), bytes32 / 1048576.0, bytes4 / 1048576.0,
        static_cast<double>(bytes4) / static_cast<double>(bytes32), std::sqrt(e2 / w2));
    return 0;
  });
}
