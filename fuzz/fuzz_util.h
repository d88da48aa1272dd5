// Shared helpers for the libFuzzer targets (fuzz/*.cpp). Each target feeds the bytes to a parser
// through a file (the parsers take paths, as users give them) and accepts only lorafit::Error:
// any other exception, a crash or a sanitizer report is a finding.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <string_view>

#include "lorafit/tensor.h"

namespace lorafit_fuzz {

// A per-process scratch folder; files in it are overwritten by each input.
inline const std::string& scratch_dir() {
  static const std::string d = [] {
    auto p = std::filesystem::temp_directory_path() / ("lorafit_fuzz_" + std::to_string(getpid()));
    std::filesystem::create_directories(p);
    return p.string();
  }();
  return d;
}

// Writes bytes to <scratch>/<name> and returns the path.
inline std::string write_input(const std::string& name, const uint8_t* data, size_t size) {
  std::string path = scratch_dir() + "/" + name;
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
  return path;
}

inline std::string_view as_text(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// Runs fn; a lorafit::Error (a refused input, with its message) is the expected outcome.
template <class F>
void expect_ok_or_error(F&& fn) {
  try {
    fn();
  } catch (const lorafit::Error&) {
  }
}

}  // namespace lorafit_fuzz
