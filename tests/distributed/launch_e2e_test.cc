// Jobs launched as worker processes of the real geopipe binary on loopback:
// the same losses as the in-process Trainer, AC-SGD, stop + resume, and a
// killed worker that ends the job naming its tasklet without orphans.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "geopipe/trainer.h"
#include "src/config/job_parser.h"
#include "src/distributed/coordinator.h"
#include "src/distributed/launcher.h"
#include "src/distributed/process.h"
#include "src/distributed/security.h"
#include "tests/distributed/test_jobs.h"

namespace geopipe::distributed {
namespace {

using testing::TempDir;
using testing::tinyJobYaml;
using testing::writeJob;

LaunchOptions launchOptions(const std::string& job_path, const TempDir& dir) {
  LaunchOptions o;
  o.job_path = job_path;
  o.executable = GEOPIPE_BINARY;
  o.log_dir = dir.file("logs");
  o.threads_per_worker = 1;
  o.timeout_seconds = 60;
  return o;
}

std::vector<double> inProcessLosses(const std::string& job_path) {
  JobSpec job = config::loadJobFile(job_path);
  TrainerOptions opt;
  opt.threads_per_tasklet = 1;
  return Trainer(makeModel(job.model), job, opt).train().losses;
}

void expectSameLosses(const std::vector<double>& want, const std::vector<double>& got,
                      size_t offset = 0) {
  ASSERT_EQ(want.size(), got.size() + offset);
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got[i], want[i + offset], 1e-6 * std::abs(want[i + offset]))
        << "step " << i + offset;
  }
}

TEST(Launch, TwoStagesTwoReplicasMatchTheInProcessTrainer) {
  TempDir dir;
  const std::string job =
      writeJob(dir, "job.yaml", tinyJobYaml(30, "transport: {emulate_links: false}\n"));
  const std::vector<double> want = inProcessLosses(job);
  LaunchResult r = launchJob(launchOptions(job, dir));
  ASSERT_TRUE(r.job.ok) << r.job.failure << "\n" << r.failed_log_tail;
  EXPECT_EQ(r.workers, 4);
  const auto& got = r.job.train.losses;
  expectSameLosses(want, got);
  EXPECT_LT(got.back(), got.front() * 0.8) << "loss should decrease";
}

TEST(Launch, AcsgdWithEmulatedLinksMatchesTheInProcessTrainer) {
  TempDir dir;
  const std::string job =
      writeJob(dir, "job.yaml",
               tinyJobYaml(20,
                           "compression:\n"
                           "  activations: {method: acsgd, bits: 4}\n"
                           "  backward: {method: quantize, bits: 8}\n"
                           "transport: {emulate_links: true, bandwidth_scale: 1.0}\n"));
  const std::vector<double> want = inProcessLosses(job);
  LaunchResult r = launchJob(launchOptions(job, dir));
  ASSERT_TRUE(r.job.ok) << r.job.failure << "\n" << r.failed_log_tail;
  const auto& got = r.job.train.losses;
  expectSameLosses(want, got);
  EXPECT_LT(got.back(), got.front());
  EXPECT_LT(r.job.train.wire_bytes, r.job.train.raw_bytes);
}

TEST(Launch, StopWithCheckpointThenResumeEqualsAnUninterruptedRun) {
  TempDir dir;
  const std::string extra =
      "transport: {emulate_links: false}\n"
      "checkpoint: {dir: ckpt, every_steps: 5}\n";
  const std::string full_job = writeJob(dir, "full.yaml", tinyJobYaml(24, extra));
  const std::vector<double> want = inProcessLosses(full_job);
  std::filesystem::remove_all(dir.file("ckpt"));

  // First run: stopped (as by Ctrl-C) once 7 steps are done; the workers
  // stop after one common step and checkpoint there.
  LaunchOptions first = launchOptions(full_job, dir);
  std::atomic<int64_t> done{0};
  first.on_step = [&](const StepMetrics& m) { done = m.step + 1; };
  first.should_stop = [&] { return done.load() >= 7; };
  LaunchResult a = launchJob(first);
  ASSERT_TRUE(a.job.ok) << a.job.failure << "\n" << a.failed_log_tail;
  ASSERT_TRUE(a.job.interrupted);
  const size_t stopped_at = a.job.train.losses.size();
  ASSERT_GE(stopped_at, 7u);
  ASSERT_LT(stopped_at, 24u);
  expectSameLosses(std::vector<double>(want.begin(), want.begin() + stopped_at),
                   a.job.train.losses);

  LaunchOptions second = launchOptions(full_job, dir);
  second.resume = true;
  LaunchResult b = launchJob(second);
  ASSERT_TRUE(b.job.ok) << b.job.failure << "\n" << b.failed_log_tail;
  EXPECT_EQ(b.job.train.first_step, static_cast<int64_t>(stopped_at));
  expectSameLosses(want, b.job.train.losses, stopped_at);
}

// Processes whose parent is `pid` (from /proc).
std::vector<pid_t> childrenOf(pid_t pid) {
  std::vector<pid_t> out;
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(e.path() / "stat");
    std::string line;
    if (!std::getline(stat, line)) continue;
    const auto close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(line.substr(close + 2));
    char state;
    pid_t ppid;
    rest >> state >> ppid;
    if (ppid == pid && state != 'Z') out.push_back(std::stoi(name));
  }
  return out;
}

