// Internals of the text layer: Unicode helpers and the pipeline stages of a tokenizer, each a
// small class with one virtual function, as in the `tokenizers` library. Strings are UTF-8.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "lorafit/text.h"

namespace lorafit::text {

[[noreturn]] void fail(const std::string& msg);  // throws Error("[text] " + msg)

// ---- Unicode (unicode.cpp) -------------------------------------------------------------------

// Decodes strict UTF-8 (no overlongs, surrogates or values above U+10FFFF). Returns the byte
// offset of the first invalid sequence, or npos when the whole string is valid.
size_t utf8_invalid_at(std::string_view s);
// Decodes valid UTF-8 (validate first).
std::u32string utf8_decode(std::string_view s);
void utf8_append(std::string& out, char32_t c);
std::string utf8_encode(std::u32string_view s);
// Bytes to text, each maximal invalid subpart replaced by U+FFFD (Rust's from_utf8_lossy).
std::string utf8_lossy(std::string_view bytes);

// Unicode general category, numbered as utf8proc's UTF8PROC_CATEGORY_*.
int unicode_category(char32_t c);
bool is_letter(char32_t c);  // L*
bool is_number(char32_t c);  // N* (Rust char::is_numeric)
bool is_mark_nonspacing(char32_t c);  // Mn
// Rust's char::is_whitespace (the White_Space property).
bool is_rust_whitespace(char32_t c);
// Canonical / compatibility (de)composition: form is "NFD", "NFKD", "NFC" or "NFKC".
std::string unicode_normalize(std::string_view s, std::string_view form);
// Rust's char::to_lowercase (full mapping: U+0130 becomes "i̇").
void append_lowercase(std::u32string& out, char32_t c);

// The BERT predicates of `tokenizers` (normalizers/bert.rs, pre_tokenizers/bert.rs).
bool bert_is_control(char32_t c);  // removed by clean_text
bool bert_is_whitespace(char32_t c);  // becomes ' ' in clean_text
bool bert_is_chinese_char(char32_t c);
bool bert_is_punctuation(char32_t c);
bool bert_is_mark_nonspacing(char32_t c);  // dropped by strip_accents

// ---- Pipeline stages (stages.cpp) ------------------------------------------------------------

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual std::string normalize(std::string_view s) const = 0;
};

// A pre-tokenizer refines a list of pieces into a finer list.
class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual void split(std::vector<std::string>& pieces) const = 0;
};

// Cuts one pre-token into ids.
class Model {
 public:
  virtual ~Model() = default;
  virtual void tokenize(const std::string& piece, std::vector<int32_t>& out) const = 0;
  virtual std::optional<int32_t> token_to_id(std::string_view token) const = 0;
  virtual const std::string* id_to_token(int32_t id) const = 0;  // nullptr when out of range
  virtual size_t vocab_size() const = 0;  // 1 + largest id
};

// Turns tokens back into text pieces (`decode_chain`); the pieces are concatenated.
class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

// A compiled PCRE2 pattern (UTF + UCP), matched the way onig does it in `tokenizers`.
class Regex {
 public:
  Regex(const std::string& pattern, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // Byte ranges [begin, end) of the non-overlapping matches, left to right.
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view s) const;

 private:
  void* code_ = nullptr;  // pcre2_code_8*
};

// Splits `s` by the match ranges according to `behavior` (invert: the matches are what is kept
// apart, i.e. the roles of match and gap swap), appending non-empty pieces to `out`.
void split_by_matches(std::string_view s, const std::vector<std::pair<size_t, size_t>>& matches,
                      SplitBehavior behavior, bool invert, std::vector<std::string>& out);

// GPT-2's pre-tokenizer regex, as `tokenizers`' ByteLevel uses it.
extern const char* const kGpt2Pattern;

// GPT-2's byte <-> printable character table (bytes_to_unicode).
const std::string& byte_to_unicode(uint8_t b);  // UTF-8 of the character for byte b
int unicode_to_byte(char32_t c);  // -1 when c is not in the table
// Respells raw bytes in the byte-level alphabet.
std::string byte_level_spell(std::string_view bytes);
bool in_byte_alphabet(std::string_view token);

std::unique_ptr<Normalizer> make_bert_normalizer(bool clean_text, bool handle_chinese_chars,
                                                 bool strip_accents, bool lowercase);
std::unique_ptr<Normalizer> make_lowercase_normalizer();
std::unique_ptr<Normalizer> make_unicode_normalizer(const std::string& form);
std::unique_ptr<Normalizer> make_strip_accents_normalizer();
std::unique_ptr<Normalizer> make_normalizer_sequence(std::vector<std::unique_ptr<Normalizer>> v);

std::unique_ptr<PreTokenizer> make_bert_pre_tokenizer();
std::unique_ptr<PreTokenizer> make_byte_level_pre_tokenizer(bool add_prefix_space, bool use_regex);
std::unique_ptr<PreTokenizer> make_digits_pre_tokenizer(bool individual_digits);
std::unique_ptr<PreTokenizer> make_split_pre_tokenizer(const std::string& pattern, bool is_regex,
                                                       SplitBehavior behavior, bool invert,
                                                       const std::string& where);
std::unique_ptr<PreTokenizer> make_whitespace_pre_tokenizer();
std::unique_ptr<PreTokenizer> make_whitespace_split_pre_tokenizer();
std::unique_ptr<PreTokenizer> make_pre_tokenizer_sequence(
    std::vector<std::unique_ptr<PreTokenizer>> v);

std::unique_ptr<Decoder> make_wordpiece_decoder(const std::string& prefix, bool cleanup);
std::unique_ptr<Decoder> make_byte_level_decoder();
std::unique_ptr<Decoder> make_decoder_sequence(std::vector<std::unique_ptr<Decoder>> v);

// ---- Models (models.cpp) ---------------------------------------------------------------------

struct WordPieceParams {
  std::vector<std::pair<std::string, int32_t>> vocab;
  std::string unk_token = "[UNK]";
  std::string continuing_subword_prefix = "##";
  size_t max_input_chars_per_word = 100;
};
std::unique_ptr<Model> make_wordpiece(WordPieceParams p, const std::string& where);

struct BpeParams {
  std::vector<std::pair<std::string, int32_t>> vocab;
  std::vector<std::pair<std::string, std::string>> merges;  // rank order
  std::string unk_token;  // "" for none
  bool fuse_unk = false;
  bool ignore_merges = false;
};
std::unique_ptr<Model> make_bpe(BpeParams p, const std::string& where);

}  // namespace lorafit::text
