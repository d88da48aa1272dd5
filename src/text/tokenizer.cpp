// Tokenizer: loading from tokenizer.json / lists, and the encode/decode pipeline of `tokenizers`
// (tokenizer/mod.rs, added_vocabulary.rs, processors/template.rs, utils/truncation.rs).
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "text/text_internal.h"

namespace lorafit::text {

using json = nlohmann::json;

namespace {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false, normalized = false, lstrip = false, rstrip = false, single_word = false;
};

// One item of a TemplateProcessing template: a sequence ($A / $B) or special token ids.
struct TemplateItem {
  bool is_sequence = false;
  int sequence = 0;  // 0: A, 1: B
  std::vector<int32_t> ids;  // special token ids when !is_sequence
  int32_t type_id = 0;
};

// One piece of a split text: either an added token (id >= 0) or text still to tokenize.
struct Segment {
  int32_t id = -1;
  std::string text;
};

}  // namespace

struct Tokenizer::Impl {
  std::string origin;
  ModelKind kind = ModelKind::Bpe;
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<Model> model;
  std::unique_ptr<Decoder> decoder;
  std::vector<AddedToken> added;
  std::unordered_map<std::string, size_t> added_by_content;
  std::unordered_map<int32_t, size_t> added_by_id;
  bool has_template = false;
  bool roberta_type_ids = false;  // RobertaProcessing sets every type id to 0
  std::vector<TemplateItem> single, pair;
  SpecialTokenIds special;
  size_t model_max_length = 0;
  std::string chat_template;  // Jinja source, "" when the tokenizer has none

  void add_token(AddedToken t) {
    if (t.content.empty()) fail(origin + ": an added token (id " + std::to_string(t.id) + ") is empty");
    if (added_by_content.count(t.content)) return;  // first one wins, as in `tokenizers`
    added_by_content.emplace(t.content, added.size());
    added_by_id.emplace(t.id, added.size());
    added.push_back(std::move(t));
  }

  std::optional<int32_t> token_to_id(std::string_view t) const {
    auto it = added_by_content.find(std::string(t));
    if (it != added_by_content.end()) return added[it->second].id;
    return model->token_to_id(t);
  }

  // Splits s around the added tokens whose `normalized` flag equals `normalized`, leftmost-longest
  // first (the Aho-Corasick LeftmostLongest match of added_vocabulary.rs).
  void split_added(const std::string& s, bool normalized, std::vector<Segment>& out) const {
    size_t text_start = 0, i = 0;
    while (i < s.size()) {
      const AddedToken* best = nullptr;
      for (const AddedToken& t : added) {
        if (t.normalized != normalized || t.content.size() > s.size() - i) continue;
        if (s.compare(i, t.content.size(), t.content) != 0) continue;
        if (best && best->content.size() >= t.content.size()) continue;
        if (t.single_word && !single_word_ok(s, i, i + t.content.size())) continue;
        best = &t;
      }
      if (!best) {
        ++i;
        continue;
      }
      size_t b = i, e = i + best->content.size();
      if (best->lstrip) b = skip_space_back(s, text_start, b);
      if (best->rstrip) e = skip_space_forward(s, e);
      if (b > text_start) out.push_back({-1, s.substr(text_start, b - text_start)});
      out.push_back({best->id, {}});
      text_start = i = e;
    }
    if (text_start < s.size()) out.push_back({-1, s.substr(text_start)});
  }

  // lstrip / rstrip swallow the (Unicode) whitespace next to the token.
  static size_t skip_space_back(const std::string& s, size_t floor, size_t b) {
    while (b > floor) {
      size_t k = b - 1;
      while (k > floor && (static_cast<uint8_t>(s[k]) & 0xC0) == 0x80) --k;
      if (!is_rust_whitespace(utf8_decode(std::string_view(s).substr(k, b - k))[0])) break;
      b = k;
    }
    return b;
  }
  static size_t skip_space_forward(const std::string& s, size_t e) {
    while (e < s.size()) {
      const auto b0 = static_cast<uint8_t>(s[e]);
      const size_t n = b0 < 0x80 ? 1 : b0 < 0xE0 ? 2 : b0 < 0xF0 ? 3 : 4;
      if (!is_rust_whitespace(utf8_decode(std::string_view(s).substr(e, n))[0])) break;
      e += n;
    }
    return e;
  }

