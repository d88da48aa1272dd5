// BF16 GEMM for --compute-dtype bf16: oneDNN's matmul (BF16 operands, fp32 accumulation and
// output), A converted from fp32 per call, B already BF16 (nn::Linear caches the frozen weight).
// Without oneDNN in the build (LORAFIT_DNNL=OFF) BF16 is refused by name and fp32 stays.
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/kernels_impl.h"

#ifdef LORAFIT_HAVE_DNNL
#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace lorafit::kernels {

namespace avx512 {
void f32_to_bf16(const float* x, uint16_t* y, int64_t n);  // convert_avx512.cpp
}

namespace {

bool cpu_has_avx512_bf16() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
  }();
  return has;
}

std::atomic<ComputeDtype>& g_compute() {
  static std::atomic<ComputeDtype> d{ComputeDtype::F32};
  return d;
}

#ifdef LORAFIT_HAVE_DNNL
const char* dnnl_isa_name(dnnl::cpu_isa isa) {
  switch (isa) {
    case dnnl::cpu_isa::sse41: return "sse41";
    case dnnl::cpu_isa::avx: return "avx";
    case dnnl::cpu_isa::avx2: return "avx2";
    case dnnl::cpu_isa::avx2_vnni: return "avx2_vnni";
    case dnnl::cpu_isa::avx512_core: return "avx512_core";
    case dnnl::cpu_isa::avx512_core_vnni: return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core_bf16: return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_amx: return "avx512_core_amx";
    default: return "other";
  }
}

bool dnnl_has_bf16() {
  static const bool has = [] {
    const auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
    const auto bf16 = static_cast<unsigned>(dnnl::cpu_isa::avx512_core_bf16);
    return (isa & bf16) == bf16;  // the ISA values are nested bit sets; AMX contains BF16
  }();
  return has;
}

dnnl::engine& engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

// One matmul primitive per shape, transposes, leading dimensions, alpha and beta (oneDNN's own
// cache would still build a primitive descriptor per call). Returned by value (a shared handle):
// a caller inside a parallel region keeps it alive while another thread clears the cache. The
// scratchpad is ours (user mode), per thread, so that one primitive may run on several threads
// at once (the attention heads).
struct Prim {
  dnnl::matmul mm;
  dnnl::memory::desc scratch;
};
using Key = std::tuple<bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float,
                       float>;
Prim primitive(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, int64_t lda,
               int64_t ldb, int64_t ldc, float alpha, float beta) {
  static std::mutex mu;
  static std::map<Key, Prim> cache;
  std::lock_guard<std::mutex> lock(mu);
  const Key key{trans_a, trans_b, m, n, k, lda, ldb, ldc, alpha, beta};
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  using md = dnnl::memory::desc;
  using dt = dnnl::memory::data_type;
  md src({m, k}, dt::bf16, trans_a ? dnnl::memory::dims{1, lda} : dnnl::memory::dims{lda, 1});
  md wei({k, n}, dt::bf16, trans_b ? dnnl::memory::dims{1, ldb} : dnnl::memory::dims{ldb, 1});
  md dst({m, n}, dt::f32, dnnl::memory::dims{ldc, 1});
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (alpha != 1.0f) attr.set_output_scales(0, {alpha});  // applied before the sum post-op
  if (beta != 0.0f) {
    dnnl::post_ops po;
    po.append_sum(beta);
    attr.set_post_ops(po);
  }
  dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, wei, dst), attr, engine());
  if (cache.size() > 4096) cache.clear();  // many distinct shapes (eval over lengths): start over
  return cache.emplace(key, Prim{dnnl::matmul(pd), pd.scratchpad_desc()}).first->second;
}

// C = alpha · op(A) · op(B) + beta · C on BF16 operands (see gemm_bf16_bits).
void run_matmul(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                const uint16_t* a, int64_t lda, const uint16_t* b, int64_t ldb, float beta,
                float* c, int64_t ldc) {
  const Prim p = primitive(trans_a, trans_b, m, n, k, lda, ldb, ldc, alpha, beta);
  using md = dnnl::memory::desc;
  using dt = dnnl::memory::data_type;
  dnnl::engine& e = engine();
  dnnl::memory src(
      md({m, k}, dt::bf16, trans_a ? dnnl::memory::dims{1, lda} : dnnl::memory::dims{lda, 1}), e,
      const_cast<uint16_t*>(a));
  dnnl::memory wei(
      md({k, n}, dt::bf16, trans_b ? dnnl::memory::dims{1, ldb} : dnnl::memory::dims{ldb, 1}), e,
      const_cast<uint16_t*>(b));
  dnnl::memory dst(md({m, n}, dt::f32, dnnl::memory::dims{ldc, 1}), e, c);
  thread_local std::vector<uint8_t> scratch;
  const size_t need = p.scratch.get_size();
  if (scratch.size() < need) scratch.resize(need);
  dnnl::memory sp(p.scratch, e, need ? scratch.data() : nullptr);
  thread_local dnnl::stream s(e);
  p.mm.execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst},
                   {DNNL_ARG_SCRATCHPAD, sp}});
  s.wait();
}
#endif

