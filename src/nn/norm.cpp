// LayerNorm and RMSNorm over the last dimension; the math lives in kernels/.
#include "nn/nn_internal.h"

namespace lorafit::nn {

namespace {

void check_param(const char* op, const char* name, const Tensor& p, int64_t c) {
  NN_CHECK(p.defined() && p.dtype() == DType::F32 && p.ndim() == 1 && p.dim(0) == c, op,
           detail::desc(name, p) + ", expected F32[" + std::to_string(c) +
               "] (convert norm weights to F32 at load time)");
}

}  // namespace

// ---- LayerNorm ----------------------------------------------------------------------------------

LayerNorm::LayerNorm(int64_t dim, float eps, bool has_bias) : eps(eps) {
  lorafit::check(dim > 0, "LayerNorm", "dim must be positive, got " + std::to_string(dim));
  weight.value = Tensor::full({dim}, 1.0f);
  if (has_bias) bias.value = Tensor::zeros({dim});
}

void LayerNorm::parameters(const std::string& prefix, NamedParameters& out) {
  out.emplace_back(prefix + "weight", &weight);
  if (bias.value.defined()) out.emplace_back(prefix + "bias", &bias);
}

Tensor LayerNorm::forward(Context& ctx, const Tensor& x) {
  NN_CHECK(weight.value.defined() && weight.value.ndim() == 1, "LayerNorm",
           detail::desc("weight", weight.value) + ", expected F32[C]");
  const int64_t c = weight.value.dim(0);
  check_param("LayerNorm", "weight", weight.value, c);
  if (bias.value.defined()) check_param("LayerNorm", "bias", bias.value, c);
  detail::check_last_dim("LayerNorm", "x", x, c);
  const int64_t n = x.numel() / c;
  Tensor y = ctx.alloc(x.shape());
  mean_ = ctx.alloc({n});
  rstd_ = ctx.alloc({n});
  Tensor y2 = y.view({n, c});
  kernels::layernorm_forward(x.view({n, c}), weight.value, bias.value, eps, y2, mean_, rstd_);
  x_ = x;
  return y;
}

Tensor LayerNorm::backward(Context& ctx, const Tensor& dy) {
  NN_CHECK(x_.defined(), "LayerNorm", "backward called before forward");
  NN_CHECK(dy.defined() && dy.dtype() == DType::F32 && dy.shape() == x_.shape(), "LayerNorm",
           detail::desc("dy", dy) + ", expected F32" + tensor::shape_str(x_.shape()));
  const int64_t c = weight.value.dim(0), n = x_.numel() / c;
  Tensor dx = ctx.alloc(x_.shape());
  Tensor dx2 = dx.view({n, c});
  // Undefined gradient tensors tell the kernel "frozen: skip".
  Tensor dw = weight.trainable ? weight.grad : Tensor();
  Tensor db = bias.value.defined() && bias.trainable ? bias.grad : Tensor();
  // forward was: y = (x - mean) * rstd * w + b
  kernels::layernorm_backward(dy.view({n, c}), x_.view({n, c}), weight.value, mean_, rstd_, dx2, dw,
                              db);
  return dx;
}

// ---- RMSNorm ------------------------------------------------------------------------------------

RMSNorm::RMSNorm(int64_t dim, float eps) : eps(eps) {
  lorafit::check(dim > 0, "RMSNorm", "dim must be positive, got " + std::to_string(dim));
  weight.value = Tensor::full({dim}, 1.0f);
}

void RMSNorm::parameters(const std::string& prefix, NamedParameters& out) {
  out.emplace_back(prefix + "weight", &weight);
}

Tensor RMSNorm::forward(Context& ctx, const Tensor& x) {
  NN_CHECK(weight.value.defined() && weight.value.ndim() == 1, "RMSNorm",
           detail::desc("weight", weight.value) + ", expected F32[C]");
  const int64_t c = weight.value.dim(0);
  check_param("RMSNorm", "weight", weight.value, c);
  detail::check_last_dim("RMSNorm", "x", x, c);
  const int64_t n = x.numel() / c;
  Tensor y = ctx.alloc(x.shape());
  rstd_ = ctx.alloc({n});
  Tensor y2 = y.view({n, c});
  kernels::rmsnorm_forward(x.view({n, c}), weight.value, eps, y2, rstd_);
  x_ = x;
  return y;
}

Tensor RMSNorm::backward(Context& ctx, const Tensor& dy) {
  NN_CHECK(x_.defined(), "RMSNorm", "backward called before forward");
  NN_CHECK(dy.defined() && dy.dtype() == DType::F32 && dy.shape() == x_.shape(), "RMSNorm",
           detail::desc("dy", dy) + ", expected F32" + tensor::shape_str(x_.shape()));
  const int64_t c = weight.value.dim(0), n = x_.numel() / c;
  Tensor dx = ctx.alloc(x_.shape());
  Tensor dx2 = dx.view({n, c});
  Tensor dw = weight.trainable ? weight.grad : Tensor();
  // forward was: y = x * rstd * w
  kernels::rmsnorm_backward(dy.view({n, c}), x_.view({n, c}), weight.value, rstd_, dx2, dw);
  return dx;
}

}  // namespace lorafit::nn
