// Failure handling without training: the pure rules (recoverable failures,
// heartbeat period, ranks of a new generation) and the coordinator's
// generations driven by fake workers over a real gRPC channel.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <set>
#include <thread>

#include "geopipe/error.h"
#include "proto/coordinator.grpc.pb.h"
#include "src/distributed/coordinator.h"
#include "src/distributed/recovery.h"
#include "src/runtime/checkpoint.h"
#include "tests/distributed/test_jobs.h"

namespace geopipe::distributed {
namespace {

namespace pb = geopipe::v1;
using namespace std::chrono_literals;
using testing::TempDir;
using testing::tinyJobYaml;
using testing::writeJob;

TEST(RecoveryRules, OnlyFailuresANewGenerationCanFixAreRecoverable) {
  for (const char* t : {"ProcessKilled", "TimeoutError", "IoError", "ProtocolError"})
    EXPECT_TRUE(isRecoverableFailure(t)) << t;
  for (const char* t : {"ConfigError", "InfeasibleError", "ProcessFailed", "Interrupted",
                        "InternalError", "Aborted", ""})
    EXPECT_FALSE(isRecoverableFailure(t)) << t;
}

TEST(RecoveryRules, HeartbeatsComeFiveTimesPerTimeoutBetween100msAnd1s) {
  EXPECT_EQ(heartbeatInterval(10s), 1000ms);
  EXPECT_EQ(heartbeatInterval(3s), 600ms);
  EXPECT_EQ(heartbeatInterval(200ms), 100ms);
}

TEST(RecoveryRules, NamedDevicesFixRanksSurvivorsKeepTheirsOthersFillTheGaps) {
  // rank -> device
  const std::vector<int> device_of_rank = {4, 5, 6, 7};
  // A worker for device 6, two survivors (ranks 3 and 0), a newcomer.
  const std::vector<RankClaim> claims = {{6, -1}, {-1, 3}, {-1, -1}, {-1, 0}};
  EXPECT_EQ(assignRanks(device_of_rank, claims), (std::vector<int>{3, 2, 0, 1}));
  // A survivor whose rank a named device took gets a free one.
  EXPECT_EQ(assignRanks({0, 1}, {{-1, 1}, {1, -1}}), (std::vector<int>{0, 1}));
  EXPECT_THROW(assignRanks({0, 1}, {{3, -1}, {-1, -1}}), Error);
  EXPECT_THROW(assignRanks({0, 1}, {{1, -1}, {1, -1}}), Error);
  EXPECT_THROW(assignRanks({0, 1}, {{-1, -1}}), Error);
}

TEST(RecoveryRules, AWorkerBeyondTheTaskletsOrJoiningAPlacedJobIsASpare) {
  // Before placement: the fifth worker of a 4-tasklet job waits as a spare.
  EXPECT_FALSE(joinsAsSpare(false, 3, 0, 4, false));
  EXPECT_TRUE(joinsAsSpare(false, 4, 0, 4, false));
  // A running job needs nobody.
  EXPECT_TRUE(joinsAsSpare(true, 0, 0, 4, false));
  // Regrouping: 2 survivors rejoined, 1 awaited, 1 tasklet lost: a
  // newcomer takes the lost place; with it filled, the next is a spare.
  EXPECT_FALSE(joinsAsSpare(false, 2, 1, 4, false));
  EXPECT_TRUE(joinsAsSpare(false, 3, 1, 4, false));
  // An awaited survivor always gets its place back.
  EXPECT_FALSE(joinsAsSpare(false, 4, 1, 4, true));
}

TEST(RecoveryRules, AJobShrinksToTheWholeReplicasItsWorkersFill) {
  // 2 stages x 2 replicas, 3 workers left: 1 replica, if min_replicas allows.
  EXPECT_EQ(shrunkReplicas(3, 2, 2, 1, 8, 2), 1);
  EXPECT_EQ(shrunkReplicas(3, 2, 2, 2, 8, 2), 0);
  // Not even one whole replica.
  EXPECT_EQ(shrunkReplicas(1, 2, 2, 1, 8, 2), 0);
  // 2 x 4 with 7 workers: 3 replicas when the batch splits in 3 ...
  EXPECT_EQ(shrunkReplicas(7, 2, 4, 1, 12, 1), 3);
  // ... else the next count that splits it.
  EXPECT_EQ(shrunkReplicas(7, 2, 4, 1, 8, 1), 2);
  EXPECT_EQ(shrunkReplicas(7, 2, 4, 3, 8, 1), 0);
  // Always fewer than before, even when every worker is there.
  EXPECT_EQ(shrunkReplicas(8, 2, 4, 1, 8, 1), 2);
  EXPECT_EQ(shrunkReplicas(4, 4, 1, 1, 8, 1), 0);
}

TEST(RecoveryRules, AShrunkJobGrowsBackByTheWholeReplicasItsSparesFill) {
  // 2 x 1 of a job that started 2 x 2: two spares make the second replica.
  EXPECT_EQ(grownReplicas(2, 2, 1, 2, 8, 2), 2);
  EXPECT_EQ(grownReplicas(1, 2, 1, 2, 8, 2), 0);
  // Never beyond the replicas it started with.
  EXPECT_EQ(grownReplicas(6, 2, 1, 2, 8, 2), 2);
  // 1 -> 3 does not split a batch of 8; 1 -> 2 does.
  EXPECT_EQ(grownReplicas(4, 2, 1, 4, 8, 1), 2);
  EXPECT_EQ(grownReplicas(4, 2, 2, 3, 8, 1), 0);
  EXPECT_EQ(grownReplicas(0, 2, 2, 2, 8, 1), 0);
}

TEST(RecoveryRules, SparesFillOnlyThePlacesNoSurvivorWillTake) {
  // 4 tasklets, 1 lost: 3 survivors awaited, 2 spares idle: one promoted.
  EXPECT_EQ(sparesToPromote(0, 3, 4, 2), 1);
  // Two lost (or a promoted spare died), only one spare.
  EXPECT_EQ(sparesToPromote(1, 1, 4, 1), 1);
  EXPECT_EQ(sparesToPromote(1, 1, 4, 5), 2);
  // Every place is filled or awaited: none.
  EXPECT_EQ(sparesToPromote(4, 0, 4, 3), 0);
  EXPECT_EQ(sparesToPromote(2, 2, 4, 3), 0);
  // No spares: none, never negative.
  EXPECT_EQ(sparesToPromote(0, 0, 4, 0), 0);
  EXPECT_EQ(sparesToPromote(5, 0, 4, 1), 0);
}

TEST(RecoveryRules, AFinalFailureRegroupsOnlyARecoverablePlacedJobWithRestartsLeft) {
  Failure f;
  f.message = "tasklet rank 1 failed: IoError: link broken";
  f.type = "IoError";
  f.rank = 1;
  f.generation = 2;
  f.cause = "IoError: link broken";
  JobState job;
  job.generation = 2;
  job.placed = true;
  job.restarts = 1;
  job.max_restarts = 3;
  job.last_cause = "TimeoutError: silent";
  EXPECT_EQ(decideFailure(f, job).action, FailureAction::REGROUP);
  // Not recoverable, or before the first placement: the job ends as is.
  Failure config = f;
  config.type = "ConfigError";
  EXPECT_EQ(decideFailure(config, job).action, FailureAction::END_JOB);
  EXPECT_EQ(decideFailure(config, job).message, f.message);
  JobState joining = job;
  joining.placed = false;
  EXPECT_EQ(decideFailure(f, joining).action, FailureAction::END_JOB);
  // While the others regroup it is only noted (rejoin_timeout bounds it).
  JobState regrouping = joining;
  regrouping.regrouping = true;
  EXPECT_EQ(decideFailure(f, regrouping).action, FailureAction::NOTE);
  EXPECT_EQ(decideFailure(f, regrouping).message, "while regrouping: " + f.message);
  // A failure of an ended generation, or after the job completed.
  Failure old = f;
  old.generation = 1;
  EXPECT_EQ(decideFailure(old, job).action, FailureAction::NOTE);
  EXPECT_EQ(decideFailure(old, job).message, "after generation 1 ended: " + f.message);
  JobState complete = job;
  complete.complete = true;
  EXPECT_EQ(decideFailure(f, complete).action, FailureAction::NOTE_FINISHED);
  // No restart left.
  JobState spent = job;
  spent.restarts = 3;
  EXPECT_EQ(decideFailure(f, spent).action, FailureAction::END_JOB);
  EXPECT_EQ(decideFailure(f, spent).message,
            f.message + "; no restart left (3 done, fault_tolerance.max_restarts)");
  spent.max_restarts = spent.restarts = 0;
  EXPECT_EQ(decideFailure(f, spent).message, f.message);
  // The worker error that ended the last generation, before a step: again.
  JobState again = job;
  again.last_cause = f.cause;
  EXPECT_EQ(decideFailure(f, again).action, FailureAction::REGROUP);  // a step was done
  again.no_step_yet = true;
  EXPECT_EQ(decideFailure(f, again).action, FailureAction::END_JOB);
  EXPECT_NE(decideFailure(f, again).message.find("generation 1 ended with the same error"),
            std::string::npos);
}

TEST(RecoveryRules, AGivenUpRecoverySaysHowManyCameBackAndWhatToChange) {
  Failure f;
  f.message = "tasklet rank 0 failed: killed";
  EXPECT_EQ(recoveryGaveUp(f, 3, 4, 60s, 2, 2),
            "tasklet rank 0 failed: killed; recovery gave up: 3 of 4 workers rejoined within 60 s "
            "(fault_tolerance.rejoin_timeout). Start a worker for the lost tasklet sooner, set "
            "fault_tolerance.min_replicas, or restart the job with --resume");
  EXPECT_EQ(recoveryGaveUp(f, 1, 4, 5s, 1, 2),
            "tasklet rank 0 failed: killed; recovery gave up: 1 of 4 workers rejoined within 5 s "
            "(fault_tolerance.rejoin_timeout), too few for 1 replica(s) "
            "(fault_tolerance.min_replicas). Start a worker for the lost tasklet sooner, lower "
            "fault_tolerance.min_replicas, or restart the job with --resume");
}

// A coordinator of a 2 x 2 job (checkpoints every 5 steps) and fake
// workers that speak its protocol.
struct FakeJob {
  TempDir dir;
  std::unique_ptr<Coordinator> coordinator;
  std::unique_ptr<pb::Coordinator::Stub> stub;
  std::mutex mu;
  std::vector<std::string> events;

