// Shared by the lorafit subcommands: the option table (flags, JSON/YAML config, --help) and
// small printing helpers.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "lorafit/io.h"

namespace lorafit::cli {

using lorafit::Error;
using lorafit::io::json;

struct OptSpec {
  const char* name;   // with dashes, as on the command line
  const char* kind;   // "str", "int", "num", "bool", "list"
  const char* dflt;   // shown in --help ("" = none)
  const char* help;
};

// Options: config file (--config: JSON, or YAML for .yaml/.yml) first, command-line flags override.
// Keys use dashes on the command line and either dashes or underscores in the file.
class Options {
 public:
  Options(const std::vector<OptSpec>& specs, const std::string& cmd) : specs_(specs), cmd_(cmd) {}

  void parse(int argc, char** argv) {
    std::vector<std::pair<std::string, std::string>> flags;
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a.rfind("--", 0) != 0) {
        positional.push_back(a);
        continue;
      }
      std::string key = a.substr(2), val;
      bool has_val = false;
      if (auto eq = key.find('='); eq != std::string::npos) {
        val = key.substr(eq + 1);
        key = key.substr(0, eq);
        has_val = true;
      }
      const OptSpec* s = find(key);
      if (!s) fail_unknown(key, "flag --");
      if (!has_val) {
        if (!std::strcmp(s->kind, "bool")) {
          val = "true";
        } else {
          if (i + 1 >= argc) throw Error("[" + cmd_ + "] --" + key + " needs a value (" + s->help + ")");
          val = argv[++i];
        }
      }
      flags.emplace_back(key, val);
    }
    for (auto& [k, v] : flags)
      if (k == "config") {
        const auto ends = [&](const std::string& e) {
          return v.size() >= e.size() && v.compare(v.size() - e.size(), e.size(), e) == 0;
        };
        const bool yaml = ends(".yaml") || ends(".yml");
        json j = yaml ? lorafit::io::read_yaml_file(v) : lorafit::io::read_json_file(v);
        if (!j.is_object()) throw Error("[" + cmd_ + "] " + v + ": expected a JSON object of options");
        for (auto it = j.begin(); it != j.end(); ++it) {
          std::string key = it.key();
          std::replace(key.begin(), key.end(), '_', '-');
          const OptSpec* s = find(key);
          if (!s) fail_unknown(key, v + ": key '");
          const auto& val = it.value();
          values_[key] = val.is_string() ? val.get<std::string>()
                         : val.is_array()
                             ? [&] {
                                 std::string r;
                                 for (auto& e : val) {
                                   if (!r.empty()) r.push_back(',');
                                   r.append(e.is_string() ? e.get<std::string>() : e.dump());
                                 }
                                 return r;
                               }()
                             : val.dump();
        }
      }
    for (auto& [k, v] : flags)
      if (k != "config") values_[k] = v;
  }

  bool has(const std::string& k) const { return values_.count(k) > 0; }
  std::string str(const std::string& k) const {
    auto it = values_.find(k);
    if (it != values_.end()) return it->second;
    return find(k)->dflt;
  }
  int64_t integer(const std::string& k) const {
    std::string v = str(k);
    try {
      size_t pos = 0;
      long long x = std::stoll(v, &pos);
      if (pos == v.size()) return x;
    } catch (...) {
    }
    throw Error("[" + cmd_ + "] --" + k + ": expected an integer, got '" + v + "'");
  }
  double number(const std::string& k) const {
    std::string v = str(k);
    try {
      size_t pos = 0;
      double x = std::stod(v, &pos);
      if (pos == v.size() && std::isfinite(x)) return x;
    } catch (...) {
    }
    throw Error("[" + cmd_ + "] --" + k + ": expected a number, got '" + v + "'");
  }
  bool flag(const std::string& k) const {
    std::string v = str(k);
    if (v == "true" || v == "1" || v == "yes") return true;
    if (v == "false" || v == "0" || v == "no" || v.empty()) return false;
    throw Error("[" + cmd_ + "] --" + k + ": expected true or false, got '" + v + "'");
  }
  std::vector<std::string> list(const std::string& k) const {
    std::vector<std::string> out;
    std::string v = str(k), cur;
    for (char c : v + ",") {
      if (c == ',') {
        if (!cur.empty()) out.push_back(cur);
        cur.clear();
      } else if (c != ' ') {
        cur += c;
      }
    }
    return out;
  }
  // The effective configuration (defaults + given), for the checkpoint and the report.
  json to_json() const {
    json j = json::object();
    for (auto& s : specs_) {
      if (!std::strcmp(s.name, "config")) continue;
      std::string key = s.name;
      std::replace(key.begin(), key.end(), '-', '_');
      std::string v = str(s.name);
      if (!std::strcmp(s.kind, "int") || !std::strcmp(s.kind, "num")) {
        try {
          j[key] = json::parse(v);
          continue;
        } catch (...) {
        }
      }
      if (!std::strcmp(s.kind, "bool")) j[key] = v == "true" || v == "1";
      else j[key] = v;
    }
    return j;
  }

  std::vector<std::string> positional;

 private:
  const OptSpec* find(const std::string& k) const {
    for (auto& s : specs_)
      if (k == s.name) return &s;
    return nullptr;
  }
  [[noreturn]] void fail_unknown(const std::string& key, const std::string& where) const {
    // Suggest the closest known name (shared prefix), so a typo explains itself.
    std::string best;
    size_t best_len = 0;
    for (auto& s : specs_) {
      size_t n = 0;
      while (n < key.size() && s.name[n] && s.name[n] == key[n]) ++n;
      if (n > best_len) best_len = n, best = s.name;
    }
    throw Error("[" + cmd_ + "] unknown option " + (where == "flag --" ? "--" + key : where + key + "'") +
                (best_len >= 2 ? " (did you mean --" + best + "?)" : "") + "; see lorafit " + cmd_ + " --help");
  }
  std::vector<OptSpec> specs_;
  std::string cmd_;
  std::map<std::string, std::string> values_;
};

inline void print_help(const char* usage, const std::vector<OptSpec>& specs, const char* tail) {
  std::fputs(usage, stdout);
  std::fputs(
      "\nOptions (also as keys of a JSON or YAML file given with --config; flags override it):\n",
      stdout);
  for (auto& s : specs) {
    const std::string kind = s.kind;
    const char* meta = kind == "bool" ? "" : kind == "list" ? " A,B" : kind == "int" ? " N" : kind == "num" ? " X" : " S";
    std::string left = "  --";
    left.append(s.name).append(meta);
    std::printf("%-28s %s", left.c_str(), s.help);
    if (*s.dflt) std::printf(" [default: %s]", s.dflt);
    std::printf("\n");
  }
  if (tail) std::fputs(tail, stdout);
}

inline bool wants_help(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) return true;
  return false;
}


}  // namespace lorafit::cli
