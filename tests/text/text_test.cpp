// Tokenizers against Hugging Face: every SST-2 dev sentence and the first 1000 Tiny Shakespeare
// lines must give exactly the ids that `tokenizers`/transformers give (fixtures written by
// tools/ref_tokens.py), for all-MiniLM-L6-v2 (WordPiece) and SmolLM2-135M (byte-level BPE, read
// from its GGUF). Plus tricky strings, pairs, truncation, decoding and bad input.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "lorafit/io.h"
#include "lorafit/text.h"
#include "text/text_internal.h"

namespace fs = std::filesystem;
using lorafit::Error;
using lorafit::text::BpeLists;
using lorafit::text::Encoding;
using lorafit::text::ModelKind;
using lorafit::text::Tokenizer;
using json = nlohmann::json;

namespace {

const std::string kModels = std::string(LORAFIT_SOURCE_DIR) + "/models";
const std::string kMiniLM = kModels + "/all-MiniLM-L6-v2";
const std::string kSmolGguf = kModels + "/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf";
const std::string kFixtures = std::string(LORAFIT_FIXTURES) + "/tokens";
const std::string kData = LORAFIT_DATA;  // tools/fetch_data.sh fills it (scripts/test.sh runs it)

// The real models are not in git; a missing one is a failure with the fix in the message.
void require_model(const std::string& path) {
  if (!fs::exists(path))
    throw std::runtime_error(path + " is missing: run tools/fetch_models.sh (it downloads the "
                             "models into models/)");
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> out;
  size_t b = 0;
  for (size_t e; (e = s.find('\n', b)) != std::string::npos; b = e + 1) out.push_back(s.substr(b, e - b));
  out.push_back(s.substr(b));
  return out;
}

std::vector<json> read_jsonl(const std::string& path) {
  std::vector<json> out;
  for (const std::string& line : split_lines(slurp(path)))
    if (!line.empty()) out.push_back(json::parse(line));
  return out;
}

// As tools/ref_tokens.py reads them.
const std::vector<std::string>& sst2() {
  static const std::vector<std::string> rows = [] {
    std::vector<std::string> lines = split_lines(slurp(kData + "/sst2/dev.tsv"));
    std::vector<std::string> r;
    size_t col = 0;
    {
      std::stringstream h(lines.at(0));
      std::string name;
      for (size_t k = 0; std::getline(h, name, '\t'); ++k)
        if (name == "content") col = k;
    }
    for (size_t i = 1; i < lines.size(); ++i) {
      if (lines[i].empty()) continue;
      std::vector<std::string> f;
      size_t b = 0;
      for (size_t e; (e = lines[i].find('\t', b)) != std::string::npos; b = e + 1) f.push_back(lines[i].substr(b, e - b));
      f.push_back(lines[i].substr(b));
      r.push_back(f.at(col));
    }
    return r;
  }();
  return rows;
}

const std::vector<std::string>& shakespeare() {
  static const std::vector<std::string> rows = [] {
    std::vector<std::string> l = split_lines(slurp(kData + "/tinyshakespeare/input.txt"));
    l.resize(1000);
    return l;
  }();
  return rows;
}

std::string fnv1a64(const std::string& s) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001B3ull;
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

const Tokenizer& minilm() {
  require_model(kMiniLM + "/tokenizer.json");
  static const Tokenizer t = Tokenizer::from_file(kMiniLM);
  return t;
}

const Tokenizer& smollm2() {
  require_model(kSmolGguf);
  static const Tokenizer t = Tokenizer::from_gguf(kSmolGguf);
  return t;
}

// The GGUF's lists with the plain GPT-2 pre-tokenizer: what transformers' GGUF loader builds.
const Tokenizer& smollm2_gguf_hf() {
  require_model(kSmolGguf);
  static const Tokenizer t = [] {
    BpeLists l = Tokenizer::bpe_lists_from_gguf(lorafit::io::GgufFile::open(kSmolGguf));
    EXPECT_EQ(l.pre, "smollm");
    l.pre = "gpt2";
    return Tokenizer::from_bpe_lists(l, kSmolGguf);
  }();
  return t;
}

std::vector<int32_t> ids_of(const json& j) { return j.get<std::vector<int32_t>>(); }

// Every row of a data set against its fixture: ids and the hash of the decoded text.
void check_dataset(const Tokenizer& tok, const std::vector<std::string>& rows,
                   const std::string& fixture, bool lossless_decode) {
  const std::vector<json> want = read_jsonl(kFixtures + "/" + fixture);
  ASSERT_EQ(want.size(), rows.size()) << fixture;
  size_t id_ok = 0, dec_ok = 0, round_ok = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    ASSERT_EQ(want[i]["i"].get<size_t>(), i);
    const Encoding e = tok.encode(rows[i]);
    const std::vector<int32_t> w = ids_of(want[i]["ids"]);
    if (e.ids == w) {
      ++id_ok;
    } else if (id_ok + 5 > i) {
      ADD_FAILURE() << fixture << " row " << i << ": ids differ from Hugging Face for \"" << rows[i] << "\"";
    }
    const std::string dec = tok.decode(w, true);
    dec_ok += fnv1a64(dec) == want[i]["dec"].get<std::string>();
    round_ok += dec == rows[i];
  }
  std::printf("[ %s ] exact ids %zu / %zu, decoded text %zu / %zu\n", fixture.c_str(), id_ok,
              rows.size(), dec_ok, rows.size());
  EXPECT_EQ(id_ok, rows.size()) << fixture;
  EXPECT_EQ(dec_ok, rows.size()) << fixture;
  if (lossless_decode) {
    EXPECT_EQ(round_ok, rows.size()) << fixture << ": byte-level decode must give the text back";
  }
}

