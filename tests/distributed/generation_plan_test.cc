// Which devices a generation is planned over, and the topology cut down to
// them: the previous plan is kept when it covers every named device, the
// whole topology when nobody named one, else the named devices topped up.
#include "src/distributed/generation_plan.h"

#include <gtest/gtest.h>

namespace geopipe::distributed {
namespace {

// Sites a (devices 0, 1), b (2), c (3, 4); the link a -> c is distinct.
TopologySpec threeSites() {
  TopologySpec t;
  t.name = "three";
  t.sites = {{"a", {1, 10}, {0, 1}}, {"b", {2, 20}, {2}}, {"c", {3, 30}, {3, 4}}};
  const int site_of[] = {0, 0, 1, 2, 2};
  for (int d = 0; d < 5; ++d) {
    DeviceSpec dev;
    dev.name = "dev" + std::to_string(d);
    dev.site = site_of[d];
    t.devices.push_back(dev);
  }
  t.site_links.assign(3, std::vector<LinkSpec>(3));
  for (int a = 0; a < 3; ++a)
    for (int b = 0; b < 3; ++b) t.site_links[a][b] = {double(10 * a + b), 1.0};
  return t;
}

TEST(GenerationPlan, TheFirstGenerationPlansOverTheNamedDevicesToppedUpWithTheLowest) {
  EXPECT_EQ(planDevices({3}, 5, 3, nullptr).devices, (std::vector<int>{0, 1, 3}));
  EXPECT_EQ(planDevices({4, 1}, 5, 2, nullptr).devices, (std::vector<int>{1, 4}));
  EXPECT_FALSE(planDevices({3}, 5, 3, nullptr).reuse);
  // Nobody named a device, or the topology lists none: the whole topology.
  EXPECT_TRUE(planDevices({}, 5, 3, nullptr).devices.empty());
  EXPECT_TRUE(planDevices({1}, 0, 3, nullptr).devices.empty());
}

TEST(GenerationPlan, ALaterGenerationKeepsThePreviousPlanWhenItCoversTheNamedDevices) {
  const std::vector<int> previous = {4, 2, 0};
  EXPECT_TRUE(planDevices({}, 5, 3, &previous).reuse);
  EXPECT_TRUE(planDevices({2, 4}, 5, 3, &previous).reuse);
  // A device the previous plan did not use, or another world size: replan.
  const DevicePlan moved = planDevices({1}, 5, 3, &previous);
  EXPECT_FALSE(moved.reuse);
  EXPECT_EQ(moved.devices, (std::vector<int>{0, 1, 2}));
  EXPECT_FALSE(planDevices({2}, 5, 2, &previous).reuse);
}

TEST(GenerationPlan, TheSubTopologyKeepsTheDevicesSitesAndLinksInOrder) {
  const TopologySpec t = threeSites();
  const TopologySpec s = subTopology(t, {1, 3, 4});
  EXPECT_EQ(s.name, "three");
  ASSERT_EQ(s.numDevices(), 3);
  ASSERT_EQ(s.numSites(), 2);  // site b has no kept device
  EXPECT_EQ(s.devices[0].name, "dev1");
  EXPECT_EQ(s.devices[2].name, "dev4");
  EXPECT_EQ(s.devices[0].site, 0);
  EXPECT_EQ(s.devices[1].site, 1);
  EXPECT_EQ(s.sites[0].name, "a");
  EXPECT_EQ(s.sites[1].name, "c");
  EXPECT_EQ(s.sites[0].devices, (std::vector<int>{0}));
  EXPECT_EQ(s.sites[1].devices, (std::vector<int>{1, 2}));
  EXPECT_EQ(s.sites[1].intra.latency_ms, 3);
  // a -> c was site_links[0][2] and c -> a site_links[2][0].
  EXPECT_EQ(s.link(0, 1).latency_ms, 2);
  EXPECT_EQ(s.link(1, 0).latency_ms, 20);
  EXPECT_EQ(s.site_links[1][1].latency_ms, 22);
}

}  // namespace
}  // namespace geopipe::distributed
