// YAML options files (io.h: read_yaml_file), read by yaml-cpp and handed on as JSON: mappings
// (nested too), sequences and scalars (as strings; the caller interprets them).
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <set>
#include <sstream>
#include <string>
#include <string_view>

#include "lorafit/io.h"

namespace lorafit::io {

namespace {

[[noreturn]] void fail(const std::string& origin, int line, const std::string& what) {
  throw Error("[yaml] " + origin + ": line " + std::to_string(line) + ": " + what);
}

bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = s[i];
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? c : c & (0x7f >> n);
    for (size_t k = 1; k < n; ++k) {
      const unsigned char d = s[i + k];
      if ((d >> 6) != 2) return false;
      cp = (cp << 6) | (d & 0x3f);
    }
    // Overlong forms, surrogates and code points beyond U+10FFFF, as nlohmann refuses them.
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
        (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
      return false;
    i += n;
  }
  return true;
}

int line_of(const YAML::Node& n) {
  return n.Mark().line + 1;
}

json to_json(const YAML::Node& n, const std::string& origin) {
  switch (n.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      return "";  // `key:` with nothing after it
    case YAML::NodeType::Scalar:
      // Every value ends up in JSON (run_config.json), which holds only UTF-8: refuse it here
      // with the line rather than let a later dump() throw (found by fuzz_yaml).
      if (!valid_utf8(n.Scalar())) fail(origin, line_of(n), "invalid UTF-8 in a value");
      return n.Scalar();
    case YAML::NodeType::Sequence: {
      json a = json::array();
      for (const auto& e : n) a.push_back(to_json(e, origin));
      return a;
    }
    case YAML::NodeType::Map: {
      json o = json::object();
      std::set<std::string> seen;
      for (const auto& kv : n) {
        if (!kv.first.IsScalar()) fail(origin, line_of(kv.first), "a key must be a plain name");
        const std::string key = kv.first.Scalar();
        if (!valid_utf8(key)) fail(origin, line_of(kv.first), "invalid UTF-8 in a key");
        if (!seen.insert(key).second)
          fail(origin, line_of(kv.first), "'" + key + "' appears twice");
        o[key] = to_json(kv.second, origin);
      }
      return o;
    }
  }
  return "";
}

}  // namespace

json parse_yaml(std::string_view text, const std::string& origin) {
  // yaml-cpp (0.7) loops forever on some malformed directive lines ("% x:" then a key; found by
  // fuzz_yaml). An options file has no use for directives, so a line starting with '%' (which in
  // YAML can only be a directive) is refused before yaml-cpp sees it.
  for (size_t pos = 0, line = 1; pos < text.size(); ++line) {
    if (text[pos] == '%')
      fail(origin, static_cast<int>(line), "YAML directives ('%' at the start of a line) are not supported");
    const size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) break;
    pos = nl + 1;
  }
  // YAML::LoadAll (0.7) also loops forever, building empty documents, on a stray flow indicator
  // such as a file that is only ',' (found by fuzz_yaml). So the documents are counted with the
  // event parser first, stopping at the second one or at a document that starts where the previous
  // one did (no progress), and only a single document is then loaded.
  YAML::Node doc;
  try {
    struct Starts : YAML::EventHandler {
      std::vector<YAML::Mark> marks;    // where each document starts
      std::vector<YAML::Mark> content;  // where its first node starts (the second one's is named)
      void node(const YAML::Mark& m) {
        if (content.size() < marks.size()) content.push_back(m);
      }
      void OnDocumentStart(const YAML::Mark& m) override { marks.push_back(m); }
      void OnDocumentEnd() override {}
      void OnNull(const YAML::Mark& m, YAML::anchor_t) override { node(m); }
      void OnAlias(const YAML::Mark& m, YAML::anchor_t) override { node(m); }
      void OnScalar(const YAML::Mark& m, const std::string&, YAML::anchor_t, const std::string&) override { node(m); }
      void OnSequenceStart(const YAML::Mark& m, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override { node(m); }
      void OnSequenceEnd() override {}
      void OnMapStart(const YAML::Mark& m, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override { node(m); }
      void OnMapEnd() override {}
    } starts;
    std::istringstream in{std::string(text)};
    YAML::Parser parser(in);
    while (parser.HandleNextDocument(starts) && starts.marks.size() < 2) {
    }
    if (starts.marks.size() >= 2) {
      const YAML::Mark& a = starts.marks[0];
      const YAML::Mark& b = starts.marks[1];
      if (a.pos == b.pos)
        fail(origin, a.line + 1, "cannot be parsed as YAML (a stray ',', '[' or '{'?)");
      const YAML::Mark& c = starts.content.size() >= 2 ? starts.content[1] : b;
      fail(origin, c.line + 1, "expected one YAML document");
    }
    doc = YAML::Load(std::string(text));
  } catch (const YAML::Exception& e) {
    fail(origin, e.mark.line + 1, e.msg);
  }
  if (!doc.IsDefined() || doc.IsNull()) return json::object();
  if (!doc.IsMap()) fail(origin, line_of(doc), "expected a mapping of 'key: value' lines at the top");
  return to_json(doc, origin);
}

json read_yaml_file(const std::string& path) {
  if (!file_exists(path)) throw Error("[yaml] " + path + ": no such file");
  return parse_yaml(read_file(path), path);
}

}  // namespace lorafit::io
