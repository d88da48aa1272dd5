// PiSSA and OLoRA initialization, as PEFT 0.21 peft/tuners/lora/layer.py pissa_init / olora_init
// (fan_in_fan_out is always false here):
//   PiSSA: W [out, in] = V diag(S) Uh (torch.linalg.svd, full_matrices=False);
//          Sr = S[:r] / s;  A = diag(√Sr) Uh[:r]  [r, in];  B = V[:, :r] diag(√Sr)  [out, r]
//   OLoRA: W = Q R (reduced QR);  B = Q[:, :r];  A = R[:r]   (no division by s)
//   both:  W ← W − s·B A  (with the A, B just stored), so that the adapted model equals the
//          original one at init.
// PEFT computes in float32; we factor in double and round A, B to float, so A and B agree with
// PEFT up to the signs of singular vectors / QR columns (the products B A and W − s·B A agree).
#include <cmath>
#include <vector>

#include "lorafit/peft.h"
#include "peft/peft_internal.h"

namespace lorafit::peft {

void init_from_weight(LoraLinear& l, nn::Linear& base, LoraInit how) {
  Tensor& w = base.weight.value;
  const char* what = lora_init_name(how);
  if (w.dtype() != tensor::DType::F32)
    fail(std::string("init_lora_weights \"") + what + "\" needs an F32 base weight, got " +
         tensor::dtype_name(w.dtype()) + " (load the model with dequantize, then quantize the " +
         "residual)");
  const int64_t out = base.out_features(), in = base.in_features(), r = l.r();
  const int64_t k = std::min(out, in);
  if (r > k)
    fail(std::string("init_lora_weights \"") + what + "\": rank " + std::to_string(r) +
         " exceeds min(out, in) = " + std::to_string(k) + " of a [" + std::to_string(out) + ", " +
         std::to_string(in) + "] weight");
  std::vector<double> a(static_cast<size_t>(out * in));
  for (size_t i = 0; i < a.size(); ++i) a[i] = w.f32()[i];
  const double s = l.scaling();
  float* A = l.A.value.f32();  // [r, in]
  float* B = l.B.value.f32();  // [out, r]
  if (how == LoraInit::Pissa) {
    std::vector<double> U, S, Vt;
    linalg::svd(a, out, in, U, S, Vt);  // U [out, k], Vt [k, in]
    for (int64_t j = 0; j < r; ++j) {
      const double sq = std::sqrt(S[j] / s);
      for (int64_t c = 0; c < in; ++c) A[j * in + c] = static_cast<float>(sq * Vt[j * in + c]);
      for (int64_t o = 0; o < out; ++o) B[o * r + j] = static_cast<float>(U[o * k + j] * sq);
    }
  } else if (how == LoraInit::Olora) {
    std::vector<double> Q, R;
    linalg::qr(a, out, in, Q, R);  // Q [out, k], R [k, in]
    for (int64_t j = 0; j < r; ++j)
      for (int64_t c = 0; c < in; ++c) A[j * in + c] = static_cast<float>(R[j * in + c]);
    for (int64_t o = 0; o < out; ++o)
      for (int64_t j = 0; j < r; ++j) B[o * r + j] = static_cast<float>(Q[o * k + j]);
  } else if (how == LoraInit::Mica) {  // PEFT mica_init: B = U[:, -r:], A = 0, W unchanged
    std::vector<double> U, S, Vt;
    linalg::svd(a, out, in, U, S, Vt);
    for (int64_t o = 0; o < out; ++o)
      for (int64_t j = 0; j < r; ++j) B[o * r + j] = static_cast<float>(U[o * k + (k - r + j)]);
    l.A.value.zero();
    return;
  } else {
    fail(std::string("init_from_weight: \"") + what + "\" is not a weight-based init");
  }
  // W ← W − s·B A from the stored float A and B.
  add_low_rank(w, l.B.value, l.A.value, -s);
}

void add_low_rank(Tensor& w, const Tensor& b, const Tensor& a, double s) {
  const int64_t out = w.dim(0), in = w.dim(1), r = a.dim(0);
  if (w.dtype() != tensor::DType::F32 || b.dim(0) != out || b.dim(1) != r || a.dim(1) != in)
    fail("add_low_rank: W " + w.str() + ", B " + b.str() + ", A " + a.str());
  float* W = w.f32();
  const float* A = a.f32();
  const float* B = b.f32();
  for (int64_t o = 0; o < out; ++o)
    for (int64_t c = 0; c < in; ++c) {
      double d = 0.0;
      for (int64_t j = 0; j < r; ++j) d += static_cast<double>(B[o * r + j]) * A[j * in + c];
      W[o * in + c] = static_cast<float>(W[o * in + c] + s * d);
    }
  nn::weights_changed();  // BF16 copies of W (--compute-dtype bf16) are stale now
}

}  // namespace lorafit::peft
