// DoRA tests: the layer against finite differences (norm held constant, as DoRA §4.3 / PEFT),
// the fast row norms against the materializing reference and a double-precision direct sum
// (F32 and quantized bases), dropout against a slow formula, merge/unmerge, parity with PEFT
// 0.21.2 fixtures (tools/ref_dora.py: logits, gradients of A, B and the magnitude, counts),
// PEFT folders both ways (export for tools/check_peft_load.py), errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <unistd.h>

#include "lorafit/io.h"
#include "lorafit/kernels.h"
#include "lorafit/models.h"
#include "lorafit/peft.h"
#include "lorafit/quant.h"
#include "ops/op_check.h"
#include "peft_test_util.h"

namespace {

using peft_test::max_abs;
using peft_test::max_abs_diff;
using peft_test::nan_max;

namespace fs = std::filesystem;
using lorafit::Error;
using lorafit::nn::Context;
using lorafit::nn::Linear;
using lorafit::peft::AdapterConfig;
using lorafit::peft::DoraLinear;
using lorafit::peft::DoraNorm;
using lorafit::peft::PeftModel;
using lorafit::tensor::DType;
using lorafit::tensor::Tensor;
namespace io = lorafit::io;
namespace models = lorafit::models;
namespace peft = lorafit::peft;

const std::string kFix = std::string(LORAFIT_FIXTURES) + "/dora/";
const std::string kRoot = std::string(LORAFIT_SOURCE_DIR) + "/";

std::string temp_dir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("lorafit_dora_test_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(p);
  return p.string();
}

// ‖W + s·B A‖ per row in double, straight from the definition.
std::vector<double> direct_norms(const Tensor& w32, const Tensor& A, const Tensor& B, double s) {
  const int64_t out = w32.dim(0), in = w32.dim(1), r = A.dim(0);
  std::vector<double> n(static_cast<size_t>(out));
  for (int64_t i = 0; i < out; ++i) {
    double acc = 0;
    for (int64_t j = 0; j < in; ++j) {
      double v = w32.f32()[i * in + j];
      for (int64_t a = 0; a < r; ++a) v += s * B.f32()[i * r + a] * A.f32()[a * in + j];
      acc += v * v;
    }
    n[static_cast<size_t>(i)] = std::sqrt(acc);
  }
  return n;
}

// A DoRA layer on a random Linear [out, in] with nonzero A, B and a magnitude away from the norm.
struct Layer {
  Linear lin;
  DoraLinear dora;
  Layer(int64_t in, int64_t out, bool bias, bool rslora, float dropout, uint64_t seed)
      : lin(in, out, bias), dora(lin, 3, 5.0, rslora, dropout) {
    lin.weight.value = opcheck::random({out, in}, seed);
    if (bias) lin.bias.value = opcheck::random({out}, seed + 1);
    dora.init(lin, peft::LoraInit::Random, seed + 2);  // m = ‖W + s·B A‖
    for (int64_t i = 0; i < out; ++i)
      dora.magnitude.value.f32()[i] *= 0.7f + 0.05f * static_cast<float>(i % 9);
    dora.A.set_trainable(true);
    dora.B.set_trainable(true);
    dora.magnitude.set_trainable(true);
    dora.enabled = true;
    lin.adapters.push_back(&dora);
  }
};

// ---- the layer ---------------------------------------------------------------------------------

struct FdCase {
  bool bias, rslora;
  float dropout;
  bool trainable_base = false;
};

void check_dora_layer(const FdCase& c) {
  Layer l(7, 5, c.bias, c.rslora, c.dropout, 11);
  if (c.trainable_base) l.lin.set_trainable(true);
  // The norm is a constant in DoRA's backward: freeze it so finite differences see the same.
  l.dora.fixed_norm = l.dora.weight_norm(l.lin, DoraNorm::Fast);
  Tensor x = opcheck::random({2, 3, 7}, 3);
  Tensor r = opcheck::random({2, 3, 5}, 4);
  Context ctx;
  ctx.training = c.dropout > 0;
  ctx.seed = 99;
  auto loss = [&]() {
    Context c2 = ctx;  // same dropout mask every evaluation
    return opcheck::dot(l.lin.forward(c2, x), r);
  };
  Context c1 = ctx;
  l.lin.forward(c1, x);
  Tensor dx = l.lin.backward(c1, r);
  opcheck::expect_grad(dx, opcheck::finite_diff(x, loss, 1e-2f), 1e-4, "dx");
  opcheck::expect_grad(l.dora.A.grad, opcheck::finite_diff(l.dora.A.value, loss, 1e-2f), 1e-4, "dA");
  opcheck::expect_grad(l.dora.B.grad, opcheck::finite_diff(l.dora.B.value, loss, 1e-2f), 1e-4, "dB");
  opcheck::expect_grad(l.dora.magnitude.grad,
                       opcheck::finite_diff(l.dora.magnitude.value, loss, 1e-2f), 1e-4, "dm");
  if (c.trainable_base) {
    opcheck::expect_grad(l.lin.weight.grad, opcheck::finite_diff(l.lin.weight.value, loss, 1e-2f),
                         1e-4, "dW");
    if (c.bias)
      opcheck::expect_grad(l.lin.bias.grad, opcheck::finite_diff(l.lin.bias.value, loss, 1e-2f),
                           1e-4, "db");
  }
  // The gradient with the live norm (no fixed_norm) is the same: the norm is detached.
  l.dora.fixed_norm = Tensor();
  Tensor ga = l.dora.A.grad.clone(), gm = l.dora.magnitude.grad.clone();
  l.dora.A.zero_grad();
  l.dora.magnitude.zero_grad();
  Context c3 = ctx;
  l.lin.forward(c3, x);
  l.lin.backward(c3, r);
  EXPECT_LT(max_abs_diff(l.dora.A.grad, ga), 1e-5 * std::max(1.0, max_abs(ga)));
  EXPECT_LT(max_abs_diff(l.dora.magnitude.grad, gm), 1e-5 * std::max(1.0, max_abs(gm)));
  l.lin.adapters.clear();
}

TEST(DoraLinear, FiniteDifferences) { check_dora_layer({true, false, 0.0f}); }
TEST(DoraLinear, FiniteDifferencesRsloraNoBias) { check_dora_layer({false, true, 0.0f}); }
TEST(DoraLinear, FiniteDifferencesDropout) { check_dora_layer({true, false, 0.3f}); }
// A trainable base weight (not PEFT's use) still gets the exact gradient, with and without the
// base-gradient factors that Linear applies for DoRA.
TEST(DoraLinear, FiniteDifferencesTrainableBase) { check_dora_layer({true, false, 0.0f, true}); }
TEST(DoraLinear, FiniteDifferencesTrainableBaseDropout) { check_dora_layer({true, false, 0.3f, true}); }

TEST(DoraLinear, FastNormsEqualReferenceAndDirectSum) {
  for (DType t : {DType::F32, DType::BF16, DType::Q8_0}) {
    Layer l(64, 37, true, false, 0.0f, 21);
    if (t != DType::F32) l.lin.weight.value = lorafit::tensor::quantize(l.lin.weight.value, t);
    Tensor w32 = t == DType::F32 ? l.lin.weight.value : lorafit::tensor::dequantize(l.lin.weight.value);
    const std::vector<double> want = direct_norms(w32, l.dora.A.value, l.dora.B.value, l.dora.scaling());
    Tensor fast = l.dora.weight_norm(l.lin, DoraNorm::Fast);
    Tensor ref = l.dora.weight_norm(l.lin, DoraNorm::Reference);
    double worst_fast = 0, worst_ref = 0;
    for (int64_t i = 0; i < 37; ++i) {
      worst_fast = nan_max(worst_fast, std::fabs(fast.f32()[i] - want[i]) / want[i]);
      worst_ref = nan_max(worst_ref, std::fabs(ref.f32()[i] - want[i]) / want[i]);
    }
    EXPECT_LT(worst_fast, 2e-6) << lorafit::tensor::dtype_name(t);
    EXPECT_LT(worst_ref, 2e-6) << lorafit::tensor::dtype_name(t);
    // A nonzero B moves the norm away from ‖W‖ (the test would pass with the cross terms
    // dropped otherwise).
    double moved = 0;
    for (int64_t i = 0; i < 37; ++i) {
      double w2 = 0;
      for (int64_t j = 0; j < 64; ++j) w2 += static_cast<double>(w32.f32()[i * 64 + j]) * w32.f32()[i * 64 + j];
      moved = nan_max(moved, std::fabs(std::sqrt(w2) - want[i]) / want[i]);
    }
    EXPECT_GT(moved, 1e-3);
    l.lin.adapters.clear();
  }
}

// The fast norm keeps ‖w_i‖² of a frozen base between forwards: B and A changes (training) show
// at once, an in-place change of W after nn::weights_changed() (merge, PiSSA's residual).
TEST(DoraLinear, FastNormCacheFollowsAdapterAndWeightChanges) {
  Layer l(64, 37, true, false, 0.0f, 21);
  ASSERT_FALSE(l.lin.weight.trainable);
  auto worst = [&](const Tensor& got) {
    const std::vector<double> want =
        direct_norms(l.lin.weight.value, l.dora.A.value, l.dora.B.value, l.dora.scaling());
    double w = 0;
    for (int64_t i = 0; i < 37; ++i) w = nan_max(w, std::fabs(got.f32()[i] - want[i]) / want[i]);
    return w;
  };
  Tensor n1 = l.dora.weight_norm(l.lin, DoraNorm::Fast);
  EXPECT_LT(worst(n1), 2e-6);
  for (int64_t i = 0; i < l.dora.B.value.numel(); ++i) l.dora.B.value.f32()[i] *= 3.0f;
  EXPECT_LT(worst(l.dora.weight_norm(l.lin, DoraNorm::Fast)), 2e-6);  // B: at once
  float* w = l.lin.weight.value.f32();
  for (int64_t i = 0; i < 64 * 37; ++i) w[i] *= 2.0f;
  lorafit::nn::weights_changed();
  Tensor n2 = l.dora.weight_norm(l.lin, DoraNorm::Fast);
  EXPECT_LT(worst(n2), 2e-6);
  EXPECT_GT(std::fabs(n2.f32()[0] - n1.f32()[0]), 1e-3 * n1.f32()[0]);  // W really moved it
  l.lin.adapters.clear();
}

TEST(DoraLinear, ForwardMatchesSlowFormulaWithDropoutAndQuantizedBase) {
  for (DType t : {DType::F32, DType::Q8_0}) {
    for (float p : {0.0f, 0.25f}) {
      Layer l(32, 6, true, false, p, 31);
      if (t != DType::F32) l.lin.weight.value = lorafit::tensor::quantize(l.lin.weight.value, t);
      Tensor w32 = t == DType::F32 ? l.lin.weight.value : lorafit::tensor::dequantize(l.lin.weight.value);
      const int64_t n = 4, in = 32, out = 6, r = 3;
      Tensor x = opcheck::random({n, in}, 5);
      Context ctx;
      ctx.training = true;
      ctx.seed = 7;
      Context c0 = ctx;
      Tensor y = l.lin.forward(c0, x).clone();
      // Slow: k = m/‖W+sBA‖; y = W x + b + (k−1) W xd + k s B A xd, xd from the same mask stream.
      const std::vector<double> nrm = direct_norms(w32, l.dora.A.value, l.dora.B.value, l.dora.scaling());
      const double s = l.dora.scaling();
      std::vector<double> xd(static_cast<size_t>(n * in));
      for (int64_t i = 0; i < n * in; ++i) {
        const bool kept = p == 0.0f || lorafit::nn::random_uniform(7, i) >= p;
        xd[static_cast<size_t>(i)] = kept ? x.f32()[i] / (1.0 - p) : 0.0;
      }
      double worst = 0, scale = 0;
      for (int64_t a = 0; a < n; ++a)
        for (int64_t i = 0; i < out; ++i) {
          double wx = 0, wxd = 0, bax = 0;
          for (int64_t j = 0; j < in; ++j) {
            wx += w32.f32()[i * in + j] * static_cast<double>(x.f32()[a * in + j]);
            wxd += w32.f32()[i * in + j] * xd[static_cast<size_t>(a * in + j)];
            double ba = 0;
            for (int64_t c = 0; c < r; ++c) ba += l.dora.B.value.f32()[i * r + c] * l.dora.A.value.f32()[c * in + j];
            bax += ba * xd[static_cast<size_t>(a * in + j)];
          }
          const double k = l.dora.magnitude.value.f32()[i] / nrm[static_cast<size_t>(i)];
          const double want = wx + l.lin.bias.value.f32()[i] + (k - 1) * wxd + k * s * bax;
          worst = nan_max(worst, std::fabs(want - y.f32()[a * out + i]));
          scale = nan_max(scale, std::fabs(want));
        }
      EXPECT_LT(worst, 1e-5 * std::max(1.0, scale)) << "p " << p << " " << lorafit::tensor::dtype_name(t);
      l.lin.adapters.clear();
    }
  }
}

TEST(DoraLinear, DefaultInitStartsAtTheBaseModel) {
  Linear lin(20, 9, true);
  lin.weight.value = opcheck::random({9, 20}, 1);
  lin.bias.value = opcheck::random({9}, 2);
  DoraLinear d(lin, 4, 8.0, false, 0.0f);
  d.init(lin, peft::LoraInit::Default, 3);
  EXPECT_EQ(max_abs(d.B.value), 0.0);
  // m = ‖W‖ per row.
  for (int64_t i = 0; i < 9; ++i) {
    double w2 = 0;
    for (int64_t j = 0; j < 20; ++j) w2 += static_cast<double>(lin.weight.value.f32()[i * 20 + j]) * lin.weight.value.f32()[i * 20 + j];
    EXPECT_NEAR(d.magnitude.value.f32()[i], std::sqrt(w2), 1e-5);
  }
  Tensor x = opcheck::random({3, 20}, 4);
  Context c;
  Tensor base = lin.forward(c, x).clone();
  lin.adapters.push_back(&d);
  Tensor adapted = lin.forward(c, x);
  EXPECT_LT(max_abs_diff(adapted, base), 1e-5);
  lin.adapters.clear();
}

TEST(DoraLinear, MergeEqualsUnmergedAndUnmergeRestores) {
  Layer l(48, 10, true, true, 0.0f, 41);
  Tensor x = opcheck::random({5, 48}, 6);
  Context c;
  Tensor y = l.lin.forward(c, x).clone();
  Tensor w0 = l.lin.weight.value.clone();
  l.dora.merge(l.lin);
  EXPECT_TRUE(l.dora.merged);
  EXPECT_FALSE(l.dora.active());
  Tensor ym = l.lin.forward(c, x).clone();
  EXPECT_LT(max_abs_diff(ym, y), 1e-5 * std::max(1.0, max_abs(y)));
  // Merged row norms are the magnitude (W' = m · V / ‖V‖).
  for (int64_t i = 0; i < 10; ++i) {
    double w2 = 0;
    for (int64_t j = 0; j < 48; ++j) w2 += static_cast<double>(l.lin.weight.value.f32()[i * 48 + j]) * l.lin.weight.value.f32()[i * 48 + j];
    EXPECT_NEAR(std::sqrt(w2), l.dora.magnitude.value.f32()[i], 1e-5);
  }
  l.dora.unmerge(l.lin);
  EXPECT_LT(max_abs_diff(l.lin.weight.value, w0), 1e-6);
  EXPECT_LT(max_abs_diff(l.lin.forward(c, x), y), 1e-5 * std::max(1.0, max_abs(y)));
  l.lin.adapters.clear();
}

TEST(DoraLinear, StackedAfterAnotherAdapterForwardIsPeftsAndBackwardExact) {
  Layer l(16, 5, true, false, 0.0f, 51);
  peft::LoraLinear first(l.lin, 2, 2.0, false, 0.0f);
  first.init(l.lin, peft::LoraInit::Random, 9);
  l.lin.adapters.insert(l.lin.adapters.begin(), &first);
  Tensor x = opcheck::random({3, 16}, 2);
  Context c;
  Tensor y = l.lin.forward(c, x).clone();
  // PEFT: result = Wx + b + L1; DoRA's base_result = result − b = Wx + L1.
  l.lin.adapters = {&first};
  Tensor y1 = l.lin.forward(c, x).clone();
  Tensor wxb = Tensor::zeros({3, 5});
  l.lin.matmul_weight(x, wxb);
  Tensor nrm = l.dora.weight_norm(l.lin, DoraNorm::Reference);
  Tensor lora = Tensor::zeros({3, 5});
  {
    Tensor h = Tensor::zeros({3, 3});  // x Aᵀ (DoRA rank 3)
    lorafit::kernels::gemm(x, false, l.dora.A.value, true, h);
    lorafit::kernels::gemm(h, false, l.dora.B.value, true, lora, l.dora.scaling(), 0.0f);
  }
  double worst = 0;
  for (int64_t a = 0; a < 3; ++a)
    for (int64_t i = 0; i < 5; ++i) {
      const double k = l.dora.magnitude.value.f32()[i] / nrm.f32()[i];
      const double base_result = y1.f32()[a * 5 + i] - l.lin.bias.value.f32()[i];
      const double want = y1.f32()[a * 5 + i] + (k - 1) * base_result + k * lora.f32()[a * 5 + i];
      worst = nan_max(worst, std::fabs(want - y.f32()[a * 5 + i]));
    }
  EXPECT_LT(worst, 1e-5);
  // Backward: the first adapter is part of what DoRA rescales, so it gets k ⊙ dy (DoRA's
  // upstream_grad): finite differences of dx and of the first adapter's A and B (norm held).
  l.lin.adapters = {&first, &l.dora};
  first.A.set_trainable(true);
  first.B.set_trainable(true);
  l.dora.fixed_norm = l.dora.weight_norm(l.lin, DoraNorm::Fast);
  Tensor r = opcheck::random({3, 5}, 3);
  auto loss = [&] {
    Context c2;
    return opcheck::dot(l.lin.forward(c2, x), r);
  };
  Context c1;
  l.lin.forward(c1, x);
  Tensor dx = l.lin.backward(c1, r).clone();
  opcheck::expect_grad(dx, opcheck::finite_diff(x, loss, 1e-2f), 1e-4, "stacked dx");
  opcheck::expect_grad(first.A.grad.clone(), opcheck::finite_diff(first.A.value, loss, 1e-2f), 1e-4,
                       "stacked first dA");
  opcheck::expect_grad(first.B.grad.clone(), opcheck::finite_diff(first.B.value, loss, 1e-2f), 1e-4,
                       "stacked first dB");
  l.lin.adapters.clear();
}

// ---- parity with PEFT --------------------------------------------------------------------------

struct ModelRun {
  Tensor logits;
  double loss = 0;
};

// Forward + loss (cross-entropy / causal-LM as tools/ref_peft.py) + backward.
ModelRun run_model(models::Model& m, const io::SafetensorsFile& ref, bool backward) {
  Context ctx;
  ModelRun out;
  Tensor ids = ref.get("input_ids").clone();
  Tensor mask = ref.get("attention_mask").clone();
  auto ce_rows = [&](const float* z, int64_t L, int y, double w, float* d) {
    double mx = z[0], s = 0;
    for (int64_t j = 1; j < L; ++j) mx = std::max<double>(mx, z[j]);
    for (int64_t j = 0; j < L; ++j) s += std::exp(z[j] - mx);
    out.loss += (std::log(s) + mx - z[y]) * w;
    for (int64_t j = 0; j < L; ++j) d[j] = static_cast<float>((std::exp(z[j] - mx) / s - (j == y)) * w);
  };
  if (auto* bert = dynamic_cast<models::BertModel*>(&m)) {
    Tensor h = bert->forward(ctx, ids, mask, ref.get("token_type_ids").clone());
    out.logits = bert->classify(ctx, h).clone();
    const int64_t B = out.logits.dim(0), L = out.logits.dim(1);
    Tensor dl = Tensor::zeros({B, L});
    for (int64_t b = 0; b < B; ++b)
      ce_rows(out.logits.f32() + b * L, L, ref.get("labels").i32()[b], 1.0 / B, dl.f32() + b * L);
    if (backward) bert->backward(ctx, bert->classify_backward(ctx, dl));
  } else {
    auto* llama = dynamic_cast<models::LlamaModel*>(&m);
    EXPECT_NE(llama, nullptr);
    out.logits = llama->forward(ctx, ids, mask).clone();
    const int64_t B = out.logits.dim(0), T = out.logits.dim(1), V = out.logits.dim(2);
    Tensor dl = Tensor::zeros({B, T, V});
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t + 1 < T; ++t)
        ce_rows(out.logits.f32() + (b * T + t) * V, V, ids.i32()[b * T + t + 1],
                1.0 / static_cast<double>(B * (T - 1)), dl.f32() + (b * T + t) * V);
    if (backward) llama->backward(ctx, dl);
  }
  return out;
}

