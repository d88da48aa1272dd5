// Normalizers, pre-tokenizers and decoders, each reproducing its namesake in Hugging Face
// `tokenizers` (normalizers/, pre_tokenizers/, decoders/ in the Rust crate).
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <functional>

#include "text/text_internal.h"

namespace lorafit::text {

// ---- Regex -----------------------------------------------------------------------------------

// `tokenizers` compiles its patterns with onig; PCRE2 with UTF + UCP gives the same \p{..}, \s
// and backtracking (leftmost alternative first, lookahead) semantics for the patterns in use.
Regex::Regex(const std::string& pattern, const std::string& where) {
  int err = 0;
  PCRE2_SIZE off = 0;
  auto* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                             PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof(msg));
    fail(where + ": regex '" + pattern + "' does not compile at offset " + std::to_string(off) +
         ": " + reinterpret_cast<const char*>(msg));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // optional speed-up; falls back to interpreter
  code_ = code;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

std::vector<std::pair<size_t, size_t>> Regex::find_all(std::string_view s) const {
  std::vector<std::pair<size_t, size_t>> out;
  auto* code = static_cast<pcre2_code*>(code_);
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
  if (!md) fail("out of memory for regex match data");
  size_t pos = 0;
  while (pos <= s.size()) {
    // The text was validated as UTF-8 on the way in.
    const int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), pos,
                               PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      pcre2_match_data_free(md);
      fail("regex match failed with PCRE2 error " + std::to_string(rc));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const size_t b = ov[0], e = ov[1];
    out.emplace_back(b, e);
    if (e > b) {
      pos = e;
    } else {  // empty match: step over one character
      if (e >= s.size()) break;
      pos = e + 1;
      while (pos < s.size() && (static_cast<uint8_t>(s[pos]) & 0xC0) == 0x80) ++pos;
    }
  }
  pcre2_match_data_free(md);
  return out;
}

void split_by_matches(std::string_view s, const std::vector<std::pair<size_t, size_t>>& matches,
                      SplitBehavior behavior, bool invert, std::vector<std::string>& out) {
  // Cover s with (range, is_match) segments, as NormalizedString::split does.
  struct Seg {
    size_t b, e;
    bool m;
  };
  std::vector<Seg> segs;
  size_t prev = 0;
  for (auto [b, e] : matches) {
    if (prev != b) segs.push_back({prev, b, false});
    segs.push_back({b, e, true});
    prev = e;
  }
  if (prev != s.size()) segs.push_back({prev, s.size(), false});
  if (invert)
    for (Seg& g : segs) g.m = !g.m;

  std::vector<Seg> res;
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::Removed:
      for (const Seg& g : segs)
        if (!g.m) res.push_back(g);
      break;
    case SplitBehavior::Isolated:
      res.swap(segs);
      break;
    case SplitBehavior::MergedWithPrevious:
      for (const Seg& g : segs) {
        if (g.m && !previous_match && !res.empty()) {
          res.back().e = g.e;
        } else {
          res.push_back(g);
        }
        previous_match = g.m;
      }
      break;
    case SplitBehavior::MergedWithNext:
      for (auto it = segs.rbegin(); it != segs.rend(); ++it) {
        if (it->m && !previous_match && !res.empty()) {
          res.back().b = it->b;
        } else {
          res.push_back(*it);
        }
        previous_match = it->m;
      }
      std::reverse(res.begin(), res.end());
      break;
    case SplitBehavior::Contiguous:
      for (const Seg& g : segs) {
        if (g.m == previous_match && !res.empty()) {
          res.back().e = g.e;
        } else {
          res.push_back(g);
        }
        previous_match = g.m;
      }
      break;
  }
  for (const Seg& g : res)
    if (g.e > g.b) out.emplace_back(s.substr(g.b, g.e - g.b));
}

namespace {

// Every character for which pred holds is a match of its own (the `Fn(char) -> bool` pattern).
void split_by_char(std::string_view s, const std::function<bool(char32_t)>& pred,
                   SplitBehavior behavior, std::vector<std::string>& out) {
  std::vector<std::pair<size_t, size_t>> matches;
  for (size_t i = 0; i < s.size();) {
    const auto b0 = static_cast<uint8_t>(s[i]);
    const size_t n = b0 < 0x80 ? 1 : b0 < 0xE0 ? 2 : b0 < 0xF0 ? 3 : 4;
    const std::u32string c = utf8_decode(s.substr(i, n));
    if (!c.empty() && pred(c[0])) matches.emplace_back(i, i + n);
    i += n;
  }
  split_by_matches(s, matches, behavior, false, out);
}

template <class F>
void refine(std::vector<std::string>& pieces, F&& f) {
  std::vector<std::string> out;
  out.reserve(pieces.size() * 2);
  for (const std::string& p : pieces) f(p, out);
  pieces.swap(out);
}

}  // namespace

