// lorafit info PATH: what a model folder or GGUF file holds, and which modules adapters can target.
#include <cctype>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "cli/cli.h"
#include "lorafit/rope_config.h"
#include "lorafit/models.h"
#include "lorafit/quant.h"

namespace {

// "1,234,567"
std::string with_commas(int64_t n) {
  std::string s = std::to_string(n), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return out;
}

// Replaces the layer index in a module path with '*': model.layers.3.mlp.up_proj ->
// model.layers.*.mlp.up_proj, so that per-layer modules group together.
std::string pattern_of(const std::string& path) {
  std::string out;
  size_t i = 0;
  while (i < path.size()) {
    if (std::isdigit(static_cast<unsigned char>(path[i])) && i > 0 && path[i - 1] == '.') {
      size_t j = i;
      while (j < path.size() && std::isdigit(static_cast<unsigned char>(path[j]))) ++j;
      if (j == path.size() || path[j] == '.') {
        out += '*';
        i = j;
        continue;
      }
    }
    out += path[i++];
  }
  return out;
}

}  // namespace

int cmd_info(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    std::fputs(
        "Usage: lorafit info PATH [--quantize TYPE]\n"
        "  PATH: a Hugging Face model folder (config.json + model.safetensors), a .gguf file, or "
        "a folder\n  holding one .gguf.\n  Prints the architecture, sizes, parameter count, stored dtypes and the "
        "Linear modules\n  that adapters can target (target_modules), with the dtype each is held in and the bytes\n"
        "  of the weights in memory. --quantize nf4|nf4-dq|fp4|q8_0|q4_0|q4_1: as train --quantize\n"
        "  would load it.\n",
        argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  try {
    lorafit::cli::Options o({{"quantize", "str", "none", "quantize on load as train does"}}, "info",
                            false);
    o.parse(argc, argv);
    if (o.positional.size() != 1)
      throw lorafit::Error(
          "[info] expected one PATH (a model folder, a .gguf, or a folder holding one .gguf), "
          "got " +
          std::to_string(o.positional.size()));
    lorafit::models::LoadOptions lo;
    lo.quantize = o.str("quantize");
    lorafit::models::check_quantize(lo.quantize, "[info] --quantize");
    auto model =
        lorafit::models::load_model(lorafit::models::resolve_model_path(o.positional[0]), lo);
    const auto& c = model->config();
    std::printf("path:          %s (%s)\n", c.source.c_str(), c.format.c_str());
    std::printf("architecture:  %s\n", c.arch.c_str());
    std::printf("layers:        %lld\n", static_cast<long long>(c.n_layers));
    std::printf("hidden:        %lld\n", static_cast<long long>(c.hidden));
    std::printf("heads:         %lld (kv heads %lld, head dim %lld)\n",
                static_cast<long long>(c.n_heads), static_cast<long long>(c.n_kv_heads),
                static_cast<long long>(c.head_dim));
    std::printf("intermediate:  %lld\n", static_cast<long long>(c.intermediate));
    std::printf("vocab:         %lld\n", static_cast<long long>(c.vocab));
    std::printf("max positions: %lld\n", static_cast<long long>(c.max_positions));
    if (c.arch == "llama") {
      std::printf("rope theta:    %g\n", static_cast<double>(c.rope_theta));
      if (c.rope_scaling.active())
        std::printf("rope scaling:  %s\n", lorafit::models::rope_scaling_str(c.rope_scaling).c_str());
      std::printf("rms norm eps:  %g\n", static_cast<double>(c.norm_eps));
      std::printf("lm_head:       %s\n", c.tied_embeddings ? "tied to embed_tokens" : "separate");
    } else {
      std::printf("activation:    %s\n", c.hidden_act.c_str());
      std::printf("labels:        %lld\n", static_cast<long long>(c.num_labels));
    }
    std::printf("parameters:    %s\n", with_commas(model->num_parameters()).c_str());
    std::map<std::string, int> dtypes;
    for (const auto& [name, dt] : model->source_dtypes()) ++dtypes[dt];
    std::printf("stored dtypes:");
    for (const auto& [dt, n] : dtypes) std::printf(" %s x %d", dt.c_str(), n);
    std::printf("\n");
    // Bytes held in memory by the weights (a tied lm_head counted once), and by the Linear
    // weights of the layers against their F32 size.
    {
      size_t all = 0, lin = 0, lin32 = 0;
      std::map<const void*, bool> seen;
      auto bytes_of = [](const lorafit::tensor::Tensor& t) {
        return t.dtype() == lorafit::tensor::DType::NF4 ? lorafit::tensor::quant4_state(t).nbytes()
                                                        : t.nbytes();
      };
      for (auto& [name, p] : model->named_parameters())
        if (!seen[p->value.raw()]) seen[p->value.raw()] = true, all += bytes_of(p->value);
      for (auto& [path, l] : model->linears()) {
        if (lorafit::models::is_head_module(path)) continue;
        lin += bytes_of(l->weight.value);
        lin32 += static_cast<size_t>(l->weight.value.numel()) * 4;
      }
      std::printf("weight memory: %.2f MiB; layer Linear weights %.2f MiB = %.4fx their F32 bytes\n",
                  all / 1048576.0, lin / 1048576.0,
                  lin32 ? static_cast<double>(lin) / static_cast<double>(lin32) : 0.0);
    }
    if (!model->initialized().empty()) {
      std::printf("not in the checkpoint (freshly initialized):");
      for (const auto& n : model->initialized()) std::printf(" %s", n.c_str());
      std::printf("\n");
    }
    // Group the targetable Linear modules by their per-layer pattern, in model order.
    std::vector<std::string> order;
    std::map<std::string, std::pair<int, std::string>> groups;
    for (const auto& [path, lin] : model->linears()) {
      std::string p = pattern_of(path);
      auto [it, fresh] = groups.try_emplace(p, 0, "");
      if (fresh) {
        order.push_back(p);
        // snprintf rather than string operator+: GCC 12 warns falsely (-Wrestrict) on the latter.
        char buf[96];
        std::snprintf(buf, sizeof buf, "[%lld -> %lld] %s",
                      static_cast<long long>(lin->in_features()),
                      static_cast<long long>(lin->out_features()),
                      lorafit::tensor::dtype_name(lin->weight.value.dtype()));
        it->second.second = buf;
      }
      ++it->second.first;
    }
    std::printf("targetable Linear modules (%zu patterns):\n", order.size());
    for (const auto& p : order) {
      const size_t dot = p.rfind('.');
      const std::string suffix = dot == std::string::npos ? p : p.substr(dot + 1);
      std::printf("  %-14s x%-3d %-44s %s\n", suffix.c_str(), groups[p].first, p.c_str(),
                  groups[p].second.c_str());
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lorafit info: %s\n", e.what());
    return 1;
  }
}
