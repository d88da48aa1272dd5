// Trains a LoRA adapter through lorafit's public API alone (include/lorafit/*.h): the training
// job of `lorafit train`, from C++.
//
//   train_adapter MODEL_DIR WORK_DIR
//
// MODEL_DIR: a BERT-family Hugging Face folder (config.json + model.safetensors). When it has no
// tokenizer.json, the example writes a small word-level one next to a copy of the weights, so
// that the tiny test model (tests/fixtures/models/tiny_bert) works as it is. The example writes
// a toy sentiment file, trains for a few steps, then loads the PEFT folder it wrote and
// evaluates it. Exit status 0 when the run folder is complete.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "lorafit/models.h"
#include "lorafit/peft.h"
#include "lorafit/train.h"

namespace fs = std::filesystem;
namespace train = lorafit::train;

namespace {

const std::vector<std::string> kWords = {"good", "bad",  "great", "awful", "movie",
                                         "film", "plot", "the",   "was",   "very"};

// A WordPiece tokenizer.json over kWords (ids 4..13, small enough for a tiny vocabulary).
std::string tokenizer_json() {
  std::string v = R"("[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3)";
  for (size_t i = 0; i < kWords.size(); ++i)
    v += ", \"" + kWords[i] + "\": " + std::to_string(4 + i);
  return R"({"model": {"type": "WordPiece", "vocab": {)" + v +
         R"(}, "unk_token": "[UNK]", "continuing_subword_prefix": "##",
  "max_input_chars_per_word": 100}, "normalizer": null, "pre_tokenizer": {"type": "BertPreTokenizer"},
  "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
  "decoder": null})";
}

// label 1 when the sentence has a positive word.
std::string sentiment_tsv(int n) {
  std::string s = "sentence\tlabel\n";
  for (int i = 0; i < n; ++i) {
    const bool pos = i % 2 == 0;
    s += std::string(pos ? (i % 4 ? "good" : "great") : (i % 3 ? "bad" : "awful")) + " " +
         kWords[4 + i % 6] + " " + kWords[4 + (i / 3) % 6] + "\t" + (pos ? "1" : "0") + "\n";
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: train_adapter MODEL_DIR WORK_DIR\n");
    return 2;
  }
  const fs::path src = argv[1], work = argv[2];
  try {
    fs::remove_all(work);
    fs::create_directories(work);
    fs::path model = src;
    if (!fs::exists(src / "tokenizer.json")) {
      model = work / "model";
      fs::create_directories(model);
      for (auto f : {"config.json", "model.safetensors"}) fs::copy_file(src / f, model / f);
      std::ofstream(model / "tokenizer.json") << tokenizer_json();
    }
    std::ofstream(work / "train.tsv") << sentiment_tsv(64);

    // Everything `lorafit train` takes, with its defaults; only what differs is set.
    train::RunParams p;
    p.model = model.string();
    p.train_data = (work / "train.tsv").string();
    p.output = (work / "run").string();
    p.lora_r = 4;
    p.max_steps = 6;
    p.batch_size = 8;
    p.threads = 1;
    p.quiet = true;
    auto job = train::TrainingJob::prepare(p);
    std::printf("task %s, method %s, %lld trainable of %lld parameters, lr %g\n",
                job->info().task.c_str(), job->info().method.c_str(),
                static_cast<long long>(job->info().trainable_params),
                static_cast<long long>(job->info().total_params), job->info().lr);
    const train::JobResult r = job->run();
    std::printf("%lld steps, validation accuracy %.3f; adapter in %s\n",
                static_cast<long long>(r.summary.steps), r.summary.final_eval.cls.accuracy,
                r.final_dir.c_str());

    // The adapter is a PEFT folder: read its config and put it on a fresh base model.
    const lorafit::peft::AdapterConfig cfg = lorafit::peft::read_adapter_config(r.final_dir);
    lorafit::models::LoadOptions lo;
    lo.num_labels = lorafit::peft::adapter_num_labels(r.final_dir);
    auto base = lorafit::models::load_model(model.string(), lo);
    auto pm = lorafit::peft::PeftModel::from_pretrained(*base, r.final_dir);
    std::printf("loaded %s adapter r=%lld on %zu modules\n", cfg.peft_type.c_str(),
                static_cast<long long>(cfg.r), pm->lora_layers().size());

    train::EvalParams ep;
    ep.model = model.string();
    ep.adapter = r.final_dir;
    ep.data = p.train_data;
    const train::EvalReport er = train::evaluate_file(ep);
    std::printf("training-set accuracy %.3f over %lld examples\n", er.result.cls.accuracy,
                static_cast<long long>(er.result.cls.n));

    for (auto f : {"adapter_config.json", "adapter_model.safetensors"})
      if (!fs::exists(fs::path(r.final_dir) / f)) {
        std::fprintf(stderr, "train_adapter: %s/%s is missing\n", r.final_dir.c_str(), f);
        return 1;
      }
    if (cfg.r != 4 || pm->lora_layers().empty() || er.result.cls.n != 64) {
      std::fprintf(stderr, "train_adapter: the adapter folder does not hold what was trained\n");
      return 1;
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train_adapter: %s\n", e.what());
    return 1;
  }
}
