// lorafit analyze: DoRA's weight-decomposition analysis (Liu et al. 2024, §2.2, Fig. 2) of
// fine-tuned results against their base model: magnitude change ΔM and direction change ΔD per
// layer, module, checkpoint and method, as CSV and an SVG scatter plot.
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "cli/cli.h"
#include "lorafit/io.h"
#include "lorafit/models.h"
#include "lorafit/peft.h"
#include "lorafit/train.h"

namespace {

namespace fs = std::filesystem;
namespace models = lorafit::models;
namespace peft = lorafit::peft;
using lorafit::Error;
using lorafit::tensor::Tensor;

const char* kAnalyzeUsage =
    R"(Usage: lorafit analyze --base MODEL --result METHOD[@CHECKPOINT]=PATH [--result ...]
                       --out DIR [--modules LIST|all] [--title TEXT]

DoRA's weight-decomposition analysis (Liu et al. 2024, Fig. 2): for every selected Linear module
of each result, against the same module of the base model, per output row w:
  ΔM = mean |‖w_ft‖ − ‖w_0‖|      (magnitude change)
  ΔD = mean (1 − cos(w_ft, w_0))   (direction change)
Writes DIR/analysis.csv (method,checkpoint,layer,module,module_path,delta_m,delta_d) and
DIR/analysis.svg (one ΔD–ΔM scatter panel per method; colour = layer, shape = checkpoint).
A --result PATH is a folder written by `lorafit train` (final/, best/, checkpoint/: a LoRA or
DoRA adapter, merged on the fly, or the trainable.safetensors of --method full), a PEFT adapter
folder, or a plain Hugging Face model folder (e.g. from `lorafit adapter merge`). The checkpoint
label is the folder's name unless given as M@LABEL=PATH.

Example:
  lorafit analyze --base models/all-MiniLM-L6-v2 --result ft=runs/full/final \
      --result lora=runs/lora/final --result dora=runs/dora/final --out docs/analysis
)";

const std::vector<lorafit::cli::OptSpec> kAnalyzeOpts = {
    {"base", "str", "", "the base model folder (config.json + safetensors) or .gguf (required)"},
    {"result", "multi", "", "METHOD[@CHECKPOINT]=PATH: a result labelled by method (one or more)"},
    {"out", "str", "", "output folder (required)"},
    {"modules", "str", "",
     "module names to analyse, matched against the end of the module path (default: the paper's "
     "query,value / q_proj,v_proj); \"all\": every Linear but the output head"},
    {"title", "str", "DoRA weight decomposition: magnitude vs direction change", "plot title"},
};

struct Result {
  std::string method, checkpoint, path;
};

bool module_selected(const std::vector<std::string>& names, const std::string& path) {
  for (const auto& t : names)
    if (path == t || (path.size() > t.size() && path.compare(path.size() - t.size(), t.size(), t) == 0 &&
                      path[path.size() - t.size() - 1] == '.'))
      return true;
  return false;
}

// Number of classifier outputs stored with a result (so the head loads), 0 when none.
int64_t stored_num_labels(const std::string& st_path, const std::string& key) {
  if (!fs::exists(st_path)) return 0;
  auto f = lorafit::io::SafetensorsFile::open(st_path);
  if (!f.contains(key)) return 0;
  return f.entry(key).shape.empty() ? 0 : f.entry(key).shape[0];
}

// The fine-tuned model of one result, every weight in F32.
std::unique_ptr<models::Model> load_result(const std::string& base, const Result& r) {
  const fs::path dir(r.path);
  models::LoadOptions lo;
  lo.dequantize = true;
  if (fs::exists(dir / "adapter_config.json")) {
    lo.num_labels = peft::adapter_num_labels(r.path);
    auto model = models::load_model(base, lo);
    {
      auto pm = peft::PeftModel::from_pretrained(*model, r.path);
      pm->merge_and_unload();  // W' = W + s·B A (LoRA) or m · (W + s·B A)/‖·‖ (DoRA)
    }
    return model;
  }
  if (fs::exists(dir / "trainable.safetensors")) {
    const std::string st = (dir / "trainable.safetensors").string();
    lo.num_labels = stored_num_labels(st, "classifier.weight");
    auto model = models::load_model(base, lo);
    auto f = lorafit::io::SafetensorsFile::open(st);
    int n = 0;
    for (auto& [name, p] : model->named_parameters()) {
      if (!f.contains(name)) continue;
      if (f.entry(name).shape != p->value.shape())
        throw Error("[analyze] " + st + ": tensor '" + name + "' has shape " +
                    lorafit::tensor::shape_str(f.entry(name).shape) + ", the base model has " +
                    p->value.str());
      p->value.copy_from(f.get_f32(name));
      ++n;
    }
    if (n == 0) throw Error("[analyze] " + st + ": no tensor names a parameter of " + base);
    return model;
  }
  if (fs::exists(dir / "config.json")) return models::load_model(r.path, lo);
  throw Error("[analyze] --result " + r.method + "=" + r.path +
              ": neither adapter_config.json, trainable.safetensors nor config.json there (give a "
              "lorafit run's final/ folder, a PEFT adapter folder or a Hugging Face model folder)");
}

}  // namespace

