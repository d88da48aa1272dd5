// Shared by the lorafit subcommands: one option parser for every command. A command declares a
// table of options once; the table drives the command line (parsed by CLI11), JSON and YAML
// config files (--config; nested keys join with '-': `lora: {r: 16}` is --lora-r) and --help.
// Unknown options and malformed values are refused with the option's name and what it expects.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "lorafit/io.h"

namespace lorafit::cli {

using lorafit::Error;
using lorafit::io::json;

// kind: "str", "int", "num", "bool", "list" (comma-separated, or a config list), "multi" (a
// string option that may be repeated: --prompt A --prompt B).
struct OptSpec {
  const char* name;  // without the dashes, as on the command line
  const char* kind;
  const char* dflt;  // shown in --help ("" = none)
  const char* help;
};

// --compute-dtype, the same in train, eval, logits and generate.
inline constexpr OptSpec kComputeDtypeOpt{
    "compute-dtype", "str", "fp32",
    "frozen weight products (x W^T, dy W) and the dense attention products: fp32 | bf16 (BF16 "
    "operands, fp32 sums; the LoRA path, optimizer and master weights stay fp32; needs "
    "AVX512-BF16 or AMX and oneDNN) | auto (bf16 where available and its products measure at "
    "least 1.2x faster than fp32 here; lorafit --version shows the choice)"};

class Options {
 public:
  // cmd names the command in messages ("train", "adapter merge"); config: whether --config
  // (a JSON or YAML file of options) is accepted.
  Options(std::vector<OptSpec> specs, std::string cmd, bool config = true);

  // Config files first, command-line flags override them. Throws Error:
  //   "[train] unknown option --lr-rate (did you mean --lr?); see lorafit train --help"
  //   "[logits] --threads: expected an integer, got 'x'"
  //   "[train] --model needs a value (model folder ...)"
  void parse(int argc, char** argv);

  bool has(const std::string& k) const;  // given on the command line or in a config file
  std::string str(const std::string& k) const;
  int64_t integer(const std::string& k) const;
  double number(const std::string& k) const;
  bool flag(const std::string& k) const;
  std::vector<std::string> list(const std::string& k) const;
  std::vector<std::string> all(const std::string& k) const;  // every value of a "multi" option

  const std::vector<OptSpec>& specs() const { return specs_; }
  std::vector<std::string> positional;  // arguments that are not options, in order

 private:
  const OptSpec& spec(const std::string& k) const;
  const OptSpec* find(const std::string& k) const;
  [[noreturn]] void fail_unknown(const std::string& key, const std::string& where) const;
  void set(const OptSpec& s, const std::string& value, const std::string& where, bool append);
  void read_config(const std::string& path);

  std::vector<OptSpec> specs_;
  std::string cmd_;
  bool config_;
  std::map<std::string, std::vector<std::string>> values_;
};

// --help text: usage, then one line per option from the table, then tail.
void print_help(const char* usage, const std::vector<OptSpec>& specs, const char* tail = nullptr);
bool wants_help(int argc, char** argv);

// Runs a command body; an exception becomes "lorafit <cmd>: <message>" on stderr and exit 1.
int run_command(const std::string& cmd, const std::function<int()>& body);

// "a,b, c" -> {a, b, c}
std::vector<std::string> split_list(const std::string& s);

}  // namespace lorafit::cli