const Tokenizer& by_name(const std::string& n) {
  if (n == "minilm") return minilm();
  if (n == "smollm2") return smollm2();
  if (n == "smollm2_gguf_hf") return smollm2_gguf_hf();
  throw std::runtime_error("unknown tokenizer " + n);
}

std::string case_text(const json& c, const std::string& key) {
  if (c.contains(key + "_sst2")) return sst2().at(c[key + "_sst2"].get<size_t>());
  return c.at(key).get<std::string>();
}

}  // namespace

// ---- data sets -------------------------------------------------------------------------------

TEST(MiniLM, Sst2DevExact) { check_dataset(minilm(), sst2(), "minilm_sst2.jsonl", false); }
TEST(MiniLM, ShakespeareExact) { check_dataset(minilm(), shakespeare(), "minilm_shakespeare.jsonl", false); }
TEST(SmolLM2, Sst2DevExact) { check_dataset(smollm2(), sst2(), "smollm2_sst2.jsonl", true); }
TEST(SmolLM2, ShakespeareExact) { check_dataset(smollm2(), shakespeare(), "smollm2_shakespeare.jsonl", true); }
TEST(SmolLM2, GgufLoaderVariantExactOnData) {
  check_dataset(smollm2_gguf_hf(), sst2(), "smollm2_sst2.jsonl", true);
  check_dataset(smollm2_gguf_hf(), shakespeare(), "smollm2_shakespeare.jsonl", true);
}

// ---- tricky strings, pairs, truncation, decode ----------------------------------------------

TEST(Cases, MatchHuggingFace) {
  const std::vector<json> cases = read_jsonl(kFixtures + "/cases.jsonl");
  ASSERT_GT(cases.size(), 300u);
  std::map<std::string, std::pair<int, int>> tally;  // tokenizer -> (ok, total)
  for (const json& c : cases) {
    const std::string name = c["tok"];
    const Tokenizer& tok = by_name(name);
    const bool add_special = c["add_special"];
    const size_t max_len = c.value("max_length", 0);
    const std::string a = case_text(c, "a");
    Encoding e;
    if (c["kind"] == "pair") {
      e = tok.encode_pair(a, case_text(c, "b"), add_special, max_len);
    } else {
      e = tok.encode(a, add_special, max_len);
    }
    std::string what = name + " " + c.dump().substr(0, 160);
    bool ok = true;
    if (e.ids != ids_of(c["ids"])) {
      ok = false;
      ADD_FAILURE() << "ids: " << what;
    }
    if (e.type_ids != ids_of(c["type_ids"])) {
      ok = false;
      ADD_FAILURE() << "type_ids: " << what;
    }
    ASSERT_EQ(e.special_mask.size(), e.ids.size());
    if (c.contains("decoded")) {
      if (tok.decode(e.ids, true) != c["decoded"].get<std::string>()) {
        ok = false;
        ADD_FAILURE() << "decode: " << what << " -> " << tok.decode(e.ids, true);
      }
      if (tok.decode(e.ids, false) != c["decoded_keep_special"].get<std::string>()) {
        ok = false;
        ADD_FAILURE() << "decode(keep special): " << what << " -> " << tok.decode(e.ids, false);
      }
    }
    tally[name].first += ok;
    tally[name].second += 1;
  }
  for (auto& [n, t] : tally) std::printf("[ cases ] %s: %d / %d\n", n.c_str(), t.first, t.second);
}

