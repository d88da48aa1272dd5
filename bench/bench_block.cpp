// Transformer-block forward and forward+backward throughput, as LoRA training runs it: frozen base
// weights (no weight gradients), input gradients through every module, activations in an arena.
//   MiniLM-L12-H384 block (BERT post-LN): C=384, 12 heads, FF 1536, GELU (erf), LayerNorm,
//     padding mask, dropout 0.1 (hidden and attention probabilities), B=8, T=128.
//   SmolLM2-135M block (Llama pre-norm): C=576, 9 heads, 3 kv heads, FF 1536, SwiGLU, RMSNorm,
//     RoPE, causal, B=4, T=128. Second argument: base weights F32 (0) or BF16 (1), as shipped.
// Counter tokens/s = B·T per iteration. Run: build-nn/bench_block --benchmark_min_time=2
#include <benchmark/benchmark.h>

#include <cstdint>
#include <string>

#include "bench_main.h"
#include "lorafit/kernels.h"
#include "lorafit/nn.h"

namespace {

using namespace lorafit;
using nn::Context;
using tensor::DType;
using tensor::Tensor;

void fill(Tensor& t, uint64_t seed, float scale) {
  float* p = t.f32();
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (int64_t i = 0; i < t.numel(); ++i) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    p[i] = scale * (static_cast<float>(s >> 40) / 16777216.0f * 2.0f - 1.0f);
  }
}

// Random frozen weights (norm weights stay 1, biases 0), optionally stored as BF16.
void init_frozen(nn::Module& m, uint64_t seed, DType weight_dtype) {
  for (auto& [name, p] : m.named_parameters()) {
    if (p->value.ndim() == 2) {
      fill(p->value, seed++, 0.05f);
      if (weight_dtype != DType::F32) p->value = p->value.to(weight_dtype);
    }
    p->set_trainable(false);
  }
}

Tensor add(Context& ctx, const Tensor& a, const Tensor& b) {
  Tensor y = ctx.alloc(a.shape());
  kernels::add(a, b, y);
  return y;
}

// BERT layer: h = LN1(x + drop(attn(x))); y = LN2(h + drop(mlp(h))).
struct BertBlock : nn::Module {
  nn::Attention attn;
  nn::Dropout drop1{0.1f}, drop2{0.1f};
  nn::LayerNorm ln1, ln2;
  nn::MLP mlp;
  BertBlock(int64_t c, int64_t heads, int64_t ff)
      : attn([&] {
          nn::AttentionConfig cfg;
          cfg.hidden = c;
          cfg.n_heads = heads;
          cfg.qkv_bias = cfg.out_bias = true;
          cfg.dropout = 0.1f;
          return cfg;
        }()),
        ln1(c, 1e-12f),
        ln2(c, 1e-12f),
        mlp(nn::MlpKind::Gelu, c, ff, true, kernels::GeluKind::Erf) {}
  void parameters(const std::string& prefix, nn::NamedParameters& out) override {
    attn.parameters(prefix + "attention.", out);
    ln1.parameters(prefix + "ln1.", out);
    mlp.parameters(prefix + "mlp.", out);
    ln2.parameters(prefix + "ln2.", out);
  }
  Tensor forward(Context& ctx, const Tensor& x, const Tensor& pad) {
    Tensor a = drop1.forward(ctx, attn.forward(ctx, x, pad));
    Tensor h = ln1.forward(ctx, add(ctx, a, x));
    Tensor m = drop2.forward(ctx, mlp.forward(ctx, h));
    return ln2.forward(ctx, add(ctx, m, h));
  }
  Tensor backward(Context& ctx, const Tensor& dy) {
    Tensor dh2 = ln2.backward(ctx, dy);  // into m + h
    Tensor dh = mlp.backward(ctx, drop2.backward(ctx, dh2));
    kernels::add(dh, dh2, dh);
    Tensor dh1 = ln1.backward(ctx, dh);  // into a + x
    Tensor dx = attn.backward(ctx, drop1.backward(ctx, dh1));
    kernels::add(dx, dh1, dx);
    return dx;
  }
};

