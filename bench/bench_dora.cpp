// One training step (forward + backward, loss gradient from the classifier) of the real
// all-MiniLM-L6-v2 (models/, tools/fetch_models.sh) with an adapter of r = 8, alpha 16 on query
// and value, batch 32 × 64 tokens, frozen base, activations in an arena:
//   method 0  LoRA
//   method 1  DoRA, fast row norms (no [out, in] temporary)
//   method 2  DoRA, reference row norms (materializes W + s·B A every forward, as PEFT)
// Second argument: lora_dropout × 100 (0 or 10). With dropout DoRA needs a second base product
// W·drop(x) (PEFT does the same).
// Counters: tokens/s; arena_MiB = the step's activation arena peak; rss_MiB = the process's peak
// resident set during the timed loop (VmHWM, reset after the setup; run one method per process).
// Run from the repository root: build/bench_dora --benchmark_min_time=0.5
//   [--benchmark_filter=BM_MiniLMStep/method:1/dropout:0]
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>

#include "bench_main.h"
#include "lorafit/kernels.h"
#include "lorafit/models.h"
#include "lorafit/peft.h"
#include "peft/layers.h"  // DoraLinear, LoraLinear (internal to peft)

namespace {

using namespace lorafit;
using tensor::Tensor;

// $LORAFIT_MINILM, else models/all-MiniLM-L6-v2 under the current folder or its parent (run from
// the repository root or from build/).
std::string model_dir() {
  if (const char* e = std::getenv("LORAFIT_MINILM")) return e;
  for (const char* c : {"models/all-MiniLM-L6-v2", "../models/all-MiniLM-L6-v2"})
    if (std::filesystem::exists(std::string(c) + "/config.json")) return c;
  return "models/all-MiniLM-L6-v2";
}

double peak_rss_mib() {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return 0;
  char line[256];
  double kib = 0;
  while (std::fgets(line, sizeof line, f))
    if (!std::strncmp(line, "VmHWM:", 6)) kib = std::atof(line + 6);
  std::fclose(f);
  return kib / 1024.0;
}

// Resets VmHWM to the current RSS (Linux ≥ 4.0), so rss_MiB is the peak of the timed loop and
// not of the setup.
void reset_peak_rss() {
  if (FILE* f = std::fopen("/proc/self/clear_refs", "w")) {
    std::fputs("5", f);
    std::fclose(f);
  }
}

void BM_MiniLMStep(benchmark::State& state) {
  const int method = static_cast<int>(state.range(0));
  const float dropout = static_cast<float>(state.range(1)) / 100.0f;
  const int64_t B = 32, T = 64;
  models::LoadOptions lo;
  lo.num_labels = 2;
  auto model = models::load_model(model_dir(), lo);
  auto* bert = dynamic_cast<models::BertModel*>(model.get());
  if (!bert) {
    state.SkipWithError("not a BERT model");
    return;
  }
  peft::AdapterConfig cfg;
  cfg.r = 8;
  cfg.lora_alpha = 16;
  cfg.lora_dropout = dropout;
  cfg.target_modules = {"query", "value"};
  cfg.task_type = "SEQ_CLS";
  cfg.use_dora = method != 0;
  cfg.init_lora_weights = peft::LoraInit::Random;  // B ≠ 0: the norms are not ‖W‖
  peft::PeftModel pm(*model, cfg, 1);
  if (method == 2)
    for (auto& [path, l] : pm.lora_layers())
      dynamic_cast<peft::DoraLinear&>(*l).norm_mode = peft::DoraNorm::Reference;
  auto params = pm.trainable_parameters();

  Tensor ids = Tensor::zeros({B, T}, tensor::DType::I32);
  Tensor mask = Tensor::zeros({B, T}, tensor::DType::I32);
  Tensor tt = Tensor::zeros({B, T}, tensor::DType::I32);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      ids.i32()[b * T + t] = static_cast<int32_t>(1000 + (b * 131 + t * 17) % 20000);
      mask.i32()[b * T + t] = 1;
    }
  Tensor dlogits = Tensor::zeros({B, 2});
  for (int64_t b = 0; b < B; ++b) dlogits.f32()[b * 2 + (b % 2)] = 1.0f / B;

