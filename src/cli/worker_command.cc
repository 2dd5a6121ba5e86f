// `geopipe worker --coordinator HOST:PORT`: one tasklet of a multi-process
// job (started by `geopipe launch`, or by hand / srun on each host).
#include <iostream>

#include "src/cli/distributed_commands.h"
#include "src/distributed/worker.h"

namespace geopipe::cli {

void addWorkerOptions(CLI::App& app, WorkerArgs& args) {
  app.add_option("--coordinator", args.coordinator, "host:port of the coordinator")->required();
  app.add_option("--device", args.device, "topology device name or index, or any")
      ->capture_default_str();
  app.add_option("--listen", args.listen,
                 "host:port of this worker's peer service (port 0: a free port; host 0.0.0.0: "
                 "peers use the address the coordinator sees)")
      ->capture_default_str();
  app.add_option("--token", args.token, "the coordinator's --token");
  app.add_option("--threads", args.threads, "LibTorch threads (0: every core)")
      ->capture_default_str();
  app.add_option("--timeout", args.timeout, "seconds to wait for a peer's message")
      ->capture_default_str();
}

int runWorkerCommand(const WorkerArgs& args, std::ostream& out) {
  distributed::WorkerOptions opt;
  opt.coordinator = args.coordinator;
  opt.device = args.device;
  opt.listen = args.listen;
  opt.join_token = args.token;
  opt.threads = args.threads;
  opt.timeout_seconds = args.timeout;
  const distributed::WorkerResult r = distributed::runWorker(opt);
  out << "tasklet rank " << r.rank << " (stage " << r.stage << ", replica " << r.replica
      << "): " << r.steps_done << " steps done" << (r.stopped_early ? ", stopped early" : "")
      << "\n";
  return 0;
}

}  // namespace geopipe::cli
