// Public kernel API: validation, run-time ISA dispatch, OpenMP over rows, GEMM through OpenBLAS.
// The arithmetic lives in kernels_ref.cpp (scalar oracle) and kernels_avx2.cpp; see
// kernels_impl.h for the raw signatures.
#include <cblas.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "kernels/kernels_impl.h"
#include "lorafit/blas_restart.h"

namespace lorafit::kernels {

// ---- dispatch ---------------------------------------------------------------------------------
namespace {

bool cpu_has_avx2() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has;
}

std::atomic<Isa>& active_isa() {
  static std::atomic<Isa> isa{cpu_has_avx2() ? Isa::Avx2 : Isa::Scalar};
  return isa;
}

}  // namespace

bool isa_supported(Isa isa) { return isa == Isa::Scalar || cpu_has_avx2(); }
Isa isa_active() { return active_isa().load(std::memory_order_relaxed); }
void isa_set(Isa isa) {
  LORAFIT_CHECK(isa_supported(isa), "isa_set",
                std::string(isa_name(isa)) + " is not supported by this CPU (needs AVX2 and FMA)");
  active_isa().store(isa, std::memory_order_relaxed);
}
const char* isa_name(Isa isa) { return isa == Isa::Avx2 ? "avx2" : "scalar"; }

const Ops& active_ops() { return isa_active() == Isa::Avx2 ? avx2_ops() : ref_ops(); }

const std::vector<std::string>& op_names() {
  static const std::vector<std::string> names = {
      "gemm",
      "add",
      "mul",
      "scale",
      "axpy",
      "add_bias",
      "bias_backward",
      "gelu_forward",
      "gelu_backward",
      "silu_forward",
      "silu_backward",
      "swiglu_forward",
      "swiglu_backward",
      "softmax_forward",
      "softmax_backward",
      "layernorm_forward",
      "layernorm_backward",
      "rmsnorm_forward",
      "rmsnorm_backward",
      "rope_forward",
      "rope_backward",
      "cross_entropy_forward",
      "cross_entropy_backward",
      "embedding_forward",
      "embedding_backward",
      "f32_to_bf16",
      "gemm_bf16",
  };
  return names;
}

// ---- OpenBLAS kernel set ----------------------------------------------------------------------
std::string blas_core() {
  const char* c = openblas_get_corename();
  return c ? c : "";
}

std::string blas_core_upgrade(const std::string& chosen, bool avx2_fma, bool avx512) {
  static const char* const kVectorCores[] = {"haswell",    "zen",        "skylakex",
                                             "cooperlake", "sapphirerapids", "excavator"};
  std::string lower(chosen);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  for (const char* c : kVectorCores)
    if (lower == c) return "";
  if (avx512) return "SkylakeX";
  if (avx2_fma) return "Haswell";
  return "";
}

std::string blas_core_suggested() {
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return blas_core_upgrade(blas_core(), cpu_has_avx2(), avx512);
}

void restart_with_vector_blas(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") || std::getenv("LORAFIT_BLAS_KEEP")) return;
  const std::string want = blas_core_suggested();
  if (want.empty()) return;
  const std::string chosen = blas_core();
  const char* preload = std::getenv("LD_PRELOAD");
  if (!(preload && std::strstr(preload, "vgpreload"))) {
    setenv("OPENBLAS_CORETYPE", want.c_str(), 1);
    setenv("LORAFIT_BLAS_FALLBACK", chosen.c_str(), 1);
    execv("/proc/self/exe", argv);
    unsetenv("OPENBLAS_CORETYPE");  // the exec failed: go on as we are
    unsetenv("LORAFIT_BLAS_FALLBACK");
  }
  std::fprintf(stderr,
               "lorafit: warning: OpenBLAS uses its %s kernels on this CPU, which can run %s; "
               "set OPENBLAS_CORETYPE=%s for faster fp32 products\n",
               chosen.c_str(), want.c_str(), want.c_str());
}

namespace {
std::atomic<int> g_threads{0};  // 0: not set, use the OpenMP default
}

void set_num_threads(int n) {
  LORAFIT_CHECK(n >= 0, "set_num_threads", "thread count must be >= 0, got " + std::to_string(n));
  int t = n == 0 ? omp_get_num_procs() : n;
  openblas_set_num_threads(t);
  omp_set_num_threads(t);
  g_threads.store(t);
}
int num_threads() {
  int t = g_threads.load();
  return t > 0 ? t : omp_get_max_threads();
}

