// Every bad-spec fixture is rejected with the message its `# expect:` lines
// name; every shipped example job is accepted.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "src/config/diagnostics.h"
#include "src/config/job_parser.h"

namespace fs = std::filesystem;
using geopipe::config::loadJobFile;
using geopipe::config::SpecError;

namespace {

std::vector<std::string> listYaml(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == ".yaml") out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> expectations(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> out;
  std::string line;
  const std::string tag = "# expect: ";
  while (std::getline(in, line)) {
    if (line.rfind(tag, 0) == 0) out.push_back(line.substr(tag.size()));
  }
  return out;
}

std::string nameOf(const testing::TestParamInfo<std::string>& info) {
  std::string n = fs::path(info.param).stem().string();
  std::replace(n.begin(), n.end(), '-', '_');
  return n;
}

class BadFixture : public testing::TestWithParam<std::string> {};

TEST_P(BadFixture, IsRejectedWithItsMessage) {
  const std::string path = GetParam();
  auto expected = expectations(path);
  ASSERT_FALSE(expected.empty()) << path << " has no '# expect:' line";
  try {
    loadJobFile(path);
    FAIL() << path << " was accepted";
  } catch (const SpecError& e) {
    const std::string msg = e.what();
    for (const auto& want : expected) {
      EXPECT_NE(msg.find(want), std::string::npos)
          << "message of " << path << " lacks: " << want << "\n--- got:\n" << msg;
    }
    // Every diagnostic names the file it is about.
    for (const auto& d : e.diagnostics()) EXPECT_FALSE(d.file.empty());
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, BadFixture,
                         testing::ValuesIn(listYaml("tests/config/fixtures/bad")),
                         nameOf);

class ExampleJob : public testing::TestWithParam<std::string> {};

TEST_P(ExampleJob, IsAccepted) {
  EXPECT_NO_THROW({
    try {
      loadJobFile(GetParam());
    } catch (const SpecError& e) {
      ADD_FAILURE() << e.what();
      throw;
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Examples, ExampleJob,
                         testing::ValuesIn(listYaml("examples/jobs")), nameOf);

TEST(Fixtures, ThereAreAtLeast25BadSpecs) {
  EXPECT_GE(listYaml("tests/config/fixtures/bad").size(), 25u);
}

}  // namespace
