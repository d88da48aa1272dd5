// Helpers for the io tests: a temporary directory per test, raw byte files, error matching.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "lorafit/io.h"

namespace io_test {

// A fresh directory under $TMPDIR, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "lorafit_io_XXXXXX").string();
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    char* p = mkdtemp(buf.data());
    if (!p) throw std::runtime_error("mkdtemp failed");
    path_ = p;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline std::string read_bytes(const std::string& path) { return lorafit::io::read_file(path); }

// Little-endian byte builder for hand-made corrupt files.
struct Bytes {
  std::string s;
  Bytes& raw(const std::string& x) {
    s += x;
    return *this;
  }
  Bytes& le(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
    return *this;
  }
  Bytes& u32(uint32_t v) { return le(v, 4); }
  Bytes& u64(uint64_t v) { return le(v, 8); }
  Bytes& str(const std::string& x) {
    u64(x.size());
    return raw(x);
  }
  Bytes& pad(size_t align) {
    while (s.size() % align) s.push_back('\0');
    return *this;
  }
};

// Runs f, which must throw lorafit::Error whose message contains every one of `parts`.
inline void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
  } catch (const lorafit::Error& e) {
    std::string msg = e.what();
    for (const std::string& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << "message: " << msg << "\nmissing: " << p;
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-lorafit exception: " << e.what();
    return;
  }
  ADD_FAILURE() << "did not throw; expected an error containing '" << (parts.empty() ? "" : parts[0])
                << "'";
}

inline std::string fixtures(const std::string& name) {
  return std::string(LORAFIT_FIXTURES) + "/io/" + name;
}

}  // namespace io_test