std::unique_ptr<models::Model> load_base(const io::SafetensorsFile& ref) {
  models::LoadOptions lo;
  lo.num_labels = ref.get("logits").ndim() == 2 ? ref.get("logits").dim(1) : 0;
  return models::load_model(kRoot + ref.metadata().at("base"), lo);
}

struct ParityCase {
  const char* name;
  double logits_tol;
};

class DoraParity : public ::testing::TestWithParam<ParityCase> {};

TEST_P(DoraParity, LogitsGradientsCountsMerge) {
  const ParityCase c = GetParam();
  const std::string ref_path = kFix + c.name + "_ref.safetensors";
  ASSERT_TRUE(fs::exists(ref_path)) << ref_path << " missing (tools/make_reference.py dora)";
  io::SafetensorsFile ref = io::SafetensorsFile::open(ref_path);
  ASSERT_TRUE(fs::exists(kRoot + ref.metadata().at("base"))) << "run tools/fetch_models.sh";
  auto model = load_base(ref);
  auto pm = PeftModel::from_pretrained(*model, kFix + c.name, "default", /*is_trainable=*/true);
  EXPECT_TRUE(pm->config().use_dora);

  peft::ParameterCount cnt = pm->count_parameters();
  EXPECT_EQ(cnt.trainable, std::stoll(ref.metadata().at("trainable"))) << c.name;
  EXPECT_EQ(cnt.total, std::stoll(ref.metadata().at("all"))) << c.name;

  ModelRun run = run_model(*model, ref, true);
  const double err = max_abs_diff(run.logits, ref.get("logits"));
  std::printf("[ %s ] max |logits - PEFT| = %.3g (scale %.3g)\n", c.name, err, max_abs(ref.get("logits")));
  EXPECT_LT(err, c.logits_tol) << c.name;
  EXPECT_NEAR(run.loss, ref.get("loss").f32()[0], 1e-5 * std::max(1.0, std::fabs(run.loss)));
  EXPECT_GT(max_abs_diff(ref.get("logits"), ref.get("base_logits")), 100 * c.logits_tol);

  // Gradients of every adapter tensor, lora_magnitude_vector included.
  auto params = pm->trainable_parameters();
  int checked = 0, magnitudes = 0;
  double worst = 0;
  for (auto& [key, p] : params) {
    ASSERT_TRUE(ref.contains("grad." + key)) << "PEFT has no gradient for " << key;
    Tensor want = ref.get("grad." + key);
    const double rel = max_abs_diff(p->grad, want) / std::max(max_abs(want), 1e-12);
    worst = nan_max(worst, rel);
    EXPECT_LT(rel, 1e-4) << c.name << " " << key;
    ++checked;
    magnitudes += key.size() > 21 && key.compare(key.size() - 21, 21, "lora_magnitude_vector") == 0;
  }
  int ref_grads = 0;
  for (const auto& n : ref.names()) ref_grads += n.rfind("grad.", 0) == 0;
  EXPECT_EQ(checked, ref_grads) << "trainable parameters vs PEFT's gradients";
  EXPECT_EQ(magnitudes, static_cast<int>(pm->lora_layers().size()));
  std::printf("[ %s ] %d gradients (%d magnitudes), max relative error %.3g\n", c.name, checked,
              magnitudes, worst);

  // The reference (materializing) norm gives the same logits.
  for (auto& [path, l] : pm->lora_layers()) dynamic_cast<DoraLinear&>(*l).norm_mode = DoraNorm::Reference;
  EXPECT_LT(max_abs_diff(run_model(*model, ref, false).logits, run.logits), 1e-5 * std::max(1.0, max_abs(run.logits)));
  for (auto& [path, l] : pm->lora_layers()) dynamic_cast<DoraLinear&>(*l).norm_mode = DoraNorm::Fast;

  pm->disable_adapters();
  ModelRun base_run = run_model(*model, ref, false);
  if (model->initialized().empty()) {
    EXPECT_LT(max_abs_diff(base_run.logits, ref.get("base_logits")), c.logits_tol);
  }
  pm->enable_adapters();

  // Merge: same logits; unmerge: W back.
  std::vector<std::pair<Linear*, Tensor>> before;
  for (auto& [path, l] : model->linears()) before.emplace_back(l, l->weight.value.clone());
  pm->merge();
  EXPECT_TRUE(pm->merged());
  ModelRun merged = run_model(*model, ref, false);
  EXPECT_LT(max_abs_diff(merged.logits, run.logits), 1e-5 * std::max(1.0, max_abs(run.logits)));
  pm->unmerge();
  double werr = 0;
  for (auto& [l, w] : before) werr = nan_max(werr, max_abs_diff(l->weight.value, w));
  EXPECT_LT(werr, 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, DoraParity,
                         ::testing::Values(ParityCase{"bert_qv", 1e-5},
                                           ParityCase{"bert_all_rslora", 1e-5},
                                           ParityCase{"llama_qv", 1e-5},
                                           ParityCase{"llama_all", 1e-5},
                                           ParityCase{"minilm_qv", 1e-4}),
                         [](const auto& info) { return std::string(info.param.name); });

// ---- files -------------------------------------------------------------------------------------

TEST(DoraSave, RoundTripMatchesPeftFolder) {
  for (const char* name : {"bert_qv", "llama_all"}) {
    io::SafetensorsFile ref = io::SafetensorsFile::open(kFix + name + "_ref.safetensors");
    auto model = load_base(ref);
    auto pm = PeftModel::from_pretrained(*model, kFix + name);
    const std::string out = temp_dir(name);
    pm->save_pretrained(out);
    io::SafetensorsFile ours = io::SafetensorsFile::open(out + "/adapter_model.safetensors");
    io::SafetensorsFile theirs = io::SafetensorsFile::open(kFix + name + "/adapter_model.safetensors");
    auto sorted = [](std::vector<std::string> v) { std::sort(v.begin(), v.end()); return v; };
    EXPECT_EQ(sorted(ours.names()), sorted(theirs.names())) << name;
    int mags = 0;
    for (const auto& k : theirs.names()) {
      if (!ours.contains(k)) continue;
      EXPECT_EQ(ours.entry(k).shape, theirs.entry(k).shape) << k;
      EXPECT_EQ(max_abs_diff(ours.get_f32(k), theirs.get_f32(k)), 0.0) << k;
      mags += k.find("lora_magnitude_vector") != std::string::npos;
    }
    EXPECT_GT(mags, 0);
    io::json a = io::read_json_file(out + "/adapter_config.json");
    EXPECT_EQ(a["use_dora"], true);
    auto model2 = load_base(ref);
    auto pm2 = PeftModel::from_pretrained(*model2, out);
    EXPECT_LT(max_abs_diff(run_model(*model2, ref, false).logits, ref.get("logits")), 1e-5);
    fs::remove_all(out);
  }
}

TEST(DoraErrors, MissingOrMisshapenMagnitudeNamesTheTensor) {
  const std::string key = "base_model.model.bert.encoder.layer.1.attention.self.value.lora_magnitude_vector";
  io::SafetensorsFile ref = io::SafetensorsFile::open(kFix + std::string("bert_qv_ref.safetensors"));
  for (int variant = 0; variant < 2; ++variant) {
    const std::string d = temp_dir("bad" + std::to_string(variant));
    fs::create_directories(d);
    fs::copy_file(kFix + "bert_qv/adapter_config.json", d + "/adapter_config.json");
    io::SafetensorsFile in = io::SafetensorsFile::open(kFix + "bert_qv/adapter_model.safetensors");
    std::vector<std::pair<std::string, Tensor>> t;
    for (const auto& n : in.names()) {
      if (n == key && variant == 0) continue;
      t.emplace_back(n, n == key ? Tensor::zeros({3}) : in.get_f32(n).clone());
    }
    io::write_safetensors(d + "/adapter_model.safetensors", t, {{"format", "pt"}});
    auto model = load_base(ref);
    try {
      PeftModel::from_pretrained(*model, d);
      ADD_FAILURE() << "expected an error";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(key), std::string::npos) << msg;
      EXPECT_NE(msg.find(variant == 0 ? "is missing" : "has shape [3]"), std::string::npos) << msg;
    }
    fs::remove_all(d);
  }
}

