// makeTransport: transport kinds by name, from a registry that inproc is
// built into and that optional targets (geopipe_transport_grpc) add to.
#include "src/transport/factory.h"

#include <map>
#include <mutex>

#include "geopipe/error.h"
#include "src/transport/inproc/inproc_transport.h"

namespace geopipe::transport {

namespace {

std::shared_ptr<Transport> makeInproc(const TransportOptions& options) {
  GEOPIPE_CHECK(options.hub != nullptr, Error,
                "makeTransport(\"inproc\"): TransportOptions::hub is required (one InprocHub "
                "shared by every rank of the process)");
  return std::make_shared<InprocTransport>(options.hub, options.rank);
}

// The registry; a function-local static so that registrations from static
// initializers of other translation units find it constructed.
struct Registry {
  std::mutex mu;
  std::map<std::string, TransportMaker> makers{{"inproc", makeInproc}};
  std::map<std::string, TransportWrapper> wrappers;
};
Registry& registry() {
  static Registry instance;
  return instance;
}

}  // namespace

void registerTransportKind(const std::string& kind, TransportMaker maker) {
  GEOPIPE_CHECK(!kind.empty() && maker, Error, "registerTransportKind: empty kind or maker");
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.makers[kind] = std::move(maker);
}

std::shared_ptr<Transport> makeTransport(const std::string& kind, const TransportOptions& options) {
  TransportMaker maker;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = r.makers.find(kind);
    if (it != r.makers.end()) maker = it->second;
  }
  if (maker) return maker(options);
  if (kind == "grpc") {
    GEOPIPE_THROW(InfeasibleError,
                  "transport grpc is not linked into this binary; link the CMake target "
                  "geopipe_transport_grpc (src/transport/grpc/) or use transport.kind: inproc");
  }
  if (kind == "nccl") {
    GEOPIPE_THROW(InfeasibleError,
                  "transport nccl is not built into this binary: configure with CUDA and NCCL "
                  "(cmake -DGEOPIPE_WITH_CUDA=ON, see docs/gpu.md) or use transport.kind: grpc");
  }
  GEOPIPE_THROW(ConfigError, "unknown transport kind '", kind, "'; expected inproc, grpc or nccl");
}

void registerTransportWrapper(const std::string& kind, TransportWrapper wrapper) {
  GEOPIPE_CHECK(!kind.empty() && wrapper, Error, "registerTransportWrapper: empty kind or wrapper");
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.wrappers[kind] = std::move(wrapper);
}

std::shared_ptr<Transport> wrapTransport(const std::string& kind, std::shared_ptr<Transport> inner,
                                         const TransportOptions& options) {
  TransportWrapper wrapper;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = r.wrappers.find(kind);
    if (it != r.wrappers.end()) wrapper = it->second;
  }
  if (wrapper) return wrapper(std::move(inner), options);
  if (kind == "nccl") makeTransport(kind, options);  // throws: how to build it
  return inner;
}

std::shared_ptr<Transport> makeTransportForJob(const JobSpec& spec, const TransportOptions& options,
                                               const std::vector<int>& rank_to_device) {
  TransportOptions opts = options;
  opts.link_grace =
      std::chrono::milliseconds(static_cast<int64_t>(spec.fault_tolerance.link_grace * 1000));
  if (opts.site_of_rank.empty() && spec.transport.kind == "nccl") {
    const int world = static_cast<int>(rank_to_device.empty() ? spec.topology.devices.size()
                                                              : rank_to_device.size());
    for (int r = 0; r < world; ++r) {
      const int d = rank_to_device.empty() ? r : rank_to_device[static_cast<size_t>(r)];
      opts.site_of_rank.push_back(spec.topology.devices.at(static_cast<size_t>(d)).site);
    }
  }
  auto inner = makeTransport(spec.transport.kind, opts);
  if (!spec.transport.emulate_links) return inner;
  LinkEmulatorOptions emulator;
  emulator.bandwidth_scale = spec.transport.bandwidth_scale;
  emulator.latency_scale = spec.transport.latency_scale;
  return std::make_shared<LinkEmulatingTransport>(
      inner, linksFromTopology(spec.topology, rank_to_device), emulator);
}

}  // namespace geopipe::transport
