// The two fixed tokenizers the text/data targets run: WordPiece (BERT, the MiniLM tokenizer.json
// when the models folder is there, else a small inline one) and byte-level BPE with a ChatML
// template (the tiny Llama fixture's).
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

// The tiny Llama tests' tokenizer (tests/fixtures/tokens/tiny_llama_bpe, also used by tests/train
// and tests/mpi): byte-level BPE with ChatML special tokens and chat template. BPE merges on
// arbitrary tokenizer.json files are fuzz_tokenizer_json's.
inline const lorafit::text::Tokenizer& bpe() {
  static const lorafit::text::Tokenizer t = lorafit::text::Tokenizer::from_file(
      std::string(LORAFIT_SOURCE_DIR) + "/tests/fixtures/tokens/tiny_llama_bpe");
  return t;
}

}  // namespace lorafit_fuzz
