// lorafit logits: run prompts through a model (+ adapters) as one batch and print or save the
// logits; with --route, a mixed batch where each prompt names its adapter (peft::MixedBatch).
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "cli/cli.h"
#include "lorafit/io.h"
#include "lorafit/models.h"
#include "lorafit/peft.h"
#include "lorafit/text.h"
#include "lorafit/train.h"

namespace {

namespace fs = std::filesystem;
namespace peft = lorafit::peft;
namespace models = lorafit::models;
using lorafit::Error;
using lorafit::tensor::Tensor;

const char* kLogitsUsage =
    R"(Usage: lorafit logits --model PATH --prompt TEXT [--prompt TEXT ...] [options]

Runs the prompts as one batch (right-padded) and prints, per prompt, the top tokens / labels, or
saves every logit. Llama-family models: next-token logits at every prompt position [T, V];
BERT-family classifiers: class logits [L].
)";

const std::vector<lorafit::cli::OptSpec> kLogitsOpts = {
    {"model", "str", "", "model folder, .gguf, or a folder holding one .gguf (required)"},
    {"prompt", "multi", "", "a prompt (at least one)"},
    {"adapter", "multi", "",
     "DIR: a PEFT adapter folder, active for every prompt; NAME=DIR: a named adapter (without "
     "--route all of them are active, their deltas add up)"},
    {"route", "str", "",
     "N1,N2,...: mixed batch, prompt i goes through adapter N_i alone (\"__base__\": the base "
     "model), as PEFT's adapter_names=[...]; one name per prompt"},
    {"num-labels", "int", "0", "classifiers without a stored head: number of labels (0: 2)"},
    {"no-special", "bool", "false", "do not add BOS/CLS... tokens when encoding"},
    {"out", "str", "",
     "write a safetensors file: ids.<i> (I32 [T_i]) and logits.<i> (F32) per prompt i, metadata "
     "model/adapters/route"},
    {"threads", "int", "0", "compute threads (0: all cores)"},
    {"quantize", "str", "none",
     "quantize the base on load: none | nf4 | nf4-dq | fp4 | q8_0 | q4_0 | q4_1"},
    lorafit::cli::kComputeDtypeOpt,
};

std::vector<std::string> split(const std::string& s, char c) {
  std::vector<std::string> v;
  size_t a = 0;
  while (true) {
    size_t b = s.find(c, a);
    v.push_back(s.substr(a, b == std::string::npos ? std::string::npos : b - a));
    if (b == std::string::npos) break;
    a = b + 1;
  }
  return v;
}

}  // namespace

