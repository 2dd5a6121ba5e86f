// Elastic re-planning: the degraded plan, the warm start, the margin, growth,
// losing every device, and the sub-topology of the live devices.
#include "scheduler/replan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "geopipe/error.h"
#include "test_util.h"

namespace geopipe::scheduler {
namespace {

// 4 sites of 2 devices on fast site links; between sites 1 Gbps and a
// latency of wan_ms + 10 ms per site apart. by_site: site i holds devices
// 2i, 2i+1; else device k is at site k % 4 (listing order interleaves the
// sites, so in-order groups straddle slow links).
TopologySpec fourSites(bool by_site = true, double wan_ms = 10) {
  TopologySpec t;
  t.name = "four-sites";
  for (int i = 0; i < 4; ++i) {
    SiteSpec s;
    s.name = "site" + std::to_string(i);
    s.intra = {0.1, 100};
    t.sites.push_back(s);
  }
  for (int d = 0; d < 8; ++d) {
    DeviceSpec dev;
    dev.site = by_site ? d / 2 : d % 4;
    dev.name = t.sites[static_cast<size_t>(dev.site)].name + "/" + std::to_string(d);
    dev.tflops = 0.2;  // compute matters: one device alone takes ~2 s a step
    dev.memory_gb = 80;
    t.sites[static_cast<size_t>(dev.site)].devices.push_back(d);
    t.devices.push_back(dev);
  }
  t.site_links.assign(4, std::vector<LinkSpec>(4));
  for (int a = 0; a < 4; ++a)
    for (int b = 0; b < 4; ++b)
      t.site_links[static_cast<size_t>(a)][static_cast<size_t>(b)] =
          a == b ? t.sites[static_cast<size_t>(a)].intra
                 : LinkSpec{wan_ms + 10 * std::abs(a - b), 1};
  return t;
}

// The tiny GPT of the scheduler tests (12 layers) on `t`, priced by the
// geopipe model; a global batch of 24 splits over 1, 2, 3, 4, 6 or 8 replicas.
JobSpec tinyGpt(const TopologySpec& t) {
  JobSpec job = testing::smallJob(t, 4, 2, "geopipe");
  job.scheduler.grad_payload_gb.reset();
  job.scheduler.act_payload_gb.reset();
  job.training.global_batch = 24;
  return job;
}

// stage s of replica r on devices[r][s].
CurrentPlan currentPlan(const std::vector<std::vector<int>>& devices) {
  CurrentPlan c;
  c.replicas = static_cast<int>(devices.size());
  c.stages = static_cast<int>(devices[0].size());
  for (const auto& replica : devices)
    c.device_of_rank.insert(c.device_of_rank.end(), replica.begin(), replica.end());
  c.body_per_stage.assign(static_cast<size_t>(c.stages), 12 / c.stages);
  return c;
}

ReplanOptions evaluationsOnly(int64_t evaluations) {
  ReplanOptions o;
  o.budget_seconds = 0;
  o.budget_evaluations = evaluations;
  return o;
}

// The re-plan is a whole plan on live devices: every rank a distinct live
// device, every body layer on one stage.
void expectWellFormed(const ReplanResult& r, const std::vector<int>& live, int layers) {
  ASSERT_GE(r.stages, 1);
  ASSERT_GE(r.replicas, 1);
  ASSERT_EQ(r.device_of_rank.size(), static_cast<size_t>(r.stages * r.replicas));
  const std::set<int> used(r.device_of_rank.begin(), r.device_of_rank.end());
  EXPECT_EQ(used.size(), r.device_of_rank.size()) << "a device holds two ranks";
  for (int d : r.device_of_rank)
    EXPECT_TRUE(std::binary_search(live.begin(), live.end(), d))
        << "device " << d << " is not live";
  ASSERT_EQ(r.body_per_stage.size(), static_cast<size_t>(r.stages));
  int sum = 0;
  for (int b : r.body_per_stage) {
    EXPECT_GE(b, 1);
    sum += b;
  }
  EXPECT_EQ(sum, layers);
  EXPECT_FALSE(r.summary.empty());
  EXPECT_EQ(r.summary.find('\n'), std::string::npos);
}

// Losing both devices of a site: the replica that held them is dropped, the
// other keeps its devices; the re-plan uses the six survivors and is never
// predicted slower than the degraded plan.
TEST(Replan, ASiteLostDropsItsReplicaAndReplansOnTheSurvivors) {
  const JobSpec job = tinyGpt(fourSites());
  // Replica 0 on sites 0 and 1, replica 1 on sites 2 and 3.
  const CurrentPlan current = currentPlan({{0, 1, 2, 3}, {4, 5, 6, 7}});
  const std::vector<int> live = {0, 1, 2, 3, 4, 5};  // site 3 (devices 6, 7) lost
  const ReplanResult r = replan(job, live, current, evaluationsOnly(20000));
  EXPECT_EQ(r.degraded_replicas, 1);
  EXPECT_EQ(r.degraded_device_of_rank, (std::vector<int>{0, 1, 2, 3}));
  ASSERT_TRUE(std::isfinite(r.degraded_s));
  expectWellFormed(r, live, 12);
  EXPECT_LE(r.predicted_s, r.degraded_s);
  EXPECT_EQ(r.commit, r.predicted_s <= 0.9 * r.degraded_s) << r.summary;
  // Six devices instead of four carry the same batch: it pays.
  EXPECT_TRUE(r.commit) << r.summary;
  EXPECT_GE(r.stages * r.replicas, 5) << r.summary;
  EXPECT_FALSE(r.shapes.empty());
  EXPECT_GT(r.evaluations, 0);
  EXPECT_NE(r.summary.find("commit"), std::string::npos) << r.summary;

  // The degraded plan is priced on the live devices alone: a re-plan that
  // lost nothing the replica used prices the same replica the same.
  const ReplanResult r4 = replan(job, {0, 1, 2, 3}, current, evaluationsOnly(2000));
  EXPECT_EQ(r4.degraded_replicas, 1);
  EXPECT_DOUBLE_EQ(r4.degraded_s, r.degraded_s);
}

// With a budget too small to search, the result is the degraded placement
// (or better): the warm start is its shape's first candidate. The first
// seed of every other shape (in-order) puts a stage on the slow device 0,
// so without the warm start this fails.
TEST(Replan, TheWarmStartKeepsATinyBudgetFromLosingToTheDegradedPlan) {
  // Short links: a pipeline across sites is cheap, data parallelism across
  // them (1 Gbps) is not; devices 4-7 are 40 times faster than 0-3.
  TopologySpec t = fourSites(/*by_site=*/false, /*wan_ms=*/0);
  for (int d = 4; d < 8; ++d) t.devices[static_cast<size_t>(d)].tflops = 8;
  const JobSpec job = tinyGpt(t);
  // Replica 0 on the fast devices 4-7 (one per site), replica 1 on 0-3.
  const CurrentPlan current = currentPlan({{4, 5, 6, 7}, {0, 1, 2, 3}});
  const std::vector<int> live = {0, 1, 2, 4, 5, 6, 7};  // device 3 lost
  for (int64_t evaluations : {1, 2, 8, 64}) {
    for (uint64_t seed : {1, 2, 3}) {
      ReplanOptions o = evaluationsOnly(evaluations);
      o.seed = seed;
      const ReplanResult r = replan(job, live, current, o);
      EXPECT_EQ(r.degraded_replicas, 1);
      ASSERT_TRUE(std::isfinite(r.degraded_s));
      expectWellFormed(r, live, 12);
      EXPECT_LE(r.predicted_s, r.degraded_s * (1 + 1e-12))
          << evaluations << " evaluations, seed " << seed << ": " << r.summary;
    }
  }
}

// Two devices join a plan on six: the re-plan uses them when they help by
// more than the margin; a margin of 99% keeps the running plan.
TEST(Replan, JoiningDevicesAreUsedWhenTheyBeatTheMargin) {
  const JobSpec job = tinyGpt(fourSites());
  // 3 stages x 2 replicas on sites 0-2, stage s on site s; site 3 joins.
  const CurrentPlan current = currentPlan({{0, 2, 4}, {1, 3, 5}});
  const std::vector<int> live = {0, 1, 2, 3, 4, 5, 6, 7};
  const ReplanResult r = replan(job, live, current, evaluationsOnly(20000));
  EXPECT_EQ(r.degraded_replicas, 2);  // nothing lost: the running plan
  ASSERT_TRUE(std::isfinite(r.degraded_s));
  expectWellFormed(r, live, 12);
  EXPECT_LE(r.predicted_s, r.degraded_s);
  EXPECT_TRUE(r.commit) << r.summary;
  EXPECT_TRUE(
      std::any_of(r.device_of_rank.begin(), r.device_of_rank.end(), [](int d) { return d >= 6; }))
      << "the joining devices stay idle: " << r.summary;

  ReplanOptions strict = evaluationsOnly(20000);
  strict.margin = 0.99;
  const ReplanResult s = replan(job, live, current, strict);
  EXPECT_FALSE(s.commit) << s.summary;
  EXPECT_LE(s.predicted_s, s.degraded_s);
  EXPECT_NE(s.summary.find("keep"), std::string::npos) << s.summary;

  // Nothing joined and nothing lost: with margin 0 the best plan is the
  // running one, and a plan no faster than it is not committed (a reshard
  // for nothing, at every commit of a job with idle spares).
  const std::vector<int> same = {0, 1, 2, 3, 4, 5};
  ReplanOptions zero = evaluationsOnly(20000);
  zero.margin = 0;
  const ReplanResult best_on_six = replan(job, same, current, zero);
  CurrentPlan running;
  running.stages = best_on_six.stages;
  running.replicas = best_on_six.replicas;
  running.device_of_rank = best_on_six.device_of_rank;
  running.body_per_stage = best_on_six.body_per_stage;
  const ReplanResult again = replan(job, same, running, zero);
  EXPECT_EQ(again.predicted_s, again.degraded_s) << again.summary;  // deterministic budget
  EXPECT_FALSE(again.commit) << again.summary;
}

// Every device of the current plan lost: no degraded plan, so any plan that
// fits commits; when none fits, InfeasibleError says it was re-planning.
TEST(Replan, EveryDeviceLostCommitsAnyPlanThatFitsOrSaysNoneFits) {
  TopologySpec t = fourSites();
  const CurrentPlan current = currentPlan({{0, 2}, {1, 3}});  // sites 0 and 1
  const std::vector<int> live = {4, 5, 6, 7};
  const ReplanResult r = replan(tinyGpt(t), live, current, evaluationsOnly(5000));
  EXPECT_EQ(r.degraded_replicas, 0);
  EXPECT_TRUE(std::isinf(r.degraded_s));
  expectWellFormed(r, live, 12);
  EXPECT_TRUE(std::isfinite(r.predicted_s));
  EXPECT_TRUE(r.commit) << r.summary;

  for (int d = 4; d < 8; ++d) t.devices[static_cast<size_t>(d)].memory_gb = 0.001;
  try {
    replan(tinyGpt(t), live, current, evaluationsOnly(5000));
    FAIL() << "expected InfeasibleError";
  } catch (const InfeasibleError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("re-planning job 'test' on 4 live devices"), std::string::npos) << what;
    EXPECT_NE(what.find("memory"), std::string::npos) << what;
  }
}

TEST(Replan, BadArgumentsAreConfigErrors) {
  const JobSpec job = tinyGpt(fourSites());
  const CurrentPlan current = currentPlan({{0, 1, 2, 3}, {4, 5, 6, 7}});
  EXPECT_THROW(replan(job, {}, current, evaluationsOnly(10)), ConfigError);
  EXPECT_THROW(replan(job, {1, 0}, current, evaluationsOnly(10)), ConfigError);
  EXPECT_THROW(replan(job, {0, 8}, current, evaluationsOnly(10)), ConfigError);
  CurrentPlan short_plan = current;
  short_plan.device_of_rank.pop_back();
  EXPECT_THROW(replan(job, {0, 1}, short_plan, evaluationsOnly(10)), ConfigError);
}

// A warm start whose groups do not hold D_dp devices each is refused, and
// only the evolutionary search takes one.
TEST(Replan, MalformedWarmStartsAreRefused) {
  const JobSpec job = tinyGpt(fourSites());
  auto network = std::make_shared<const Network>(job.topology);
  const auto model = makeCostModel("geopipe", network, ModelProfile::fromJob(job), job, 4, 2);
  SearchOptions o;
  o.budget_seconds = 0;
  o.budget_evaluations = 100;
  o.warm_starts.push_back({4, 2, {0, 0, 1, 1, 2, 2, 3, 4}});  // group 3 holds one device
  EXPECT_THROW(evolutionarySearch(*model, o), ConfigError);
  o.warm_starts[0].label = {0, 0, 1, 1, 2, 2, 3, 3};
  EXPECT_LE(evolutionarySearch(*model, o).best.cost,
            model->evaluateAllocation({4, 2, {{0, 1}, {2, 3}, {4, 5}, {6, 7}}, {}, {}}).total_s);
  o.algorithm = "random";
  EXPECT_THROW(runSearch(*model, o), ConfigError);
}

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

TEST(SubTopology, KeepsTheDevicesSitesAndLinksInOrder) {
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
}  // namespace geopipe::scheduler
