// AtomicFile (core/atomic_file.h), tested here with its main user, the safetensors writer:
// readers see the old or the new contents, and an abandoned write leaves nothing behind.
#include <filesystem>

#include <gtest/gtest.h>

#include "core/read_file.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "support/paths.h"

namespace dsq {
namespace {

namespace fs = std::filesystem;


TEST(AtomicFile, OldContentsStayUntilCommit) {
  const std::string dir = test::make_temp_dir("atomic");
  const std::string path = dir + "/out.json";
  write_file_atomically(path, "old");
  {
    AtomicFile file(path);
    file.write("new contents");
    EXPECT_EQ(read_file(path), "old");  // not visible before commit
    EXPECT_TRUE(fs::exists(file.temp_path()));
    EXPECT_EQ(fs::path(file.temp_path()).parent_path(), fs::path(dir));  // same file system
    EXPECT_EQ(file.bytes_written(), 12u);
    file.commit();
  }
  EXPECT_EQ(read_file(path), "new contents");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);
}

TEST(AtomicFile, AbandonedWriteRemovesItsTemporary) {
  const std::string dir = test::make_temp_dir("atomic-abandon");
  std::string temp;
  try {
    AtomicFile file(dir + "/out.bin");
    temp = file.temp_path();
    file.write("partial");
    throw error("interrupted");
  } catch (const Error&) {
  }
  EXPECT_FALSE(temp.empty());
  EXPECT_FALSE(fs::exists(temp));
  EXPECT_TRUE(fs::is_empty(dir));
}

TEST(AtomicFile, ConcurrentWritersUseDistinctTemporaries) {
  const std::string path = test::make_temp_dir("atomic-two") + "/out";
  AtomicFile a(path), b(path);
  EXPECT_NE(a.temp_path(), b.temp_path());
  a.write("a");
  b.write("b");
  a.commit();
  b.commit();
  EXPECT_EQ(read_file(path), "b");  // the last commit wins, whole
}

TEST(AtomicFile, UnwritableDirectoryIsOneClearError) {
  try {
    AtomicFile file("/nonexistent-dir/out");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent-dir/out: cannot create temporary file"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace dsq
