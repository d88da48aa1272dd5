// adapter_config.json: the PEFT config reader (LoRA, DoRA, AdaLoRA fields).
#include "fuzz_util.h"
#include "lorafit/io.h"
#include "lorafit/peft.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = lorafit_fuzz::write_input("adapter_config.json", data, size);
  lorafit_fuzz::expect_ok_or_error([&] {
    auto j = lorafit::io::read_json_file(path);
    (void)lorafit::peft::config_from_json(j, path);
  });
  return 0;
}
