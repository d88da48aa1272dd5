// The option parser of every lorafit command (cli.h): CLI11 reads the command line, io reads
// JSON / YAML config files, and values are checked against the table's kinds before a command
// sees them.
#include "cli/cli.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>

namespace lorafit::cli {

namespace {

bool ends_with(const std::string& s, const std::string& e) {
  return s.size() >= e.size() && s.compare(s.size() - e.size(), e.size(), e) == 0;
}

const char* expected_of(const std::string& kind) {
  if (kind == "int") return "an integer";
  if (kind == "num") return "a number";
  if (kind == "bool") return "true or false";
  return "a value";
}

bool parse_int(const std::string& v, int64_t& out) {
  try {
    size_t pos = 0;
    const long long x = std::stoll(v, &pos);
    if (pos != v.size()) return false;
    out = x;
    return true;
  } catch (...) {
    return false;
  }
}

bool parse_num(const std::string& v, double& out) {
  try {
    size_t pos = 0;
    const double x = std::stod(v, &pos);
    if (pos != v.size() || !std::isfinite(x)) return false;
    out = x;
    return true;
  } catch (...) {
    return false;
  }
}

bool parse_bool(const std::string& v, bool& out) {
  if (v == "true" || v == "1" || v == "yes") return out = true, true;
  if (v == "false" || v == "0" || v == "no" || v.empty()) return out = false, true;
  return false;
}

// A config value as the option's text: scalars as written, lists joined by commas.
std::string config_text(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "";
  if (v.is_array()) {
    std::string r;
    for (auto& e : v) {
      if (!r.empty()) r.push_back(',');
      r.append(e.is_string() ? e.get<std::string>() : e.dump());
    }
    return r;
  }
  return v.dump();
}

}  // namespace

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s + ",") {
    if (c == ',') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else if (c != ' ') {
      cur += c;
    }
  }
  return out;
}

Options::Options(std::vector<OptSpec> specs, std::string cmd, bool config)
    : specs_(std::move(specs)), cmd_(std::move(cmd)), config_(config) {
  if (config_ && !find("config"))
    specs_.insert(specs_.begin(),
                  {"config", "str", "",
                   "JSON or YAML (.yaml/.yml) file of options (keys as the flags, - or _)"});
}

const OptSpec* Options::find(const std::string& k) const {
  for (auto& s : specs_)
    if (k == s.name) return &s;
  return nullptr;
}

const OptSpec& Options::spec(const std::string& k) const {
  const OptSpec* s = find(k);
  if (!s) throw Error("[" + cmd_ + "] internal: no option --" + k);
  return *s;
}

void Options::fail_unknown(const std::string& key, const std::string& where) const {
  // Suggest the closest known name (longest shared prefix), so a typo explains itself.
  std::string best;
  size_t best_len = 0;
  for (auto& s : specs_) {
    size_t n = 0;
    while (n < key.size() && s.name[n] && s.name[n] == key[n]) ++n;
    if (n > best_len) best_len = n, best = s.name;
  }
  throw Error("[" + cmd_ + "] unknown option " +
              (where.empty() ? "--" + key : where + ": key '" + key + "'") +
              (best_len >= 2 ? " (did you mean --" + best + "?)" : "") + "; see lorafit " + cmd_ +
              " --help");
}

// Checks a value against its option's kind, then keeps it (a "multi" option appends).
void Options::set(const OptSpec& s, const std::string& value, const std::string& where,
                  bool append) {
  const std::string kind = s.kind;
  int64_t i;
  double d;
  bool b;
  const bool ok = kind == "int"    ? parse_int(value, i)
                  : kind == "num"  ? parse_num(value, d)
                  : kind == "bool" ? parse_bool(value, b)
                                   : true;
  if (!ok)
    throw Error("[" + cmd_ + "] " + where + "--" + s.name + ": expected " + expected_of(kind) +
                ", got '" + value + "'");
  auto& v = values_[s.name];
  if (!append || kind != "multi") v.clear();
  v.push_back(value);
}

void Options::read_config(const std::string& path) {
  const bool yaml = ends_with(path, ".yaml") || ends_with(path, ".yml");
  const json j = yaml ? io::read_yaml_file(path) : io::read_json_file(path);
  if (!j.is_object()) throw Error("[" + cmd_ + "] " + path + ": expected a mapping of options");
  // Nested mappings name options by their joined keys: lora: {r: 16} -> lora-r.
  std::function<void(const json&, const std::string&)> walk = [&](const json& obj,
                                                                  const std::string& prefix) {
    for (auto it = obj.begin(); it != obj.end(); ++it) {
      std::string key = prefix + it.key();
      std::replace(key.begin(), key.end(), '_', '-');
      if (it.value().is_object()) {
        walk(it.value(), key + "-");
        continue;
      }
      const OptSpec* s = find(key);
      if (!s || key == "config") fail_unknown(key, path);
      if (std::string(s->kind) == "multi" && it.value().is_array()) {
        for (auto& e : it.value()) set(*s, config_text(e), path + ": ", true);
      } else {
        set(*s, config_text(it.value()), path + ": ", false);
      }
    }
  };
  walk(j, "");
}

