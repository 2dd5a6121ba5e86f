// The coordinator of a multi-process job: a gRPC service (proto/
// coordinator.proto) that workers join, that plans the job once every
// tasklet has a worker, hands out ranks, layers and the peer address table,
// collects every step's metrics, commits checkpoints, notices workers that
// vanish or hang, recovers from such failures (a new generation over the
// workers that rejoin and idle spares that take lost places, resumed from
// the last committed checkpoint), and tells everyone when to stop.
// Torch-free header.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "geopipe/trainer.h"
#include "src/distributed/security.h"
#include "src/transport/grpc/connection_gate.h"
#include "src/transport/grpc/relay.h"

namespace geopipe::distributed {

struct CoordinatorOptions {
  // The job YAML file (read on this host; its topology is inlined and sent
  // to the workers, relative paths resolve against its directory).
  std::string job_path;
  // `--set path=value` edits of the job, applied before it is checked
  // (src/config/job_overrides.h); the workers get the edited job.
  std::vector<std::string> overrides;
  // Where the Coordinator service listens ("host:port"; port 0 picks one).
  std::string listen_address = "0.0.0.0:7420";
  // Overrides training.steps when set.
  std::optional<int64_t> steps;
  // Continue from the newest committed checkpoint in checkpoint.dir.
  bool resume = false;
  // How the service is secured (mutual TLS or loopback plaintext) and the
  // join token every worker must present. Unset: the job's security section
  // (jobSecurity; ConfigError when it has none). The token is compared in
  // constant time and never logged.
  std::optional<JobSecurity> security;
  // Plaintext even when listen_address is not loopback (`insecure: force`
  // in the job does the same).
  bool allow_insecure_remote = false;
  // Registrations with the right token accepted: at most stages x replicas
  // plus this many (idle spares, replacements of lost workers, workers
  // that left before placement and were started again; a survivor
  // rejoining after a failure is not counted); -1: as many as the job has
  // tasklets. Further ones are refused (RESOURCE_EXHAUSTED), so a client
  // cannot grow the coordinator's memory without bound.
  int spare_registrations = -1;
  // transport.emulate_links when the job does not set it: true for
  // `geopipe launch` (every worker on this machine, links shaped to the
  // topology), false for `geopipe coordinator` (real hosts, real links).
  bool emulate_links_by_default = false;
  // A placed worker that sends nothing (heartbeat or report) for this long
  // has failed and is named. Unset: the job's
  // fault_tolerance.heartbeat_timeout (10 s by default). Workers stop on
  // their own when the coordinator is silent as long.
  std::optional<std::chrono::milliseconds> heartbeat_timeout;
  // A tasklet whose step report is this much later than the first report of
  // the same step has failed (the step barrier's deadline).
  std::chrono::milliseconds step_deadline{300000};
  // Failures a worker reports that may be the consequence of another's
  // death (IoError, TimeoutError) are held this long, so that the root
  // cause (a process that died, reported by the launcher) is the one named.
  std::chrono::milliseconds failure_grace{2000};
  // Connections before authentication: how many may be in their TCP + TLS
  // set-up at once, in total and per source address (more are closed at
  // once), and how long a set-up may take (then it is closed).
  transport::ConnectionLimits connections;
  // The relay for workers that accept no connections (`worker --relay`:
  // behind NAT without a port forward; src/transport/grpc/relay.h): where it
  // listens ("host:port"; port 0 picks one). Empty: no relay, and a worker
  // that asks for one is refused.
  std::string relay_listen;
  // The topology site this coordinator (and so the relay) runs in: a
  // relayed device's incoming links are priced through it
  // (scheduler/relayed_links.h). Required with relay_listen.
  std::string relay_site;
  // For tests: runs on a re-plan search's own thread before the search (a
  // sleep here stands for a search that takes its whole budget).
  std::function<void()> before_replan_search;
  // Called with each finished step, in step order, from the coordinator's
  // threads, outside its lock.
  std::function<void(const StepMetrics&)> on_step;
  // Called with one-line events (placement, checkpoints, failures), in the
  // order they happened, from the coordinator's threads, one call at a time
  // and outside its lock: a slow sink delays no worker's call, and a sink
  // may call the Coordinator (its own events then follow when it returns).
  std::function<void(const std::string&)> on_event;
};

// One tasklet as the coordinator sees it (after placement).
struct TaskletInfo {
  int rank = -1;
  int stage = -1;
  int replica = -1;
  int device = -1;          // topology device index
  std::string device_name;  // topology device name
  std::string hostname;     // the worker's host
  int64_t pid = 0;          // the worker's process id on its host
  std::string address;      // its peer service, once reported
  bool finished = false;    // sent Finish
};

struct CoordinatorResult {
  bool ok = false;           // every tasklet finished every step it was asked to
  bool interrupted = false;  // requestStop ended the run early
  int recoveries = 0;        // failures recovered from
  int grows = 0;             // times a shrunk job grew back with idle spares
  int replans = 0;           // new plans committed (fault_tolerance.replan)
  int replicas = 0;          // data-parallel replicas at the end (fewer after a shrink)
  int stages = 0;            // pipeline stages at the end (another after a re-plan)
  std::string failure;       // what failed, naming the tasklet; empty when ok
  std::string failure_type;  // the error type of the root cause ("IoError", ...)
  int failed_rank = -1;      // the tasklet named by `failure`, -1 if none
  TrainResult train;         // losses, throughput, bytes, placement
};

// Thread-safety: every method may be called from any thread.
class Coordinator {
 public:
  // Reads and checks the job, plans the data-parallel shape if it is
  // `auto`, finds the checkpoint to resume from, and starts the service.
  // Throws SpecError / ConfigError / IoError for a bad job.
  explicit Coordinator(CoordinatorOptions options);
  ~Coordinator();
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  // "host:port" the service is bound to.
  std::string listeningAddress() const;
  // The relay's port and counters; nullopt without one (relay_listen).
  std::optional<int> relayPort() const;
  std::optional<transport::RelayStats> relayStats() const;
  // The job as the coordinator runs it now (stages and replicas resolved;
  // data_parallel lower after a shrink), and its tasklet count.
  JobSpec job() const;
  int worldSize() const;

