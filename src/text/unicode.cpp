// UTF-8 coding and the Unicode properties the tokenizers need. Categories, case mapping and
// normalization forms come from utf8proc; the few predicates below are written to give what
// Hugging Face `tokenizers` (Rust) gives, which is what the reference fixtures check.
#include <algorithm>
#include <cstdlib>

#include <utf8proc.h>

#include "text/text_internal.h"

namespace lorafit::text {

void fail(const std::string& msg) { throw Error("[text] " + msg); }

namespace {

// Length of the valid UTF-8 sequence at s[i], or -(bytes of its maximal invalid subpart).
// Follows the Unicode "maximal subpart" rule that Rust's from_utf8_lossy uses.
int utf8_seq(std::string_view s, size_t i) {
  const auto b0 = static_cast<uint8_t>(s[i]);
  if (b0 < 0x80) return 1;
  int len = 0;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    len = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    len = 3;
    if (b0 == 0xE0) lo = 0xA0;  // no overlongs
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    len = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;  // <= U+10FFFF
  } else {
    return -1;
  }
  for (int k = 1; k < len; ++k) {
    if (i + k >= s.size()) return -k;
    const auto b = static_cast<uint8_t>(s[i + k]);
    const uint8_t l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
    if (b < l || b > h) return -k;
  }
  return len;
}

}  // namespace

size_t utf8_invalid_at(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const int n = utf8_seq(s, i);
    if (n < 0) return i;
    i += static_cast<size_t>(n);
  }
  return std::string_view::npos;
}

std::u32string utf8_decode(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const auto b0 = static_cast<uint8_t>(s[i]);
    char32_t c;
    int n;
    if (b0 < 0x80) {
      c = b0, n = 1;
    } else if (b0 < 0xE0) {
      c = b0 & 0x1F, n = 2;
    } else if (b0 < 0xF0) {
      c = b0 & 0x0F, n = 3;
    } else {
      c = b0 & 0x07, n = 4;
    }
    for (int k = 1; k < n && i + k < s.size(); ++k) c = (c << 6) | (static_cast<uint8_t>(s[i + k]) & 0x3F);
    out.push_back(c);
    i += static_cast<size_t>(n);
  }
  return out;
}

void utf8_append(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

std::string utf8_encode(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) utf8_append(out, c);
  return out;
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    const int n = utf8_seq(bytes, i);
    if (n > 0) {
      out.append(bytes.substr(i, static_cast<size_t>(n)));
      i += static_cast<size_t>(n);
    } else {
      out += "\xEF\xBF\xBD";  // U+FFFD for the whole maximal subpart
      i += static_cast<size_t>(-n);
    }
  }
  return out;
}

int unicode_category(char32_t c) { return utf8proc_category(static_cast<utf8proc_int32_t>(c)); }

bool is_letter(char32_t c) {
  const int k = unicode_category(c);
  return k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO;
}

bool is_number(char32_t c) {
  const int k = unicode_category(c);
  return k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO;
}

bool is_mark_nonspacing(char32_t c) { return unicode_category(c) == UTF8PROC_CATEGORY_MN; }

bool is_rust_whitespace(char32_t c) {
  switch (c) {
    case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x20: case 0x85: case 0xA0:
    case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
      return true;
    default:
      return c >= 0x2000 && c <= 0x200A;
  }
}

std::string unicode_normalize(std::string_view s, std::string_view form) {
  int opt = UTF8PROC_STABLE;
  if (form == "NFD") {
    opt |= UTF8PROC_DECOMPOSE;
  } else if (form == "NFKD") {
    opt |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
  } else if (form == "NFC") {
    opt |= UTF8PROC_COMPOSE;
  } else if (form == "NFKC") {
    opt |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
  } else {
    fail("unknown normalization form '" + std::string(form) + "'");
  }
  if (s.empty()) return {};
  utf8proc_uint8_t* dst = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                   static_cast<utf8proc_ssize_t>(s.size()), &dst, static_cast<utf8proc_option_t>(opt));
  if (n < 0) fail(std::string("unicode normalization failed: ") + utf8proc_errmsg(n));
  std::string out(reinterpret_cast<const char*>(dst), static_cast<size_t>(n));
  std::free(dst);
  return out;
}

void append_lowercase(std::u32string& out, char32_t c) {
  if (c == 0x130) {  // the only unconditional one-to-many lowercase mapping (SpecialCasing.txt)
    out.push_back(U'i');
    out.push_back(0x307);
    return;
  }
  out.push_back(static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c))));
}

// `tokenizers` classifies with the `unicode_categories` crate, whose tables are older than
// utf8proc's: characters that later Unicode versions assigned or re-categorized get different
// answers. These lists (code point ranges) are the differences against utf8proc's Unicode 15
// tables, found by comparing every code point with the Python `tokenizers` package.
namespace {

struct Range {
  char32_t lo, hi;
};

// Ranges are sorted and disjoint: binary search.
template <size_t N>
bool in_ranges(const Range (&r)[N], char32_t c) {
  const Range* it = std::upper_bound(r, r + N, c, [](char32_t x, const Range& g) { return x < g.lo; });
  return it != r && c <= (it - 1)->hi;
}

#include "text/bert_compat.inc"

}  // namespace

bool bert_is_control(char32_t c) {
  if (c == '\t' || c == '\n' || c == '\r') return false;
  const int k = unicode_category(c);
  // `is_other` of the unicode_categories crate: Cc, Cf, Co, Cs (not Cn).
  if (k == UTF8PROC_CATEGORY_CC || k == UTF8PROC_CATEGORY_CF || k == UTF8PROC_CATEGORY_CO ||
      k == UTF8PROC_CATEGORY_CS)
    return !in_ranges(kBertNotControl, c);
  return in_ranges(kBertExtraControl, c);
}

bool bert_is_mark_nonspacing(char32_t c) {
  if (is_mark_nonspacing(c)) return !in_ranges(kBertNotMark, c);
  return in_ranges(kBertExtraMark, c);
}

bool bert_is_whitespace(char32_t c) {
  return c == '\t' || c == '\n' || c == '\r' || is_rust_whitespace(c);
}

bool bert_is_chinese_char(char32_t c) {
  // The ranges of `tokenizers` normalizers/bert.rs (which start the extension-E range at
  // U+2B920, not U+2B820 as BERT's Python code does).
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
         (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
         (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

bool bert_is_punctuation(char32_t c) {
  if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
      (c >= 123 && c <= 126))
    return true;
  const int k = unicode_category(c);
  if (k >= UTF8PROC_CATEGORY_PC && k <= UTF8PROC_CATEGORY_PO) return !in_ranges(kBertNotPunct, c);
  return in_ranges(kBertExtraPunct, c);
}

}  // namespace lorafit::text
