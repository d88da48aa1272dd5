// lorafit kernels: CPU compute on fp32 tensors. GEMM goes through BLAS (OpenBLAS); every other
// kernel has a scalar reference (namespace ref, kept forever as the oracle) and an AVX2 version,
// chosen at run time. The functions here validate dtypes and shapes and throw lorafit::Error
// naming the operation and the shapes; the raw pointer versions live in src/kernels/.
//
// Conventions (as llm.c): activation gradients are written (=); parameter gradients
// (LayerNorm/RMSNorm weight and bias, embedding table) are accumulated (+=) so that gradient
// accumulation works. A null/undefined parameter-gradient tensor means "frozen: do not compute".
#pragma once

#include <string>
#include <vector>

#include "lorafit/tensor.h"

namespace lorafit::kernels {

using tensor::DType;
using tensor::Tensor;

// ---- dispatch ---------------------------------------------------------------------------------
enum class Isa { Scalar, Avx2 };
Isa isa_active();            // what the dispatched kernels use now
bool isa_supported(Isa isa);  // Avx2: CPU has AVX2 and FMA
void isa_set(Isa isa);        // for tests and benchmarks; throws if unsupported
const char* isa_name(Isa isa);

// Names of every kernel op (forward and backward count as one op each), for the op checker's
// coverage test: every name here must have a case.
const std::vector<std::string>& op_names();

// ---- OpenBLAS kernel set --------------------------------------------------------------------
// OpenBLAS (DYNAMIC_ARCH) picks its kernels ("core") from the CPU model when it is loaded and
// reads OPENBLAS_CORETYPE only then. Debian 12's 0.3.21 does not know CPUs newer than itself
// (e.g. Intel family 6 model 207, Emerald Rapids) and falls back to "Prescott" (SSE3): sgemm at
// about 1/5 of the AVX-512 kernels' speed. The CLI starts itself again with the suggested core.
std::string blas_core();  // openblas_get_corename(), e.g. "SkylakeX", "Haswell", "Prescott"
// The core to force when `chosen` is below what the CPU can run: "SkylakeX" with AVX-512
// F/BW/VL/DQ, "Haswell" with AVX2 and FMA; "" when `chosen` already is an AVX2 or AVX-512 core
// (Haswell, Zen, SkylakeX, Cooperlake, SapphireRapids, Excavator) or the CPU has neither.
std::string blas_core_upgrade(const std::string& chosen, bool avx2_fma, bool avx512);
// blas_core_upgrade(blas_core(), <this CPU>).
std::string blas_core_suggested();

// Threads used by BLAS and our parallel loops (0 = all cores).
void set_num_threads(int n);
int num_threads();

// ---- GEMM -------------------------------------------------------------------------------------
// C = alpha * op(A) * op(B) + beta * C, all 2-D F32. op(X) = X or Xᵀ. beta = 0 overwrites,
// beta = 1 accumulates.
void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c,
          float alpha = 1.0f, float beta = 0.0f);
// Raw strided form (row-major, leading dimensions), for per-head products inside attention.
void gemm_raw(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
              const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
              int64_t ldc);

