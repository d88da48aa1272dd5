// Chat templates: detection from an arbitrary Jinja source, and rendering of conversations whose
// roles/contents come from the input (split at NUL bytes).
#include <string>
#include <vector>

#include "fuzz_tokenizers.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string src(lorafit_fuzz::as_text(data, size));
  lorafit_fuzz::expect_ok_or_error([&] { (void)lorafit::text::ChatTemplate::detect(src, "chat_template"); });
  std::vector<std::string> parts;
  size_t start = 0;
  for (size_t i = 0; i <= src.size(); ++i)
    if (i == src.size() || src[i] == '\0') parts.push_back(src.substr(start, i - start)), start = i + 1;
  std::vector<lorafit::text::ChatMessage> msgs;
  for (size_t i = 0; i + 1 < parts.size(); i += 2) msgs.push_back({parts[i], parts[i + 1]});
  for (const char* choice : {"chatml", "llama3", "plain", "auto"}) {
    lorafit_fuzz::expect_ok_or_error([&] {
      auto tpl = lorafit::text::ChatTemplate::for_tokenizer(lorafit_fuzz::bpe(), choice);
      (void)tpl.render(msgs, true);
      (void)tpl.render_text(msgs, false);
    });
  }
  return 0;
}