  static bool is_word_char(char32_t c) { return c == U'_' || is_letter(c) || is_number(c); }
  static bool single_word_ok(const std::string& s, size_t b, size_t e) {
    if (b > 0) {
      size_t k = b - 1;
      while (k > 0 && (static_cast<uint8_t>(s[k]) & 0xC0) == 0x80) --k;
      if (is_word_char(utf8_decode(std::string_view(s).substr(k, b - k))[0])) return false;
    }
    if (e < s.size()) {
      const std::u32string c = utf8_decode(std::string_view(s).substr(e, std::min<size_t>(4, s.size() - e)));
      if (!c.empty() && is_word_char(c[0])) return false;
    }
    return true;
  }

  // Text -> ids without post-processing.
  std::vector<int32_t> tokenize(std::string_view text) const {
    const size_t bad = utf8_invalid_at(text);
    if (bad != std::string_view::npos)
      fail(origin + ": input text is not valid UTF-8 (byte offset " + std::to_string(bad) + ")");
    std::vector<int32_t> ids;
    std::vector<Segment> raw;
    split_added(std::string(text), false, raw);
    for (Segment& seg : raw) {
      if (seg.id >= 0) {
        ids.push_back(seg.id);
        continue;
      }
      std::string norm = normalizer ? normalizer->normalize(seg.text) : std::move(seg.text);
      std::vector<Segment> parts;
      split_added(norm, true, parts);
      for (Segment& part : parts) {
        if (part.id >= 0) {
          ids.push_back(part.id);
          continue;
        }
        std::vector<std::string> pieces{std::move(part.text)};
        if (pre_tokenizer) pre_tokenizer->split(pieces);
        for (const std::string& p : pieces) model->tokenize(p, ids);
      }
    }
    return ids;
  }

  size_t added_count(bool is_pair) const {
    if (!has_template) return 0;
    size_t n = 0;
    for (const TemplateItem& it : is_pair ? pair : single)
      if (!it.is_sequence) n += it.ids.size();
    return n;
  }

  Encoding post_process(std::vector<int32_t> a, std::vector<int32_t>* b, bool add_special,
                        size_t max_length) const {
    if (max_length > 0) {
      const size_t n_added = add_special ? added_count(b != nullptr) : 0;
      if (max_length < n_added)
        fail(origin + ": max_length " + std::to_string(max_length) + " is smaller than the " +
             std::to_string(n_added) + " special tokens the post-processor adds");
      truncate(a, b, max_length - n_added);
    }
    Encoding enc;
    auto put = [&](const std::vector<int32_t>& ids, int32_t type, uint8_t special_flag) {
      enc.ids.insert(enc.ids.end(), ids.begin(), ids.end());
      enc.type_ids.insert(enc.type_ids.end(), ids.size(), type);
      enc.special_mask.insert(enc.special_mask.end(), ids.size(), special_flag);
    };
    const int32_t type_b = roberta_type_ids ? 0 : 1;
    if (!add_special || !has_template) {
      put(a, 0, 0);
      if (b) put(*b, type_b, 0);
      return enc;
    }
    for (const TemplateItem& it : b ? pair : single) {
      if (it.is_sequence) {
        put(it.sequence == 0 ? a : *b, it.type_id, 0);
      } else {
        put(it.ids, it.type_id, 1);
      }
    }
    return enc;
  }

  // utils/truncation.rs, strategy LongestFirst, direction right, stride 0.
  static void truncate(std::vector<int32_t>& a, std::vector<int32_t>* b, size_t max_length) {
    const size_t total = a.size() + (b ? b->size() : 0);
    if (total <= max_length) return;
    if (!b) {
      a.resize(max_length);
      return;
    }
    size_t n1 = a.size(), n2 = b->size();
    const bool swap = n1 > n2;  // make n1 the shorter one
    if (swap) std::swap(n1, n2);
    if (n1 > max_length) {
      n2 = n1;
    } else {
      n2 = std::max(n1, max_length - n1);
    }
    if (n1 + n2 > max_length) {
      n1 = max_length / 2;
      n2 = n1 + max_length % 2;
    }
    if (swap) std::swap(n1, n2);
    a.resize(std::min(a.size(), n1));
    b->resize(std::min(b->size(), n2));
  }
};

// ---------------------------------------------------------------------------------------------
// Loading tokenizer.json
// ---------------------------------------------------------------------------------------------

