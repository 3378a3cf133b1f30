#include "pal/core/atomic_file.h"

#include <gtest/gtest.h>

#include "pal/core/error.h"
#include "test_util.h"

namespace pal {
namespace {

size_t entries(const std::filesystem::path& folder) {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(folder)) ++n;
  return n;
}

TEST(AtomicFile, CommitReplacesTarget) {
  test::TempDir dir;
  auto target = dir / "weights.bin";
  write_file_atomic(target, "old");
  write_file_atomic(target, "new contents");
  EXPECT_EQ(read_file(target), "new contents");
  EXPECT_EQ(entries(dir.path()), 1u) << "temporary file left behind";
}

TEST(AtomicFile, AbandonedWriteLeavesTargetUntouched) {
  test::TempDir dir;
  auto target = dir / "state.yaml";
  write_file_atomic(target, "complete");
  {
    AtomicFile file(target);
    file.write("partial");
    EXPECT_TRUE(std::filesystem::exists(file.temporary()));
    // No commit: as if an exception or a kill interrupted the write.
  }
  EXPECT_EQ(read_file(target), "complete");
  EXPECT_EQ(entries(dir.path()), 1u);
}

TEST(AtomicFile, ErrorsNameTheFile) {
  test::TempDir dir;
  auto missing_folder = dir / "no/such/folder/file.txt";
  std::string msg = test::error_message<IoError>([&] { write_file_atomic(missing_folder, "x"); });
  EXPECT_NE(msg.find("file.txt"), std::string::npos) << msg;
  msg = test::error_message<IoError>([&] { read_file(dir / "absent.txt"); });
  EXPECT_NE(msg.find("absent.txt"), std::string::npos) << msg;
}

}  // namespace
}  // namespace pal
