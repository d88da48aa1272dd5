// Scalar reference kernels: the oracle for the AVX2 versions (kept forever, see STYLE.md).
// Written for clarity, in plain fp32 like the AVX2 code except for row reductions, which are
// accumulated in double here so that the oracle is at least as accurate as what it checks.
// Shapes, argument order and the (=) / (+=) conventions are documented in kernels_impl.h.
#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/kernels_impl.h"

namespace lorafit::kernels::ref {

namespace {
constexpr float kSqrt1_2 = 0.70710678118654752f;     // 1/sqrt(2)
constexpr float kInvSqrt2Pi = 0.39894228040143268f;  // 1/sqrt(2 pi)
constexpr float kSqrt2OverPi = 0.79788456080286536f; // sqrt(2/pi)
constexpr float kGeluC = 0.044715f;

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
}  // namespace

void add(float* y, const float* a, const float* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = a[i] + b[i];
}
void mul(float* y, const float* a, const float* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = a[i] * b[i];
}
void scale(float* y, const float* x, float s, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = s * x[i];
}
void axpy(float* y, float alpha, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// x [rows, c] += bias [c]
void add_bias(float* x, const float* bias, int64_t rows, int64_t c) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < c; ++j) x[r * c + j] += bias[j];
}
// forward was: x[r, j] += bias[j]  =>  db[j] += sum_r dy[r, j]
void bias_backward(float* db, const float* dy, int64_t rows, int64_t c) {
  for (int64_t j = 0; j < c; ++j) {
    double s = 0;
    for (int64_t r = 0; r < rows; ++r) s += dy[r * c + j];
    db[j] += static_cast<float>(s);
  }
}

// GELU, erf form: y = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)).
// Tanh form (Hendrycks & Gimpel): y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
void gelu_forward(float* y, const float* x, int64_t n, GeluKind kind) {
  if (kind == GeluKind::Erf) {
    for (int64_t i = 0; i < n; ++i) y[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * kSqrt1_2));
  } else {
    for (int64_t i = 0; i < n; ++i) {
      float u = kSqrt2OverPi * (x[i] + kGeluC * x[i] * x[i] * x[i]);
      y[i] = 0.5f * x[i] * (1.0f + std::tanh(u));
    }
  }
}
// erf:  y' = Phi(x) + x phi(x), phi(x) = exp(-x^2/2) / sqrt(2 pi)
// tanh: y' = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
void gelu_backward(float* dx, const float* x, const float* dy, int64_t n, GeluKind kind) {
  for (int64_t i = 0; i < n; ++i) {
    float v = x[i], d;
    if (kind == GeluKind::Erf) {
      float cdf = 0.5f * (1.0f + std::erf(v * kSqrt1_2));
      float pdf = kInvSqrt2Pi * std::exp(-0.5f * v * v);
      d = cdf + v * pdf;
    } else {
      float t = std::tanh(kSqrt2OverPi * (v + kGeluC * v * v * v));
      d = 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * kSqrt2OverPi * (1.0f + 3.0f * kGeluC * v * v);
    }
    dx[i] = dy[i] * d;
  }
}

// y = x sigmoid(x)
void silu_forward(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * sigmoid(x[i]);
}
// forward was: y = x s(x)  =>  y' = s + x s (1 - s) = s (1 + x (1 - s))
void silu_backward(float* dx, const float* x, const float* dy, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    float s = sigmoid(x[i]);
    dx[i] = dy[i] * s * (1.0f + x[i] * (1.0f - s));
  }
}

// y = silu(gate) * up
void swiglu_forward(float* y, const float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = gate[i] * sigmoid(gate[i]) * up[i];
}
// forward was: y = g s(g) u  =>  dg = dy u s (1 + g (1 - s)), du = dy g s
void swiglu_backward(float* dgate, float* dup, const float* gate, const float* up,
                     const float* dy, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    float g = gate[i], s = sigmoid(g), d = dy[i], u = up[i];
    dgate[i] = d * u * s * (1.0f + g * (1.0f - s));
    dup[i] = d * g * s;
  }
}