// ---- BF16 GEMM (--compute-dtype bf16) ---------------------------------------------------------
// The frozen products of nn::Linear (x·Wᵀ, dy·W) and nn::Attention's dense products (q·kᵀ, P·v
// and their backward products) may run with BF16 operands and fp32 accumulation through
// oneDNN's matmul (AVX512-BF16 or AMX, picked by oneDNN at run time); the rest (LoRA path,
// gradients of trainable weights, softmax, optimizer) stays fp32. The setting is process-wide,
// read by nn::Linear on every product and by nn::Attention at each forward.
enum class ComputeDtype { F32, BF16 };
const char* compute_dtype_name(ComputeDtype d);  // "fp32", "bf16"
// "fp32" | "bf16" | "auto" (bf16 where bf16_gemm_supported() and auto_picks_bf16(bf16_speedup()),
// else fp32); throws naming `what` and the accepted values otherwise, and for "bf16" where it is
// not supported (with the reason).
ComputeDtype parse_compute_dtype(const std::string& s, const std::string& what = "--compute-dtype");
// Built with oneDNN and its effective ISA has AVX512-BF16 (avx512_core_bf16) or AMX.
bool bf16_gemm_supported();
// How much faster the BF16 products are than fp32 ones here: time(fp32) / time(bf16) on one
// SmolLM2-sized product, measured once per process (about 30 ms) on the current thread count;
// 0 where BF16 is not supported. About 2 on AMD Zen 4 (AVX512-BF16 at twice the fp32 rate),
// about 0.6 on Intel cores with AVX512-BF16 but no AMX (docs/BENCHMARKS.md).
double bf16_speedup();
// "auto" takes bf16 only where its products are at least this much faster: the step also
// converts activations to BF16 and keeps its LoRA path, attention softmax and optimizer in fp32.
inline constexpr double kAutoBf16MinSpeedup = 1.2;
bool auto_picks_bf16(double speedup);
// oneDNN's effective ISA name when supported, else why not (no oneDNN in this build, or the CPU
// lacks AVX512-BF16 / AMX).
std::string bf16_gemm_info();
void set_compute_dtype(ComputeDtype d);  // throws when BF16 is not supported
ComputeDtype compute_dtype();
// y[i] = x[i] rounded to BF16 (nearest even). Where the CPU has AVX512-BF16 this is
// vcvtneps2bf16, which also flushes fp32 subnormal inputs to zero (as oneDNN's own conversion);
// elsewhere tensor::f32_to_bf16_n.
void f32_to_bf16(const float* x, uint16_t* y, int64_t n);
// C [m, n] = A [m, k] · op(B) + beta · C with A fp32 (rounded to BF16 here, per call), B BF16
// (bits), products exact and sums in fp32 (oneDNN). trans_b: B is [n, k] (ldb ≥ k) and op(B) = Bᵀ;
// else B is [k, n] (ldb ≥ n). lda ≥ k, ldc ≥ n. Throws when !bf16_gemm_supported().
void gemm_bf16_raw(bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                   const uint16_t* b, int64_t ldb, float beta, float* c, int64_t ldc);
// The oracle: the same product in double from the BF16-rounded operands (tensor::f32_to_bf16).
void gemm_bf16_ref(bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                   const uint16_t* b, int64_t ldb, float beta, float* c, int64_t ldc);
// C [m, n] = alpha · op(A) · op(B) + beta · C with both operands already BF16 bits (the attention
// products, --compute-dtype bf16) and fp32 accumulation and output: op(A) is A [m, k] (lda ≥ k)
// or, trans_a, the transpose of A [k, m] (lda ≥ m); op(B) is B [k, n] (ldb ≥ n) or, trans_b,
// the transpose of B [n, k] (ldb ≥ k); ldc ≥ n. May run on several threads at once (each call
// single-threaded inside a parallel region). Throws when !bf16_gemm_supported().
void gemm_bf16_bits(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                    const uint16_t* a, int64_t lda, const uint16_t* b, int64_t ldb, float beta,
                    float* c, int64_t ldc);
// Its oracle: the same product in double from the BF16 values, rounded to fp32 once.
void gemm_bf16_bits_ref(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                        const uint16_t* a, int64_t lda, const uint16_t* b, int64_t ldb,
                        float beta, float* c, int64_t ldc);

// ---- elementwise (any shape, all operands same shape; y may alias an input) --------------------
void add(const Tensor& a, const Tensor& b, Tensor& y);           // y = a + b
void mul(const Tensor& a, const Tensor& b, Tensor& y);           // y = a * b
void scale(const Tensor& x, float s, Tensor& y);                 // y = s * x
void axpy(float alpha, const Tensor& x, Tensor& y);              // y += alpha * x
// Adds a bias row [C] to every row of x [..., C] in place.
void add_bias(Tensor& x, const Tensor& bias);
// db[C] += sum over rows of dy [..., C].
void bias_backward(const Tensor& dy, Tensor& db);

enum class GeluKind { Erf, Tanh };
void gelu_forward(const Tensor& x, Tensor& y, GeluKind kind);
void gelu_backward(const Tensor& x, const Tensor& dy, Tensor& dx, GeluKind kind);  // dx = dy*gelu'(x)
void silu_forward(const Tensor& x, Tensor& y);
void silu_backward(const Tensor& x, const Tensor& dy, Tensor& dx);

// SwiGLU: y = silu(gate) * up, and its backward to both inputs.
void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& y);
void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dy, Tensor& dgate,
                     Tensor& dup);

// ---- softmax ----------------------------------------------------------------------------------
// Row-wise over the last dimension of x [..., N], numerically stable. mask (optional, undefined
// for none) is additive and has shape [N] (broadcast to every row) or the same shape as x.
// A row whose every entry is -inf after masking gives all zeros (not NaN).
void softmax_forward(const Tensor& x, const Tensor& mask, Tensor& y);
// dx = y * (dy - sum(dy * y)) row-wise.
void softmax_backward(const Tensor& y, const Tensor& dy, Tensor& dx);

