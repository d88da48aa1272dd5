// Op-checker cases for the nn/ modules: every backward against central finite differences of
// L = sum(forward(x) * r) (so dL/dy = r), on odd shapes, for the input and every trainable
// parameter; frozen parameters must get no gradient buffer. Attention is also checked against a
// naive double-precision reference written here.
//
// Tolerances (relative error ||analytic - numeric|| / max norm, see op_check.h):
//   functions linear in the checked variable (Linear, Embedding, Dropout): eps 1e-2, tol 1e-4;
//   nonlinear (norms, MLP, Attention): eps 1e-2 or 3e-3, tol 2e-3 (fp32 forward, double loss).
#include <cmath>
#include <cstring>
#include <functional>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "lorafit/kernels.h"
#include "lorafit/nn.h"
#include "lorafit/quant.h"
#include "nn/nn_internal.h"
#include "ops/op_check.h"

namespace {

using lorafit::kernels::GeluKind;
using lorafit::kernels::RopeStyle;
using lorafit::nn::Attention;
using lorafit::nn::AttentionConfig;
using lorafit::nn::Context;
using lorafit::nn::Dropout;
using lorafit::nn::Embedding;
using lorafit::nn::LayerNorm;
using lorafit::nn::Linear;
using lorafit::nn::MLP;
using lorafit::nn::MlpKind;
using lorafit::nn::Module;
using lorafit::nn::RMSNorm;
using opcheck::DType;
using opcheck::Shape;
using opcheck::Tensor;

// Fills every parameter of m with U(-s, s) (norm weights around 1 with s_norm) and sets trainable.
void randomize(Module& m, uint64_t seed, float s, bool trainable) {
  for (auto& [name, p] : m.named_parameters()) {
    opcheck::fill_uniform(p->value, seed++, -s, s);
    p->set_trainable(trainable);
  }
}

using Fwd = std::function<Tensor(Context&)>;
using Bwd = std::function<Tensor(Context&, const Tensor&)>;

// Runs fwd then bwd with dy = r (random), then compares dx (when x is defined) and every
// trainable parameter's grad with central finite differences of sum(fwd(x) * r).
// make_ctx builds a fresh Context for every forward (so dropout sees the same counters).
void check_grads(
    const std::string& what, Module& m, Tensor x, const Fwd& fwd, const Bwd& bwd, float eps,
    double tol, const std::function<Context()>& make_ctx = [] { return Context{}; },
    const std::set<std::string>& zero_grad_names = {}) {
  Context ctx = make_ctx();
  Tensor y = fwd(ctx);
  Tensor r = opcheck::random(y.shape(), 777);
  m.zero_grad();
  Tensor dx = bwd(ctx, r);
  auto loss = [&] {
    Context c = make_ctx();
    return opcheck::dot(fwd(c), r);
  };
  if (x.defined()) {
    ASSERT_TRUE(dx.defined()) << what << ": no input gradient";
    Tensor dx_copy = dx.clone();  // dx may alias r (identity dropout); keep it stable
    std::vector<double> num = opcheck::finite_diff(x, loss, eps);
    opcheck::expect_grad(dx_copy, num, tol, what + " dx");
  }
  for (auto& [name, p] : m.named_parameters()) {
    if (!p->trainable) {
      EXPECT_FALSE(p->grad.defined()) << what << ": frozen " << name << " has a grad buffer";
      continue;
    }
    Tensor g = p->grad.clone();
    std::vector<double> num = opcheck::finite_diff(p->value, loss, eps);
    if (zero_grad_names.count(name)) {
      // Mathematically zero (e.g. the k bias: softmax is invariant to a per-row shift), so a
      // relative error is meaningless: both must be ~0 in absolute terms.
      for (int64_t i = 0; i < g.numel(); ++i) {
        EXPECT_LT(std::fabs(g.f32()[i]), 1e-5) << what << " d" << name << " analytic at " << i;
        EXPECT_LT(std::fabs(num[i]), 1e-3) << what << " d" << name << " numeric at " << i;
      }
    } else {
      opcheck::expect_grad(g, num, tol, what + " d" + name);
    }
  }
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const lorafit::Error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& sub) {
  return s.find(sub) != std::string::npos;
}

// ---- Linear -------------------------------------------------------------------------------------

OPCHECK(Linear, TrainableWithBias) {
  Linear lin(7, 5, true);
  randomize(lin, 1, 0.5f, true);
  Tensor x = opcheck::random({3, 4, 7}, 2);
  check_grads(
      "Linear[7->5]+b", lin, x, [&](Context& c) { return lin.forward(c, x); },
      [&](Context& c, const Tensor& dy) { return lin.backward(c, dy); }, 1e-2f, 1e-4);
}

OPCHECK(Linear, TrainableNoBiasOdd) {
  Linear lin(13, 11, false);
  randomize(lin, 3, 0.5f, true);
  EXPECT_EQ(lin.named_parameters().size(), 1u);
  Tensor x = opcheck::random({5, 13}, 4);
  check_grads(
      "Linear[13->11]", lin, x, [&](Context& c) { return lin.forward(c, x); },
      [&](Context& c, const Tensor& dy) { return lin.backward(c, dy); }, 1e-2f, 1e-4);
}

OPCHECK(Linear, FrozenHasNoGradAndIsUntouched) {
  Linear lin(7, 5, true);
  randomize(lin, 5, 0.5f, false);
  Tensor w0 = lin.weight.value.clone();
  Tensor x = opcheck::random({2, 3, 7}, 6);
  check_grads(
      "Linear frozen", lin, x, [&](Context& c) { return lin.forward(c, x); },
      [&](Context& c, const Tensor& dy) { return lin.backward(c, dy); }, 1e-2f, 1e-4);
  EXPECT_FALSE(lin.weight.grad.defined());
  EXPECT_FALSE(lin.bias.grad.defined());
  opcheck::expect_close(lin.weight.value, w0, 0, 0, "frozen weight unchanged");
}

OPCHECK(Linear, ForwardValuesAndBiasOnlyTrainable) {
  // y = x Wᵀ + b checked by hand in double; then a trainable bias over a frozen weight.
  Linear lin(3, 2, true);
  lin.weight.value = Tensor::from_vector({2, 3}, {1, 2, 3, -1, 0.5f, 2});
  lin.bias.value = Tensor::from_vector({2}, {0.25f, -1});
  Tensor x = Tensor::from_vector({2, 3}, {1, 0, -1, 2, 1, 0.5f});
  Context ctx;
  Tensor y = lin.forward(ctx, x);
  opcheck::expect_close(y, Tensor::from_vector({2, 2}, {-1.75f, -4.0f, 5.75f, -1.5f}), 1e-6, 0,
                        "Linear hand values");
  lin.bias.set_trainable(true);
  Tensor dy = Tensor::from_vector({2, 2}, {1, 2, 3, 4});
  Tensor dx = lin.backward(ctx, dy, /*need_input_grad=*/false);
  EXPECT_FALSE(dx.defined());
  EXPECT_FALSE(lin.weight.grad.defined());
  opcheck::expect_close(lin.bias.grad, Tensor::from_vector({2}, {4, 6}), 0, 0, "bias grad");
}

OPCHECK(Linear, GradAccumulates) {
  Linear lin(5, 3, true);
  randomize(lin, 7, 0.5f, true);
  Tensor x = opcheck::random({4, 5}, 8);
  Tensor dy = opcheck::random({4, 3}, 9);
  Context ctx;
  lin.forward(ctx, x);
  lin.backward(ctx, dy);
  Tensor g1 = lin.weight.grad.clone(), b1 = lin.bias.grad.clone();
  lin.backward(ctx, dy);
  Tensor g2 = g1.clone(), b2 = b1.clone();
  for (int64_t i = 0; i < g2.numel(); ++i) g2.f32()[i] *= 2;
  for (int64_t i = 0; i < b2.numel(); ++i) b2.f32()[i] *= 2;
  opcheck::expect_close(lin.weight.grad, g2, 1e-6, 1e-6, "weight grad +=");
  opcheck::expect_close(lin.bias.grad, b2, 1e-6, 1e-6, "bias grad +=");
  lin.zero_grad();
  opcheck::expect_close(lin.weight.grad, Tensor::zeros({3, 5}), 0, 0, "zero_grad");
}

// F16/BF16 frozen weights: same results as the F32 path on the rounded weight. out = 301 with
// in = 257 spans two fp32 tiles of rows.
void check_half_weight(DType dt) {
  const int64_t in = 257, out = 301;
  Linear ref(in, out, true), half(in, out, true);
  randomize(ref, 11, 0.1f, false);
  ref.weight.value = ref.weight.value.to(dt).to(DType::F32);  // exactly representable
  half.weight.value = ref.weight.value.to(dt);
  half.bias.value = ref.bias.value.clone();
  Tensor x = opcheck::random({2, 9, in}, 12);
  Tensor dy = opcheck::random({2, 9, out}, 13);
  Context ctx;
  Tensor y_ref = ref.forward(ctx, x), y_half = half.forward(ctx, x);
  opcheck::expect_close(y_half, y_ref, 1e-5, 1e-5,
                        std::string("forward ") + lorafit::tensor::dtype_name(dt));
  Tensor dx_ref = ref.backward(ctx, dy), dx_half = half.backward(ctx, dy);
  opcheck::expect_close(dx_half, dx_ref, 1e-5, 1e-5,
                        std::string("dx ") + lorafit::tensor::dtype_name(dt));
  // A half weight cannot be trainable; its bias can.
  EXPECT_FALSE(error_of([&] { half.weight.set_trainable(true); }).empty());
}

OPCHECK(Linear, F16WeightMatchesF32) {
  check_half_weight(DType::F16);
}
OPCHECK(Linear, BF16WeightMatchesF32) {
  check_half_weight(DType::BF16);
}

// Block-quantized frozen weights: same as the F32 path on the dequantized weight. in = 320 (10
// blocks per row), out = 301: two tiles.
void check_quant_weight(DType dt) {
  const int64_t in = 320, out = 301;
  Linear ref(in, out, false), quant(in, out, false);
  randomize(ref, 14, 0.1f, false);
  quant.weight.value = lorafit::tensor::quantize(ref.weight.value, dt);
  ref.weight.value = lorafit::tensor::dequantize(quant.weight.value);
  Tensor x = opcheck::random({3, 7, in}, 15);
  Tensor dy = opcheck::random({3, 7, out}, 16);
  Context ctx;
  const std::string name = lorafit::tensor::dtype_name(dt);
  opcheck::expect_close(quant.forward(ctx, x), ref.forward(ctx, x), 1e-5, 1e-5, "forward " + name);
  opcheck::expect_close(quant.backward(ctx, dy), ref.backward(ctx, dy), 1e-5, 1e-5, "dx " + name);
}

OPCHECK(Linear, QuantizedWeightsMatchDequantized) {
  for (DType dt : {DType::Q8_0, DType::Q4_0, DType::Q4_1}) check_quant_weight(dt);
}

// A frozen weight [out, in] of a K-quant type made of valid random blocks: random bytes with small
// finite f16 scales (lorafit has no K-quant quantizer; tests/tensor/kquant_test.cpp proves the
// dequantization against gguf-py).
Tensor random_kquant(DType t, int64_t out, int64_t in, uint32_t seed) {
  Tensor w = Tensor::empty({out, in}, t);
  auto* p = static_cast<uint8_t*>(w.raw());
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 7;
  for (size_t i = 0; i < w.nbytes(); ++i) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    p[i] = static_cast<uint8_t>(s >> 56);
  }
  const int64_t bs = lorafit::tensor::dtype_block_bytes(t);
  const int64_t nb = static_cast<int64_t>(w.nbytes()) / bs;
  for (int64_t b = 0; b < nb; ++b) {
    uint8_t* blk = p + b * bs;
    const float scale = 0.002f + 0.001f * static_cast<float>(b % 5);
    const uint16_t d = lorafit::tensor::f32_to_f16(scale), dmin = lorafit::tensor::f32_to_f16(scale * 0.5f);
    if (t == DType::Q6_K) {
      std::memcpy(blk + 208, &d, 2);
    } else {
      std::memcpy(blk, &d, 2);
      std::memcpy(blk + 2, &dmin, 2);
    }
  }
  return w;
}

