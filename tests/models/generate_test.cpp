// models::generate: greedy decoding with the KV cache equals the argmax of a full forward over
// the growing sequence; sampling is seeded; top_k = 1 is greedy; the virtual task head needs no
// cast; model paths resolve the one way every command uses.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include "lorafit/models.h"

namespace fs = std::filesystem;
using lorafit::Error;
using lorafit::tensor::Tensor;
namespace models = lorafit::models;

namespace {
const std::string kFix = std::string(LORAFIT_FIXTURES) + "/models";
}

TEST(Generate, GreedyEqualsArgmaxOfFullForward) {
  auto m = models::load_model(kFix + "/tiny_llama");
  ASSERT_TRUE(m->is_causal_lm());
  const std::vector<int32_t> prompt = {3, 14, 15, 92};
  models::GenerateOptions opt;
  opt.max_new_tokens = 6;
  std::vector<int32_t> seen;
  const auto out = models::generate(*m, prompt, opt, [&](int32_t id) {
    seen.push_back(id);
    return true;
  });
  ASSERT_EQ(out.size(), 6u);
  EXPECT_EQ(seen, out);
  std::vector<int32_t> seq = prompt;
  for (size_t s = 0; s < out.size(); ++s) {
    lorafit::nn::Context ctx;
    const auto T = static_cast<int64_t>(seq.size());
    Tensor logits = m->logits(ctx, Tensor::from_ints({1, T}, seq));  // [1, T, V], no cast
    const int64_t V = logits.dim(-1);
    const float* last = logits.f32() + (T - 1) * V;
    EXPECT_EQ(out[s], static_cast<int32_t>(std::max_element(last, last + V) - last))
        << "step " << s;
    seq.push_back(out[s]);
  }
}

TEST(Generate, SamplingIsSeededAndTopK1IsGreedy) {
  auto m = models::load_model(kFix + "/tiny_llama");
  const std::vector<int32_t> prompt = {3, 14, 15};
  models::GenerateOptions greedy;
  greedy.max_new_tokens = 8;
  models::GenerateOptions s = greedy;
  s.temperature = 1.5;
  const auto a = models::generate(*m, prompt, s), b = models::generate(*m, prompt, s);
  EXPECT_EQ(a, b);
  s.seed = 7;
  models::GenerateOptions k1 = s;
  k1.top_k = 1;
  EXPECT_EQ(models::generate(*m, prompt, k1), models::generate(*m, prompt, greedy));
  // A stop id ends the continuation before it.
  const auto g = models::generate(*m, prompt, greedy);
  models::GenerateOptions stop = greedy;
  stop.stop_ids = {g[2]};
  const auto cut = models::generate(*m, prompt, stop);
  EXPECT_EQ(cut, std::vector<int32_t>(
                     g.begin(), g.begin() + (std::find(g.begin(), g.end(), g[2]) - g.begin())));
  models::GenerateOptions bad = greedy;
  bad.top_p = 0;
  EXPECT_THROW(models::validate(bad), Error);
}

TEST(Generate, ClassifierHasNoKvCache) {
  auto m = models::load_model(kFix + "/tiny_bert");
  EXPECT_FALSE(m->is_causal_lm());
  try {
    m->new_cache(1, 8);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bert is not a causal LM"), std::string::npos) << e.what();
  }
}

TEST(ResolveModelPath, FolderWithOneGgufOrConfig) {
  const fs::path d = fs::temp_directory_path() / ("lorafit_resolve_" + std::to_string(getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  fs::copy_file(kFix + "/tiny_llama.gguf", d / "a.gguf");
  EXPECT_EQ(models::resolve_model_path(d.string()), (d / "a.gguf").string());
  EXPECT_EQ(models::resolve_model_path(kFix + "/tiny_bert"), kFix + "/tiny_bert");
  fs::copy_file(kFix + "/tiny_llama.gguf", d / "b.gguf");
  try {
    models::resolve_model_path(d.string());
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no config.json and 2 .gguf files"), std::string::npos)
        << e.what();
  }
  try {
    models::resolve_model_path((d / "none").string());
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("none: not found"), std::string::npos) << e.what();
  }
  fs::remove_all(d);
}
