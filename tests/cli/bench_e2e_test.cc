// `geopipe bench e2e`'s prediction beside each measured step: the allocation
// of a run's placement, and the cost model calibrated so that its compute
// term is the compute measured on this machine (a fake timing here).
#include <gtest/gtest.h>

#include <cmath>

#include "src/cli/bench_e2e.h"
#include "src/config/job_parser.h"

namespace geopipe::cli {
namespace {

// 2 stages x 2 replicas over two regions joined by a slow link.
JobSpec twoRegionJob() {
  return config::parseJobString(R"(
name: calibration
model: {preset: tiny}
data: {kind: synthetic, num_samples: 64}
training: {global_batch: 8, micro_batch: 2}
parallelism: {pipeline_stages: 2, data_parallel: 2}
topology:
  sites:
    - {name: west, devices: 2, intra: {latency_ms: 0.1, bandwidth_gbps: 10}}
    - {name: east, devices: 2, intra: {latency_ms: 0.1, bandwidth_gbps: 10}}
  links: [{sites: [west, east], latency_ms: 10, bandwidth_gbps: 0.1}]
transport: {emulate_links: true}
)",
                                "<test>", "");
}

TEST(BenchE2e, AllocationOfAPlacement) {
  const JobSpec job = twoRegionJob();
  // Tasklet (s, r) runs on device_of_rank[r * S + s].
  const auto a = allocationOf(job, {3, 0, 1, 2}, {1, 3});
  EXPECT_EQ(a.d_pp, 2);
  EXPECT_EQ(a.d_dp, 2);
  EXPECT_EQ(a.stages, (std::vector<std::vector<int>>{{3, 1}, {0, 2}}));
  EXPECT_EQ(a.layers, (std::vector<std::pair<int, int>>{{0, 1}, {1, 4}}));
}

// Calibration sets one TFLOPS figure per shape so that the model's compute
// term equals the measured compute, whatever that is; the network terms do
// not depend on it, so the prediction moves by exactly the compute.
TEST(BenchE2e, CalibrationMakesTheComputeTermTheMeasuredOne) {
  const JobSpec job = twoRegionJob();
  const auto alloc = allocationOf(job, {0, 2, 1, 3}, {2, 2});
  const auto uncalibrated = calibratedEvaluation(job, alloc, 0);  // 1 TFLOPS everywhere
  ASSERT_TRUE(uncalibrated.feasible) << uncalibrated.infeasible_reason;
  ASSERT_GT(uncalibrated.breakdown.compute_s, 0);
  for (double measured : {0.002, 0.05, 1.5}) {
    const auto e = calibratedEvaluation(job, alloc, measured);
    ASSERT_TRUE(e.feasible) << e.infeasible_reason;
    EXPECT_NEAR(e.breakdown.compute_s, measured, 1e-9 * measured) << measured;
    EXPECT_DOUBLE_EQ(e.total_s, e.breakdown.total());
    EXPECT_GT(e.breakdown.pipeline_comm_s + e.breakdown.dp_comm_s, 0)
        << "the 100 Mbps link between the regions costs time";
    EXPECT_GE(e.total_s, measured);
  }
}

}  // namespace
}  // namespace geopipe::cli