  int spare_registrations = -1;  // CoordinatorOptions::spare_registrations

  explicit FakeJob(const std::string& fault_tolerance,
                   std::chrono::milliseconds heartbeat_timeout = 30s, int spare_registrations = -1)
      : spare_registrations(spare_registrations) {
    start(fault_tolerance, heartbeat_timeout, false);
  }

  // A new coordinator for the same job (the old one shut down first).
  void start(const std::string& fault_tolerance, std::chrono::milliseconds heartbeat_timeout,
             bool resume) {
    stub.reset();
    coordinator.reset();
    CoordinatorOptions opt;
    opt.resume = resume;
    opt.job_path = writeJob(dir, "job.yaml",
                            tinyJobYaml(20,
                                        "transport: {emulate_links: false}\n"
                                        "security: {insecure: true}\n"
                                        "checkpoint: {dir: ckpt, every_steps: 5}\n"
                                        "fault_tolerance: " +
                                            fault_tolerance + "\n"));
    opt.listen_address = "127.0.0.1:0";
    opt.heartbeat_timeout = heartbeat_timeout;  // the fake workers send none unless told
    opt.spare_registrations = spare_registrations;
    opt.on_event = [this](const std::string& line) {
      std::lock_guard<std::mutex> lock(mu);
      events.push_back(line);
      if (std::getenv("GEOPIPE_TEST_EVENTS")) std::cout << "[event] " << line << "\n";
    };
    coordinator = std::make_unique<Coordinator>(opt);
    stub = pb::Coordinator::NewStub(
        grpc::CreateChannel(coordinator->listeningAddress(), grpc::InsecureChannelCredentials()));
  }

