// `dsq info` end to end: runs the built binary on a fixture and on broken checkpoints; a bad
// file must end the process with a non-zero status and exactly one line on stderr.
#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "core/read_file.h"
#include "support/paths.h"

namespace dsq {
namespace {

namespace fs = std::filesystem;

struct InfoRun {
  int status = -1;
  std::string out, err;
};


InfoRun run_info(const std::string& model) {
  const std::string dir = test::make_temp_dir("info-cli");
  // Built from a std::string first: GCC 12 warns falsely (-Wrestrict) on "literal" + string&&.
  std::string command = "'";
  command += test::dsq_binary() + "' info '" + model + "' >'" + dir + "/out' 2>'" + dir + "/err'";
  const int raw = std::system(command.c_str());
  InfoRun r;
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  r.out = read_file(dir + "/out");
  r.err = read_file(dir + "/err");
  return r;
}

size_t lines(const std::string& s) { return size_t(std::count(s.begin(), s.end(), '\n')); }

TEST(InfoCli, DescribesTheFixture) {
  const InfoRun r = run_info(test::shared_path("models/tiny-brown"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(r.err.empty()) << r.err;
  EXPECT_NE(r.out.find("layers 5 (+0 MTP)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("routed experts"), std::string::npos);
  // tiny-brown: 5 layers x 16 experts x 3 x 128 x 256 routed-expert weights.
  EXPECT_NE(r.out.find("7,864,320"), std::string::npos) << r.out;
}

TEST(InfoCli, TruncatedCheckpointGivesOneErrorLine) {
  const std::string dir = test::make_temp_dir("info-cli-trunc");
  for (const char* f : {"config.json", "model.safetensors"})
    fs::copy_file(test::shared_path(std::string("models/tiny-a/") + f), dir + "/" + f);
  fs::permissions(dir + "/model.safetensors", fs::perms::owner_write, fs::perm_options::add);
  fs::resize_file(dir + "/model.safetensors", 5000);
  const InfoRun r = run_info(dir);
  EXPECT_NE(r.status, 0);
  EXPECT_EQ(lines(r.err), 1u) << r.err;
  EXPECT_NE(r.err.find(dir + "/model.safetensors: header length"), std::string::npos) << r.err;
}

TEST(InfoCli, BrokenConfigGivesOneErrorLine) {
  const std::string dir = test::make_temp_dir("info-cli-config");
  fs::copy_file(test::shared_path("models/tiny-a/model.safetensors"), dir + "/model.safetensors");
  std::ofstream(dir + "/config.json") << "{\"layer_types\": [}";
  const InfoRun r = run_info(dir);
  EXPECT_NE(r.status, 0);
  EXPECT_EQ(lines(r.err), 1u) << r.err;
  EXPECT_NE(r.err.find(dir + "/config.json: malformed JSON"), std::string::npos) << r.err;
}

TEST(InfoCli, MissingDirectoryGivesOneErrorLine) {
  const InfoRun r = run_info("/nonexistent/model");
  EXPECT_NE(r.status, 0);
  EXPECT_EQ(lines(r.err), 1u) << r.err;
  EXPECT_NE(r.err.find("/nonexistent/model"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace dsq