int cmd_analyze(int argc, char** argv) {
  if (lorafit::cli::wants_help(argc, argv)) {
    lorafit::cli::print_help(kAnalyzeUsage, lorafit::cli::Options(kAnalyzeOpts, "analyze").specs());
    return 0;
  }
  std::vector<Result> results;
  try {
    lorafit::cli::Options o(kAnalyzeOpts, "analyze");
    o.parse(argc, argv);
    if (!o.positional.empty())
      throw Error("[analyze] unexpected argument '" + o.positional[0] + "'; options start with --");
    const std::string base = o.str("base"), out = o.str("out"), title = o.str("title"),
                      modules_opt = o.str("modules");
    for (const std::string& v : o.all("result")) {
      const size_t eq = v.find('=');
      if (eq == std::string::npos || eq == 0 || eq + 1 == v.size())
        throw Error("[analyze] --result '" + v + "': expected METHOD[@CHECKPOINT]=PATH");
      Result r;
      std::string label = v.substr(0, eq);
      r.path = v.substr(eq + 1);
      const size_t at = label.find('@');
      r.method = label.substr(0, at);
      r.checkpoint = at == std::string::npos
                         ? fs::path(r.path).lexically_normal().filename().string()
                         : label.substr(at + 1);
      if (r.checkpoint.empty())
        r.checkpoint = fs::path(r.path).lexically_normal().parent_path().filename().string();
      if (r.method.empty()) throw Error("[analyze] --result '" + v + "': empty method name");
      results.push_back(r);
    }
    if (base.empty() || out.empty() || results.empty()) {
      std::fputs("lorafit analyze: --base, --result and --out are required\n", stderr);
      std::fputs(kAnalyzeUsage, stderr);
      return 2;
    }
    models::LoadOptions lo;
    lo.dequantize = true;
    auto base_model = models::load_model(base, lo);
    const std::string arch = base_model->config().arch;
    std::vector<std::string> names = modules_opt.empty()
                                         ? lorafit::train::default_target_modules(arch)
                                         : lorafit::cli::split_list(modules_opt);
    const bool all = names.size() == 1 && names[0] == "all";
    // Base weights of the selected modules, in module order.
    std::vector<std::pair<std::string, Tensor>> w0;
    auto lins = base_model->linears();
    for (size_t i = 0; i < lins.size(); ++i) {
      const bool head = i + 1 == lins.size();
      if (all ? !head : module_selected(names, lins[i].first))
        w0.emplace_back(lins[i].first, lins[i].second->weight.value.clone());
    }
    if (w0.empty())
      throw Error("[analyze] --modules '" + modules_opt + "' selects no Linear module of " + base +
                  " (e.g. '" + (lins.empty() ? "" : lins[0].first) + "')");
    base_model.reset();

    std::vector<peft::AnalysisPoint> points;
    for (const auto& r : results) {
      auto model = load_result(base, r);
      std::map<std::string, lorafit::nn::Linear*> by_path;
      for (auto& [p, l] : model->linears()) by_path[p] = l;
      double sum_m = 0, sum_d = 0;
      for (auto& [path, w] : w0) {
        auto it = by_path.find(path);
        if (it == by_path.end())
          throw Error("[analyze] " + r.path + ": the result has no module '" + path + "'");
        peft::WeightDelta d = peft::weight_decomposition_delta(w, it->second->weight.value, path);
        peft::AnalysisPoint pt;
        pt.method = r.method;
        pt.checkpoint = r.checkpoint;
        pt.module_path = path;
        std::tie(pt.layer, pt.module) = peft::split_layer_path(path);
        pt.delta_m = d.delta_m;
        pt.delta_d = d.delta_d;
        sum_m += d.delta_m;
        sum_d += d.delta_d;
        points.push_back(pt);
      }
      std::printf("%-10s %-12s %zu modules, mean ΔM %.4g, mean ΔD %.4g  (%s)\n", r.method.c_str(),
                  r.checkpoint.c_str(), w0.size(), sum_m / w0.size(), sum_d / w0.size(),
                  r.path.c_str());
    }
    fs::create_directories(out);
    peft::write_analysis_csv(out + "/analysis.csv", points);
    peft::write_analysis_svg(out + "/analysis.svg", points, title);
    std::printf("wrote %s/analysis.csv (%zu rows) and %s/analysis.svg\n", out.c_str(), points.size(),
                out.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lorafit analyze: %s\n", e.what());
    return 1;
  }
}
