// Both tokenizers (WordPiece, byte-level BPE) on arbitrary bytes, single and pair, with and
// without truncation; then decode of arbitrary ids (the bytes read as int32s).
#include <cstring>
#include <vector>

#include "fuzz_tokenizers.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto text = lorafit_fuzz::as_text(data, size);
  std::vector<int32_t> ids(size / 4);
  if (!ids.empty()) std::memcpy(ids.data(), data, ids.size() * 4);
  for (const auto* tok : {&lorafit_fuzz::wordpiece(), &lorafit_fuzz::bpe()}) {
    lorafit_fuzz::expect_ok_or_error([&] {
      auto e = tok->encode(text);
      (void)tok->decode(e.ids, true);
    });
    lorafit_fuzz::expect_ok_or_error([&] { (void)tok->encode(text, true, 8); });
    lorafit_fuzz::expect_ok_or_error([&] {
      (void)tok->encode_pair(text.substr(0, size / 2), text.substr(size / 2), true, 12);
    });
    lorafit_fuzz::expect_ok_or_error([&] { (void)tok->decode(ids, false); });
    lorafit_fuzz::expect_ok_or_error([&] { (void)tok->decode(ids, true); });
  }
  return 0;
}
