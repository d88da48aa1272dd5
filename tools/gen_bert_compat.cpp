// Writes src/text/bert_compat.inc: the code points where Hugging Face `tokenizers` (whose BERT
// normalizer/pre-tokenizer use the old tables of the unicode_categories crate) and utf8proc
// disagree on "control", "punctuation" and "non-spacing mark". Input: the exhaustive sets that
// tools/ref_tokens.py probes from `tokenizers` (tests/fixtures/tokens/bert_unicode.json).
// Run it against a build whose bert_compat.inc holds only the {0x110000, 0x110000} sentinels:
//   g++ -std=c++20 -Iinclude -Isrc tools/gen_bert_compat.cpp build-text/liblorafit_text.a \
//       -lpcre2-8 -lutf8proc -o /tmp/gen && /tmp/gen tests/fixtures/tokens/bert_unicode.json \
//       > src/text/bert_compat.inc
// tests/text (BertUnicode.EveryCodePointAsHuggingFace) checks the result over every code point.
#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>
#include <nlohmann/json.hpp>
#include "text/text_internal.h"
using json = nlohmann::json;
namespace t = lorafit::text;
std::set<char32_t> expand(const json& ranges) {
  std::set<char32_t> s;
  for (const json& r : ranges) for (auto c = r[0].get<char32_t>(); c <= r[1].get<char32_t>(); ++c) s.insert(c);
  return s;
}
void emit(const char* name, const std::vector<char32_t>& v) {
  std::printf("constexpr Range %s[] = {", name);
  std::vector<std::pair<char32_t,char32_t>> r;
  for (char32_t c : v) { if (!r.empty() && r.back().second + 1 == c) r.back().second = c; else r.push_back({c, c}); }
  if (r.empty()) r.push_back({0x110000, 0x110000});
  for (size_t i = 0; i < r.size(); ++i) std::printf("%s{0x%X, 0x%X}", i == 0 ? "\n    " : i % 6 == 0 ? ",\n    " : ", ", (unsigned)r[i].first, (unsigned)r[i].second);
  std::printf("};\n");
}
int main(int, char** argv) {
  std::ifstream f(argv[1]); std::stringstream ss; ss << f.rdbuf();
  json j = json::parse(ss.str());
  auto control = expand(j["control"]), stripped = expand(j["stripped"]), punct = expand(j["punctuation"]);
  std::vector<char32_t> notc, extc, notp, extp, notm, extm;
  for (char32_t c = 0; c < 0x110000; ++c) {
    if (c >= 0xD800 && c <= 0xDFFF) continue;
    if (c == 0 || c == 0xFFFD) continue;
    bool ours = t::bert_is_control(c), hf = control.count(c);
    if (ours && !hf) notc.push_back(c);
    if (!ours && hf && !t::bert_is_whitespace(c)) extc.push_back(c);
    std::string s; t::utf8_append(s, c);
    bool whitespace = (c >= 0x1C && c <= 0x1F) || t::is_rust_whitespace(c);
    if (!whitespace) {
      bool op = t::bert_is_punctuation(c), hp = punct.count(c);
      if (op && !hp) notp.push_back(c);
      if (!op && hp) extp.push_back(c);
    }
    // marks: only characters that NFD leaves alone
    if (t::unicode_normalize(s, "NFD") == s) {
      bool om = t::bert_is_mark_nonspacing(c), hm = stripped.count(c);
      if (om && !hm) notm.push_back(c);
      if (!om && hm) extm.push_back(c);
    }
  }
  std::printf("// Generated from tests/fixtures/tokens/bert_unicode.json (tools/ref_tokens.py): where\n// `tokenizers` (unicode_categories tables) and utf8proc %s disagree.\n", "2.8 (Unicode 15)");
  emit("kBertNotControl", notc); emit("kBertExtraControl", extc);
  emit("kBertNotPunct", notp); emit("kBertExtraPunct", extp);
  emit("kBertNotMark", notm); emit("kBertExtraMark", extm);
}