// ---- helpers ----------------------------------------------------------------------------------
namespace {

using std::string;

// Below this much work (elements touched) a parallel region costs more than it saves.
constexpr int64_t kParallelElementwise = 1 << 16;
constexpr int64_t kParallelRows = 1 << 14;

void require_f32(const char* op, const char* name, const Tensor& t) {
  LORAFIT_CHECK(t.defined(), op, string(name) + " is undefined");
  LORAFIT_CHECK(t.dtype() == DType::F32, op, string(name) + " is " + t.str() + ", expected F32");
}
void require_i32(const char* op, const char* name, const Tensor& t) {
  LORAFIT_CHECK(t.defined(), op, string(name) + " is undefined");
  LORAFIT_CHECK(t.dtype() == DType::I32, op, string(name) + " is " + t.str() + ", expected I32");
}
void require_same(const char* op, const char* na, const Tensor& a, const char* nb,
                  const Tensor& b) {
  LORAFIT_CHECK(
      a.shape() == b.shape(), op,
      string(na) + " is " + a.str() + " but " + nb + " is " + b.str() + ": shapes must match");
}
// A vector of `c` elements: shape [c].
void require_vec(const char* op, const char* name, const Tensor& t, int64_t c, const char* what,
                 const Tensor& ref) {
  require_f32(op, name, t);
  LORAFIT_CHECK(t.ndim() == 1 && t.dim(0) == c, op,
                string(name) + " is " + t.str() + " but " + what + " is " + ref.str() +
                    ": expected F32[" + std::to_string(c) + "]");
}
// Rows of the last dimension: x [..., c] seen as [rows, c].
int64_t last_dim(const char* op, const char* name, const Tensor& t) {
  LORAFIT_CHECK(t.ndim() >= 1, op,
                string(name) + " is " + t.str() + ": needs at least one dimension");
  return t.dim(-1);
}
int64_t rows_of(const Tensor& t, int64_t c) { return c == 0 ? 0 : t.numel() / c; }

// Calls f(begin, end) on contiguous chunks of [0, n), in parallel when n * cost >= threshold.
// Chunk starts are rounded down to multiples of `align` so vector loops keep full lanes.
template <class F>
void parallel_chunks(int64_t n, int64_t cost, int64_t threshold, int64_t align, F&& f) {
  int nt = omp_get_max_threads();
  if (nt <= 1 || n < 2 || n * cost < threshold) {
    f(int64_t{0}, n);
    return;
  }
  const int64_t chunks = std::min<int64_t>(nt, n);
  auto bound = [&](int64_t ci) {
    if (ci == chunks) return n;
    return (n * ci / chunks) / align * align;
  };
#pragma omp parallel for schedule(static)
  for (int64_t ci = 0; ci < chunks; ++ci) f(bound(ci), bound(ci + 1));
}

// Number of chunks parallel_rows would use (for per-chunk reduction buffers).
int64_t chunk_count(int64_t n, int64_t cost, int64_t threshold) {
  int nt = omp_get_max_threads();
  if (nt <= 1 || n < 2 || n * cost < threshold) return 1;
  return std::min<int64_t>(nt, n);
}

bool overlaps(const float* a, int64_t na, const float* b, int64_t nb) {
  return na > 0 && nb > 0 && a < b + nb && b < a + na;
}

}  // namespace

// ---- GEMM -------------------------------------------------------------------------------------
void gemm_raw(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
              const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
              int64_t ldc) {
  const char* op = "gemm";
  LORAFIT_CHECK(m >= 0 && n >= 0 && k >= 0, op,
                "negative size m=" + std::to_string(m) + " n=" + std::to_string(n) +
                    " k=" + std::to_string(k));
  LORAFIT_CHECK(m <= INT_MAX && n <= INT_MAX && k <= INT_MAX && lda <= INT_MAX && ldb <= INT_MAX &&
                    ldc <= INT_MAX,
                op, "sizes exceed the 32-bit BLAS interface");
  // Row-major storage: A is m x k (or k x m when transposed), etc.
  const int64_t a_cols = trans_a ? m : k, b_cols = trans_b ? k : n;
  LORAFIT_CHECK(lda >= std::max<int64_t>(1, a_cols), op,
                "lda=" + std::to_string(lda) + " is smaller than the " + std::to_string(a_cols) +
                    " columns of A");
  LORAFIT_CHECK(ldb >= std::max<int64_t>(1, b_cols), op,
                "ldb=" + std::to_string(ldb) + " is smaller than the " + std::to_string(b_cols) +
                    " columns of B");
  LORAFIT_CHECK(
      ldc >= std::max<int64_t>(1, n), op,
      "ldc=" + std::to_string(ldc) + " is smaller than the " + std::to_string(n) + " columns of C");
  if (m == 0 || n == 0) return;
  LORAFIT_CHECK(c != nullptr, op, "C is null");
  if (k == 0) {
    // C = beta C; BLAS (beta = 0) must not read C, which may hold garbage.
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
    return;
  }
  LORAFIT_CHECK(a != nullptr && b != nullptr, op, "A or B is null");
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta,
              c, static_cast<int>(ldc));
}

