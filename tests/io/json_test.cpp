// JSON helpers: parse errors with line/column, typed getters, config files.
#include <gtest/gtest.h>

#include "io_test_util.h"
#include "lorafit/io.h"

using namespace lorafit::io;
using io_test::expect_error;
using io_test::TempDir;

TEST(Json, ParseErrorNamesFileLineAndColumn) {
  TempDir dir;
  const std::string p = dir.file("config.json");
  io_test::write_bytes(p, "{\n  \"a\": 1,\n  \"b\": ,\n  \"c\": 2\n}\n");
  expect_error([&] { read_json_file(p); }, {"[json]", "config.json", "line 3, column 8"});
  io_test::write_bytes(p, "{\"a\": 1");
  expect_error([&] { read_json_file(p); }, {"[json]", "line 1"});
  expect_error([&] { read_json_file(dir.file("nope.json")); }, {"[json]", "nope.json", "no such file"});
  expect_error([&] { parse_json("[1, 2", "inline"); }, {"[json] inline: line 1"});
}

TEST(Json, TypedGetters) {
  json j = parse_json(R"({"n": 12, "f": 2.0, "h": 2.5, "s": "x", "b": true, "nul": null,
                          "big": 18446744073709551615, "l": ["q", "v"], "one": "q_proj",
                          "il": [1, 2.0, 3], "bad": [1, "2"]})",
                      "config.json");
  EXPECT_EQ(json_int(j, "n", "config.json"), 12);
  EXPECT_EQ(json_int(j, "f", "config.json"), 2);
  EXPECT_EQ(json_number(j, "h", "config.json"), 2.5);
  EXPECT_EQ(json_number(j, "n", "config.json"), 12.0);
  EXPECT_EQ(json_string(j, "s", "config.json"), "x");
  EXPECT_TRUE(json_bool(j, "b", "config.json"));
  EXPECT_EQ(json_int(j, "nul", "config.json", 7), 7);
  EXPECT_EQ(json_int(j, "absent", "config.json", 8), 8);
  EXPECT_EQ(json_string(j, "absent", "config.json", "d"), "d");
  EXPECT_FALSE(json_has(j, "nul"));
  EXPECT_TRUE(json_has(j, "s"));
  EXPECT_EQ(json_string_list(j, "l", "c"), (std::vector<std::string>{"q", "v"}));
  EXPECT_EQ(json_string_list(j, "one", "c"), (std::vector<std::string>{"q_proj"}));
  EXPECT_EQ(json_int_list(j, "il", "c"), (std::vector<int64_t>{1, 2, 3}));

  expect_error([&] { json_int(j, "s", "config.json"); },
               {"[json] config.json: field 's': expected integer, got string"});
  expect_error([&] { json_int(j, "h", "config.json"); }, {"field 'h': expected integer, got number 2.5"});
  expect_error([&] { json_int(j, "big", "config.json"); }, {"field 'big': expected integer"});
  expect_error([&] { json_int(j, "missing", "config.json"); }, {"field 'missing' is missing"});
  expect_error([&] { json_bool(j, "n", "config.json"); }, {"field 'n': expected bool, got integer"});
  expect_error([&] { json_string(j, "b", "config.json"); }, {"field 'b': expected string, got bool"});
  expect_error([&] { json_number(j, "s", "x.json"); }, {"[json] x.json: field 's': expected number"});
  expect_error([&] { json_int_list(j, "bad", "c"); }, {"field 'bad'[1]: expected integer, got string"});
  expect_error([&] { json_string_list(j, "n", "c"); }, {"field 'n': expected list of strings"});
  expect_error([&] { json_int(json::array(), "n", "c"); }, {"expected an object, got array"});
}

TEST(Json, ConfigFilesAndWriting) {
  TempDir dir;
  write_json_file(dir.file("config.json"), json{{"model_type", "bert"}, {"hidden_size", 384}});
  write_json_file(dir.file("tokenizer_config.json"), json{{"do_lower_case", true}}, -1);
  json c = read_config(dir.path());
  EXPECT_EQ(json_string(c, "model_type", "config.json"), "bert");
  EXPECT_EQ(json_int(c, "hidden_size", "config.json"), 384);
  EXPECT_TRUE(json_bool(read_tokenizer_config(dir.path() + "/"), "do_lower_case", "t"));
  EXPECT_EQ(io_test::read_bytes(dir.file("tokenizer_config.json")), "{\"do_lower_case\":true}\n");
  io_test::write_bytes(dir.file("config.json"), "[1]");
  expect_error([&] { read_config(dir.path()); }, {"config.json", "expected a JSON object, got array"});
  TempDir empty;
  expect_error([&] { read_tokenizer_config(empty.path()); }, {"tokenizer_config.json", "no such file"});
}
