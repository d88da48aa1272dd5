// Gradient checkpointing (LlamaModel::gradient_checkpointing): a training step that keeps only
// each layer's input and re-runs the layer in backward gives bitwise the gradients of the stored
// path, with LoRA dropout drawing the same masks, S²-Attn and RoPE scaling on, in less arena
// memory.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <string>

#include "lorafit/models.h"
#include "lorafit/peft.h"
#include "lorafit/rope_config.h"

namespace {

using lorafit::nn::Context;
using lorafit::peft::AdapterConfig;
using lorafit::peft::PeftModel;
using lorafit::tensor::Tensor;
namespace models = lorafit::models;
namespace nn = lorafit::nn;

const std::string kTiny = std::string(LORAFIT_FIXTURES) + "/models/tiny_llama";

Tensor pseudo_random(const lorafit::tensor::Shape& s, uint64_t seed) {
  Tensor t = Tensor::empty(s);
  for (int64_t i = 0; i < t.numel(); ++i)
    t.f32()[i] = static_cast<float>(nn::random_uniform(seed, static_cast<uint64_t>(i)) - 0.5);
  return t;
}

struct Step {
  Tensor logits;
  std::map<std::string, Tensor> grads;
  uint64_t rng_after = 0;
  size_t peak = 0;
};

bool same(const Tensor& a, const Tensor& b) {
  return a.numel() == b.numel() && std::memcmp(a.f32(), b.f32(), sizeof(float) * a.numel()) == 0;
}

// One training step (forward, a fixed upstream gradient, backward) with an arena.
Step step(models::LlamaModel& m, PeftModel& pm, bool ckpt, uint64_t seed, const Tensor& ids,
          const Tensor& mask) {
  m.gradient_checkpointing = ckpt;
  pm.zero_grad();
  lorafit::tensor::Arena arena(1 << 12);
  arena.poison = true;  // a tensor used after its layer was released shows up as NaN
  Context ctx;
  ctx.arena = &arena;
  ctx.training = true;
  ctx.seed = seed;
  Step s;
  Tensor logits = m.forward(ctx, ids, mask);
  s.logits = logits.clone();
  m.backward(ctx, pseudo_random(logits.shape(), 99));
  for (auto& [k, p] : pm.trainable_parameters()) s.grads[k] = p->grad.clone();
  s.rng_after = ctx.rng_counter;
  s.peak = arena.peak();
  return s;
}

TEST(GradientCheckpointing, TinyLlamaBitwiseEqualToStoredPath) {
  for (int variant = 0; variant < 3; ++variant) {
    auto base = models::load_model(kTiny);
    auto* m = dynamic_cast<models::LlamaModel*>(base.get());
    ASSERT_NE(m, nullptr);
    if (variant >= 1)  // S²-Attn in training
      for (auto& l : m->layers) l.attn.cfg.s2_ratio = 0.25f;
    if (variant == 2) {  // and the context extended
      int64_t maxp = 0;
      const nn::RopeScaling s = models::parse_rope_scaling_option("yarn:2", 64, &maxp);
      m->set_rope_scaling(s, maxp);
    }
    AdapterConfig cfg;
    cfg.task_type = "CAUSAL_LM";
    cfg.r = 4;
    cfg.lora_alpha = 8;
    cfg.lora_dropout = 0.2;  // dropout masks must replay in the recomputed forward
    cfg.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"};
    PeftModel pm(*m, cfg, 3);
    uint64_t k = 0;
    for (auto& [name, p] : pm.trainable_parameters())  // B = 0 would leave A's gradient 0
      if (name.find("lora_B") != std::string::npos) p->value.copy_from(pseudo_random(p->value.shape(), 50 + k++));
    const int64_t B = 2, T = 40;
    Tensor ids = Tensor::empty({B, T}, lorafit::tensor::DType::I32);
    Tensor mask = Tensor::empty({B, T}, lorafit::tensor::DType::I32);
    for (int64_t i = 0; i < B * T; ++i) {
      ids.i32()[i] = static_cast<int32_t>((i * 37 + 11) % 100);
      mask.i32()[i] = i >= T && i % T >= 33 ? 0 : 1;  // the second row padded at the end
    }
    Step stored = step(*m, pm, false, 7, ids, mask);
    Step ckpt = step(*m, pm, true, 7, ids, mask);
    const std::string tag = "variant " + std::to_string(variant);
    EXPECT_TRUE(same(stored.logits, ckpt.logits)) << tag;
    ASSERT_EQ(stored.grads.size(), ckpt.grads.size());
    for (auto& [name, g] : stored.grads) {
      EXPECT_TRUE(same(g, ckpt.grads.at(name))) << tag << " " << name;
      float mx = 0;
      for (int64_t i = 0; i < g.numel(); ++i) mx = std::max(mx, std::fabs(g.f32()[i]));
      EXPECT_GT(mx, 0.0f) << tag << " " << name << ": a zero gradient proves nothing";
    }
    EXPECT_EQ(stored.rng_after, ckpt.rng_after) << tag << ": the replay must not consume draws";
    EXPECT_LT(ckpt.peak, stored.peak) << tag;
    std::printf("%s: %zu gradients bitwise equal; arena peak %zu -> %zu bytes\n", tag.c_str(),
                stored.grads.size(), stored.peak, ckpt.peak);
    // dropout is really on: another seed draws other masks, other gradients
    Step other = step(*m, pm, true, 8, ids, mask);
    bool differs = false;
    for (auto& [name, g] : stored.grads) differs = differs || !same(g, other.grads.at(name));
    EXPECT_TRUE(differs) << tag;
  }
}

// The BERT layer loop: hidden and attention-probability dropout (0.1 in the config) and LoRA
// dropout replayed; classification head on top.
TEST(GradientCheckpointing, TinyBertBitwiseEqualToStoredPath) {
  models::LoadOptions lo;
  lo.num_labels = 3;
  lo.seed = 1;
  auto base = models::load_model(std::string(LORAFIT_FIXTURES) + "/models/tiny_bert", lo);
  auto* m = dynamic_cast<models::BertModel*>(base.get());
  ASSERT_NE(m, nullptr);
  AdapterConfig cfg;
  cfg.task_type = "SEQ_CLS";
  cfg.r = 4;
  cfg.lora_alpha = 8;
  cfg.lora_dropout = 0.2;
  cfg.target_modules = {"query", "key", "value", "dense"};
  PeftModel pm(*m, cfg, 3);
  uint64_t k = 0;
  for (auto& [name, p] : pm.trainable_parameters())
    if (name.find("lora_B") != std::string::npos) p->value.copy_from(pseudo_random(p->value.shape(), 70 + k++));
  const int64_t B = 2, T = 24;
  Tensor ids = Tensor::empty({B, T}, lorafit::tensor::DType::I32);
  Tensor mask = Tensor::empty({B, T}, lorafit::tensor::DType::I32);
  for (int64_t i = 0; i < B * T; ++i) {
    ids.i32()[i] = static_cast<int32_t>((i * 13 + 5) % 90);
    mask.i32()[i] = i >= T && i % T >= 17 ? 0 : 1;
  }
  auto run = [&](bool ckpt, uint64_t seed) {
    m->gradient_checkpointing = ckpt;
    pm.zero_grad();
    lorafit::tensor::Arena arena(1 << 12);
    arena.poison = true;
    Context ctx;
    ctx.arena = &arena;
    ctx.training = true;
    ctx.seed = seed;
    Step s;
    Tensor logits = m->logits(ctx, ids, mask);
    s.logits = logits.clone();
    m->logits_backward(ctx, pseudo_random(logits.shape(), 98));
    for (auto& [name, p] : pm.trainable_parameters()) s.grads[name] = p->grad.clone();
    s.rng_after = ctx.rng_counter;
    s.peak = arena.peak();
    return s;
  };
  Step stored = run(false, 4), ckpt = run(true, 4), other = run(true, 5);
  EXPECT_TRUE(same(stored.logits, ckpt.logits));
  bool differs = false;
  for (auto& [name, g] : stored.grads) {
    EXPECT_TRUE(same(g, ckpt.grads.at(name))) << name;
    differs = differs || !same(g, other.grads.at(name));
  }
  EXPECT_TRUE(differs) << "dropout off?";
  EXPECT_EQ(stored.rng_after, ckpt.rng_after);
  EXPECT_LT(ckpt.peak, stored.peak);
  std::printf("tiny_bert: %zu gradients bitwise equal; arena peak %zu -> %zu bytes\n",
              stored.grads.size(), stored.peak, ckpt.peak);
}

}  // namespace