TEST(DoraInject, TrainableParametersIncludeMagnitude) {
  io::SafetensorsFile ref = io::SafetensorsFile::open(kFix + std::string("bert_qv_ref.safetensors"));
  auto model = load_base(ref);
  AdapterConfig cfg;
  cfg.r = 4;
  cfg.lora_alpha = 8;
  cfg.target_modules = {"query", "value"};
  cfg.use_dora = true;
  PeftModel pm(*model, cfg, 3);
  auto params = pm.trainable_parameters();
  int a = 0, b = 0, m = 0;
  for (auto& [k, p] : params) {
    a += k.find(".lora_A.weight") != std::string::npos;
    b += k.find(".lora_B.weight") != std::string::npos;
    if (k.find(".lora_magnitude_vector") != std::string::npos) {
      ++m;
      EXPECT_EQ(p->value.ndim(), 1);
      EXPECT_TRUE(p->trainable);
    }
  }
  EXPECT_EQ(a, 4);
  EXPECT_EQ(b, 4);
  EXPECT_EQ(m, 4);
  // A fresh DoRA adapter (B = 0) leaves the model's output unchanged.
  ModelRun with = run_model(*model, ref, false);
  pm.disable_adapters();
  ModelRun without = run_model(*model, ref, false);
  EXPECT_LT(max_abs_diff(with.logits, without.logits), 1e-5);
}

