// Inputs the fuzz targets (fuzz/, scripts/fuzz.sh) crashed on, kept in tests/fixtures/fuzz/:
// each is now refused with a lorafit::Error that names the file and what is wrong.
#include <gtest/gtest.h>

#include <string>

#include "lorafit/io.h"

namespace {

std::string fuzz_fixture(const std::string& name) {
  return std::string(LORAFIT_FIXTURES) + "/fuzz/" + name;
}

template <class F>
std::string error_of(F&& fn) {
  try {
    fn();
  } catch (const lorafit::Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

// fuzz_json: a number beyond 64 bits escaped as nlohmann's out_of_range (std::terminate).
TEST(FuzzRegression, JsonNumberOverflowNamesTheFile) {
  const std::string path = fuzz_fixture("json_number_overflow.json");
  const std::string msg = error_of([&] { (void)lorafit::io::read_json_file(path); });
  EXPECT_NE(msg.find("[json] " + path + ": "), std::string::npos) << msg;
  EXPECT_NE(msg.find("number overflow"), std::string::npos) << msg;
  EXPECT_EQ(error_of([] { (void)lorafit::io::parse_json(R"({"a": 1e999})", "config.json"); }),
            "[json] config.json: number overflow parsing '1e999'");
}

// fuzz_yaml: invalid UTF-8 in a value became a JSON string that threw at dump().
TEST(FuzzRegression, YamlInvalidUtf8IsRefusedWithTheLine) {
  const std::string path = fuzz_fixture("yaml_invalid_utf8.yaml");
  EXPECT_EQ(error_of([&] { (void)lorafit::io::read_yaml_file(path); }),
            "[yaml] " + path + ": line 3: invalid UTF-8 in a value");
  EXPECT_EQ(error_of([] { (void)lorafit::io::parse_yaml("k: \xff\xfe\n", "opts.yaml"); }),
            "[yaml] opts.yaml: line 1: invalid UTF-8 in a value");
  EXPECT_EQ(error_of([] { (void)lorafit::io::parse_yaml("\xc0\xaf: 1\n", "opts.yaml"); }),
            "[yaml] opts.yaml: line 1: invalid UTF-8 in a key");
  EXPECT_EQ(lorafit::io::parse_yaml("k: h\xc3\xa9\n", "opts.yaml")["k"], "h\xc3\xa9");
}

// fuzz_yaml: a 29-byte file with a malformed directive line made yaml-cpp loop forever.
TEST(FuzzRegression, YamlDirectiveLineIsRefusedNotAHang) {
  const std::string path = fuzz_fixture("yaml_directive_hang.yaml");
  EXPECT_EQ(error_of([&] { (void)lorafit::io::read_yaml_file(path); }),
            "[yaml] " + path + ": line 1: YAML directives ('%' at the start of a line) are not supported");
  EXPECT_EQ(error_of([] { (void)lorafit::io::parse_yaml("a: 1\n%YAML 1.2\n", "opts.yaml"); }),
            "[yaml] opts.yaml: line 2: YAML directives ('%' at the start of a line) are not supported");
  EXPECT_EQ(lorafit::io::parse_yaml("a: '%x'\n", "opts.yaml")["a"], "%x");
}

// fuzz_yaml: yaml-cpp's LoadAll looped forever, building empty documents, on a stray ',' (the
// fuzzer's 20-byte input, and a file that is only ','); two real documents are still refused.
TEST(FuzzRegression, YamlStrayFlowIndicatorIsRefusedNotAHang) {
  const std::string path = fuzz_fixture("yaml_stray_comma_hang.yaml");
  EXPECT_EQ(error_of([&] { (void)lorafit::io::read_yaml_file(path); }),
            "[yaml] " + path + ": line 1: cannot be parsed as YAML (a stray ',', '[' or '{'?)");
  EXPECT_EQ(error_of([] { (void)lorafit::io::parse_yaml(",", "opts.yaml"); }),
            "[yaml] opts.yaml: line 1: cannot be parsed as YAML (a stray ',', '[' or '{'?)");
  EXPECT_EQ(error_of([] { (void)lorafit::io::parse_yaml("a: 1\n---\nb: 2\n", "opts.yaml"); }),
            "[yaml] opts.yaml: line 3: expected one YAML document");
  EXPECT_EQ(lorafit::io::parse_yaml("a: [1, 2]\nb: {c: d}\n", "opts.yaml")["b"]["c"], "d");
  EXPECT_TRUE(lorafit::io::parse_yaml("", "opts.yaml").empty());
}