// y = exp(z - max z) / sum exp(z - max z), z = x + mask. A row with max z = -inf (all masked)
// gives zeros instead of 0/0.
void softmax_forward(float* y, const float* x, const float* mask, int64_t mask_stride,
                     int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    const float* mr = mask ? mask + r * mask_stride : nullptr;
    float* yr = y + r * n;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < n; ++j) mx = std::max(mx, mr ? xr[j] + mr[j] : xr[j]);
    if (mx == -std::numeric_limits<float>::infinity()) {
      std::fill(yr, yr + n, 0.0f);
      continue;
    }
    double sum = 0;
    for (int64_t j = 0; j < n; ++j) {
      float z = mr ? xr[j] + mr[j] : xr[j];
      yr[j] = std::exp(z - mx);
      sum += yr[j];
    }
    float inv = static_cast<float>(1.0 / sum);
    for (int64_t j = 0; j < n; ++j) yr[j] *= inv;
  }
}
// forward was: y = softmax(x)  =>  dx_j = y_j (dy_j - sum_k dy_k y_k)
void softmax_backward(float* dx, const float* y, const float* dy, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* yr = y + r * n;
    const float* dyr = dy + r * n;
    double dot = 0;
    for (int64_t j = 0; j < n; ++j) dot += static_cast<double>(dyr[j]) * yr[j];
    float d = static_cast<float>(dot);
    for (int64_t j = 0; j < n; ++j) dx[r * n + j] = yr[j] * (dyr[j] - d);
  }
}

// x, y [rows, c]; mean, rstd [rows]; y = (x - mean) rstd w + b
void layernorm_forward(float* y, float* mean, float* rstd, const float* x, const float* w,
                       const float* b, float eps, int64_t rows, int64_t c) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * c;
    double m = 0;
    for (int64_t j = 0; j < c; ++j) m += xr[j];
    m /= c;
    double v = 0;
    for (int64_t j = 0; j < c; ++j) v += (xr[j] - m) * (xr[j] - m);
    v /= c;
    float s = static_cast<float>(1.0 / std::sqrt(v + eps));
    float mf = static_cast<float>(m);
    for (int64_t j = 0; j < c; ++j)
      y[r * c + j] = (xr[j] - mf) * s * w[j] + (b ? b[j] : 0.0f);
    mean[r] = mf;
    rstd[r] = s;
  }
}
// forward was: y = norm * w + b, norm = (x - mean) rstd. With dnorm = dy * w (llm.c):
//   dx = rstd (dnorm - mean(dnorm) - norm * mean(dnorm * norm)),  dw += dy norm,  db += dy
void layernorm_backward(float* dx, float* dw, float* db, const float* dy, const float* x,
                        const float* w, const float* mean, const float* rstd, int64_t rows,
                        int64_t c) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * c;
    const float* dyr = dy + r * c;
    double dmean = 0, dnm = 0;
    for (int64_t j = 0; j < c; ++j) {
      float norm = (xr[j] - mean[r]) * rstd[r];
      float dn = dyr[j] * w[j];
      dmean += dn;
      dnm += static_cast<double>(dn) * norm;
    }
    float a = static_cast<float>(dmean / c), bb = static_cast<float>(dnm / c);
    for (int64_t j = 0; j < c; ++j) {
      float norm = (xr[j] - mean[r]) * rstd[r];
      float dn = dyr[j] * w[j];
      dx[r * c + j] = rstd[r] * (dn - a - norm * bb);
      if (dw) dw[j] += dyr[j] * norm;
      if (db) db[j] += dyr[j];
    }
  }
}

// y = x rstd w, rstd = 1 / sqrt(mean(x^2) + eps)
void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, float eps,
                     int64_t rows, int64_t c) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * c;
    double ss = 0;
    for (int64_t j = 0; j < c; ++j) ss += static_cast<double>(xr[j]) * xr[j];
    float s = static_cast<float>(1.0 / std::sqrt(ss / c + eps));
    for (int64_t j = 0; j < c; ++j) y[r * c + j] = xr[j] * s * w[j];
    rstd[r] = s;
  }
}
// forward was: y = norm * w, norm = x rstd. d rstd / d x_i = -rstd^3 x_i / c, so with
// dnorm = dy * w:  dx = rstd (dnorm - norm * mean(dnorm * norm)),  dw += dy norm
void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w,
                      const float* rstd, int64_t rows, int64_t c) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * c;
    const float* dyr = dy + r * c;
    double dnm = 0;
    for (int64_t j = 0; j < c; ++j) dnm += static_cast<double>(dyr[j]) * w[j] * xr[j] * rstd[r];
    float bb = static_cast<float>(dnm / c);
    for (int64_t j = 0; j < c; ++j) {
      float norm = xr[j] * rstd[r];
      dx[r * c + j] = rstd[r] * (dyr[j] * w[j] - norm * bb);
      if (dw) dw[j] += dyr[j] * norm;
    }
  }
}