int cmd_logits(int argc, char** argv) {
  using lorafit::cli::Options;
  if (argc < 2) {
    std::fputs(kLogitsUsage, stderr);
    return 2;
  }
  if (lorafit::cli::wants_help(argc, argv)) {
    lorafit::cli::print_help(kLogitsUsage, Options(kLogitsOpts, "logits").specs());
    return 0;
  }
  return lorafit::cli::run_command("logits", [&] {
    Options o(kLogitsOpts, "logits");
    o.parse(argc, argv);
    if (!o.positional.empty())
      throw Error("[logits] unexpected argument '" + o.positional[0] + "'; options start with --");
    std::string model_path = o.str("model");
    const std::string out = o.str("out"), route = o.str("route");
    const std::vector<std::string> prompts = o.all("prompt");
    std::vector<std::pair<std::string, std::string>> adapters;  // name, dir
    for (const std::string& v : o.all("adapter")) {
      const size_t eq = v.find('=');
      if (eq == std::string::npos || fs::exists(v))
        adapters.emplace_back("default", v);
      else
        adapters.emplace_back(v.substr(0, eq), v.substr(eq + 1));
    }
    const int64_t num_labels = o.integer("num-labels"), threads = o.integer("threads");
    const bool special = !o.flag("no-special");
    if (model_path.empty()) throw Error("[logits] --model is required");
    if (prompts.empty()) throw Error("[logits] give at least one --prompt");
    lorafit::kernels::set_num_threads(static_cast<int>(threads));
    lorafit::kernels::set_compute_dtype(
        lorafit::kernels::parse_compute_dtype(o.str("compute-dtype")));
    models::LoadOptions lo;
    lo.num_labels = num_labels;
    lo.quantize = o.str("quantize");
    lorafit::models::check_quantize(lo.quantize, "[logits] --quantize");
    auto loaded = lorafit::train::open_model(model_path, lo);
    model_path = loaded.path;
    auto& model = loaded.model;
    const auto& tok = loaded.tokenizer;
    std::unique_ptr<peft::PeftModel> pm;
    std::vector<std::string> names;
    for (auto& [name, dir] : adapters) {
      if (std::find(names.begin(), names.end(), name) != names.end())
        throw Error("[logits] adapter name '" + name + "' given twice");
      // a run that extended the context (--rope-scaling) recorded it next to its adapter
      lorafit::train::apply_rope_note(*model, lorafit::train::read_task_info(dir), dir);
      if (!pm)
        pm = peft::PeftModel::from_pretrained(*model, dir, name);
      else
        pm->load_adapter(dir, name);
      names.push_back(name);
    }
    if (pm) pm->set_adapters(names);
    std::vector<std::string> routes;
    if (!route.empty()) {
      routes = split(route, ',');
      if (routes.size() != prompts.size())
        throw Error("[logits] --route names " + std::to_string(routes.size()) + " adapters for " +
                    std::to_string(prompts.size()) + " prompts (one per prompt)");
      if (!pm) throw Error("[logits] --route needs --adapter NAME=DIR adapters");
    }
    // Encode and right-pad.
    const int64_t B = static_cast<int64_t>(prompts.size());
    std::vector<std::vector<int32_t>> enc;
    size_t T = 0;
    for (auto& p : prompts) {
      enc.push_back(tok.encode(p, special).ids);
      if (enc.back().empty()) throw Error("[logits] prompt '" + p + "' encodes to no tokens");
      T = std::max(T, enc.back().size());
    }
    const auto& sp = tok.special_ids();
    const int32_t pad = sp.pad >= 0 ? sp.pad : (sp.eos >= 0 ? sp.eos : 0);
    std::vector<int32_t> ids(static_cast<size_t>(B) * T, pad), mask(static_cast<size_t>(B) * T, 0);
    for (int64_t b = 0; b < B; ++b)
      for (size_t t = 0; t < enc[b].size(); ++t) ids[b * T + t] = enc[b][t], mask[b * T + t] = 1;
    const int64_t Ti = static_cast<int64_t>(T);
    Tensor tid = Tensor::from_ints({B, Ti}, ids), tmask = Tensor::from_ints({B, Ti}, mask);
    lorafit::nn::Context ctx;
    std::unique_ptr<peft::MixedBatch> mb;
    if (!routes.empty()) mb = std::make_unique<peft::MixedBatch>(*pm, ctx, routes);
    Tensor logits;
    const bool llama = model->is_causal_lm();
    logits = model->logits(ctx, tid, tmask);
    mb.reset();
    const int64_t V = logits.dim(-1);
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t n = static_cast<int64_t>(enc[b].size());
      Tensor row = llama ? Tensor::empty({n, V}) : Tensor::empty({V});
      const float* src = logits.f32() + (llama ? b * Ti * V : b * V);
      std::copy(src, src + row.numel(), row.f32());
      std::string who = routes.empty() ? (names.empty() ? "base" : "adapters") : routes[b];
      // Print: the most likely next token after the prompt (LM) or the label scores.
      const float* last = llama ? row.f32() + (n - 1) * V : row.f32();
      const int64_t arg = std::max_element(last, last + V) - last;
      if (llama)
        std::printf("prompt %lld [%s] %lld tokens; next token %lld %s (logit %.4f)\n",
                    static_cast<long long>(b), who.c_str(), static_cast<long long>(n),
                    static_cast<long long>(arg), tok.decode(std::vector<int32_t>{static_cast<int32_t>(arg)}, false).c_str(),
                    last[arg]);
      else {
        std::printf("prompt %lld [%s] label %lld logits", static_cast<long long>(b), who.c_str(),
                    static_cast<long long>(arg));
        for (int64_t j = 0; j < V; ++j) std::printf(" %.6f", last[j]);
        std::printf("\n");
      }
      tensors.emplace_back("ids." + std::to_string(b), Tensor::from_ints({n}, enc[b]));
      tensors.emplace_back("logits." + std::to_string(b), row);
    }
    if (!out.empty()) {
      std::string ad;
      for (auto& [n, d] : adapters) ad += (ad.empty() ? "" : ",") + n + "=" + d;
      lorafit::io::write_safetensors(out, tensors, {{"model", model_path}, {"adapters", ad}, {"route", route}});
      std::printf("wrote %s\n", out.c_str());
    }
    return 0;
  });
}
