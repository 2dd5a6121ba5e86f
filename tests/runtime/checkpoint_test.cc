// The checkpoint directory's rules without training: checkpoint.keep prunes
// to the newest commits, the commit LATEST names is never pruned (so
// --resume picks what LATEST names), a fresh run refuses an earlier run's
// checkpoints and --overwrite removes only what geopipe wrote, and resuming
// a finished run says there is nothing left to train.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "geopipe/error.h"
#include "src/runtime/checkpoint.h"

using namespace geopipe;
namespace fs = std::filesystem;

namespace {

std::string freshDir(const std::string& name) {
  std::string dir = ::testing::TempDir() + "geopipe-ckpt-rules-" + name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string readText(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

// What a 1 x 1 job's tasklet and committer leave after step `next_step`.
void commitStep(const std::string& dir, int64_t next_step, int keep) {
  const std::string step_dir = runtime::stepDirectory(dir, next_step);
  fs::create_directories(step_dir);
  std::ofstream(step_dir + "/tasklet-0.pt") << "weights of step " << next_step;
  runtime::CheckpointManifest m;
  m.job = "rules";
  m.next_step = next_step;
  m.stages = 1;
  m.replicas = 1;
  m.files.push_back({"tasklet-0.pt", 0, 0});
  runtime::commitCheckpoint(dir, m, keep);
}

std::vector<std::string> listing(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

std::string errorOf(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "(no ConfigError)";
}

TEST(CheckpointRules, KeepPrunesToTheNewestCommits) {
  const std::string dir = freshDir("keep");
  for (int step = 1; step <= 5; ++step) commitStep(dir, step, 2);
  EXPECT_EQ(listing(dir), (std::vector<std::string>{"LATEST", "step-00000004", "step-00000005"}));
  EXPECT_EQ(readText(dir + "/LATEST"), "step-00000005\n");
  // A folder geopipe did not name is never pruned.
  fs::create_directories(dir + "/step-notes");
  commitStep(dir, 6, 1);
  EXPECT_EQ(listing(dir), (std::vector<std::string>{"LATEST", "step-00000006", "step-notes"}));
}

// An earlier run's later checkpoints (say an --overwrite that was not
// used) must not push the new commit out: LATEST would name a removed
// directory and --resume would continue the earlier run instead.
TEST(CheckpointRules, TheCommitLatestNamesIsNeverPrunedAndResumePicksIt) {
  const std::string dir = freshDir("latest");
  commitStep(dir, 100, 1);
  commitStep(dir, 4, 1);
  EXPECT_EQ(readText(dir + "/LATEST"), "step-00000004\n");
  EXPECT_TRUE(fs::exists(runtime::stepDirectory(dir, 4) + "/manifest.json"));
  ASSERT_TRUE(runtime::findLatestCheckpoint(dir).has_value());
  EXPECT_EQ(runtime::findLatestCheckpoint(dir)->next_step, 4);
  EXPECT_EQ(runtime::resumePoint(dir, 1, 1, 200).next_step, 4);
}

TEST(CheckpointRules, AFreshRunRefusesAnEarlierRunsCheckpoints) {
  // Nothing there, or nothing of ours: go ahead.
  EXPECT_EQ(runtime::prepareFreshCheckpointDir("", false), 0);
  EXPECT_EQ(runtime::prepareFreshCheckpointDir(::testing::TempDir() + "geopipe-no-such", false), 0);
  const std::string dir = freshDir("fresh");
  std::ofstream(dir + "/notes.txt") << "mine";
  EXPECT_EQ(runtime::prepareFreshCheckpointDir(dir, false), 0);

  commitStep(dir, 2, 3);
  commitStep(dir, 4, 3);
  const std::string err = errorOf([&] { runtime::prepareFreshCheckpointDir(dir, false); });
  EXPECT_NE(err.find("checkpoint.dir '" + dir +
                     "' holds the checkpoints of an earlier run "
                     "(LATEST names step-00000004, 2 step directories"),
            std::string::npos)
      << err;
  EXPECT_NE(err.find("with --resume"), std::string::npos) << err;
  EXPECT_NE(err.find("with --overwrite"), std::string::npos) << err;
  // LATEST alone counts, and so does a step directory without LATEST.
  const std::string only_latest = freshDir("only-latest");
  std::ofstream(only_latest + "/LATEST") << "step-00000001\n";
  EXPECT_THROW(runtime::prepareFreshCheckpointDir(only_latest, false), ConfigError);
  const std::string only_step = freshDir("only-step");
  fs::create_directories(runtime::stepDirectory(only_step, 3));
  EXPECT_THROW(runtime::prepareFreshCheckpointDir(only_step, false), ConfigError);

  // --overwrite with a file geopipe did not write in a step directory:
  // refused, nothing removed.
  std::ofstream(runtime::stepDirectory(dir, 2) + "/my-eval.txt") << "keep me";
  const std::vector<std::string> before = listing(dir);
  const std::string unknown = errorOf([&] { runtime::prepareFreshCheckpointDir(dir, true); });
  EXPECT_NE(unknown.find("my-eval.txt' is not a checkpoint file geopipe writes, so nothing was "
                         "removed"),
            std::string::npos)
      << unknown;
  EXPECT_EQ(listing(dir), before);
  EXPECT_TRUE(fs::exists(runtime::stepDirectory(dir, 2) + "/tasklet-0.pt"));

  // Without it: LATEST and the step directories go, notes.txt stays.
  fs::remove(runtime::stepDirectory(dir, 2) + "/my-eval.txt");
  std::ofstream(runtime::stepDirectory(dir, 4) + "/tasklet-0.gradsync.tmp") << "half";
  EXPECT_EQ(runtime::prepareFreshCheckpointDir(dir, true), 2);
  EXPECT_EQ(listing(dir), (std::vector<std::string>{"notes.txt"}));
  EXPECT_EQ(runtime::prepareFreshCheckpointDir(dir, false), 0);
  // The new run's first commit is the one --resume finds.
  commitStep(dir, 1, 3);
  EXPECT_EQ(runtime::resumePoint(dir, 1, 1, 10).next_step, 1);
}

TEST(CheckpointRules, ResumingAFinishedRunSaysThereIsNothingLeft) {
  const std::string dir = freshDir("finished");
  commitStep(dir, 5, 3);
  const std::string last = errorOf([&] { runtime::resumePoint(dir, 1, 1, 5); });
  EXPECT_NE(last.find("the checkpoint in '" + dir +
                      "' is at step 5, the job's last "
                      "(training.steps: 5): nothing left to train; raise training.steps"),
            std::string::npos)
      << last;
  const std::string past = errorOf([&] { runtime::resumePoint(dir, 1, 1, 3); });
  EXPECT_NE(past.find("is at step 5, past the job's last (training.steps: 3)"), std::string::npos)
      << past;
  EXPECT_EQ(runtime::resumePoint(dir, 1, 1, 6).next_step, 5);
}

}  // namespace
