// `geopipe launch JOB.yaml`: coordinator in this process, one worker process
// per tasklet on 127.0.0.1, progress and metrics like `train`, Ctrl-C stops
// every process cleanly; a failed worker is named with its cause.
#include <atomic>
#include <csignal>
#include <iostream>

#include "geopipe/error.h"
#include "src/cli/commands.h"
#include "src/cli/distributed_commands.h"
#include "src/cli/option_checks.h"
#include "src/cli/progress_display.h"
#include "src/common/logging.h"
#include "src/common/text.h"
#include "src/config/job_overrides.h"
#include "src/config/summary.h"
#include "src/distributed/launcher.h"

namespace geopipe::cli {
namespace {

std::atomic<int> g_signals{0};
void onSignal(int) {
  g_signals.fetch_add(1);
}

}  // namespace

// Exit code for a job that ended badly: what the root cause says.
int exitCodeForFailure(const distributed::CoordinatorResult& r) {
  if (r.failure_type == "ConfigError") return static_cast<int>(ExitCode::INVALID_SPEC);
  if (r.failure_type == "InfeasibleError") return static_cast<int>(ExitCode::INFEASIBLE);
  if (r.failure_type == "Interrupted") return 130;
  return static_cast<int>(ExitCode::RUNTIME_ERROR);
}

// The summary lines of a job whose replica count changed on the way
// (fault_tolerance.min_replicas): grown back, or finished on fewer.
void printReplicaChanges(std::ostream& out, const distributed::CoordinatorResult& r,
                         int replicas_at_start) {
  if (r.grows > 0) out << "grew back " << r.grows << " time(s) with idle spares\n";
  if (r.replicas > 0 && r.replicas < replicas_at_start) {
    out << "finished on " << r.replicas << " of " << replicas_at_start
        << " data-parallel replicas (fault_tolerance.min_replicas); --resume restarts with "
        << replicas_at_start << "\n";
  }
}

void addLaunchOptions(CLI::App& app, LaunchArgs& args) {
  app.add_option("JOB", args.job, "job YAML file")->required();
  app.add_option("--steps", args.steps, "override training.steps")->check(integerAtLeast(1));
  addCheckpointStartOptions(app, args.resume, args.overwrite);
  addSetOption(app, args.overrides);
  addPluginOption(app, args.overrides);
  app.add_option("--metrics", args.metrics_file,
                 "write JSON lines here (overrides logging.metrics_file)");
  app.add_option("--plot", args.plot_file,
                 "write the loss and the step-time breakdown as SVG here");
  app.add_option("--log-dir", args.log_dir, "workers' logs (default: a new temp directory)");
  app.add_option("--threads", args.threads, "LibTorch threads per worker (0: cores / tasklets)")
      ->capture_default_str();
  app.add_option("--heartbeat-timeout", args.heartbeat_timeout,
                 "seconds without word from a worker before it counts as dead (default: "
                 "fault_tolerance.heartbeat_timeout of the job, 10)")
      ->check(finiteNumberIn(1.0, 3600.0));  // fault_tolerance.heartbeat_timeout's range
  app.add_option("--spares", args.spares,
                 "idle spare worker processes to start besides one per tasklet; a spare "
                 "takes a failed tasklet's place in the next generation")
      ->capture_default_str()
      ->check(CLI::Range(0, 64));
  app.add_flag("--no-respawn", args.no_respawn,
               "do not start a worker killed by a signal again (recovery then needs a spare "
               "or a worker started by hand)");
}

int runLaunchCommand(const LaunchArgs& args, std::ostream& out) {
  // Before anything starts (log directory, TLS files, workers): a fresh
  // run's checkpoint.dir must not hold an earlier run's checkpoints.
  if (!args.resume) {
    claimCheckpointDir(out, config::loadJobFile(args.job, args.overrides), args.overwrite);
  }
  distributed::LaunchOptions opt;
  opt.job_path = args.job;
  opt.overrides = args.overrides;
  if (args.steps) opt.steps = *args.steps;
  opt.resume = args.resume;
  opt.log_dir = args.log_dir;
  opt.threads_per_worker = args.threads;
  opt.spares = args.spares;
  opt.respawn = !args.no_respawn;
  opt.worker_log_level = common::pinnedLogLevel();  // else the job's logging.level
  if (args.heartbeat_timeout) {
    opt.heartbeat_timeout =
        std::chrono::milliseconds(static_cast<int64_t>(*args.heartbeat_timeout * 1000));
  }
  g_signals = 0;
  opt.should_stop = [] { return g_signals.load() >= 1; };
  opt.should_abort = [] { return g_signals.load() >= 2; };
  std::unique_ptr<ProgressDisplay> display;
  int replicas_at_start = 0;
  opt.on_start = [&](const JobSpec& resolved) {
    JobSpec job = resolved;
    replicas_at_start = job.parallelism.data_parallel;
    if (!args.metrics_file.empty()) job.logging.metrics_file = args.metrics_file;
    display = std::make_unique<ProgressDisplay>(job, out, args.resume);
    if (const std::string note = config::assumedTopologyNote(job.topology); !note.empty()) {
      out << "topology: " << note << "\n";
    }
    out << "launching '" << job.name << "': " << job.parallelism.pipeline_stages << " stages x "
        << job.parallelism.data_parallel << " replicas as "
        << job.parallelism.pipeline_stages * job.parallelism.data_parallel
        << " worker processes on 127.0.0.1, " << job.training.steps << " steps\n"
        << std::flush;
  };
  opt.on_event = [&](const std::string& line) {
    out << "[coordinator] " << line << "\n" << std::flush;
  };
  std::atomic<const distributed::Coordinator*> coordinator{nullptr};  // set before any step
  opt.on_coordinator = [&](const distributed::Coordinator& c) { coordinator = &c; };
  opt.on_step = [&](const StepMetrics& m) {
    if (!display) return;
    if (const distributed::Coordinator* c = coordinator.load()) {
      display->setClusterStatus({static_cast<int>(c->tasklets().size()), c->recoveries()});
    }
    display->onStep(m);
  };
  auto prev_int = std::signal(SIGINT, onSignal);
  auto prev_term = std::signal(SIGTERM, onSignal);
  distributed::LaunchResult r;
  try {
    r = distributed::launchJob(opt);
  } catch (...) {
    std::signal(SIGINT, prev_int);
    std::signal(SIGTERM, prev_term);
    throw;
  }
  std::signal(SIGINT, prev_int);
  std::signal(SIGTERM, prev_term);
  if (!r.job.ok) {
    std::cerr << "error: " << r.job.failure << "\n";
    if (!r.failed_log_tail.empty()) {
      std::cerr << "last lines of its log:\n" << r.failed_log_tail;
    }
    std::cerr << "worker logs: " << common::printable(r.log_dir) << "\n";
    return exitCodeForFailure(r.job);
  }
  if (display && !args.plot_file.empty()) display->writePlot(args.plot_file);
  if (display) display->summary(r.job.train, r.job.interrupted);
  if (r.job.recoveries > 0) {
    out << "recovered from " << r.job.recoveries << " failure(s), " << r.restarts
        << " worker process(es) restarted\n";
    printReplicaChanges(out, r.job, replicas_at_start);
  }
  out << "worker logs: " << r.log_dir << "\n";
  return r.job.interrupted ? 130 : 0;
}

}  // namespace geopipe::cli
