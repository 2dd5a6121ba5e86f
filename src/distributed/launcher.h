// `geopipe launch` as a library: one coordinator in this process and one
// worker process per tasklet (fork/exec of the geopipe binary) on
// 127.0.0.1 (plus any idle spares), watched until the job ends. A worker
// killed by a signal is started again (fault_tolerance.max_restarts) and
// the job recovers; a
// failure it cannot recover from ends the job with its tasklet named.
// Every child is reaped before launchJob returns.
// Torch-free header.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "src/distributed/coordinator.h"

namespace geopipe::distributed {

struct LaunchOptions {
  // The job YAML file.
  std::string job_path;
  // `--set path=value` edits of the job, applied before it is checked
  // (src/config/job_overrides.h); the workers get the edited job.
  std::vector<std::string> overrides;
  // Overrides training.steps when set.
  std::optional<int64_t> steps;
  // Continue from the newest committed checkpoint in checkpoint.dir.
  bool resume = false;
  // The geopipe binary run as `geopipe worker`; empty: this process's own
  // executable (/proc/self/exe).
  std::string executable;
  // Where each worker's stdout/stderr go (worker-<i>.log); empty: a new
  // directory under the system temp dir (kept; its path is in the result).
  std::string log_dir;
  // --log-level given to the workers.
  std::string worker_log_level;  // --log-level of the workers; empty: the job's logging.level
  // LibTorch threads per worker; 0 = max(1, cores / tasklets).
  int threads_per_worker = 0;
  // Longest wait for a peer's message inside a worker.
  int timeout_seconds = 300;
  // A worker silent this long has failed (see CoordinatorOptions); unset:
  // the job's fault_tolerance.heartbeat_timeout.
  std::optional<std::chrono::milliseconds> heartbeat_timeout;
  // Idle spare workers started besides one per tasklet (worker-<i>.log
  // for i >= tasklets): the coordinator holds them and gives a failed
  // tasklet's rank to one in the next generation.
  int spares = 0;
  // Start a worker killed by a signal again (up to
  // fault_tolerance.max_restarts). false: recovery needs a spare (or a
  // worker started by hand within rejoin_timeout).
  bool respawn = true;
  // After the job ends, how long workers get to exit before SIGTERM, and
  // then SIGKILL after as long again.
  std::chrono::milliseconds shutdown_grace{10000};
  // Polled every 50 ms: true asks the coordinator to stop every worker
  // after the same step and checkpoint there (the first Ctrl-C).
  std::function<bool()> should_stop;
  // Polled every 50 ms: true kills every worker now (the second Ctrl-C).
  std::function<bool()> should_abort;
  // Called once the coordinator has read and resolved the job (stages and
  // replicas decided), before any worker starts: open metrics files here.
  // The display's job must outlive the run (ProgressDisplay keeps a
  // reference), so it is copied by the callee.
  std::function<void(const JobSpec&)> on_start;
  // Called once the coordinator is constructed, before on_start: it lives
  // until launchJob returns, and on_step may ask it about the workers.
  std::function<void(const Coordinator&)> on_coordinator;
  // Called with each finished step, in order (coordinator's thread).
  std::function<void(const StepMetrics&)> on_step;
  // One-line events: placement, checkpoints, failures.
  std::function<void(const std::string&)> on_event;
};

struct LaunchResult {
  CoordinatorResult job;        // ok / interrupted / failure naming the tasklet
  std::string log_dir;          // the workers' logs
  int workers = 0;              // processes started (tasklets + spares)
  int restarts = 0;             // workers started again after being killed
  std::string failed_log_tail;  // last lines of the failed worker's log
};

// Runs the job to its end (or failure / stop). Throws for a bad job before
// anything is started (SpecError, ConfigError, IoError); failures of the
// workers are in the result, not thrown.
LaunchResult launchJob(const LaunchOptions& options);

}  // namespace geopipe::distributed