// Writes DoRA adapters made by lorafit for tools/check_peft_load.py (LORAFIT_PEFT_EXPORT=<dir>),
// with the same file layout as PeftExport.ForPythonCheck.
TEST(PeftExport, DoraForPythonCheck) {
  const char* env_dir = std::getenv("LORAFIT_PEFT_EXPORT");
  const std::string tmp = env_dir ? std::string() : temp_dir("dora_export");
  const std::string dir = env_dir ? env_dir : tmp;
  fs::create_directories(dir);
  struct Case {
    const char* name;
    const char* base;
    const char* ref;
    std::vector<std::string> targets;
    const char* task;
    int64_t labels;
  };
  const std::vector<Case> cases = {
      {"dora_bert_all_linear", "tests/fixtures/models/tiny_bert", "bert_qv", {"all-linear"}, "SEQ_CLS", 3},
      {"dora_llama_qv", "tests/fixtures/models/tiny_llama", "llama_qv", {"q_proj", "v_proj"}, "CAUSAL_LM", 0},
      {"dora_minilm_qv", "models/all-MiniLM-L6-v2", "minilm_qv", {"query", "value"}, "SEQ_CLS", 2},
  };
  for (const auto& c : cases) {
    ASSERT_TRUE(fs::exists(kRoot + c.base)) << c.base << " missing: run tools/fetch_models.sh";
    io::SafetensorsFile ref = io::SafetensorsFile::open(kFix + c.ref + "_ref.safetensors");
    models::LoadOptions lo;
    lo.num_labels = c.labels;
    lo.seed = 5;
    auto model = models::load_model(kRoot + c.base, lo);
    AdapterConfig cfg;
    cfg.r = 4;
    cfg.lora_alpha = 8;
    cfg.target_modules = c.targets;
    cfg.task_type = c.task;
    cfg.use_dora = true;
    cfg.init_lora_weights = peft::LoraInit::Random;
    cfg.base_model_name_or_path = c.base;
    PeftModel pm(*model, cfg, 4321);
    // Magnitudes away from ‖W + s·B A‖, so PEFT must really load them.
    for (auto& [path, l] : pm.lora_layers()) {
      Tensor& m = dynamic_cast<DoraLinear&>(*l).magnitude.value;
      for (int64_t i = 0; i < m.numel(); ++i) m.f32()[i] *= 0.8f + 0.4f * static_cast<float>(i % 7) / 6.0f;
    }
    pm.save_pretrained(dir + "/" + c.name);
    ModelRun run = run_model(*model, ref, false);
    std::vector<std::pair<std::string, Tensor>> t = {{"logits", run.logits}};
    for (const char* k : {"input_ids", "attention_mask", "token_type_ids"})
      if (ref.contains(k)) t.emplace_back(k, ref.get(k).clone());
    io::write_safetensors(dir + "/" + c.name + "_ours.safetensors", t,
                          {{"base", c.base}, {"count", pm.count_parameters().str()}});
    auto fresh = models::load_model(kRoot + c.base, lo);
    auto back = PeftModel::from_pretrained(*fresh, dir + "/" + c.name);
    EXPECT_LT(max_abs_diff(run_model(*fresh, ref, false).logits, run.logits), 1e-6) << c.name;
  }
  if (!env_dir) fs::remove_all(tmp);
}