// K-quant frozen weights (Q4_K, Q5_K, Q6_K, kept quantized as read from a GGUF): forward and input
// gradient equal the F32 path on the dequantized weight, through two fp32 tiles of rows (in 4096:
// 1024 rows per tile, out 1030); weight_rows gives the dequantized rows; the input gradient
// matches finite differences on a small odd shape; an Embedding table of the type gathers the
// dequantized rows.
OPCHECK(Linear, KQuantWeightsMatchDequantized) {
  for (DType t : {DType::Q4_K, DType::Q5_K, DType::Q6_K}) {
    const std::string name = lorafit::tensor::dtype_name(t);
    {
      const int64_t in = 4096, out = 1030;
      Linear ref(in, out, false), quant(in, out, false);
      quant.weight.value = random_kquant(t, out, in, 21);
      ref.weight.value = lorafit::tensor::dequantize(quant.weight.value);
      Tensor x = opcheck::random({2, 3, in}, 22);
      Tensor dy = opcheck::random({2, 3, out}, 23);
      Context ctx;
      Tensor y = quant.forward(ctx, x);
      double ss = 0;
      for (int64_t i = 0; i < y.numel(); ++i) ss += static_cast<double>(y.f32()[i]) * y.f32()[i];
      EXPECT_GT(ss, 1e-3) << name << ": the product is all zeros";
      // The quantized path multiplies a tile of 1024 rows, then one of 6; the reference is one
      // F32 GEMM over all 1030, for which OpenBLAS may pick another kernel and so another order
      // of the 4096-term sums: |err| up to ~1.2e-5 on values ~0.05 (seen: Q5_K on an AMD EPYC).
      opcheck::expect_close(y, ref.forward(ctx, x), 5e-5, 1e-4, "forward " + name);
      // dx sums 1030 rows of the weight, here in two tiles (1024 + 6) against one F32 GEMM over
      // all of them: another summation order, so |err| up to ~5e-5 on values ~1 (seen: Q6_K)
      opcheck::expect_close(quant.backward(ctx, dy), ref.backward(ctx, dy), 1e-4, 1e-4,
                            "dx " + name);
      std::vector<float> rows(static_cast<size_t>(3 * in));
      quant.weight_rows(1023, 1026, rows.data());  // across the tile boundary
      for (int64_t i = 0; i < 3 * in; ++i)
        ASSERT_EQ(rows[static_cast<size_t>(i)], ref.weight.value.f32()[1023 * in + i]) << name;
    }
    {
      const int64_t in = 512, out = 37;
      Linear lin(in, out, false);
      lin.weight.value = random_kquant(t, out, in, 24);
      Tensor x = opcheck::random({3, in}, 25);
      check_grads(
          "Linear " + name, lin, x, [&](Context& c) { return lin.forward(c, x); },
          [&](Context& c, const Tensor& dy) { return lin.backward(c, dy); }, 1e-2f, 1e-4);
      EXPECT_FALSE(lin.weight.grad.defined());
    }
    {
      Embedding emb(9, 768), emb_ref(9, 768);
      emb.weight.value = random_kquant(t, 9, 768, 26);
      emb_ref.weight.value = lorafit::tensor::dequantize(emb.weight.value);
      Tensor ids = Tensor::from_ints({2, 2}, {8, 0, 4, 8});
      Context ctx;
      opcheck::expect_close(emb.forward(ctx, ids), emb_ref.forward(ctx, ids), 0, 0,
                            name + " table");
    }
  }
}

