// safetensors: header length, JSON header, tensor table (dtype/shape/offsets), then every
// tensor read as stored and as F32.
#include "fuzz_util.h"
#include "lorafit/io.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = lorafit_fuzz::write_input("model.safetensors", data, size);
  lorafit_fuzz::expect_ok_or_error([&] {
    auto f = lorafit::io::SafetensorsFile::open(path);
    volatile float sink = 0;
    for (const auto& name : f.names()) {
      lorafit_fuzz::expect_ok_or_error([&] {
        auto t = f.get_f32(name);
        if (t.numel() > 0) sink = sink + t.f32()[t.numel() - 1];
      });
    }
    (void)f.metadata().size();
  });
  return 0;
}
