// Adapters whose init changes the base (PiSSA, OLoRA) and the other init_lora_weights values PEFT
// writes, loaded as PEFT 0.21 loads them (fixtures: tools/ref_pissa.py): the init runs on the base
// once, then the saved A and B are loaded. Library and `lorafit logits` / `adapter
// convert-to-lora` paths; a PiSSA run trained by lorafit; the quantized-merge rounding check.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "lorafit/io.h"
#include "lorafit/kernels.h"
#include "lorafit/models.h"
#include "lorafit/peft.h"
#include "lorafit/quant.h"
#include "peft_test_util.h"

namespace {

using peft_test::max_abs;
using peft_test::max_abs_diff;

namespace fs = std::filesystem;
using lorafit::Error;
using lorafit::nn::Context;
using lorafit::peft::PeftModel;
using lorafit::tensor::Tensor;
namespace io = lorafit::io;
namespace models = lorafit::models;
namespace peft = lorafit::peft;

const std::string kRoot = std::string(LORAFIT_SOURCE_DIR) + "/";
const std::string kFix = std::string(LORAFIT_FIXTURES) + "/pissa/";
const std::string kBin = LORAFIT_BINARY;

fs::path temp_dir(const std::string& name) {
  fs::path p =
      fs::temp_directory_path() / ("lorafit_pissa_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

// Runs a command; returns its exit status and (in *out) stdout + stderr.
int run(const std::string& cmd, std::string* out = nullptr) {
  const std::string log =
      (fs::temp_directory_path() / ("lorafit_pissa_run_" + std::to_string(::getpid()))).string();
  int rc = std::system((cmd + " > " + log + " 2>&1").c_str());
  if (out) out->assign(io::read_file(log));
  fs::remove(log);
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

bool is_llama(const std::string& c) {
  return c.rfind("llama", 0) == 0;
}

std::string base_of(const std::string& c) {
  return kRoot + "tests/fixtures/models/" + (is_llama(c) ? "tiny_llama" : "tiny_bert");
}

std::unique_ptr<models::Model> load_base(const std::string& c) {
  models::LoadOptions lo;
  lo.num_labels = is_llama(c) ? 0 : 3;
  return models::load_model(base_of(c), lo);
}

Tensor forward(models::Model& m, const io::SafetensorsFile& ref) {
  Context ctx;
  Tensor ids = ref.get("input_ids").clone(), mask = ref.get("attention_mask").clone();
  if (auto* bert = dynamic_cast<models::BertModel*>(&m))
    return bert->classify(ctx, bert->forward(ctx, ids, mask, ref.get("token_type_ids").clone()))
        .clone();
  return dynamic_cast<models::LlamaModel&>(m).forward(ctx, ids, mask).clone();
}

std::map<std::string, lorafit::nn::Linear*> linears(models::Model& m) {
  std::map<std::string, lorafit::nn::Linear*> out;
  for (auto& [p, l] : m.linears()) out[p] = l;
  return out;
}

// A copy of the tiny base with the fixture's WordPiece tokenizer.json, so the CLI can encode.
fs::path model_with_tokenizer(const fs::path& work, const std::string& c) {
  const fs::path d = work / "model";
  fs::create_directories(d);
  for (auto f : {"config.json", "model.safetensors"})
    fs::copy_file(fs::path(base_of(c)) / f, d / f);
  fs::copy_file(kFix + "tokenizer.json", d / "tokenizer.json");
  return d;
}

// ---- loading as PEFT loads ---------------------------------------------------------------------

class PissaLoad : public ::testing::TestWithParam<const char*> {};

TEST_P(PissaLoad, LogitsResidualAndMergeEqualPeft) {
  const std::string c = GetParam();
  io::SafetensorsFile ref = io::SafetensorsFile::open(kFix + c + "_ref.safetensors");
  auto m = load_base(c);
  std::map<std::string, Tensor> orig;
  for (auto& [p, l] : m->linears()) orig[p] = l->weight.value.clone();
  const Tensor base_logits = forward(*m, ref);
  auto lins = linears(*m);
  {
    auto pm = PeftModel::from_pretrained(*m, kFix + c);
    EXPECT_LT(max_abs_diff(forward(*m, ref), ref.get("logits")), 1e-5) << c;
    EXPECT_GT(max_abs_diff(forward(*m, ref), base_logits), 1e-3)
        << c << ": the adapter does something";
    const bool moves = pm->config().init_changes_base();
    int n = 0;
    for (auto& [path, l] : pm->lora_layers()) {
      const Tensor& w = lins[path]->weight.value;
      // W_res: the init ran on the base exactly once (twice would be off by s·B₀A₀ again).
      EXPECT_LT(max_abs_diff(w, ref.get_f32("residual." + path)), 1e-5) << c << " " << path;
      if (moves) EXPECT_GT(max_abs_diff(w, orig[path]), 1e-2) << c << " " << path;
      ++n;
    }
    EXPECT_EQ(n, 6 - (is_llama(c) ? 0 : 2)) << c;  // llama: 3 per layer, bert: 2 per layer
  }
  // Deleting the adapter gives the base back what the init took out of it.
  for (auto& [p, l] : m->linears())
    EXPECT_LT(max_abs_diff(l->weight.value, orig[p]), 1e-6) << c << " " << p;
  EXPECT_LT(max_abs_diff(forward(*m, ref), base_logits), 1e-5) << c;
  // merge_and_unload equals PEFT's (merged = W_res + s·B A).
  {
    auto pm = PeftModel::from_pretrained(*m, kFix + c);
    std::vector<std::string> paths;
    for (auto& [path, l] : pm->lora_layers()) paths.push_back(path);
    pm->merge_and_unload();
    for (auto& path : paths)
      EXPECT_LT(max_abs_diff(lins[path]->weight.value, ref.get_f32("merged." + path)), 1e-5)
          << c << " " << path;
  }
  EXPECT_LT(max_abs_diff(forward(*m, ref), ref.get("logits")), 1e-5) << c << " merged";
}

INSTANTIATE_TEST_SUITE_P(Fixtures, PissaLoad,
                         ::testing::Values("llama_pissa", "llama_olora", "bert_pissa", "bert_olora",
                                           "llama_eva", "llama_orthogonal", "llama_mica"));

TEST(PissaLoad, LoadAdapterTwiceAndSecondAdapterStack) {
  // A second PiSSA adapter factors the current (already residual) weight, as PEFT's
  // load_adapter does; deleting both in reverse order restores the base.
  io::SafetensorsFile ref = io::SafetensorsFile::open(kFix + "llama_pissa_ref.safetensors");
  auto m = load_base("llama_pissa");
  std::map<std::string, Tensor> orig;
  for (auto& [p, l] : m->linears()) orig[p] = l->weight.value.clone();
  {
    auto pm = PeftModel::from_pretrained(*m, kFix + "llama_pissa", "a");
    pm->load_adapter(kFix + "llama_olora", "b");
    pm->set_adapter("a");
    // Adapter b's OLoRA init ran on a's residual: a's logits are not PEFT's single-adapter ones.
    EXPECT_GT(max_abs_diff(forward(*m, ref), ref.get("logits")), 1e-3);
    pm->delete_adapter("b");
    EXPECT_LT(max_abs_diff(forward(*m, ref), ref.get("logits")), 1e-5);
  }
  for (auto& [p, l] : m->linears()) EXPECT_LT(max_abs_diff(l->weight.value, orig[p]), 1e-5) << p;
}

TEST(PissaLoad, NiterLoadsAsTheExactSvd) {
  // PEFT's "pissa_niter_K" runs torch.svd_lowrank, whose random start comes from torch's global
  // RNG: two PEFT loads of one folder differ (metadata "spread"). lorafit takes the exact SVD, the
  // value those randomized loads approximate: equal to PEFT loading the folder as "pissa".
  io::SafetensorsFile ref = io::SafetensorsFile::open(kFix + "llama_pissa_niter_ref.safetensors");
  auto m = load_base("llama_pissa_niter");
  auto pm = PeftModel::from_pretrained(*m, kFix + "llama_pissa_niter");
  EXPECT_EQ(pm->config().pissa_niter, 4);
  const Tensor got = forward(*m, ref);
  EXPECT_LT(max_abs_diff(got, ref.get("logits.exact")), 1e-5);
  const double spread = max_abs_diff(ref.get("logits"), ref.get("logits.seed1"));
  EXPECT_GT(spread, 1e-4) << "PEFT's randomized loads agree: the fixture does not show the point";
  std::printf(
      "pissa_niter_4: |lorafit - PEFT exact| %.3g, |lorafit - PEFT seed 1234| %.3g, "
      "PEFT seed-to-seed %.3g\n",
      max_abs_diff(got, ref.get("logits.exact")), max_abs_diff(got, ref.get("logits")), spread);
  // Saved back as PEFT wrote it.
  const auto dir = temp_dir("niter");
  pm->save_pretrained((dir / "a").string());
  EXPECT_EQ(io::read_json_file((dir / "a/adapter_config.json").string())["init_lora_weights"],
            "pissa_niter_4");
  fs::remove_all(dir);
}

// ---- the user's path: lorafit logits -----------------------------------------------------------

TEST(PissaCli, LogitsCommandEqualsPeft) {
  for (std::string c : {"llama_pissa", "llama_olora", "bert_pissa", "bert_olora"}) {
    io::SafetensorsFile ref = io::SafetensorsFile::open(kFix + c + "_ref.safetensors");
    const auto prompts =
        io::parse_json(ref.metadata().at("prompts"), "prompts").get<std::vector<std::string>>();
    auto work = temp_dir("cli_" + c);
    const fs::path mdir = model_with_tokenizer(work, c);
    const std::string out = (work / "logits.safetensors").string();
    std::string cmd =
        kBin + " logits --model " + mdir.string() + " --adapter " + kFix + c + " --out " + out;
    for (auto& p : prompts) cmd += " --prompt '" + p + "'";
    std::string log;
    ASSERT_EQ(run(cmd, &log), 0) << log;
    io::SafetensorsFile f = io::SafetensorsFile::open(out);
    for (size_t i = 0; i < prompts.size(); ++i) {
      const std::string k = std::to_string(i);
      Tensor ids = f.get("ids." + k), want_ids = ref.get("cli.ids." + k);
      ASSERT_EQ(ids.numel(), want_ids.numel()) << c << " " << prompts[i];
      for (int64_t j = 0; j < ids.numel(); ++j) EXPECT_EQ(ids.i32()[j], want_ids.i32()[j]);
      EXPECT_LT(max_abs_diff(f.get_f32("logits." + k), ref.get_f32("cli.logits." + k)), 1e-5)
          << c << " " << prompts[i];
    }
    fs::remove_all(work);
  }
}

TEST(PissaCli, MergeAndExportGguf) {
  // adapter merge: the merged folder holds PEFT's merge_and_unload weights; export-gguf writes
  // the rank-2r plain LoRA (llama.cpp adds it to the original weights), the same file as
  // exporting the converted folder.
  auto work = temp_dir("cli_merge");
  io::SafetensorsFile ref = io::SafetensorsFile::open(kFix + "llama_pissa_ref.safetensors");
  const std::string base = base_of("llama_pissa");
  std::string log;
  ASSERT_EQ(run(kBin + " adapter merge " + kFix + "llama_pissa --base " + base + " --out " +
                    (work / "merged").string(),
                &log),
            0)
      << log;
  auto merged = models::load_model((work / "merged").string());
  int n = 0;
  for (auto& [p, l] : merged->linears())
    if (ref.contains("merged." + p)) {
      EXPECT_LT(max_abs_diff(l->weight.value, ref.get_f32("merged." + p)), 1e-5) << p;
      ++n;
    }
  EXPECT_EQ(n, 6);
  ASSERT_EQ(run(kBin + " adapter export-gguf " + kFix + "llama_pissa --base " + base + " --out " +
                    (work / "a.gguf").string(),
                &log),
            0)
      << log;
  EXPECT_NE(log.find("converted from PiSSA/OLoRA to rank 2r"), std::string::npos) << log;
  ASSERT_EQ(run(kBin + " adapter convert-to-lora " + kFix + "llama_pissa --base " + base +
                " --out " + (work / "conv").string()),
            0);
  ASSERT_EQ(run(kBin + " adapter export-gguf " + (work / "conv").string() + " --base " + base +
                " --out " + (work / "b.gguf").string()),
            0);
  EXPECT_EQ(io::read_file((work / "a.gguf").string()), io::read_file((work / "b.gguf").string()));
  fs::remove_all(work);
}

// ---- conversion to a plain LoRA (PEFT's path_initial_model_for_weight_conversion) -------------

TEST(PissaConvert, EqualsPeftConversion) {
  for (std::string c : {"llama_pissa", "llama_olora", "bert_pissa"}) {
    io::SafetensorsFile ref = io::SafetensorsFile::open(kFix + c + "_ref.safetensors");
    io::SafetensorsFile peft_lora =
        io::SafetensorsFile::open(kFix + c + "_lora/adapter_model.safetensors");
    const io::json peft_cfg = io::read_json_file(kFix + c + "_lora/adapter_config.json");
    auto work = temp_dir("convert_" + c);
    // With PEFT's initial folder: the same tensors as PEFT's conversion.
    {
      auto m = load_base(c);
      peft::convert_to_lora(*m, kFix + c, (work / "with_init").string(), kFix + c + "_init");
      io::SafetensorsFile got =
          io::SafetensorsFile::open((work / "with_init/adapter_model.safetensors").string());
      for (const auto& n : peft_lora.names()) {
        ASSERT_TRUE(got.contains(n)) << c << " " << n;
        EXPECT_EQ(max_abs_diff(got.get_f32(n), peft_lora.get_f32(n)), 0.0) << c << " " << n;
      }
      const io::json cfg = io::read_json_file((work / "with_init/adapter_config.json").string());
      for (const char* k : {"r", "lora_alpha", "init_lora_weights", "use_rslora", "target_modules"})
        EXPECT_EQ(cfg[k], peft_cfg[k]) << c << " " << k;
    }
    // Without it: A₀, B₀ from the init on the base (signs of the factors may differ, ΔW may not).
    auto m = load_base(c);
    std::string log;
    ASSERT_EQ(run(kBin + " adapter convert-to-lora " + kFix + c + " --base " + base_of(c) +
                      " --out " + (work / "cli").string(),
                  &log),
              0)
        << log;
    EXPECT_NE(log.find("to a plain LoRA (r 8)"), std::string::npos) << log;
    {
      auto pm = PeftModel::from_pretrained(*m, (work / "cli").string());
      EXPECT_EQ(pm->config().init_lora_weights, peft::LoraInit::Default);
      // On the original base the plain LoRA gives PEFT's converted logits and the PiSSA model's.
      EXPECT_LT(max_abs_diff(forward(*m, ref), ref.get("lora.logits")), 1e-5) << c;
      EXPECT_LT(max_abs_diff(forward(*m, ref), ref.get("logits")), 1e-4) << c;
    }
    fs::remove_all(work);
  }
}

TEST(PissaConvert, Errors) {
  auto m = load_base("llama_eva");
  auto work = temp_dir("convert_err");
  try {
    peft::convert_to_lora(*m, kFix + "llama_eva", (work / "x").string());
    ADD_FAILURE() << "converting an eva adapter did not throw";
  } catch (const Error& e) {
    EXPECT_NE(
        std::string(e.what()).find("llama_eva/adapter_config.json: field 'init_lora_weights': eva "
                                   "leaves the base unchanged"),
        std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(fs::exists(work / "x"));
  fs::remove_all(work);
}

// ---- every init_lora_weights value PEFT writes: loaded or refused by name ---------------------

TEST(PissaConfig, RefusedInitsNameFileAndField) {
  auto work = temp_dir("refuse");
  auto expect = [&](const io::json& value, const std::string& needle, int64_t r = 4) {
    const fs::path d = work / "a";
    fs::remove_all(d);
    fs::copy(kFix + "llama_eva", d);
    io::json j = io::read_json_file((d / "adapter_config.json").string());
    j["init_lora_weights"] = value;
    j["r"] = r;
    io::write_json_file((d / "adapter_config.json").string(), j);
    auto m = load_base("llama_eva");
    try {
      PeftModel::from_pretrained(*m, d.string());
      ADD_FAILURE() << value.dump() << " did not throw";
    } catch (const Error& e) {
      const std::string w = e.what();
      EXPECT_NE(w.find((d / "adapter_config.json").string() + ": field 'init_lora_weights'"),
                std::string::npos)
          << w;
      EXPECT_NE(w.find(needle), std::string::npos) << w;
    }
  };
  expect("loftq", "\"loftq\" is not supported: LoftQ replaces the base weights");
  expect("corda", "\"corda\" is not supported: CorDA's init needs covariance statistics");
  expect("pissa_niter_x", "\"pissa_niter_x\" is not \"pissa\" or \"pissa_niter_K\"");
  expect("pissa_fast", "\"pissa_fast\" is not \"pissa\" or \"pissa_niter_K\"");
  expect("kaiming", "\"kaiming\" is not a PEFT init");
  expect(3, "expected bool or string, got integer");
  expect("orthogonal", "\"orthogonal\" needs an even r, got 3", 3);
  fs::remove_all(work);
  // The same parser serves `lorafit train --init-lora-weights`.
  peft::AdapterConfig c;
  peft::set_init_lora_weights(c, "pissa_niter_16", "--init-lora-weights");
  EXPECT_EQ(c.init_lora_weights, peft::LoraInit::Pissa);
  EXPECT_EQ(c.pissa_niter, 16);
  EXPECT_EQ(peft::init_lora_weights_str(c), "pissa_niter_16");
  peft::set_init_lora_weights(c, "OLoRA", "x");  // PEFT: init_lora_weights.lower() == "olora"
  EXPECT_EQ(c.init_lora_weights, peft::LoraInit::Olora);
  auto w2 = temp_dir("refuse_train");
  const fs::path mdir = model_with_tokenizer(w2, "llama_eva");
  {
    std::ofstream t(w2 / "t.txt");
    for (int i = 0; i < 40; ++i) t << "the movie was very good but the plot was bad\n";
  }
  std::string log;
  EXPECT_EQ(run(kBin + " train --model " + mdir.string() + " --train " + (w2 / "t.txt").string() +
                    " --output " + (w2 / "out").string() + " --init-lora-weights loftq",
                &log),
            1);
  EXPECT_FALSE(fs::exists(w2 / "out"));
  fs::remove_all(w2);
  EXPECT_NE(log.find("--init-lora-weights: field 'init_lora_weights': \"loftq\" is not supported"),
            std::string::npos)
      << log;
}

TEST(PissaConfig, OrthogonalInitIsAZeroDelta) {
  // PEFT orthogonal_init: B A = 0 (even and odd rows of one orthogonal Q), A and B not zero.
  auto m = load_base("llama_orthogonal");
  peft::AdapterConfig c;
  c.r = 4;
  c.lora_alpha = 8;
  c.target_modules = {"q_proj", "v_proj"};
  c.init_lora_weights = peft::LoraInit::Orthogonal;
  PeftModel pm(*m, c, 7);
  for (auto& [p, l] : pm.lora_layers()) {
    EXPECT_GT(max_abs(l->A.value), 1e-3) << p;
    EXPECT_GT(max_abs(l->B.value), 1e-3) << p;
    EXPECT_LT(max_abs(l->delta_weight()), 1e-6) << p;
  }
}

// ---- a PiSSA run trained by lorafit
// --------------------------------------------------------------

TEST(PissaTrain, SavedRunLoadsWithTheTrainedLogitsAndResumesExactly) {
  auto work = temp_dir("train");
  const fs::path mdir = model_with_tokenizer(work, "llama_pissa");
  {
    std::ofstream t(work / "train.txt");
    for (int i = 0; i < 40; ++i)
      t << "the movie was very good but the plot was bad and it is not a fine film\n";
  }
  const std::string common =
      kBin + " train --model " + mdir.string() + " --train " + (work / "train.txt").string() +
      " --init-lora-weights pissa --lora-r 4 --target-modules q_proj,v_proj --block-size 8 "
      "--batch-size 2 --max-steps 6 --lr 1e-2 --lora-dropout 0 --threads 1 --quiet";
  std::string log;
  ASSERT_EQ(run(common + " --output " + (work / "full").string(), &log), 0) << log;
  // 3 steps, stop, resume: the same adapter as 6 steps at once (the init runs again on resume).
  ASSERT_EQ(run(common + " --stop-after 3 --output " + (work / "half").string(), &log), 130)
      << log;  // stopped
  ASSERT_EQ(run(common + " --resume " + (work / "half/checkpoint").string() + " --output " +
                    (work / "half").string(),
                &log),
            0)
      << log;
  const io::json cfg = io::read_json_file((work / "full/final/adapter_config.json").string());
  EXPECT_EQ(cfg["init_lora_weights"], "pissa");
  io::SafetensorsFile a =
      io::SafetensorsFile::open((work / "full/final/adapter_model.safetensors").string());
  io::SafetensorsFile b =
      io::SafetensorsFile::open((work / "half/final/adapter_model.safetensors").string());
  for (const auto& n : a.names()) EXPECT_EQ(max_abs_diff(a.get_f32(n), b.get_f32(n)), 0.0) << n;
  // Loading final/ (init once, then A and B) gives the trained model: W_res + s·B A, where the
  // residual is what training used.
  auto m = models::load_model(mdir.string());
  auto pm = PeftModel::from_pretrained(*m, (work / "full/final").string());
  auto m2 = models::load_model(mdir.string());
  peft::AdapterConfig c2 = pm->config();
  PeftModel fresh(*m2, c2, 0);  // the init as training ran it, then the trained A and B
  auto lins2 = linears(*m2);
  for (auto& [path, l] : fresh.lora_layers()) {
    l->A.value.copy_from(a.get_f32("base_model.model." + path + ".lora_A.weight"));
    l->B.value.copy_from(a.get_f32("base_model.model." + path + ".lora_B.weight"));
  }
  io::SafetensorsFile ref = io::SafetensorsFile::open(kFix + "llama_pissa_ref.safetensors");
  const Tensor got = forward(*m, ref), want = forward(*m2, ref);
  EXPECT_LT(max_abs_diff(got, want), 1e-6);
  auto plain = models::load_model(mdir.string());
  EXPECT_GT(max_abs_diff(got, forward(*plain, ref)), 1e-3) << "training moved nothing";
  fs::remove_all(work);
}

// ---- merging into a quantized GGUF: the rounding check ----------------------------------------

// Echoes the measure line of `lorafit adapter merge` (for the record in the test log).
void print_measure(const std::string& log) {
  const size_t a = log.find("rounding to ");
  if (a != std::string::npos) std::printf("%s\n", log.substr(a, log.find('\n', a) - a).c_str());
}

TEST(QuantizedMerge, RefusesWhenRoundingSwampsTheAdapter) {
  // A real trained adapter: a short LoRA run on SmolLM2 (Q4_1 GGUF, tools/fetch_models.sh).
  const std::string smol = kRoot + "models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf";
  ASSERT_TRUE(fs::exists(smol)) << smol << " is missing (run tools/fetch_models.sh)";
  auto work = temp_dir("qmerge");
  {
    std::ofstream t(work / "train.txt");
    for (int i = 0; i < 30; ++i)
      t << "To be, or not to be, that is the question: whether 'tis nobler in the mind to "
           "suffer.\n";
  }
  std::string log;
  ASSERT_EQ(run(kBin + " train --model " + smol + " --train " + (work / "train.txt").string() +
                    " --output " + (work / "run").string() +
                    " --max-steps 4 --batch-size 2 --block-size 32 --lr 5e-4 --quiet",
                &log),
            0)
      << log;
  const std::string ad = (work / "run/final").string();
  const std::string merge = kBin + " adapter merge " + ad + " --base " + smol + " --out ";
  EXPECT_EQ(run(merge + (work / "m4.gguf").string() + " --type q4_1", &log), 1) << log;
  EXPECT_NE(log.find("rounding to Q4_1 moves the merged weights by up to"), std::string::npos)
      << log;
  EXPECT_NE(log.find("lorafit adapter merge: [adapter] merge --type q4_1: rounding to Q4_1 changes "
                     "module model.layers."),
            std::string::npos)
      << log;
  EXPECT_NE(
      log.find(
          "times as much as the adapter does (limit 1), so the merged model would mostly lose the "
          "adapter; use --type q8_0 or f16"),
      std::string::npos)
      << log;
  EXPECT_FALSE(fs::exists(work / "m4.gguf")) << "nothing is written when refused";
  print_measure(log);
  // --force writes it; f16 passes the check; q8_0 is measured (this 4-step adapter is tiny).
  EXPECT_EQ(run(merge + (work / "m4.gguf").string() + " --type q4_1 --force", &log), 0) << log;
  EXPECT_TRUE(fs::exists(work / "m4.gguf"));
  EXPECT_EQ(run(merge + (work / "m16.gguf").string() + " --type f16", &log), 0) << log;
  EXPECT_NE(log.find("rounding to F16 moves"), std::string::npos) << log;
  print_measure(log);
  const int rc8 = run(merge + (work / "m8.gguf").string() + " --type q8_0", &log);
  EXPECT_NE(log.find("rounding to Q8_0 moves"), std::string::npos) << log;
  // A refused q8_0 merge suggests only finer types.
  if (rc8 != 0) {
    EXPECT_NE(log.find("use --type f16 or f32"), std::string::npos) << log;
  }
  print_measure(log);
  fs::remove_all(work);
}

TEST(QuantizedMerge, MeasureIsRoundingOverDelta) {
  // merge_rounding against a direct computation on one module.
  auto m = models::load_model(kRoot + "tests/fixtures/models/tiny_llama");
  auto lins = linears(*m);
  const std::string path = "model.layers.0.self_attn.q_proj";
  Tensor w0 = lins[path]->weight.value.clone();
  Tensor& w = lins[path]->weight.value;
  for (int64_t i = 0; i < w.numel(); ++i)
    w.f32()[i] += 1e-3f * static_cast<float>((i * 7919) % 13 - 6);
  auto rep = peft::merge_rounding(*m, {{path, w0}}, lorafit::tensor::DType::Q4_0);
  ASSERT_EQ(rep.size(), 1u);
  Tensor q =
      lorafit::tensor::dequantize(lorafit::tensor::quantize(w, lorafit::tensor::DType::Q4_0));
  double r2 = 0, d2 = 0;
  for (int64_t i = 0; i < w.numel(); ++i) {
    r2 += std::pow(static_cast<double>(q.f32()[i]) - w.f32()[i], 2);
    d2 += std::pow(static_cast<double>(w.f32()[i]) - w0.f32()[i], 2);
  }
  EXPECT_NEAR(rep[0].rounding, std::sqrt(r2), 1e-6 * std::sqrt(r2));
  EXPECT_NEAR(rep[0].delta, std::sqrt(d2), 1e-6 * std::sqrt(d2));
  EXPECT_NEAR(rep[0].ratio(), std::sqrt(r2 / d2), 1e-6);
}

// ---- merged classifier folder ------------------------------------------------------------------

TEST(MergedClassifier, ConfigNamesTheTask) {
  auto work = temp_dir("mcls");
  auto m = load_base("bert_pissa");
  {
    auto pm = PeftModel::from_pretrained(*m, kFix + "bert_pissa");
    pm->merge_and_unload();
  }
  peft::save_merged_hf(*m, base_of("bert_pissa"), (work / "out").string(),
                       {"neg", "neutral", "pos"});
  const io::json cfg = io::read_json_file((work / "out/config.json").string());
  EXPECT_EQ(cfg["architectures"], io::json::array({"BertForSequenceClassification"}));
  EXPECT_EQ(cfg["num_labels"], 3);
  EXPECT_EQ(cfg["id2label"]["2"], "pos");
  EXPECT_EQ(cfg["label2id"]["neutral"], 1);
  try {
    peft::save_merged_hf(*m, base_of("bert_pissa"), (work / "bad").string(), {"a", "b"});
    ADD_FAILURE() << "two labels for three outputs did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("2 label names for a classifier with 3 outputs"),
              std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(fs::exists(work / "bad"));
  fs::remove_all(work);
}

}  // namespace