// Rotation of pair (a, b) by angle sign*phi: a' = a cos - b sin sign, b' = b cos + a sin sign.
// HalfRotate pairs (i, i + d/2) (HF rotate_half); Adjacent pairs (2i, 2i + 1).
void rope_rotate(float* x, const float* cs, int64_t rows, int64_t d, RopeStyle style,
                 float sign) {
  const int64_t half = d / 2;
  for (int64_t r = 0; r < rows; ++r) {
    float* xr = x + r * d;
    for (int64_t i = 0; i < half; ++i) {
      float c = cs[i], s = sign * cs[half + i];
      int64_t ia = style == RopeStyle::HalfRotate ? i : 2 * i;
      int64_t ib = style == RopeStyle::HalfRotate ? i + half : 2 * i + 1;
      float a = xr[ia], b = xr[ib];
      xr[ia] = a * c - b * s;
      xr[ib] = b * c + a * s;
    }
  }
}

// loss_r = -log softmax(x_r)[t_r] = log sum_j exp(x_rj - m) + m - x_rt
double cross_entropy_forward(float* probs, const float* logits, const int32_t* targets,
                             int32_t ignore_index, int64_t rows, int64_t v, int64_t* count) {
  double total = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = logits + r * v;
    float* pr = probs + r * v;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < v; ++j) mx = std::max(mx, xr[j]);
    double sum = 0;
    for (int64_t j = 0; j < v; ++j) {
      pr[j] = std::exp(xr[j] - mx);
      sum += pr[j];
    }
    float inv = static_cast<float>(1.0 / sum);
    for (int64_t j = 0; j < v; ++j) pr[j] *= inv;
    if (targets[r] == ignore_index) continue;
    total += std::log(sum) + mx - xr[targets[r]];
    ++*count;
  }
  return total;
}
// forward was: L = (1/count) sum_r -log p_r[t_r]  =>  dlogits_r = g (p_r - onehot(t_r)),
// g = dloss / count, zero for ignored rows
void cross_entropy_backward(float* dlogits, const float* probs, const int32_t* targets,
                            int32_t ignore_index, float g, int64_t rows, int64_t v) {
  for (int64_t r = 0; r < rows; ++r) {
    float* dr = dlogits + r * v;
    if (targets[r] == ignore_index) {
      std::fill(dr, dr + v, 0.0f);
      continue;
    }
    for (int64_t j = 0; j < v; ++j) dr[j] = g * probs[r * v + j];
    dr[targets[r]] -= g;
  }
}

void embedding_forward(float* out, const float* table, const int32_t* ids, int64_t n, int64_t c) {
  for (int64_t i = 0; i < n; ++i)
    std::copy(table + ids[i] * c, table + (ids[i] + 1) * c, out + i * c);
}
// forward was: out[i] = table[ids[i]]  =>  dtable[ids[i]] += dout[i]
void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int64_t n,
                        int64_t c) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < c; ++j) dtable[ids[i] * c + j] += dout[i * c + j];
}

}  // namespace lorafit::kernels::ref

namespace lorafit::kernels {

const Ops& ref_ops() {
  static const Ops ops = {
      ref::add,
      ref::mul,
      ref::scale,
      ref::axpy,
      ref::add_bias,
      ref::bias_backward,
      ref::gelu_forward,
      ref::gelu_backward,
      ref::silu_forward,
      ref::silu_backward,
      ref::swiglu_forward,
      ref::swiglu_backward,
      ref::softmax_forward,
      ref::softmax_backward,
      ref::layernorm_forward,
      ref::layernorm_backward,
      ref::rmsnorm_forward,
      ref::rmsnorm_backward,
      ref::rope_rotate,
      ref::cross_entropy_forward,
      ref::cross_entropy_backward,
      ref::embedding_forward,
      ref::embedding_backward,
  };
  return ops;
}

}  // namespace lorafit::kernels
