// config.json through the real model loaders (models::load_model: BERT, RoBERTa, DistilBERT,
// Llama), next to the tiny fixtures' weights: every field a config may hold, the sizes checked
// against the weight file before the model is allocated (tests/models/limits_test.cpp). The
// first byte picks the weights (BERT or Llama), the rest is config.json.
#include <filesystem>

#include "fuzz_util.h"
#include "lorafit/models.h"

namespace {

// <scratch>/<name>/model.safetensors: a link to fixture model `name`'s weights.
std::string model_dir(const char* name) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(lorafit_fuzz::scratch_dir()) / name;
  fs::create_directories(dir);
  const fs::path w = dir / "model.safetensors";
  if (!fs::exists(w))
    fs::create_symlink(fs::path(LORAFIT_SOURCE_DIR) / "tests/fixtures/models" / name / "model.safetensors", w);
  return dir.string();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  static const std::string dirs[2] = {model_dir("tiny_bert"), model_dir("tiny_llama")};
  const std::string& dir = dirs[data[0] & 1];
  lorafit_fuzz::write_input((std::filesystem::path(dir).filename() / "config.json").string(),
                            data + 1, size - 1);
  lorafit_fuzz::expect_ok_or_error([&] {
    lorafit::models::LoadOptions lo;
    lo.num_labels = data[0] >> 1 & 7;  // 0: the config's
    (void)lorafit::models::load_model(dir, lo);
  });
  return 0;
}
