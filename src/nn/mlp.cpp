// MLP: Gelu  y = down(gelu(up(x)))         (BERT intermediate / output)
//      SwiGLU y = down(silu(gate(x)) * up(x)) (Llama gate_proj / up_proj / down_proj)
#include "nn/nn_internal.h"

namespace lorafit::nn {

namespace {
constexpr const char* kOp = "MLP";
}

MLP::MLP(MlpKind kind, int64_t dim, int64_t hidden, bool bias, kernels::GeluKind gelu)
    : kind(kind), gelu(gelu), up(dim, hidden, bias), down(hidden, dim, bias) {
  if (kind == MlpKind::SwiGLU) gate = Linear(dim, hidden, bias);
}

void MLP::parameters(const std::string& prefix, NamedParameters& out) {
  if (kind == MlpKind::SwiGLU) gate.parameters(prefix + "gate_proj.", out);
  up.parameters(prefix + "up_proj.", out);
  down.parameters(prefix + "down_proj.", out);
}

Tensor MLP::forward(Context& ctx, const Tensor& x) {
  detail::check_last_dim(kOp, "x", x, up.in_features());
  if (kind == MlpKind::Gelu) {
    h_pre_ = up.forward(ctx, x);  // [..., hidden]
    Tensor h = ctx.alloc(h_pre_.shape());
    kernels::gelu_forward(h_pre_, h, gelu);
    return down.forward(ctx, h);
  }
  gate_out_ = gate.forward(ctx, x);  // [..., hidden]
  up_out_ = up.forward(ctx, x);      // [..., hidden]
  Tensor h = ctx.alloc(up_out_.shape());
  kernels::swiglu_forward(gate_out_, up_out_, h);
  return down.forward(ctx, h);
}

Tensor MLP::backward(Context& ctx, const Tensor& dy, bool need_input_grad) {
  NN_CHECK(kind == MlpKind::Gelu ? h_pre_.defined() : up_out_.defined(), kOp,
           "backward called before forward");
  detail::check_last_dim(kOp, "dy", dy, down.out_features());
  Tensor dh = down.backward(ctx, dy, true);
  if (kind == MlpKind::Gelu) {
    // forward was: h = gelu(h_pre)
    Tensor dh_pre = ctx.alloc(h_pre_.shape());
    kernels::gelu_backward(h_pre_, dh, dh_pre, gelu);
    return up.backward(ctx, dh_pre, need_input_grad);
  }
  // forward was: h = silu(gate_out) * up_out
  Tensor dgate = ctx.alloc(gate_out_.shape());
  Tensor dup = ctx.alloc(up_out_.shape());
  kernels::swiglu_backward(gate_out_, up_out_, dh, dgate, dup);
  Tensor dx = gate.backward(ctx, dgate, need_input_grad);
  Tensor dx_up = up.backward(ctx, dup, need_input_grad);
  if (need_input_grad) kernels::add(dx, dx_up, dx);  // x feeds both gate and up
  return dx;
}

}  // namespace lorafit::nn