// The per-thread BF16 copy of A, kept between calls (no fresh pages per product).
uint16_t* a_buffer(int64_t n) {
  thread_local std::vector<uint16_t> buf;
  if (buf.size() < static_cast<size_t>(n)) buf.resize(static_cast<size_t>(n));
  return buf.data();
}

}  // namespace

const char* compute_dtype_name(ComputeDtype d) { return d == ComputeDtype::BF16 ? "bf16" : "fp32"; }

bool bf16_gemm_supported() {
#ifdef LORAFIT_HAVE_DNNL
  return dnnl_has_bf16();
#else
  return false;
#endif
}

std::string bf16_gemm_info() {
#ifdef LORAFIT_HAVE_DNNL
  const char* isa = dnnl_isa_name(dnnl::get_effective_cpu_isa());
  if (dnnl_has_bf16()) return std::string("oneDNN ") + isa;
  return std::string("this CPU has no AVX512-BF16 or AMX (oneDNN's ISA here: ") + isa + ")";
#else
  return "this lorafit was built without oneDNN (install libdnnl-dev and reconfigure)";
#endif
}

double bf16_speedup() {
  if (!bf16_gemm_supported()) return 0.0;
  // Measured once per process, on the threads set at the first call: a product of SmolLM2's
  // MLP shape (512 tokens, 1,536 -> 576), fp32 cblas against the BF16 path as nn::Linear runs it
  // (x rounded to BF16 per call, a BF16 copy of W), best of three after a warm-up each. AVX512-BF16
  // does not always pay: on Intel cores without AMX vdpbf16ps issues on one port where the fp32
  // FMA has two, so the BF16 products are slower than OpenBLAS's (docs/BENCHMARKS.md).
  static const double speedup = [] {
    constexpr int64_t m = 512, n = 576, k = 1536;
    std::vector<float> a(static_cast<size_t>(m * k)), w(static_cast<size_t>(n * k)),
        c(static_cast<size_t>(m * n));
    for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i % 61) * 0.01f - 0.3f;
    for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(i % 53) * 0.01f - 0.25f;
    std::vector<uint16_t> wb(w.size());
    f32_to_bf16(w.data(), wb.data(), static_cast<int64_t>(w.size()));
    auto best = [](auto&& run) {
      run();
      double t = 1e30;
      for (int r = 0; r < 3; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        run();
        t = std::min(t, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      return t;
    };
    const double t32 = best(
        [&] { gemm_raw(false, true, m, n, k, 1.0f, a.data(), k, w.data(), k, 0.0f, c.data(), n); });
    const double t16 =
        best([&] { gemm_bf16_raw(true, m, n, k, a.data(), k, wb.data(), k, 0.0f, c.data(), n); });
    return t16 > 0 ? t32 / t16 : 0.0;
  }();
  return speedup;
}

bool auto_picks_bf16(double speedup) { return speedup >= kAutoBf16MinSpeedup; }

ComputeDtype parse_compute_dtype(const std::string& s, const std::string& what) {
  if (s == "fp32" || s == "f32") return ComputeDtype::F32;
  if (s == "auto") return auto_picks_bf16(bf16_speedup()) ? ComputeDtype::BF16 : ComputeDtype::F32;
  if (s == "bf16") {
    LORAFIT_CHECK(bf16_gemm_supported(), what.c_str(), "bf16 is not available: " + bf16_gemm_info() +
                                                   "; use fp32 (or auto: bf16 where available and faster)");
    return ComputeDtype::BF16;
  }
  throw Error("[" + what + "] '" + s + "' is not a compute dtype (fp32, bf16, auto)");
}

void set_compute_dtype(ComputeDtype d) {
  if (d == ComputeDtype::BF16)
    LORAFIT_CHECK(bf16_gemm_supported(), "set_compute_dtype",
                  "bf16 is not available: " + bf16_gemm_info());
  g_compute().store(d, std::memory_order_relaxed);
}

ComputeDtype compute_dtype() { return g_compute().load(std::memory_order_relaxed); }

void f32_to_bf16(const float* x, uint16_t* y, int64_t n) {
  if (n <= 0) return;
  const bool fast = cpu_has_avx512_bf16();
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t i0 = c * kChunk, len = std::min(kChunk, n - i0);
    if (fast) avx512::f32_to_bf16(x + i0, y + i0, len);
    else tensor::f32_to_bf16_n(x + i0, y + i0, len);
  }
}