void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha,
          float beta) {
  const char* op = "gemm";
  require_f32(op, "A", a);
  require_f32(op, "B", b);
  require_f32(op, "C", c);
  auto desc = [](const char* name, const Tensor& t, bool tr) {
    return string(name) + " is " + t.str() + (tr ? " (transposed)" : "");
  };
  LORAFIT_CHECK(a.ndim() == 2, op, desc("A", a, trans_a) + ": expected a 2-D tensor");
  LORAFIT_CHECK(b.ndim() == 2, op, desc("B", b, trans_b) + ": expected a 2-D tensor");
  LORAFIT_CHECK(c.ndim() == 2, op, "C is " + c.str() + ": expected a 2-D tensor");
  const int64_t m = trans_a ? a.dim(1) : a.dim(0), k = trans_a ? a.dim(0) : a.dim(1);
  const int64_t kb = trans_b ? b.dim(1) : b.dim(0), n = trans_b ? b.dim(0) : b.dim(1);
  LORAFIT_CHECK(k == kb, op,
                desc("A", a, trans_a) + " but " + desc("B", b, trans_b) +
                    ": inner dimensions must agree (" + std::to_string(k) + " vs " +
                    std::to_string(kb) + ")");
  LORAFIT_CHECK(c.dim(0) == m && c.dim(1) == n, op,
                desc("A", a, trans_a) + " and " + desc("B", b, trans_b) + " give [" +
                    std::to_string(m) + ", " + std::to_string(n) + "] but C is " + c.str());
  if (c.numel() > 0)
    LORAFIT_CHECK((a.numel() == 0 || !overlaps(c.f32(), c.numel(), a.f32(), a.numel())) &&
                      (b.numel() == 0 || !overlaps(c.f32(), c.numel(), b.f32(), b.numel())),
                  op, "C " + c.str() + " overlaps an input");
  gemm_raw(trans_a, trans_b, m, n, k, alpha, a.numel() ? a.f32() : nullptr,
           std::max<int64_t>(1, a.dim(1)), b.numel() ? b.f32() : nullptr,
           std::max<int64_t>(1, b.dim(1)), beta, c.numel() ? c.f32() : nullptr,
           std::max<int64_t>(1, n));
}

// ---- elementwise ------------------------------------------------------------------------------
namespace {
template <class F>
void binary(const char* op, const Tensor& a, const Tensor& b, Tensor& y, F kernel) {
  require_f32(op, "a", a);
  require_f32(op, "b", b);
  require_f32(op, "y", y);
  require_same(op, "a", a, "b", b);
  require_same(op, "a", a, "y", y);
  float* py = y.f32();
  const float *pa = a.f32(), *pb = b.f32();
  parallel_chunks(y.numel(), 1, kParallelElementwise, 16,
                  [&](int64_t i0, int64_t i1) { kernel(py + i0, pa + i0, pb + i0, i1 - i0); });
}
}  // namespace

void add(const Tensor& a, const Tensor& b, Tensor& y) { binary("add", a, b, y, active_ops().add); }
void mul(const Tensor& a, const Tensor& b, Tensor& y) { binary("mul", a, b, y, active_ops().mul); }

void scale(const Tensor& x, float s, Tensor& y) {
  const char* op = "scale";
  require_f32(op, "x", x);
  require_f32(op, "y", y);
  require_same(op, "x", x, "y", y);
  auto k = active_ops().scale;
  float* py = y.f32();
  const float* px = x.f32();
  parallel_chunks(y.numel(), 1, kParallelElementwise, 16,
                  [&](int64_t i0, int64_t i1) { k(py + i0, px + i0, s, i1 - i0); });
}

void axpy(float alpha, const Tensor& x, Tensor& y) {
  const char* op = "axpy";
  require_f32(op, "x", x);
  require_f32(op, "y", y);
  require_same(op, "x", x, "y", y);
  auto k = active_ops().axpy;
  float* py = y.f32();
  const float* px = x.f32();
  parallel_chunks(y.numel(), 1, kParallelElementwise, 16,
                  [&](int64_t i0, int64_t i1) { k(py + i0, alpha, px + i0, i1 - i0); });
}

void add_bias(Tensor& x, const Tensor& bias) {
  const char* op = "add_bias";
  require_f32(op, "x", x);
  const int64_t c = last_dim(op, "x", x);
  require_vec(op, "bias", bias, c, "x", x);
  const int64_t rows = rows_of(x, c);
  auto k = active_ops().add_bias;
  float* px = x.f32();
  const float* pb = bias.f32();
  parallel_chunks(rows, c, kParallelElementwise, 1,
                  [&](int64_t r0, int64_t r1) { k(px + r0 * c, pb, r1 - r0, c); });
}

void bias_backward(const Tensor& dy, Tensor& db) {
  const char* op = "bias_backward";
  require_f32(op, "dy", dy);
  const int64_t c = last_dim(op, "dy", dy);
  require_vec(op, "db", db, c, "dy", dy);
  // A reduction over rows into one vector: serial (it is memory bound and small next to GEMM).
  active_ops().bias_backward(db.f32(), dy.f32(), rows_of(dy, c), c);
}

