// GEMM throughput of kernels::gemm (validation + cblas_sgemm) beside raw cblas_sgemm on the
// linear-layer shapes of MiniLM (C=384, FFN 1536) and Llama-135M/SmolLM2 (C=576, FFN 1536), at
// 128 or 512 tokens, for the three products a Linear needs:
//   forward      y  = x · Wᵀ     M=tokens, N=out, K=in   (A no-trans, B trans)
//   backward dx  dx = dy · W     M=tokens, N=in,  K=out  (no transposes)
//   backward dW  dW = dyᵀ · x    M=out,    N=in,  K=tokens (A trans)
// plus our elementwise kernels, scalar reference vs AVX2. Prints numbers; passes or fails nothing.
//
//   ./build-kernels/bench_gemm --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <cstdint>
#include <vector>

#include "bench_main.h"
#include "lorafit/kernels.h"

namespace {

namespace k = lorafit::kernels;
using lorafit::tensor::Tensor;

Tensor filled(const lorafit::tensor::Shape& s, float seed) {
  Tensor t = Tensor::empty(s);
  float* p = t.f32();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<float>((i * 7919 + 13) % 1000) / 1000.0f - 0.5f + seed * 1e-3f;
  return t;
}

// args: M, N, K, trans_a, trans_b
void set_gflops(benchmark::State& st, int64_t m, int64_t n, int64_t kk) {
  st.counters["GFLOP/s"] = benchmark::Counter(2.0 * m * n * kk * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_gemm_lorafit(benchmark::State& st) {
  const int64_t m = st.range(0), n = st.range(1), kk = st.range(2);
  const bool ta = st.range(3), tb = st.range(4);
  Tensor a = filled(ta ? lorafit::tensor::Shape{kk, m} : lorafit::tensor::Shape{m, kk}, 1);
  Tensor b = filled(tb ? lorafit::tensor::Shape{n, kk} : lorafit::tensor::Shape{kk, n}, 2);
  Tensor c = Tensor::zeros({m, n});
  for (auto _ : st) {
    k::gemm(a, ta, b, tb, c);
    benchmark::DoNotOptimize(c.f32());
    benchmark::ClobberMemory();
  }
  set_gflops(st, m, n, kk);
}

void BM_gemm_cblas(benchmark::State& st) {
  const int64_t m = st.range(0), n = st.range(1), kk = st.range(2);
  const bool ta = st.range(3), tb = st.range(4);
  Tensor a = filled(ta ? lorafit::tensor::Shape{kk, m} : lorafit::tensor::Shape{m, kk}, 1);
  Tensor b = filled(tb ? lorafit::tensor::Shape{n, kk} : lorafit::tensor::Shape{kk, n}, 2);
  Tensor c = Tensor::zeros({m, n});
  for (auto _ : st) {
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                static_cast<int>(m), static_cast<int>(n), static_cast<int>(kk), 1.0f, a.f32(),
                static_cast<int>(ta ? m : kk), b.f32(), static_cast<int>(tb ? kk : n), 0.0f,
                c.f32(), static_cast<int>(n));
    benchmark::DoNotOptimize(c.f32());
    benchmark::ClobberMemory();
  }
  set_gflops(st, m, n, kk);
}

void gemm_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"M", "N", "K", "tA", "tB"});
  const std::vector<std::vector<int64_t>> shapes = {
      // forward x·Wᵀ
      {128, 384, 384, 0, 1}, {128, 1536, 384, 0, 1}, {512, 384, 1536, 0, 1},
      {128, 576, 576, 0, 1}, {128, 1536, 576, 0, 1},
      // backward to the input dy·W
      {128, 384, 1536, 0, 0}, {128, 576, 1536, 0, 0},
      // backward to the weight dyᵀ·x
      {384, 384, 128, 1, 0}, {1536, 576, 128, 1, 0},
  };
  for (const auto& s : shapes) b->Args(s);
  b->UseRealTime();
}
BENCHMARK(BM_gemm_lorafit)->Apply(gemm_shapes);
BENCHMARK(BM_gemm_cblas)->Apply(gemm_shapes);

// ---- elementwise: arg 0 = scalar reference, 1 = AVX2 -----------------------------------------
bool pick_isa(benchmark::State& st) {
  k::Isa isa = st.range(0) ? k::Isa::Avx2 : k::Isa::Scalar;
  if (!k::isa_supported(isa)) {
    st.SkipWithError("AVX2 not supported on this CPU");
    return false;
  }
  k::isa_set(isa);
  st.SetLabel(k::isa_name(isa));
  return true;
}
void set_bytes(benchmark::State& st, int64_t elems) {
  st.counters["Gelem/s"] = benchmark::Counter(elems * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// attention scores: 12 heads x 128 queries x 128 keys, with a key-padding mask
void BM_softmax(benchmark::State& st) {
  if (!pick_isa(st)) return;
  Tensor x = filled({12 * 128, 128}, 1), y = Tensor::empty({12 * 128, 128}), mask = Tensor::zeros({128});
  for (auto _ : st) k::softmax_forward(x, mask, y);
  set_bytes(st, x.numel());
}
// causal scores as in SmolLM2's attention: one head's 256 x 256, mask -inf above the diagonal
// (the vector kernel skips each row's trailing masked keys)
void BM_softmax_causal(benchmark::State& st) {
  if (!pick_isa(st)) return;
  constexpr int64_t T = 256;
  Tensor x = filled({T, T}, 1), y = Tensor::empty({T, T}), mask = Tensor::zeros({T, T});
  for (int64_t i = 0; i < T; ++i)
    for (int64_t j = i + 1; j < T; ++j) mask.f32()[i * T + j] = -__builtin_inff();
  for (auto _ : st) k::softmax_forward(x, mask, y);
  set_bytes(st, x.numel());
}
void BM_layernorm(benchmark::State& st) {
  if (!pick_isa(st)) return;
  Tensor x = filled({128, 384}, 1), w = filled({384}, 2), b = filled({384}, 3), y = Tensor::empty({128, 384});
  Tensor mean = Tensor::empty({128}), rstd = Tensor::empty({128});
  for (auto _ : st) k::layernorm_forward(x, w, b, 1e-12f, y, mean, rstd);
  set_bytes(st, x.numel());
}
void BM_gelu_erf(benchmark::State& st) {
  if (!pick_isa(st)) return;
  Tensor x = filled({128, 1536}, 1), y = Tensor::empty({128, 1536});
  for (auto _ : st) k::gelu_forward(x, y, k::GeluKind::Erf);
  set_bytes(st, x.numel());
}
BENCHMARK(BM_softmax)->Arg(0)->Arg(1)->ArgName("avx2")->UseRealTime();
BENCHMARK(BM_softmax_causal)->Arg(0)->Arg(1)->ArgName("avx2")->UseRealTime();
BENCHMARK(BM_layernorm)->Arg(0)->Arg(1)->ArgName("avx2")->UseRealTime();
BENCHMARK(BM_gelu_erf)->Arg(0)->Arg(1)->ArgName("avx2")->UseRealTime();

}  // namespace

LORAFIT_BENCHMARK_MAIN()