// The one place the two SmolLM2 variants differ: several spaces before a digit.
TEST(SmolLM2, DigitsSplitBeforeByteLevel) {
  const auto hub = smollm2().encode("a  1").ids;
  const auto gguf = smollm2_gguf_hf().encode("a  1").ids;
  EXPECT_NE(hub, gguf);
  EXPECT_EQ(hub.size(), 3u);  // a, "  ", 1
  EXPECT_EQ(gguf.size(), 4u);  // a, " ", " ", 1
}

TEST(Tokenizer, SpecialIdsAndVocab) {
  const auto& m = minilm().special_ids();
  EXPECT_EQ(minilm().model_kind(), ModelKind::WordPiece);
  EXPECT_EQ(minilm().vocab_size(), 30522u);
  EXPECT_EQ(m.cls, *minilm().token_to_id("[CLS]"));
  EXPECT_EQ(m.sep, *minilm().token_to_id("[SEP]"));
  EXPECT_EQ(m.pad, *minilm().token_to_id("[PAD]"));
  EXPECT_EQ(m.unk, *minilm().token_to_id("[UNK]"));
  EXPECT_EQ(m.mask, *minilm().token_to_id("[MASK]"));
  EXPECT_EQ(m.cls, 101);  // bert-base-uncased's ids
  EXPECT_EQ(m.sep, 102);
  EXPECT_EQ(minilm().num_special_tokens_to_add(false), 2u);
  EXPECT_EQ(minilm().num_special_tokens_to_add(true), 3u);
  EXPECT_EQ(minilm().model_max_length(), 512u);
  EXPECT_EQ(minilm().id_to_token(m.cls).value(), "[CLS]");
  EXPECT_FALSE(minilm().id_to_token(30522).has_value());
  EXPECT_FALSE(minilm().token_to_id("no-such-token").has_value());
  EXPECT_TRUE(minilm().is_special(101));
  EXPECT_FALSE(minilm().is_special(7592));

  const auto& s = smollm2().special_ids();
  EXPECT_EQ(smollm2().model_kind(), ModelKind::Bpe);
  EXPECT_EQ(smollm2().vocab_size(), 49152u);
  EXPECT_EQ(s.bos, *smollm2().token_to_id("<|im_start|>"));
  EXPECT_EQ(s.eos, *smollm2().token_to_id("<|im_end|>"));
  EXPECT_EQ(s.unk, *smollm2().token_to_id("<|endoftext|>"));
  EXPECT_EQ(smollm2().num_special_tokens_to_add(false), 0u);
  EXPECT_TRUE(smollm2().is_special(s.bos));
  EXPECT_EQ(smollm2().id_to_token(*smollm2().token_to_id("Ġthe")).value(), "Ġthe");
}

TEST(Tokenizer, TruncationErrorsAndLimits) {
  EXPECT_THROW(minilm().encode("hello", true, 1), Error);  // [CLS] and [SEP] alone do not fit
  EXPECT_EQ(minilm().encode("hello world", true, 2).ids.size(), 2u);
  EXPECT_EQ(minilm().encode("hello world again", false, 2).ids.size(), 2u);
  const Encoding p = minilm().encode_pair("a b c d e f", "g h", true, 7);
  EXPECT_EQ(p.ids.size(), 7u);
  EXPECT_EQ(p.special_mask.front(), 1);
  EXPECT_EQ(p.special_mask.back(), 1);
}

