// Which devices a generation is planned over: the previous plan is kept when
// it covers every named device, the whole topology when nobody named one,
// else the named devices topped up (the topology cut down to them:
// tests/scheduler/replan_test.cc).
#include "src/distributed/generation_plan.h"

#include <gtest/gtest.h>

namespace geopipe::distributed {
namespace {

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

}  // namespace
}  // namespace geopipe::distributed
