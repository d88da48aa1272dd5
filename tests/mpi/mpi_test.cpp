// Data-parallel training (built with LORAFIT_MPI): `mpirun -np 2` on loopback gives the adapter one
// process gives with the same global batch, for LoRA, DoRA, AdaLoRA, full fine-tuning, and with
// accumulation + clipping + LoRA+; a run resumes with a different number of processes.
//
// Tolerance: max |a - b| <= 1e-6 over every trainable value (they are of order 0.1-1): the two
// runs differ only in the fp32 summation order of each gradient (two half-batch sums, then the
// all-reduce, against one sum). Measured: <= 4e-8. The model's dropout is off in the fixture
// copy, since dropout masks are drawn per micro-batch and rank (the same law, other draws).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "lorafit/io.h"
#include "lorafit/nn.h"
#include "lorafit/tensor.h"

namespace fs = std::filesystem;
using namespace lorafit;
using tensor::Tensor;

namespace {

constexpr double kTol = 1e-6;

fs::path temp_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("lorafit_mpi_" + name + "_" + std::to_string(getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

void write(const fs::path& p, const std::string& s) {
  std::ofstream(p, std::ios::binary) << s;
}

const std::vector<std::string> kWords = {"good", "bad",  "great", "awful", "movie", "film",
                                         "plot", "fine", "dull",  "fun",   "the",   "a",
                                         "is",   "was",  "very",  "not"};

// The tiny BERT fixture with tests/fixtures/tokens/tiny_bert_wordpiece (a WordPiece tokenizer
// over kWords) and its dropout turned off.
fs::path tiny_bert() {
  static fs::path d = [] {
    fs::path dir = temp_dir("tiny_bert");
    fs::copy_file(fs::path(LORAFIT_FIXTURES) / "models/tiny_bert/model.safetensors",
                  dir / "model.safetensors");
    io::json cfg =
        io::read_json_file(std::string(LORAFIT_FIXTURES) + "/models/tiny_bert/config.json");
    cfg["hidden_dropout_prob"] = 0.0;
    cfg["attention_probs_dropout_prob"] = 0.0;
    io::write_json_file((dir / "config.json").string(), cfg);
    fs::copy_file(fs::path(LORAFIT_FIXTURES) / "tokens/tiny_bert_wordpiece/tokenizer.json",
                  dir / "tokenizer.json");
    // Sentences of 3 to 9 words: the two halves of a batch pad to different lengths.
    std::string s = "label\tsentence\n";
    for (int i = 0; i < 72; ++i) {
      const uint64_t r = nn::random_u64(11, static_cast<uint64_t>(i));
      const bool pos = (r >> 8) & 1;
      std::string t = pos ? (r >> 9 & 1 ? "good" : "great") : (r >> 9 & 1 ? "bad" : "awful");
      for (int k = 0, len = 2 + static_cast<int>(r % 7); k < len; ++k)
        t += " " + kWords[6 + (r >> (12 + 3 * k)) % 10];
      s += std::string(pos ? "1" : "0") + "\t" + t + "\n";
    }
    write(dir / "train.tsv", s);
    return dir;
  }();
  return d;
}

// The tiny Llama fixture with the byte-level BPE of tests/fixtures/tokens/tiny_llama_bpe.
fs::path tiny_llama_dir() {
  static fs::path d = [] {
    fs::path dir = temp_dir("tiny_llama");
    for (auto f : {"config.json", "model.safetensors"})
      fs::copy_file(fs::path(LORAFIT_FIXTURES) / "models/tiny_llama" / f, dir / f);
    for (auto f : {"tokenizer.json", "tokenizer_config.json"})
      fs::copy_file(fs::path(LORAFIT_FIXTURES) / "tokens/tiny_llama_bpe" / f, dir / f);
    std::string text;
    for (int i = 0; i < 120; ++i) {
      const uint64_t r = nn::random_u64(5, static_cast<uint64_t>(i));
      for (int k = 0, len = 3 + static_cast<int>(r % 9); k < len; ++k)
        text += kWords[(r >> (4 + 4 * k)) % kWords.size()] + (k + 1 < len ? " " : ".\n");
    }
    write(dir / "train.txt", text);
    return dir;
  }();
  return d;
}

// Runs `lorafit train` in `np` processes (0: without mpirun); returns the exit status.
int train(int np, const fs::path& out, const std::string& extra, bool lm = false) {
  const fs::path m = lm ? tiny_llama_dir() : tiny_bert();
  std::string cmd = std::string(LORAFIT_BINARY) + " train --model " + m.string() + " --train " +
                    (m / (lm ? "train.txt" : "train.tsv")).string() +
                    (extra.find("--batch-size") == std::string::npos ? " --batch-size 8" : "") +
                    " --lora-dropout 0 --eval-every 3 --val-fraction 0.5 --quiet " +
                    extra + " --output " + out.string();
  if (np > 0)
    cmd = std::string(LORAFIT_MPIRUN) + " -np " + std::to_string(np) +
          " --oversubscribe --allow-run-as-root --mca btl_vader_single_copy_mechanism none " + cmd;
  const int rc = std::system((cmd + " > " + out.string() + ".log 2>&1").c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

std::string log_of(const fs::path& out) {
  return io::read_file(out.string() + ".log");
}

// Largest |a - b| over the tensors of two trainable.safetensors (which must hold the same names).
double max_diff(const fs::path& a, const fs::path& b) {
  auto fa = io::SafetensorsFile::open(a.string()), fb = io::SafetensorsFile::open(b.string());
  EXPECT_EQ(fa.names(), fb.names());
  double m = 0;
  for (auto& n : fa.names()) {
    Tensor x = fa.get_f32(n), y = fb.get_f32(n);
    EXPECT_EQ(x.numel(), y.numel()) << n;
    for (int64_t i = 0; i < std::min(x.numel(), y.numel()); ++i)
      m = std::max(m, std::abs(static_cast<double>(x.f32()[i]) - y.f32()[i]));
  }
  return m;
}

// One process against two with the same options; also the runs' final validation lines agree.
void expect_same(const std::string& name, const std::string& extra, bool lm = false) {
  const fs::path w = temp_dir(name);
  ASSERT_EQ(train(0, w / "one", extra + " --threads 1", lm), 0) << log_of(w / "one");
  ASSERT_EQ(train(2, w / "two", extra, lm), 0) << log_of(w / "two");
  const double d =
      max_diff(w / "one/final/trainable.safetensors", w / "two/final/trainable.safetensors");
  EXPECT_LE(d, kTol);
  // The adapters did train (lora_B starts at zero; a zero update would match trivially).
  auto f = io::SafetensorsFile::open((w / "two/final/trainable.safetensors").string());
  double b_max = -1;
  for (auto& n : f.names())
    if (n.find("lora_B") != std::string::npos) {
      Tensor t = f.get_f32(n);
      for (int64_t i = 0; i < t.numel(); ++i)
        b_max = std::max(b_max, static_cast<double>(std::abs(t.f32()[i])));
    }
  if (b_max >= 0) {
    EXPECT_GT(b_max, 1e-4);
  }
  // Rank 0 alone wrote the log: one line per step and evaluation, as one process writes.
  auto lines = [](const fs::path& p) {
    std::string s = io::read_file(p.string());
    return std::count(s.begin(), s.end(), '\n');
  };
  EXPECT_EQ(lines(w / "one/log.jsonl"), lines(w / "two/log.jsonl"));
  // Evaluation sharded over the ranks and reduced: the same metrics as one process.
  auto evals = [](const fs::path& p) {
    std::vector<io::json> out;
    std::istringstream in(io::read_file(p.string()));
    for (std::string l; std::getline(in, l);) {
      io::json j = io::json::parse(l);
      if (j.value("type", "") == "eval") out.push_back(j);
    }
    return out;
  };
  const auto e1 = evals(w / "one/log.jsonl"), e2 = evals(w / "two/log.jsonl");
  ASSERT_EQ(e1.size(), e2.size());
  ASSERT_GE(e1.size(), 2u);
  if (!lm)
    EXPECT_GE(e1[0]["n"].get<int>(), 33);  // three evaluation batches of 16: both ranks evaluate
  for (size_t i = 0; i < e1.size(); ++i) {
    EXPECT_EQ(e1[i]["step"], e2[i]["step"]);
    if (!lm) {
      EXPECT_EQ(e1[i]["n"], e2[i]["n"]);
      EXPECT_EQ(e1[i]["accuracy"], e2[i]["accuracy"]);
    }
    EXPECT_NEAR(e1[i]["loss"].get<double>(), e2[i]["loss"].get<double>(), 1e-5);
  }
}

}  // namespace

TEST(MpiParity, LoraTwoProcessesMatchOne) {
  expect_same("lora", "--max-steps 6");
}

TEST(MpiParity, CausalLmAllLinearTwoProcessesMatchOne) {
  // Loss weights by target tokens: the two halves of a batch count different numbers.
  expect_same("lm", "--max-steps 6 --block-size 16 --batch-size 4 --target-modules all-linear",
              true);
}

TEST(MpiParity, DoraTwoProcessesMatchOne) {
  expect_same("dora", "--max-steps 6 --use-dora");
}

TEST(MpiParity, FullFineTuningTwoProcessesMatchOne) {
  expect_same("full", "--max-steps 6 --method full");
}

TEST(MpiParity, AccumulationClippingLoraPlusMatchOne) {
  // max-grad-norm 0.01 clips every step: the norm must be the global one.
  expect_same("accum", "--max-steps 5 --grad-accum 2 --max-grad-norm 0.01 --loraplus-ratio 4");
}

TEST(MpiParity, AdaloraSameRankPatternAsOneProcess) {
  const std::string opts =
      "--max-steps 8 --method adalora --init-r 6 --target-r 2 --tinit 2 --tfinal 2 --delta-t 1";
  expect_same("adalora", opts);
  const fs::path w =
      fs::temp_directory_path() / ("lorafit_mpi_adalora_" + std::to_string(getpid()));
  auto rp = [&](const char* run) {
    return io::read_json_file((w / run / "final/adapter_config.json").string()).at("rank_pattern");
  };
  ASSERT_TRUE(rp("one").is_object());
  EXPECT_FALSE(rp("one").empty());
  EXPECT_EQ(rp("one"), rp("two"));
  // The budget did shrink: some rank was pruned somewhere.
  bool pruned = false;
  const io::json pattern = rp("one");
  for (auto& m : pattern)
    for (auto& b : m) pruned = pruned || !b.get<bool>();
  EXPECT_TRUE(pruned);
}

TEST(MpiResume, TwoProcessesContinueOneProcessCheckpointAndBack) {
  const fs::path w = temp_dir("resume");
  ASSERT_EQ(train(0, w / "ref", "--max-steps 8 --threads 1"), 0) << log_of(w / "ref");
  // 3 steps in one process, 3 more in two, the rest in one again.
  EXPECT_EQ(train(0, w / "a", "--max-steps 8 --threads 1 --stop-after 3"), 130) << log_of(w / "a");
  const std::string ck = " --resume " + (w / "a/checkpoint").string();
  EXPECT_EQ(train(2, w / "a", "--max-steps 8 --stop-after 3" + ck), 130) << log_of(w / "a");
  EXPECT_EQ(io::read_json_file((w / "a/checkpoint/trainer_state.json").string()).at("step"), 6);
  ASSERT_EQ(train(0, w / "a", "--max-steps 8 --threads 1" + ck), 0) << log_of(w / "a");
  EXPECT_LE(max_diff(w / "ref/final/trainable.safetensors", w / "a/final/trainable.safetensors"),
            kTol);
}
