// The dense products of one LoRA training step, timed as raw library calls, to set beside the
// step's achieved GFLOP/s (bench/side_by_side.sh): for every frozen linear layer of the model its
// forward x·Wᵀ [tokens, in] -> [tokens, out] and input gradient dy·W, counted once per layer
// (and the LM head once), through
//   cblas   cblas_sgemm in fp32 (what --compute-dtype fp32 calls)
//   bf16    lorafit's kernels::gemm_bf16_raw: A converted to BF16 per call + oneDNN matmul
//           against a BF16 weight (what --compute-dtype bf16 calls)
//   dnnl    oneDNN's BF16 matmul alone, both operands already BF16 (the ceiling of bf16)
// Prints one JSON line per library: seconds of all products of one step (median of --reps) and
// GFLOP/s = their FLOPs / those seconds.
//
//   build/bench_step_gemm --hidden 576 --intermediate 1536 --heads 9 --kv-heads 3 --layers 30 \
//       --vocab 49152 --tokens 1024 [--reps 5] [--threads 2] [--name smollm2]
// MiniLM (BERT: q, k, v, o, intermediate, output; a 2-class head, not counted): --heads 12
// --kv-heads 12 --vocab 0 --mlp 2.
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "lorafit/blas_restart.h"
#include "lorafit/kernels.h"
#include "lorafit/tensor.h"

namespace k = lorafit::kernels;

namespace {

struct Shape {
  int64_t in, out, count;  // weight [out, in], layers that have it
};

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::vector<float> filled(size_t n, float seed) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>((i * 7919 + 13) % 1000) / 1000.0f - 0.5f + seed * 1e-3f;
  return v;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  lorafit::kernels::restart_with_vector_blas(argv);
  int64_t hidden = 576, inter = 1536, heads = 9, kv = 3, layers = 30, vocab = 49152, tokens = 1024;
  int64_t reps = 5, threads = 0, mlp = 3;
  std::string name = "smollm2";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    const char* v = argv[i + 1];
    if (a == "--hidden") hidden = std::atoll(v);
    else if (a == "--intermediate") inter = std::atoll(v);
    else if (a == "--heads") heads = std::atoll(v);
    else if (a == "--kv-heads") kv = std::atoll(v);
    else if (a == "--layers") layers = std::atoll(v);
    else if (a == "--vocab") vocab = std::atoll(v);
    else if (a == "--tokens") tokens = std::atoll(v);
    else if (a == "--reps") reps = std::atoll(v);
    else if (a == "--threads") threads = std::atoll(v);
    else if (a == "--mlp") mlp = std::atoll(v);
    else if (a == "--name") name = v;
    else {
      std::fprintf(stderr, "bench_step_gemm: unknown option %s\n", a.c_str());
      return 2;
    }
  }
  k::set_num_threads(static_cast<int>(threads));
  const int64_t hd = hidden / heads;
  std::vector<Shape> shapes = {{hidden, heads * hd, layers}, {hidden, kv * hd, 2 * layers},
                               {heads * hd, hidden, layers},  {hidden, inter, (mlp - 1) * layers},
                               {inter, hidden, layers}};
  if (vocab > 0) shapes.push_back({hidden, vocab, 1});
  double flops = 0;
  for (const Shape& s : shapes) flops += 2.0 * 2.0 * tokens * s.in * s.out * s.count;  // fwd + dx

  const bool bf16 = k::bf16_gemm_supported();
  std::vector<std::string> libs = {"cblas"};
  if (bf16) libs.push_back("bf16");
  for (const std::string& lib : libs) {
    double step = 0;  // Σ over shapes of count · (median forward + median dx)
    for (const Shape& s : shapes) {
      std::vector<float> w = filled(static_cast<size_t>(s.in * s.out), 1);
      std::vector<uint16_t> wb(w.size());
      lorafit::tensor::f32_to_bf16_n(w.data(), wb.data(), static_cast<int64_t>(w.size()));
      std::vector<float> x = filled(static_cast<size_t>(tokens * std::max(s.in, s.out)), 2);
      std::vector<float> y(static_cast<size_t>(tokens * std::max(s.in, s.out)));
      const int m = static_cast<int>(tokens), in = static_cast<int>(s.in), out = static_cast<int>(s.out);
      auto fwd = [&] {
        if (lib == "cblas")
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, out, in, 1.0f, x.data(), in,
                      w.data(), in, 0.0f, y.data(), out);
        else
          k::gemm_bf16_raw(true, m, out, in, x.data(), in, wb.data(), in, 0.0f, y.data(), out);
      };
      auto dx = [&] {
        if (lib == "cblas")
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, in, out, 1.0f, x.data(), out,
                      w.data(), in, 0.0f, y.data(), in);
        else
          k::gemm_bf16_raw(false, m, in, out, x.data(), out, wb.data(), in, 0.0f, y.data(), in);
      };
      std::vector<double> tf, td;
      fwd();  // warm-up: output pages, oneDNN's primitive
      dx();
      for (int64_t r = 0; r < reps; ++r) {
        double t0 = now();
        fwd();
        double t1 = now();
        dx();
        tf.push_back(t1 - t0);
        td.push_back(now() - t1);
      }
      step += (median(tf) + median(td)) * static_cast<double>(s.count);
    }
    std::printf(
        "{\"side\": \"%s\", \"workload\": \"gemm\", \"name\": \"%s\", \"tokens\": %lld, "
        "\"threads\": %d, \"step_gemm_s\": %.6f, \"gflops\": %.1f, \"flops\": %.6g}\n",
        lib.c_str(), name.c_str(), static_cast<long long>(tokens), k::num_threads(), step,
        flops / step * 1e-9, flops);
    std::fflush(stdout);
  }
  if (!bf16)
    std::fprintf(stderr, "bench_step_gemm: no BF16 GEMM here (%s)\n", k::bf16_gemm_info().c_str());
  return 0;
}
