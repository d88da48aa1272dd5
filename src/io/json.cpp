// JSON files and typed field access with errors that name the file, the field and the type.
#include <cmath>
#include <cstdio>
#include <limits>

#include "lorafit/io.h"

namespace lorafit::io {

namespace {

[[noreturn]] void field_error(std::string_view where, std::string_view key, const std::string& msg) {
  throw Error("[json] " + std::string(where) + ": field '" + std::string(key) + "'" + msg);
}

// The field, or nullptr when absent or null. Throws when obj is not an object.
const json* field(const json& obj, std::string_view key, std::string_view where) {
  if (!obj.is_object())
    throw Error("[json] " + std::string(where) + ": expected an object, got " +
                json_type_name(obj) + " (looking for field '" + std::string(key) + "')");
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

const json& required(const json& obj, std::string_view key, std::string_view where) {
  const json* v = field(obj, key, where);
  if (!v) field_error(where, key, " is missing");
  return *v;
}

// An integer from a JSON number without a fractional part, or nullopt-style false.
bool to_int(const json& v, int64_t* out) {
  if (v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
    *out = static_cast<int64_t>(u);
    return true;
  }
  if (v.is_number_integer()) {
    *out = v.get<int64_t>();
    return true;
  }
  if (v.is_number_float()) {
    double d = v.get<double>();
    // 2^63 is exactly representable; anything >= it does not fit.
    if (!std::isfinite(d) || d != std::floor(d) || d < -9223372036854775808.0 ||
        d >= 9223372036854775808.0)
      return false;
    *out = static_cast<int64_t>(d);
    return true;
  }
  return false;
}

std::string got(const json& v) {
  std::string s = ", got ";
  s.append(json_type_name(v));
  if (v.is_number_float()) {
    s.push_back(' ');
    s.append(v.dump());  // shows why 3.5 is not an integer
  }
  return s;
}

// "[3]: expected integer, got string", built by appends (GCC 12 warns falsely on "[" + str).
std::string index_msg(size_t i, const char* expected, const json& v) {
  std::string m = "[";
  m.append(std::to_string(i)).append("]: expected ").append(expected).append(got(v));
  return m;
}

// nlohmann quotes the bytes it last read: from a binary file given as JSON they would reach the
// terminal raw. Control and non-ASCII bytes become \xNN.
std::string printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7F) {
      out.push_back(static_cast<char>(c));
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

}  // namespace

const char* json_type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::object: return "object";
    case json::value_t::array: return "array";
    case json::value_t::string: return "string";
    case json::value_t::boolean: return "bool";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "integer";
    case json::value_t::number_float: return "number";
    case json::value_t::binary: return "binary";
    case json::value_t::discarded: return "discarded";
  }
  return "unknown";
}

json parse_json(std::string_view text, const std::string& origin) {
  try {
    return json::parse(text.begin(), text.end());
  } catch (const json::parse_error& e) {
    // e.byte is the 1-based position of the character where parsing failed.
    size_t pos = e.byte > 0 ? e.byte - 1 : 0;
    if (pos > text.size()) pos = text.size();
    size_t line = 1, col = 1;
    for (size_t i = 0; i < pos; ++i) {
      if (text[i] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    std::string what = e.what();
    size_t c = what.find("column");
    size_t colon = c == std::string::npos ? std::string::npos : what.find(": ", c);
    if (colon != std::string::npos) what = what.substr(colon + 2);
    throw Error("[json] " + origin + ": line " + std::to_string(line) + ", column " +
                std::to_string(col) + ": " + printable(what));
  }
  catch (const json::exception& e) {
    // Not a syntax error but a value the parser refuses (a number beyond 64 bits, ...): found
    // by fuzz_json; it escaped as a nlohmann exception without the file's name.
    std::string what = e.what();
    const size_t br = what.find("] ");
    if (br != std::string::npos) what = what.substr(br + 2);
    throw Error("[json] " + origin + ": " + printable(what));
  }
}

json read_json_file(const std::string& path) {
  if (!file_exists(path)) throw Error("[json] " + path + ": no such file");
  return parse_json(read_file(path), path);
}

void write_json_file(const std::string& path, const json& value, int indent) {
  std::string s = value.dump(indent < 0 ? -1 : indent);
  s += '\n';
  write_file_atomic(path, s);
}

namespace {

json read_object_file(const std::string& path) {
  json j = read_json_file(path);
  if (!j.is_object())
    throw Error("[json] " + path + ": expected a JSON object, got " + json_type_name(j));
  return j;
}

std::string join(const std::string& dir, const char* name) {
  if (dir.empty()) return name;
  return dir.back() == '/' ? dir + name : dir + "/" + name;
}

}  // namespace

json read_config(const std::string& model_dir) {
  return read_object_file(join(model_dir, "config.json"));
}

json read_tokenizer_config(const std::string& model_dir) {
  return read_object_file(join(model_dir, "tokenizer_config.json"));
}

bool json_has(const json& obj, std::string_view key) {
  if (!obj.is_object()) return false;
  auto it = obj.find(key);
  return it != obj.end() && !it->is_null();
}

int64_t json_int(const json& obj, std::string_view key, std::string_view where) {
  const json& v = required(obj, key, where);
  int64_t out = 0;
  if (!to_int(v, &out)) field_error(where, key, ": expected integer" + got(v));
  return out;
}

int64_t json_int(const json& obj, std::string_view key, std::string_view where, int64_t dflt) {
  return field(obj, key, where) ? json_int(obj, key, where) : dflt;
}

double json_number(const json& obj, std::string_view key, std::string_view where) {
  const json& v = required(obj, key, where);
  if (!v.is_number()) field_error(where, key, ": expected number" + got(v));
  return v.get<double>();
}

double json_number(const json& obj, std::string_view key, std::string_view where, double dflt) {
  return field(obj, key, where) ? json_number(obj, key, where) : dflt;
}

bool json_bool(const json& obj, std::string_view key, std::string_view where) {
  const json& v = required(obj, key, where);
  if (!v.is_boolean()) field_error(where, key, ": expected bool" + got(v));
  return v.get<bool>();
}

bool json_bool(const json& obj, std::string_view key, std::string_view where, bool dflt) {
  return field(obj, key, where) ? json_bool(obj, key, where) : dflt;
}

std::string json_string(const json& obj, std::string_view key, std::string_view where) {
  const json& v = required(obj, key, where);
  if (!v.is_string()) field_error(where, key, ": expected string" + got(v));
  return v.get<std::string>();
}

std::string json_string(const json& obj, std::string_view key, std::string_view where,
                        const std::string& dflt) {
  return field(obj, key, where) ? json_string(obj, key, where) : dflt;
}

std::vector<std::string> json_string_list(const json& obj, std::string_view key,
                                          std::string_view where) {
  const json& v = required(obj, key, where);
  if (v.is_string()) return {v.get<std::string>()};
  if (!v.is_array()) field_error(where, key, ": expected list of strings" + got(v));
  std::vector<std::string> out;
  out.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    if (!v[i].is_string())
      field_error(where, key, index_msg(i, "string", v[i]));
    out.push_back(v[i].get<std::string>());
  }
  return out;
}

std::vector<int64_t> json_int_list(const json& obj, std::string_view key, std::string_view where) {
  const json& v = required(obj, key, where);
  if (!v.is_array()) field_error(where, key, ": expected list of integers" + got(v));
  std::vector<int64_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i)
    if (!to_int(v[i], &out[i]))
      field_error(where, key, index_msg(i, "integer", v[i]));
  return out;
}

}  // namespace lorafit::io
