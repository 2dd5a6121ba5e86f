// The multi-process commands: `geopipe launch`, `geopipe coordinator`,
// `geopipe worker` and `geopipe bench grpc` (src/distributed/ does the
// work; these parse options, print progress and map failures to exit codes).
#pragma once

#include <CLI/CLI.hpp>

#include "src/distributed/security.h"

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

namespace geopipe::cli {

struct LaunchArgs {
  std::string job;           // job YAML file
  std::optional<int> steps;  // overrides training.steps
  bool resume = false;       // continue from the newest committed checkpoint
  bool overwrite = false;    // clear an earlier run's checkpoints in checkpoint.dir
  std::vector<std::string> overrides;  // --set path=value, applied before checking
  std::string metrics_file;  // overrides logging.metrics_file
  std::string plot_file;     // loss and step-time breakdown as SVG; empty = none
  std::string log_dir;       // workers' logs; empty = a temp directory
  int threads = 0;           // LibTorch threads per worker; 0 = cores / tasklets
  // Overrides fault_tolerance.heartbeat_timeout of the job (seconds).
  std::optional<double> heartbeat_timeout;
  int spares = 0;           // idle spare workers started besides one per tasklet
  bool no_respawn = false;  // a worker killed by a signal is not started again
};
void addLaunchOptions(CLI::App& app, LaunchArgs& args);
// 0 done, 130 interrupted (Ctrl-C), 5 a worker or the coordinator failed.
int runLaunchCommand(const LaunchArgs& args, std::ostream& out);

struct CoordinatorArgs {
  std::string job;                      // job YAML file
  std::string listen = "0.0.0.0:7420";  // where workers reach the coordinator
  std::optional<int> steps;             // overrides training.steps
  bool resume = false;                  // continue from the newest committed checkpoint
  bool overwrite = false;               // clear an earlier run's checkpoints in checkpoint.dir
  std::vector<std::string> overrides;   // --set path=value, applied before checking
  std::string metrics_file;             // overrides logging.metrics_file
  std::string plot_file;                // loss and step-time breakdown as SVG; empty = none
  bool allow_insecure_remote = false;   // plaintext (insecure: true) off loopback
  // Overrides fault_tolerance.heartbeat_timeout of the job (seconds).
  std::optional<double> heartbeat_timeout;
  std::string relay;       // --relay HOST:PORT: the relay for workers that accept nothing
  std::string relay_site;  // --relay-site SITE: the topology site the coordinator runs in
};
void addCoordinatorOptions(CLI::App& app, CoordinatorArgs& args);
int runCoordinatorCommand(const CoordinatorArgs& args, std::ostream& out);

struct WorkerArgs {
  std::string coordinator;             // "host:port" of the coordinator
  std::string device = "any";          // topology device name or index, or any
  std::string listen = "0.0.0.0:0";    // peer service address; port 0 = a free port
  std::string advertise;               // what peers dial, when not --listen's address
  bool relay = false;                  // accepts no connections: peers come through the relay
  distributed::WorkerSecurityArgs security;  // --ca, --cert, --key, --token-file, --insecure
  int threads = 0;                     // LibTorch threads; 0 = every core
  int timeout = 300;                   // seconds to wait for a peer's message
  std::string plugin;                  // this host's copy of the job's model plugin
  std::string device_spec;             // gpu=NAME,tflops=T,memory_gb=G of the named device
};
void addWorkerOptions(CLI::App& app, WorkerArgs& args);
int runWorkerCommand(const WorkerArgs& args, std::ostream& out);
// A host's TLS files and join token, as `worker` and `probe` take them.
void addHostSecurityOptions(CLI::App& app, distributed::WorkerSecurityArgs& args);

struct ProbeArgs {
  int rank = -1;                       // this host's index in --peers
  std::vector<std::string> peers;      // every host's host:port, the same list on every host
  std::vector<std::string> names;      // site names; default host-<rank>
  std::string listen;                  // empty: peers[rank]
  std::string out = "-";               // rank 0 writes the topology here ("-": stdout)
  double megabytes = 4;                // bulk bytes per direction per pair, MiB
  int pings = 20;                      // round trips per direction per pair
  int timeout = 120;                   // seconds per wait (peers start at different times)
  distributed::WorkerSecurityArgs security;  // as `geopipe worker`
};
void addProbeOptions(CLI::App& app, ProbeArgs& args);
int runProbeCommand(const ProbeArgs& args, std::ostream& out);

struct GrpcBenchArgs {
  std::string job;             // job YAML; empty = a built-in tiny GPT job
  int steps = 20;              // timed steps per run (after 2 warm-up steps)
  int stages = 2;              // pipeline stages
  int replicas = 2;            // data-parallel replicas
  std::string device = "cpu";  // training.device; cuda adds an NCCL row
  int rounds = 2;              // every run this many times, interleaved
};
void addGrpcBenchOptions(CLI::App& bench, GrpcBenchArgs& args);
int runGrpcBench(const GrpcBenchArgs& args, std::ostream& out);

struct SoakBenchArgs {
  std::string job;       // job YAML; empty = the built-in tiny GPT with AC-SGD
  int steps = 0;         // 0: 1200 (240 with --quick)
  bool quick = false;    // a short run
  int stages = 2;        // pipeline stages
  int replicas = 2;      // data-parallel replicas
  int sample_ms = 1000;  // RSS sampling interval
  std::string csv;       // also write every sample here
};
void addSoakBenchOptions(CLI::App& bench, SoakBenchArgs& args);
// Exit code 0 when every process's memory is flat and no send failed, 6 if not.
int runSoakBench(const SoakBenchArgs& args, std::ostream& out);

}  // namespace geopipe::cli
