// Limits before allocation (issue 14): a file that claims more than it holds is refused before
// anything of that size is allocated, with a message naming the file, the field and the limit.
// The io-level claims (a safetensors header length, 2^60 GGUF tensors, an array of 2^62 u32, a
// shape whose product overflows) are in tests/io (Safetensors.BadFiles, Gguf.BadFiles); these
// are the claims the layers above read: a tokenizer's ids, a model config's sizes.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <string>

#include "lorafit/io.h"
#include "lorafit/models.h"
#include "lorafit/peft.h"
#include "lorafit/text.h"

namespace fs = std::filesystem;
namespace io = lorafit::io;
namespace models = lorafit::models;
using lorafit::text::Tokenizer;

namespace {

const fs::path kFixtures = LORAFIT_FIXTURES;

// A fresh folder removed at the end of the test.
struct Work {
  fs::path dir;
  Work() {
    std::string t = (fs::temp_directory_path() / "lorafit_limits_XXXXXX").string();
    if (!mkdtemp(t.data())) throw std::runtime_error("mkdtemp failed");
    dir = t;
  }
  ~Work() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

// f() throws a lorafit::Error whose message holds every part.
void expect_error(const std::function<void()>& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one with '" << *parts.begin() << "'";
  } catch (const lorafit::Error& e) {
    const std::string m = e.what();
    for (const std::string& p : parts) EXPECT_NE(m.find(p), std::string::npos) << "'" << p << "' not in: " << m;
  }
}

// A copy of fixture model `name` whose config.json has `key` set to `value`.
fs::path model_with(const Work& w, const std::string& name, const std::string& key,
                    const io::json& value) {
  const fs::path dst = w.dir / (name + "_" + key);
  fs::copy(kFixtures / "models" / name, dst, fs::copy_options::recursive);
  io::json cfg = io::read_json_file((dst / "config.json").string());
  cfg[key] = value;
  io::write_json_file((dst / "config.json").string(), cfg);
  return dst;
}

}  // namespace

TEST(Limits, TokenizerIdFarBeyondTheVocabulary) {
  // One id of 2^31 - 1 would make the id -> token table 64 GiB.
  const std::string wp = R"({"model": {"type": "WordPiece", "unk_token": "[UNK]",
                                       "vocab": {"[UNK]": 0, "a": 2147483647}}})";
  expect_error([&] { Tokenizer::from_json(wp, "", "t/tokenizer.json"); },
               {"t/tokenizer.json", "model.vocab", "id 2147483647",
                "beyond the limit of 1048578 for a vocabulary of 2 tokens"});
  const std::string bpe = R"({"model": {"type": "BPE", "merges": [],
                                        "vocab": {"a": 0, "b": 5000000}}})";
  expect_error([&] { Tokenizer::from_json(bpe, "", "b/tokenizer.json"); },
               {"b/tokenizer.json", "model.vocab", "id 5000000", "beyond the limit"});
  // Holes within the limit stay allowed (a vocabulary may skip ids).
  const std::string holes = R"({"model": {"type": "WordPiece", "unk_token": "[UNK]",
                                          "vocab": {"[UNK]": 0, "a": 1000}}})";
  EXPECT_NO_THROW(Tokenizer::from_json(holes, "", "h/tokenizer.json"));
}

TEST(Limits, LlamaConfigClaimsMoreThanTheWeights) {
  Work w;
  // vocab_size x hidden_size must be the embedding the file holds.
  expect_error([&] { models::load_model(model_with(w, "tiny_llama", "vocab_size", int64_t{1} << 40).string()); },
               {"config.json", "fields 'vocab_size' and 'hidden_size'",
                "tensor 'model.embed_tokens.weight' should be [1099511627776, 32]",
                "model.safetensors holds it as [100, 32]"});
  // A product that overflows int64 (2^62 x 32) is refused the same way, before any multiplication.
  expect_error([&] { models::load_model(model_with(w, "tiny_llama", "hidden_size", int64_t{1} << 62).string()); },
               {"config.json", "'hidden_size'", "holds it as [100, 32]"});
  // num_hidden_layers: the file must hold the last layer.
  expect_error([&] { models::load_model(model_with(w, "tiny_llama", "num_hidden_layers", 1000000).string()); },
               {"config.json", "field 'num_hidden_layers'",
                "tensor 'model.layers.999999.input_layernorm.weight' should be [32]", "model.safetensors does not hold it"});
  // Sizes with no tensor of their own: at most 8 parameters per byte of the file's tensor data.
  expect_error([&] { models::load_model(model_with(w, "tiny_llama", "intermediate_size", int64_t{1} << 40).string()); },
               {"config.json", "'intermediate_size'", "parameters, beyond the limit of",
                "8 per byte of the", "bytes of tensor data in", "model.safetensors"});
  expect_error([&] { models::load_model(model_with(w, "tiny_llama", "head_dim", int64_t{1} << 50).string()); },
               {"config.json", "'head_dim'", "beyond the limit of"});
}

