// probeLinks over the link emulator, whose links are known: the measured
// latency, bandwidth and duplex bandwidth of every directed link are the
// emulated ones, and the topology written from them reads back with those
// links.
#include <gtest/gtest.h>

#include <cmath>
#include <mutex>

#include "src/config/topology_parser.h"
#include "src/transport/probe.h"
#include "tests/transport/world.h"

namespace geopipe::transport::testing {
namespace {

// Asymmetric links: 50 ms + 25 ms per hop of rank distance one way, and
// 40 Mbit/s times (1 + source rank), so every direction differs; while the
// reverse direction sends too, (0.5 + 0.1 x destination rank) of that (the
// emulator sends the exchange's channel at that rate; a topology allows at
// most the one-way rate). Latencies this long
// keep a loaded machine's scheduling delay (a few ms per round trip, seen
// in CI) inside the bounds.
LinkSpec knownLink(int src, int dst) {
  const double gbps = 0.04 * (1 + src);
  return LinkSpec{50.0 + 25.0 * std::abs(src - dst), gbps, gbps * (0.5 + 0.1 * dst)};
}

// Latency within 10%, bandwidth within 15%: on a loaded CI machine the
// fastest link (120 Mbit/s) once measured 15% low with 256 KiB transfers.
TEST(Probe, MeasuresEveryDirectedLinkOfTheEmulatorWithinItsBounds) {
  World world = makeWorld(Kind::EMULATED, 3, knownLink);
  ProbeOptions o;
  o.pings = 5;
  o.bulk_bytes = 2 << 20;
  std::mutex mu;
  std::vector<LinkMeasurement> found;
  spawn(world, [&](Transport& t) {
    auto links = probeLinks(t, o);
    std::lock_guard<std::mutex> lock(mu);
    if (t.rank() == 0) {
      found = links;
    } else {
      EXPECT_TRUE(links.empty()) << "only rank 0 gets the results";
    }
  });
  ASSERT_EQ(found.size(), 6u);
  for (const auto& m : found) {
    const LinkSpec want = knownLink(m.from, m.to);
    EXPECT_NEAR(m.latency_ms, want.latency_ms, 0.1 * want.latency_ms) << m.from << " -> " << m.to;
    EXPECT_NEAR(m.bandwidth_gbps, want.bandwidth_gbps, 0.15 * want.bandwidth_gbps)
        << m.from << " -> " << m.to;
    EXPECT_NEAR(m.duplex_bandwidth_gbps, want.duplex_bandwidth_gbps,
                0.15 * want.duplex_bandwidth_gbps)
        << m.from << " -> " << m.to << " both ways at once";
  }
  // The topology it writes is one the scheduler reads, with those links.
  const std::string yaml = topologyYamlFromProbe("probed", {"a", "b", "c"}, found, "two\nlines");
  EXPECT_EQ(yaml.rfind("# two\n# lines\n", 0), 0u) << yaml;
  const TopologySpec topo = config::parseTopologyString(yaml, "probed.yaml");
  ASSERT_EQ(topo.numDevices(), 3);
  for (const auto& m : found) {
    const LinkSpec& l = topo.site_links[static_cast<size_t>(m.from)][static_cast<size_t>(m.to)];
    EXPECT_NEAR(l.latency_ms, m.latency_ms, 0.01) << yaml;
    EXPECT_NEAR(l.bandwidth_gbps, m.bandwidth_gbps, 0.01 * m.bandwidth_gbps) << yaml;
    EXPECT_NEAR(l.duplex_bandwidth_gbps, m.duplex_bandwidth_gbps, 0.01 * m.duplex_bandwidth_gbps)
        << yaml;
  }
}

}  // namespace
}  // namespace geopipe::transport::testing
