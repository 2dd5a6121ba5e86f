// Builds and validates the dense latency / bandwidth matrices of a topology.
#include "scheduler/network.h"

#include <cmath>

#include "geopipe/error.h"

namespace geopipe::scheduler {
namespace {

// The topology parser's limit (src/config/topology_parser.cc, kMaxDevices):
// 4096 devices take about 0.7 GB to plan, 16384 took 8.5 GB.
constexpr int kMaxNetworkDevices = 4096;

}  // namespace

Network::Network(const TopologySpec& topology) : topology_(topology) {
  n_ = topology_.numDevices();
  const int sites = topology_.numSites();
  const std::string where =
      topology_.source.empty() ? std::string("topology")
                               : "topology " + topology_.source;
  GEOPIPE_CHECK(n_ > 0, ConfigError, where,
                ": lists no devices; add at least one site with devices");
  // The matrices below are n x n: 65536 devices would need 64 GiB and ended
  // `plan` in bad_alloc (exit 70). The topology parser refuses more than
  // this already; a TopologySpec built in C++ meets the same limit here.
  GEOPIPE_CHECK(n_ <= kMaxNetworkDevices, ConfigError, where, ": has ", n_,
                " devices; the scheduler places jobs on at most ", kMaxNetworkDevices,
                " (its latency and bandwidth matrices are devices x devices)");
  GEOPIPE_CHECK(static_cast<int>(topology_.site_links.size()) == sites,
                ConfigError, where, ": site_links has ",
                topology_.site_links.size(), " rows for ", sites, " sites");
  for (int a = 0; a < sites; ++a) {
    GEOPIPE_CHECK(static_cast<int>(topology_.site_links[a].size()) == sites,
                  ConfigError, where, ": site_links row of site '",
                  topology_.sites[a].name, "' has ",
                  topology_.site_links[a].size(), " entries for ", sites,
                  " sites");
  }
  std::vector<int> count(sites, 0);
  for (int d = 0; d < n_; ++d) {
    const DeviceSpec& dev = topology_.devices[d];
    GEOPIPE_CHECK(dev.site >= 0 && dev.site < sites, ConfigError, where,
                  ": device ", d, " ('", dev.name, "') names site ", dev.site,
                  " but there are ", sites, " sites");
    GEOPIPE_CHECK(dev.tflops > 0 && std::isfinite(dev.tflops), ConfigError,
                  where, ": device ", d, " ('", dev.name,
                  "') has tflops = ", dev.tflops, "; expected > 0");
    GEOPIPE_CHECK(dev.memory_gb > 0 && std::isfinite(dev.memory_gb),
                  ConfigError, where, ": device ", d, " ('", dev.name,
                  "') has memory_gb = ", dev.memory_gb, "; expected > 0");
    ++count[dev.site];
  }
  for (int a = 0; a < sites; ++a) {
    for (int b = 0; b < sites; ++b) {
      if (count[a] == 0 || count[b] == 0) continue;
      if (a == b && count[a] < 2) continue;  // intra link never used
      const LinkSpec& l = topology_.site_links[a][b];
      const std::string what =
          a == b ? "the intra-site link of '" + topology_.sites[a].name + "'"
                 : "the link '" + topology_.sites[a].name + "' -> '" +
                       topology_.sites[b].name + "'";
      GEOPIPE_CHECK(std::isfinite(l.bandwidth_gbps) && l.bandwidth_gbps > 0,
                    InfeasibleError, where, ": ", what, " has bandwidth ",
                    l.bandwidth_gbps,
                    " Gbps, so these devices are disconnected; give it a "
                    "positive bandwidth_gbps or remove the site");
      GEOPIPE_CHECK(std::isfinite(l.duplex_bandwidth_gbps) && l.duplex_bandwidth_gbps >= 0,
                    ConfigError, where, ": ", what, " has duplex_bandwidth_gbps ",
                    l.duplex_bandwidth_gbps, "; expected >= 0 (0: the same as bandwidth_gbps)");
      GEOPIPE_CHECK(std::isfinite(l.latency_ms) && l.latency_ms >= 0,
                    ConfigError, where, ": ", what, " has latency ",
                    l.latency_ms, " ms; expected >= 0");
    }
  }
  latency_s_.setZero(n_, n_);
  inv_bw_.setZero(n_, n_);
  inv_exchange_bw_.setZero(n_, n_);
  for (int i = 0; i < n_; ++i) {
    for (int j = 0; j < n_; ++j) {
      if (i == j) continue;
      const LinkSpec& l = topology_.link(i, j);
      latency_s_(i, j) = l.latency_ms / 1000.0;
      inv_bw_(i, j) = 1.0 / l.bandwidth_gbps;
      inv_exchange_bw_(i, j) = 1.0 / l.exchangeGbps();
    }
  }
}

}  // namespace geopipe::scheduler
