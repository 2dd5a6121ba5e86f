#include "scheduler/relayed_links.h"

#include <algorithm>
#include <string>

#include "geopipe/error.h"

namespace geopipe::scheduler {
namespace {

const char* const kRelayedSuffix = " (relayed)";

// Two links one after the other: latencies add, the slower one limits.
LinkSpec chain(const LinkSpec& first, const LinkSpec& second) {
  LinkSpec l;
  l.latency_ms = first.latency_ms + second.latency_ms;
  l.bandwidth_gbps = std::min(first.bandwidth_gbps, second.bandwidth_gbps);
  if (first.duplex_bandwidth_gbps > 0 || second.duplex_bandwidth_gbps > 0)
    l.duplex_bandwidth_gbps = std::min(first.exchangeGbps(), second.exchangeGbps());
  return l;
}

bool endsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

bool relayIncomingLinks(TopologySpec& t, int device, int relay_site) {
  GEOPIPE_CHECK(device >= 0 && device < t.numDevices(), ConfigError, "relayed device ", device,
                " is not in the topology's ", t.numDevices(), " devices");
  GEOPIPE_CHECK(relay_site >= 0 && relay_site < t.numSites(), ConfigError, "relay site ",
                relay_site, " is not in the topology's ", t.numSites(), " sites");
  const int old_site = t.devices[static_cast<size_t>(device)].site;
  if (endsWith(t.sites[static_cast<size_t>(old_site)].name, kRelayedSuffix)) return false;
  const auto link = [&](int a, int b) -> LinkSpec& {
    return t.site_links[static_cast<size_t>(a)][static_cast<size_t>(b)];
  };
  const LinkSpec relay_to_device = link(relay_site, old_site);
  const int n = t.numSites();
  int x = old_site;  // the device's own site: its old one when it was alone there
  if (t.sites[static_cast<size_t>(old_site)].devices.size() > 1) {
    SiteSpec& from = t.sites[static_cast<size_t>(old_site)];
    from.devices.erase(std::remove(from.devices.begin(), from.devices.end(), device),
                       from.devices.end());
    SiteSpec own;
    own.name = from.name;
    own.intra = from.intra;
    own.devices = {device};
    t.sites.push_back(own);
    x = n;
    t.devices[static_cast<size_t>(device)].site = x;
    for (auto& row : t.site_links) row.emplace_back();
    t.site_links.emplace_back(static_cast<size_t>(n + 1));
    for (int y = 0; y < n; ++y) link(x, y) = link(old_site, y);
    link(x, x) = own.intra;
  }
  t.sites[static_cast<size_t>(x)].name += kRelayedSuffix;
  for (int y = 0; y < t.numSites(); ++y) {
    if (y != x) link(y, x) = chain(link(y, relay_site), relay_to_device);
  }
  return true;
}

}  // namespace geopipe::scheduler
