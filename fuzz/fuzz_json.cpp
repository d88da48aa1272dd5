// The JSON reader (every .json lorafit reads: config.json, tokenizer_config.json, run configs)
// and its typed getters.
#include "fuzz_util.h"
#include "lorafit/io.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = lorafit_fuzz::write_input("config.json", data, size);
  lorafit_fuzz::expect_ok_or_error([&] {
    auto j = lorafit::io::read_json_file(path);
    if (!j.is_object()) return;
    for (auto it = j.begin(); it != j.end(); ++it) {
      const std::string& k = it.key();
      lorafit_fuzz::expect_ok_or_error([&] { (void)lorafit::io::json_int(j, k, "config.json", 0); });
      lorafit_fuzz::expect_ok_or_error([&] { (void)lorafit::io::json_number(j, k, "config.json", 0.0); });
      lorafit_fuzz::expect_ok_or_error([&] { (void)lorafit::io::json_bool(j, k, "config.json", false); });
      lorafit_fuzz::expect_ok_or_error([&] { (void)lorafit::io::json_string(j, k, "config.json", ""); });
      lorafit_fuzz::expect_ok_or_error([&] { (void)lorafit::io::json_string_list(j, k, "config.json"); });
      lorafit_fuzz::expect_ok_or_error([&] { (void)lorafit::io::json_int_list(j, k, "config.json"); });
    }
  });
  return 0;
}
