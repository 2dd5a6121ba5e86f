// Choosing a transport by the job spec's `transport.kind` name, and wrapping
// it in the link emulator when the job asks for it.
#pragma once

#include <memory>
#include <string>

#include "geopipe/job_spec.h"
#include "src/transport/link_emulator.h"
#include "src/transport/transport.h"

namespace geopipe::transport {

class InprocHub;

// What makeTransport needs to build one rank's endpoint.
struct TransportOptions {
  // The rank this endpoint belongs to.
  int rank = 0;
  // inproc: the hub shared by the process's ranks (required).
  std::shared_ptr<InprocHub> hub;
};

// The transport kind `kind` ("inproc" | "grpc" | "nccl") for one rank.
// Only inproc is built today: "grpc" and "nccl" throw InfeasibleError
// "transport X is not built yet"; any other name throws ConfigError listing
// the known kinds.
std::shared_ptr<Transport> makeTransport(const std::string& kind, const TransportOptions& options);

// makeTransport for spec.transport.kind, wrapped in a LinkEmulatingTransport
// with the topology's links (rank r on device rank_to_device[r], or device
// r when empty) and the spec's scales when spec.transport.emulate_links.
std::shared_ptr<Transport> makeTransportForJob(const JobSpec& spec, const TransportOptions& options,
                                               const std::vector<int>& rank_to_device = {});

}  // namespace geopipe::transport