void Options::parse(int argc, char** argv) {
  CLI::App app;
  app.set_help_flag();  // our own --help, from the table
  app.allow_extras();   // unknown ones are reported below, with a suggestion
  // Every option keeps all its occurrences as text; kinds are checked by set().
  std::vector<std::unique_ptr<std::vector<std::string>>> store;
  std::vector<std::pair<const OptSpec*, CLI::Option*>> opts;
  for (auto& s : specs_) {
    store.push_back(std::make_unique<std::vector<std::string>>());
    const std::string name = std::string("--") + s.name;
    CLI::Option* o;
    if (!std::strcmp(s.kind, "bool"))
      o = app.add_flag(name + "{true}", *store.back());
    else
      o = app.add_option(name, *store.back())->expected(1)->allow_extra_args(false);
    o->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
    opts.emplace_back(&s, o);
  }
  std::vector<std::string> args;
  for (int i = argc - 1; i >= 1; --i) args.emplace_back(argv[i]);  // CLI11 takes them reversed
  try {
    app.parse(args);
  } catch (const CLI::ArgumentMismatch& e) {
    // "--model: 1 required TEXT missing"
    std::string what = e.what();
    const std::string name = what.substr(0, what.find(':'));
    const OptSpec* s = name.rfind("--", 0) == 0 ? find(name.substr(2)) : nullptr;
    throw Error("[" + cmd_ + "] " + name + " needs a value" +
                (s ? std::string(" (") + s->help + ")" : ""));
  } catch (const CLI::ParseError& e) {
    throw Error("[" + cmd_ + "] " + e.what() + "; see lorafit " + cmd_ + " --help");
  }
  for (const std::string& a : app.remaining()) {
    double num;
    if (a.size() > 1 && a[0] == '-' && !parse_num(a, num)) {  // "-5" stays a positional value
      std::string key = a.substr(a.rfind("--", 0) == 0 ? 2 : 1);
      fail_unknown(key.substr(0, key.find('=')), "");
    }
    positional.push_back(a);
  }
  // Config files first (in order), then the flags over them.
  for (size_t i = 0; i < opts.size(); ++i)
    if (!std::strcmp(opts[i].first->name, "config"))
      for (const auto& path : *store[i]) read_config(path);
  for (size_t i = 0; i < opts.size(); ++i) {
    const OptSpec& s = *opts[i].first;
    if (!std::strcmp(s.name, "config") || store[i]->empty()) continue;
    if (!std::strcmp(s.kind, "multi")) values_.erase(s.name);  // flags replace a config's list
    // Given twice on the command line: which one was meant is a guess, so ask (a flag over a
    // --config file's value is the documented override, and stays allowed).
    if (std::strcmp(s.kind, "multi") != 0 && store[i]->size() > 1) {
      std::string vals;
      for (const auto& v : *store[i]) vals += (vals.empty() ? "'" : ", '") + v + "'";
      throw Error("[" + cmd_ + "] --" + s.name + " is given " + std::to_string(store[i]->size()) +
                  " times (" + vals + "); give it once");
    }
    for (const auto& v : *store[i]) set(s, v, "", true);
  }
}

bool Options::has(const std::string& k) const {
  spec(k);
  return values_.count(k) > 0;
}

std::string Options::str(const std::string& k) const {
  const OptSpec& s = spec(k);
  auto it = values_.find(k);
  return it != values_.end() && !it->second.empty() ? it->second.back() : s.dflt;
}

int64_t Options::integer(const std::string& k) const {
  int64_t x = 0;
  const std::string v = str(k);
  if (!parse_int(v, x))
    throw Error("[" + cmd_ + "] --" + k + ": expected an integer, got '" + v + "'");
  return x;
}

double Options::number(const std::string& k) const {
  double x = 0;
  const std::string v = str(k);
  if (!parse_num(v, x))
    throw Error("[" + cmd_ + "] --" + k + ": expected a number, got '" + v + "'");
  return x;
}

bool Options::flag(const std::string& k) const {
  bool x = false;
  const std::string v = str(k);
  if (!parse_bool(v, x))
    throw Error("[" + cmd_ + "] --" + k + ": expected true or false, got '" + v + "'");
  return x;
}

std::vector<std::string> Options::list(const std::string& k) const {
  return split_list(str(k));
}

std::vector<std::string> Options::all(const std::string& k) const {
  spec(k);
  auto it = values_.find(k);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

void print_help(const char* usage, const std::vector<OptSpec>& specs, const char* tail) {
  std::fputs(usage, stdout);
  bool config = false;
  for (auto& s : specs) config = config || !std::strcmp(s.name, "config");
  std::fputs(config ? "\nOptions (also as keys of a JSON or YAML file given with --config; nested "
                      "keys join with "
                      "'-', so\n`lora: {r: 16}` is --lora-r; flags override the file):\n"
                    : "\nOptions:\n",
             stdout);
  for (auto& s : specs) {
    const std::string kind = s.kind;
    const char* meta = kind == "bool"   ? ""
                       : kind == "list" ? " A,B"
                       : kind == "int"  ? " N"
                       : kind == "num"  ? " X"
                                        : " S";
    std::string left = "  --";
    left.append(s.name).append(meta);
    std::printf("%-28s %s%s", left.c_str(), s.help, kind == "multi" ? " (repeatable)" : "");
    if (*s.dflt) std::printf(" [default: %s]", s.dflt);
    std::printf("\n");
  }
  if (tail) std::fputs(tail, stdout);
}

bool wants_help(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) return true;
  return false;
}

int run_command(const std::string& cmd, const std::function<int()>& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lorafit %s: %s\n", cmd.c_str(), e.what());
    return 1;
  }
}

}  // namespace lorafit::cli