namespace {

struct Ctx {
  std::string origin;
  [[noreturn]] void bad(const std::string& field, const std::string& what) const {
    fail(origin + ": field '" + field + "': " + what);
  }
  const json& need(const json& obj, const std::string& key, const std::string& path) const {
    if (!obj.is_object()) bad(path, std::string("expected an object, got ") + obj.type_name());
    auto it = obj.find(key);
    if (it == obj.end()) bad(path.empty() ? key : path + "." + key, "is missing");
    return *it;
  }
  std::string str(const json& obj, const std::string& key, const std::string& path) const {
    const json& v = need(obj, key, path);
    if (!v.is_string()) bad(join(path, key), std::string("expected string, got ") + v.type_name());
    return v.get<std::string>();
  }
  std::string opt_str(const json& obj, const std::string& key, const std::string& path,
                      const std::string& dflt) const {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return dflt;
    if (!it->is_string()) bad(join(path, key), std::string("expected string, got ") + it->type_name());
    return it->get<std::string>();
  }
  bool opt_bool(const json& obj, const std::string& key, const std::string& path, bool dflt) const {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return dflt;
    if (!it->is_boolean()) bad(join(path, key), std::string("expected bool, got ") + it->type_name());
    return it->get<bool>();
  }
  int64_t integer(const json& v, const std::string& field) const {
    if (!v.is_number_integer()) bad(field, std::string("expected integer, got ") + v.type_name());
    return v.get<int64_t>();
  }
  int32_t id(const json& v, const std::string& field) const {
    const int64_t x = integer(v, field);
    if (x < 0 || x > INT32_MAX) bad(field, "id " + std::to_string(x) + " is out of range");
    return static_cast<int32_t>(x);
  }
  const json& array(const json& obj, const std::string& key, const std::string& path) const {
    const json& v = need(obj, key, path);
    if (!v.is_array()) bad(join(path, key), std::string("expected array, got ") + v.type_name());
    return v;
  }
  static std::string join(const std::string& path, const std::string& key) {
    return path.empty() ? key : path + "." + key;
  }
  std::string type_of(const json& obj, const std::string& path) const {
    return str(obj, "type", path);
  }
};

std::unique_ptr<Normalizer> parse_normalizer(const Ctx& c, const json& j, const std::string& path) {
  if (j.is_null()) return nullptr;
  const std::string t = c.type_of(j, path);
  if (t == "BertNormalizer") {
    const bool lower = c.opt_bool(j, "lowercase", path, true);
    // strip_accents: null means "follow lowercase" (normalizers/bert.rs).
    const bool strip = c.opt_bool(j, "strip_accents", path, lower);
    return make_bert_normalizer(c.opt_bool(j, "clean_text", path, true),
                                c.opt_bool(j, "handle_chinese_chars", path, true), strip, lower);
  }
  if (t == "Lowercase") return make_lowercase_normalizer();
  if (t == "NFD" || t == "NFKD" || t == "NFC" || t == "NFKC") return make_unicode_normalizer(t);
  if (t == "StripAccents") return make_strip_accents_normalizer();
  if (t == "Sequence") {
    std::vector<std::unique_ptr<Normalizer>> v;
    const json& arr = c.array(j, "normalizers", path);
    for (size_t i = 0; i < arr.size(); ++i) {
      auto n = parse_normalizer(c, arr[i], path + ".normalizers[" + std::to_string(i) + "]");
      if (n) v.push_back(std::move(n));
    }
    return make_normalizer_sequence(std::move(v));
  }
  c.bad(path + ".type", "'" + t + "' is not supported");
}

SplitBehavior parse_behavior(const Ctx& c, const std::string& s, const std::string& field) {
  if (s == "Removed") return SplitBehavior::Removed;
  if (s == "Isolated") return SplitBehavior::Isolated;
  if (s == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
  if (s == "MergedWithNext") return SplitBehavior::MergedWithNext;
  if (s == "Contiguous") return SplitBehavior::Contiguous;
  c.bad(field, "'" + s + "' is not a split behavior");
}

std::unique_ptr<PreTokenizer> parse_pre_tokenizer(const Ctx& c, const json& j,
                                                  const std::string& path) {
  if (j.is_null()) return nullptr;
  const std::string t = c.type_of(j, path);
  if (t == "BertPreTokenizer") return make_bert_pre_tokenizer();
  if (t == "ByteLevel")
    return make_byte_level_pre_tokenizer(c.opt_bool(j, "add_prefix_space", path, true),
                                         c.opt_bool(j, "use_regex", path, true));
  if (t == "Digits") return make_digits_pre_tokenizer(c.opt_bool(j, "individual_digits", path, false));
  if (t == "Whitespace") return make_whitespace_pre_tokenizer();
  if (t == "WhitespaceSplit") return make_whitespace_split_pre_tokenizer();
  if (t == "Split") {
    const json& pat = c.need(j, "pattern", path);
    bool is_regex;
    std::string p;
    if (pat.is_object() && pat.contains("Regex")) {
      is_regex = true;
      p = c.str(pat, "Regex", path + ".pattern");
    } else if (pat.is_object() && pat.contains("String")) {
      is_regex = false;
      p = c.str(pat, "String", path + ".pattern");
    } else {
      c.bad(path + ".pattern", "expected {\"Regex\": ...} or {\"String\": ...}");
    }
    const SplitBehavior b = parse_behavior(c, c.str(j, "behavior", path), path + ".behavior");
    return make_split_pre_tokenizer(p, is_regex, b, c.opt_bool(j, "invert", path, false),
                                    c.origin + ": " + path + ".pattern");
  }
  if (t == "Sequence") {
    std::vector<std::unique_ptr<PreTokenizer>> v;
    const json& arr = c.array(j, "pretokenizers", path);
    for (size_t i = 0; i < arr.size(); ++i) {
      auto p = parse_pre_tokenizer(c, arr[i], path + ".pretokenizers[" + std::to_string(i) + "]");
      if (p) v.push_back(std::move(p));
    }
    return make_pre_tokenizer_sequence(std::move(v));
  }
  c.bad(path + ".type", "'" + t + "' is not supported");
}

std::unique_ptr<Decoder> parse_decoder(const Ctx& c, const json& j, const std::string& path) {
  if (j.is_null()) return nullptr;
  const std::string t = c.type_of(j, path);
  if (t == "WordPiece")
    return make_wordpiece_decoder(c.opt_str(j, "prefix", path, "##"),
                                  c.opt_bool(j, "cleanup", path, true));
  if (t == "ByteLevel") return make_byte_level_decoder();
  if (t == "Sequence") {
    std::vector<std::unique_ptr<Decoder>> v;
    const json& arr = c.array(j, "decoders", path);
    for (size_t i = 0; i < arr.size(); ++i) {
      auto d = parse_decoder(c, arr[i], path + ".decoders[" + std::to_string(i) + "]");
      if (d) v.push_back(std::move(d));
    }
    return make_decoder_sequence(std::move(v));
  }
  c.bad(path + ".type", "'" + t + "' is not supported");
}

// ["[SEP]", 102] as BertProcessing/RobertaProcessing store it.
int32_t parse_token_pair(const Ctx& c, const json& j, const std::string& field) {
  if (!j.is_array() || j.size() != 2 || !j[0].is_string())
    c.bad(field, "expected [token, id]");
  return c.id(j[1], field + "[1]");
}

void parse_post_processor(const Ctx& c, const json& j, const std::string& path,
                          Tokenizer::Impl& impl) {
  if (j.is_null()) return;
  const std::string t = c.type_of(j, path);
  auto special = [](int32_t id, int32_t type) {
    TemplateItem it;
    it.ids = {id};
    it.type_id = type;
    return it;
  };
  auto seq = [](int s, int32_t type) {
    TemplateItem it;
    it.is_sequence = true;
    it.sequence = s;
    it.type_id = type;
    return it;
  };
  auto set_template = [&](std::vector<TemplateItem> s, std::vector<TemplateItem> p) {
    if (impl.has_template) c.bad(path, "more than one processor adds special tokens");
    impl.has_template = true;
    impl.single = std::move(s);
    impl.pair = std::move(p);
  };
  if (t == "ByteLevel") return;  // only trims offsets
  if (t == "BertProcessing") {
    const int32_t sep = parse_token_pair(c, c.need(j, "sep", path), path + ".sep");
    const int32_t cls = parse_token_pair(c, c.need(j, "cls", path), path + ".cls");
    set_template({special(cls, 0), seq(0, 0), special(sep, 0)},
                 {special(cls, 0), seq(0, 0), special(sep, 0), seq(1, 1), special(sep, 1)});
    return;
  }
  if (t == "RobertaProcessing") {
    const int32_t sep = parse_token_pair(c, c.need(j, "sep", path), path + ".sep");
    const int32_t cls = parse_token_pair(c, c.need(j, "cls", path), path + ".cls");
    impl.roberta_type_ids = true;
    set_template({special(cls, 0), seq(0, 0), special(sep, 0)},
                 {special(cls, 0), seq(0, 0), special(sep, 0), special(sep, 0), seq(1, 0),
                  special(sep, 0)});
    return;
  }
  if (t == "TemplateProcessing") {
    const json& specials = c.need(j, "special_tokens", path);
    auto parse_items = [&](const std::string& key) {
      std::vector<TemplateItem> items;
      const json& arr = c.array(j, key, path);
      for (size_t i = 0; i < arr.size(); ++i) {
        const std::string f = path + "." + key + "[" + std::to_string(i) + "]";
        const json& e = arr[i];
        if (e.is_object() && e.contains("Sequence")) {
          const json& s = e["Sequence"];
          const std::string id = c.str(s, "id", f + ".Sequence");
          if (id != "A" && id != "B") c.bad(f + ".Sequence.id", "expected 'A' or 'B', got '" + id + "'");
          items.push_back(seq(id == "A" ? 0 : 1, c.id(c.need(s, "type_id", f + ".Sequence"), f + ".Sequence.type_id")));
        } else if (e.is_object() && e.contains("SpecialToken")) {
          const json& s = e["SpecialToken"];
          const std::string id = c.str(s, "id", f + ".SpecialToken");
          const json& sp = c.need(specials, id, path + ".special_tokens");
          TemplateItem it;
          for (const json& x : c.array(sp, "ids", path + ".special_tokens." + id))
            it.ids.push_back(c.id(x, path + ".special_tokens." + id + ".ids"));
          it.type_id = c.id(c.need(s, "type_id", f + ".SpecialToken"), f + ".SpecialToken.type_id");
          items.push_back(std::move(it));
        } else {
          c.bad(f, "expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
        }
      }
      return items;
    };
    set_template(parse_items("single"), parse_items("pair"));
    return;
  }
  if (t == "Sequence") {
    const json& arr = c.array(j, "processors", path);
    for (size_t i = 0; i < arr.size(); ++i)
      parse_post_processor(c, arr[i], path + ".processors[" + std::to_string(i) + "]", impl);
    return;
  }
  c.bad(path + ".type", "'" + t + "' is not supported");
}

std::vector<std::pair<std::string, int32_t>> parse_vocab(const Ctx& c, const json& model) {
  const json& v = c.need(model, "vocab", "model");
  if (!v.is_object()) c.bad("model.vocab", std::string("expected an object, got ") + v.type_name());
  std::vector<std::pair<std::string, int32_t>> out;
  out.reserve(v.size());
  for (auto it = v.begin(); it != v.end(); ++it) out.emplace_back(it.key(), c.id(it.value(), "model.vocab." + it.key()));
  return out;
}

std::pair<std::string, std::string> split_merge(const Ctx& c, const std::string& m,
                                                const std::string& field) {
  const size_t sp = m.find(' ');
  if (sp == std::string::npos || m.find(' ', sp + 1) != std::string::npos)
    c.bad(field, "merge '" + m + "' is not two tokens separated by one space");
  return {m.substr(0, sp), m.substr(sp + 1)};
}

std::unique_ptr<Model> parse_model(const Ctx& c, const json& j, ModelKind& kind) {
  if (!j.is_object()) c.bad("model", std::string("expected an object, got ") + j.type_name());
  std::string t = c.opt_str(j, "type", "model", "");
  if (t.empty()) t = j.contains("merges") ? "BPE" : j.contains("max_input_chars_per_word") ? "WordPiece" : "";
  if (t == "WordPiece") {
    kind = ModelKind::WordPiece;
    WordPieceParams p;
    p.vocab = parse_vocab(c, j);
    p.unk_token = c.opt_str(j, "unk_token", "model", "[UNK]");
    p.continuing_subword_prefix = c.opt_str(j, "continuing_subword_prefix", "model", "##");
    auto it = j.find("max_input_chars_per_word");
    if (it != j.end() && !it->is_null()) {
      const int64_t n = c.integer(*it, "model.max_input_chars_per_word");
      if (n < 0) c.bad("model.max_input_chars_per_word", "must be >= 0");
      p.max_input_chars_per_word = static_cast<size_t>(n);
    }
    return make_wordpiece(std::move(p), c.origin);
  }
  if (t == "BPE") {
    kind = ModelKind::Bpe;
    BpeParams p;
    p.vocab = parse_vocab(c, j);
    const json& merges = c.array(j, "merges", "model");
    p.merges.reserve(merges.size());
    for (size_t i = 0; i < merges.size(); ++i) {
      const std::string f = "model.merges[" + std::to_string(i) + "]";
      const json& m = merges[i];
      if (m.is_string()) {
        p.merges.push_back(split_merge(c, m.get<std::string>(), f));
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        p.merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      } else {
        c.bad(f, "expected \"a b\" or [\"a\", \"b\"]");
      }
    }
    p.unk_token = c.opt_str(j, "unk_token", "model", "");
    p.fuse_unk = c.opt_bool(j, "fuse_unk", "model", false);
    p.ignore_merges = c.opt_bool(j, "ignore_merges", "model", false);
    if (c.opt_bool(j, "byte_fallback", "model", false)) c.bad("model.byte_fallback", "true is not supported");
    if (!c.opt_str(j, "continuing_subword_prefix", "model", "").empty())
      c.bad("model.continuing_subword_prefix", "a non-empty prefix is not supported");
    if (!c.opt_str(j, "end_of_word_suffix", "model", "").empty())
      c.bad("model.end_of_word_suffix", "a non-empty suffix is not supported");
    auto d = j.find("dropout");
    if (d != j.end() && !d->is_null() && !(d->is_number() && d->get<double>() == 0.0))
      c.bad("model.dropout", "BPE dropout is not supported (tokenization would be random)");
    return make_bpe(std::move(p), c.origin);
  }
  c.bad("model.type", "'" + t + "' is not supported (expected WordPiece or BPE)");
}

json parse_json_text(std::string_view text, const std::string& origin) {
  try {
    return json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {  // parse_error, and out_of_range for a number beyond 64 bits
    fail(origin + ": invalid JSON: " + e.what());
  }
}

// A special token in tokenizer_config.json: "[CLS]" or {"content": "[CLS]", ...}.
std::optional<std::string> config_token(const json& cfg, const char* key) {
  auto it = cfg.find(key);
  if (it == cfg.end()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    auto c = it->find("content");
    if (c != it->end() && c->is_string()) return c->get<std::string>();
  }
  return std::nullopt;
}

std::string read_text_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path + ": cannot open: " + std::strerror(errno));
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) fail(path + ": read error");
  return ss.str();
}

}  // namespace