  bool sawEvent(const std::string& part) {
    std::lock_guard<std::mutex> lock(mu);
    return std::any_of(events.begin(), events.end(),
                       [&](const std::string& e) { return e.find(part) != std::string::npos; });
  }

  // Registers one worker per pid at once (Register blocks until the job is
  // full); previous[i] >= 0 rejoins with that rank.
  std::vector<grpc::Status> registerAll(const std::vector<int64_t>& pids,
                                        const std::vector<int>& previous,
                                        std::vector<pb::Assignment>* out) {
    out->assign(pids.size(), {});
    std::vector<grpc::Status> st(pids.size());
    std::vector<std::thread> threads;
    for (size_t i = 0; i < pids.size(); ++i) {
      threads.emplace_back([&, i] {
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + 10s);
        pb::RegisterRequest req;
        req.set_protocol_version(pb::COORDINATOR_PROTOCOL_CURRENT);
        req.set_device("any");
        req.set_hostname("fake");
        req.set_pid(pids[i]);
        if (previous[i] >= 0) req.set_previous_rank(previous[i]);
        st[i] = stub->Register(&ctx, req, &(*out)[i]);
      });
    }
    for (auto& t : threads) t.join();
    return st;
  }

  // One Register call as worker `pid` (an idle spare calling again gives
  // its ticket).
  grpc::Status registerOne(int64_t pid, uint64_t ticket, pb::Assignment* out) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 10s);
    pb::RegisterRequest req;
    req.set_protocol_version(pb::COORDINATOR_PROTOCOL_CURRENT);
    req.set_device("any");
    req.set_hostname("fake");
    req.set_pid(pid);
    req.set_spare_ticket(ticket);
    return stub->Register(&ctx, req, out);
  }

  void exchangeAddresses(const std::vector<pb::Assignment>& as) {
    std::vector<std::thread> threads;
    for (const auto& a : as) {
      threads.emplace_back([&, a] {
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + 10s);
        pb::AddressRequest req;
        req.set_rank(a.rank());
        req.set_generation(a.generation());
        req.set_address("127.0.0.1:1");
        pb::AddressTable table;
        ASSERT_TRUE(stub->ReportAddress(&ctx, req, &table).ok());
        EXPECT_FALSE(table.regroup());
      });
    }
    for (auto& t : threads) t.join();
  }

  pb::Directive reportStep(int rank, int64_t generation, int64_t step) {
    grpc::ClientContext ctx;
    pb::StepReport req;
    req.set_rank(rank);
    req.set_generation(generation);
    req.set_step(step);
    req.set_has_loss(rank % 2 == 1);
    req.set_loss(1.0);
    pb::Directive d;
    EXPECT_TRUE(stub->ReportStep(&ctx, req, &d).ok());
    return d;
  }

  pb::Directive heartbeat(int rank, int64_t generation, bool steps_done = false) {
    grpc::ClientContext ctx;
    pb::Heartbeat req;
    req.set_rank(rank);
    req.set_generation(generation);
    req.set_steps_done(steps_done);
    pb::Directive d;
    EXPECT_TRUE(stub->SendHeartbeat(&ctx, req, &d).ok());
    return d;
  }

  // Every rank writes a file into step-<next_step> and reports it (rank
  // `twice` reports twice, as a retried call would).
  void checkpoint(int64_t generation, int64_t next_step, int ranks = 4, int twice = -1) {
    char name_buf[32];
    std::snprintf(name_buf, sizeof name_buf, "step-%08lld", static_cast<long long>(next_step));
    const auto step_dir = dir.path / "ckpt" / name_buf;
    std::filesystem::create_directories(step_dir);
    for (int r = 0; r < ranks; ++r) {
      const std::string name = "tasklet-" + std::to_string(r) + ".pt";
      std::ofstream(step_dir / name) << "weights of rank " << r;
      for (int k = 0; k < (r == twice ? 2 : 1); ++k) {
        grpc::ClientContext ctx;
        pb::CheckpointReport req;
        req.set_rank(r);
        req.set_generation(generation);
        req.set_next_step(next_step);
        req.add_files(name);
        pb::Directive d;
        ASSERT_TRUE(stub->ReportCheckpoint(&ctx, req, &d).ok());
      }
    }
  }

  // Generation 1: four workers (pids 1000..1003) run steps 0..6 and
  // commit the checkpoint at step 5. Returns their assignments by rank;
  // pid_of_rank says which fake process got which rank.
  std::vector<int64_t> pid_of_rank;
  std::vector<pb::Assignment> runFirstGeneration() {
    std::vector<pb::Assignment> as;
    for (const auto& st : registerAll({1000, 1001, 1002, 1003}, {-1, -1, -1, -1}, &as))
      EXPECT_TRUE(st.ok()) << st.error_message();
    for (const auto& a : as) EXPECT_EQ(a.generation(), 1);
    exchangeAddresses(as);
    for (int64_t step = 0; step < 7; ++step)
      for (int r = 0; r < 4; ++r) reportStep(r, 1, step);
    checkpoint(1, 5, 4, /*twice=*/0);  // a repeated report counts once
    auto manifest = runtime::findLatestCheckpoint((dir.path / "ckpt").string());
    std::set<std::string> files;
    if (manifest)
      for (const auto& f : manifest->files) files.insert(f.name);
    EXPECT_EQ(files.size(), 4u) << "every tasklet's file (rank 0's report counted once)";
    std::sort(as.begin(), as.end(), [](auto& a, auto& b) { return a.rank() < b.rank(); });
    for (const auto& t : coordinator->tasklets()) pid_of_rank.push_back(t.pid);
    return as;
  }

  bool waitForGeneration(int64_t g) {
    for (int i = 0; i < 100 && coordinator->generation() < g; ++i)
      std::this_thread::sleep_for(20ms);
    return coordinator->generation() >= g;
  }

  // An idle spare calling again with its ticket until it is placed (at most
  // 20 calls); `out` gets the assignment.
  void pollAsSpare(int64_t pid, uint64_t ticket, pb::Assignment* out) {
    for (int i = 0; i < 20; ++i) {
      pb::Assignment a;
      if (!registerOne(pid, ticket, &a).ok()) return;
      if (!a.spare()) {
        *out = a;
        return;
      }
    }
  }

  // After runFirstGeneration (with min_replicas 1, rejoin_timeout 1): rank
  // 2 is killed and nobody replaces it, so generation 2 runs ranks 0 and 1
  // as one replica and rank 3's worker waits as a spare (its ticket is
  // returned); then a new worker, pid 70, joins as a spare too.
  struct Shrunk {
    uint64_t ticket3 = 0, ticket70 = 0;
  };
  Shrunk shrinkToOneReplicaWithTwoSpares() {
    Shrunk out;
    const auto pid = pid_of_rank;
    coordinator->reportFailure(pid[2], -1, "killed by signal 9 (SIGKILL)", "ProcessKilled");
    EXPECT_TRUE(waitForGeneration(2));
    std::vector<pb::Assignment> as;
    for (const auto& s : registerAll({pid[0], pid[1], pid[3]}, {0, 1, 3}, &as))
      EXPECT_TRUE(s.ok()) << s.error_message();
    EXPECT_TRUE(as[2].spare());
    out.ticket3 = as[2].spare_ticket();
    as.pop_back();
    exchangeAddresses(as);
    pb::Assignment s70;
    EXPECT_TRUE(registerOne(70, 0, &s70).ok());
    EXPECT_TRUE(s70.spare());
    out.ticket70 = s70.spare_ticket();
    return out;
  }
};