namespace {
template <class F>
void unary(const char* op, const Tensor& x, Tensor& y, F&& kernel) {
  require_f32(op, "x", x);
  require_f32(op, "y", y);
  require_same(op, "x", x, "y", y);
  float* py = y.f32();
  const float* px = x.f32();
  parallel_chunks(y.numel(), 8, kParallelElementwise, 16,
                  [&](int64_t i0, int64_t i1) { kernel(py + i0, px + i0, i1 - i0); });
}
template <class F>
void unary_backward(const char* op, const Tensor& x, const Tensor& dy, Tensor& dx, F&& kernel) {
  require_f32(op, "x", x);
  require_f32(op, "dy", dy);
  require_f32(op, "dx", dx);
  require_same(op, "x", x, "dy", dy);
  require_same(op, "x", x, "dx", dx);
  float* pdx = dx.f32();
  const float *px = x.f32(), *pdy = dy.f32();
  parallel_chunks(x.numel(), 8, kParallelElementwise, 16, [&](int64_t i0, int64_t i1) {
    kernel(pdx + i0, px + i0, pdy + i0, i1 - i0);
  });
}
}  // namespace

void gelu_forward(const Tensor& x, Tensor& y, GeluKind kind) {
  auto k = active_ops().gelu_forward;
  unary("gelu_forward", x, y, [&](float* py, const float* px, int64_t n) { k(py, px, n, kind); });
}
void gelu_backward(const Tensor& x, const Tensor& dy, Tensor& dx, GeluKind kind) {
  auto k = active_ops().gelu_backward;
  unary_backward("gelu_backward", x, dy, dx,
                 [&](float* pdx, const float* px, const float* pdy, int64_t n) {
                   k(pdx, px, pdy, n, kind);
                 });
}
void silu_forward(const Tensor& x, Tensor& y) { unary("silu_forward", x, y, active_ops().silu_forward); }
void silu_backward(const Tensor& x, const Tensor& dy, Tensor& dx) {
  unary_backward("silu_backward", x, dy, dx, active_ops().silu_backward);
}

void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& y) {
  binary("swiglu_forward", gate, up, y, active_ops().swiglu_forward);
}
void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dy, Tensor& dgate,
                     Tensor& dup) {
  const char* op = "swiglu_backward";
  require_f32(op, "gate", gate);
  require_f32(op, "up", up);
  require_f32(op, "dy", dy);
  require_f32(op, "dgate", dgate);
  require_f32(op, "dup", dup);
  require_same(op, "gate", gate, "up", up);
  require_same(op, "gate", gate, "dy", dy);
  require_same(op, "gate", gate, "dgate", dgate);
  require_same(op, "gate", gate, "dup", dup);
  auto k = active_ops().swiglu_backward;
  float *pdg = dgate.f32(), *pdu = dup.f32();
  const float *pg = gate.f32(), *pu = up.f32(), *pdy = dy.f32();
  parallel_chunks(gate.numel(), 8, kParallelElementwise, 16, [&](int64_t i0, int64_t i1) {
    k(pdg + i0, pdu + i0, pg + i0, pu + i0, pdy + i0, i1 - i0);
  });
}

// ---- softmax ----------------------------------------------------------------------------------
void softmax_forward(const Tensor& x, const Tensor& mask, Tensor& y) {
  const char* op = "softmax_forward";
  require_f32(op, "x", x);
  require_f32(op, "y", y);
  require_same(op, "x", x, "y", y);
  const int64_t n = last_dim(op, "x", x);
  const int64_t rows = rows_of(x, n);
  const float* pm = nullptr;
  int64_t mask_stride = 0;
  if (mask.defined()) {
    require_f32(op, "mask", mask);
    bool row = mask.ndim() == 1 && mask.dim(0) == n;
    LORAFIT_CHECK(row || mask.shape() == x.shape(), op,
                  "mask is " + mask.str() + " but x is " + x.str() + ": expected F32[" +
                      std::to_string(n) + "] or the shape of x");
    pm = mask.f32();
    mask_stride = row ? 0 : n;
  }
  auto k = active_ops().softmax_forward;
  float* py = y.f32();
  const float* px = x.f32();
  parallel_chunks(rows, n, kParallelRows, 1, [&](int64_t r0, int64_t r1) {
    k(py + r0 * n, px + r0 * n, pm ? pm + r0 * mask_stride : nullptr, mask_stride, r1 - r0, n);
  });
}

void softmax_backward(const Tensor& y, const Tensor& dy, Tensor& dx) {
  const char* op = "softmax_backward";
  require_f32(op, "y", y);
  require_f32(op, "dy", dy);
  require_f32(op, "dx", dx);
  require_same(op, "y", y, "dy", dy);
  require_same(op, "y", y, "dx", dx);
  const int64_t n = last_dim(op, "y", y);
  const int64_t rows = rows_of(y, n);
  auto k = active_ops().softmax_backward;
  float* pdx = dx.f32();
  const float *py = y.f32(), *pdy = dy.f32();
  parallel_chunks(rows, n, kParallelRows, 1, [&](int64_t r0, int64_t r1) {
    k(pdx + r0 * n, py + r0 * n, pdy + r0 * n, r1 - r0, n);
  });
}

