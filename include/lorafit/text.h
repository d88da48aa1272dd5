// lorafit text layer: tokenizers that give exactly the ids Hugging Face `tokenizers` gives.
//
// Loaded from a `tokenizer.json` (+ `tokenizer_config.json` next to it for the special-token
// names) by its `model.type`, or from plain lists as a GGUF file stores them. The pipeline is
// the one of the `tokenizers` library: added/special tokens are matched in the raw text first,
// the rest is normalized, pre-tokenized, and cut by the model; a post-processor adds [CLS]/[SEP]
// (or BOS) and type ids; truncation is longest-first.
//
// Supported parts (anything else is an Error naming the field):
//   normalizer     BertNormalizer, Lowercase, NFD, NFKD, NFC, NFKC, StripAccents, Sequence, null
//   pre_tokenizer  BertPreTokenizer, ByteLevel, Digits, Split (regex or string), Whitespace,
//                  WhitespaceSplit, Sequence, null
//   model          WordPiece, BPE (byte-level spelling or plain, merges "a b" or ["a", "b"])
//   post_processor TemplateProcessing, BertProcessing, RobertaProcessing, ByteLevel, Sequence, null
//   decoder        WordPiece, ByteLevel, Sequence, null
//
// Errors are lorafit::Error with a message that starts with "[text]" and names the file and the
// field, e.g. "[text] tokenizer.json: field 'model.type': 'Unigram' is not supported".
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "lorafit/tensor.h"  // lorafit::Error

namespace lorafit::io {
class GgufFile;
}

namespace lorafit::text {

using lorafit::Error;

// One encoded text (or pair of texts), as `tokenizers.Encoding`.
struct Encoding {
  std::vector<int32_t> ids;
  std::vector<int32_t> type_ids;  // 0 for the first sequence, 1 for the second
  std::vector<uint8_t> special_mask;  // 1 where the post-processor added the token
  size_t size() const { return ids.size(); }
};

// Ids of the special tokens; -1 where the tokenizer has none.
struct SpecialTokenIds {
  int32_t cls = -1, sep = -1, pad = -1, unk = -1, mask = -1, bos = -1, eos = -1;
};

// A byte-level BPE tokenizer as plain lists, the way a GGUF file stores it
// (tokenizer.ggml.tokens / merges / token_type / pre / bos_token_id / ...).
struct BpeLists {
  std::vector<std::string> tokens;  // id -> token, in the byte-level alphabet ("Ġthe")
  std::vector<std::string> merges;  // "a b", in rank order
  // llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte.
  // Control tokens become special added tokens and user-defined ones plain added tokens (both
  // matched whole in the raw text), as transformers does. Empty: all normal.
  std::vector<int32_t> token_types;
  // tokenizer.ggml.pre: the pre-tokenizer the vocabulary was trained with. "gpt2" (or "default",
  // "") is the GPT-2 regex; "smollm"/"starcoder"/... split every digit first (see
  // Tokenizer::from_bpe_lists in tokenizer.cpp).
  std::string pre = "gpt2";
  int32_t bos_id = -1, eos_id = -1, unk_id = -1, pad_id = -1;
  bool add_bos = false, add_eos = false;
  std::string chat_template;  // tokenizer.chat_template (Jinja source), "" when absent
};

enum class ModelKind { WordPiece, Bpe };

// Immutable after construction and cheap to copy (shared state); encode/decode may be called
// from several threads at once.
class Tokenizer {
 public:
  // A tokenizer.json file, or a folder holding one. A tokenizer_config.json in the same folder
  // names the special tokens (cls_token, ..., bos_token, eos_token) and model_max_length.
  static Tokenizer from_file(const std::string& path);
  // tokenizer.json text (+ optional tokenizer_config.json text, "" for none); `origin` names it
  // in errors.
  static Tokenizer from_json(std::string_view tokenizer_json, std::string_view tokenizer_config,
                             const std::string& origin);
  // Byte-level BPE from lists; `origin` names the source in errors (a GGUF path).
  static Tokenizer from_bpe_lists(const BpeLists& lists, const std::string& origin);
  // The lists read from a GGUF file's tokenizer.ggml.* metadata (model "gpt2" only).
  static BpeLists bpe_lists_from_gguf(const io::GgufFile& file);
  static Tokenizer from_gguf(const io::GgufFile& file);
  static Tokenizer from_gguf(const std::string& gguf_path);