TEST(Recovery, AKilledWorkerStartsANewGenerationFromTheLastCommit) {
  FakeJob job("{max_restarts: 2, rejoin_timeout: 10}");
  const auto first = job.runFirstGeneration();
  ASSERT_TRUE(job.sawEvent("checkpoint committed"));
  const auto& pid = job.pid_of_rank;
  ASSERT_EQ(pid.size(), 4u);

  job.coordinator->reportFailure(pid[2], -1, "killed by signal 9 (SIGKILL)", "ProcessKilled");
  ASSERT_TRUE(job.waitForGeneration(2));
  EXPECT_TRUE(job.sawEvent("failure detected: tasklet rank 2 (stage 0, replica 1"));
  EXPECT_TRUE(job.sawEvent("resumes from the checkpoint at step 5, recomputing 2 step(s)"));
  EXPECT_EQ(job.coordinator->lostWorkers(), std::vector<int64_t>{pid[2]});
  EXPECT_TRUE(job.coordinator->tasklets().empty());

  // Survivors hear it on their next call; calls of generation 1 are refused.
  pb::Directive d = job.heartbeat(0, 1);
  EXPECT_TRUE(d.regroup());
  EXPECT_FALSE(d.abort());
  EXPECT_EQ(d.generation(), 2);
  EXPECT_NE(d.abort_reason().find("generation 1 ended: tasklet rank 2"), std::string::npos)
      << d.abort_reason();
  EXPECT_TRUE(job.reportStep(1, 1, 7).regroup());
  // The dead worker's process exit, reported again, is no new failure.
  job.coordinator->reportFailure(pid[2], -1, "killed by signal 9 (SIGKILL)", "ProcessKilled");

  // Three survivors keep their ranks; a replacement takes rank 2.
  std::vector<pb::Assignment> as;
  for (const auto& st : job.registerAll({pid[3], 2000, pid[0], pid[1]}, {3, -1, 0, 1}, &as))
    ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(as[0].rank(), 3);
  EXPECT_EQ(as[1].rank(), 2);
  EXPECT_EQ(as[2].rank(), 0);
  EXPECT_EQ(as[3].rank(), 1);
  for (const auto& a : as) {
    EXPECT_EQ(a.generation(), 2);
    EXPECT_EQ(a.first_step(), 5);
    EXPECT_EQ(std::filesystem::path(a.resume_dir()).filename(), "step-00000005");
    EXPECT_TRUE(a.recoverable());
    EXPECT_EQ(a.heartbeat_timeout_ms(), 30000);
    EXPECT_EQ(a.heartbeat_interval_ms(), 1000);
    // The same devices came back: the same plan and layers.
    EXPECT_EQ(std::vector<int>(a.device_of_rank().begin(), a.device_of_rank().end()),
              std::vector<int>(first[0].device_of_rank().begin(), first[0].device_of_rank().end()));
  }
  EXPECT_TRUE(job.sawEvent("generation 2 placement"));
  EXPECT_TRUE(job.sawEvent("unchanged"));
  job.exchangeAddresses(as);
  EXPECT_FALSE(job.heartbeat(0, 2).regroup());
  EXPECT_TRUE(job.heartbeat(0, 1).regroup()) << "a stale generation stays stale";
  EXPECT_FALSE(job.coordinator->waitFor(10ms).has_value());
}

