// `geopipe worker --coordinator HOST:PORT`: one tasklet of a multi-process
// job (started by `geopipe launch`, or by hand / srun on each host).
#include <filesystem>
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
  app.add_option("--advertise", args.advertise,
                 "HOST or HOST:PORT peers dial to reach this worker, when not --listen's (a NAT "
                 "port forward, another interface); --listen may give a port range LOW-HIGH");
  app.add_flag("--relay", args.relay,
               "this worker accepts no connections (NAT without a port forward): it dials out, "
               "and its peers reach it through the coordinator's relay (coordinator --relay); "
               "needs --device NAME; --advertise NAME: the name in its certificate (default: "
               "the host name)");
  app.add_option("--device-spec", args.device_spec,
                 "gpu=NAME,tflops=T,memory_gb=G (each optional): this device's hardware, "
                 "replacing the topology's entry for the --device named (its links stay the "
                 "topology's)");
  addHostSecurityOptions(app, args.security);
  app.add_option("--plugin", args.plugin,
                 "this host's copy of the job's model plugin, when it is not at the job's "
                 "model.plugin path");
  app.add_option("--threads", args.threads,
                 "LibTorch threads (0: the host's cores / the tasklets placed on this host)")
      ->capture_default_str();
  app.add_option("--timeout", args.timeout, "seconds to wait for a peer's message")
      ->capture_default_str();
}

void addHostSecurityOptions(CLI::App& app, distributed::WorkerSecurityArgs& args) {
  app.add_option("--ca", args.ca, "PEM CA certificate the job's hosts are signed by (security.ca)");
  app.add_option("--cert", args.cert, "this host's PEM certificate (from geopipe certs)");
  app.add_option("--key", args.key, "its PEM private key (mode 600)");
  app.add_option("--token-file", args.token_file,
                 "file holding the job's join token (default: $GEOPIPE_JOB_TOKEN)");
  app.add_flag("--insecure", args.insecure,
               "plaintext gRPC, for a job with security.insecure (loopback addresses only)");
  app.add_flag("--allow-insecure-remote", args.allow_insecure_remote,
               "with --insecure: allow plaintext on addresses that are not loopback");
}

int runWorkerCommand(const WorkerArgs& args, std::ostream& out) {
  distributed::WorkerOptions opt;
  opt.coordinator = args.coordinator;
  opt.device = args.device;
  opt.listen = args.listen;
  opt.advertise = args.advertise;
  opt.relay = args.relay;
  opt.device_spec = args.device_spec;
  opt.security = distributed::workerSecurity(args.security);
  opt.threads = args.threads;
  opt.timeout_seconds = args.timeout;
  if (!args.plugin.empty()) {
    opt.plugin = std::filesystem::absolute(args.plugin).lexically_normal().string();
  }
  const distributed::WorkerResult r = distributed::runWorker(opt);
  if (r.spare_unused) {
    out << "idle spare: the job ended without needing this worker\n";
    return 0;
  }
  out << "tasklet rank " << r.rank << " (stage " << r.stage << ", replica " << r.replica
      << "): " << r.steps_done << " steps done" << (r.stopped_early ? ", stopped early" : "")
      << "\n";
  return 0;
}

}  // namespace geopipe::cli