TEST(Launch, KilledWorkerEndsTheJobNamingItsTaskletWithoutOrphans) {
  TempDir dir;
  const std::string job = writeJob(dir, "job.yaml",
                                   tinyJobYaml(100000,
                                               "transport: {emulate_links: false}\n"
                                               "logging: {metrics_file: metrics.jsonl}\n"));
  // Orphans of the launcher would be re-parented to this process.
  ASSERT_EQ(::prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  SpawnOptions so;
  so.program = GEOPIPE_BINARY;
  so.argv = {GEOPIPE_BINARY, "launch", job, "--threads", "1", "--log-dir", dir.file("logs")};
  so.log_file = dir.file("launch.out");
  ChildProcess launcher = ChildProcess::spawn(so);

  // Wait for training to be under way.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  auto stepsLogged = [&] {
    std::ifstream in(dir.file("metrics.jsonl"));
    int n = 0;
    std::string line;
    while (std::getline(in, line)) ++n;
    return n;
  };
  while (stepsLogged() < 3 && std::chrono::steady_clock::now() < deadline && launcher.running()) {
    launcher.poll();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_GE(stepsLogged(), 3) << tailOfFile(dir.file("launch.out"), 20);
  std::vector<pid_t> workers = childrenOf(launcher.pid());
  ASSERT_EQ(workers.size(), 4u);
  ASSERT_EQ(::kill(workers[1], SIGKILL), 0);

  auto st = launcher.waitFor(std::chrono::seconds(60));
  ASSERT_TRUE(st) << "launch did not end after a worker was killed";
  const std::string output = tailOfFile(dir.file("launch.out"), 200);
  EXPECT_EQ(st->code, 5) << output;
  EXPECT_NE(output.find("error: tasklet rank"), std::string::npos) << output;
  EXPECT_NE(output.find("killed by signal 9"), std::string::npos) << output;
  EXPECT_NE(output.find("stage"), std::string::npos) << output;
  EXPECT_NE(output.find("replica"), std::string::npos) << output;

  // No worker survives the launcher.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  std::vector<pid_t> left = childrenOf(::getpid());
  for (pid_t p : left) {
    ::kill(p, SIGKILL);
    ::waitpid(p, nullptr, 0);
  }
  EXPECT_TRUE(left.empty()) << left.size() << " orphaned worker process(es)";
}

TEST(Coordinator, WorkerKilledWithoutALauncherIsNamedByItsSilence) {
  // Multi-host style: a standalone coordinator and `geopipe worker`
  // processes; nobody watches the processes, so the coordinator must work
  // out from the heartbeats which tasklet died (its peers only see broken
  // links).
  TempDir dir;
  CoordinatorOptions co;
  co.job_path =
      writeJob(dir, "job.yaml", tinyJobYaml(100000, "transport: {emulate_links: false}\n"));
  co.listen_address = "127.0.0.1:0";
  co.heartbeat_timeout = std::chrono::seconds(20);
  // Mutual TLS and a join token, as a multi-host job has; the workers get
  // the files on their command line.
  const EphemeralSecurity creds = makeEphemeralSecurity(dir.file("tls"));
  co.security = creds.security;
  std::atomic<int64_t> done{0};
  co.on_step = [&](const StepMetrics& m) { done = m.step + 1; };
  Coordinator coordinator(co);
  std::vector<ChildProcess> workers;
  for (int i = 0; i < 4; ++i) {
    SpawnOptions so;
    so.program = GEOPIPE_BINARY;
    so.argv = {GEOPIPE_BINARY,  "worker",
               "--coordinator", coordinator.listeningAddress(),
               "--device",      std::to_string(i),
               "--listen",      "127.0.0.1:0",
               "--threads",     "1",
               "--ca",          creds.worker_args.ca,
               "--cert",        creds.worker_args.cert,
               "--key",         creds.worker_args.key,
               "--token-file",  creds.worker_args.token_file};
    so.log_file = dir.file("worker-" + std::to_string(i) + ".log");
    workers.push_back(ChildProcess::spawn(so));
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (done.load() < 3 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_GE(done.load(), 3);
  const auto tasklets = coordinator.tasklets();
  ASSERT_EQ(tasklets.size(), 4u);
  const int victim = 3;  // stage 1 of replica 1
  for (auto& w : workers)
    if (w.pid() == tasklets[victim].pid) w.signal(SIGKILL);
  const auto t0 = std::chrono::steady_clock::now();
  auto r = coordinator.waitFor(std::chrono::seconds(30));
  ASSERT_TRUE(r.has_value());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10))
      << "the failure should be attributed long before the heartbeat timeout";
  EXPECT_FALSE(r->ok);
  EXPECT_EQ(r->failed_rank, victim) << r->failure;
  std::cout << "failure: " << r->failure << "\n";
  EXPECT_NE(r->failure.find("tasklet rank 3 (stage 1, replica 1"), std::string::npos) << r->failure;
  stopAll(workers, std::chrono::seconds(10));
  for (auto& w : workers) EXPECT_FALSE(w.running());
}

}  // namespace
}  // namespace geopipe::distributed
