// Child processes: exit status, signals, bounded stop of a group.
#include <gtest/gtest.h>
#include <signal.h>

#include "src/distributed/process.h"

namespace geopipe::distributed {
namespace {

ChildProcess sh(const std::string& script) {
  SpawnOptions o;
  o.program = "/bin/sh";
  o.argv = {"sh", "-c", script};
  return ChildProcess::spawn(o);
}

TEST(ChildProcess, ReportsExitCodeAndSignal) {
  auto a = sh("exit 3");
  auto st = a.waitFor(std::chrono::seconds(10));
  ASSERT_TRUE(st);
  EXPECT_EQ(st->code, 3);
  EXPECT_EQ(st->str(), "exited with code 3");
  auto b = sh("sleep 30");
  b.signal(SIGKILL);
  st = b.waitFor(std::chrono::seconds(10));
  ASSERT_TRUE(st);
  EXPECT_TRUE(st->signaled);
  EXPECT_EQ(st->str(), "killed by signal 9 (SIGKILL)");
}

TEST(ChildProcess, StopAllKillsWhatIgnoresSigterm) {
  std::vector<ChildProcess> kids;
  kids.push_back(sh("trap '' TERM; sleep 30"));
  kids.push_back(sh("sleep 30"));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const auto t0 = std::chrono::steady_clock::now();
  stopAll(kids, std::chrono::milliseconds(300));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  for (auto& k : kids) EXPECT_FALSE(k.running());
}

TEST(ChildProcess, MissingProgramExits127) {
  SpawnOptions o;
  o.program = "/nonexistent/geopipe";
  o.argv = {"geopipe"};
  auto c = ChildProcess::spawn(o);
  auto st = c.waitFor(std::chrono::seconds(10));
  ASSERT_TRUE(st);
  EXPECT_EQ(st->code, 127);
}

}  // namespace
}  // namespace geopipe::distributed