const char* const kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// ---- Byte-level alphabet ---------------------------------------------------------------------

namespace {

struct ByteTable {
  std::array<std::string, 256> spell;
  std::array<int, 512> back;  // code point (< 512) -> byte
  ByteTable() {
    back.fill(-1);
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      const char32_t c = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
      utf8_append(spell[b], c);
      back[c] = b;
    }
  }
};

const ByteTable& byte_table() {
  static const ByteTable t;
  return t;
}

}  // namespace

const std::string& byte_to_unicode(uint8_t b) { return byte_table().spell[b]; }

int unicode_to_byte(char32_t c) { return c < 512 ? byte_table().back[c] : -1; }

std::string byte_level_spell(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char ch : bytes) out += byte_to_unicode(static_cast<uint8_t>(ch));
  return out;
}

bool in_byte_alphabet(std::string_view token) {
  if (utf8_invalid_at(token) != std::string_view::npos) return false;
  for (char32_t c : utf8_decode(token))
    if (unicode_to_byte(c) < 0) return false;
  return true;
}

// ---- Normalizers -----------------------------------------------------------------------------

namespace {

class BertNormalizer final : public Normalizer {
 public:
  BertNormalizer(bool clean, bool chinese, bool strip, bool lower)
      : clean_(clean), chinese_(chinese), strip_(strip), lower_(lower) {}

  std::string normalize(std::string_view s) const override {
    std::u32string u = utf8_decode(s), t;
    t.reserve(u.size());
    if (clean_) {
      for (char32_t c : u) {
        if (c == 0 || c == 0xFFFD || bert_is_control(c)) continue;
        t.push_back(bert_is_whitespace(c) ? U' ' : c);
      }
      u.swap(t);
      t.clear();
    }
    if (chinese_) {
      for (char32_t c : u) {
        if (bert_is_chinese_char(c)) {
          t.push_back(U' ');
          t.push_back(c);
          t.push_back(U' ');
        } else {
          t.push_back(c);
        }
      }
      u.swap(t);
      t.clear();
    }
    if (strip_) {
      u = utf8_decode(unicode_normalize(utf8_encode(u), "NFD"));
      for (char32_t c : u)
        if (!bert_is_mark_nonspacing(c)) t.push_back(c);
      u.swap(t);
      t.clear();
    }
    if (lower_) {
      for (char32_t c : u) append_lowercase(t, c);
      u.swap(t);
    }
    return utf8_encode(u);
  }

 private:
  bool clean_, chinese_, strip_, lower_;
};

class LowercaseNormalizer final : public Normalizer {
 public:
  std::string normalize(std::string_view s) const override {
    std::u32string t;
    for (char32_t c : utf8_decode(s)) append_lowercase(t, c);
    return utf8_encode(t);
  }
};

class UnicodeNormalizer final : public Normalizer {
 public:
  explicit UnicodeNormalizer(std::string form) : form_(std::move(form)) {}
  std::string normalize(std::string_view s) const override { return unicode_normalize(s, form_); }

