// YAML options files (io::read_yaml_file, through yaml-cpp): scalars as strings, lists, nested
// mappings; errors name the file and line.
#include <gtest/gtest.h>

#include "io_test_util.h"
#include "lorafit/io.h"

using namespace lorafit::io;
using io_test::expect_error;
using io_test::TempDir;

TEST(Yaml, FlatMappingScalarsAndLists) {
  const json j = parse_yaml(
      "---\n"
      "# a training config\n"
      "model: models/all-MiniLM-L6-v2   # trailing comment\n"
      "max_steps: 300\n"
      "lr: 3e-3\n"
      "use-dora: true\n"
      "title: 'it''s # not a comment'\n"
      "prompt: \"say \\\"hi\\\"\\n\"\n"
      "url: http://x.org/a#frag\n"
      "quoted: \"a \\\" # b\"  # comment\n"
      "target_modules: [query, \"value\", 'key']\n"
      "empty_list: []\n"
      "layers:\n"
      "  - 0\n"
      "  - 5   # last\n"
      "\n"
      "nothing:\n",
      "cfg.yaml");
  EXPECT_EQ(j.at("model"), "models/all-MiniLM-L6-v2");
  EXPECT_EQ(j.at("max_steps"), "300");
  EXPECT_EQ(j.at("lr"), "3e-3");
  EXPECT_EQ(j.at("use-dora"), "true");
  EXPECT_EQ(j.at("title"), "it's # not a comment");
  EXPECT_EQ(j.at("prompt"), "say \"hi\"\n");
  EXPECT_EQ(j.at("url"), "http://x.org/a#frag");
  EXPECT_EQ(j.at("quoted"), "a \" # b");
  EXPECT_EQ(j.at("target_modules"), json::array({"query", "value", "key"}));
  EXPECT_EQ(j.at("empty_list"), json::array());
  EXPECT_EQ(j.at("layers"), json::array({"0", "5"}));
  EXPECT_EQ(j.at("nothing"), "");
  EXPECT_EQ(j.size(), 12u);
}

TEST(Yaml, NestedMappingsComeBackAsObjects) {
  const json j = parse_yaml("a: 1\nlora:\n  r: 8\n  alpha: 16\nadalora: {init_r: 12}\n", "c.yaml");
  EXPECT_EQ(j.at("a"), "1");
  EXPECT_EQ(j.at("lora"), json({{"r", "8"}, {"alpha", "16"}}));
  EXPECT_EQ(j.at("adalora").at("init_r"), "12");
  EXPECT_EQ(parse_yaml("", "empty.yaml"), json::object());
}

TEST(Yaml, BrokenInputNamesFileAndLine) {
  expect_error([] { parse_yaml("a: 1\nb: c: d\n", "c.yaml"); }, {"[yaml] c.yaml: line 2"});
  expect_error([] { parse_yaml("a: [1, 2\n", "c.yaml"); },
               {"[yaml] c.yaml: line 2", "end of sequence"});
  expect_error([] { parse_yaml("a: 1\na: 2\n", "c.yaml"); }, {"line 2", "'a' appears twice"});
  expect_error([] { parse_yaml("lora:\n  r: 1\n  r: 2\n", "c.yaml"); },
               {"line 3", "'r' appears twice"});
  expect_error([] { parse_yaml("- x\n", "c.yaml"); }, {"line 1", "expected a mapping"});
  expect_error([] { parse_yaml("a:\n\t- 1\n", "c.yaml"); }, {"line 2"});
  expect_error([] { parse_yaml("just text\n", "c.yaml"); }, {"line 1", "expected a mapping"});
  expect_error([] { parse_yaml("a: 1\n---\nb: 2\n", "c.yaml"); }, {"line 3", "one YAML document"});
  TempDir dir;
  expect_error([&] { read_yaml_file(dir.file("none.yaml")); },
               {"[yaml]", "none.yaml", "no such file"});
  io_test::write_bytes(dir.file("ok.yml"), "r: 4\n");
  EXPECT_EQ(read_yaml_file(dir.file("ok.yml")).at("r"), "4");
}