// ---- normalisation ----------------------------------------------------------------------------
namespace {
// mean / rstd hold one value per row of x [..., c].
void require_stats(const char* op, const char* name, const Tensor& t, int64_t rows,
                   const Tensor& x) {
  require_f32(op, name, t);
  LORAFIT_CHECK(t.numel() == rows, op,
                string(name) + " is " + t.str() + " but x is " + x.str() + ": expected " +
                    std::to_string(rows) + " values (one per row)");
}

// Runs a row kernel that also accumulates parameter gradients: each chunk of rows accumulates
// into its own zeroed buffer (nparams vectors of c), summed afterwards in chunk order so the
// result does not depend on thread timing.
template <class F>
void rows_with_param_grads(int64_t rows, int64_t c, std::vector<float*> grads, F&& kernel) {
  const int64_t chunks = chunk_count(rows, c, kParallelRows);
  bool any = false;
  for (float* g : grads) any |= g != nullptr;
  if (chunks == 1 || !any) {
    parallel_chunks(rows, c, kParallelRows, 1, [&](int64_t r0, int64_t r1) {
      kernel(r0, r1, grads);
    });
    return;
  }
  const size_t ng = grads.size();
  std::vector<float> partial(static_cast<size_t>(chunks) * ng * c, 0.0f);
#pragma omp parallel for schedule(static)
  for (int64_t ci = 0; ci < chunks; ++ci) {
    int64_t r0 = rows * ci / chunks, r1 = rows * (ci + 1) / chunks;
    std::vector<float*> mine(ng, nullptr);
    for (size_t g = 0; g < ng; ++g)
      if (grads[g]) mine[g] = partial.data() + (static_cast<size_t>(ci) * ng + g) * c;
    kernel(r0, r1, mine);
  }
  for (size_t g = 0; g < ng; ++g) {
    if (!grads[g]) continue;
    for (int64_t ci = 0; ci < chunks; ++ci) {
      const float* p = partial.data() + (static_cast<size_t>(ci) * ng + g) * c;
      for (int64_t j = 0; j < c; ++j) grads[g][j] += p[j];
    }
  }
}
}  // namespace

void layernorm_forward(const Tensor& x, const Tensor& w, const Tensor& b, float eps, Tensor& y,
                       Tensor& mean, Tensor& rstd) {
  const char* op = "layernorm_forward";
  require_f32(op, "x", x);
  require_f32(op, "y", y);
  require_same(op, "x", x, "y", y);
  const int64_t c = last_dim(op, "x", x);
  LORAFIT_CHECK(c > 0, op, "x is " + x.str() + ": rows must not be empty");
  const int64_t rows = rows_of(x, c);
  require_vec(op, "w", w, c, "x", x);
  if (b.defined()) require_vec(op, "b", b, c, "x", x);
  require_stats(op, "mean", mean, rows, x);
  require_stats(op, "rstd", rstd, rows, x);
  auto k = active_ops().layernorm_forward;
  float *py = y.f32(), *pm = mean.f32(), *pr = rstd.f32();
  const float *px = x.f32(), *pw = w.f32(), *pb = b.defined() ? b.f32() : nullptr;
  parallel_chunks(rows, c, kParallelRows, 1, [&](int64_t r0, int64_t r1) {
    k(py + r0 * c, pm + r0, pr + r0, px + r0 * c, pw, pb, eps, r1 - r0, c);
  });
}

void layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& mean,
                        const Tensor& rstd, Tensor& dx, Tensor& dw, Tensor& db) {
  const char* op = "layernorm_backward";
  require_f32(op, "dy", dy);
  require_f32(op, "x", x);
  require_f32(op, "dx", dx);
  require_same(op, "x", x, "dy", dy);
  require_same(op, "x", x, "dx", dx);
  const int64_t c = last_dim(op, "x", x);
  LORAFIT_CHECK(c > 0, op, "x is " + x.str() + ": rows must not be empty");
  const int64_t rows = rows_of(x, c);
  require_vec(op, "w", w, c, "x", x);
  require_stats(op, "mean", mean, rows, x);
  require_stats(op, "rstd", rstd, rows, x);
  if (dw.defined()) require_vec(op, "dw", dw, c, "x", x);
  if (db.defined()) require_vec(op, "db", db, c, "x", x);
  auto k = active_ops().layernorm_backward;
  float* pdx = dx.f32();
  const float *pdy = dy.f32(), *px = x.f32(), *pw = w.f32(), *pm = mean.f32(),
              *pr = rstd.f32();
  rows_with_param_grads(rows, c, {dw.defined() ? dw.f32() : nullptr, db.defined() ? db.f32() : nullptr},
                        [&](int64_t r0, int64_t r1, const std::vector<float*>& g) {
                          k(pdx + r0 * c, g[0], g[1], pdy + r0 * c, px + r0 * c, pw, pm + r0,
                            pr + r0, r1 - r0, c);
                        });
}