TEST(Recovery, AnIdleSpareTakesTheLostRankAndADeadSpareIsNotUsed) {
  FakeJob job("{max_restarts: 2, rejoin_timeout: 10}");
  job.runFirstGeneration();
  const auto& pid = job.pid_of_rank;
  // Two workers join the running job: both are held as idle spares, and
  // their Register returns within a heartbeat interval (1 s here) so that
  // they prove they live by calling again.
  pb::Assignment a50, a60;
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(job.registerOne(50, 0, &a50).ok());
  ASSERT_TRUE(job.registerOne(60, 0, &a60).ok());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 4s);
  EXPECT_TRUE(a50.spare());
  EXPECT_FALSE(a50.job_over());
  EXPECT_NE(a50.spare_ticket(), 0u);
  EXPECT_NE(a50.spare_ticket(), a60.spare_ticket());
  EXPECT_TRUE(job.sawEvent("spare joined: fake pid 50"));
  // Calling again with its ticket is the same spare, not a new one.
  ASSERT_TRUE(job.registerOne(50, a50.spare_ticket(), &a50).ok());
  EXPECT_TRUE(a50.spare());
  // A spare that dies is dropped, and is no failure of the job.
  job.coordinator->reportFailure(60, -1, "killed by signal 9 (SIGKILL)", "ProcessKilled");
  EXPECT_TRUE(job.sawEvent("spare fake pid 60 is gone"));
  EXPECT_EQ(job.coordinator->generation(), 1);

  // A tasklet dies: the live spare is promoted at once for its place.
  job.coordinator->reportFailure(pid[1], -1, "killed by signal 9 (SIGKILL)", "ProcessKilled");
  ASSERT_TRUE(job.waitForGeneration(2));
  for (int i = 0; i < 100 && !job.sawEvent("takes a lost tasklet's place"); ++i)
    std::this_thread::sleep_for(10ms);
  EXPECT_TRUE(job.sawEvent("spare fake pid 50 takes a lost tasklet's place"));
  EXPECT_FALSE(job.sawEvent("spare fake pid 60 takes"));
  // The spare calls again while the survivors rejoin: it gets rank 1.
  pb::Assignment promoted;
  grpc::Status spare_status;
  std::thread spare([&] { spare_status = job.registerOne(50, a50.spare_ticket(), &promoted); });
  std::vector<pb::Assignment> as;
  const auto rejoined = job.registerAll({pid[0], pid[2], pid[3]}, {0, 2, 3}, &as);
  spare.join();
  ASSERT_TRUE(spare_status.ok()) << spare_status.error_message();
  for (const auto& st : rejoined) ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_FALSE(promoted.spare());
  EXPECT_EQ(promoted.rank(), 1);
  EXPECT_EQ(promoted.generation(), 2);
  EXPECT_EQ(promoted.first_step(), 5);
  EXPECT_EQ(std::filesystem::path(promoted.resume_dir()).filename(), "step-00000005");
  EXPECT_EQ(as[0].rank(), 0);
  EXPECT_EQ(as[1].rank(), 2);
  EXPECT_EQ(as[2].rank(), 3);
  EXPECT_TRUE(job.sawEvent("generation 2 placement"));
  // The lost worker coming back now is a spare, not a second rank 1.
  pb::Assignment late;
  ASSERT_TRUE(job.registerOne(pid[1], 0, &late).ok());
  EXPECT_TRUE(late.spare());
}

TEST(Recovery, AnIdleSpareSilentForTheHeartbeatTimeoutIsDropped) {
  FakeJob job("{max_restarts: 2, rejoin_timeout: 10}", 1500ms);
  job.runFirstGeneration();
  pb::Assignment a;
  ASSERT_TRUE(job.registerOne(70, 0, &a).ok());
  ASSERT_TRUE(a.spare());
  EXPECT_NE(a.spare_ticket(), 0u);
  // The placed workers keep beating; the spare does not call again (a
  // hung or cut-off process).
  const auto deadline = std::chrono::steady_clock::now() + 4s;
  while (!job.sawEvent("no longer a spare") && std::chrono::steady_clock::now() < deadline) {
    for (int r = 0; r < 4; ++r) job.heartbeat(r, 1);
    std::this_thread::sleep_for(200ms);
  }
  EXPECT_TRUE(job.sawEvent("spare fake pid 70 is silent for 1 s and no longer a spare"));
  EXPECT_EQ(job.coordinator->generation(), 1) << "a lost spare is no failure";
  // Its ticket is void: calling again is a new registration, a new spare.
  pb::Assignment again;
  ASSERT_TRUE(job.registerOne(70, a.spare_ticket(), &again).ok());
  EXPECT_TRUE(again.spare());
  EXPECT_NE(again.spare_ticket(), a.spare_ticket());
}

TEST(Recovery, AnIdleSpareIsToldWhenTheJobEndedWithoutIt) {
  FakeJob job("{max_restarts: 2}");
  job.runFirstGeneration();
  pb::Assignment a;
  ASSERT_TRUE(job.registerOne(80, 0, &a).ok());
  ASSERT_TRUE(a.spare());
  for (int r = 0; r < 4; ++r) {
    job.heartbeat(r, 1, true);
    grpc::ClientContext ctx;
    pb::FinishRequest req;
    req.set_rank(r);
    req.set_ok(true);
    req.set_generation(1);
    pb::FinishReply reply;
    ASSERT_TRUE(job.stub->Finish(&ctx, req, &reply).ok());
  }
  auto r = job.coordinator->waitFor(5s);
  ASSERT_TRUE(r.has_value());
  EXPECT_TRUE(r->ok) << r->failure;
  ASSERT_TRUE(job.registerOne(80, a.spare_ticket(), &a).ok());
  EXPECT_TRUE(a.job_over());
  EXPECT_EQ(a.rank(), 0);
}

