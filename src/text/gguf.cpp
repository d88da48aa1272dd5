// Tokenizer from a GGUF file's tokenizer.ggml.* metadata: a thin adapter over from_bpe_lists.
#include "lorafit/io.h"
#include "text/text_internal.h"

namespace lorafit::text {

BpeLists Tokenizer::bpe_lists_from_gguf(const io::GgufFile& f) {
  const std::string model = f.get_string("tokenizer.ggml.model", "");
  if (model != "gpt2")
    fail(f.path() + ": key 'tokenizer.ggml.model': '" + model +
         "' is not supported (only byte-level BPE, 'gpt2')");
  if (!f.has("tokenizer.ggml.merges"))
    fail(f.path() + ": key 'tokenizer.ggml.merges' is missing (BPE needs its merges)");
  BpeLists l;
  l.tokens = f.get_string_array("tokenizer.ggml.tokens");
  l.merges = f.get_string_array("tokenizer.ggml.merges");
  if (f.has("tokenizer.ggml.token_type")) {
    for (int64_t t : f.get_int_array("tokenizer.ggml.token_type")) l.token_types.push_back(static_cast<int32_t>(t));
  }
  l.pre = f.get_string("tokenizer.ggml.pre", "default");
  auto id = [&](const char* key) {
    const int64_t v = f.get_int(key, -1);
    if (v < -1 || v > INT32_MAX) fail(f.path() + ": key '" + key + "': id " + std::to_string(v) + " is out of range");
    return static_cast<int32_t>(v);
  };
  l.bos_id = id("tokenizer.ggml.bos_token_id");
  l.eos_id = id("tokenizer.ggml.eos_token_id");
  l.unk_id = id("tokenizer.ggml.unknown_token_id");
  l.pad_id = id("tokenizer.ggml.padding_token_id");
  l.add_bos = f.get_bool("tokenizer.ggml.add_bos_token", false);
  l.add_eos = f.get_bool("tokenizer.ggml.add_eos_token", false);
  l.chat_template = f.get_string("tokenizer.chat_template", "");
  return l;
}

Tokenizer Tokenizer::from_gguf(const io::GgufFile& f) {
  return from_bpe_lists(bpe_lists_from_gguf(f), f.path());
}

Tokenizer Tokenizer::from_gguf(const std::string& gguf_path) {
  return from_gguf(io::GgufFile::open(gguf_path));
}

}  // namespace lorafit::text