 private:
  std::string form_;
};

class StripAccentsNormalizer final : public Normalizer {
 public:
  std::string normalize(std::string_view s) const override {
    std::u32string t;
    for (char32_t c : utf8_decode(s))
      if (!is_mark_nonspacing(c)) t.push_back(c);
    return utf8_encode(t);
  }
};

class NormalizerSequence final : public Normalizer {
 public:
  explicit NormalizerSequence(std::vector<std::unique_ptr<Normalizer>> v) : v_(std::move(v)) {}
  std::string normalize(std::string_view s) const override {
    std::string cur(s);
    for (const auto& n : v_) cur = n->normalize(cur);
    return cur;
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> v_;
};

}  // namespace

std::unique_ptr<Normalizer> make_bert_normalizer(bool clean_text, bool handle_chinese_chars,
                                                 bool strip_accents, bool lowercase) {
  return std::make_unique<BertNormalizer>(clean_text, handle_chinese_chars, strip_accents,
                                          lowercase);
}
std::unique_ptr<Normalizer> make_lowercase_normalizer() {
  return std::make_unique<LowercaseNormalizer>();
}
std::unique_ptr<Normalizer> make_unicode_normalizer(const std::string& form) {
  return std::make_unique<UnicodeNormalizer>(form);
}
std::unique_ptr<Normalizer> make_strip_accents_normalizer() {
  return std::make_unique<StripAccentsNormalizer>();
}
std::unique_ptr<Normalizer> make_normalizer_sequence(std::vector<std::unique_ptr<Normalizer>> v) {
  return std::make_unique<NormalizerSequence>(std::move(v));
}

// ---- Pre-tokenizers --------------------------------------------------------------------------

namespace {

class BertPreTokenizer final : public PreTokenizer {
 public:
  void split(std::vector<std::string>& pieces) const override {
    refine(pieces, [](const std::string& p, std::vector<std::string>& out) {
      split_by_char(p, is_rust_whitespace, SplitBehavior::Removed, out);
    });
    refine(pieces, [](const std::string& p, std::vector<std::string>& out) {
      split_by_char(p, bert_is_punctuation, SplitBehavior::Isolated, out);
    });
  }
};

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space) {
    if (use_regex) re_ = std::make_unique<Regex>(kGpt2Pattern, "ByteLevel");
  }
  void split(std::vector<std::string>& pieces) const override {
    refine(pieces, [this](const std::string& p, std::vector<std::string>& out) {
      std::string s = p;
      if (add_prefix_space_ && (s.empty() || s[0] != ' ')) s.insert(s.begin(), ' ');
      std::vector<std::string> parts;
      if (re_) {
        split_by_matches(s, re_->find_all(s), SplitBehavior::Isolated, false, parts);
      } else if (!s.empty()) {
        parts.push_back(s);
      }
      for (const std::string& q : parts) out.push_back(byte_level_spell(q));
    });
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> re_;
};

class DigitsPreTokenizer final : public PreTokenizer {
 public:
  explicit DigitsPreTokenizer(bool individual) : individual_(individual) {}
  void split(std::vector<std::string>& pieces) const override {
    const SplitBehavior b = individual_ ? SplitBehavior::Isolated : SplitBehavior::Contiguous;
    refine(pieces, [b](const std::string& p, std::vector<std::string>& out) {
      split_by_char(p, is_number, b, out);
    });
  }

 private:
  bool individual_;
};

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(const std::string& pattern, bool is_regex, SplitBehavior behavior, bool invert,
                    const std::string& where)
      : literal_(pattern), behavior_(behavior), invert_(invert) {
    if (is_regex) re_ = std::make_unique<Regex>(pattern, where);
    if (!is_regex && pattern.empty()) fail(where + ": empty split pattern");
  }
  void split(std::vector<std::string>& pieces) const override {
    refine(pieces, [this](const std::string& p, std::vector<std::string>& out) {
      std::vector<std::pair<size_t, size_t>> m;
      if (re_) {
        m = re_->find_all(p);
      } else {
        for (size_t pos = p.find(literal_); pos != std::string::npos;
             pos = p.find(literal_, pos + literal_.size()))
          m.emplace_back(pos, pos + literal_.size());
      }
      split_by_matches(p, m, behavior_, invert_, out);
    });
  }

 private:
  std::string literal_;
  std::unique_ptr<Regex> re_;
  SplitBehavior behavior_;
  bool invert_;
};

class WhitespacePreTokenizer final : public PreTokenizer {
 public:
  WhitespacePreTokenizer() : re_(R"(\w+|[^\w\s]+)", "Whitespace") {}
  void split(std::vector<std::string>& pieces) const override {
    refine(pieces, [this](const std::string& p, std::vector<std::string>& out) {
      split_by_matches(p, re_.find_all(p), SplitBehavior::Removed, true, out);
    });
  }

 private:
  Regex re_;
};

class WhitespaceSplitPreTokenizer final : public PreTokenizer {
 public:
  void split(std::vector<std::string>& pieces) const override {
    refine(pieces, [](const std::string& p, std::vector<std::string>& out) {
      split_by_char(p, is_rust_whitespace, SplitBehavior::Removed, out);
    });
  }
};

