// The YAML subset of options files (io.h: read_yaml_file): a flat mapping of scalars and lists.
// Written by hand because that is all a config file needs; a full YAML library would be a large
// dependency for `max_steps: 300`.
#include <string>
#include <string_view>
#include <vector>

#include "lorafit/io.h"

namespace lorafit::io {

namespace {

struct YamlReader {
  std::string origin;
  int line = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw Error("[yaml] " + origin + ": line " + std::to_string(line) + ": " + what);
  }

  static std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\r')) s.remove_suffix(1);
    return s;
  }

  // Drops a trailing "# comment" (a '#' at the start or after a space, outside quotes).
  std::string_view strip_comment(std::string_view s) const {
    char q = 0;
    for (size_t i = 0; i < s.size(); ++i) {
      const char c = s[i];
      if (q) {
        if (q == '"' && c == '\\')
          ++i;  // an escaped character, \" included
        else if (c == q)
          q = 0;
      } else if (c == '\'' || c == '"') {
        q = c;
      } else if (c == '#' && (i == 0 || s[i - 1] == ' ')) {
        return s.substr(0, i);
      }
    }
    return s;
  }

  // One scalar: 'single' (with '' for a quote), "double" (with \" \\ \n \t escapes) or plain.
  std::string scalar(std::string_view s) const {
    s = trim(s);
    if (s.empty()) return "";
    if (s.front() == '\'' || s.front() == '"') {
      const char q = s.front();
      std::string out;
      size_t i = 1;
      for (; i < s.size(); ++i) {
        const char c = s[i];
        if (c == q) {
          if (q == '\'' && i + 1 < s.size() && s[i + 1] == '\'') {
            out.push_back('\'');
            ++i;
            continue;
          }
          break;
        }
        if (q == '"' && c == '\\' && i + 1 < s.size()) {
          const char e = s[++i];
          out.push_back(e == 'n' ? '\n' : e == 't' ? '\t' : e);
          continue;
        }
        out.push_back(c);
      }
      if (i >= s.size())
        fail(std::string("unterminated ") + (q == '"' ? "double" : "single") + "-quoted string");
      if (!trim(s.substr(i + 1)).empty())
        fail("unexpected text after the closing quote: '" + std::string(trim(s.substr(i + 1))) +
             "'");
      return out;
    }
    for (char c : {'&', '*', '!', '|', '>', '{', '%', '@', '`'})
      if (s.front() == c)
        fail(std::string("'") + c +
             "' starts a YAML feature options files do not use (anchors, tags, "
             "block strings, mappings); quote the value if it is text");
    if (s.find(": ") != std::string_view::npos || s.back() == ':')
      fail("a nested mapping ('" + std::string(s) + "'); options are one flat 'key: value' list");
    return std::string(s);
  }

  json inline_list(std::string_view s) const {
    s = trim(s);
    if (s.back() != ']') fail("an inline list must end with ']' on the same line");
    std::string_view body = s.substr(1, s.size() - 2);
    json arr = json::array();
    if (trim(body).empty()) return arr;
    size_t start = 0;
    char q = 0;
    for (size_t i = 0; i <= body.size(); ++i) {
      const char c = i < body.size() ? body[i] : ',';
      if (q) {
        if (c == q) q = 0;
        continue;
      }
      if (c == '\'' || c == '"')
        q = c;
      else if (c == '[')
        fail("nested lists are not supported");
      else if (c == ',') {
        std::string_view item = trim(body.substr(start, i - start));
        if (item.empty()) fail("empty item in an inline list");
        arr.push_back(scalar(item));
        start = i + 1;
      }
    }
    return arr;
  }

  json parse(std::string_view text) {
    json out = json::object();
    std::string list_key;                // the key whose block list ("  - item") is being read
    std::vector<std::string> bare_keys;  // "key:" with no value on its line
    size_t pos = 0;
    while (pos <= text.size()) {
      size_t nl = text.find('\n', pos);
      if (nl == std::string_view::npos) nl = text.size();
      std::string_view raw = text.substr(pos, nl - pos);
      pos = nl + 1;
      ++line;
      if (raw.find('\t') != std::string_view::npos && raw.find('\t') < raw.find_first_not_of(" \t"))
        fail("a tab in the indentation (YAML allows spaces only)");
      std::string_view l = strip_comment(raw);
      if (trim(l).empty()) {
        if (nl == text.size()) break;
        continue;
      }
      const size_t indent = l.find_first_not_of(' ');
      std::string_view body = trim(l);
      if (line == 1 && body == "---") continue;
      if (body == "---" || body == "...") fail("only one YAML document per options file");
      if (body.front() == '-' && (body.size() == 1 || body[1] == ' ')) {
        if (list_key.empty()) fail("a list item '- ...' outside a 'key:' with no value above it");
        std::string_view item = trim(body.substr(1));
        if (item.empty()) fail("an empty list item");
        if (item.front() == '[') fail("nested lists are not supported");
        out[list_key].push_back(scalar(item));
        if (nl == text.size()) break;
        continue;
      }
      if (indent != 0) fail("unexpected indentation: options are one flat 'key: value' list");
      list_key.clear();
      size_t colon = body.find(':');
      while (colon != std::string_view::npos && colon + 1 < body.size() && body[colon + 1] != ' ')
        colon = body.find(':', colon + 1);
      if (colon == std::string_view::npos)
        fail("expected 'key: value', got '" + std::string(body) + "'");
      std::string key = std::string(trim(body.substr(0, colon)));
      if (key.empty()) fail("a value without a key");
      if (key.front() == '\'' || key.front() == '"') key = scalar(key);
      if (out.contains(key)) fail("key '" + key + "' appears twice");
      std::string_view value = trim(body.substr(colon + 1));
      if (value.empty()) {
        out[key] = json::array();  // a block list follows (or the value is empty)
        list_key = key;
        bare_keys.push_back(key);
      } else if (value.front() == '[') {
        out[key] = inline_list(value);
      } else {
        out[key] = scalar(value);
      }
      if (nl == text.size()) break;
    }
    // "key:" with nothing under it is an empty value, not an empty list.
    for (const auto& k : bare_keys)
      if (out[k].empty()) out[k] = "";
    return out;
  }
};

}  // namespace

json parse_yaml(std::string_view text, const std::string& origin) {
  YamlReader r;
  r.origin = origin;
  return r.parse(text);
}

json read_yaml_file(const std::string& path) {
  if (!file_exists(path)) throw Error("[yaml] " + path + ": no such file");
  return parse_yaml(read_file(path), path);
}

}  // namespace lorafit::io