void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd) {
  const char* op = "rmsnorm_forward";
  require_f32(op, "x", x);
  require_f32(op, "y", y);
  require_same(op, "x", x, "y", y);
  const int64_t c = last_dim(op, "x", x);
  LORAFIT_CHECK(c > 0, op, "x is " + x.str() + ": rows must not be empty");
  const int64_t rows = rows_of(x, c);
  require_vec(op, "w", w, c, "x", x);
  require_stats(op, "rstd", rstd, rows, x);
  auto k = active_ops().rmsnorm_forward;
  float *py = y.f32(), *pr = rstd.f32();
  const float *px = x.f32(), *pw = w.f32();
  parallel_chunks(rows, c, kParallelRows, 1, [&](int64_t r0, int64_t r1) {
    k(py + r0 * c, pr + r0, px + r0 * c, pw, eps, r1 - r0, c);
  });
}

void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                      Tensor& dx, Tensor& dw) {
  const char* op = "rmsnorm_backward";
  require_f32(op, "dy", dy);
  require_f32(op, "x", x);
  require_f32(op, "dx", dx);
  require_same(op, "x", x, "dy", dy);
  require_same(op, "x", x, "dx", dx);
  const int64_t c = last_dim(op, "x", x);
  LORAFIT_CHECK(c > 0, op, "x is " + x.str() + ": rows must not be empty");
  const int64_t rows = rows_of(x, c);
  require_vec(op, "w", w, c, "x", x);
  require_stats(op, "rstd", rstd, rows, x);
  if (dw.defined()) require_vec(op, "dw", dw, c, "x", x);
  auto k = active_ops().rmsnorm_backward;
  float* pdx = dx.f32();
  const float *pdy = dy.f32(), *px = x.f32(), *pw = w.f32(), *pr = rstd.f32();
  rows_with_param_grads(rows, c, {dw.defined() ? dw.f32() : nullptr},
                        [&](int64_t r0, int64_t r1, const std::vector<float*>& g) {
                          k(pdx + r0 * c, g[0], pdy + r0 * c, px + r0 * c, pw, pr + r0, r1 - r0,
                            c);
                        });
}

// ---- RoPE -------------------------------------------------------------------------------------
namespace {
// positions is I32 [T] or [B, T] for x [B, T, H, D]; returns whether it is per batch row.
bool check_rope_positions(const char* op, const Tensor& x, const Tensor& positions) {
  const int64_t bsz = x.dim(0), t = x.dim(1);
  require_i32(op, "positions", positions);
  const bool per_batch = positions.ndim() == 2;
  LORAFIT_CHECK((positions.ndim() == 1 && positions.dim(0) == t) ||
                    (per_batch && positions.dim(0) == bsz && positions.dim(1) == t),
                op,
                "positions is " + positions.str() + " but x is " + x.str() + ": expected I32[" +
                    std::to_string(t) + "] or I32[" + std::to_string(bsz) + ", " +
                    std::to_string(t) + "]");
  return per_batch;
}

void rope_apply(const char* op, Tensor& x, const Tensor& positions, float theta, RopeStyle style,
                float sign) {
  require_f32(op, "x", x);
  LORAFIT_CHECK(x.ndim() == 4, op, "x is " + x.str() + ": expected [B, T, H, D]");
  const int64_t bsz = x.dim(0), t = x.dim(1), h = x.dim(2), d = x.dim(3);
  LORAFIT_CHECK(d % 2 == 0, op, "x is " + x.str() + ": head dimension D must be even");
  const bool per_batch = check_rope_positions(op, x, positions);
  LORAFIT_CHECK(theta > 0.0f, op, "theta must be positive, got " + std::to_string(theta));
  if (x.numel() == 0) return;
  auto k = active_ops().rope_rotate;
  float* px = x.f32();
  const int32_t* pp = positions.i32();
  const int64_t tokens = bsz * t;
  parallel_chunks(tokens, h * d, kParallelRows, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> cs(static_cast<size_t>(d));
    int64_t last = INT64_MIN;
    for (int64_t i = i0; i < i1; ++i) {
      int64_t pos = per_batch ? pp[i] : pp[i % t];
      if (pos != last) rope_table(cs.data(), pos, d, theta);
      last = pos;
      k(px + i * h * d, cs.data(), h, d, style, sign);
    }
  });
}
}  // namespace

void rope_forward(Tensor& x, const Tensor& positions, float theta, RopeStyle style) {
  rope_apply("rope_forward", x, positions, theta, style, 1.0f);
}
// forward was: x <- R(pos) x with R orthogonal  =>  dx <- R(pos)^T dx = R(-pos) dx
void rope_backward(Tensor& dx, const Tensor& positions, float theta, RopeStyle style) {
  rope_apply("rope_backward", dx, positions, theta, style, -1.0f);
}