// The checks and the empty cases both BF16 products share: throws naming `op` on bad sizes
// (lda_ok: lda fits op(A); ldb_min: the least ldb for op(B)); true when there is nothing left to
// multiply (m or n 0: nothing; k 0: C = beta · C, done here).
static bool trivial_product(const char* op, bool lda_ok, int64_t ldb_min, int64_t m, int64_t n,
                            int64_t k, int64_t lda, int64_t ldb, float beta, float* c,
                            int64_t ldc) {
  LORAFIT_CHECK(m >= 0 && n >= 0 && k >= 0 && lda_ok && ldc >= n && ldb >= ldb_min, op,
                "bad sizes m=" + std::to_string(m) + " n=" + std::to_string(n) + " k=" +
                    std::to_string(k) + " lda=" + std::to_string(lda) + " ldb=" +
                    std::to_string(ldb) + " ldc=" + std::to_string(ldc));
  if (m == 0 || n == 0) return true;
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
    return true;
  }
  return false;
}

void gemm_bf16_raw(bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                   const uint16_t* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (trivial_product("gemm_bf16", lda >= k, trans_b ? k : n, m, n, k, lda, ldb, beta, c, ldc))
    return;
#ifdef LORAFIT_HAVE_DNNL
  LORAFIT_CHECK(dnnl_has_bf16(), "gemm_bf16", "bf16 is not available: " + bf16_gemm_info());
  uint16_t* ab = a_buffer(m * k);
  if (lda == k) {
    f32_to_bf16(a, ab, m * k);
  } else {
#pragma omp parallel for schedule(static) if (m * k > (1 << 16))
    for (int64_t i = 0; i < m; ++i) {
      if (cpu_has_avx512_bf16()) avx512::f32_to_bf16(a + i * lda, ab + i * k, k);
      else tensor::f32_to_bf16_n(a + i * lda, ab + i * k, k);
    }
  }
  run_matmul(false, trans_b, m, n, k, 1.0f, ab, k, b, ldb, beta, c, ldc);
#else
  (void)a;
  (void)b;
  (void)c;
  throw Error("[gemm_bf16] bf16 is not available: " + bf16_gemm_info());
#endif
}

void gemm_bf16_bits(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                    const uint16_t* a, int64_t lda, const uint16_t* b, int64_t ldb, float beta,
                    float* c, int64_t ldc) {
  if (trivial_product("gemm_bf16_bits", lda >= (trans_a ? m : k), trans_b ? k : n, m, n, k, lda,
                      ldb, beta, c, ldc))
    return;
#ifdef LORAFIT_HAVE_DNNL
  LORAFIT_CHECK(dnnl_has_bf16(), "gemm_bf16_bits", "bf16 is not available: " + bf16_gemm_info());
  run_matmul(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
#else
  (void)alpha;
  (void)a;
  (void)b;
  (void)c;
  throw Error("[gemm_bf16_bits] bf16 is not available: " + bf16_gemm_info());
#endif
}

void gemm_bf16_bits_ref(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                        const uint16_t* a, int64_t lda, const uint16_t* b, int64_t ldb,
                        float beta, float* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t p = 0; p < k; ++p) {
        const double av = tensor::bf16_to_f32(trans_a ? a[p * lda + i] : a[i * lda + p]);
        const double bv = tensor::bf16_to_f32(trans_b ? b[j * ldb + p] : b[p * ldb + j]);
        s += av * bv;
      }
      float& cij = c[i * ldc + j];
      cij = static_cast<float>(static_cast<double>(alpha) * s +
                               (beta == 0.0f ? 0.0 : static_cast<double>(beta) * cij));
    }
}

void gemm_bf16_ref(bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                   const uint16_t* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t p = 0; p < k; ++p) {
        const double av = tensor::bf16_to_f32(tensor::f32_to_bf16(a[i * lda + p]));
        const double bv = tensor::bf16_to_f32(trans_b ? b[j * ldb + p] : b[p * ldb + j]);
        s += av * bv;
      }
      float& cij = c[i * ldc + j];
      cij = static_cast<float>(s + (beta == 0.0f ? 0.0 : static_cast<double>(beta) * cij));
    }
}

}  // namespace lorafit::kernels