// bitsandbytes 4-bit frozen weights (NF4 / FP4, with and without double quantization): the
// products equal the F32 path on the dequantized weight, and weight_rows (DoRA's row norms) gives
// the dequantized rows, also from a rows() view.
OPCHECK(Linear, Bnb4bitWeightsMatchDequantized) {
  using lorafit::tensor::Quant4Type;
  const int64_t in = 320, out = 301;
  for (Quant4Type t : {Quant4Type::NF4, Quant4Type::FP4}) {
    for (bool dq : {false, true}) {
      const std::string name = std::string(lorafit::tensor::quant4_name(t)) + (dq ? "-dq" : "");
      Linear ref(in, out, false), quant(in, out, false);
      randomize(ref, 14, 0.1f, false);
      auto q = lorafit::tensor::quantize_4bit(ref.weight.value.f32(), in * out, t, dq);
      lorafit::tensor::dequantize_4bit(q, 0, in * out, ref.weight.value.f32());
      quant.weight.value = lorafit::tensor::quant4_tensor(std::move(q), {out, in});
      Tensor x = opcheck::random({3, 7, in}, 15);
      Tensor dy = opcheck::random({3, 7, out}, 16);
      Context ctx;
      opcheck::expect_close(quant.forward(ctx, x), ref.forward(ctx, x), 1e-5, 1e-5,
                            "forward " + name);
      // dx sums 1030 rows of the weight, here in two tiles (1024 + 6) against one F32 GEMM over
      // all of them: another summation order, so |err| up to ~5e-5 on values ~1 (seen: Q6_K)
      opcheck::expect_close(quant.backward(ctx, dy), ref.backward(ctx, dy), 1e-4, 1e-4,
                            "dx " + name);
      std::vector<float> rows(static_cast<size_t>(5 * in));
      quant.weight_rows(100, 105, rows.data());
      for (int64_t i = 0; i < 5 * in; ++i)
        ASSERT_EQ(rows[static_cast<size_t>(i)], ref.weight.value.f32()[100 * in + i]) << name;
      Tensor view = quant.weight.value.rows(100, 105);
      lorafit::tensor::dequantize_4bit_tensor(view, 0, 5 * in, rows.data());
      for (int64_t i = 0; i < 5 * in; ++i)
        ASSERT_EQ(rows[static_cast<size_t>(i)], ref.weight.value.f32()[100 * in + i]) << name;
    }
  }
  std::string e = error_of([] { lorafit::tensor::quant4_state(Tensor::zeros({2, 64})); });
  EXPECT_TRUE(contains(e, "[quant4_state]") && contains(e, "F32[2, 64]")) << e;
}

// A minimal adapter for the LinearAdapter hook: y += x Aᵀ with A [out, in] trainable.
struct DenseAdapter : lorafit::nn::LinearAdapter {
  lorafit::nn::Parameter a;
  Tensor x;
  int calls_fwd = 0, calls_bwd = 0;
  void forward(Context&, const Linear&, const Tensor& xin, Tensor& y) override {
    x = xin;
    ++calls_fwd;
    int64_t n = xin.numel() / a.value.dim(1);
    Tensor y2 = y.view({n, a.value.dim(0)});
    lorafit::kernels::gemm(xin.view({n, a.value.dim(1)}), false, a.value, true, y2, 1.0f, 1.0f);
  }
  void backward(Context&, const Linear&, const Tensor& dy, Tensor* dx) override {
    ++calls_bwd;
    int64_t n = x.numel() / a.value.dim(1);
    Tensor dy2 = dy.view({n, a.value.dim(0)});
    if (a.trainable)
      lorafit::kernels::gemm(dy2, true, x.view({n, a.value.dim(1)}), false, a.grad, 1.0f, 1.0f);
    if (dx) {
      Tensor dx2 = dx->view({n, a.value.dim(1)});
      lorafit::kernels::gemm(dy2, false, a.value, false, dx2, 1.0f, 1.0f);
    }
  }
};

OPCHECK(Linear, AdapterHookGrads) {
  // Frozen base + trainable adapter, as LoRA training runs: dx through both paths, adapter grad.
  Linear lin(7, 5, true);
  randomize(lin, 17, 0.5f, false);
  DenseAdapter ad;
  ad.a.value = opcheck::random({5, 7}, 18, -0.5f, 0.5f);
  ad.a.set_trainable(true);
  lin.adapters.push_back(&ad);
  Tensor x = opcheck::random({2, 3, 7}, 19);
  check_grads(
      "Linear + adapter", lin, x, [&](Context& c) { return lin.forward(c, x); },
      [&](Context& c, const Tensor& dy) { return lin.backward(c, dy); }, 1e-2f, 1e-4);
  // Adapter weight: finite differences of the same loss.
  Tensor r = opcheck::random({2, 3, 5}, 20);
  Context ctx;
  lin.forward(ctx, x);
  ad.a.zero_grad();
  lin.backward(ctx, r, /*need_input_grad=*/false);  // adapters still get their backward
  Tensor g = ad.a.grad.clone();
  auto num = opcheck::finite_diff(
      ad.a.value,
      [&] {
        Context c;
        return opcheck::dot(lin.forward(c, x), r);
      },
      1e-2f);
  opcheck::expect_grad(g, num, 1e-4, "adapter dA");
  EXPECT_GT(ad.calls_bwd, 1);
}

OPCHECK(Linear, AdapterOnNf4BaseGrads) {
  // QLoRA's shape: a frozen NF4 (double-quantized) base with a trainable adapter; dx and dA
  // against finite differences of the same loss.
  Linear lin(64, 5, false);
  randomize(lin, 23, 0.5f, false);
  lin.weight.value = lorafit::tensor::quant4_tensor(
      lorafit::tensor::quantize_4bit(lin.weight.value.f32(), 64 * 5,
                                     lorafit::tensor::Quant4Type::NF4, true),
      {5, 64});
  DenseAdapter ad;
  ad.a.value = opcheck::random({5, 64}, 24, -0.5f, 0.5f);
  ad.a.set_trainable(true);
  lin.adapters.push_back(&ad);
  Tensor x = opcheck::random({2, 3, 64}, 25);
  check_grads(
      "NF4 Linear + adapter", lin, x, [&](Context& c) { return lin.forward(c, x); },
      [&](Context& c, const Tensor& dy) { return lin.backward(c, dy); }, 1e-2f, 1e-4);
  Tensor r = opcheck::random({2, 3, 5}, 26);
  Context ctx;
  lin.forward(ctx, x);
  ad.a.zero_grad();
  lin.backward(ctx, r, /*need_input_grad=*/false);
  Tensor g = ad.a.grad.clone();
  auto num = opcheck::finite_diff(
      ad.a.value,
      [&] {
        Context c;
        return opcheck::dot(lin.forward(c, x), r);
      },
      1e-2f);
  opcheck::expect_grad(g, num, 1e-4, "adapter dA on NF4");
}

OPCHECK(Linear, ShapeMismatchThrows) {
  Linear lin(7, 5, false);
  Context ctx;
  std::string e = error_of([&] { lin.forward(ctx, opcheck::random({3, 6}, 1)); });
  EXPECT_TRUE(contains(e, "[Linear]") && contains(e, "[3, 6]") && contains(e, "7")) << e;
  lin.weight.value = Tensor::zeros({5, 8});
  e = error_of([&] { lin.forward(ctx, opcheck::random({3, 7}, 1)); });
  EXPECT_TRUE(contains(e, "[Linear]") && contains(e, "[5, 8]")) << e;
  Linear fresh(7, 5, false);
  e = error_of([&] { fresh.backward(ctx, opcheck::random({3, 5}, 1)); });
  EXPECT_TRUE(contains(e, "[Linear]") && contains(e, "before forward")) << e;
}

OPCHECK(Linear, ArenaContext) {
  Linear lin(9, 6, true);
  randomize(lin, 21, 0.5f, false);
  Tensor x = opcheck::random({4, 9}, 22);
  Context heap;
  Tensor y_heap = lin.forward(heap, x);
  lorafit::tensor::Arena arena(1 << 12);
  Context ctx;
  ctx.arena = &arena;
  Tensor y = lin.forward(ctx, x);
  EXPECT_GE(arena.used(), static_cast<size_t>(4 * 6 * 4));
  opcheck::expect_close(y, y_heap, 0, 0, "arena vs heap");
  size_t before = arena.used();
  lin.backward(ctx, opcheck::random({4, 6}, 23));
  EXPECT_GT(arena.used(), before) << "dx should come from the arena";
}

