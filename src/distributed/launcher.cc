// The launcher: coordinator in-process, workers as child processes.
#include "src/distributed/launcher.h"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <thread>

#include "geopipe/error.h"
#include "src/common/logging.h"
#include "src/common/text.h"
#include "src/config/job_overrides.h"
#include "src/config/job_parser.h"
#include "src/distributed/process.h"
#include "src/distributed/recovery.h"
#include "src/distributed/security.h"

namespace geopipe::distributed {
namespace fs = std::filesystem;

namespace {

std::string makeLogDir(const std::string& requested) {
  std::string dir = requested;
  if (dir.empty()) {
    std::string tmpl = (fs::temp_directory_path() / "geopipe-launch-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) {
      GEOPIPE_THROW(IoError, "cannot create a log directory under ", fs::temp_directory_path());
    }
    dir = tmpl;
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    GEOPIPE_THROW(IoError, "cannot create log directory '", common::printable(dir),
                  "': ", ec.message());
  return dir;
}

}  // namespace

LaunchResult launchJob(const LaunchOptions& opt) {
  LaunchResult out;
  out.log_dir = makeLogDir(opt.log_dir);
  const std::string exe =
      opt.executable.empty() ? selfExecutable("start the workers") : opt.executable;

  // TLS for every link even here: the job's own files, or (the zero-set-up
  // default) a CA, certificate and token made for this run in its log
  // directory. Workers get file paths, never the token itself, on argv.
  const JobSpec spec = config::loadJobFile(opt.job_path, opt.overrides);
  common::applyJobLogLevel(spec.logging.level);
  JobSecurity security;
  WorkerSecurityArgs worker_security;
  if (!spec.security.configured) {
    EphemeralSecurity e = makeEphemeralSecurity((fs::path(out.log_dir) / "tls").string());
    security = e.security;
    worker_security = e.worker_args;
  } else {
    security = jobSecurity(spec, false);
    worker_security.ca = spec.security.ca;
    worker_security.cert = spec.security.cert;
    worker_security.key = spec.security.key;
    worker_security.token_file = spec.security.token_file;  // empty: inherited environment
    worker_security.insecure = spec.security.insecure;
    worker_security.allow_insecure_remote = spec.security.insecure_remote;
  }

  CoordinatorOptions co;
  co.job_path = opt.job_path;
  co.overrides = opt.overrides;
  co.security = security;
  co.listen_address = "127.0.0.1:0";
  co.steps = opt.steps;
  co.resume = opt.resume;
  co.heartbeat_timeout = opt.heartbeat_timeout;
  co.emulate_links_by_default = true;  // one machine: the topology's links are emulated
  co.on_step = opt.on_step;
  co.on_event = opt.on_event;
  GEOPIPE_CHECK(opt.spares >= 0, ConfigError, "--spares is ", opt.spares, "; give 0 or more");
  if (opt.spares > 0) {
    // Every spare registers once, besides the tasklets and the workers
    // started again (up to every tasklet in each recovery, see below).
    const int tasklets =
        spec.parallelism.pipeline_stages * std::max(1, spec.parallelism.data_parallel);
    co.spare_registrations =
        opt.spares + (1 + std::max(0, spec.fault_tolerance.max_restarts)) * tasklets;
  }
  Coordinator coordinator(co);
  const int world = coordinator.worldSize();
  out.workers = world + opt.spares;
  if (opt.on_coordinator) opt.on_coordinator(coordinator);
  if (opt.on_start) opt.on_start(coordinator.job());
  int threads = opt.threads_per_worker;
  if (threads <= 0) {
    threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / world);
  }
  // Spares are ordinary workers: every one says "any", the first `world`
  // to join are placed and the others wait as idle spares.
  const int processes = world + opt.spares;

