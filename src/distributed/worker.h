// A worker process's life: join the coordinator, learn its tasklet, build
// it over the gRPC transport (behind the link emulator when the job asks),
// train, report every step and checkpoint, stop when told or at the end.
// Torch-free header.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>

#include "src/distributed/security.h"

namespace geopipe::distributed {

struct WorkerOptions {
  // The coordinator's address ("host:port").
  std::string coordinator;
  // The topology device this worker is: a name, an index, or "any" (the
  // coordinator picks).
  std::string device = "any";
  // Where this worker's peer service listens ("host:port"; port 0 picks a
  // free one). A specific host is what peers connect to; with 0.0.0.0 peers
  // use the address the coordinator sees this worker connect from.
  std::string listen = "0.0.0.0:0";
  // Where peers reach this worker when that is not where it listens (a NAT
  // port forward, another interface): "HOST" (with the bound port) or
  // "HOST:PORT". Empty: --listen's host (or the address the coordinator
  // sees) and the bound port. The listen port may be a range "LOW-HIGH"
  // (the first free one), so a firewall can be opened for it beforehand.
  std::string advertise;
  // `--relay`: this worker accepts no connections (behind NAT without a port
  // forward, or a firewall that lets nothing in). It dials out to its peers
  // and its peers reach it through the coordinator's relay
  // (src/transport/grpc/relay.h), which the coordinator must run (--relay).
  // Needs a named device; `listen` must stay the default, and `advertise`
  // may only give the name peers check its certificate for (default: this
  // host's name).
  bool relay = false;
  // How the links to the coordinator and the peers are secured (mutual TLS
  // with this host's certificate, or loopback plaintext) and the job's join
  // token (workerSecurity reads both from the worker's flags).
  JobSecurity security;
  // `--device-spec`: "gpu=NAME,tflops=T,memory_gb=G" (each optional), the
  // hardware of the named device, replacing the topology's entry (the
  // links stay the topology's). Empty: the topology's. Needs a named device.
  std::string device_spec;
  // This host's copy of the job's model plugin (model.plugin), when it is
  // not at the job's path (resolved against the job file's directory, as
  // data.path). Empty: the job's.
  std::string plugin;
  // LibTorch intra-op threads; 0 = every core of this host.
  int threads = 0;
  // The coordinator unreachable for this long (no reply to a heartbeat or
  // report) ends the worker with IoError: the job is gone. Once placed, the
  // coordinator's heartbeat timeout (fault_tolerance.heartbeat_timeout)
  // replaces it, and heartbeats go out five times per timeout (at most 1 s
  // apart).
  std::chrono::milliseconds coordinator_timeout{30000};
  // Longest wait to be placed after joining; 0 waits as long as it takes
  // for every worker to join.
  std::chrono::milliseconds join_timeout{0};
  // Longest wait for a peer's message before the step fails.
  int timeout_seconds = 300;
  // One-line progress events (joined, placed, connected, checkpoint, done).
  std::function<void(const std::string&)> on_event;
};

struct WorkerResult {
  int rank = -1;
  int stage = -1;
  int replica = -1;
  int64_t first_step = 0;      // > 0 when resumed
  int64_t steps_done = 0;      // steps this run executed (recomputed ones included)
  bool stopped_early = false;  // the coordinator stopped the job before its end
  int recoveries = 0;          // generations this worker left to regroup
  bool spare_unused = false;   // an idle spare the job ended without needing
};

// Runs one worker to the end. When another tasklet fails and the job
// recovers, the worker drops its tasklet, registers again and continues in
// the next generation from the last committed checkpoint. Throws the
// tasklet's failure (after telling the coordinator): ConfigError for a
// wrong device / job, ProtocolError for a coordinator of another version,
// IoError / TimeoutError for peers, IoError "lost the coordinator: ..."
// when it stops answering, and IoError "aborted by the coordinator: ..."
// when another tasklet failed and the job ends.
WorkerResult runWorker(const WorkerOptions& options);

// --listen "HOST:PORT" or "HOST:LOW-HIGH": the host and the ports to try, in
// order. ConfigError naming --listen for anything else.
struct ListenPorts {
  std::string host;
  int low = 0, high = 0;
};
ListenPorts parseListen(const std::string& listen);
// --advertise "HOST" or "HOST:PORT" (port 0: none given). ConfigError naming
// --advertise for anything else.
std::pair<std::string, int> parseAdvertise(const std::string& advertise);

}  // namespace geopipe::distributed