// ---- Embedding ----------------------------------------------------------------------------------

OPCHECK(Embedding, RepeatedIdsWeightGrad) {
  Embedding emb(11, 6);
  randomize(emb, 31, 1.0f, true);
  Tensor ids = Tensor::from_ints({2, 5}, {3, 0, 3, 10, 7, 7, 7, 1, 3, 10});
  Context ctx;
  Tensor y = emb.forward(ctx, ids);
  ASSERT_EQ(y.shape(), (Shape{2, 5, 6}));
  for (int64_t i = 0; i < 10; ++i)
    for (int64_t c = 0; c < 6; ++c)
      ASSERT_EQ(y.f32()[i * 6 + c], emb.weight.value.f32()[ids.i32()[i] * 6 + c]);
  check_grads(
      "Embedding", emb, Tensor(), [&](Context& c) { return emb.forward(c, ids); },
      [&](Context& c, const Tensor& dy) {
        emb.backward(c, dy);
        return Tensor();
      },
      1e-2f, 1e-4);
  // Rows never looked up get no gradient.
  for (int64_t c = 0; c < 6; ++c) EXPECT_EQ(emb.weight.grad.f32()[2 * 6 + c], 0.0f);
}

OPCHECK(Embedding, HalfTableAndErrors) {
  Embedding f32(9, 5), half(9, 5);
  randomize(f32, 41, 1.0f, false);
  f32.weight.value = f32.weight.value.to(DType::BF16).to(DType::F32);
  half.weight.value = f32.weight.value.to(DType::BF16);
  Tensor ids = Tensor::from_ints({3}, {8, 0, 4});
  Context ctx;
  opcheck::expect_close(half.forward(ctx, ids), f32.forward(ctx, ids), 0, 0, "BF16 table");
  half.backward(ctx, Tensor::zeros({3, 5}));  // frozen: no-op
  EXPECT_FALSE(half.weight.grad.defined());
  Embedding q8(9, 64), q8_ref(9, 64);
  randomize(q8_ref, 42, 1.0f, false);
  q8.weight.value = lorafit::tensor::quantize(q8_ref.weight.value, DType::Q8_0);
  q8_ref.weight.value = lorafit::tensor::dequantize(q8.weight.value);
  opcheck::expect_close(q8.forward(ctx, ids), q8_ref.forward(ctx, ids), 0, 0, "Q8_0 table");
  std::string e = error_of([&] { half.forward(ctx, Tensor::from_ints({2}, {1, 9})); });
  EXPECT_TRUE(contains(e, "[Embedding]") && contains(e, "9")) << e;
  e = error_of([&] { f32.forward(ctx, opcheck::random({2}, 1)); });
  EXPECT_TRUE(contains(e, "[Embedding]") && contains(e, "I32")) << e;
}

// ---- LayerNorm / RMSNorm ------------------------------------------------------------------------

OPCHECK(LayerNorm, Grads) {
  LayerNorm ln(13, 1e-5f);
  randomize(ln, 51, 1.0f, true);
  Tensor x = opcheck::random({2, 3, 13}, 52, -2.0f, 2.0f);
  check_grads(
      "LayerNorm", ln, x, [&](Context& c) { return ln.forward(c, x); },
      [&](Context& c, const Tensor& dy) { return ln.backward(c, dy); }, 1e-2f, 2e-3);
}

OPCHECK(LayerNorm, NormalizesAndFrozen) {
  LayerNorm ln(7, 1e-12f, /*bias=*/false);
  EXPECT_EQ(ln.named_parameters().size(), 1u);
  Tensor x = opcheck::random({5, 7}, 53, -3.0f, 5.0f);
  Context ctx;
  Tensor y = ln.forward(ctx, x);  // weight 1: each row has mean 0, variance 1
  for (int64_t i = 0; i < 5; ++i) {
    double m = 0, v = 0;
    for (int64_t c = 0; c < 7; ++c) m += y.f32()[i * 7 + c];
    m /= 7;
    for (int64_t c = 0; c < 7; ++c) v += std::pow(y.f32()[i * 7 + c] - m, 2);
    EXPECT_NEAR(m, 0.0, 1e-6);
    EXPECT_NEAR(v / 7, 1.0, 1e-5);
  }
  check_grads(
      "LayerNorm frozen", ln, x, [&](Context& c) { return ln.forward(c, x); },
      [&](Context& c, const Tensor& dy) { return ln.backward(c, dy); }, 1e-2f, 2e-3);
  std::string e = error_of([&] { ln.forward(ctx, opcheck::random({5, 6}, 1)); });
  EXPECT_TRUE(contains(e, "[LayerNorm]") && contains(e, "[5, 6]")) << e;
}

OPCHECK(RMSNorm, Grads) {
  RMSNorm rms(11, 1e-6f);
  randomize(rms, 61, 1.0f, true);
  Tensor x = opcheck::random({3, 5, 11}, 62, -2.0f, 2.0f);
  check_grads(
      "RMSNorm", rms, x, [&](Context& c) { return rms.forward(c, x); },
      [&](Context& c, const Tensor& dy) { return rms.backward(c, dy); }, 1e-2f, 2e-3);
}

OPCHECK(RMSNorm, ValuesAndFrozen) {
  RMSNorm rms(6, 1e-6f);
  Tensor x = opcheck::random({4, 6}, 63, -2.0f, 2.0f);
  Context ctx;
  Tensor y = rms.forward(ctx, x);
  for (int64_t i = 0; i < 4; ++i) {
    double ss = 0;
    for (int64_t c = 0; c < 6; ++c) ss += std::pow(x.f32()[i * 6 + c], 2);
    double rstd = 1.0 / std::sqrt(ss / 6 + 1e-6);
    for (int64_t c = 0; c < 6; ++c)
      EXPECT_NEAR(y.f32()[i * 6 + c], x.f32()[i * 6 + c] * rstd, 1e-5);
  }
  check_grads(
      "RMSNorm frozen", rms, x, [&](Context& c) { return rms.forward(c, x); },
      [&](Context& c, const Tensor& dy) { return rms.backward(c, dy); }, 1e-2f, 2e-3);
  EXPECT_FALSE(rms.weight.grad.defined());
}

// ---- Dropout ------------------------------------------------------------------------------------

Context train_ctx(uint64_t seed) {
  Context c;
  c.training = true;
  c.seed = seed;
  return c;
}

OPCHECK(Dropout, SeededMasks) {
  Dropout d(0.3f);
  Tensor x = opcheck::random({7, 13}, 71, 0.5f, 1.5f);  // no zeros in x
  Context a = train_ctx(42), b = train_ctx(42), c = train_ctx(43);
  Tensor ya = d.forward(a, x).clone(), yb = d.forward(b, x).clone(), yc = d.forward(c, x).clone();
  opcheck::expect_close(ya, yb, 0, 0, "same seed => same mask");
  int diff = 0;
  for (int64_t i = 0; i < x.numel(); ++i) diff += (ya.f32()[i] == 0) != (yc.f32()[i] == 0);
  EXPECT_GT(diff, 5) << "different seed => different mask";
  EXPECT_EQ(a.rng_counter, static_cast<uint64_t>(x.numel() + 1) / 2)
      << "counter advances by ceil(numel / 2) (two draws per hash)";
  Tensor ya2 = d.forward(a, x);  // same ctx, next counters: a different mask
  diff = 0;
  for (int64_t i = 0; i < x.numel(); ++i) diff += (ya.f32()[i] == 0) != (ya2.f32()[i] == 0);
  EXPECT_GT(diff, 5) << "the counter must advance between calls";
}

