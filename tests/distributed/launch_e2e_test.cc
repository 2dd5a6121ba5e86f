// Jobs launched as worker processes of the real geopipe binary on loopback:
// the same losses as the in-process Trainer, AC-SGD, each worker's timeline
// trace, stop + resume, a killed worker that ends the job naming its
// tasklet without orphans (no restarts allowed), and recovery: a killed or
// hung worker replaced with the losses of an uninterrupted run, a killed
// coordinator resumed.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "geopipe/error.h"
#include "geopipe/trainer.h"
#include "src/config/job_parser.h"
#include "src/distributed/coordinator.h"
#include "src/distributed/launcher.h"
#include "src/distributed/process.h"
#include "src/distributed/security.h"
#include "src/runtime/checkpoint.h"
#include "tests/distributed/test_jobs.h"
#include "tests/support/tcp_proxy.h"

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
                      size_t offset = 0, double relative = 1e-6) {
  ASSERT_EQ(want.size(), got.size() + offset);
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got[i], want[i + offset], relative * std::abs(want[i + offset]))
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

// logging.trace_dir under launch: each worker process writes its own
// timeline (a relative directory resolved against the job file's, created
// by the workers), valid JSON with its rank as pid and every micro-batch's
// forward and backward.
TEST(Launch, EveryWorkerWritesItsTimeline) {
  TempDir dir;
  const std::string job =
      writeJob(dir, "job.yaml",
               tinyJobYaml(3, "transport: {emulate_links: false}\nlogging: {trace_dir: traces}\n"));
  LaunchResult r = launchJob(launchOptions(job, dir));
  ASSERT_TRUE(r.job.ok) << r.job.failure << "\n" << r.failed_log_tail;
  for (int rank = 0; rank < 4; ++rank) {
    const int stage = rank % 2, replica = rank / 2;
    const std::string path = dir.file("traces/trace-stage" + std::to_string(stage) + "-replica" +
                                      std::to_string(replica) + ".json");
    std::ifstream in(path);
    ASSERT_TRUE(in.good()) << path;
    const std::string text((std::istreambuf_iterator<char>(in)), {});
    const auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    ASSERT_FALSE(j.is_discarded()) << path << ":\n" << text.substr(0, 2000);
    int forwards = 0, backwards = 0, sends = 0;
    for (const auto& e : j["traceEvents"]) {
      EXPECT_EQ(e["pid"], rank) << e;
      forwards += e["name"] == "forward";
      backwards += e["name"] == "backward";
      sends += e["name"] == (stage == 0 ? "send activation" : "send gradient");
    }
    // 3 steps of 2 micro-batches per replica.
    EXPECT_EQ(forwards, 6) << path;
    EXPECT_EQ(backwards, 6) << path;
    EXPECT_EQ(sends, 6) << path;
  }
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

// Checkpoints by layer through the worker processes: a 2 x 2 job stopped
// after 6 steps (its commit at step 6) and resumed by `launch --resume` as
// 4 stages x 1 replica. Every worker reads the manifest and gathers its
// layers from the saved stages; uncompressed, the global batch the same,
// the losses follow the uninterrupted 2 x 2 run up to the order of float
// sums.
TEST(Launch, ResumeWithAnotherStageAndReplicaCountFollowsTheUninterruptedRun) {
  TempDir dir;
  const std::string extra =
      "transport: {emulate_links: false}\n"
      "checkpoint: {dir: ckpt, every_steps: 3}\n";
  const std::string job = writeJob(dir, "job.yaml", tinyJobYaml(12, extra));
  const std::vector<double> want = inProcessLosses(job);
  std::filesystem::remove_all(dir.file("ckpt"));
  LaunchOptions first = launchOptions(job, dir);
  first.steps = 6;
  LaunchResult a = launchJob(first);
  ASSERT_TRUE(a.job.ok) << a.job.failure << "\n" << a.failed_log_tail;
  LaunchOptions second = launchOptions(job, dir);
  second.resume = true;
  second.overrides = {"parallelism.pipeline_stages=4", "parallelism.data_parallel=1"};
  LaunchResult b = launchJob(second);
  ASSERT_TRUE(b.job.ok) << b.job.failure << "\n" << b.failed_log_tail;
  EXPECT_EQ(b.workers, 4);
  EXPECT_EQ(b.job.train.first_step, 6);
  EXPECT_EQ(b.job.train.layers_of_stage.size(), 4u);
  expectSameLosses(want, b.job.train.losses, 6, 1e-4);
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
                                               "logging: {metrics_file: metrics.jsonl}\n"
                                               "fault_tolerance: {max_restarts: 0}\n"));
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

// A `geopipe worker` of a standalone coordinator, on loopback with the
// coordinator's TLS files and join token.
ChildProcess spawnWorker(const std::string& coordinator, const std::string& device,
                         const EphemeralSecurity& creds, const std::string& log_file,
                         const std::vector<std::string>& extra = {}) {
  SpawnOptions so;
  so.program = GEOPIPE_BINARY;
  so.argv = {GEOPIPE_BINARY,  "worker",
             "--coordinator", coordinator,
             "--device",      device,
             "--listen",      "127.0.0.1:0",
             "--threads",     "1",
             "--ca",          creds.worker_args.ca,
             "--cert",        creds.worker_args.cert,
             "--key",         creds.worker_args.key,
             "--token-file",  creds.worker_args.token_file};
  if (std::find(extra.begin(), extra.end(), "--listen") != extra.end() ||
      std::find(extra.begin(), extra.end(), "--relay") != extra.end()) {
    // The caller's --listen replaces the default; --relay takes none.
    const auto at = std::find(so.argv.begin(), so.argv.end(), std::string("--listen"));
    so.argv.erase(at, at + 2);
  }
  so.argv.insert(so.argv.end(), extra.begin(), extra.end());
  so.log_file = log_file;
  return ChildProcess::spawn(so);
}

