// GGUF: header, metadata of every value type, tensor infos, each tensor's data dequantized to
// F32 (every quantized type the reader knows), and the tokenizer read from the metadata.
#include "fuzz_util.h"
#include "lorafit/io.h"
#include "lorafit/text.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = lorafit_fuzz::write_input("model.gguf", data, size);
  lorafit_fuzz::expect_ok_or_error([&] {
    auto f = lorafit::io::GgufFile::open(path);
    for (const auto& [key, value] : f.metadata()) (void)value.str();
    volatile float sink = 0;
    for (const auto& info : f.tensors()) {
      lorafit_fuzz::expect_ok_or_error([&] {
        auto t = f.tensor_f32(info.name);
        if (t.numel() > 0) sink = sink + t.f32()[t.numel() - 1];
      });
    }
    lorafit_fuzz::expect_ok_or_error([&] {
      auto tok = lorafit::text::Tokenizer::from_gguf(f);
      auto enc = tok.encode("Hello world, hello GGUF!");
      (void)tok.decode(enc.ids, false);
    });
  });
  return 0;
}