// ---- weight-decomposition analysis -------------------------------------------------------------

// Synthetic fine-tuning with ΔM and ΔD known in closed form: row i of W_ft is row i of W_0
// scaled by c_i and rotated by θ_i inside the plane of two orthonormal vectors (e_0 and a unit
// vector in the remaining coordinates), so ‖w_ft‖ = c_i ‖w_0‖ and cos(w_ft, w_0) = cos θ_i.
TEST(DoraAnalysis, DeltasMatchClosedForm) {
  const int64_t out = 6, in = 5;
  Tensor w0 = Tensor::zeros({out, in}), wft = Tensor::zeros({out, in});
  double want_m = 0, want_d = 0;
  for (int64_t i = 0; i < out; ++i) {
    const double len = 0.5 + 0.3 * i, c = 0.8 + 0.1 * i, th = 0.05 + 0.2 * i;
    // w0 = len · e_0; the rotation plane is (e_0, u), u = unit vector over coordinates 1..4.
    std::vector<double> u(static_cast<size_t>(in), 0.0);
    double nu = 0;
    for (int64_t j = 1; j < in; ++j) nu += (u[j] = std::sin(1.0 + i + 2.0 * j)) * u[j];
    for (int64_t j = 1; j < in; ++j) u[j] /= std::sqrt(nu);
    w0.f32()[i * in] = static_cast<float>(len);
    wft.f32()[i * in] = static_cast<float>(c * len * std::cos(th));
    for (int64_t j = 1; j < in; ++j) wft.f32()[i * in + j] = static_cast<float>(c * len * std::sin(th) * u[j]);
    want_m += std::fabs(c - 1.0) * len / out;
    want_d += (1.0 - std::cos(th)) / out;
  }
  peft::WeightDelta d = peft::weight_decomposition_delta(w0, wft);
  EXPECT_NEAR(d.delta_m, want_m, 1e-6);
  EXPECT_NEAR(d.delta_d, want_d, 1e-6);
  EXPECT_GT(d.delta_m, 0.1);
  EXPECT_GT(d.delta_d, 0.1);
  // Pure scaling changes only ΔM; the same weight gives zeros.
  Tensor scaled = w0.clone();
  for (int64_t i = 0; i < scaled.numel(); ++i) scaled.f32()[i] *= 2.0f;
  peft::WeightDelta s2 = peft::weight_decomposition_delta(w0, scaled);
  EXPECT_NEAR(s2.delta_d, 0.0, 1e-7);
  EXPECT_GT(s2.delta_m, 0.5);
  peft::WeightDelta z = peft::weight_decomposition_delta(w0, w0);
  EXPECT_EQ(z.delta_m, 0.0);
  EXPECT_NEAR(z.delta_d, 0.0, 1e-12);
  EXPECT_THROW(peft::weight_decomposition_delta(w0, Tensor::zeros({out, in + 1}), "x"), Error);
}

