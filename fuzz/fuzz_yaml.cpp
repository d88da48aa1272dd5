// The YAML options reader (lorafit train --config x.yaml).
#include "fuzz_util.h"
#include "lorafit/io.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = lorafit_fuzz::write_input("options.yaml", data, size);
  lorafit_fuzz::expect_ok_or_error([&] { (void)lorafit::io::read_yaml_file(path).dump(); });
  return 0;
}