TEST(Tokenizer, ThreadsShareOneTokenizer) {
  // encode is const and the BPE cache is locked: the same ids from several threads.
  const auto& rows = shakespeare();
  std::vector<std::vector<int32_t>> serial;
  for (size_t i = 0; i < 200; ++i) serial.push_back(smollm2().encode(rows[i]).ids);
  std::vector<std::vector<int32_t>> par(200);
  std::vector<std::thread> th;
  for (int k = 0; k < 4; ++k)
    th.emplace_back([&, k] {
      for (size_t i = k; i < 200; i += 4) par[i] = smollm2().encode(rows[i]).ids;
    });
  for (auto& t : th) t.join();
  EXPECT_EQ(serial, par);
}

// ---- BERT's Unicode predicates over every code point ----------------------------------------

namespace {
std::set<char32_t> expand(const json& ranges) {
  std::set<char32_t> s;
  for (const json& r : ranges)
    for (auto c = r[0].get<char32_t>(); c <= r[1].get<char32_t>(); ++c) s.insert(c);
  return s;
}
bool py_isspace(char32_t c) {
  return (c >= 0x1C && c <= 0x1F) || lorafit::text::is_rust_whitespace(c);
}
}  // namespace

TEST(BertUnicode, EveryCodePointAsHuggingFace) {
  namespace t = lorafit::text;
  const json j = json::parse(slurp(kFixtures + "/bert_unicode.json"));
  const auto control = expand(j["control"]), stripped = expand(j["stripped"]),
             punct = expand(j["punctuation"]);
  const auto clean = t::make_bert_normalizer(true, false, false, false);
  const auto strip = t::make_bert_normalizer(false, false, true, false);
  const auto pre = t::make_bert_pre_tokenizer();
  int bad_control = 0, bad_strip = 0, bad_punct = 0;
  for (char32_t c = 0; c < 0x110000; ++c) {
    if (c >= 0xD800 && c <= 0xDFFF) continue;
    std::string s;
    t::utf8_append(s, c);
    if ((clean->normalize(s).empty()) != (control.count(c) > 0) && bad_control++ < 10)
      ADD_FAILURE() << "clean_text on U+" << std::hex << uint32_t(c);
    if ((strip->normalize(s).empty()) != (stripped.count(c) > 0) && bad_strip++ < 10)
      ADD_FAILURE() << "strip_accents on U+" << std::hex << uint32_t(c);
    if (py_isspace(c)) continue;
    std::vector<std::string> pieces{"a" + s + "b"};
    pre->split(pieces);
    const bool isolated = pieces.size() == 3 && pieces[1] == s;
    if (isolated != (punct.count(c) > 0) && bad_punct++ < 10)
      ADD_FAILURE() << "punctuation on U+" << std::hex << uint32_t(c);
  }
  EXPECT_EQ(bad_control, 0);
  EXPECT_EQ(bad_strip, 0);
  EXPECT_EQ(bad_punct, 0);
}

// ---- bad input -------------------------------------------------------------------------------

namespace {
// Runs f, expects a lorafit::Error whose message holds every one of `parts`.
template <class F>
void expect_error(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

std::string minimal_wordpiece(const std::string& model_type) {
  return R"({"model": {"type": ")" + model_type +
         R"(", "vocab": {"[UNK]": 0, "a": 1}, "unk_token": "[UNK]"}, "normalizer": null,
             "pre_tokenizer": {"type": "BertPreTokenizer"}, "post_processor": null, "decoder": null})";
}
}  // namespace

TEST(BadInput, MissingFile) {
  expect_error([] { Tokenizer::from_file("/nonexistent/dir/tokenizer.json"); },
               {"[text]", "/nonexistent/dir/tokenizer.json", "not found"});
  const fs::path dir = fs::temp_directory_path() / "lorafit_text_empty_dir";
  fs::create_directories(dir);
  expect_error([&] { Tokenizer::from_file(dir.string()); }, {(dir / "tokenizer.json").string()});
  fs::remove_all(dir);
}