TEST(Coordinator, WorkerKilledWithoutALauncherIsNamedByItsSilence) {
  // Multi-host style: a standalone coordinator and `geopipe worker`
  // processes; nobody watches the processes, so the coordinator must work
  // out from the heartbeats which tasklet died (its peers only see broken
  // links).
  TempDir dir;
  CoordinatorOptions co;
  co.job_path = writeJob(dir, "job.yaml",
                         tinyJobYaml(100000,
                                     "transport: {emulate_links: false}\n"
                                     "fault_tolerance: {max_restarts: 0}\n"));
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
    workers.push_back(spawnWorker(coordinator.listeningAddress(), std::to_string(i), creds,
                                  dir.file("worker-" + std::to_string(i) + ".log")));
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

// Seconds per step of a standalone coordinator's job whose workers reach
// the coordinator through a TcpProxy adding `delay` each way (their peer
// links stay direct): the time between the coordinator's rows of step
// `from` and of the last step. The steps are paced by emulated link
// latency, so the figure depends little on the machine's load.
double secondsPerStepWithCoordinatorDelay(std::chrono::milliseconds delay, int steps, int from) {
  TempDir dir;
  CoordinatorOptions co;
  // 25 ms of emulated latency between the four devices.
  std::string yaml = tinyJobYaml(steps,
                                 "transport: {emulate_links: true}\n"
                                 "fault_tolerance: {max_restarts: 0}\n");
  const std::string fast = "intra: {latency_ms: 0, bandwidth_gbps: 100}";
  yaml.replace(yaml.find(fast), fast.size(), "intra: {latency_ms: 25, bandwidth_gbps: 100}");
  co.job_path = writeJob(dir, "job.yaml", yaml);
  co.listen_address = "127.0.0.1:0";
  const EphemeralSecurity creds = makeEphemeralSecurity(dir.file("tls"));
  co.security = creds.security;
  std::mutex mu;
  std::vector<std::chrono::steady_clock::time_point> rows;
  co.on_step = [&](const StepMetrics&) {
    std::lock_guard<std::mutex> lock(mu);
    rows.push_back(std::chrono::steady_clock::now());
  };
  Coordinator coordinator(co);
  const std::string& address = coordinator.listeningAddress();
  geopipe::testing::TcpProxy proxy(std::stoi(address.substr(address.rfind(':') + 1)), delay);
  std::vector<ChildProcess> workers;
  for (int i = 0; i < 4; ++i) {
    workers.push_back(spawnWorker(proxy.address(), std::to_string(i), creds,
                                  dir.file("worker-" + std::to_string(i) + ".log")));
  }
  auto r = coordinator.waitFor(std::chrono::seconds(120));
  stopAll(workers, std::chrono::seconds(10));
  EXPECT_TRUE(r.has_value() && r->ok) << (r ? r->failure : std::string("no end in 120 s"));
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(rows.size(), static_cast<size_t>(steps));
  if (rows.size() != static_cast<size_t>(steps)) return 0;
  const std::chrono::duration<double> span = rows.back() - rows[static_cast<size_t>(from)];
  return span.count() / (steps - 1 - from);
}

TEST(Coordinator, DelayOnTheCoordinatorsLinksDoesNotSlowTheSteps) {
  // Step reports are sent without waiting for the answer, so 200 ms each
  // way to the coordinator (400 ms a round trip, several steps) leaves
  // the step time alone. Reports that waited would add the round trip to
  // every step.
  // Each case runs twice, interleaved, and the faster run counts. The bound
  // is 25%: under ctest -j2 on a machine that also compiles, the delayed
  // runs came out 1.055x, 1.06x and 1.11x (three CI runs), the machine's
  // noise, while reports that waited would add the 400 ms round trip to
  // every ~120 ms step (about 4x).
  const int steps = 60, from = 10;
  double direct = 1e9, delayed = 1e9;
  for (int round = 0; round < 2; ++round) {
    direct = std::min(
        direct, secondsPerStepWithCoordinatorDelay(std::chrono::milliseconds(0), steps, from));
    delayed = std::min(
        delayed, secondsPerStepWithCoordinatorDelay(std::chrono::milliseconds(200), steps, from));
  }
  std::cout << "seconds per step: " << direct << " direct, " << delayed
            << " with 200 ms each way to the coordinator (" << delayed / direct << "x)\n";
  ASSERT_GT(direct, 0);
  EXPECT_LT(delayed, direct * 1.25);
}

// --- resumable links --------------------------------------------------------

int freeLoopbackPort();
std::string readFile(const std::string& path);

// A standalone coordinator's run whose workers reach one another through a
// TcpProxy each (peers dial the proxy, which forwards to the worker's
// --listen port); once `cut_at` steps have finished, every proxy cuts the
// connections it carries.
struct CutLinksRun {
  CoordinatorResult result;
  double seconds = 0;  // from the coordinator's start to its end
  int cut = 0;         // connections cut
  int resumed = 0;     // "resumed after" lines in the worker logs
};
CutLinksRun runWithCutPeerLinks(const TempDir& dir, const std::string& name,
                                const std::string& yaml, const std::vector<int>& cut_at) {
  CoordinatorOptions co;
  co.job_path = writeJob(dir, name + ".yaml", yaml);
  co.listen_address = "127.0.0.1:0";
  const EphemeralSecurity creds = makeEphemeralSecurity(dir.file(name + "-tls"));
  co.security = creds.security;
  std::atomic<int> steps{0};
  co.on_step = [&](const StepMetrics&) { ++steps; };
  std::vector<int> ports;
  std::vector<std::unique_ptr<geopipe::testing::TcpProxy>> proxies;
  for (int i = 0; i < 4; ++i) {
    int port = 0;
    while (port == 0 || std::count(ports.begin(), ports.end(), port) > 0) port = freeLoopbackPort();
    ports.push_back(port);
    proxies.push_back(std::make_unique<geopipe::testing::TcpProxy>(port));
  }
  const auto t0 = std::chrono::steady_clock::now();
  Coordinator coordinator(co);
  std::vector<ChildProcess> workers;
  for (int i = 0; i < 4; ++i) {
    workers.push_back(spawnWorker(
        coordinator.listeningAddress(), std::to_string(i), creds,
        dir.file(name + "-worker-" + std::to_string(i) + ".log"),
        {"--listen", "127.0.0.1:" + std::to_string(ports[static_cast<size_t>(i)]), "--advertise",
         "127.0.0.1:" + std::to_string(proxies[static_cast<size_t>(i)]->port())}));
  }
  CutLinksRun run;
  std::atomic<bool> over{false};
  std::thread cutter([&] {
    for (int at : cut_at) {
      while (steps < at && !over) std::this_thread::sleep_for(std::chrono::milliseconds(2));
      for (auto& p : proxies) run.cut += p->cutAll();
    }
  });
  auto r = coordinator.waitFor(std::chrono::seconds(180));
  run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  over = true;
  cutter.join();
  stopAll(workers, std::chrono::seconds(10));
  EXPECT_TRUE(r.has_value()) << name << ": no end in 180 s";
  if (r) run.result = *r;
  for (int i = 0; i < 4; ++i) {
    const std::string log = readFile(dir.file(name + "-worker-" + std::to_string(i) + ".log"));
    for (size_t at = log.find("resumed after"); at != std::string::npos;
         at = log.find("resumed after", at + 1))
      ++run.resumed;
  }
  return run;
}

TEST(Coordinator, CutPeerConnectionsResumeWithoutARestartAndChangeNoLoss) {
  // Every peer connection of a 2 x 2 job over gRPC with TLS is cut three
  // times mid-run. With fault_tolerance.link_grace (30 s by default) the
  // links resume: no recovery, the losses of the uninterrupted run. With
  // link_grace 0 (how every broken link was handled before) one such cut
  // ends a generation, which restarts from the last checkpoint: the time
  // that costs is printed beside.
  TempDir dir;
  auto job = [&](const std::string& name, const std::string& grace) {
    return tinyJobYaml(40,
                       "transport: {emulate_links: false}\n"
                       "fault_tolerance: {max_restarts: 3" +
                           grace + "}\ncheckpoint: {dir: " + dir.file(name + "-ckpt") +
                           ", every_steps: 5}\n");
  };
  const CutLinksRun plain = runWithCutPeerLinks(dir, "plain", job("plain", ""), {});
  const CutLinksRun resumed = runWithCutPeerLinks(dir, "resumed", job("resumed", ""), {8, 18, 28});
  const CutLinksRun restarted =
      runWithCutPeerLinks(dir, "restarted", job("restarted", ", link_grace: 0"), {18});
  ASSERT_TRUE(plain.result.ok) << plain.result.failure;
  ASSERT_TRUE(resumed.result.ok) << resumed.result.failure << "\n"
                                 << readFile(dir.file("resumed-worker-0.log"));
  std::cout << "40 steps: " << plain.seconds << " s uninterrupted; every peer connection cut 3 "
            << "times, resumed: " << resumed.seconds << " s (" << resumed.cut
            << " connections cut, " << resumed.resumed << " resumes, " << resumed.result.recoveries
            << " recoveries; " << (resumed.seconds - plain.seconds) / 3
            << " s lost per cut); cut once with "
            << "link_grace 0: " << restarted.seconds << " s (" << restarted.result.recoveries
            << " recoveries; " << restarted.seconds - plain.seconds << " s lost)"
            << (restarted.result.ok ? "" : ", failed: " + restarted.result.failure) << "\n";
  EXPECT_EQ(resumed.result.recoveries, 0);
  EXPECT_GE(resumed.cut, 3 * 4);  // every worker has at least one incoming peer link
  EXPECT_GE(resumed.resumed, 3);
  EXPECT_EQ(resumed.result.train.losses, plain.result.train.losses);
  EXPECT_EQ(plain.cut, 0);
  // Without a grace, a cut costs a recovery (which the grace saves).
  EXPECT_TRUE(restarted.result.ok) << restarted.result.failure;
  EXPECT_EQ(restarted.result.recoveries, 1) << restarted.result.failure;
  EXPECT_EQ(restarted.result.train.losses, plain.result.train.losses);
}

// --- recovery ---------------------------------------------------------------

// One-line events with the time they arrived.
struct EventLog {
  std::mutex mu;
  std::vector<std::pair<std::chrono::steady_clock::time_point, std::string>> lines;
  std::function<void(const std::string&)> sink() {
    return [this](const std::string& line) {
      std::lock_guard<std::mutex> lock(mu);
      lines.emplace_back(std::chrono::steady_clock::now(), line);
      std::cout << "[event] " << line << "\n";
    };
  }
  // The first line containing `part`, if any.
  std::optional<std::pair<std::chrono::steady_clock::time_point, std::string>> find(
      const std::string& part) {
    std::lock_guard<std::mutex> lock(mu);
    for (const auto& l : lines)
      if (l.second.find(part) != std::string::npos) return l;
    return std::nullopt;
  }
};

// A free loopback port below the ephemeral range (bound, released): a
// client retrying a connect to an ephemeral port where nothing listens can
// connect to itself (TCP self-connect) and then hang in its own handshake.
int freeLoopbackPort() {
  std::random_device rd;
  for (int attempt = 0; attempt < 100; ++attempt) {
    const int port = 20000 + static_cast<int>(rd() % 10000);
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(port));
    const bool free = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    ::close(fd);
    if (free) return port;
  }
  return 0;
}