OPCHECK(Dropout, KeepRateAndScale) {
  const float p = 0.3f;
  Dropout d(p);
  Tensor x = Tensor::full({400, 501}, 2.0f);
  Context ctx = train_ctx(7);
  Tensor y = d.forward(ctx, x);
  int64_t kept = 0;
  for (int64_t i = 0; i < y.numel(); ++i) {
    float v = y.f32()[i];
    if (v != 0.0f) {
      ++kept;
      ASSERT_FLOAT_EQ(v, 2.0f / (1.0f - p));
    }
  }
  double rate = static_cast<double>(kept) / y.numel();  // sd ≈ 0.0007
  EXPECT_NEAR(rate, 1.0 - p, 0.005);
}

OPCHECK(Dropout, BackwardUsesSameMask) {
  Dropout d(0.4f);
  Tensor x = opcheck::random({3, 5, 7}, 72, 0.5f, 1.5f);
  Context ctx = train_ctx(9);
  Tensor y = d.forward(ctx, x);
  Tensor dy = Tensor::full(x.shape(), 1.0f);
  Tensor dx = d.backward(ctx, dy);
  for (int64_t i = 0; i < x.numel(); ++i)
    ASSERT_FLOAT_EQ(dx.f32()[i], y.f32()[i] / x.f32()[i]) << i;
  check_grads(
      "Dropout", d, x, [&](Context& c) { return d.forward(c, x); },
      [&](Context& c, const Tensor& g) { return d.backward(c, g); }, 1e-2f, 1e-4,
      [] { return train_ctx(9); });
}

OPCHECK(Dropout, MaskRangesCompose) {
  // Attention masks each head's [T, T] block at offset (b·H + h)·T², odd for odd T: applying the
  // mask to [0, k) and [k, n) separately must equal applying it to [0, n).
  const int64_t n = 101;
  Tensor x = opcheck::random({n}, 74, 0.5f, 1.5f);
  lorafit::nn::detail::DropoutMask mask(5, 1000, 0.5f);
  Tensor whole = Tensor::empty({n});
  mask.apply(whole.f32(), x.f32(), 0, n);
  int zeros = 0;
  for (int64_t i = 0; i < n; ++i) zeros += whole.f32()[i] == 0.0f;
  EXPECT_GT(zeros, 25);
  EXPECT_LT(zeros, 75);
  for (int64_t k : {1, 2, 49, 50, 100}) {
    Tensor parts = Tensor::empty({n});
    mask.apply(parts.f32(), x.f32(), 0, k);
    mask.apply(parts.f32() + k, x.f32() + k, k, n - k);
    opcheck::expect_close(parts, whole, 0, 0, "split at " + std::to_string(k));
  }
}

OPCHECK(Dropout, EvalAndZeroPAreIdentity) {
  Tensor x = opcheck::random({4, 6}, 73);
  Dropout d(0.5f);
  Context eval;
  eval.seed = 1;
  Tensor y = d.forward(eval, x);
  EXPECT_TRUE(y.same_storage(x));
  EXPECT_TRUE(d.backward(eval, x).same_storage(x));
  EXPECT_EQ(eval.rng_counter, 0u);
  Dropout d0(0.0f);
  Context tr = train_ctx(1);
  opcheck::expect_close(d0.forward(tr, x), x, 0, 0, "p = 0");
  Dropout bad(1.0f);
  std::string e = error_of([&] { bad.forward(tr, x); });
  EXPECT_TRUE(contains(e, "[Dropout]")) << e;
}

// ---- MLP ----------------------------------------------------------------------------------------

void check_mlp(MlpKind kind, GeluKind gelu, bool bias, bool trainable, const std::string& what) {
  MLP mlp(kind, 7, 11, bias, gelu);
  randomize(mlp, 81, 0.6f, trainable);
  Tensor x = opcheck::random({2, 3, 7}, 82, -1.5f, 1.5f);
  check_grads(
      what, mlp, x, [&](Context& c) { return mlp.forward(c, x); },
      [&](Context& c, const Tensor& dy) { return mlp.backward(c, dy); }, 1e-2f, 2e-3);
}

OPCHECK(MLP, GeluErf) {
  check_mlp(MlpKind::Gelu, GeluKind::Erf, true, true, "MLP gelu erf");
}
OPCHECK(MLP, GeluTanhNoBias) {
  check_mlp(MlpKind::Gelu, GeluKind::Tanh, false, true, "MLP gelu tanh");
}
OPCHECK(MLP, SwiGLU) {
  check_mlp(MlpKind::SwiGLU, GeluKind::Erf, false, true, "MLP swiglu");
}
OPCHECK(MLP, SwiGLUFrozenBias) {
  check_mlp(MlpKind::SwiGLU, GeluKind::Erf, true, false, "MLP swiglu frozen");
}

OPCHECK(MLP, NamesAndNoInputGrad) {
  MLP mlp(MlpKind::SwiGLU, 5, 9, false);
  auto names = mlp.named_parameters("mlp.");
  ASSERT_EQ(names.size(), 3u);
  EXPECT_EQ(names[0].first, "mlp.gate_proj.weight");
  EXPECT_EQ(names[1].first, "mlp.up_proj.weight");
  EXPECT_EQ(names[2].first, "mlp.down_proj.weight");
  randomize(mlp, 83, 0.5f, false);
  mlp.down.weight.set_trainable(true);
  Context ctx;
  mlp.forward(ctx, opcheck::random({3, 5}, 84));
  EXPECT_FALSE(mlp.backward(ctx, opcheck::random({3, 5}, 85), false).defined());
  double n = 0;
  for (int64_t i = 0; i < mlp.down.weight.grad.numel(); ++i)
    n += std::fabs(mlp.down.weight.grad.f32()[i]);
  EXPECT_GT(n, 0.0) << "down_proj is trainable and must get a gradient";
}

// ---- Attention ----------------------------------------------------------------------------------

// Naive attention in double, straight from the definition (per head, per query, per key), with
// the same mask semantics (a row with no visible key gives zeros).
using VisFn = std::function<bool(int64_t h, int64_t i, int64_t j)>;

std::vector<double> naive_attention(Attention& a, const Tensor& x, const Tensor& pad,
                                    const Tensor& pos, const VisFn& extra = nullptr) {
  const AttentionConfig& c = a.cfg;
  const int64_t B = x.dim(0), T = x.dim(1), C = c.hidden, H = c.n_heads, KV = c.n_kv_heads,
                D = c.head_dim;
  auto proj = [&](Linear& l, const std::vector<double>& in, int64_t rows) {
    int64_t I = l.in_features(), O = l.out_features();
    std::vector<double> out(rows * O);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t o = 0; o < O; ++o) {
        double s = l.has_bias() ? l.bias.value.f32()[o] : 0.0;
        for (int64_t i = 0; i < I; ++i) s += in[r * I + i] * l.weight.value.f32()[o * I + i];
        out[r * O + o] = s;
      }
    return out;
  };
  std::vector<double> xd(x.f32(), x.f32() + x.numel());
  auto q = proj(a.q, xd, B * T), k = proj(a.k, xd, B * T), v = proj(a.v, xd, B * T);
  auto rope = [&](std::vector<double>& t, int64_t heads) {
    for (int64_t b = 0; b < B; ++b)
      for (int64_t s = 0; s < T; ++s) {
        double p = !pos.defined() ? s : pos.ndim() == 1 ? pos.i32()[s] : pos.i32()[b * T + s];
        for (int64_t h = 0; h < heads; ++h) {
          double* e = &t[((b * T + s) * heads + h) * D];
          for (int64_t i = 0; i < D / 2; ++i) {
            double ang = p * std::pow(static_cast<double>(c.rope_theta), -2.0 * i / D);
            int64_t i0 = c.rope_style == RopeStyle::HalfRotate ? i : 2 * i;
            int64_t i1 = c.rope_style == RopeStyle::HalfRotate ? i + D / 2 : 2 * i + 1;
            double x0 = e[i0], x1 = e[i1];
            e[i0] = x0 * std::cos(ang) - x1 * std::sin(ang);
            e[i1] = x1 * std::cos(ang) + x0 * std::sin(ang);
          }
        }
      }
  };
  if (c.rope) {
    rope(q, H);
    rope(k, KV);
  }
  std::vector<double> out(B * T * H * D, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      int64_t g = h / (H / KV);
      for (int64_t i = 0; i < T; ++i) {
        std::vector<double> s(T);
        std::vector<bool> vis(T);
        double mx = -1e300;
        bool any = false;
        for (int64_t j = 0; j < T; ++j) {
          vis[j] = !(c.causal && j > i) && (!pad.defined() || pad.f32()[b * T + j] != 0.0f) &&
                   (!extra || extra(h, i, j));
          double d = 0;
          for (int64_t e = 0; e < D; ++e)
            d += q[((b * T + i) * H + h) * D + e] * k[((b * T + j) * KV + g) * D + e];
          s[j] = d / std::sqrt(static_cast<double>(D));
          if (vis[j]) mx = std::max(mx, s[j]), any = true;
        }
        if (!any) continue;
        double z = 0;
        for (int64_t j = 0; j < T; ++j) z += vis[j] ? std::exp(s[j] - mx) : 0.0;
        for (int64_t j = 0; j < T; ++j) {
          if (!vis[j]) continue;
          double pj = std::exp(s[j] - mx) / z;
          for (int64_t e = 0; e < D; ++e)
            out[((b * T + i) * H + h) * D + e] += pj * v[((b * T + j) * KV + g) * D + e];
        }
      }
    }
  (void)C;
  return proj(a.o, out, B * T);
}