  std::vector<ChildProcess> children;
  std::map<pid_t, std::string> log_of;
  std::vector<SpawnOptions> spawn_of;  // by child index, to start a replacement
  pid_t group = 0;
  auto killEverything = [&] { stopAll(children, std::chrono::milliseconds(0)); };
  try {
    for (int i = 0; i < processes; ++i) {
      SpawnOptions so;
      so.program = exe;
      so.argv = {exe};
      if (!opt.worker_log_level.empty()) {
        so.argv.push_back("--log-level");
        so.argv.push_back(opt.worker_log_level);
      }
      so.argv.insert(so.argv.end(), {"worker",
                 "--coordinator",
                 coordinator.listeningAddress(),
                 "--device",
                 "any",
                 "--listen",
                 "127.0.0.1:0",
                 "--threads",
                 std::to_string(threads),
                 "--timeout",
                 std::to_string(opt.timeout_seconds)});
      const WorkerSecurityArgs& ws = worker_security;
      if (ws.insecure) so.argv.push_back("--insecure");
      if (ws.allow_insecure_remote) so.argv.push_back("--allow-insecure-remote");
      for (const auto& [flag, value] : {std::pair<const char*, const std::string*>{"--ca", &ws.ca},
                                        {"--cert", &ws.cert},
                                        {"--key", &ws.key},
                                        {"--token-file", &ws.token_file}}) {
        if (value->empty()) continue;
        so.argv.push_back(flag);
        so.argv.push_back(*value);
      }
      so.log_file = (fs::path(out.log_dir) / ("worker-" + std::to_string(i) + ".log")).string();
      so.process_group = group;
      children.push_back(ChildProcess::spawn(so));
      if (group == 0) group = children.back().pid();
      log_of[children.back().pid()] = so.log_file;
      spawn_of.push_back(so);
    }
  } catch (...) {
    killEverything();
    throw;
  }
  // A worker killed by a signal (kill -9, OOM killer, a crash) is started
  // again; the coordinator has the survivors regroup with it. The job's
  // fault_tolerance.max_restarts counts the coordinator's recoveries, not
  // processes: one event (a host lost) may kill every worker and costs one
  // recovery, so up to every tasklet per recovery is started again, and the
  // coordinator ends the job when its recoveries run out. One that exits
  // with an error code is not started again: it would fail the same way.
  const int max_restarts = coordinator.job().fault_tolerance.max_restarts;
  const int max_respawns = std::max(0, max_restarts) * world;
  int restarts = 0;

  // Watch: children that exit, Ctrl-C, and the coordinator's verdict.
  std::optional<CoordinatorResult> result;
  bool aborted = false;
  pid_t failed_pid = 0;
  while (!result) {
    // Processes the coordinator declared dead but that still run (hung,
    // stopped): kill them, so they are replaced below.
    for (int64_t pid : coordinator.lostWorkers()) {
      for (auto& c : children)
        if (c.pid() == pid && c.running()) c.signal(SIGKILL);
    }
    for (size_t i = 0; i < children.size(); ++i) {
      ChildProcess& c = children[i];
      if (!c.running()) continue;
      if (auto st = c.poll()) {
        if (!st->ok()) {
          if (!failed_pid) failed_pid = c.pid();
          std::string cause = st->str();
          coordinator.reportFailure(c.pid(), -1, cause,
                                    st->signaled ? kProcessKilled : "ProcessFailed");
          if (opt.respawn && st->signaled && restarts < max_respawns &&
              coordinator.recoveries() <= max_restarts) {
            ++restarts;
            SpawnOptions so = spawn_of[i];
            so.process_group = group;  // the first worker's group outlives it
            so.log_file = (fs::path(out.log_dir) / ("worker-" + std::to_string(i) + ".restart-" +
                                                    std::to_string(restarts) + ".log"))
                              .string();
            if (opt.on_event) {
              opt.on_event(detail::concat("restarting worker ", i, " (pid ", c.pid(), " ", cause,
                                          "), worker restart ", restarts, "; log ", so.log_file));
            }
            ChildProcess fresh = ChildProcess::spawn(so);
            log_of[fresh.pid()] = so.log_file;
            children[i] = std::move(fresh);
            // The dead one's exit code is reaped; its slot now runs the new one.
          }
        }
      }
    }
    if (opt.should_abort && opt.should_abort() && !aborted) {
      aborted = true;
      coordinator.requestStop(false);
      killEverything();
      coordinator.reportFailure(0, -1, "stopped by a second interrupt", "Interrupted");
    }
    if (opt.should_stop && opt.should_stop()) coordinator.requestStop(true);
    result = coordinator.waitFor(std::chrono::milliseconds(50));
  }

  // The job is over: let the workers leave on their own, then make sure.
  const auto deadline = std::chrono::steady_clock::now() + opt.shutdown_grace;
  for (auto& c : children) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    c.waitFor(std::max(left, std::chrono::milliseconds(0)));
  }
  stopAll(children, opt.shutdown_grace);

  out.job = *result;
  out.restarts = restarts;
  if (!out.job.ok) {
    // The log of the tasklet the coordinator names, else of the first
    // process that failed.
    int64_t pid = failed_pid;
    if (out.job.failed_rank >= 0) {
      for (const auto& t : coordinator.tasklets())
        if (t.rank == out.job.failed_rank) pid = t.pid;
    }
    if (log_of.count(static_cast<pid_t>(pid))) {
      out.failed_log_tail = tailOfFile(log_of[static_cast<pid_t>(pid)], 8);
    }
  }
  return out;
}

}  // namespace geopipe::distributed