Tokenizer Tokenizer::from_json(std::string_view tokenizer_json, std::string_view tokenizer_config,
                               const std::string& origin) {
  const Ctx c{origin};
  const json j = parse_json_text(tokenizer_json, origin);
  if (!j.is_object()) fail(origin + ": expected a JSON object at the top level");
  auto impl = std::make_shared<Impl>();
  impl->origin = origin;
  impl->model = parse_model(c, c.need(j, "model", ""), impl->kind);
  impl->normalizer = parse_normalizer(c, j.value("normalizer", json()), "normalizer");
  impl->pre_tokenizer = parse_pre_tokenizer(c, j.value("pre_tokenizer", json()), "pre_tokenizer");
  impl->decoder = parse_decoder(c, j.value("decoder", json()), "decoder");
  parse_post_processor(c, j.value("post_processor", json()), "post_processor", *impl);
  if (auto it = j.find("added_tokens"); it != j.end() && !it->is_null()) {
    if (!it->is_array()) c.bad("added_tokens", std::string("expected array, got ") + it->type_name());
    for (size_t i = 0; i < it->size(); ++i) {
      const std::string f = "added_tokens[" + std::to_string(i) + "]";
      const json& a = (*it)[i];
      AddedToken t;
      t.id = c.id(c.need(a, "id", f), f + ".id");
      t.content = c.str(a, "content", f);
      t.special = c.opt_bool(a, "special", f, false);
      t.normalized = c.opt_bool(a, "normalized", f, !t.special);
      t.lstrip = c.opt_bool(a, "lstrip", f, false);
      t.rstrip = c.opt_bool(a, "rstrip", f, false);
      t.single_word = c.opt_bool(a, "single_word", f, false);
      impl->add_token(std::move(t));
    }
  }
  // Added tokens marked normalized are matched in normalized text, so match their normalized form.
  if (impl->normalizer)
    for (AddedToken& t : impl->added)
      if (t.normalized) t.content = impl->normalizer->normalize(t.content);

  json cfg = json::object();
  const std::string cfg_origin = (std::filesystem::path(origin).parent_path() / "tokenizer_config.json").string();
  if (!tokenizer_config.empty()) {
    cfg = parse_json_text(tokenizer_config, cfg_origin);
    if (!cfg.is_object()) fail(cfg_origin + ": expected a JSON object at the top level");
  }
  auto resolve = [&](const char* key, const char* fallback) -> int32_t {
    std::optional<std::string> name = config_token(cfg, key);
    if (!name && fallback) name = fallback;
    if (!name) return -1;
    auto id = impl->token_to_id(*name);
    return id ? *id : -1;
  };
  const bool wp = impl->kind == ModelKind::WordPiece;
  impl->special.cls = resolve("cls_token", wp ? "[CLS]" : nullptr);
  impl->special.sep = resolve("sep_token", wp ? "[SEP]" : nullptr);
  impl->special.pad = resolve("pad_token", wp ? "[PAD]" : nullptr);
  impl->special.unk = resolve("unk_token", wp ? "[UNK]" : nullptr);
  impl->special.mask = resolve("mask_token", wp ? "[MASK]" : nullptr);
  impl->special.bos = resolve("bos_token", nullptr);
  impl->special.eos = resolve("eos_token", nullptr);
  if (auto it = cfg.find("model_max_length"); it != cfg.end() && it->is_number()) {
    const double m = it->get<double>();
    if (m > 0 && m < 1e9) impl->model_max_length = static_cast<size_t>(m);  // 1e30 means "none"
  }
  // chat_template: a string, or a list of {"name", "template"} (the "default" one is used).
  if (auto it = cfg.find("chat_template"); it != cfg.end()) {
    if (it->is_string()) {
      impl->chat_template = it->get<std::string>();
    } else if (it->is_array()) {
      for (const auto& e : *it)
        if (e.is_object() && e.value("name", "") == "default" && e.contains("template") && e["template"].is_string())
          impl->chat_template = e["template"].get<std::string>();
    }
  }
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::from_file(const std::string& path) {
  namespace fs = std::filesystem;
  fs::path p(path);
  std::error_code ec;
  if (fs::is_directory(p, ec)) p /= "tokenizer.json";
  if (!fs::exists(p, ec)) fail(p.string() + ": tokenizer file not found");
  const std::string text = read_text_file(p.string());
  const fs::path cfg = p.parent_path() / "tokenizer_config.json";
  std::string cfg_text;
  if (fs::exists(cfg, ec)) cfg_text = read_text_file(cfg.string());
  return from_json(text, cfg_text, p.string());
}

// The pre-tokenizers of llama.cpp's `tokenizer.ggml.pre` names that we know, written as
// `tokenizers` would build them (llama-vocab.cpp lists the same regexes).
namespace {

std::unique_ptr<PreTokenizer> pre_tokenizer_for(const std::string& pre, const std::string& origin) {
  static const char* kLlama3 =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  static const char* kQwen2 =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  std::vector<std::unique_ptr<PreTokenizer>> v;
  if (pre.empty() || pre == "default" || pre == "gpt2" || pre == "gpt-2" || pre == "olmo" ||
      pre == "mpt" || pre == "jais") {
    return make_byte_level_pre_tokenizer(false, true);
  }
  if (pre == "smollm" || pre == "starcoder" || pre == "refact" || pre == "command-r" ||
      pre == "codeshell" || pre == "exaone" || pre == "minerva") {
    // Every digit on its own, then the GPT-2 regex: the Sequence[Digits(individual_digits),
    // ByteLevel] of these models' tokenizer.json (llama.cpp: "\p{N}" then the GPT-2 regex).
    v.push_back(make_digits_pre_tokenizer(true));
    v.push_back(make_byte_level_pre_tokenizer(false, true));
    return make_pre_tokenizer_sequence(std::move(v));
  }
  const char* pattern = nullptr;
  if (pre == "llama3" || pre == "llama-v3" || pre == "llama-bpe" || pre == "falcon3" ||
      pre == "smaug-bpe" || pre == "dbrx") {
    pattern = kLlama3;
  } else if (pre == "qwen2" || pre == "deepseek-r1-qwen") {
    pattern = kQwen2;
  } else {
    fail(origin + ": tokenizer.ggml.pre '" + pre + "' is not supported");
  }
  v.push_back(make_split_pre_tokenizer(pattern, true, SplitBehavior::Isolated, false,
                                       origin + ": tokenizer.ggml.pre"));
  v.push_back(make_byte_level_pre_tokenizer(false, false));
  return make_pre_tokenizer_sequence(std::move(v));
}

}  // namespace

Tokenizer Tokenizer::from_bpe_lists(const BpeLists& l, const std::string& origin) {
  const Ctx c{origin};
  if (l.tokens.empty()) fail(origin + ": tokenizer.ggml.tokens is empty");
  if (!l.token_types.empty() && l.token_types.size() != l.tokens.size())
    fail(origin + ": tokenizer.ggml.token_type has " + std::to_string(l.token_types.size()) +
         " entries but tokenizer.ggml.tokens has " + std::to_string(l.tokens.size()));
  auto impl = std::make_shared<Impl>();
  impl->origin = origin;
  impl->kind = ModelKind::Bpe;
  BpeParams p;
  p.vocab.reserve(l.tokens.size());
  // As transformers' GGUF loader: a token outside the byte alphabet is respelled from its bytes.
  for (size_t i = 0; i < l.tokens.size(); ++i) {
    const std::string& t = l.tokens[i];
    if (utf8_invalid_at(t) != std::string::npos)
      fail(origin + ": tokenizer.ggml.tokens[" + std::to_string(i) + "] is not valid UTF-8");
    p.vocab.emplace_back(in_byte_alphabet(t) ? t : byte_level_spell(t), static_cast<int32_t>(i));
  }
  p.merges.reserve(l.merges.size());
  for (size_t i = 0; i < l.merges.size(); ++i)
    p.merges.push_back(split_merge(c, l.merges[i], "tokenizer.ggml.merges[" + std::to_string(i) + "]"));
  impl->model = make_bpe(std::move(p), origin);
  impl->pre_tokenizer = pre_tokenizer_for(l.pre, origin);
  impl->decoder = make_byte_level_decoder();
  // Control tokens (3) are special added tokens, user-defined ones (4) plain added tokens; a
  // control token outside the byte alphabet is a mislabel that transformers skips, and so do we.
  for (size_t i = 0; i < l.token_types.size(); ++i) {
    const int32_t ty = l.token_types[i];
    if (ty != 3 && ty != 4) continue;
    if (!in_byte_alphabet(l.tokens[i])) continue;
    AddedToken t;
    t.id = static_cast<int32_t>(i);
    t.content = l.tokens[i];
    t.special = ty == 3;
    impl->add_token(std::move(t));
  }
  const auto n = static_cast<int32_t>(l.tokens.size());
  auto check_id = [&](int32_t id, const char* key) {
    if (id >= n) fail(origin + ": " + key + " " + std::to_string(id) + " is out of range (" + std::to_string(n) + " tokens)");
    return id < 0 ? -1 : id;
  };
  impl->special.bos = check_id(l.bos_id, "tokenizer.ggml.bos_token_id");
  impl->special.eos = check_id(l.eos_id, "tokenizer.ggml.eos_token_id");
  impl->special.unk = check_id(l.unk_id, "tokenizer.ggml.unknown_token_id");
  impl->special.pad = check_id(l.pad_id, "tokenizer.ggml.padding_token_id");
  if ((l.add_bos && impl->special.bos >= 0) || (l.add_eos && impl->special.eos >= 0)) {
    // BOS $A EOS, and for a pair BOS $A EOS BOS $B EOS (type 1), as transformers' Llama tokenizer.
    impl->has_template = true;
    for (int s = 0; s < 2; ++s) {
      std::vector<TemplateItem>& items = s == 0 ? impl->single : impl->pair;
      for (int k = 0; k <= s; ++k) {
        const auto type = static_cast<int32_t>(k);
        if (l.add_bos && impl->special.bos >= 0) items.push_back({false, 0, {impl->special.bos}, type});
        items.push_back({true, k, {}, type});
        if (l.add_eos && impl->special.eos >= 0) items.push_back({false, 0, {impl->special.eos}, type});
      }
    }
  }
  impl->chat_template = l.chat_template;
  return Tokenizer(std::move(impl));
}

// ---------------------------------------------------------------------------------------------
// Encode / decode
// ---------------------------------------------------------------------------------------------

Encoding Tokenizer::encode(std::string_view text, bool add_special_tokens, size_t max_length) const {
  return impl_->post_process(impl_->tokenize(text), nullptr, add_special_tokens, max_length);
}

Encoding Tokenizer::encode_pair(std::string_view a, std::string_view b, bool add_special_tokens,
                                size_t max_length) const {
  std::vector<int32_t> ib = impl_->tokenize(b);
  return impl_->post_process(impl_->tokenize(a), &ib, add_special_tokens, max_length);
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    auto it = impl_->added_by_id.find(id);
    if (it != impl_->added_by_id.end()) {
      const AddedToken& t = impl_->added[it->second];
      if (!(skip_special_tokens && t.special)) tokens.push_back(t.content);
      continue;
    }
    if (const std::string* t = impl_->model->id_to_token(id)) tokens.push_back(*t);
  }
  if (!impl_->decoder) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return out;
  }
  impl_->decoder->decode_chain(tokens);
  std::string out;
  for (const std::string& t : tokens) out += t;
  return out;
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  return impl_->token_to_id(token);
}

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  auto it = impl_->added_by_id.find(id);
  if (it != impl_->added_by_id.end()) return impl_->added[it->second].content;
  if (const std::string* t = impl_->model->id_to_token(id)) return *t;
  return std::nullopt;
}

size_t Tokenizer::vocab_size() const {
  size_t n = impl_->model->vocab_size();
  for (const AddedToken& t : impl_->added) n = std::max(n, static_cast<size_t>(t.id) + 1);
  return n;
}

const SpecialTokenIds& Tokenizer::special_ids() const { return impl_->special; }

bool Tokenizer::is_special(int32_t id) const {
  auto it = impl_->added_by_id.find(id);
  return it != impl_->added_by_id.end() && impl_->added[it->second].special;
}

ModelKind Tokenizer::model_kind() const { return impl_->kind; }

size_t Tokenizer::num_special_tokens_to_add(bool pair) const { return impl_->added_count(pair); }

size_t Tokenizer::model_max_length() const { return impl_->model_max_length; }
const std::string& Tokenizer::chat_template() const { return impl_->chat_template; }

}  // namespace lorafit::text