struct AttnCase {
  AttentionConfig cfg;
  int64_t B = 2, T = 5;
  bool pad = false, positions = false, trainable = true;
};

// Builds the module with random weights (and biases), a random x, optional padding (the last
// token of batch 1 and the first of batch 0 padded) and optional [B, T] positions.
struct AttnSetup {
  Attention a;
  Tensor x, pad, pos;
  explicit AttnSetup(const AttnCase& c, uint64_t seed = 91) : a(c.cfg) {
    randomize(a, seed, 0.5f, c.trainable);
    x = opcheck::random({c.B, c.T, c.cfg.hidden}, seed + 100);
    if (c.pad) {
      pad = Tensor::full({c.B, c.T}, 1.0f);
      pad.f32()[0] = 0.0f;                          // batch 0: left padding
      pad.f32()[(c.B - 1) * c.T + c.T - 1] = 0.0f;  // last batch: right padding
      pad.f32()[(c.B - 1) * c.T + c.T - 2] = 0.0f;
    }
    if (c.positions) {
      pos = Tensor::empty({c.B, c.T}, DType::I32);
      for (int64_t i = 0; i < pos.numel(); ++i) pos.i32()[i] = static_cast<int32_t>(3 * i % 11);
    }
  }
  Tensor fwd(Context& ctx) { return a.forward(ctx, x, pad, pos); }
};

void check_attention(const AttnCase& c, const std::string& what, float eps = 1e-2f,
                     double tol = 2e-3) {
  AttnSetup s(c);
  // Forward against the naive reference first.
  Context ctx;
  Tensor y = s.fwd(ctx);
  opcheck::expect_finite(y, what + " forward");
  std::vector<double> ref = naive_attention(s.a, s.x, s.pad, s.pos);
  ASSERT_EQ(static_cast<size_t>(y.numel()), ref.size());
  for (int64_t i = 0; i < y.numel(); ++i)
    ASSERT_NEAR(y.f32()[i], ref[i], 1e-5 + 1e-4 * std::fabs(ref[i])) << what << " at " << i;
  check_grads(
      what, s.a, s.x, [&](Context& cx) { return s.fwd(cx); },
      [&](Context& cx, const Tensor& dy) { return s.a.backward(cx, dy); }, eps, tol,
      [] { return Context{}; },
      // Without RoPE the k bias adds q·b to every key of a row: no effect after softmax.
      c.cfg.rope ? std::set<std::string>{} : std::set<std::string>{"k_proj.bias"});
}

AttentionConfig attn_cfg(int64_t hidden, int64_t heads, int64_t kv, int64_t head_dim) {
  AttentionConfig c;
  c.hidden = hidden;
  c.n_heads = heads;
  c.n_kv_heads = kv;
  c.head_dim = head_dim;
  return c;
}

// --compute-dtype bf16: the dense attention's products (q·kᵀ, P·v and their backward products)
// in BF16 with fp32 sums. The projections stay fp32 here (trainable weights never take the BF16
// path), so every difference from the fp32 run is the attention's: close to it within BF16's
// rounding (2^-8 relative per operand), and not bitwise equal (the BF16 path ran).
OPCHECK(Attention, Bf16DenseNearFp32) {
  namespace kk = lorafit::kernels;
  if (!kk::bf16_gemm_supported()) {
    EXPECT_THROW(kk::set_compute_dtype(kk::ComputeDtype::BF16), lorafit::Error);
    return;
  }
  AttnCase c;
  c.cfg = attn_cfg(24, 4, 2, 6);
  c.cfg.causal = true;
  c.cfg.rope = true;
  c.pad = true;
  c.T = 13;
  AttnSetup s(c);
  Tensor dy = opcheck::random({c.B, c.T, c.cfg.hidden}, 77);
  auto run = [&](kk::ComputeDtype d, Tensor& y, Tensor& dx) {
    kk::set_compute_dtype(d);
    Context ctx;
    ctx.training = true;
    y = s.fwd(ctx).clone();
    dx = s.a.backward(ctx, dy).clone();
  };
  Tensor y32, dx32, y16, dx16;
  run(kk::ComputeDtype::F32, y32, dx32);
  run(kk::ComputeDtype::BF16, y16, dx16);
  kk::set_compute_dtype(kk::ComputeDtype::F32);
  for (auto [got, want, what] : {std::tuple{&y16, &y32, "forward"}, std::tuple{&dx16, &dx32, "dx"}}) {
    double maxabs = 0, maxerr = 0;
    for (int64_t i = 0; i < want->numel(); ++i) {
      maxabs = std::max(maxabs, static_cast<double>(std::fabs(want->f32()[i])));
      maxerr = std::max(maxerr, static_cast<double>(std::fabs(got->f32()[i] - want->f32()[i])));
    }
    EXPECT_LT(maxerr, 2e-2 * maxabs) << what;
    EXPECT_GT(maxerr, 0.0) << what << ": bitwise the fp32 result (BF16 path not taken?)";
  }
}

OPCHECK(Attention, MhaWithBias) {
  AttnCase c;
  c.cfg = attn_cfg(12, 2, 0, 6);
  c.cfg.qkv_bias = c.cfg.out_bias = true;
  c.T = 5;
  check_attention(c, "MHA C=12 H=2 D=6 T=5");
}

OPCHECK(Attention, GqaOddSizes) {
  AttnCase c;
  c.cfg = attn_cfg(12, 4, 2, 6);  // H·D = 24 != C
  c.T = 7;
  check_attention(c, "GQA H=4 KV=2 D=6 T=7");
}

OPCHECK(Attention, CausalMultiQuery) {
  AttnCase c;
  c.cfg = attn_cfg(10, 3, 1, 4);
  c.cfg.causal = true;
  c.cfg.out_bias = true;
  c.B = 3;
  c.T = 7;
  check_attention(c, "causal MQA H=3 KV=1 D=4 T=7");
}

OPCHECK(Attention, RopeHalfRotateCausalGqa) {
  AttnCase c;
  c.cfg = attn_cfg(12, 4, 2, 8);
  c.cfg.rope = true;
  c.cfg.causal = true;
  c.cfg.rope_style = RopeStyle::HalfRotate;
  c.T = 5;
  check_attention(c, "RoPE half-rotate causal GQA D=8");
}

OPCHECK(Attention, RopeAdjacentWithPositions) {
  AttnCase c;
  c.cfg = attn_cfg(12, 2, 0, 6);
  c.cfg.rope = true;
  c.cfg.rope_style = RopeStyle::Adjacent;
  c.cfg.rope_theta = 500.0f;
  c.positions = true;
  c.T = 7;
  check_attention(c, "RoPE adjacent [B,T] positions D=6");
}

