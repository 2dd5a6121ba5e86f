// `geopipe coordinator JOB.yaml --listen HOST:PORT`: the coordinator of a
// multi-host job; `geopipe worker` processes join it (docs/multi-host.md).
#include <atomic>
#include <csignal>
#include <iostream>

#include "geopipe/error.h"
#include "src/cli/commands.h"
#include "src/cli/distributed_commands.h"
#include "src/cli/option_checks.h"
#include "src/cli/progress_display.h"
#include "src/common/logging.h"
#include "src/config/job_overrides.h"
#include "src/config/summary.h"
#include "src/distributed/coordinator.h"

namespace geopipe::cli {

int exitCodeForFailure(const distributed::CoordinatorResult& r);
void printReplicaChanges(std::ostream& out, const distributed::CoordinatorResult& r,
                         int replicas_at_start);

namespace {

std::atomic<int> g_signals{0};
void onSignal(int) {
  g_signals.fetch_add(1);
}

}  // namespace

void addCoordinatorOptions(CLI::App& app, CoordinatorArgs& args) {
  app.add_option("JOB", args.job, "job YAML file")->required();
  app.add_option("--listen", args.listen, "host:port workers connect to")->capture_default_str();
  app.add_option("--relay", args.relay,
                 "host:port of a relay for workers that accept no connections (worker --relay, "
                 "behind NAT); their peers reach them through it");
  app.add_option("--relay-site", args.relay_site,
                 "with --relay: the topology site this coordinator runs in (relayed links are "
                 "priced through it)");
  app.add_option("--steps", args.steps, "override training.steps")->check(integerAtLeast(1));
  addCheckpointStartOptions(app, args.resume, args.overwrite);
  addSetOption(app, args.overrides);
  addPluginOption(app, args.overrides);
  app.add_option("--metrics", args.metrics_file,
                 "write JSON lines here (overrides logging.metrics_file)");
  app.add_option("--plot", args.plot_file,
                 "write the loss and the step-time breakdown as SVG here");
  app.add_flag("--allow-insecure-remote", args.allow_insecure_remote,
               "with security.insecure: allow plaintext on a --listen address that is not "
               "loopback (like insecure: force)");
  app.add_option("--heartbeat-timeout", args.heartbeat_timeout,
                 "seconds without word from a worker before it counts as dead (default: "
                 "fault_tolerance.heartbeat_timeout of the job, 10)")
      ->check(finiteNumberIn(1.0, 3600.0));  // fault_tolerance.heartbeat_timeout's range
}

int runCoordinatorCommand(const CoordinatorArgs& args, std::ostream& out) {
  // Before the service starts (workers may be waiting to join): a fresh
  // run's checkpoint.dir must not hold an earlier run's checkpoints.
  if (!args.resume) {
    claimCheckpointDir(out, config::loadJobFile(args.job, args.overrides), args.overwrite);
  }
  distributed::CoordinatorOptions opt;
  opt.job_path = args.job;
  opt.overrides = args.overrides;
  opt.listen_address = args.listen;
  opt.relay_listen = args.relay;
  opt.relay_site = args.relay_site;
  if (args.steps) opt.steps = *args.steps;
  opt.resume = args.resume;
  opt.allow_insecure_remote = args.allow_insecure_remote;
  if (args.heartbeat_timeout) {
    opt.heartbeat_timeout =
        std::chrono::milliseconds(static_cast<int64_t>(*args.heartbeat_timeout * 1000));
  }
  std::unique_ptr<ProgressDisplay> display;
  std::atomic<const distributed::Coordinator*> coordinator_of_steps{nullptr};
  opt.on_step = [&](const StepMetrics& m) {
    if (!display) return;
    if (const distributed::Coordinator* c = coordinator_of_steps.load()) {
      display->setClusterStatus({static_cast<int>(c->tasklets().size()), c->recoveries()});
    }
    display->onStep(m);
  };
  opt.on_event = [&](const std::string& line) {
    out << "[coordinator] " << line << "\n" << std::flush;
  };
  distributed::Coordinator coordinator(opt);
  coordinator_of_steps = &coordinator;
  JobSpec job = coordinator.job();
  common::applyJobLogLevel(job.logging.level);
  if (!args.metrics_file.empty()) job.logging.metrics_file = args.metrics_file;
  display = std::make_unique<ProgressDisplay>(job, out, args.resume);
  if (const std::string note = config::assumedTopologyNote(job.topology); !note.empty()) {
    out << "topology: " << note << "\n";
  }
  out << "coordinator of '" << job.name << "' listening on " << coordinator.listeningAddress()
      << ": waiting for " << coordinator.worldSize() << " workers ("
      << job.parallelism.pipeline_stages << " stages x " << job.parallelism.data_parallel
      << " replicas); start each with\n  geopipe worker --coordinator HOST:"
      << coordinator.listeningAddress().substr(coordinator.listeningAddress().rfind(':') + 1)
      << (job.security.insecure ? " --insecure" : " --ca CA.pem --cert HOST.pem --key HOST-key.pem")
      << (job.security.token_file.empty() ? "" : " --token-file TOKEN_FILE")
      << " [--device NAME|INDEX]\n";
  if (const auto port = coordinator.relayPort()) {
    out << "relay on port " << *port << ": a worker that accepts no connections joins with "
        << "--relay --device NAME\n";
  }
  out << std::flush;

  g_signals = 0;
  auto prev_int = std::signal(SIGINT, onSignal);
  auto prev_term = std::signal(SIGTERM, onSignal);
  std::optional<distributed::CoordinatorResult> r;
  bool aborted = false;
  while (!r) {
    const int signals = g_signals.load();
    if (signals >= 1) coordinator.requestStop(true);
    if (signals >= 2 && !aborted) {
      aborted = true;
      coordinator.reportFailure(0, -1, "the coordinator was interrupted twice", "Interrupted");
    }
    r = coordinator.waitFor(std::chrono::milliseconds(100));
  }
  // Give the workers a moment to hear the verdict and leave.
  coordinator.waitForWorkersGone(std::chrono::seconds(r->ok ? 10 : 3));
  std::signal(SIGINT, prev_int);
  std::signal(SIGTERM, prev_term);
  if (!r->ok) {
    std::cerr << "error: " << r->failure << "\n";
    return exitCodeForFailure(*r);
  }
  if (!args.plot_file.empty()) display->writePlot(args.plot_file);
  display->summary(r->train, r->interrupted);
  if (r->recoveries > 0) out << "recovered from " << r->recoveries << " failure(s)\n";
  printReplicaChanges(out, *r, job.parallelism.data_parallel);
  return r->interrupted ? 130 : 0;
}

}  // namespace geopipe::cli
