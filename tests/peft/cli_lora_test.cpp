// CLI paths of the LoRA extras: `lorafit adapter combine`, `lorafit adapter merge` with a GGUF
// base, and `lorafit logits --route` (mixed batch), each checked against the library.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "lorafit/io.h"
#include "lorafit/models.h"
#include "lorafit/peft.h"
#include "lorafit/text.h"
#include "peft_test_util.h"

namespace {

using peft_test::max_abs_diff;

namespace fs = std::filesystem;
using lorafit::nn::Context;
using lorafit::peft::PeftModel;
using lorafit::tensor::Tensor;
namespace io = lorafit::io;
namespace models = lorafit::models;
namespace peft = lorafit::peft;

const std::string kFix = std::string(LORAFIT_FIXTURES) + "/";
const std::string kBin = LORAFIT_BINARY;

fs::path temp_dir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("lorafit_cli_lora_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

int run(const std::string& cmd) {
  int rc = std::system((cmd + " > /dev/null 2>&1").c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

TEST(CliLora, CombineWritesThePeftFolderOfTheLibrary) {
  auto work = temp_dir("combine");
  const std::string out = (work / "cat").string();
  const std::string cmd = kBin + " adapter combine " + kFix + "peft_combine/one " + kFix +
                          "peft_combine/two --base " + kFix + "models/tiny_llama --weights 0.7,-0.4 --type cat --out " + out;
  ASSERT_EQ(run(cmd), 0);
  auto m = models::load_model(kFix + "models/tiny_llama");
  auto pm = PeftModel::from_pretrained(*m, out, "cat");
  EXPECT_EQ(pm->config("cat").r, 6);
  io::SafetensorsFile ref = io::SafetensorsFile::open(kFix + "peft_combine/combine_ref.safetensors");
  for (auto& [path, l] : pm->lora_layers("cat"))
    EXPECT_LT(max_abs_diff(l->delta_weight(), ref.get_f32("full." + path)), 1e-5) << path;
  EXPECT_EQ(run(kBin + " adapter combine " + kFix + "peft_combine/one --base " + kFix +
                "models/tiny_llama --weights 1,2 --out " + out + "2"), 1);  // 1 adapter, 2 weights
  fs::remove_all(work);
}

TEST(CliLora, MergeIntoGgufBase) {
  auto work = temp_dir("merge");
  const std::string out = (work / "merged.gguf").string();
  const std::string base = kFix + "models/tiny_llama.gguf";
  ASSERT_EQ(run(kBin + " adapter merge " + kFix + "peft/llama_qv --base " + base + " --out " + out +
                " --type f32"), 0);
  EXPECT_EQ(run(kBin + " adapter merge " + kFix + "peft/llama_qv --base " + base + " --out " + out +
                "2 --type q2_k"), 1);
  Tensor ids = Tensor::from_ints({1, 6}, {3, 14, 15, 92, 65, 35});
  auto m = models::load_model(base);
  auto pm = PeftModel::from_pretrained(*m, kFix + "peft/llama_qv");
  Context c1, c2;
  Tensor want = dynamic_cast<models::LlamaModel&>(*m).forward(c1, ids).clone();
  pm->disable_adapters();
  Tensor base_logits = dynamic_cast<models::LlamaModel&>(*m).forward(c1, ids).clone();
  auto merged = models::load_model(out);
  Tensor got = dynamic_cast<models::LlamaModel&>(*merged).forward(c2, ids);
  EXPECT_LT(max_abs_diff(got, want), 1e-4);
  EXPECT_GT(max_abs_diff(base_logits, want), 1e-3);
  fs::remove_all(work);
}

TEST(CliLora, LogitsRouteIsAMixedBatch) {
  // tiny BERT with a small WordPiece tokenizer (as tests/train), two SEQ_CLS adapters.
  auto work = temp_dir("route");
  const fs::path mdir = work / "model";
  fs::create_directories(mdir);
  for (auto f : {"config.json", "model.safetensors"})
    fs::copy_file(fs::path(kFix) / "models/tiny_bert" / f, mdir / f);
  std::string vocab = R"("[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3)";
  const std::vector<std::string> words = {"good", "bad", "movie", "plot", "the", "was", "very", "not"};
  for (size_t i = 0; i < words.size(); ++i) vocab += ", \"" + words[i] + "\": " + std::to_string(4 + i);
  std::ofstream(mdir / "tokenizer.json")
      << R"({"model": {"type": "WordPiece", "vocab": {)" << vocab
      << R"(}, "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100},
  "normalizer": null, "pre_tokenizer": {"type": "BertPreTokenizer"},
  "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
  "decoder": null})";
  const std::vector<std::string> prompts = {"the movie was very good", "bad plot", "not good not bad movie"};
  const std::vector<std::string> route = {"rs", "__base__", "qv"};
  const std::string out = (work / "logits.safetensors").string();
  std::string cmd = kBin + " logits --model " + mdir.string() + " --adapter qv=" + kFix + "peft/bert_qv" +
                    " --adapter rs=" + kFix + "peft/bert_all_rslora --route rs,__base__,qv --out " + out;
  for (auto& p : prompts) cmd += " --prompt '" + p + "'";
  ASSERT_EQ(run(cmd), 0);
  EXPECT_EQ(run(kBin + " logits --model " + mdir.string() + " --adapter qv=" + kFix +
                "peft/bert_qv --route qv --prompt a --prompt b"), 1);  // one name for two prompts
  io::SafetensorsFile f = io::SafetensorsFile::open(out);
  auto m = models::load_model(mdir.string());
  auto& bert = dynamic_cast<models::BertModel&>(*m);
  auto pm = PeftModel::from_pretrained(*m, kFix + "peft/bert_qv", "qv");
  pm->load_adapter(kFix + "peft/bert_all_rslora", "rs");
  auto tok = lorafit::text::Tokenizer::from_file(mdir.string());
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (route[i] == "__base__") pm->disable_adapters();
    else pm->enable_adapters(), pm->set_adapter(route[i]);
    auto ids = tok.encode(prompts[i], true).ids;
    Context ctx;
    Tensor want = bert.classify(ctx, bert.forward(ctx, Tensor::from_ints({1, static_cast<int64_t>(ids.size())}, ids)));
    Tensor got = f.get_f32("logits." + std::to_string(i));  // the file drops the batch dimension
    EXPECT_LT(max_abs_diff(got, want.view(got.shape())), 1e-5) << prompts[i];
  }
  fs::remove_all(work);
}

}  // namespace
