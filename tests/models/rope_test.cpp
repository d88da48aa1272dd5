// RoPE scaling against transformers (fixtures by tools/ref_rope.py): the inverse frequencies,
// attention factor and cos/sin of every rope_type on the same positions, whole-model logits of a
// tiny Llama past its context with each scaling, the config/GGUF/option forms, and errors.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include <unistd.h>

#include "lorafit/io.h"
#include "lorafit/models.h"
#include "lorafit/peft.h"
#include "lorafit/rope_config.h"
#include "test_util.h"

namespace fs = std::filesystem;
using lorafit::Error;
using lorafit::tensor::Tensor;
namespace models = lorafit::models;
namespace io = lorafit::io;
namespace nn = lorafit::nn;
namespace kernels = lorafit::kernels;

namespace {

const std::string kFix = std::string(LORAFIT_FIXTURES);

template <class F>
void expect_error(F f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing " << parts.at(0);
  } catch (const Error& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

TEST(RopeScaling, RotaryMatchesTransformers) {
  const io::json fx = io::read_json_file(kFix + "/rope/rotary.json");
  ASSERT_GE(fx["cases"].size(), 9u);
  for (const auto& c : fx["cases"]) {
    const std::string name = c["name"];
    const int64_t d = c["head_dim"];
    const io::json& cfg = c["config"];
    double theta = 0;
    nn::RopeScaling s;
    models::rope_from_config_json(cfg, cfg["max_position_embeddings"].get<int64_t>(), name, &theta,
                                  &s);
    const auto pos = c["positions"].get<std::vector<int64_t>>();
    int64_t max_pos = 0;
    for (int64_t p : pos) max_pos = std::max(max_pos, p);
    // the frequencies transformers uses for this sequence (dynamic: its largest position + 1)
    nn::RopeFrequencies fr = nn::rope_frequencies(theta, d, s, max_pos + 1);
    const auto want_f = c["inv_freq"].get<std::vector<double>>();
    ASSERT_EQ(fr.inv_freq.size(), want_f.size()) << name;
    double ferr = 0;
    for (size_t i = 0; i < want_f.size(); ++i)
      ferr = std::max(ferr, std::fabs(fr.inv_freq[i] - want_f[i]) / want_f[i]);
    EXPECT_LT(ferr, 1e-6) << name << ": inverse frequencies (transformers computes them in fp32)";
    EXPECT_NEAR(fr.factor, c["attention_scaling"].get<double>(), 1e-6) << name;
    // cos/sin rows of the shared table, as the attention reads them
    nn::RopeCache cache;
    const kernels::RopeTable& t = cache.table(theta, d, s, max_pos + 1);
    double err = 0;
    for (size_t r = 0; r < pos.size(); ++r) {
      const float* row = t.row(pos[r]);
      for (int64_t i = 0; i < d / 2; ++i) {
        // fp32 angles in transformers: about 1.2e-7 rad per unit of position
        const double tol = 2e-6 + 2.5e-7 * static_cast<double>(pos[r]);
        const double ec = std::fabs(row[i] - c["cos"][r][i].get<double>());
        const double es = std::fabs(row[d / 2 + i] - c["sin"][r][i].get<double>());
        EXPECT_LT(ec, tol) << name << " cos pos " << pos[r] << " pair " << i;
        EXPECT_LT(es, tol) << name << " sin pos " << pos[r] << " pair " << i;
        err = std::max({err, ec, es});
      }
    }
    std::printf("%-22s %-8s max |cos/sin - transformers| %.3g, freq rel %.3g\n", name.c_str(),
                nn::rope_type_name(s.type), err, ferr);
  }
}

TEST(RopeScaling, DynamicChangesOnlyBeyondTheOriginalLength) {
  nn::RopeScaling s;
  s.type = nn::RopeScaling::Type::Dynamic;
  s.factor = 2.0;
  s.original_max_positions = 1024;
  nn::RopeScaling none;
  EXPECT_EQ(nn::rope_frequencies(1e4, 64, s, 1024).inv_freq,
            nn::rope_frequencies(1e4, 64, none, 1024).inv_freq);
  auto longer = nn::rope_frequencies(1e4, 64, s, 4096).inv_freq;
  EXPECT_EQ(longer[0], 1.0);
  EXPECT_LT(longer[10], nn::rope_frequencies(1e4, 64, none, 4096).inv_freq[10]);
  // the cache follows the length (rebuilt beyond the original, kept below)
  nn::RopeCache cache;
  const float r4096 = cache.table(1e4, 64, s, 4096).row(3000)[20];
  const float r1000 = cache.table(1e4, 64, s, 1000).row(999)[20];
  nn::RopeCache plain;
  EXPECT_EQ(r1000, plain.table(1e4, 64, none, 1000).row(999)[20]);
  EXPECT_NE(r4096, plain.table(1e4, 64, none, 4096).row(3000)[20]);
}

// Copies tiny_llama with config.json's RoPE fields replaced by `rope` (as transformers wrote).
std::string tiny_with(const io::json& rope, const std::string& tag) {
  const fs::path src = kFix + "/models/tiny_llama";
  const fs::path dir = fs::temp_directory_path() / ("lorafit_rope_" + tag + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  for (const char* f : {"model.safetensors", "generation_config.json"})
    if (fs::exists(src / f)) fs::copy_file(src / f, dir / f);
  io::json cfg = io::read_json_file((src / "config.json").string());
  for (auto it = rope.begin(); it != rope.end(); ++it) cfg[it.key()] = it.value();
  io::write_json_file((dir / "config.json").string(), cfg);
  return dir.string();
}

TEST(RopeScaling, TinyLlamaLogitsPastItsContextMatchTransformers) {
  const io::json cfgs = io::read_json_file(kFix + "/rope/tiny_llama_rope.json");
  io::SafetensorsFile ref = io::SafetensorsFile::open(kFix + "/rope/tiny_llama_rope.safetensors");
  Tensor ids = ref.get("ids").clone();
  ASSERT_EQ(ids.dim(1), 100);  // max_position_embeddings 64
  auto base = models::load_model(kFix + "/models/tiny_llama");
  nn::Context c0;
  Tensor plain = base->logits(c0, ids).clone();
  for (const char* name : {"linear", "dynamic", "llama3", "yarn"}) {
    const std::string dir = tiny_with(cfgs.at(name), name);
    auto m = models::load_model(dir);
    EXPECT_EQ(std::string(nn::rope_type_name(m->config().rope_scaling.type)), name);
    nn::Context ctx;
    Tensor logits = m->logits(ctx, ids);
    Tensor want = ref.get_f32(std::string("logits_") + name).clone();
    const double d = test_util::max_abs_diff(logits.view(want.shape()), want);
    std::printf("tiny_llama %-8s logits (100 tokens, context 64) max abs err %.3g\n", name, d);
    EXPECT_LT(d, 1e-4) << name;
    // and the scaling did something (the unscaled model differs)
    EXPECT_GT(test_util::max_abs_diff(plain.view(want.shape()), want), 1e-3) << name;
    // --rope-scaling on the unscaled model gives the same model as the config (linear, yarn)
    if (std::string(name) == "linear" || std::string(name) == "yarn") {
      auto* l = dynamic_cast<models::LlamaModel*>(base.get());
      int64_t maxp = 0;
      nn::RopeScaling s = models::parse_rope_scaling_option(std::string(name) + ":2", 64, &maxp);
      EXPECT_EQ(maxp, 128);
      l->set_rope_scaling(s, maxp);
      nn::Context c1;
      EXPECT_EQ(test_util::max_abs_diff(base->logits(c1, ids), logits), 0.0) << name;
      l->set_rope_scaling(nn::RopeScaling(), 64);
    }
    fs::remove_all(dir);
  }
}

TEST(RopeScaling, JsonOptionAndGgufForms) {
  int64_t maxp = 0;
  nn::RopeScaling s = models::parse_rope_scaling_option("linear:2", 8192, &maxp);
  EXPECT_EQ(maxp, 16384);
  EXPECT_EQ(s.original_max_positions, 8192);
  io::json j = models::rope_scaling_to_json(s);
  EXPECT_EQ(j.dump(), R"({"factor":2.0,"rope_type":"linear"})");
  auto back = models::rope_scaling_from_json(j, 16384, "x");
  EXPECT_EQ(models::rope_scaling_to_json(back), j);
  auto g = models::rope_scaling_gguf_keys(s, "llama");
  EXPECT_EQ(g.strings.at("llama.rope.scaling.type"), "linear");
  EXPECT_EQ(g.floats.at("llama.rope.scaling.factor"), 2.0);
  nn::RopeScaling y = models::parse_rope_scaling_option("yarn:4", 4096, &maxp);
  EXPECT_EQ(maxp, 16384);
  auto gy = models::rope_scaling_gguf_keys(y, "llama");
  EXPECT_EQ(gy.ints.at("llama.rope.scaling.original_context_length"), 4096);
  EXPECT_EQ(gy.floats.count("llama.rope.scaling.attn_factor"), 0u);  // llama.cpp's default
  nn::RopeScaling dyn = models::parse_rope_scaling_option("dynamic:2", 4096, &maxp);
  EXPECT_EQ(maxp, 4096);  // transformers scales beyond max_position_embeddings
  expect_error([&] { models::rope_scaling_gguf_keys(dyn, "llama"); }, {"dynamic", "no llama.cpp GGUF form"});
  expect_error([&] { models::parse_rope_scaling_option("linear", 8192, &maxp); }, {"--rope-scaling 'linear'", "TYPE:FACTOR"});
  expect_error([&] { models::parse_rope_scaling_option("cubic:2", 8192, &maxp); }, {"'cubic'", "not supported"});
  expect_error([&] { models::parse_rope_scaling_option("linear:0.5", 8192, &maxp); }, {"FACTOR must be a number > 1", "'0.5'"});
  expect_error([&] { models::rope_scaling_from_json(io::json::parse(R"({"rope_type":"linear"})"), 64, "cfg.json: rope_scaling"); },
               {"cfg.json: rope_scaling", "factor"});
  expect_error([&] { models::rope_scaling_from_json(io::json::parse(R"({"type":"su","factor":2})"), 64, "cfg.json: rope_scaling"); },
               {"cfg.json: rope_scaling", "'su'", "not supported"});
  // a bad scaling in a model's config.json names the file
  const std::string dir = tiny_with(io::json::parse(R"({"rope_parameters":{"rope_type":"llama3","rope_theta":100000.0,"factor":8,"low_freq_factor":4,"high_freq_factor":1}})"), "bad");
  expect_error([&] { models::load_model(dir); }, {"config.json", "low_freq_factor < high_freq_factor"});
  fs::remove_all(dir);
}

// A GGUF merged from a model extended with --rope-scaling carries llama.rope.scaling.* and the
// new context; loading it back gives the same scaling and the same logits past the old context.
TEST(RopeScaling, MergedGgufCarriesTheScaling) {
  const std::string base = kFix + "/models/tiny_llama.gguf";
  models::LoadOptions lo;
  lo.dequantize = true;
  auto m = models::load_model(base, lo);
  auto* l = dynamic_cast<models::LlamaModel*>(m.get());
  ASSERT_NE(l, nullptr);
  const int64_t ctx0 = m->config().max_positions;
  Tensor ids = Tensor::empty({1, ctx0 + 20}, lorafit::tensor::DType::I32);
  for (int64_t i = 0; i < ids.numel(); ++i) ids.i32()[i] = static_cast<int32_t>((i * 7 + 3) % m->config().vocab);
  for (const char* spec : {"linear:2", "yarn:3"}) {
    int64_t maxp = 0;
    const nn::RopeScaling s = models::parse_rope_scaling_option(spec, ctx0, &maxp);
    l->set_rope_scaling(s, maxp);
    nn::Context c1;
    Tensor want = m->logits(c1, ids).clone();
    const std::string out = (fs::temp_directory_path() / ("lorafit_rope_" + std::to_string(::getpid()) + ".gguf")).string();
    lorafit::peft::save_merged_gguf(*m, {}, base, out, lorafit::tensor::DType::F32);
    io::GgufFile g = io::GgufFile::open(out);
    const bool yarn = std::string(spec) == "yarn:3";
    EXPECT_EQ(g.get_string("llama.rope.scaling.type"), yarn ? "yarn" : "linear");
    EXPECT_EQ(g.get_float("llama.rope.scaling.factor"), yarn ? 3.0 : 2.0);
    EXPECT_EQ(g.get_int("llama.context_length"), maxp);
    if (yarn) EXPECT_EQ(g.get_int("llama.rope.scaling.original_context_length"), ctx0);
    auto back = models::load_model(out);
    EXPECT_EQ(models::rope_scaling_str(back->config().rope_scaling), models::rope_scaling_str(m->config().rope_scaling));
    nn::Context c2;
    EXPECT_LT(test_util::max_abs_diff(back->logits(c2, ids), want), 1e-5) << spec;
    fs::remove(out);
    l->set_rope_scaling(nn::RopeScaling(), ctx0);
  }
  // dynamic NTK has no GGUF form: refused, nothing written
  int64_t maxp = 0;
  const nn::RopeScaling dyn = models::parse_rope_scaling_option("dynamic:2", ctx0, &maxp);
  l->set_rope_scaling(dyn, maxp);
  const std::string out = (fs::temp_directory_path() / "lorafit_rope_dyn.gguf").string();
  expect_error([&] { lorafit::peft::save_merged_gguf(*m, {}, base, out, lorafit::tensor::DType::F32); },
               {out, "'dynamic' (NTK) has no llama.cpp GGUF form"});
  EXPECT_FALSE(fs::exists(out));
}

}  // namespace