TEST(Recovery, AWorkerLostAfterTheJobCompletedIsNoFailure) {
  FakeJob job("{max_restarts: 2}");
  job.runFirstGeneration();
  for (int r = 0; r < 4; ++r) EXPECT_FALSE(job.heartbeat(r, 1, true).regroup());
  EXPECT_TRUE(job.heartbeat(0, 1, true).complete());
  for (int r = 0; r < 3; ++r) {
    grpc::ClientContext ctx;
    pb::FinishRequest req;
    req.set_rank(r);
    req.set_ok(true);
    req.set_generation(1);
    pb::FinishReply reply;
    ASSERT_TRUE(job.stub->Finish(&ctx, req, &reply).ok());
  }
  job.coordinator->reportFailure(job.pid_of_rank[3], -1, "killed by signal 9 (SIGKILL)",
                                 "ProcessKilled");
  auto r = job.coordinator->waitFor(5s);
  ASSERT_TRUE(r.has_value());
  EXPECT_TRUE(r->ok) << r->failure;
  EXPECT_EQ(job.coordinator->generation(), 1);
  EXPECT_TRUE(job.sawEvent("after the job completed: tasklet rank 3"));
}

TEST(Recovery, WithoutRestartsTheFailureEndsTheJobNamingTheTasklet) {
  FakeJob job("{max_restarts: 0}");
  job.runFirstGeneration();
  job.coordinator->reportFailure(job.pid_of_rank[1], -1, "killed by signal 9 (SIGKILL)",
                                 "ProcessKilled");
  auto r = job.coordinator->waitFor(5s);
  ASSERT_TRUE(r.has_value());
  EXPECT_FALSE(r->ok);
  EXPECT_EQ(r->failed_rank, 1);
  EXPECT_NE(r->failure.find("tasklet rank 1 (stage 1, replica 0"), std::string::npos) << r->failure;
  EXPECT_TRUE(job.heartbeat(0, 1).abort());
}

TEST(Recovery, AnUnrecoverableFailureEndsTheJobEvenWithRestartsLeft) {
  FakeJob job("{max_restarts: 3}");
  job.runFirstGeneration();
  job.coordinator->reportFailure(job.pid_of_rank[1], -1, "exited with code 3", "ProcessFailed");
  auto r = job.coordinator->waitFor(5s);
  ASSERT_TRUE(r.has_value());
  EXPECT_FALSE(r->ok);
  EXPECT_EQ(r->recoveries, 0);
  EXPECT_EQ(job.coordinator->generation(), 1);
}

TEST(Recovery, RestartsRunOutAfterMaxRestarts) {
  FakeJob job("{max_restarts: 1, rejoin_timeout: 10}");
  job.runFirstGeneration();
  const auto pid = job.pid_of_rank;
  job.coordinator->reportFailure(pid[0], -1, "killed by signal 9 (SIGKILL)", "ProcessKilled");
  ASSERT_TRUE(job.waitForGeneration(2));
  std::vector<pb::Assignment> as;
  for (const auto& st : job.registerAll({2000, pid[1], pid[2], pid[3]}, {-1, 1, 2, 3}, &as))
    ASSERT_TRUE(st.ok()) << st.error_message();
  job.exchangeAddresses(as);
  job.coordinator->reportFailure(pid[3], -1, "killed by signal 9 (SIGKILL)", "ProcessKilled");
  auto r = job.coordinator->waitFor(5s);
  ASSERT_TRUE(r.has_value());
  EXPECT_FALSE(r->ok);
  EXPECT_EQ(r->failed_rank, 3);
  EXPECT_NE(r->failure.find("no restart left (1 done, fault_tolerance.max_restarts)"),
            std::string::npos)
      << r->failure;
}

