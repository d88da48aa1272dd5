// Atomic folder writes (io::write_folder_atomic): the one implementation that run folders
// (train/) and adapter / merged-model folders (peft/) use.
#include <gtest/gtest.h>

#include <filesystem>
#include <set>
#include <stdexcept>

#include "io_test_util.h"
#include "lorafit/io.h"

namespace {

namespace fs = std::filesystem;
namespace io = lorafit::io;
using io_test::expect_error;
using io_test::read_bytes;
using io_test::TempDir;
using io_test::write_bytes;

std::set<std::string> listing(const std::string& dir) {
  std::set<std::string> s;
  for (const auto& e : fs::directory_iterator(dir)) s.insert(e.path().filename().string());
  return s;
}

TEST(FolderWrite, NewFolderAppearsWhole) {
  TempDir t;
  const std::string dir = t.file("run/final");  // the parent is created too
  io::write_folder_atomic(dir, [](const std::string& tmp) {
    EXPECT_NE(tmp.find("final.tmp."), std::string::npos) << tmp;
    write_bytes(tmp + "/a.txt", "A");
  });
  EXPECT_EQ(listing(dir), (std::set<std::string>{"a.txt"}));
  EXPECT_EQ(listing(t.file("run")), (std::set<std::string>{"final"}));  // no temporary left
}

TEST(FolderWrite, ReplaceDropsOldFilesMergeKeepsThem) {
  TempDir t;
  const std::string dir = t.file("out");
  fs::create_directories(dir);
  write_bytes(dir + "/old.txt", "old");
  write_bytes(dir + "/a.txt", "a0");
  io::write_folder_atomic(
      dir, [](const std::string& tmp) { write_bytes(tmp + "/a.txt", "a1"); },
      io::FolderWrite::Merge);
  EXPECT_EQ(listing(dir), (std::set<std::string>{"a.txt", "old.txt"}));
  EXPECT_EQ(read_bytes(dir + "/a.txt"), "a1");
  io::write_folder_atomic(dir, [](const std::string& tmp) { write_bytes(tmp + "/b.txt", "b"); });
  EXPECT_EQ(listing(dir), (std::set<std::string>{"b.txt"}));
  EXPECT_EQ(listing(t.path()), (std::set<std::string>{"out"}));
}

TEST(FolderWrite, FailedFillLeavesTheFolderAsItWas) {
  TempDir t;
  const std::string dir = t.file("out");
  fs::create_directories(dir);
  write_bytes(dir + "/a.txt", "a0");
  for (io::FolderWrite mode : {io::FolderWrite::Replace, io::FolderWrite::Merge}) {
    EXPECT_THROW(io::write_folder_atomic(
                     dir,
                     [](const std::string& tmp) {
                       write_bytes(tmp + "/a.txt", "half");
                       throw std::runtime_error("disk full");
                     },
                     mode),
                 std::runtime_error);
    EXPECT_EQ(listing(dir), (std::set<std::string>{"a.txt"}));
    EXPECT_EQ(read_bytes(dir + "/a.txt"), "a0");
    EXPECT_EQ(listing(t.path()), (std::set<std::string>{"out"}));
  }
}

TEST(FolderWrite, AFileInTheWayIsAnError) {
  TempDir t;
  write_bytes(t.file("out"), "x");
  expect_error([&] { io::write_folder_atomic(t.file("out"), [](const std::string&) {}); },
               {"[io] " + t.file("out") + ": exists and is not a folder"});
  EXPECT_EQ(read_bytes(t.file("out")), "x");
}

}  // namespace