// Llama layer: h = x + attn(rms1(x)); y = h + mlp(rms2(h)).
struct LlamaBlock : nn::Module {
  nn::RMSNorm rms1, rms2;
  nn::Attention attn;
  nn::MLP mlp;
  LlamaBlock(int64_t c, int64_t heads, int64_t kv, int64_t ff)
      : rms1(c, 1e-5f),
        rms2(c, 1e-5f),
        attn([&] {
          nn::AttentionConfig cfg;
          cfg.hidden = c;
          cfg.n_heads = heads;
          cfg.n_kv_heads = kv;
          cfg.causal = true;
          cfg.rope = true;
          cfg.rope_theta = 100000.0f;
          return cfg;
        }()),
        mlp(nn::MlpKind::SwiGLU, c, ff, false) {}
  void parameters(const std::string& prefix, nn::NamedParameters& out) override {
    rms1.parameters(prefix + "input_layernorm.", out);
    attn.parameters(prefix + "self_attn.", out);
    rms2.parameters(prefix + "post_attention_layernorm.", out);
    mlp.parameters(prefix + "mlp.", out);
  }
  Tensor forward(Context& ctx, const Tensor& x) {
    Tensor h = add(ctx, x, attn.forward(ctx, rms1.forward(ctx, x)));
    return add(ctx, h, mlp.forward(ctx, rms2.forward(ctx, h)));
  }
  Tensor backward(Context& ctx, const Tensor& dy) {
    Tensor dh = rms2.backward(ctx, mlp.backward(ctx, dy));
    kernels::add(dh, dy, dh);  // residual
    Tensor dx = rms1.backward(ctx, attn.backward(ctx, dh));
    kernels::add(dx, dh, dx);
    return dx;
  }
};

void set_counters(benchmark::State& state, int64_t tokens) {
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(tokens),
                                                  benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(std::string("isa=") + kernels::isa_name(kernels::isa_active()) +
                 " threads=" + std::to_string(kernels::num_threads()));
}

void BM_MiniLMBlock(benchmark::State& state) {
  const bool backward = state.range(0) != 0;
  const int64_t B = 8, T = 128, C = 384;
  BertBlock block(C, 12, 1536);
  init_frozen(block, 1, DType::F32);
  Tensor x = Tensor::empty({B, T, C});
  fill(x, 99, 1.0f);
  Tensor pad = Tensor::full({B, T}, 1.0f);
  for (int64_t b = 0; b < B; ++b)  // ragged batch: sequence b keeps 128 - 12·b tokens
    for (int64_t t = T - 12 * b; t < T; ++t) pad.f32()[b * T + t] = 0.0f;
  Tensor dy = Tensor::empty({B, T, C});
  fill(dy, 98, 1.0f);
  tensor::Arena arena;
  Context ctx;
  ctx.arena = &arena;
  ctx.training = true;
  ctx.seed = 1;
  for (auto _ : state) {
    Tensor y = block.forward(ctx, x, pad);
    if (backward) benchmark::DoNotOptimize(block.backward(ctx, dy).f32());
    benchmark::DoNotOptimize(y.f32());
    arena.reset();
  }
  set_counters(state, B * T);
}

void BM_SmolLM2Block(benchmark::State& state) {
  const bool backward = state.range(0) != 0;
  const DType wdt = state.range(1) != 0 ? DType::BF16 : DType::F32;
  const int64_t B = 4, T = 128, C = 576;
  LlamaBlock block(C, 9, 3, 1536);
  init_frozen(block, 2, wdt);
  Tensor x = Tensor::empty({B, T, C});
  fill(x, 97, 1.0f);
  Tensor dy = Tensor::empty({B, T, C});
  fill(dy, 96, 1.0f);
  tensor::Arena arena;
  Context ctx;
  ctx.arena = &arena;
  ctx.training = true;
  for (auto _ : state) {
    Tensor y = block.forward(ctx, x);
    if (backward) benchmark::DoNotOptimize(block.backward(ctx, dy).f32());
    benchmark::DoNotOptimize(y.f32());
    arena.reset();
  }
  set_counters(state, B * T);
}

BENCHMARK(BM_MiniLMBlock)
    ->ArgName("fwd_bwd")
    ->Arg(0)
    ->Arg(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_SmolLM2Block)
    ->ArgNames({"fwd_bwd", "bf16"})
    ->Args({0, 0})
    ->Args({1, 0})
    ->Args({0, 1})
    ->Args({1, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

LORAFIT_BENCHMARK_MAIN()