OPCHECK(Attention, PaddingMaskCausalRope) {
  AttnCase c;
  c.cfg = attn_cfg(12, 4, 2, 6);
  c.cfg.causal = true;
  c.cfg.rope = true;
  c.cfg.qkv_bias = true;
  c.pad = true;
  c.T = 7;
  check_attention(c, "padding + causal + RoPE GQA");
}

OPCHECK(Attention, PaddedTokensDoNotLeak) {
  AttnCase c;
  c.cfg = attn_cfg(12, 2, 0, 6);
  c.pad = true;
  c.B = 2;
  c.T = 5;
  for (bool causal : {false, true}) {
    c.cfg.causal = causal;
    AttnSetup s(c);
    Context ctx;
    Tensor y1 = s.fwd(ctx).clone();
    opcheck::expect_finite(y1, "padded rows finite");
    // Change every padded token's input; real tokens' outputs must not move at all.
    for (int64_t t = 0; t < c.B * c.T; ++t)
      if (s.pad.f32()[t] == 0.0f)
        for (int64_t e = 0; e < 12; ++e) s.x.f32()[t * 12 + e] += 3.0f + e;
    Tensor y2 = s.fwd(ctx);
    opcheck::expect_finite(y2, "padded rows finite after change");
    int changed_pad = 0;
    for (int64_t t = 0; t < c.B * c.T; ++t)
      for (int64_t e = 0; e < 12; ++e) {
        float a = y1.f32()[t * 12 + e], b = y2.f32()[t * 12 + e];
        if (s.pad.f32()[t] != 0.0f) {
          ASSERT_EQ(a, b) << "real token " << t << " changed (causal " << causal << ")";
        } else {
          changed_pad += a != b;
        }
      }
    if (!causal) {
      EXPECT_GT(changed_pad, 0) << "the test must actually change something";
    }
  }
}

OPCHECK(Attention, IntPadMaskEqualsFloat) {
  AttnCase c;
  c.cfg = attn_cfg(12, 2, 0, 6);
  c.pad = true;
  AttnSetup s(c);
  Tensor ipad = Tensor::empty(s.pad.shape(), DType::I32);
  for (int64_t i = 0; i < ipad.numel(); ++i) ipad.i32()[i] = static_cast<int32_t>(s.pad.f32()[i]);
  Context ctx;
  Tensor y1 = s.fwd(ctx).clone();
  Tensor y2 = s.a.forward(ctx, s.x, ipad);
  opcheck::expect_close(y2, y1, 0, 0, "I32 pad mask");
}

// ---- memory-efficient (tiled) attention and S²-Attn --------------------------------------------

// Runs forward + backward with a random dy and returns y, dx and every parameter gradient.
std::vector<Tensor> attention_run(AttnSetup& s, Context ctx) {
  s.a.zero_grad();
  Tensor y = s.fwd(ctx).clone();
  Tensor dx = s.a.backward(ctx, opcheck::random(y.shape(), 555)).clone();
  std::vector<Tensor> out{y, dx};
  for (auto& [name, p] : s.a.named_parameters()) out.push_back(p->grad.clone());
  return out;
}

// Tiled against dense on the same weights: values and gradients within fp32 tolerance.
void expect_tiled_equals_dense(AttnCase c, const std::string& what, bool training = false) {
  auto make = [&] { return training ? train_ctx(7) : Context{}; };
  c.cfg.impl = AttentionConfig::Impl::Dense;
  AttnSetup dense(c);
  c.cfg.impl = AttentionConfig::Impl::Tiled;
  AttnSetup tiled(c);
  std::vector<Tensor> a = attention_run(dense, make()), b = attention_run(tiled, make());
  ASSERT_EQ(a.size(), b.size());
  const char* names[] = {"y", "dx"};
  for (size_t i = 0; i < a.size(); ++i)
    opcheck::expect_close(b[i], a[i], 2e-5, 2e-4,
                          what + " " + (i < 2 ? names[i] : "param grad " + std::to_string(i - 2)));
}

OPCHECK(Attention, TiledEqualsDenseOddLengths) {
  AttnCase c;
  c.cfg = attn_cfg(12, 4, 2, 6);
  c.B = 2;
  for (int64_t T : {1, 7, 64, 67, 130}) {  // one tile, tile edge, several partial tiles
    c.T = T;
    c.cfg.causal = false;
    expect_tiled_equals_dense(c, "GQA T=" + std::to_string(T));
    c.cfg.causal = true;
    expect_tiled_equals_dense(c, "causal GQA T=" + std::to_string(T));
  }
}

OPCHECK(Attention, TiledEqualsDensePaddingRopeMqa) {
  AttnCase c;
  c.cfg = attn_cfg(10, 3, 1, 4);
  c.cfg.causal = true;
  c.cfg.rope = true;
  c.cfg.qkv_bias = c.cfg.out_bias = true;
  c.pad = true;
  c.positions = true;
  c.B = 3;
  c.T = 75;
  expect_tiled_equals_dense(c, "MQA causal+pad+RoPE T=75");
  c.cfg.causal = false;  // padded rows of a non-causal head still see the real keys
  expect_tiled_equals_dense(c, "MQA pad+RoPE T=75");
}

OPCHECK(Attention, TiledAgainstNaiveAndFiniteDifferences) {
  AttnCase c;
  c.cfg = attn_cfg(12, 4, 2, 6);
  c.cfg.impl = AttentionConfig::Impl::Tiled;
  c.cfg.causal = true;
  c.cfg.rope = true;
  c.pad = true;
  c.T = 7;
  check_attention(c, "tiled padding + causal + RoPE GQA");
  c.cfg.causal = false;
  c.cfg.rope = false;
  c.pad = false;
  c.cfg.qkv_bias = true;
  c.T = 5;
  check_attention(c, "tiled MHA-ish GQA with bias");
}

OPCHECK(Attention, TiledRefusesDropout) {
  AttnCase c;
  c.cfg = attn_cfg(12, 2, 0, 6);
  c.cfg.impl = AttentionConfig::Impl::Tiled;
  c.cfg.dropout = 0.1f;
  AttnSetup s(c);
  Context ctx = train_ctx(3);
  try {
    s.fwd(ctx);
    FAIL() << "tiled attention with dropout must be refused";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("does not support dropout"), std::string::npos)
        << e.what();
  }
}

// S²-Attn groups written out by hand: index of the group holding token t, per head half.
VisFn s2_groups(std::vector<int64_t> plain_starts, std::vector<int64_t> shifted_starts,
                int64_t H) {
  auto seg = [](const std::vector<int64_t>& starts, int64_t t) {
    int64_t g = 0;
    while (g + 1 < static_cast<int64_t>(starts.size()) && starts[g + 1] <= t) ++g;
    return g;
  };
  return [=](int64_t h, int64_t i, int64_t j) {
    const auto& st = h < H / 2 ? plain_starts : shifted_starts;
    return seg(st, i) == seg(st, j);
  };
}

void check_s2(AttnCase c, const VisFn& groups, const std::string& what) {
  for (auto impl : {AttentionConfig::Impl::Dense, AttentionConfig::Impl::Tiled}) {
    c.cfg.impl = impl;
    const std::string w = what + (impl == AttentionConfig::Impl::Dense ? " dense" : " tiled");
    AttnSetup s(c);
    Context ctx = train_ctx(5);
    Tensor y = s.fwd(ctx);
    std::vector<double> ref = naive_attention(s.a, s.x, s.pad, s.pos, groups);
    for (int64_t i = 0; i < y.numel(); ++i)
      ASSERT_NEAR(y.f32()[i], ref[i], 1e-5 + 1e-4 * std::fabs(ref[i])) << w << " at " << i;
    // Evaluation is always full attention.
    Context eval;
    Tensor ye = s.fwd(eval);
    std::vector<double> full = naive_attention(s.a, s.x, s.pad, s.pos);
    for (int64_t i = 0; i < ye.numel(); ++i)
      ASSERT_NEAR(ye.f32()[i], full[i], 1e-5 + 1e-4 * std::fabs(full[i])) << w << " eval " << i;
    check_grads(
        w, s.a, s.x, [&](Context& cx) { return s.fwd(cx); },
        [&](Context& cx, const Tensor& dy) { return s.a.backward(cx, dy); }, 1e-2f, 2e-3,
        [] { return train_ctx(5); },
        c.cfg.rope ? std::set<std::string>{} : std::set<std::string>{"k_proj.bias"});
  }
  expect_tiled_equals_dense(c, what, true);
}