TEST(DoraAnalysis, MergedDoraMagnitudeIsTheDecomposition) {
  // After merging a DoRA layer, the row norms of W' are m, so ΔM is mean |m − ‖W‖|.
  Layer l(24, 7, true, false, 0.0f, 61);
  Tensor w0 = l.lin.weight.value.clone();
  l.dora.merge(l.lin);
  double want = 0;
  for (int64_t i = 0; i < 7; ++i) {
    double n0 = 0;
    for (int64_t j = 0; j < 24; ++j) n0 += static_cast<double>(w0.f32()[i * 24 + j]) * w0.f32()[i * 24 + j];
    want += std::fabs(l.dora.magnitude.value.f32()[i] - std::sqrt(n0)) / 7;
  }
  EXPECT_NEAR(peft::weight_decomposition_delta(w0, l.lin.weight.value).delta_m, want, 1e-5);
  l.dora.unmerge(l.lin);
  l.lin.adapters.clear();
}

TEST(DoraAnalysis, CsvAndSvg) {
  EXPECT_EQ(peft::split_layer_path("bert.encoder.layer.11.attention.self.query"),
            (std::pair<int64_t, std::string>{11, "attention.self.query"}));
  EXPECT_EQ(peft::split_layer_path("model.layers.3.self_attn.v_proj"),
            (std::pair<int64_t, std::string>{3, "self_attn.v_proj"}));
  EXPECT_EQ(peft::split_layer_path("classifier"), (std::pair<int64_t, std::string>{-1, "classifier"}));
  std::vector<peft::AnalysisPoint> pts;
  for (const char* m : {"ft", "lora"})
    for (int layer = 0; layer < 3; ++layer)
      for (const char* mod : {"attention.self.query", "attention.self.value"}) {
        peft::AnalysisPoint p;
        p.method = m;
        p.checkpoint = "final";
        p.layer = layer;
        p.module = mod;
        p.module_path = "bert.encoder.layer." + std::to_string(layer) + "." + mod;
        p.delta_m = 0.01 * (layer + 1) * (m[0] == 'f' ? 1 : 2);
        p.delta_d = 0.002 * (3 - layer);
        pts.push_back(p);
      }
  const std::string d = temp_dir("analysis");
  fs::create_directories(d);
  peft::write_analysis_csv(d + "/a.csv", pts);
  peft::write_analysis_svg(d + "/a.svg", pts, "test <plot>");
  std::string csv = io::read_file(d + "/a.csv");
  EXPECT_EQ(csv.substr(0, csv.find('\n')), "method,checkpoint,layer,module,module_path,delta_m,delta_d");
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 13);
  EXPECT_NE(csv.find("lora,final,2,attention.self.value,bert.encoder.layer.2.attention.self.value,0.06,0.002"),
            std::string::npos) << csv;
  std::string svg = io::read_file(d + "/a.svg");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_NE(svg.find("test &lt;plot&gt;"), std::string::npos);
  EXPECT_NE(svg.find(">ft</text>"), std::string::npos);
  EXPECT_NE(svg.find(">lora</text>"), std::string::npos);
  // ΔM falls as ΔD rises in both panels: r = -1 within the checkpoint.
  EXPECT_NE(svg.find("r(ΔD, ΔM): final -1.00"), std::string::npos);
  size_t markers = 0;
  for (size_t p = svg.find("<title>"); p != std::string::npos; p = svg.find("<title>", p + 1)) ++markers;
  EXPECT_EQ(markers, pts.size());
  fs::remove_all(d);
}

}  // namespace
