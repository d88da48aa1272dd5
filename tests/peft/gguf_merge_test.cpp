// Merged GGUF output (save_merged_gguf, `lorafit adapter merge` with a GGUF base): logits of the
// reloaded file equal base + adapter, untouched tensors keep their bytes, metadata is copied.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "lorafit/io.h"
#include "lorafit/models.h"
#include "lorafit/peft.h"
#include "lorafit/quant.h"
#include "peft_test_util.h"

namespace {

using peft_test::max_abs_diff;

namespace fs = std::filesystem;
using lorafit::Error;
using lorafit::nn::Context;
using lorafit::peft::AdapterConfig;
using lorafit::peft::PeftModel;
using lorafit::tensor::DType;
using lorafit::tensor::Tensor;
namespace io = lorafit::io;
namespace models = lorafit::models;
namespace peft = lorafit::peft;

const std::string kModels = std::string(LORAFIT_FIXTURES) + "/models/";

std::string temp_path(const std::string& name) {
  return (fs::temp_directory_path() / ("lorafit_gguf_merge_" + std::to_string(::getpid()) + "_" + name)).string();
}

// tiny_llama.gguf with every matrix whose rows are whole Q4_1 blocks stored as Q4_1 (a quantized
// base like SmolLM2's), the rest (norms, ffn_down with 48-value rows) F32.
std::string quantized_base() {
  io::GgufFile f = io::GgufFile::open(kModels + "tiny_llama.gguf");
  std::vector<std::pair<std::string, Tensor>> t;
  for (const auto& ti : f.tensors()) {
    Tensor x = f.tensor(ti.name);
    if (x.ndim() == 2 && x.dim(1) % 32 == 0) x = lorafit::tensor::quantize(x, DType::Q4_1);
    t.emplace_back(ti.name, x);
  }
  const std::string p = temp_path("base_q4_1.gguf");
  io::write_gguf(p, f.metadata(), t);
  return p;
}

Tensor logits(models::Model& m) {
  Context ctx;
  Tensor ids = Tensor::from_ints({2, 5}, {1, 17, 42, 5, 99, 3, 64, 8, 23, 51});
  return dynamic_cast<models::LlamaModel&>(m).forward(ctx, ids).clone();
}

struct Case {
  DType type;
  std::vector<std::string> targets;
  double tol;  // logits of the reloaded merged file vs base + adapter (unmerged)
};

TEST(MergedGguf, ReloadGivesBasePlusAdapterAndCopiesTheRest) {
  const std::string base = quantized_base();
  const std::vector<Case> cases = {
      {DType::F32, {"q_proj", "k_proj", "v_proj", "o_proj", "down_proj"}, 1e-4},
      {DType::F16, {"q_proj", "k_proj", "up_proj"}, 2e-3},
      // Q8_0 re-quantizes the merged rows (≈ 2⁻⁸ relative per value): measured ≈ 4e-3 here.
      {DType::Q8_0, {"q_proj", "k_proj", "gate_proj", "up_proj"}, 2e-2},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(lorafit::tensor::dtype_name(c.type));
    models::LoadOptions lo;
    lo.dequantize = true;
    auto m = models::load_model(base, lo);
    Tensor base_logits = logits(*m);
    AdapterConfig cfg;
    cfg.r = 4;
    cfg.lora_alpha = 8;
    cfg.target_modules = c.targets;
    cfg.init_lora_weights = peft::LoraInit::Random;
    std::vector<std::string> paths;
    Tensor want;
    {
      PeftModel pm(*m, cfg, 7);
      for (auto& [p, l] : pm.lora_layers()) paths.push_back(p);
      want = logits(*m);
      pm.merge_and_unload();
    }
    EXPECT_GT(max_abs_diff(want, base_logits), 1e-2);  // the adapter matters
    const std::string out = temp_path("merged.gguf");
    peft::save_merged_gguf(*m, paths, base, out, c.type);
    auto back = models::load_model(out);  // stored dtypes, as a user would load it
    EXPECT_LT(max_abs_diff(logits(*back), want), c.tol);

    io::GgufFile in = io::GgufFile::open(base), got = io::GgufFile::open(out);
    ASSERT_EQ(got.metadata().size(), in.metadata().size());
    for (size_t i = 0; i < in.metadata().size(); ++i) {
      EXPECT_EQ(got.metadata()[i].first, in.metadata()[i].first);
      EXPECT_TRUE(got.metadata()[i].second == in.metadata()[i].second) << in.metadata()[i].first;
    }
    ASSERT_EQ(got.tensors().size(), in.tensors().size());
    std::set<std::string> merged;
    for (auto& p : paths) merged.insert(models::llama_gguf_name(p + ".weight"));
    int copied = 0;
    for (size_t i = 0; i < in.tensors().size(); ++i) {
      const auto& a = in.tensors()[i];
      const auto& b = got.tensors()[i];
      EXPECT_EQ(a.name, b.name);
      EXPECT_EQ(a.shape, b.shape);
      if (merged.count(a.name)) {
        EXPECT_EQ(b.ggml_type, static_cast<uint32_t>(c.type == DType::F32 ? 0 : c.type == DType::F16 ? 1 : 8)) << a.name;
      } else {
        EXPECT_EQ(a.ggml_type, b.ggml_type) << a.name;
        ASSERT_EQ(a.nbytes, b.nbytes) << a.name;
        EXPECT_EQ(std::memcmp(in.tensor(a.name).raw(), got.tensor(b.name).raw(), a.nbytes), 0) << a.name;
        ++copied;
      }
    }
    EXPECT_EQ(copied + static_cast<int>(merged.size()), static_cast<int>(in.tensors().size()));
    EXPECT_GT(copied, 5);
    fs::remove(out);
  }
  fs::remove(base);
}

TEST(MergedGguf, Errors) {
  models::LoadOptions lo;
  lo.dequantize = true;
  auto m = models::load_model(kModels + "tiny_llama_tied.gguf", lo);
  const std::string out = temp_path("x.gguf");
  try {
    peft::save_merged_gguf(*m, {"lm_head"}, kModels + "tiny_llama_tied.gguf", out);
    FAIL() << "tied lm_head did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tied"), std::string::npos) << e.what();
  }
  EXPECT_THROW(peft::save_merged_gguf(*m, {"model.layers.0.self_attn.q_proj"},
                                      kModels + "tiny_llama_tied.gguf", out, DType::BF16),
               Error);
  EXPECT_THROW(peft::save_merged_gguf(*m, {"model.layers.0.mlp.down_proj"},
                                      kModels + "tiny_llama_tied.gguf", out, DType::Q4_0),
               Error);  // 48-value rows are no whole blocks
  EXPECT_FALSE(fs::exists(out));
}

}  // namespace