RopeTable::RopeTable(std::vector<double> inv_freq, double factor)
    : inv_freq_(std::move(inv_freq)), factor_(factor) {
  LORAFIT_CHECK(!inv_freq_.empty(), "RopeTable", "no frequencies");
  for (double f : inv_freq_)
    LORAFIT_CHECK(std::isfinite(f) && f > 0.0, "RopeTable",
                  "inverse frequencies must be positive and finite, got " + std::to_string(f));
  LORAFIT_CHECK(std::isfinite(factor) && factor > 0.0, "RopeTable",
                "factor must be positive and finite, got " + std::to_string(factor));
}

RopeTable RopeTable::from_theta(float theta, int64_t d) {
  LORAFIT_CHECK(theta > 0.0f && d > 0 && d % 2 == 0, "RopeTable",
                "theta must be positive and D even, got theta " + std::to_string(theta) + ", D " +
                    std::to_string(d));
  std::vector<double> f(static_cast<size_t>(d / 2));
  for (int64_t i = 0; i < d / 2; ++i)  // as rope_table
    f[static_cast<size_t>(i)] =
        std::pow(static_cast<double>(theta), -2.0 * static_cast<double>(i) / d);
  return RopeTable(std::move(f), 1.0);
}

void RopeTable::ensure(int64_t n) {
  if (n <= rows_) return;
  const int64_t d = dim(), half = d / 2;
  cs_.resize(static_cast<size_t>(n * d));
  for (int64_t p = rows_; p < n; ++p) {
    float* cs = cs_.data() + p * d;
    for (int64_t i = 0; i < half; ++i) {
      double ang = static_cast<double>(p) * inv_freq_[static_cast<size_t>(i)];
      double c = std::cos(ang), s = std::sin(ang);
      if (factor_ != 1.0) c *= factor_, s *= factor_;
      cs[i] = static_cast<float>(c);
      cs[half + i] = static_cast<float>(s);
    }
  }
  rows_ = n;
}

namespace {
void rope_apply_table(const char* op, Tensor& x, const Tensor& positions, const RopeTable& table,
                      RopeStyle style, float sign) {
  require_f32(op, "x", x);
  LORAFIT_CHECK(x.ndim() == 4, op, "x is " + x.str() + ": expected [B, T, H, D]");
  const int64_t bsz = x.dim(0), t = x.dim(1), h = x.dim(2), d = x.dim(3);
  LORAFIT_CHECK(d == table.dim(), op,
                "x is " + x.str() + " but the table has D = " + std::to_string(table.dim()));
  const bool per_batch = check_rope_positions(op, x, positions);
  const int32_t* pp = positions.i32();
  for (int64_t i = 0; i < positions.numel(); ++i)
    LORAFIT_CHECK(pp[i] >= 0 && pp[i] < table.rows(), op,
                  "position " + std::to_string(pp[i]) + " is outside the table's [0, " +
                      std::to_string(table.rows()) + ") (RopeTable::ensure)");
  if (x.numel() == 0) return;
  auto k = active_ops().rope_rotate;
  float* px = x.f32();
  parallel_chunks(bsz * t, h * d, kParallelRows, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      int64_t pos = per_batch ? pp[i] : pp[i % t];
      k(px + i * h * d, table.row(pos), h, d, style, sign);
    }
  });
}
}  // namespace

void rope_forward(Tensor& x, const Tensor& positions, const RopeTable& table, RopeStyle style) {
  rope_apply_table("rope_forward", x, positions, table, style, 1.0f);
}
// forward was: x <- m R(pos) x  =>  dx <- m R(pos)^T dx (cos unchanged, sin negated)
void rope_backward(Tensor& dx, const Tensor& positions, const RopeTable& table, RopeStyle style) {
  rope_apply_table("rope_backward", dx, positions, table, style, -1.0f);
}

// ---- cross-entropy ----------------------------------------------------------------------------
namespace {
int64_t check_targets(const char* op, const Tensor& targets, int64_t n, int64_t v,
                      int32_t ignore_index, const Tensor& logits) {
  require_i32(op, "targets", targets);
  LORAFIT_CHECK(targets.ndim() == 1 && targets.dim(0) == n, op,
                "targets is " + targets.str() + " but logits is " + logits.str() +
                    ": expected I32[" + std::to_string(n) + "]");
  const int32_t* pt = targets.i32();
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (pt[i] == ignore_index) continue;
    LORAFIT_CHECK(pt[i] >= 0 && pt[i] < v, op,
                  "targets[" + std::to_string(i) + "] = " + std::to_string(pt[i]) +
                      " is out of range for logits " + logits.str() + " (ignore_index " +
                      std::to_string(ignore_index) + ")");
    ++count;
  }
  return count;
}
}  // namespace

