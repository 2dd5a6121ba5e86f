// makeTransport: transport kinds by name; only inproc is built today.
#include "src/transport/factory.h"

#include "geopipe/error.h"
#include "src/transport/inproc/inproc_transport.h"

namespace geopipe::transport {

std::shared_ptr<Transport> makeTransport(const std::string& kind, const TransportOptions& options) {
  if (kind == "inproc") {
    GEOPIPE_CHECK(options.hub != nullptr, Error,
                  "makeTransport(\"inproc\"): TransportOptions::hub is required (one InprocHub "
                  "shared by every rank of the process)");
    return std::make_shared<InprocTransport>(options.hub, options.rank);
  }
  if (kind == "grpc" || kind == "nccl") {
    GEOPIPE_THROW(InfeasibleError, "transport ", kind,
                  " is not built yet; use transport.kind: inproc");
  }
  GEOPIPE_THROW(ConfigError, "unknown transport kind '", kind, "'; expected inproc, grpc or nccl");
}

std::shared_ptr<Transport> makeTransportForJob(const JobSpec& spec, const TransportOptions& options,
                                               const std::vector<int>& rank_to_device) {
  auto inner = makeTransport(spec.transport.kind, options);
  if (!spec.transport.emulate_links) return inner;
  LinkEmulatorOptions emulator;
  emulator.bandwidth_scale = spec.transport.bandwidth_scale;
  emulator.latency_scale = spec.transport.latency_scale;
  return std::make_shared<LinkEmulatingTransport>(
      inner, linksFromTopology(spec.topology, rank_to_device), emulator);
}

}  // namespace geopipe::transport
