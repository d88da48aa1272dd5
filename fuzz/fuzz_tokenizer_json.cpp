// tokenizer.json (+ a fixed tokenizer_config.json): any model/normalizer/pre-tokenizer/
// post-processor/decoder the bytes describe, then an encode and a decode through it.
#include "fuzz_util.h"
#include "lorafit/text.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  lorafit_fuzz::expect_ok_or_error([&] {
    auto tok = lorafit::text::Tokenizer::from_json(lorafit_fuzz::as_text(data, size),
                                                   R"({"model_max_length": 64})", "tokenizer.json");
    auto enc = tok.encode("Hello world! Héllo wörld, 123 ##ing [CLS] <s>", true, 32);
    auto pair = tok.encode_pair("a b c", "d e f", true, 16);
    (void)tok.decode(enc.ids, false);
    (void)tok.decode(pair.ids, true);
    std::vector<int32_t> ids = {0, 1, 2, 3, -1, 1 << 30};
    (void)tok.decode(ids, false);
  });
  return 0;
}