  // Encodes UTF-8 text (an Error if it is not valid UTF-8). add_special_tokens: run the
  // post-processor ([CLS] A [SEP], BOS, ...). max_length > 0 truncates so that the result,
  // special tokens included, has at most max_length ids (an Error if the special tokens alone
  // do not fit).
  Encoding encode(std::string_view text, bool add_special_tokens = true,
                  size_t max_length = 0) const;
  // A pair of texts ([CLS] A [SEP] B [SEP] with type ids 0.. 1..); truncation is longest-first
  // exactly as `tokenizers` does it.
  Encoding encode_pair(std::string_view a, std::string_view b, bool add_special_tokens = true,
                       size_t max_length = 0) const;
  // Text of the ids through the tokenizer's decoder; ids out of range are skipped (as
  // `tokenizers` does). Invalid UTF-8 from byte-level tokens becomes U+FFFD.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = true) const;

  // Added tokens first, then the model's vocabulary.
  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::optional<std::string> id_to_token(int32_t id) const;
  // Including added tokens: 1 + the largest id.
  size_t vocab_size() const;
  const SpecialTokenIds& special_ids() const;
  bool is_special(int32_t id) const;  // an added token marked special
  ModelKind model_kind() const;
  // How many ids the post-processor adds to one text (pair = false) or a pair.
  size_t num_special_tokens_to_add(bool pair) const;
  // tokenizer_config.json's model_max_length when it is sensible, else 0.
  size_t model_max_length() const;
  // The model's chat template (Jinja source from tokenizer_config.json "chat_template" or GGUF
  // "tokenizer.chat_template"); "" when it has none. See ChatTemplate.
  const std::string& chat_template() const;

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

// ---- chat templates ---------------------------------------------------------------------------

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", ...
  std::string content;
};

// A rendered piece of a conversation. `trained` marks what an instruction-tuning loss is taken
// on: each assistant reply and the token that ends its turn (so the model learns to stop).
struct ChatSegment {
  std::string text;
  bool trained = false;
};

// The chat formats lorafit renders itself instead of running Jinja. Like llama.cpp
// (llm_chat_detect_template), a model's template is recognised by its markers; the rendering then
// equals transformers' apply_chat_template for that template (tests/text, fixture from
// tools/ref_chat.py):
//   ChatML   "<|im_start|>{role}\n{content}<|im_end|>\n" (SmolLM2, Qwen, ...); a default system
//            message the template inserts when the first message is not a system one is read
//            from the template source (SmolLM2 has one).
//   Llama3   bos "<|start_header_id|>{role}<|end_header_id|>\n\n{trim(content)}<|eot_id|>"
//   Plain    for models without a template: "### {Role}:\n{content}\n\n", the reply ends
//            with the EOS token text.
enum class ChatFormat { ChatML, Llama3, Plain };
const char* chat_format_name(ChatFormat f);  // "chatml", "llama3", "plain"

class ChatTemplate {
 public:
  // From a Jinja source: ChatML or Llama3 when its markers are present. An unrecognised
  // non-empty template is an Error naming `origin` and the supported formats (the caller may
  // then choose one explicitly); an empty one gives Plain.
  static ChatTemplate detect(const std::string& jinja, const std::string& origin);
  // "auto" (= detect(tok.chat_template())), "chatml", "llama3" or "plain", for this tokenizer
  // (its BOS/EOS texts are used where the format needs them).
  static ChatTemplate for_tokenizer(const Tokenizer& tok, const std::string& choice = "auto");

  ChatFormat format() const { return format_; }
  const std::string& default_system() const { return default_system_; }
  // The conversation as segments; add_generation_prompt appends the assistant header (for
  // generation). Concatenated texts = transformers' rendered string.
  std::vector<ChatSegment> render(const std::vector<ChatMessage>& messages,
                                  bool add_generation_prompt) const;
  std::string render_text(const std::vector<ChatMessage>& messages,
                          bool add_generation_prompt) const;

  std::string bos_text, eos_text;  // used by Llama3 (BOS) and Plain (EOS)

 private:
  ChatFormat format_ = ChatFormat::Plain;
  std::string default_system_;
};

}  // namespace lorafit::text
