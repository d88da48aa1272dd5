// The two fixed tokenizers the text/data targets run: WordPiece (BERT, the MiniLM tokenizer.json
// when the models folder is there, else a small inline one) and byte-level BPE with a ChatML
// template (SmolLM2-like).
#pragma once

#include <filesystem>
#include <string>

#include "lorafit/text.h"

namespace lorafit_fuzz {

inline const lorafit::text::Tokenizer& wordpiece() {
  static const lorafit::text::Tokenizer t = [] {
    const std::string real = std::string(LORAFIT_SOURCE_DIR) + "/models/all-MiniLM-L6-v2";
    if (std::filesystem::exists(real + "/tokenizer.json"))
      return lorafit::text::Tokenizer::from_file(real);
    return lorafit::text::Tokenizer::from_json(
        R"({"model": {"type": "WordPiece", "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3,
        "good": 4, "bad": 5, "movie": 6, "##s": 7, "the": 8, "a": 9, "é": 10, "##ing": 11},
        "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100},
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
        "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true}})",
        R"({"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]"})",
        "fuzz-wordpiece");
  }();
  return t;
}

inline const lorafit::text::Tokenizer& bpe() {
  static const lorafit::text::Tokenizer t = [] {
    std::string chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:!?'-#";
    std::string v = R"("<|im_start|>": 0, "<|im_end|>": 1, "\u0120": 2, "\u010a": 3)";
    for (size_t i = 0; i < chars.size(); ++i)
      v += ", \"" + std::string(1, chars[i]) + "\": " + std::to_string(4 + i);
    v += R"(, "he": 200, "ll": 201, "hell": 202, "\u0120t": 203)";
    return lorafit::text::Tokenizer::from_json(
        R"({"added_tokens": [{"id": 0, "content": "<|im_start|>", "special": true, "single_word": false,
             "lstrip": false, "rstrip": false, "normalized": false},
            {"id": 1, "content": "<|im_end|>", "special": true, "single_word": false,
             "lstrip": false, "rstrip": false, "normalized": false}],
           "normalizer": null,
           "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
           "post_processor": null,
           "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
           "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                     "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                     "vocab": {)" + v + R"(}, "merges": ["h e", "l l", "he ll", "\u0120 t"]}})",
        R"({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
            "chat_template": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"})",
        "fuzz-bpe");
  }();
  return t;
}

}  // namespace lorafit_fuzz