std::string readFile(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

TEST(Coordinator, WorkersListenOnAPortRangeAndAdvertiseAnAddress) {
  // Four workers on one host share a range of exactly four ports (a
  // firewall opened for it beforehand): each takes the first free one. They
  // advertise "localhost" (their certificate's name), not --listen's host.
  TempDir dir;
  const EphemeralSecurity creds = makeEphemeralSecurity(dir.file("tls"));
  int base = 0;
  for (int attempt = 0; attempt < 20 && base == 0; ++attempt) {
    const int p = freeLoopbackPort();
    bool all = p > 0 && p + 3 < 30000;
    for (int k = 0; all && k < 4; ++k) {
      const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      a.sin_port = htons(static_cast<uint16_t>(p + k));
      all = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
      ::close(fd);
    }
    if (all) base = p;
  }
  ASSERT_GT(base, 0);
  CoordinatorOptions co;
  co.job_path = writeJob(dir, "job.yaml", tinyJobYaml(3, "transport: {emulate_links: false}\n"));
  co.listen_address = "127.0.0.1:0";
  co.security = creds.security;
  Coordinator coordinator(co);
  const std::string range = "127.0.0.1:" + std::to_string(base) + "-" + std::to_string(base + 3);
  std::vector<ChildProcess> workers;
  for (int i = 0; i < 4; ++i) {
    workers.push_back(spawnWorker(coordinator.listeningAddress(), std::to_string(i), creds,
                                  dir.file("worker-" + std::to_string(i) + ".log"),
                                  {"--listen", range, "--advertise", "localhost"}));
  }
  auto r = coordinator.waitFor(std::chrono::seconds(60));
  stopAll(workers, std::chrono::seconds(10));
  ASSERT_TRUE(r.has_value() && r->ok)
      << (r ? r->failure : std::string("no end in 60 s")) << "\nworker 0:\n"
      << readFile(dir.file("worker-0.log"));
  std::set<int> ports;
  for (int i = 0; i < 4; ++i) {
    const std::string log = readFile(dir.file("worker-" + std::to_string(i) + ".log"));
    const auto at = log.find("; peers dial localhost:");
    ASSERT_NE(at, std::string::npos) << log;
    ports.insert(std::stoi(log.substr(at + std::string("; peers dial localhost:").size())));
  }
  EXPECT_EQ(ports, (std::set<int>{base, base + 1, base + 2, base + 3}));
}

TEST(Coordinator, WorkersStartedBeforeTheirCoordinatorSayWhyTheyWaitAndJoinWithinSeconds) {
  TempDir dir;
  const EphemeralSecurity creds = makeEphemeralSecurity(dir.file("tls"));
  const std::string address = "127.0.0.1:" + std::to_string(freeLoopbackPort());
  std::vector<ChildProcess> workers;
  for (int i = 0; i < 4; ++i) {
    workers.push_back(spawnWorker(address, std::to_string(i), creds,
                                  dir.file("worker-" + std::to_string(i) + ".log")));
  }
  // Nothing listens yet: within 15 s each worker says so (the first
  // warning comes after 5 s) and keeps trying.
  const auto said = [&] {
    return readFile(dir.file("worker-0.log")).find("still cannot reach the coordinator") !=
           std::string::npos;
  };
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  while (!said() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const std::string log = readFile(dir.file("worker-0.log"));
  EXPECT_NE(log.find("still cannot reach the coordinator at " + address), std::string::npos) << log;
  EXPECT_NE(log.find("connection refused: nothing listens on that port"), std::string::npos) << log;
  for (auto& w : workers) EXPECT_TRUE(w.running());

  CoordinatorOptions co;
  co.job_path = writeJob(dir, "job.yaml", tinyJobYaml(3, "transport: {emulate_links: false}\n"));
  co.listen_address = address;
  co.security = creds.security;
  EventLog events;
  co.on_event = events.sink();
  const auto t0 = std::chrono::steady_clock::now();
  Coordinator coordinator(co);
  auto r = coordinator.waitFor(std::chrono::seconds(60));
  stopAll(workers, std::chrono::seconds(10));
  ASSERT_TRUE(r.has_value() && r->ok)
      << (r ? r->failure : std::string("no end in 60 s")) << "\nworker 0:\n"
      << readFile(dir.file("worker-0.log"));
  const auto connected = events.find("every worker is connected");
  ASSERT_TRUE(connected.has_value());
  EXPECT_LT(connected->first - t0, std::chrono::seconds(5))
      << "the workers' reconnect backoff stays short";
}

TEST(Coordinator, WorkersThatAcceptNoConnectionsAreReachedThroughTheRelay) {
  // Devices 1 and 3 have workers that accept no connections (--relay: NAT
  // without a port forward). Their own peer services listen on a loopback
  // port nobody is told about; every stream to them goes through the
  // coordinator's relay, TLS end to end, and the losses are those of the
  // same job with every worker reachable.
  TempDir dir;
  const EphemeralSecurity creds = makeEphemeralSecurity(dir.file("tls"));
  const std::string yaml = tinyJobYaml(6, "transport: {emulate_links: false}\n");
  auto run = [&](const std::string& name, bool relay, EventLog& events,
                 std::optional<transport::RelayStats>* stats) {
    CoordinatorOptions co;
    co.job_path = writeJob(dir, name + ".yaml", yaml);
    co.listen_address = "127.0.0.1:0";
    co.security = creds.security;
    co.on_event = events.sink();
    if (relay) {
      co.relay_listen = "127.0.0.1:0";
      co.relay_site = "local";
    }
    Coordinator coordinator(co);
    std::vector<ChildProcess> workers;
    for (int i = 0; i < 4; ++i) {
      std::vector<std::string> extra;
      if (relay && i % 2 == 1) extra = {"--relay", "--advertise", "localhost"};
      workers.push_back(spawnWorker(coordinator.listeningAddress(), std::to_string(i), creds,
                                    dir.file(name + "-worker-" + std::to_string(i) + ".log"),
                                    extra));
    }
    auto r = coordinator.waitFor(std::chrono::seconds(90));
    *stats = coordinator.relayStats();
    stopAll(workers, std::chrono::seconds(10));
    EXPECT_TRUE(r.has_value() && r->ok)
        << name << ": " << (r ? r->failure : std::string("no end in 90 s")) << "\nworker 1:\n"
        << readFile(dir.file(name + "-worker-1.log"));
    return r ? r->train.losses : std::vector<double>{};
  };
  EventLog direct_events, relay_events;
  std::optional<transport::RelayStats> none, stats;
  const std::vector<double> direct = run("direct", false, direct_events, &none);
  const std::vector<double> relayed = run("relayed", true, relay_events, &stats);
  EXPECT_FALSE(none.has_value());
  ASSERT_TRUE(stats.has_value());
  ASSERT_EQ(relayed.size(), 6u);
  EXPECT_EQ(relayed, direct);
  // Each relayed worker has a pipeline neighbour and a data-parallel peer
  // sending to it: at least one relayed connection each, carrying data.
  std::cout << "relay: " << stats->connected << " connections, " << stats->bytes_forwarded
            << " bytes forwarded, " << stats->refused << " refused\n";
  EXPECT_GE(stats->connected, 2u);
  EXPECT_GT(stats->bytes_forwarded, 100000u);
  EXPECT_TRUE(relay_events.find("is reached through the relay").has_value());
  for (int i : {1, 3}) {
    const std::string log = readFile(dir.file("relayed-worker-" + std::to_string(i) + ".log"));
    EXPECT_NE(log.find("accepts no connections (--relay); peers reach localhost:"),
              std::string::npos)
        << log;
  }
}

TEST(Coordinator, ARelayedWorkerIsRefusedWhereItCannotBeServed) {
  TempDir dir;
  const EphemeralSecurity creds = makeEphemeralSecurity(dir.file("tls"));
  CoordinatorOptions co;
  co.job_path = writeJob(dir, "job.yaml", tinyJobYaml(3, "transport: {emulate_links: false}\n"));
  co.listen_address = "127.0.0.1:0";
  co.security = creds.security;
  // A relay needs the site it runs in, one of the topology's.
  co.relay_listen = "127.0.0.1:0";
  EXPECT_THROW(Coordinator{co}, geopipe::ConfigError);
  co.relay_site = "elsewhere";
  try {
    Coordinator c(co);
    ADD_FAILURE() << "a relay site outside the topology was accepted";
  } catch (const geopipe::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("its sites: local"), std::string::npos) << e.what();
  }
  co.relay_listen.clear();
  co.relay_site = "local";
  EXPECT_THROW(Coordinator{co}, geopipe::ConfigError);
  // A coordinator without a relay refuses a worker that needs one, saying
  // how to start it; a relayed worker must name its device.
  co.relay_site.clear();
  Coordinator coordinator(co);
  ChildProcess refused =
      spawnWorker(coordinator.listeningAddress(), "1", creds, dir.file("refused.log"), {"--relay"});
  ChildProcess unnamed = spawnWorker(coordinator.listeningAddress(), "any", creds,
                                     dir.file("unnamed.log"), {"--relay"});
  const auto a = refused.waitFor(std::chrono::seconds(20));
  const auto b = unnamed.waitFor(std::chrono::seconds(20));
  ASSERT_TRUE(a && b);
  EXPECT_NE(a->code, 0);
  EXPECT_NE(b->code, 0);
  EXPECT_NE(readFile(dir.file("refused.log"))
                .find("the coordinator runs no relay: start it with "
                      "--relay HOST:PORT --relay-site SITE"),
            std::string::npos)
      << readFile(dir.file("refused.log"));
  EXPECT_NE(readFile(dir.file("unnamed.log")).find("--relay needs a named device"),
            std::string::npos)
      << readFile(dir.file("unnamed.log"));
}

// Waits (up to 60 s) until `done` reaches `steps`; then `act` on one
// worker process chosen at random among this process's children.
std::thread actOnARandomWorkerAfter(std::atomic<int64_t>& done, int64_t steps,
                                    std::function<void(pid_t)> act) {
  return std::thread([&done, steps, act] {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (done.load() < steps && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    std::vector<pid_t> workers = childrenOf(::getpid());
    if (workers.empty()) return;
    std::random_device rd;
    const pid_t victim = workers[rd() % workers.size()];
    std::cout << "after step " << done.load() << ": worker pid " << victim << " of "
              << workers.size() << "\n";
    act(victim);
  });
}

// Runs the launch `o`, with kill -9 of a random worker once `after` steps
// are done; `events` gets the coordinator's events.
LaunchResult launchKillingARandomWorker(LaunchOptions o, EventLog& events, int64_t after) {
  std::atomic<int64_t> done{0};
  o.on_event = events.sink();
  o.on_step = [&](const StepMetrics& m) { done = m.step + 1; };
  std::thread killer = actOnARandomWorkerAfter(done, after, [](pid_t p) { ::kill(p, SIGKILL); });
  LaunchResult r = launchJob(o);
  killer.join();
  return r;
}

const char* const kRecoveryJob =
    "transport: {emulate_links: false}\n"
    "checkpoint: {dir: ckpt, every_steps: 5}\n";

TEST(Recovery, KilledRandomWorkerIsReplacedAndTheLossesEqualAnUninterruptedRun) {
  TempDir dir;
  const std::string job = writeJob(dir, "job.yaml", tinyJobYaml(40, kRecoveryJob));
  const std::vector<double> want = inProcessLosses(job);
  std::filesystem::remove_all(dir.file("ckpt"));

  EventLog events;
  LaunchResult r = launchKillingARandomWorker(launchOptions(job, dir), events, 12);
  ASSERT_TRUE(r.job.ok) << r.job.failure << "\n" << r.failed_log_tail;
  EXPECT_EQ(r.restarts, 1);
  EXPECT_EQ(r.job.recoveries, 1);
  EXPECT_TRUE(events.find("failure detected: tasklet rank")) << "the dead worker is named";
  EXPECT_TRUE(events.find("killed by signal 9"));
  EXPECT_TRUE(events.find("generation 2 placement (") && events.find("unchanged"));
  // Every configured step, and the trajectory of an uninterrupted run.
  expectSameLosses(want, r.job.train.losses);
}

TEST(Recovery, OneEventKillingEveryWorkerCostsOneRecoveryNotFour) {
  // A host lost takes all its workers at once: that is one recovery
  // (fault_tolerance.max_restarts counts the coordinator's recoveries), so
  // a job allowed one restarts all four workers and finishes.
  TempDir dir;
  const std::string job =
      writeJob(dir, "job.yaml",
               tinyJobYaml(40, std::string(kRecoveryJob) + "fault_tolerance: {max_restarts: 1}\n"));
  const std::vector<double> want = inProcessLosses(job);
  std::filesystem::remove_all(dir.file("ckpt"));

  EventLog events;
  LaunchOptions o = launchOptions(job, dir);
  std::atomic<int64_t> done{0};
  o.on_event = events.sink();
  o.on_step = [&](const StepMetrics& m) { done = m.step + 1; };
  std::thread killer([&done] {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (done.load() < 12 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    for (pid_t p : childrenOf(::getpid())) ::kill(p, SIGKILL);
  });
  LaunchResult r = launchJob(o);
  killer.join();
  ASSERT_TRUE(r.job.ok) << r.job.failure << "\n" << r.failed_log_tail;
  EXPECT_EQ(r.restarts, 4) << "every worker started again";
  EXPECT_EQ(r.job.recoveries, 1);
  expectSameLosses(want, r.job.train.losses);
}

TEST(Recovery, AnIdleSpareTakesAKilledWorkersPlaceWithTheLossesOfAnUninterruptedRun) {
  TempDir dir;
  const std::string job = writeJob(dir, "job.yaml", tinyJobYaml(40, kRecoveryJob));
  const std::vector<double> want = inProcessLosses(job);
  std::filesystem::remove_all(dir.file("ckpt"));

  LaunchOptions o = launchOptions(job, dir);
  o.spares = 1;
  o.respawn = false;  // the killed worker does not come back: only the spare can help
  std::atomic<int64_t> done{0};
  EventLog events;
  o.on_event = events.sink();
  o.on_step = [&](const StepMetrics& m) { done = m.step + 1; };
  // Kill a placed worker, never the spare: the launcher's coordinator is
  // not reachable from here, so tell them apart by their logs.
  std::thread killer([&] {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (done.load() < 12 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    std::vector<pid_t> placed;
    for (pid_t p : childrenOf(::getpid())) {
      const std::string mark = "pid " + std::to_string(p);
      auto spare = events.find("spare joined: ");
      if (!(spare && spare->second.find(mark + ",") != std::string::npos)) placed.push_back(p);
    }
    if (placed.empty()) return;
    std::random_device rd;
    const pid_t victim = placed[rd() % placed.size()];
    std::cout << "after step " << done.load() << ": killing worker pid " << victim << "\n";
    ::kill(victim, SIGKILL);
  });
  LaunchResult r = launchJob(o);
  killer.join();
  ASSERT_TRUE(r.job.ok) << r.job.failure << "\n" << r.failed_log_tail;
  EXPECT_EQ(r.workers, 5);
  EXPECT_EQ(r.restarts, 0) << "respawn is off";
  EXPECT_EQ(r.job.recoveries, 1);
  EXPECT_TRUE(events.find("spare joined: "));
  EXPECT_TRUE(events.find("failure detected: tasklet rank")) << "the dead worker is named";
  EXPECT_TRUE(events.find("takes a lost tasklet's place"));
  EXPECT_TRUE(events.find("generation 2 placement ("));
  // Every configured step, and the trajectory of an uninterrupted run: the
  // spare restored the lost tasklet's files from the last commit.
  expectSameLosses(want, r.job.train.losses);
}

TEST(Recovery, WithMinReplicasAKilledWorkerNobodyReplacesLeavesOneReplicaOnTrack) {
  TempDir dir;
  const std::string job =
      writeJob(dir, "job.yaml",
               tinyJobYaml(40, std::string(kRecoveryJob) +
                                   "fault_tolerance: {rejoin_timeout: 4, min_replicas: 1}\n"));
  const std::vector<double> want = inProcessLosses(job);
  std::filesystem::remove_all(dir.file("ckpt"));

  LaunchOptions o = launchOptions(job, dir);
  o.respawn = false;  // nobody comes back: the job goes on with the whole replica left
  EventLog events;
  LaunchResult r = launchKillingARandomWorker(o, events, 12);
  ASSERT_TRUE(r.job.ok) << r.job.failure << "\n" << r.failed_log_tail;
  EXPECT_EQ(r.workers, 4);
  EXPECT_EQ(r.restarts, 0) << "respawn is off";
  EXPECT_EQ(r.job.recoveries, 1);
  EXPECT_EQ(r.job.replicas, 1);
  EXPECT_TRUE(events.find("failure detected: tasklet rank")) << "the dead worker is named";
  EXPECT_TRUE(events.find("continuing with 1 of 2 replicas (fault_tolerance.min_replicas 1)"));
  EXPECT_TRUE(events.find("waits as an idle spare"))
      << "the survivor of the broken replica is kept for later";
  // Every configured step. The global batch is the same, now on one
  // replica: the trajectory of the uninterrupted 2-replica run up to the
  // order of float sums (the steps before the failure exactly).
  expectSameLosses(want, r.job.train.losses, 0, 1e-4);
  for (size_t i = 0; i < 10; ++i) EXPECT_NEAR(r.job.train.losses[i], want[i], 1e-6 * want[i]);
}

// The in-process Trainer's losses for the job run as written up to the
// checkpoint at `commit` (stopped there), then resumed from it with the job
// and options `reshape` makes: what a job that changed its shape after that
// checkpoint computes.
std::vector<double> inProcessResumedLosses(
    const std::string& job_path, int64_t commit, const std::string& ckpt_dir,
    const std::function<void(JobSpec&, TrainerOptions&)>& reshape) {
  JobSpec job = config::loadJobFile(job_path);
  job.checkpoint.dir = ckpt_dir;
  TrainerOptions opt;
  opt.threads_per_tasklet = 1;
  TrainerOptions first = opt;
  int64_t done = 0;
  first.on_step = [&](const StepMetrics&) { ++done; };
  first.should_stop = [&] { return done == commit; };
  std::vector<double> losses = Trainer(makeModel(job.model), job, first).train().losses;
  TrainerOptions resume = opt;
  resume.resume = true;
  reshape(job, resume);
  const std::vector<double> rest = Trainer(makeModel(job.model), job, resume).train().losses;
  losses.insert(losses.end(), rest.begin(), rest.end());
  return losses;
}

// ... resumed on one replica: what a job that shrank computes.
std::vector<double> inProcessShrunkLosses(const std::string& job_path, int64_t commit,
                                          const std::string& ckpt_dir) {
  return inProcessResumedLosses(job_path, commit, ckpt_dir, [](JobSpec& job, TrainerOptions&) {
    job.parallelism.data_parallel = 1;
  });
}

// The same with AC-SGD boundaries and top-k DP gradients with error
// feedback: the shrunk workers reshard the checkpoint (merged AC-SGD
// buffers, the dropped replica's residuals paid by the one left) exactly as
// the in-process Trainer does on --resume with one replica.
TEST(Recovery, WithMinReplicasCompressedShrinkEqualsTheInProcessReshardedRun) {
  TempDir dir;
  const std::string job = writeJob(
      dir, "job.yaml",
      tinyJobYaml(40, std::string(kRecoveryJob) +
                          "compression:\n"
                          "  activations: {method: acsgd, bits: 3}\n"
                          "  backward: {method: quantize, bits: 6}\n"
                          "  gradients: {method: topk, ratio: 0.1}\n"
                          "fault_tolerance: {rejoin_timeout: 4, min_replicas: 1}\n"));
  LaunchOptions o = launchOptions(job, dir);
  o.respawn = false;
  EventLog events;
  LaunchResult r = launchKillingARandomWorker(o, events, 12);
  ASSERT_TRUE(r.job.ok) << r.job.failure << "\n" << r.failed_log_tail;
  EXPECT_EQ(r.job.replicas, 1);
  const auto resumed = events.find("resumes from the checkpoint at step ");
  ASSERT_TRUE(resumed);
  const std::string& line = resumed->second;
  const int64_t commit = std::stoll(line.substr(line.find("at step ") + 8));
  std::cout << "shrank after the commit at step " << commit << "\n";
  const std::vector<double> want = inProcessShrunkLosses(job, commit, dir.file("reference"));
  expectSameLosses(want, r.job.train.losses);
}

// Multi-host style: a standalone coordinator and `geopipe worker`s. One is
// killed and nobody replaces it: the job shrinks to one replica. Two new
// workers join later as idle spares: at the next commit the job grows back
// to two replicas (no restart counted). Uncompressed, with the same global
// batch throughout, every step follows the uninterrupted run.
TEST(Recovery, AShrunkJobGrowsBackWhenNewWorkersJoin) {
  TempDir dir;
  CoordinatorOptions co;
  co.job_path = writeJob(dir, "job.yaml",
                         tinyJobYaml(120, std::string(kRecoveryJob) +
                                              "fault_tolerance: {rejoin_timeout: 3, "
                                              "min_replicas: 1}\n"));
  const std::vector<double> want = inProcessLosses(co.job_path);
  std::filesystem::remove_all(dir.file("ckpt"));
  co.listen_address = "127.0.0.1:0";
  const EphemeralSecurity creds = makeEphemeralSecurity(dir.file("tls"));
  co.security = creds.security;
  std::atomic<int64_t> done{0};
  co.on_step = [&](const StepMetrics& m) { done = m.step + 1; };
  EventLog events;
  co.on_event = events.sink();
  Coordinator coordinator(co);
  std::vector<ChildProcess> workers;
  auto startWorker = [&] {
    workers.push_back(spawnWorker(coordinator.listeningAddress(), "any", creds,
                                  dir.file("worker-" + std::to_string(workers.size()) + ".log")));
  };
  for (int i = 0; i < 4; ++i) startWorker();
  auto waitUntil = [](const std::function<bool()>& what) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (!what() && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return what();
  };
  ASSERT_TRUE(waitUntil([&] { return done.load() >= 12; }));
  const int64_t victim = coordinator.tasklets().at(3).pid;
  for (auto& w : workers)
    if (w.pid() == victim) w.signal(SIGKILL);
  ASSERT_TRUE(waitUntil([&] { return events.find("continuing with 1 of 2 replicas").has_value(); }));
  startWorker();
  startWorker();
  auto r = coordinator.waitFor(std::chrono::seconds(90));
  ASSERT_TRUE(r.has_value());
  ASSERT_TRUE(r->ok) << r->failure;
  EXPECT_EQ(r->recoveries, 1);
  EXPECT_EQ(r->grows, 1);
  EXPECT_EQ(r->replicas, 2);
  EXPECT_TRUE(events.find("growing back from 1 to 2 replicas with idle spares"));
  expectSameLosses(want, r->train.losses, 0, 1e-4);
  EXPECT_TRUE(coordinator.waitForWorkersGone(std::chrono::seconds(20)));
  stopAll(workers, std::chrono::seconds(10));
}

TEST(Recovery, HungWorkerIsNamedWithinTheHeartbeatTimeoutAndReplaced) {
  // With every kind of state a tasklet carries across steps: AC-SGD
  // buffers, quantized backward, top-k error-feedback residuals.
  TempDir dir;
  const std::string job = writeJob(
      dir, "job.yaml",
      tinyJobYaml(40, std::string(kRecoveryJob) + "fault_tolerance: {heartbeat_timeout: 3}\n"
                                                  "compression:\n"
                                                  "  activations: {method: acsgd, bits: 4}\n"
                                                  "  backward: {method: quantize, bits: 8}\n"
                                                  "  gradients: {method: topk, ratio: 0.1}\n"));
  const std::vector<double> want = inProcessLosses(job);
  std::filesystem::remove_all(dir.file("ckpt"));

  LaunchOptions o = launchOptions(job, dir);
  std::atomic<int64_t> done{0};
  EventLog events;
  o.on_event = events.sink();
  o.on_step = [&](const StepMetrics& m) { done = m.step + 1; };
  std::atomic<int64_t> stopped_at{0};
  std::thread hang = actOnARandomWorkerAfter(done, 12, [&](pid_t p) {
    stopped_at = std::chrono::steady_clock::now().time_since_epoch().count();
    ::kill(p, SIGSTOP);
  });
  LaunchResult r = launchJob(o);
  hang.join();
  ASSERT_TRUE(r.job.ok) << r.job.failure << "\n" << r.failed_log_tail;
  auto detected = events.find("failure detected: tasklet rank");
  ASSERT_TRUE(detected);
  EXPECT_NE(detected->second.find("no heartbeat for 3 s"), std::string::npos) << detected->second;
  const std::chrono::steady_clock::time_point t_stop{
      std::chrono::steady_clock::duration(stopped_at.load())};
  const double after = std::chrono::duration<double>(detected->first - t_stop).count();
  std::cout << "hung worker named " << after << " s after SIGSTOP\n";
  EXPECT_GE(after, 2.5);
  EXPECT_LT(after, 3.0 + 2.0) << "heartbeat_timeout 3 s (+ heartbeat period and polling)";
  EXPECT_EQ(r.restarts, 1) << "the hung process is killed and replaced";
  expectSameLosses(want, r.job.train.losses);
}

TEST(Recovery, KilledCoordinatorLeavesNoWorkerAndTheJobResumesFromItsManifest) {
  TempDir dir;
  const std::string job = writeJob(
      dir, "job.yaml",
      tinyJobYaml(40, std::string(kRecoveryJob) + "logging: {metrics_file: metrics.jsonl}\n"));
  const std::vector<double> want = inProcessLosses(job);
  std::filesystem::remove_all(dir.file("ckpt"));
  std::filesystem::remove(dir.file("metrics.jsonl"));

  ASSERT_EQ(::prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  SpawnOptions so;
  so.program = GEOPIPE_BINARY;
  so.argv = {GEOPIPE_BINARY, "launch", job, "--threads", "1", "--log-dir", dir.file("logs")};
  so.log_file = dir.file("launch.out");
  ChildProcess launcher = ChildProcess::spawn(so);
  auto stepsLogged = [&] {
    std::ifstream in(dir.file("metrics.jsonl"));
    int n = 0;
    std::string line;
    while (std::getline(in, line)) ++n;
    return n;
  };
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (stepsLogged() < 12 && std::chrono::steady_clock::now() < deadline && launcher.running()) {
    launcher.poll();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_GE(stepsLogged(), 12) << tailOfFile(dir.file("launch.out"), 20);
  launcher.signal(SIGKILL);  // the coordinator lives in the launcher
  ASSERT_TRUE(launcher.waitFor(std::chrono::seconds(10)));

  // Its workers die with it (no orphan is re-parented to this process).
  std::vector<pid_t> left = childrenOf(::getpid());
  for (int i = 0; i < 50 && !left.empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    left = childrenOf(::getpid());
  }
  for (pid_t p : left) {
    ::kill(p, SIGKILL);
    ::waitpid(p, nullptr, 0);
  }
  EXPECT_TRUE(left.empty()) << left.size() << " orphaned worker process(es)";

  LaunchOptions again = launchOptions(job, dir);
  again.resume = true;
  LaunchResult b = launchJob(again);
  ASSERT_TRUE(b.job.ok) << b.job.failure << "\n" << b.failed_log_tail;
  const int64_t from = b.job.train.first_step;
  EXPECT_GE(from, 10);
  EXPECT_EQ(from % 5, 0);
  expectSameLosses(want, b.job.train.losses, static_cast<size_t>(from));
}

TEST(Recovery, WorkersOfAVanishedCoordinatorStopWithinTheTimeout) {
  TempDir dir;
  CoordinatorOptions co;
  co.job_path = writeJob(dir, "job.yaml",
                         tinyJobYaml(100000,
                                     "transport: {emulate_links: false}\n"
                                     "security: {insecure: true}\n"
                                     "fault_tolerance: {heartbeat_timeout: 3}\n"));
  co.listen_address = "127.0.0.1:0";
  std::atomic<int64_t> done{0};
  co.on_step = [&](const StepMetrics& m) { done = m.step + 1; };
  auto coordinator = std::make_unique<Coordinator>(co);
  std::vector<ChildProcess> workers;
  for (int i = 0; i < 4; ++i) {
    SpawnOptions so;
    so.program = GEOPIPE_BINARY;
    so.argv = {GEOPIPE_BINARY, "worker",      "--coordinator", coordinator->listeningAddress(),
               "--listen",     "127.0.0.1:0", "--threads",     "1",
               "--insecure"};
    so.log_file = dir.file("worker-" + std::to_string(i) + ".log");
    workers.push_back(ChildProcess::spawn(so));
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (done.load() < 3 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_GE(done.load(), 3);
  coordinator.reset();  // gone, as if its host died
  const auto t0 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < workers.size(); ++i) {
    auto st = workers[i].waitFor(std::chrono::seconds(15));
    ASSERT_TRUE(st) << "worker " << i << " still runs without its coordinator";
    EXPECT_FALSE(st->ok());
    const std::string log = tailOfFile(dir.file("worker-" + std::to_string(i) + ".log"), 5);
    EXPECT_NE(log.find("lost the coordinator"), std::string::npos) << log;
  }
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "workers stopped " << took << " s after the coordinator vanished\n";
  EXPECT_LT(took, 3.0 + 3.0);
  stopAll(workers, std::chrono::seconds(1));
}

// Elastic re-planning (fault_tolerance.replan). A job of 4 stages x 2
// replicas on 8 devices in 4 sites (2 each) over a standalone coordinator;
// the devices' speed (tflops) is about this machine's per core, so the
// cost model weighs compute and links as the run does.
std::string replanJobYaml(int steps, const std::string& parallelism, int layers,
                          const std::string& topology, const std::string& extra,
                          const std::string& margin = "") {
  return "name: replan\n" + testing::tinyModelAndTraining(steps, layers) +
         "parallelism: " + parallelism +
         "\n"
         "checkpoint: {dir: ckpt, every_steps: 4}\n"
         "fault_tolerance: {rejoin_timeout: 3, replan: true" +
         (margin.empty() ? "" : ", replan_margin: " + margin) + "}\n" + topology + extra;
}

// ... resumed with `stages` x `replicas` and the split `layers`: what a
// re-planned job computes.
std::vector<double> inProcessReplannedLosses(const std::string& job_path, int64_t commit,
                                             const std::string& ckpt_dir, int stages, int replicas,
                                             const std::vector<std::pair<int, int>>& layers) {
  return inProcessResumedLosses(job_path, commit, ckpt_dir,
                                [&](JobSpec& job, TrainerOptions& resume) {
                                  job.parallelism.pipeline_stages = stages;
                                  job.parallelism.data_parallel = replicas;
                                  const ModelDef model = makeModel(job.model);
                                  resume.layers_per_stage = runtime::bodySplit(
                                      layers, model.prologue_layers, model.epilogue_layers);
                                });
}

// The step a re-plan resumed from (its event names the checkpoint).
int64_t replannedFrom(EventLog& events) {
  const auto line = events.find("re-planned: generation");
  if (!line) return -1;
  const std::string& l = line->second;
  return std::stoll(l.substr(l.find("at step ") + 8));
}

// Issue 22 (a): every worker of one site is killed and nobody replaces
// them. After rejoin_timeout the coordinator re-plans on the 6 survivors
// (the degraded 4 x 2 plan has lost both replicas or one; replan_margin 0,
// as the site killed may leave a degraded plan the new one beats by less
// than the default 10%: the margin is tested in replan_test), every tasklet
// reshards by layer, and the losses continue within 1e-4 of the in-process
// run resumed from the same commit with the new layout. The devices of the
// killed site are not used again; no worker outlives the job.
TEST(Replan, LosingASiteReplansOnTheSurvivorsAndFollowsTheInProcessRun) {
  TempDir dir;
  CoordinatorOptions co;
  const std::string topology =
      "topology:\n"
      "  name: four-sites\n"
      "  sites:\n"
      "    - {name: a, devices: 2, tflops: 0.002, intra: {latency_ms: 0, bandwidth_gbps: 10}}\n"
      "    - {name: b, devices: 2, tflops: 0.002, intra: {latency_ms: 0, bandwidth_gbps: 10}}\n"
      "    - {name: c, devices: 2, tflops: 0.002, intra: {latency_ms: 0, bandwidth_gbps: 10}}\n"
      "    - {name: d, devices: 2, tflops: 0.002, intra: {latency_ms: 0, bandwidth_gbps: 10}}\n"
      "  inter_site_default: {latency_ms: 1, bandwidth_gbps: 1}\n"
      "  links:\n"
      "    - {sites: [a, b], latency_ms: 5, bandwidth_gbps: 0.5}\n"
      "    - {sites: [c, d], latency_ms: 20, bandwidth_gbps: 0.1}\n";
  co.job_path = writeJob(dir, "job.yaml",
                         replanJobYaml(36, "{pipeline_stages: 4, data_parallel: 2}", 4, topology,
                                       "transport: {emulate_links: false}\n", "0"));
  co.listen_address = "127.0.0.1:0";
  const EphemeralSecurity creds = makeEphemeralSecurity(dir.file("tls"));
  co.security = creds.security;
  std::atomic<int64_t> done{0};
  std::mutex step_mu;
  std::vector<std::chrono::steady_clock::time_point> step_at;
  co.on_step = [&](const StepMetrics& m) {
    done = m.step + 1;
    std::lock_guard<std::mutex> lock(step_mu);
    step_at.push_back(std::chrono::steady_clock::now());
  };
  EventLog events;
  co.on_event = events.sink();
  Coordinator coordinator(co);
  std::vector<ChildProcess> workers;
  for (int i = 0; i < 8; ++i) {
    workers.push_back(spawnWorker(coordinator.listeningAddress(), "any", creds,
                                  dir.file("worker-" + std::to_string(i) + ".log")));
  }
  const auto waitUntil = [](const std::function<bool()>& what) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(90);
    while (!what() && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return what();
  };
  ASSERT_TRUE(waitUntil([&] { return done.load() >= 10; }));
  // The site of rank 0's device: kill every worker placed there.
  const auto tasklets = coordinator.tasklets();
  ASSERT_EQ(tasklets.size(), 8u);
  const int site = tasklets[0].device / 2;
  std::set<int> lost_devices;
  std::set<int64_t> victims;
  for (const auto& t : tasklets)
    if (t.device / 2 == site) {
      lost_devices.insert(t.device);
      victims.insert(t.pid);
    }
  ASSERT_EQ(victims.size(), 2u);
  const auto killed_at = std::chrono::steady_clock::now();
  for (auto& w : workers)
    if (victims.count(w.pid())) w.signal(SIGKILL);
  auto r = coordinator.waitFor(std::chrono::seconds(180));
  ASSERT_TRUE(r.has_value()) << "the job did not end";
  ASSERT_TRUE(r->ok) << r->failure;
  EXPECT_EQ(r->replans, 1);
  EXPECT_EQ(r->recoveries, 1);
  EXPECT_LE(r->stages * r->replicas, 6);
  for (int d : r->train.device_of_rank) EXPECT_EQ(lost_devices.count(d), 0u) << "device " << d;
  const int64_t commit = replannedFrom(events);
  ASSERT_GT(commit, 0);
  // The time from the kill to the first step of the new plan.
  const auto replanned = events.find("re-planned: generation");
  ASSERT_TRUE(replanned);
  {
    std::lock_guard<std::mutex> lock(step_mu);
    const auto first =
        std::find_if(step_at.begin(), step_at.end(), [&](auto t) { return t > replanned->first; });
    ASSERT_NE(first, step_at.end());
    const double took = std::chrono::duration<double>(*first - killed_at).count();
    std::cout << "re-planned to " << r->stages << " stages x " << r->replicas
              << " replicas; recovery " << took
              << " s from the kill to the first step of the new plan (rejoin_timeout 3 s)\n";
    EXPECT_LT(took, 30.0);
  }
  const std::vector<double> want = inProcessReplannedLosses(
      co.job_path, commit, dir.file("reference"), r->stages, r->replicas, r->train.layers_of_stage);
  expectSameLosses(want, r->train.losses, 0, 1e-4);
  // No orphans: every worker not killed ends on its own (placed ones when
  // the job completes, the survivors the new plan left out as spares told
  // that the job is over).
  EXPECT_TRUE(coordinator.waitForWorkersGone(std::chrono::seconds(20)));
  for (auto& w : workers) {
    if (victims.count(w.pid())) continue;
    EXPECT_TRUE(w.waitFor(std::chrono::seconds(20)).has_value())
        << "worker pid " << w.pid() << " outlived the job";
  }
  stopAll(workers, std::chrono::seconds(5));
}

// Issue 22 (b): a job of 2 stages x 2 replicas runs on sites a and b, a
// slow link apart (emulated). Two workers join on site c, close to a: at
// the next checkpoint commit the coordinator re-plans (no restart
// counted), moves the job off the slow link, and the measured step time
// falls.
TEST(Replan, JoiningWorkersAreUsedByAReplanAndTheStepsGetFaster) {
  TempDir dir;
  CoordinatorOptions co;
  const std::string topology =
      "topology:\n"
      "  name: three-sites\n"
      "  sites:\n"
      "    - {name: a, devices: 2, tflops: 0.002, intra: {latency_ms: 0, bandwidth_gbps: 10}}\n"
      "    - {name: b, devices: 2, tflops: 0.002, intra: {latency_ms: 0, bandwidth_gbps: 10}}\n"
      "    - {name: c, devices: 2, tflops: 0.000001, intra: {latency_ms: 0, bandwidth_gbps: 10}}\n"
      "  inter_site_default: {latency_ms: 1, bandwidth_gbps: 1}\n"
      "  links:\n"
      "    - {sites: [a, b], latency_ms: 40, bandwidth_gbps: 0.002}\n"
      "    - {sites: [b, c], latency_ms: 40, bandwidth_gbps: 0.002}\n";
  co.job_path = writeJob(dir, "job.yaml",
                         replanJobYaml(40, "{pipeline_stages: 2, data_parallel: 2}", 4, topology,
                                       "transport: {emulate_links: true}\n"));
  co.listen_address = "127.0.0.1:0";
  const EphemeralSecurity creds = makeEphemeralSecurity(dir.file("tls"));
  co.security = creds.security;
  std::atomic<int64_t> done{0};
  std::mutex step_mu;
  std::vector<double> seconds;  // by step
  co.on_step = [&](const StepMetrics& m) {
    done = m.step + 1;
    std::lock_guard<std::mutex> lock(step_mu);
    seconds.push_back(m.seconds);
  };
  EventLog events;
  co.on_event = events.sink();
  Coordinator coordinator(co);
  std::vector<ChildProcess> workers;
  auto startWorker = [&](const std::string& device, const std::vector<std::string>& extra) {
    workers.push_back(spawnWorker(coordinator.listeningAddress(), device, creds,
                                  dir.file("worker-" + std::to_string(workers.size()) + ".log"),
                                  extra));
  };
  for (const char* d : {"a/0", "a/1", "b/0", "b/1"}) startWorker(d, {});
  const auto waitUntil = [](const std::function<bool()>& what) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (!what() && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return what();
  };
  ASSERT_TRUE(waitUntil([&] { return done.load() >= 6; }));
  // The topology lists site c's devices as all but useless (1e-6 TFLOPS);
  // the workers that join there describe their hardware, and only that
  // makes them worth a re-plan.
  const std::vector<std::string> spec = {"--device-spec", "gpu=cpu-core,tflops=0.002,memory_gb=8"};
  startWorker("c/0", spec);
  startWorker("c/1", spec);
  auto r = coordinator.waitFor(std::chrono::seconds(240));
  ASSERT_TRUE(r.has_value()) << "the job did not end";
  ASSERT_TRUE(r->ok) << r->failure;
  EXPECT_EQ(r->replans, 1);
  EXPECT_EQ(r->recoveries, 0) << "growing is not a failure";
  bool uses_c = false, uses_b = false;
  for (int d : r->train.device_of_rank) {
    uses_c |= d >= 4;
    uses_b |= d == 2 || d == 3;
  }
  EXPECT_TRUE(uses_c) << "the new plan uses the workers that joined";
  EXPECT_FALSE(uses_b) << "and leaves the slow link";
  EXPECT_TRUE(events.find("device 'c/0' described by worker"));
  const int64_t commit = replannedFrom(events);
  ASSERT_GT(commit, 0);
  std::lock_guard<std::mutex> lock(step_mu);
  ASSERT_EQ(seconds.size(), 40u);
  auto mean = [&](size_t from, size_t to) {
    double sum = 0;
    for (size_t i = from; i < to; ++i) sum += seconds[i];
    return sum / static_cast<double>(to - from);
  };
  const double before = mean(1, static_cast<size_t>(commit));
  const double after = mean(static_cast<size_t>(commit) + 1, seconds.size());
  std::cout << "step time " << before << " s before the re-plan, " << after << " s after\n";
  EXPECT_LT(after, 0.7 * before) << "throughput rises";
  EXPECT_TRUE(coordinator.waitForWorkersGone(std::chrono::seconds(20)));
  for (auto& w : workers)
    EXPECT_TRUE(w.waitFor(std::chrono::seconds(20)).has_value())
        << "worker pid " << w.pid() << " outlived the job";
  stopAll(workers, std::chrono::seconds(5));
}

}  // namespace
}  // namespace geopipe::distributed
