// AVX2 kernels (placeholder: routes to the scalar reference until the vector versions land).
#include <cmath>

#include "kernels/kernels_impl.h"

namespace lorafit::kernels {

const Ops& avx2_ops() { return ref_ops(); }

namespace avx2 {
void exp_n(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::exp(x[i]);
}
void erf_n(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::erf(x[i]);
}
}  // namespace avx2

}  // namespace lorafit::kernels