float cross_entropy_forward(const Tensor& logits, const Tensor& targets, int32_t ignore_index,
                            Tensor& probs) {
  const char* op = "cross_entropy_forward";
  require_f32(op, "logits", logits);
  require_f32(op, "probs", probs);
  LORAFIT_CHECK(logits.ndim() == 2 && logits.dim(1) > 0, op,
                "logits is " + logits.str() + ": expected [N, V] with V > 0");
  require_same(op, "logits", logits, "probs", probs);
  const int64_t n = logits.dim(0), v = logits.dim(1);
  check_targets(op, targets, n, v, ignore_index, logits);
  auto k = active_ops().cross_entropy_forward;
  float* pp = probs.f32();
  const float* pl = logits.f32();
  const int32_t* pt = targets.i32();
  const int64_t chunks = chunk_count(n, v, kParallelRows);
  std::vector<double> sums(static_cast<size_t>(chunks), 0.0);
  std::vector<int64_t> counts(static_cast<size_t>(chunks), 0);
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t ci = 0; ci < chunks; ++ci) {
    int64_t r0 = n * ci / chunks, r1 = n * (ci + 1) / chunks;
    sums[ci] = k(pp + r0 * v, pl + r0 * v, pt + r0, ignore_index, r1 - r0, v, &counts[ci]);
  }
  double total = 0;
  int64_t count = 0;
  for (int64_t ci = 0; ci < chunks; ++ci) {
    total += sums[ci];
    count += counts[ci];
  }
  return count == 0 ? 0.0f : static_cast<float>(total / static_cast<double>(count));
}

void cross_entropy_backward(const Tensor& probs, const Tensor& targets, int32_t ignore_index,
                            float dloss, Tensor& dlogits) {
  const char* op = "cross_entropy_backward";
  require_f32(op, "probs", probs);
  require_f32(op, "dlogits", dlogits);
  LORAFIT_CHECK(probs.ndim() == 2 && probs.dim(1) > 0, op,
                "probs is " + probs.str() + ": expected [N, V] with V > 0");
  require_same(op, "probs", probs, "dlogits", dlogits);
  const int64_t n = probs.dim(0), v = probs.dim(1);
  const int64_t count = check_targets(op, targets, n, v, ignore_index, probs);
  const float g = count == 0 ? 0.0f : dloss / static_cast<float>(count);
  auto k = active_ops().cross_entropy_backward;
  float* pd = dlogits.f32();
  const float* pp = probs.f32();
  const int32_t* pt = targets.i32();
  parallel_chunks(n, v, kParallelElementwise, 1, [&](int64_t r0, int64_t r1) {
    k(pd + r0 * v, pp + r0 * v, pt + r0, ignore_index, g, r1 - r0, v);
  });
}

// ---- embedding --------------------------------------------------------------------------------
namespace {
void check_ids(const char* op, const Tensor& ids, int64_t vocab, const Tensor& table) {
  require_i32(op, "ids", ids);
  const int32_t* p = ids.i32();
  for (int64_t i = 0; i < ids.numel(); ++i)
    LORAFIT_CHECK(p[i] >= 0 && p[i] < vocab, op,
                  "ids[" + std::to_string(i) + "] = " + std::to_string(p[i]) +
                      " is out of range for " + table.str());
}
// out / dout: [numel(ids), C], or any shape [..., C] with that many rows.
void check_rows(const char* op, const char* name, const Tensor& t, const Tensor& ids, int64_t c) {
  require_f32(op, name, t);
  LORAFIT_CHECK(t.ndim() >= 1 && t.dim(-1) == c && t.numel() == ids.numel() * c, op,
                string(name) + " is " + t.str() + " but ids is " + ids.str() + ": expected [" +
                    std::to_string(ids.numel()) + ", " + std::to_string(c) + "]");
}
}  // namespace

void embedding_forward(const Tensor& table, const Tensor& ids, Tensor& out) {
  const char* op = "embedding_forward";
  require_f32(op, "table", table);
  LORAFIT_CHECK(table.ndim() == 2, op, "table is " + table.str() + ": expected [V, C]");
  const int64_t c = table.dim(1);
  check_ids(op, ids, table.dim(0), table);
  check_rows(op, "out", out, ids, c);
  auto k = active_ops().embedding_forward;
  float* po = out.f32();
  const float* pt = table.f32();
  const int32_t* pi = ids.i32();
  parallel_chunks(ids.numel(), c, kParallelElementwise, 1,
                  [&](int64_t i0, int64_t i1) { k(po + i0 * c, pt, pi + i0, i1 - i0, c); });
}

void embedding_backward(const Tensor& dout, const Tensor& ids, Tensor& dtable) {
  const char* op = "embedding_backward";
  require_f32(op, "dtable", dtable);
  LORAFIT_CHECK(dtable.ndim() == 2, op, "dtable is " + dtable.str() + ": expected [V, C]");
  const int64_t c = dtable.dim(1);
  check_ids(op, ids, dtable.dim(0), dtable);
  check_rows(op, "dout", dout, ids, c);
  // Serial: repeated ids would race in a parallel scatter-add.
  active_ops().embedding_backward(dtable.f32(), dout.f32(), ids.i32(), ids.numel(), c);
}

}  // namespace lorafit::kernels