OPCHECK(Attention, ShiftedSparseGroupsEvenLength) {
  AttnCase c;
  c.cfg = attn_cfg(12, 4, 2, 6);
  c.cfg.causal = true;
  c.cfg.rope = true;
  c.cfg.s2_ratio = 0.25f;  // T = 16: G = 4, shifted by 2, no wrap-around
  c.T = 16;
  c.B = 1;
  check_s2(c, s2_groups({0, 4, 8, 12}, {0, 2, 6, 10, 14}, 4), "S2 T=16 G=4");
}

OPCHECK(Attention, ShiftedSparseGroupsOddLengthPadding) {
  AttnCase c;
  c.cfg = attn_cfg(10, 2, 1, 4);
  c.cfg.causal = true;
  c.cfg.s2_ratio = 0.25f;  // T = 13: G = round(3.25) = 3, the shifted half starts at G/2 = 1
  c.T = 13;
  c.pad = true;
  check_s2(c, s2_groups({0, 3, 6, 9, 12}, {0, 1, 4, 7, 10}, 2), "S2 T=13 G=3 padded");
}

OPCHECK(Attention, ProbabilityDropoutGrads) {
  AttnCase c;
  c.cfg = attn_cfg(12, 2, 0, 6);
  c.cfg.dropout = 0.25f;
  c.cfg.causal = true;
  c.T = 7;
  AttnSetup s(c);
  auto make = [] { return train_ctx(1234); };
  Context e1, e2 = make();
  Tensor y_eval = s.fwd(e1).clone();
  Tensor y_train = s.fwd(e2);
  EXPECT_EQ(e2.rng_counter, static_cast<uint64_t>(2 * 2 * 7 * 7 + 1) / 2);
  double diff = 0;
  for (int64_t i = 0; i < y_eval.numel(); ++i)
    diff += std::fabs(y_eval.f32()[i] - y_train.f32()[i]);
  EXPECT_GT(diff, 1e-3) << "dropout on probabilities must change the output in training";
  check_grads(
      "attention dropout", s.a, s.x, [&](Context& cx) { return s.fwd(cx); },
      [&](Context& cx, const Tensor& dy) { return s.a.backward(cx, dy); }, 1e-2f, 2e-3, make);
}

OPCHECK(Attention, FrozenBaseInputGradOnly) {
  AttnCase c;
  c.cfg = attn_cfg(12, 4, 2, 0);  // head_dim = 3
  c.cfg.causal = true;
  c.trainable = false;
  c.T = 5;
  EXPECT_EQ(Attention(c.cfg).head_dim(), 3);
  check_attention(c, "frozen GQA D=3");
  AttnSetup s(c);
  Context ctx;
  s.fwd(ctx);
  EXPECT_FALSE(s.a.backward(ctx, opcheck::random({2, 5, 12}, 1), false).defined());
  for (auto& [name, p] : s.a.named_parameters()) EXPECT_FALSE(p->grad.defined()) << name;
}

// Generation: prefill + token-by-token through the KV cache equals the rows of one full forward.
void check_cached(AttentionConfig cfg, bool pad, const std::string& what) {
  AttnCase c;
  c.cfg = cfg;
  c.B = 2;
  c.T = 7;
  AttnSetup s(c);
  Tensor pm;
  if (pad) {  // batch 1: first two tokens are left padding
    pm = Tensor::full({2, 7}, 1.0f);
    pm.f32()[7] = pm.f32()[8] = 0.0f;
  }
  Context ctx;
  Tensor full = s.a.forward(ctx, s.x, pm).clone();  // [2, 7, C]
  auto cache = s.a.make_cache(2, 9);
  const int64_t C = cfg.hidden;
  int64_t t0 = 0;
  for (int64_t len : {4, 1, 2}) {
    Tensor xn = Tensor::empty({2, len, C});
    for (int64_t b = 0; b < 2; ++b)
      std::memcpy(xn.f32() + b * len * C, s.x.f32() + (b * 7 + t0) * C, len * C * sizeof(float));
    Tensor pn;
    if (pad) {
      pn = Tensor::empty({2, t0 + len});
      for (int64_t b = 0; b < 2; ++b)
        std::memcpy(pn.f32() + b * (t0 + len), pm.f32() + b * 7, (t0 + len) * sizeof(float));
    }
    Tensor y = s.a.forward_cached(ctx, xn, cache, pn);
    ASSERT_EQ(cache.len, t0 + len);
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t t = 0; t < len; ++t)
        for (int64_t e = 0; e < C; ++e) {
          float got = y.f32()[(b * len + t) * C + e], want = full.f32()[(b * 7 + t0 + t) * C + e];
          ASSERT_NEAR(got, want, 1e-5 + 1e-5 * std::fabs(want))
              << what << " b " << b << " t " << t0 + t << " e " << e;
        }
    t0 += len;
  }
  std::string e = error_of([&] { s.a.forward_cached(ctx, opcheck::random({2, 3, C}, 1), cache); });
  EXPECT_TRUE(contains(e, "[Attention]") && contains(e, "do not fit")) << e;
  e = error_of([&] { s.a.backward(ctx, opcheck::random({2, 7, C}, 1)); });
  EXPECT_TRUE(contains(e, "before forward")) << "no backward after forward_cached: " << e;
}

OPCHECK(Attention, KvCacheMatchesFullForward) {
  AttentionConfig cfg = attn_cfg(12, 4, 2, 6);
  cfg.causal = true;
  cfg.rope = true;
  cfg.qkv_bias = true;
  check_cached(cfg, false, "GQA RoPE causal");
  cfg.rope_style = RopeStyle::Adjacent;
  check_cached(cfg, true, "GQA RoPE adjacent causal + left padding");
}

OPCHECK(Attention, NamesAndErrors) {
  AttentionConfig cfg = attn_cfg(12, 4, 2, 0);
  cfg.qkv_bias = true;
  Attention a(cfg);
  auto names = a.named_parameters("self_attn.");
  ASSERT_EQ(names.size(), 7u);
  EXPECT_EQ(names[0].first, "self_attn.q_proj.weight");
  EXPECT_EQ(names[1].first, "self_attn.q_proj.bias");
  EXPECT_EQ(names[6].first, "self_attn.o_proj.weight");
  EXPECT_EQ(a.k.weight.value.shape(), (Shape{6, 12}));
  Context ctx;
  std::string e = error_of([&] { a.forward(ctx, opcheck::random({2, 5, 10}, 1)); });
  EXPECT_TRUE(contains(e, "[Attention]") && contains(e, "[2, 5, 10]")) << e;
  e = error_of([&] { a.forward(ctx, opcheck::random({10, 12}, 1)); });
  EXPECT_TRUE(contains(e, "[Attention]") && contains(e, "[10, 12]")) << e;
  e = error_of([&] { a.forward(ctx, opcheck::random({2, 5, 12}, 1), Tensor::full({2, 4}, 1.0f)); });
  EXPECT_TRUE(contains(e, "[Attention]") && contains(e, "pad_mask") && contains(e, "[2, 4]")) << e;
  e = error_of([&] { Attention bad(attn_cfg(12, 4, 3, 0)); });
  EXPECT_TRUE(contains(e, "[Attention]") && contains(e, "n_kv_heads")) << e;
  AttentionConfig odd = attn_cfg(12, 4, 0, 3);
  odd.rope = true;
  e = error_of([&] { Attention bad(odd); });
  EXPECT_TRUE(contains(e, "[Attention]") && contains(e, "even")) << e;
}

}  // namespace
