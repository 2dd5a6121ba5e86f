// relayIncomingLinks: a relayed device's links as the relay makes them.
#include "scheduler/relayed_links.h"

#include <gtest/gtest.h>

#include "geopipe/error.h"

namespace geopipe::scheduler {
namespace {

// Sites A (devices 0, 1), B (device 2), H (device 3, the relay's site).
TopologySpec threeSites() {
  TopologySpec t;
  t.sites = {{"A", {0.1, 100}, {0, 1}}, {"B", {0.1, 100}, {2}}, {"H", {0.1, 50}, {3}}};
  for (int d = 0; d < 4; ++d) {
    DeviceSpec dev;
    dev.name = "d" + std::to_string(d);
    dev.site = d < 2 ? 0 : d - 1;
    t.devices.push_back(dev);
  }
  t.site_links.assign(3, std::vector<LinkSpec>(3));
  for (int a = 0; a < 3; ++a) t.site_links[a][a] = t.sites[a].intra;
  t.site_links[0][1] = {10, 1.0};  // A -> B
  t.site_links[1][0] = {11, 2.0};  // B -> A
  t.site_links[0][2] = {5, 0.5};   // A -> H
  t.site_links[2][0] = {6, 0.25};  // H -> A
  t.site_links[1][2] = {20, 4.0};  // B -> H
  t.site_links[2][1] = {21, 3.0};  // H -> B
  return t;
}

void expectLink(const LinkSpec& l, double latency_ms, double gbps) {
  EXPECT_DOUBLE_EQ(l.latency_ms, latency_ms);
  EXPECT_DOUBLE_EQ(l.bandwidth_gbps, gbps);
}

TEST(RelayedLinks, IncomingLinksGoThroughTheRelayAndOutgoingStayDirect) {
  TopologySpec t = threeSites();
  EXPECT_TRUE(relayIncomingLinks(t, 1, 2));
  ASSERT_EQ(t.numSites(), 4);
  EXPECT_EQ(t.devices[1].site, 3);
  EXPECT_EQ(t.sites[3].name, "A (relayed)");
  EXPECT_EQ(t.sites[0].devices, std::vector<int>{0});
  // Out of device 1: as before.
  expectLink(t.link(1, 2), 10, 1.0);
  expectLink(t.link(1, 0), 0.1, 100);
  // Into device 1: to the relay, then H -> A.
  expectLink(t.link(2, 1), 20 + 6, 0.25);   // B -> H -> A
  expectLink(t.link(0, 1), 5 + 6, 0.25);    // A -> H -> A, even from its own site
  expectLink(t.link(3, 1), 0.1 + 6, 0.25);  // H's LAN, then H -> A
  // Links between the others are unchanged.
  expectLink(t.link(0, 2), 10, 1.0);
  expectLink(t.link(2, 0), 11, 2.0);
}

TEST(RelayedLinks, TwoRelayedDevicesTalkSenderRelayReceiver) {
  TopologySpec t = threeSites();
  EXPECT_TRUE(relayIncomingLinks(t, 2, 2));  // alone in B: B itself becomes relayed
  EXPECT_TRUE(relayIncomingLinks(t, 0, 2));
  EXPECT_EQ(t.numSites(), 4);
  EXPECT_EQ(t.sites[1].name, "B (relayed)");
  expectLink(t.link(2, 0), 20 + 6, 0.25);  // B -> H -> A
  expectLink(t.link(0, 2), 5 + 21, 0.5);   // A -> H -> B
  expectLink(t.link(1, 2), 5 + 21, 0.5);   // an unrelayed sender: also via H
  // Relaying a device twice changes nothing.
  const TopologySpec before = t;
  EXPECT_FALSE(relayIncomingLinks(t, 0, 2));
  EXPECT_EQ(t.numSites(), before.numSites());
  expectLink(t.link(2, 0), 26, 0.25);
}

TEST(RelayedLinks, RefusesIndicesOutsideTheTopology) {
  TopologySpec t = threeSites();
  EXPECT_THROW(relayIncomingLinks(t, 4, 0), ConfigError);
  EXPECT_THROW(relayIncomingLinks(t, 0, 3), ConfigError);
}

}  // namespace
}  // namespace geopipe::scheduler