TEST(Recovery, WithMinReplicasTheJobGoesOnWithTheWholeReplicasItHas) {
  FakeJob job("{max_restarts: 2, rejoin_timeout: 1, min_replicas: 1}");
  job.runFirstGeneration();  // step 5 committed by 2 replicas
  const auto pid = job.pid_of_rank;
  job.coordinator->reportFailure(pid[2], -1, "killed by signal 9 (SIGKILL)", "ProcessKilled");
  ASSERT_TRUE(job.waitForGeneration(2));
  EXPECT_TRUE(job.sawEvent("then going on with fewer replicas, down to 1"));
  // Nobody replaces rank 2: after rejoin_timeout the survivors of replica
  // 0 run the job as one replica; rank 3's worker waits as a spare.
  std::vector<pb::Assignment> as;
  const auto st = job.registerAll({pid[0], pid[1], pid[3]}, {0, 1, 3}, &as);
  for (const auto& s : st) ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(job.sawEvent("continuing with 1 of 2 replicas (fault_tolerance.min_replicas 1), "
                           "8 samples each, resharded from the checkpoint at step 5"));
  EXPECT_TRUE(as[2].spare());
  as.pop_back();
  for (int r = 0; r < 2; ++r) {
    const pb::Assignment& a = as[static_cast<size_t>(r)];
    EXPECT_EQ(a.rank(), r);
    EXPECT_EQ(a.generation(), 2);
    EXPECT_EQ(a.stages(), 2);
    EXPECT_EQ(a.replicas(), 1);
    EXPECT_EQ(a.resume_replicas(), 2);
    EXPECT_EQ(a.first_step(), 5);
    EXPECT_EQ(a.device_of_rank_size(), 2);
  }
  EXPECT_EQ(job.coordinator->tasklets().size(), 2u);
  // A worker of generation 1 whose rank the shrunk job no longer has
  // hears "regroup" (it then waits as a spare), not "unknown rank".
  EXPECT_TRUE(job.heartbeat(3, 1).regroup());
  job.exchangeAddresses(as);
  // Two tasklets make a step and a checkpoint now; the manifest says 1 replica.
  for (int64_t step = 5; step < 10; ++step)
    for (int r = 0; r < 2; ++r) EXPECT_FALSE(job.reportStep(r, 2, step).regroup());
  job.checkpoint(2, 10, 2);
  ASSERT_TRUE(job.sawEvent("checkpoint committed: " + (job.dir.path / "ckpt").string() +
                           "/step-00000010"));
  auto manifest = runtime::findLatestCheckpoint((job.dir.path / "ckpt").string());
  ASSERT_TRUE(manifest.has_value());
  EXPECT_EQ(manifest->next_step, 10);
  EXPECT_EQ(manifest->replicas, 1);
  EXPECT_EQ(manifest->files.size(), 2u);
  // A later failure regroups the 1-replica job and reshards nothing.
  job.coordinator->reportFailure(pid[1], -1, "killed by signal 9 (SIGKILL)", "ProcessKilled");
  ASSERT_TRUE(job.waitForGeneration(3));
  std::vector<pb::Assignment> again;
  for (const auto& s : job.registerAll({pid[0]}, {0}, &again)) ASSERT_TRUE(s.ok());
  EXPECT_EQ(again[0].generation(), 3);
  EXPECT_EQ(again[0].replicas(), 1);
  EXPECT_EQ(again[0].resume_replicas(), 1);
  EXPECT_EQ(again[0].first_step(), 10);

  // --resume of the job (data_parallel 2) from that 1-replica checkpoint:
  // two replicas again, each tasklet told to reshard from 1.
  job.start("{max_restarts: 2, rejoin_timeout: 1, min_replicas: 1}", 30s, true);
  std::vector<pb::Assignment> grown;
  for (const auto& s : job.registerAll({3000, 3001, 3002, 3003}, {-1, -1, -1, -1}, &grown))
    ASSERT_TRUE(s.ok()) << s.error_message();
  for (const auto& a : grown) {
    EXPECT_EQ(a.replicas(), 2);
    EXPECT_EQ(a.resume_replicas(), 1);
    EXPECT_EQ(a.first_step(), 10);
  }
}

// A host with ranks 2 and 3 is gone, but only rank 3's death is noticed:
// rank 2's worker is awaited as a survivor and never rejoins. At
// rejoin_timeout it counts as lost and the second idle spare takes its
// place, so the job keeps both replicas rather than shrinking.
TEST(Recovery, SparesTakeThePlacesOfSurvivorsThatNeverRejoinBeforeTheJobShrinks) {
  FakeJob job("{max_restarts: 2, rejoin_timeout: 1, min_replicas: 1}");
  job.runFirstGeneration();
  const auto pid = job.pid_of_rank;
  pb::Assignment s50, s60;
  ASSERT_TRUE(job.registerOne(50, 0, &s50).ok());
  ASSERT_TRUE(job.registerOne(60, 0, &s60).ok());
  ASSERT_TRUE(s50.spare() && s60.spare());
  job.coordinator->reportFailure(pid[3], -1, "killed by signal 9 (SIGKILL)", "ProcessKilled");
  ASSERT_TRUE(job.waitForGeneration(2));
  // The spares keep calling with their tickets until they get a rank.
  pb::Assignment p50, p60;
  std::thread t50([&] { job.pollAsSpare(50, s50.spare_ticket(), &p50); });
  std::thread t60([&] { job.pollAsSpare(60, s60.spare_ticket(), &p60); });
  std::vector<pb::Assignment> as;
  const auto st = job.registerAll({pid[0], pid[1]}, {0, 1}, &as);
  t50.join();
  t60.join();
  for (const auto& s : st) ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(job.sawEvent("1 survivor(s) did not rejoin within 1 s"));
  EXPECT_FALSE(job.sawEvent("continuing with"));
  EXPECT_EQ(as[0].rank(), 0);
  EXPECT_EQ(as[1].rank(), 1);
  EXPECT_EQ(as[0].replicas(), 2);
  EXPECT_EQ(std::set<int>({p50.rank(), p60.rank()}), std::set<int>({2, 3}));
  EXPECT_EQ(p50.generation(), 2);
  EXPECT_EQ(p60.resume_replicas(), 2);
}