  tensor::Arena arena;
  nn::Context ctx;
  ctx.arena = &arena;
  ctx.training = true;
  ctx.seed = 3;
  size_t arena_peak = 0;
  reset_peak_rss();
  for (auto _ : state) {
    pm.zero_grad();
    Tensor h = bert->forward(ctx, ids, mask, tt);
    Tensor logits = bert->classify(ctx, h);
    bert->backward(ctx, bert->classify_backward(ctx, dlogits));
    benchmark::DoNotOptimize(logits.f32());
    arena_peak = std::max(arena_peak, arena.peak());
    arena.reset();
  }
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(B * T), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["arena_MiB"] = static_cast<double>(arena_peak) / (1024.0 * 1024.0);
  state.counters["rss_MiB"] = peak_rss_mib();
  state.SetLabel(std::string(method == 0 ? "lora" : method == 1 ? "dora-fast" : "dora-reference") +
                 " threads=" + std::to_string(kernels::num_threads()));
}

// One large Linear (4096 × 4096, Llama-7B's attention size) with a frozen BF16 base, 512 tokens,
// forward + backward of the adapter alone in a process: the reference norm allocates a 64 MiB
// F32 [out, in] temporary every forward, the fast one nothing of that size. Counters as above;
// here rss_MiB shows the temporary (run one method per process).
void BM_Linear4096(benchmark::State& state) {
  const int method = static_cast<int>(state.range(0));
  const int64_t n = 512, d = 4096;
  nn::Linear lin(d, d, false);
  {
    Tensor w = Tensor::zeros({d, d});
    float* p = w.f32();
    for (int64_t i = 0; i < d * d; ++i) p[i] = static_cast<float>((nn::random_uniform(1, i) - 0.5) * 0.04);
    lin.weight.value = w.to(tensor::DType::BF16);
  }
  std::unique_ptr<peft::LoraLinear> ad;
  if (method == 0) ad = std::make_unique<peft::LoraLinear>(lin, 8, 16.0, false, 0.0f);
  else ad = std::make_unique<peft::DoraLinear>(lin, 8, 16.0, false, 0.0f);
  ad->init(lin, peft::LoraInit::Random, 2);
  if (method == 2) dynamic_cast<peft::DoraLinear&>(*ad).norm_mode = peft::DoraNorm::Reference;
  ad->set_trainable(true);  // A, B (and DoRA's magnitude)
  lin.adapters.push_back(ad.get());
  Tensor x = Tensor::zeros({n, d}), dy = Tensor::zeros({n, d});
  for (int64_t i = 0; i < n * d; ++i) {
    x.f32()[i] = static_cast<float>(nn::random_uniform(3, i) - 0.5);
    dy.f32()[i] = static_cast<float>(nn::random_uniform(4, i) - 0.5) * 1e-3f;
  }
  tensor::Arena arena;
  nn::Context ctx;
  ctx.arena = &arena;
  ctx.training = true;
  size_t arena_peak = 0;
  reset_peak_rss();
  for (auto _ : state) {
    Tensor y = lin.forward(ctx, x);
    Tensor dx = lin.backward(ctx, dy);
    benchmark::DoNotOptimize(dx.f32());
    arena_peak = std::max(arena_peak, arena.peak());
    arena.reset();
  }
  lin.adapters.clear();
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["arena_MiB"] = static_cast<double>(arena_peak) / (1024.0 * 1024.0);
  state.counters["rss_MiB"] = peak_rss_mib();
  state.SetLabel(std::string(method == 0 ? "lora" : method == 1 ? "dora-fast" : "dora-reference") +
                 " threads=" + std::to_string(kernels::num_threads()));
}

BENCHMARK(BM_Linear4096)->ArgName("method")->Arg(0)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK(BM_MiniLMStep)
    ->ArgNames({"method", "dropout"})
    ->Args({0, 0})
    ->Args({1, 0})
    ->Args({2, 0})
    ->Args({0, 10})
    ->Args({1, 10})
    ->Args({2, 10})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

LORAFIT_BENCHMARK_MAIN()
