// Choosing a transport by the job spec's `transport.kind` name, and wrapping
// it in the link emulator when the job asks for it.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "geopipe/job_spec.h"
#include "src/transport/link_emulator.h"
#include "src/transport/transport.h"

namespace geopipe::transport {

class InprocHub;

// What makeTransport needs to build one rank's endpoint. Each kind reads
// the fields marked with its name and ignores the rest.
struct TransportOptions {
  // The rank this endpoint belongs to.
  int rank = 0;
  // inproc: the hub shared by the process's ranks (required).
  std::shared_ptr<InprocHub> hub;
  // grpc: every rank's peer-service address ("host:port"), indexed by rank;
  // its size is the world size (required). An empty entry is a peer whose
  // address is not known yet (GrpcTransport::setPeerAddress).
  std::vector<std::string> addresses;
  // grpc: where this rank's peer service listens ("host:port"; port 0 picks
  // a free port); empty: addresses[rank].
  std::string listen_address;
  // grpc: the job's token; a peer with a different one is refused ("peer X
  // belongs to job Y"). Empty is a valid token, shared by every empty one.
  std::string job_token;
  // grpc: how long a broken link may take to resume (GrpcTransportOptions::
  // link_grace); zero: it fails at once. makeTransportForJob sets it from
  // fault_tolerance.link_grace.
  Duration link_grace{0};
  // nccl: this rank's CUDA device (-1: rank % visible devices) and every
  // rank's site (ranks of one site talk NCCL; empty: one site).
  // makeTransportForJob fills site_of_rank from the topology.
  int cuda_device = -1;
  std::vector<int> site_of_rank;
};

// Builds one rank's endpoint of a registered transport kind.
using TransportMaker = std::function<std::shared_ptr<Transport>(const TransportOptions&)>;

// Registers (or replaces) transport kind `kind`. "inproc" is built in; the
// geopipe_transport_grpc target registers "grpc" from a static initializer
// compiled into every binary that links it (see src/transport/CMakeLists.txt),
// so code that only links geopipe_transport never pulls in gRPC. Thread-safe.
void registerTransportKind(const std::string& kind, TransportMaker maker);

// The transport kind `kind` ("inproc" | "grpc" | "nccl") for one rank.
// "grpc" works when geopipe_transport_grpc is linked into the binary, else
// it throws InfeasibleError "transport grpc is not linked into this
// binary"; "nccl" throws InfeasibleError "transport nccl is not built
// yet"; any other name throws ConfigError listing the known kinds.
std::shared_ptr<Transport> makeTransport(const std::string& kind, const TransportOptions& options);

// Kinds that layer over a rank's cross-site transport (nccl: NCCL inside a
// site, `inner` across sites) register a wrapper; worker processes build
// their gRPC endpoint and hand it to wrapTransport(job.transport.kind, ...).
using TransportWrapper = std::function<std::shared_ptr<Transport>(std::shared_ptr<Transport> inner,
                                                                  const TransportOptions&)>;
void registerTransportWrapper(const std::string& kind, TransportWrapper wrapper);
// `inner` wrapped for `kind`; `inner` itself for kinds without a wrapper
// (grpc, inproc). "nccl" without the NCCL transport linked in throws
// InfeasibleError saying how to build it.
std::shared_ptr<Transport> wrapTransport(const std::string& kind, std::shared_ptr<Transport> inner,
                                         const TransportOptions& options);

// makeTransport for spec.transport.kind, wrapped in a LinkEmulatingTransport
// with the topology's links (rank r on device rank_to_device[r], or device
// r when empty) and the spec's scales when spec.transport.emulate_links.
std::shared_ptr<Transport> makeTransportForJob(const JobSpec& spec, const TransportOptions& options,
                                               const std::vector<int>& rank_to_device = {});

}  // namespace geopipe::transport