TEST(BadInput, BadJson) {
  const fs::path dir = fs::temp_directory_path() / "lorafit_text_bad_json";
  fs::create_directories(dir);
  const fs::path f = dir / "tokenizer.json";
  std::ofstream(f) << "{\"model\": {\"type\": \"WordPiece\",";
  expect_error([&] { Tokenizer::from_file(f.string()); }, {f.string(), "invalid JSON"});
  std::ofstream(f) << minimal_wordpiece("WordPiece");
  std::ofstream(dir / "tokenizer_config.json") << "{oops";
  expect_error([&] { Tokenizer::from_file(f.string()); }, {"tokenizer_config.json", "invalid JSON"});
  fs::remove_all(dir);
}

TEST(BadInput, UnknownOrMalformedFields) {
  expect_error([] { Tokenizer::from_json(minimal_wordpiece("Unigram"), "", "x/tokenizer.json"); },
               {"x/tokenizer.json", "model.type", "'Unigram' is not supported"});
  expect_error([] { Tokenizer::from_json(R"({"normalizer": null})", "", "t.json"); },
               {"t.json", "'model'", "missing"});
  expect_error([] { Tokenizer::from_json(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}})", "", "t.json"); },
               {"t.json", "merge 0", "'b' is not in the vocabulary"});
  expect_error([] { Tokenizer::from_json(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [7]}})", "", "t.json"); },
               {"t.json", "model.merges[0]"});
  expect_error([] { Tokenizer::from_json(R"({"model": {"type": "WordPiece", "vocab": {"a": "x"}}})", "", "t.json"); },
               {"t.json", "model.vocab.a", "expected integer"});
  std::string j = minimal_wordpiece("WordPiece");
  j.replace(j.find("\"normalizer\": null"), 18, R"("normalizer": {"type": "Precompiled"})");
  expect_error([&] { Tokenizer::from_json(j, "", "t.json"); }, {"normalizer.type", "Precompiled"});
  BpeLists l;
  l.tokens = {"a", "b"};
  l.merges = {"a b"};
  expect_error([&] { Tokenizer::from_bpe_lists(l, "m.gguf"); }, {"m.gguf", "'ab' is not in the vocabulary"});
  l.merges = {"ab"};
  expect_error([&] { Tokenizer::from_bpe_lists(l, "m.gguf"); }, {"m.gguf", "tokenizer.ggml.merges[0]"});
  l.merges.clear();
  l.pre = "no-such-pre";
  expect_error([&] { Tokenizer::from_bpe_lists(l, "m.gguf"); }, {"m.gguf", "tokenizer.ggml.pre", "no-such-pre"});
}

TEST(BadInput, InvalidUtf8Text) {
  for (const std::string& bad : {std::string("abc\xff"), std::string("\xc3"), std::string("\xed\xa0\x80"),
                                std::string("\xc0\xaf"), std::string("ok \xf4\x90\x80\x80")}) {
    expect_error([&] { minilm().encode(bad); }, {"tokenizer.json", "not valid UTF-8"});
    expect_error([&] { smollm2().encode(bad); }, {".gguf", "not valid UTF-8"});
    expect_error([&] { minilm().encode_pair("fine", bad); }, {"not valid UTF-8"});
  }
}

