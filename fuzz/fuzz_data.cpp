// The data readers: classification (TSV, CSV, JSONL; the first byte picks which), plain text
// for LM blocks, instruction JSONL (messages / prompt-response / Alpaca) with a ChatML template.
#include "fuzz_tokenizers.h"
#include "fuzz_util.h"
#include "lorafit/train.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  namespace train = lorafit::train;
  const uint8_t sel = data[0] % 5;
  ++data, --size;
  if (sel < 3) {
    const char* ext = sel == 0 ? "tsv" : sel == 1 ? "csv" : "jsonl";
    const std::string path = lorafit_fuzz::write_input(std::string("train.") + ext, data, size);
    lorafit_fuzz::expect_ok_or_error([&] {
      train::ColumnOptions cols;
      cols.max_line_bytes = 4096;
      auto d = train::read_classification(path, cols);
      auto s = train::tokenize_classification(d, lorafit_fuzz::wordpiece(), 16);
      lorafit_fuzz::expect_ok_or_error([&] { (void)train::read_classification(path, cols, d.label_names); });
    });
    lorafit_fuzz::expect_ok_or_error([&] {
      train::ColumnOptions cols;
      (void)train::read_classification(path, cols, {}, false);
    });
  } else if (sel == 3) {
    const std::string path = lorafit_fuzz::write_input("train.txt", data, size);
    lorafit_fuzz::expect_ok_or_error([&] { (void)train::read_lm_text(path, lorafit_fuzz::bpe(), 8); });
    lorafit_fuzz::expect_ok_or_error([&] {
      const int64_t mid = train::text_split_offset(path, 0.5);
      (void)train::read_lm_text(path, lorafit_fuzz::bpe(), 4, 0, mid);
      (void)train::read_lm_text(path, lorafit_fuzz::bpe(), 4, mid, -1);
    });
  } else {
    const std::string path = lorafit_fuzz::write_input("train.jsonl", data, size);
    lorafit_fuzz::expect_ok_or_error([&] {
      auto tpl = lorafit::text::ChatTemplate::for_tokenizer(lorafit_fuzz::bpe(), "chatml");
      train::InstructionStats st;
      (void)train::read_instruction_data(path, lorafit_fuzz::bpe(), tpl, 24, &st, 4096);
    });
  }
  return 0;
}
