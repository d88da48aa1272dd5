// Memory-mapped reading and atomic (temp + rename) writing of whole files.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "lorafit/io.h"

namespace lorafit::io {

namespace {

std::string sys_error() { return std::strerror(errno); }

}  // namespace

std::shared_ptr<const MappedFile> MappedFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error("[io] " + path + ": cannot open: " + sys_error());
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    std::string e = sys_error();
    ::close(fd);
    throw Error("[io] " + path + ": cannot stat: " + e);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error("[io] " + path + ": not a regular file");
  }
  std::shared_ptr<MappedFile> m(new MappedFile());
  m->path_ = path;
  m->size_ = static_cast<size_t>(st.st_size);
  if (m->size_ > 0) {
    // Private and writable: a caller that edits a view in place (merging an adapter into an F32
    // weight) gets copy-on-write pages instead of a crash, and the file is never modified.
    // MAP_NORESERVE: untouched pages are not charged as committed memory.
    void* p = ::mmap(nullptr, m->size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
    if (p == MAP_FAILED) {
      std::string e = sys_error();
      ::close(fd);
      throw Error("[io] " + path + ": cannot mmap " + std::to_string(m->size_) + " bytes: " + e);
    }
    m->data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);  // the mapping stays valid without the descriptor
  return m;
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

void MappedFile::release(const void* p, size_t n) const {
  if (!data_ || n == 0) return;
  const auto base = reinterpret_cast<uintptr_t>(data_);
  uintptr_t lo = std::max(reinterpret_cast<uintptr_t>(p), base);
  uintptr_t hi = std::min(reinterpret_cast<uintptr_t>(p) + n, base + size_);
  if (lo >= hi) return;
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  lo &= ~(page - 1);  // the mapping starts on a page, so lo stays inside it
  hi = std::min((hi + page - 1) & ~(page - 1), (base + size_ + page - 1) & ~(page - 1));
  // Advice only: a failure leaves the pages resident, which is what not calling it does.
  (void)::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
}

AtomicWriter::AtomicWriter(const std::string& path)
    : path_(path), tmp_path_(path + ".tmp." + std::to_string(::getpid())) {
  FILE* f = std::fopen(tmp_path_.c_str(), "wb");
  if (!f) throw Error("[io] " + path + ": cannot create " + tmp_path_ + ": " + sys_error());
  file_ = f;
}

AtomicWriter::~AtomicWriter() {
  if (file_) std::fclose(static_cast<FILE*>(file_));
  if (!committed_) std::remove(tmp_path_.c_str());
}

void AtomicWriter::write(const void* data, size_t n) {
  check(file_ != nullptr, "io", path_ + ": write after commit");
  if (n == 0) return;
  if (std::fwrite(data, 1, n, static_cast<FILE*>(file_)) != n)
    throw Error("[io] " + path_ + ": write failed after " + std::to_string(written_) +
                " bytes: " + sys_error());
  written_ += n;
}

void AtomicWriter::write_zeros(size_t n) {
  static const char zeros[256] = {};
  while (n > 0) {
    size_t k = n < sizeof zeros ? n : sizeof zeros;
    write(zeros, k);
    n -= k;
  }
}

void AtomicWriter::commit() {
  check(file_ != nullptr, "io", path_ + ": commit twice");
  FILE* f = static_cast<FILE*>(file_);
  file_ = nullptr;
  bool ok = std::fflush(f) == 0;
  ok = ok && ::fsync(fileno(f)) == 0;
  std::string e = ok ? "" : sys_error();
  if (std::fclose(f) != 0 && ok) {
    ok = false;
    e = sys_error();
  }
  if (!ok) throw Error("[io] " + path_ + ": cannot finish writing " + tmp_path_ + ": " + e);
  if (std::rename(tmp_path_.c_str(), path_.c_str()) != 0)
    throw Error("[io] " + path_ + ": cannot rename " + tmp_path_ + " over it: " + sys_error());
  committed_ = true;
}

std::string read_file(const std::string& path) {
  // A folder opens as a stream on Linux and reads as nothing: refuse it by name.
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
    throw Error("[io] " + path + ": is a folder, expected a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("[io] " + path + ": cannot open: " + sys_error());
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error("[io] " + path + ": read failed");
  return ss.str();
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
  AtomicWriter w(path);
  w.write(bytes);
  w.commit();
}

void write_folder_atomic(const std::string& dir,
                         const std::function<void(const std::string&)>& fill, FolderWrite mode) {
  namespace fs = std::filesystem;
  const fs::path target(dir);
  const fs::path parent = target.has_parent_path() ? target.parent_path() : fs::path(".");
  const std::string pid = std::to_string(::getpid());
  const fs::path tmp = parent / (target.filename().string() + ".tmp." + pid);
  const fs::path old = parent / (target.filename().string() + ".old." + pid);
  std::error_code ec;
  if (fs::exists(target, ec) && !fs::is_directory(target, ec))
    throw Error("[io] " + dir + ": exists and is not a folder");
  fs::create_directories(parent, ec);
  fs::remove_all(tmp, ec);
  if (!fs::create_directory(tmp, ec))
    throw Error("[io] " + dir + ": cannot create folder " + tmp.string() + ": " + ec.message());
  auto check = [&](const std::error_code& e, const std::string& what) {
    if (e) throw Error("[io] " + dir + ": " + what + ": " + e.message());
  };
  try {
    fill(tmp.string());
    if (!fs::exists(target)) {
      fs::rename(tmp, target, ec);
      check(ec, "cannot rename " + tmp.string() + " to it");
    } else if (mode == FolderWrite::Merge) {
      for (const auto& e : fs::directory_iterator(tmp)) {
        fs::rename(e.path(), target / e.path().filename(), ec);
        check(ec, "cannot move " + e.path().string() + " into it");
      }
      fs::remove_all(tmp, ec);
    } else if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, target.c_str(), RENAME_EXCHANGE) == 0) {
      // One atomic swap: at every moment `target` is the old folder or the new one, never absent
      // (a SIGKILL between two renames used to leave no folder; the kill test found it). The old
      // contents are now at tmp.
      fs::remove_all(tmp, ec);
    } else {
      // A filesystem without RENAME_EXCHANGE: two renames (a kill between them leaves the old
      // folder at `old`).
      fs::remove_all(old, ec);
      fs::rename(target, old, ec);
      check(ec, "cannot move the old folder to " + old.string());
      fs::rename(tmp, target, ec);
      check(ec, "cannot rename " + tmp.string() + " to it");
      fs::remove_all(old, ec);
    }
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
}

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace lorafit::io