// After a shrink to one replica, a second idle spare joins: at the next
// commit the job grows back to two replicas (a new generation that is no
// restart), every tasklet resharding from that checkpoint.
TEST(Recovery, AShrunkJobGrowsBackAtTheNextCommitWhenSparesFillAReplica) {
  FakeJob job("{max_restarts: 2, rejoin_timeout: 1, min_replicas: 1}");
  job.runFirstGeneration();
  const auto pid = job.pid_of_rank;
  const FakeJob::Shrunk shrunk = job.shrinkToOneReplicaWithTwoSpares();
  for (int64_t step = 5; step < 10; ++step)
    for (int r = 0; r < 2; ++r) job.reportStep(r, 2, step);
  job.checkpoint(2, 10, 2);
  ASSERT_TRUE(job.waitForGeneration(3));
  EXPECT_TRUE(job.sawEvent("growing back from 1 to 2 replicas with idle spares: generation 3 "
                           "resumes from the checkpoint at step 10 with 2 of 2 replicas"));
  EXPECT_TRUE(job.reportStep(0, 2, 10).regroup());
  pb::Assignment p3, p70;
  std::thread t3([&] { job.pollAsSpare(pid[3], shrunk.ticket3, &p3); });
  std::thread t70([&] { job.pollAsSpare(70, shrunk.ticket70, &p70); });
  std::vector<pb::Assignment> again;
  const auto st = job.registerAll({pid[0], pid[1]}, {0, 1}, &again);
  t3.join();
  t70.join();
  for (const auto& s : st) ASSERT_TRUE(s.ok()) << s.error_message();
  for (const pb::Assignment* a : {&again[0], &again[1], &p3, &p70}) {
    EXPECT_EQ(a->generation(), 3);
    EXPECT_EQ(a->replicas(), 2);
    EXPECT_EQ(a->resume_replicas(), 1);
    EXPECT_EQ(a->first_step(), 10);
  }
  EXPECT_EQ(again[0].rank(), 0);
  EXPECT_EQ(again[1].rank(), 1);
  EXPECT_EQ(std::set<int>({p3.rank(), p70.rank()}), std::set<int>({2, 3}));
  // The grow was no restart: the next failure is restart 2 of 2.
  job.exchangeAddresses({again[0], again[1], p3, p70});
  job.coordinator->reportFailure(pid[0], -1, "killed by signal 9 (SIGKILL)", "ProcessKilled");
  ASSERT_TRUE(job.waitForGeneration(4));
  EXPECT_TRUE(job.sawEvent("recovering (restart 2 of 2): generation 4"));
  EXPECT_FALSE(job.coordinator->waitFor(10ms).has_value()) << "the job goes on";
}

// A worker's broken link reported just before the commit is held (it may
// be the consequence of another's death): no grow back while it is being
// decided; it then ends the generation as the failure it is.
TEST(Recovery, NoGrowBackWhileAFailureIsBeingDecided) {
  FakeJob job("{max_restarts: 2, rejoin_timeout: 1, min_replicas: 1}");
  job.runFirstGeneration();
  job.shrinkToOneReplicaWithTwoSpares();
  for (int64_t step = 5; step < 10; ++step)
    for (int r = 0; r < 2; ++r) job.reportStep(r, 2, step);
  {
    grpc::ClientContext ctx;
    pb::FailureReport req;
    req.set_rank(1);
    req.set_generation(2);
    req.set_error("the stream from rank 0 broke");
    req.set_error_type("IoError");
    pb::Directive d;
    ASSERT_TRUE(job.stub->ReportFailure(&ctx, req, &d).ok());
  }
  job.checkpoint(2, 10, 2);
  EXPECT_TRUE(job.sawEvent("checkpoint committed: " + (job.dir.path / "ckpt").string() +
                           "/step-00000010"));
  EXPECT_FALSE(job.sawEvent("growing back"));
  ASSERT_TRUE(job.waitForGeneration(3));  // after failure_grace
  EXPECT_TRUE(job.sawEvent("recovering (restart 2 of 2): generation 3 resumes from the "
                           "checkpoint at step 10"));
  EXPECT_FALSE(job.sawEvent("growing back"));
}

TEST(Recovery, AWorkerBlamedForAFailureRejoinsWithoutUsingUpTheRegistrationCap) {
  // No room for newcomers (spare_registrations 0): the four workers are all
  // the job may register. Rank 1's worker reports a refused link three
  // times, a failure it is blamed for and outlives; each time it registers
  // again with the survivors, and each time the job takes it back.
  FakeJob job("{max_restarts: 3, rejoin_timeout: 10}", 30s, /*spare_registrations=*/0);
  job.runFirstGeneration();
  const auto pid = job.pid_of_rank;
  for (int64_t g = 1; g <= 3; ++g) {
    {
      grpc::ClientContext ctx;
      pb::FailureReport req;
      req.set_rank(1);
      req.set_generation(g);
      req.set_error("rank 0 refused the stream");
      req.set_error_type("ProtocolError");
      pb::Directive d;
      ASSERT_TRUE(job.stub->ReportFailure(&ctx, req, &d).ok());
    }
    ASSERT_TRUE(job.waitForGeneration(g + 1));
    std::vector<pb::Assignment> as;
    for (const auto& st : job.registerAll(pid, {0, 1, 2, 3}, &as))
      ASSERT_TRUE(st.ok()) << "generation " << g + 1 << ": " << st.error_message();
    job.exchangeAddresses(as);
    // A step done, so the next failure is not "the same error again".
    for (int r = 0; r < 4; ++r) job.reportStep(r, g + 1, 5);
  }
  EXPECT_EQ(job.coordinator->recoveries(), 3);
  EXPECT_FALSE(job.sawEvent("refused a registration"));
}

TEST(Recovery, GivesUpNamingTheDeadTaskletWhenTooFewWorkersRejoin) {
  FakeJob job("{max_restarts: 2, rejoin_timeout: 1}");
  job.runFirstGeneration();
  const auto pid = job.pid_of_rank;
  job.coordinator->reportFailure(pid[3], -1, "killed by signal 9 (SIGKILL)", "ProcessKilled");
  ASSERT_TRUE(job.waitForGeneration(2));
  std::vector<pb::Assignment> as;
  const auto t0 = std::chrono::steady_clock::now();
  const auto st = job.registerAll({pid[0], pid[1], pid[2]}, {0, 1, 2}, &as);
  for (const auto& s : st) EXPECT_EQ(s.error_code(), grpc::StatusCode::ABORTED);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
  auto r = job.coordinator->waitFor(5s);
  ASSERT_TRUE(r.has_value());
  EXPECT_FALSE(r->ok);
  EXPECT_EQ(r->failed_rank, 3);
  EXPECT_NE(r->failure.find("tasklet rank 3 (stage 1, replica 1"), std::string::npos) << r->failure;
  EXPECT_NE(r->failure.find("recovery gave up: 3 of 4 workers rejoined within 1 s"),
            std::string::npos)
      << r->failure;
}

}  // namespace
}  // namespace geopipe::distributed