  // Asks every worker to stop after the same step (past every step any
  // worker has reported), writing a checkpoint there when the job has a
  // checkpoint.dir and `checkpoint` is true. Idempotent.
  void requestStop(bool checkpoint);
  // Ends the job as failed (the launcher reports a worker process that
  // died). `pid` finds the tasklet; `rank` >= 0 names it directly. The first
  // root cause wins.
  void reportFailure(int64_t pid, int rank, const std::string& cause,
                     const std::string& type = "ProcessError");

  // Every joined worker, by rank once placed (empty before placement and
  // while the job regroups after a failure).
  std::vector<TaskletInfo> tasklets() const;
  // Processes the coordinator has declared dead (silent, hung, or named by a
  // failure) and left out of the next generation: a launcher kills any of
  // these that still run (a hung process) so it can start a replacement.
  std::vector<int64_t> lostWorkers() const;
  // The current generation: 1 for the first attempt, +1 per recovery or
  // grow back.
  int64_t generation() const;
  // Recoveries so far (generations started by a failure; what
  // fault_tolerance.max_restarts bounds).
  int recoveries() const;

  // Waits up to `timeout` for the job to end: every worker finished, or a
  // failure is final (and the workers have been told to abort). nullopt if
  // still running.
  std::optional<CoordinatorResult> waitFor(std::chrono::milliseconds timeout);
  // Waits for every worker to have sent Finish after the job ended (up to
  // `timeout`); true if all did.
  bool waitForWorkersGone(std::chrono::milliseconds timeout);

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace geopipe::distributed