TEST(Decode, InvalidBytesBecomeReplacementCharacters) {
  // Byte-level tokens for a lone UTF-8 lead byte: decoded lossily, as Rust's from_utf8_lossy.
  const auto ids = smollm2().encode("😀").ids;
  ASSERT_GE(ids.size(), 2u);
  const std::string half = smollm2().decode(std::vector<int32_t>(ids.begin(), ids.end() - 1));
  EXPECT_NE(half.find("\xEF\xBF\xBD"), std::string::npos);
  EXPECT_EQ(smollm2().decode(ids), "😀");
  EXPECT_EQ(lorafit::text::utf8_lossy("a\xF0\x9F\x98z"), "a\xEF\xBF\xBDz");  // one U+FFFD per maximal subpart
  EXPECT_EQ(lorafit::text::utf8_lossy("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");
}

// ---- GGUF adapter on small files written with io::write_gguf --------------------------------

namespace {
std::string write_tiny_gguf(const std::string& name, const std::string& model,
                            std::vector<std::pair<std::string, lorafit::io::GgufValue>> extra = {}) {
  using lorafit::io::GgufType;
  using lorafit::io::GgufValue;
  const std::string path = (fs::temp_directory_path() / name).string();
  // Byte-level spelling: "Ġ" is the space byte.
  std::vector<std::pair<std::string, GgufValue>> kv = {
      {"general.architecture", GgufValue::string("llama")},
      {"tokenizer.ggml.model", GgufValue::string(model)},
      {"tokenizer.ggml.pre", GgufValue::string("gpt2")},
      {"tokenizer.ggml.tokens", GgufValue::string_array({"<s>", "h", "i", "Ġ", "hi", "Ġhi", "<tool>"})},
      {"tokenizer.ggml.token_type", GgufValue::int_array(GgufType::I32, {3, 1, 1, 1, 1, 1, 4})},
      {"tokenizer.ggml.merges", GgufValue::string_array({"h i", "Ġ hi"})},
      {"tokenizer.ggml.bos_token_id", GgufValue::u32(0)},
  };
  for (auto& e : extra) kv.push_back(std::move(e));
  lorafit::io::write_gguf(path, kv, {});
  return path;
}
}  // namespace

TEST(Gguf, TinyVocabularyThroughTheAdapter) {
  const std::string path = write_tiny_gguf("lorafit_text_tiny.gguf", "gpt2",
                                           {{"tokenizer.ggml.add_bos_token", lorafit::io::GgufValue::boolean(true)}});
  const Tokenizer t = Tokenizer::from_gguf(path);
  // "hi hi<tool>hi": merges give hi, Ġhi; <tool> is a user-defined token matched whole; BOS first.
  EXPECT_EQ(t.encode("hi hi<tool>hi").ids, (std::vector<int32_t>{0, 4, 5, 6, 4}));
  EXPECT_EQ(t.encode("hi", false).ids, (std::vector<int32_t>{4}));
  EXPECT_EQ(t.decode(t.encode("hi hi<tool>hi").ids, true), "hi hi<tool>hi");  // <tool> is not special
  EXPECT_EQ(t.decode(t.encode("hi hi").ids, false), "<s>hi hi");
  EXPECT_TRUE(t.is_special(0));
  EXPECT_FALSE(t.is_special(6));
  EXPECT_EQ(t.special_ids().bos, 0);
  fs::remove(path);
}

TEST(Gguf, UnsupportedModelIsAnError) {
  const std::string path = write_tiny_gguf("lorafit_text_llama.gguf", "llama");
  expect_error([&] { Tokenizer::from_gguf(path); }, {path, "tokenizer.ggml.model", "'llama'"});
  fs::remove(path);
  expect_error([] { Tokenizer::from_gguf("/nonexistent/x.gguf"); }, {"/nonexistent/x.gguf"});
}

// ---- chat templates (fixture: tools/ref_chat.py, transformers' apply_chat_template) ----------

namespace {

lorafit::io::json chat_fixture() {
  return lorafit::io::read_json_file(std::string(LORAFIT_FIXTURES) + "/tokens/chat.json");
}

}  // namespace

TEST(Chat, SmolLM2TemplateIsReadFromTheGgufAndDetected) {
  const auto fx = chat_fixture();
  EXPECT_EQ(smollm2().chat_template(), fx["templates"]["smollm2"].get<std::string>());
  auto t = lorafit::text::ChatTemplate::for_tokenizer(smollm2());
  EXPECT_EQ(t.format(), lorafit::text::ChatFormat::ChatML);
  EXPECT_EQ(t.default_system(), "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  EXPECT_EQ(t.bos_text, fx["bos_token"].get<std::string>());
}

TEST(Chat, RenderingEqualsTransformersAndSegmentIdsEqualWholeTextIds) {
  using lorafit::text::ChatMessage;
  using lorafit::text::ChatTemplate;
  const auto fx = chat_fixture();
  int checked = 0, with_ids = 0;
  for (const auto& c : fx["cases"]) {
    const std::string name = c["template"].get<std::string>();
    ChatTemplate t = ChatTemplate::detect(fx["templates"][name].get<std::string>(), name);
    t.bos_text = fx["bos_token"].get<std::string>();
    std::vector<ChatMessage> msgs;
    for (const auto& m : c["messages"]) msgs.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    const bool gen = c["add_generation_prompt"].get<bool>();
    const auto segs = t.render(msgs, gen);
    std::string text;
    for (const auto& s : segs) text += s.text;
    EXPECT_EQ(text, c["text"].get<std::string>()) << name << " case " << checked;
    ++checked;
    if (!c.contains("ids")) continue;
    // Instruction data tokenizes segment by segment (to know which ids carry loss): that must
    // give the ids of the whole rendered text.
    std::vector<int32_t> ids;
    for (const auto& s : segs) {
      auto e = smollm2().encode(s.text, false);
      ids.insert(ids.end(), e.ids.begin(), e.ids.end());
    }
    EXPECT_EQ(ids, c["ids"].get<std::vector<int32_t>>()) << "case " << checked - 1;
    EXPECT_EQ(smollm2().encode(text, false).ids, ids);
    ++with_ids;
  }
  EXPECT_EQ(checked, 15);
  EXPECT_GE(with_ids, 5);
}

TEST(Chat, AssistantRepliesAndTheirEndTokenAreTheTrainedSegments) {
  using lorafit::text::ChatTemplate;
  const auto fx = chat_fixture();
  auto t = ChatTemplate::detect(fx["templates"]["chatml"].get<std::string>(), "chatml");
  auto segs = t.render({{"user", "hi"}, {"assistant", "hello"}, {"user", "bye"}, {"assistant", "ciao"}}, false);
  std::vector<std::string> trained;
  for (auto& s : segs)
    if (s.trained) trained.push_back(s.text);
  EXPECT_EQ(trained, (std::vector<std::string>{"hello<|im_end|>", "ciao<|im_end|>"}));
  auto l3 = ChatTemplate::detect(fx["templates"]["llama3"].get<std::string>(), "llama3");
  segs = l3.render({{"user", "q"}, {"assistant", "  a  "}}, false);
  ASSERT_EQ(segs.size(), 2u);
  EXPECT_EQ(segs[1].text, "a<|eot_id|>");
  EXPECT_TRUE(segs[1].trained);
}

TEST(Chat, UnknownTemplateOrChoiceIsRefusedWithTheChoices) {
  try {
    lorafit::text::ChatTemplate::detect("{{ messages[0]['content'] }}<s>[INST]", "my-model");
    FAIL() << "expected an error";
  } catch (const lorafit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("my-model"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--chat-template"), std::string::npos) << e.what();
  }
  EXPECT_THROW(lorafit::text::ChatTemplate::for_tokenizer(smollm2(), "vicuna"), lorafit::Error);
  auto plain = lorafit::text::ChatTemplate::for_tokenizer(smollm2(), "plain");
  EXPECT_EQ(plain.render_text({{"user", "u"}, {"assistant", "a"}}, false),
            "### User:\nu\n\n### Assistant:\na<|im_end|>\n\n");
}

// fuzz_tokenizer_json: a number beyond 64 bits in tokenizer.json escaped as nlohmann's
// out_of_range (std::terminate); it is now an error naming the file.
TEST(TokenizerJson, NumberOverflowIsAnErrorNotATerminate) {
  std::ifstream in(std::string(LORAFIT_FIXTURES) + "/fuzz/tokenizer_number_overflow.json", std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_FALSE(text.empty());
  std::string msg = "(no error)";
  try {
    (void)lorafit::text::Tokenizer::from_json(text, "", "fuzz/tokenizer.json");
  } catch (const lorafit::Error& e) {
    msg = e.what();
  }
  EXPECT_NE(msg.find("fuzz/tokenizer.json: invalid JSON"), std::string::npos) << msg;
  EXPECT_NE(msg.find("number overflow"), std::string::npos) << msg;
}