// ---- normalisation (rows of x [N, C]) ---------------------------------------------------------
// x may have any rank [..., C] (rows = numel / C); mean and rstd hold one value per row (any
// shape with that many elements, e.g. [N] or [B, T]).
// y = (x - mean) * rstd * w + b; mean and rstd [N] are saved for backward. b may be undefined.
void layernorm_forward(const Tensor& x, const Tensor& w, const Tensor& b, float eps, Tensor& y,
                       Tensor& mean, Tensor& rstd);
// dx written; dw, db accumulated when defined.
void layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& mean,
                        const Tensor& rstd, Tensor& dx, Tensor& dw, Tensor& db);
// y = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps) [N] saved.
void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd);
void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                      Tensor& dx, Tensor& dw);

// ---- RoPE -------------------------------------------------------------------------------------
// x is [B, T, H, D] (D even), positions [T] (I32) or [B, T] (I32). In place.
// HalfRotate: pairs (i, i + D/2), as Hugging Face `rotate_half` (GPT-NeoX style).
// Adjacent:   pairs (2i, 2i + 1), as llama.cpp's LLAMA rope (GPT-J style).
// Frequency of pair i: theta^(-2i/D). Backward applies the inverse rotation.
enum class RopeStyle { HalfRotate, Adjacent };
void rope_forward(Tensor& x, const Tensor& positions, float theta, RopeStyle style);
void rope_backward(Tensor& dx, const Tensor& positions, float theta, RopeStyle style);

// The cos/sin of every position up to a length, computed once (in double, rounded to fp32) and
// reused by every layer and step, for any per-pair inverse frequencies f_i (RoPE scaling folds
// into them: linear, dynamic NTK, llama3, YaRN) and a factor m on cos and sin (YaRN's attention
// factor; 1 otherwise). Row p: m·cos(p·f_i) for i < D/2, then m·sin(p·f_i).
// from_theta(theta, D) has f_i = theta^(-2i/D): the same tables as the theta overloads above.
class RopeTable {
 public:
  RopeTable() = default;
  RopeTable(std::vector<double> inv_freq, double factor);
  static RopeTable from_theta(float theta, int64_t d);
  // Rows for positions [0, n) (grows; never shrinks). Not thread-safe: call before sharing.
  void ensure(int64_t n);
  int64_t rows() const { return rows_; }
  int64_t dim() const { return static_cast<int64_t>(inv_freq_.size()) * 2; }
  double factor() const { return factor_; }
  const std::vector<double>& inv_freq() const { return inv_freq_; }
  const float* row(int64_t pos) const { return cs_.data() + pos * dim(); }

 private:
  std::vector<double> inv_freq_;
  double factor_ = 1.0;
  int64_t rows_ = 0;
  std::vector<float> cs_;
};
// As above with the table's frequencies: x is [B, T, H, D] with D == table.dim(), positions in
// [0, table.rows()). Backward applies the transpose (m·R(p)ᵀ), the inverse when m = 1.
void rope_forward(Tensor& x, const Tensor& positions, const RopeTable& table, RopeStyle style);
void rope_backward(Tensor& dx, const Tensor& positions, const RopeTable& table, RopeStyle style);

// ---- cross-entropy ----------------------------------------------------------------------------
// logits [N, V], targets [N] I32. Rows whose target == ignore_index count for nothing.
// Returns the mean loss over counted rows (0 when none). probs [N, V] receives softmax(logits)
// for backward.
float cross_entropy_forward(const Tensor& logits, const Tensor& targets, int32_t ignore_index,
                            Tensor& probs);
// dlogits = dloss * (probs - onehot(target)) / count for counted rows, 0 for ignored rows.
void cross_entropy_backward(const Tensor& probs, const Tensor& targets, int32_t ignore_index,
                            float dloss, Tensor& dlogits);

// ---- embedding --------------------------------------------------------------------------------
// out[i, :] = table[ids[i], :]; ids any shape of I32, out [numel(ids), C] (or any [..., C] with
// numel(ids) rows, e.g. [B, T, C]). Out-of-range ids throw.
void embedding_forward(const Tensor& table, const Tensor& ids, Tensor& out);
// dtable[ids[i], :] += dout[i, :] (scatter-add).
void embedding_backward(const Tensor& dout, const Tensor& ids, Tensor& dtable);

}  // namespace lorafit::kernels