class PreTokenizerSequence final : public PreTokenizer {
 public:
  explicit PreTokenizerSequence(std::vector<std::unique_ptr<PreTokenizer>> v) : v_(std::move(v)) {}
  void split(std::vector<std::string>& pieces) const override {
    for (const auto& p : v_) p->split(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> v_;
};

}  // namespace

std::unique_ptr<PreTokenizer> make_bert_pre_tokenizer() {
  return std::make_unique<BertPreTokenizer>();
}
std::unique_ptr<PreTokenizer> make_byte_level_pre_tokenizer(bool add_prefix_space, bool use_regex) {
  return std::make_unique<ByteLevelPreTokenizer>(add_prefix_space, use_regex);
}
std::unique_ptr<PreTokenizer> make_digits_pre_tokenizer(bool individual_digits) {
  return std::make_unique<DigitsPreTokenizer>(individual_digits);
}
std::unique_ptr<PreTokenizer> make_split_pre_tokenizer(const std::string& pattern, bool is_regex,
                                                       SplitBehavior behavior, bool invert,
                                                       const std::string& where) {
  return std::make_unique<SplitPreTokenizer>(pattern, is_regex, behavior, invert, where);
}
std::unique_ptr<PreTokenizer> make_whitespace_pre_tokenizer() {
  return std::make_unique<WhitespacePreTokenizer>();
}
std::unique_ptr<PreTokenizer> make_whitespace_split_pre_tokenizer() {
  return std::make_unique<WhitespaceSplitPreTokenizer>();
}
std::unique_ptr<PreTokenizer> make_pre_tokenizer_sequence(
    std::vector<std::unique_ptr<PreTokenizer>> v) {
  return std::make_unique<PreTokenizerSequence>(std::move(v));
}

// ---- Decoders --------------------------------------------------------------------------------

namespace {

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  for (size_t pos = s.find(from); pos != std::string::npos; pos = s.find(from, pos + to.size()))
    s.replace(pos, from.size(), to);
}

class WordPieceDecoder final : public Decoder {
 public:
  WordPieceDecoder(std::string prefix, bool cleanup)
      : prefix_(std::move(prefix)), cleanup_(cleanup) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string& t = tokens[i];
      if (i != 0) {
        if (!prefix_.empty() && t.compare(0, prefix_.size(), prefix_) == 0) {
          t.erase(0, prefix_.size());
        } else {
          t.insert(t.begin(), ' ');
        }
      }
      if (cleanup_) {  // decoders/wordpiece.rs cleanup(), in its order
        replace_all(t, " .", ".");
        replace_all(t, " ?", "?");
        replace_all(t, " !", "!");
        replace_all(t, " ,", ",");
        replace_all(t, " ' ", "'");
        replace_all(t, " n't", "n't");
        replace_all(t, " 'm", "'m");
        replace_all(t, " do not", " don't");
        replace_all(t, " 's", "'s");
        replace_all(t, " 've", "'ve");
        replace_all(t, " 're", "'re");
      }
    }
  }

 private:
  std::string prefix_;
  bool cleanup_;
};

class ByteLevelDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const std::string& t : tokens) {
      // A token with a character outside the byte alphabet goes through as its own UTF-8.
      std::string tb;
      bool ok = utf8_invalid_at(t) == std::string::npos;
      if (ok) {
        for (char32_t c : utf8_decode(t)) {
          const int b = unicode_to_byte(c);
          if (b < 0) {
            ok = false;
            break;
          }
          tb.push_back(static_cast<char>(b));
        }
      }
      bytes += ok ? tb : t;
    }
    tokens.assign(1, utf8_lossy(bytes));
  }
};

class DecoderSequence final : public Decoder {
 public:
  explicit DecoderSequence(std::vector<std::unique_ptr<Decoder>> v) : v_(std::move(v)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& d : v_) d->decode_chain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> v_;
};

}  // namespace

std::unique_ptr<Decoder> make_wordpiece_decoder(const std::string& prefix, bool cleanup) {
  return std::make_unique<WordPieceDecoder>(prefix, cleanup);
}
std::unique_ptr<Decoder> make_byte_level_decoder() { return std::make_unique<ByteLevelDecoder>(); }
std::unique_ptr<Decoder> make_decoder_sequence(std::vector<std::unique_ptr<Decoder>> v) {
  return std::make_unique<DecoderSequence>(std::move(v));
}

}  // namespace lorafit::text