TEST(Limits, BertConfigClaimsMoreThanTheWeights) {
  Work w;
  expect_error([&] { models::load_model(model_with(w, "tiny_bert", "max_position_embeddings", 1000000000).string()); },
               {"config.json", "field 'max_position_embeddings'",
                "position_embeddings.weight' should be [1000000000, ", "holds it as [64, "});
  expect_error([&] { models::load_model(model_with(w, "tiny_bert", "vocab_size", int64_t{1} << 50).string()); },
               {"config.json", "fields 'vocab_size' and 'hidden_size'", "word_embeddings.weight'"});
  expect_error([&] { models::load_model(model_with(w, "tiny_bert", "num_hidden_layers", 1 << 30).string()); },
               {"config.json", "field 'num_hidden_layers'", "does not hold"});
  expect_error([&] { models::load_model(model_with(w, "tiny_bert", "intermediate_size", int64_t{1} << 40).string()); },
               {"config.json", "'intermediate_size'", "beyond the limit of"});
  // The classifier is not in the file (it may be fresh): a fixed limit on the labels.
  expect_error([&] { models::load_model(model_with(w, "tiny_bert", "num_labels", int64_t{1} << 40).string()); },
               {"config.json", "1099511627776 labels", "'num_labels'", "exceed the limit of 1048576"});
  expect_error([&] { models::load_model(model_with(w, "tiny_distilbert", "n_layers", 5000).string()); },
               {"config.json", "field 'n_layers'", "does not hold"});
}

TEST(Limits, GgufMetadataClaimsMoreThanTheTensors) {
  Work w;
  const std::string src = (kFixtures / "models" / "tiny_llama.gguf").string();
  // A copy of the fixture GGUF with metadata key `key` replaced (and `extra` keys set).
  auto gguf_with = [&](const std::string& key, io::GgufValue v,
                       std::vector<std::pair<std::string, io::GgufValue>> extra = {}) {
    io::GgufFile f = io::GgufFile::open(src);
    std::vector<std::pair<std::string, io::GgufValue>> kv = f.metadata();
    extra.emplace_back(key, v);
    for (auto& [ek, ev] : extra) {
      bool found = false;
      for (auto& [k, val] : kv)
        if (k == ek) val = ev, found = true;
      if (!found) kv.emplace_back(ek, ev);
    }
    std::vector<std::pair<std::string, io::Tensor>> ts;
    for (const io::GgufTensorInfo& t : f.tensors()) ts.emplace_back(t.name, f.tensor(t.name));
    const std::string out = (w.dir / (key + ".gguf")).string();
    io::write_gguf(out, kv, ts);
    return out;
  };
  // The copy itself loads (so the refusals below are the keys').
  EXPECT_NO_THROW(models::load_model(gguf_with("llama.block_count", io::GgufValue::u32(2))));
  expect_error([&] { models::load_model(gguf_with("llama.embedding_length", io::GgufValue::u32(1u << 30),
                                                     {{"llama.attention.key_length", io::GgufValue::u32(8)}})); },
               {"llama.embedding_length.gguf", "key 'llama.embedding_length'",
                "tensor 'token_embd.weight' should be [100, 1073741824]", "holds it as [100, 32]"});
  expect_error([&] { models::load_model(gguf_with("llama.block_count", io::GgufValue::u32(1u << 30))); },
               {"key 'llama.block_count'", "tensor 'blk.1073741823.attn_norm.weight'", "does not hold"});
  expect_error([&] { models::load_model(gguf_with("llama.feed_forward_length", io::GgufValue::u32(1u << 31))); },
               {"'llama.feed_forward_length'", "parameters, beyond the limit of", "bytes of tensor data in"});
}

TEST(Limits, AdapterRankFarBeyondTheWeights) {
  // The adapter's matrices are allocated from r before its tensors are read.
  Work w;
  const fs::path dir = w.dir / "adapter";
  fs::copy(kFixtures / "peft" / "bert_qv", dir, fs::copy_options::recursive);
  io::json cfg = io::read_json_file((dir / "adapter_config.json").string());
  cfg["r"] = int64_t{1} << 40;
  io::write_json_file((dir / "adapter_config.json").string(), cfg);
  models::LoadOptions lo;
  lo.num_labels = 3;
  auto model = models::load_model((kFixtures / "models" / "tiny_bert").string(), lo);
  expect_error([&] { lorafit::peft::PeftModel::from_pretrained(*model, dir.string()); },
               {"adapter_config.json", "field 'r'", "1099511627776 exceeds the limit of 65536"});
}
