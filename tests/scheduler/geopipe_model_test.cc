// The geopipe cost model: compute, bubble, uneven layers, overlap, memory,
// asymmetric links and the shape search.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "geopipe/error.h"
#include "scheduler/evaluator.h"
#include "scheduler/planner.h"
#include "scheduler/scenarios.h"
#include "src/config/job_parser.h"
#include "test_util.h"

namespace geopipe::scheduler {
namespace {

// One site of n identical devices on a fast link.
TopologySpec fastSite(int n, double tflops = 100, double gbps = 1000) {
  TopologySpec t;
  t.name = "fast";
  SiteSpec s;
  s.name = "dc";
  s.intra = {0, gbps};
  t.sites.push_back(s);
  for (int d = 0; d < n; ++d) {
    DeviceSpec dev;
    dev.name = "dc/" + std::to_string(d);
    dev.tflops = tflops;
    dev.memory_gb = 80;
    t.sites[0].devices.push_back(d);
    t.devices.push_back(dev);
  }
  t.site_links = {{s.intra}};
  return t;
}

JobSpec gptJob(const TopologySpec& t, int pp, int dp) {
  JobSpec job = testing::smallJob(t, pp, dp, "geopipe");
  job.scheduler.grad_payload_gb.reset();
  job.scheduler.act_payload_gb.reset();
  return job;
}

TEST(GeopipeModel, HomogeneousPipelineHasTheTextbookBubble) {
  const JobSpec job = gptJob(fastSite(4), 4, 1);  // 12 layers, 3 per stage
  auto net = std::make_shared<const Network>(job.topology);
  const ModelProfile prof = ModelProfile::fromJob(job);
  GeopipeCostModel model(net, prof, 4, 1, "1f1b");
  Evaluator ev(model);
  const Candidate c = ev.make({0, 1, 2, 3});
  const int M = job.training.global_batch;  // dp = 1, micro_batch = 1
  ASSERT_EQ(model.microBatches(), M);
  // Middle stages have 3 layers; the last carries the LM head, so the greedy
  // may move a layer off it. The compute term is M x the slowest stage.
  const double t_layer = prof.flopsPerSample(0, 1) / 100e12;
  const auto& b = c.eval.breakdown;
  EXPECT_GE(b.compute_s, M * 3 * t_layer * 0.999);
  EXPECT_NEAR(b.bubble_s / (b.compute_s / M), 3.0, 0.6);  // ~ (p-1) stage times
  EXPECT_EQ(b.dp_comm_s, 0.0);
  int layers = 0;
  for (auto [f, l] : c.eval.layers) layers += l - f;
  EXPECT_EQ(layers, 12);
}

// A topology with tflops per dtype: the job's model.dtype picks the rate
// the compute term uses (config's job parser resolves it; a 16x faster bf16
// rate makes the compute term 16x smaller, the same layers and batches).
TEST(GeopipeModel, ComputeFollowsTheJobsDtypeWhereTheTopologyGivesRatesPerDtype) {
  auto computeS = [](const std::string& dtype) {
    const std::string yaml = R"(
model: {preset: tiny, layers: 4, dtype: )" + dtype + R"(}
parallelism: {pipeline_stages: 2, data_parallel: 1}
training: {global_batch: 4, micro_batch: 1}
scheduler: {cost_model: geopipe}
topology:
  sites:
    - name: lab
      intra: {latency_ms: 0.1, bandwidth_gbps: 100}
      tflops: {fp32: 19.5, bf16: 312}
      devices: 2
)";
    const JobSpec job = config::parseJobString(yaml, "j.yaml", "");
    auto net = std::make_shared<const Network>(job.topology);
    GeopipeCostModel model(net, ModelProfile::fromJob(job), 2, 1, "1f1b");
    Evaluator ev(model);
    return ev.make({0, 1}).eval.breakdown.compute_s;
  };
  const double fp32 = computeS("fp32"), bf16 = computeS("bf16");
  ASSERT_GT(bf16, 0);
  EXPECT_NEAR(fp32 / bf16, 312 / 19.5, 1e-9 * 16);
}

TEST(GeopipeModel, SlowGpusGetFewerLayers) {
  TopologySpec t = fastSite(2);
  t.devices[1].tflops = 25;  // 4x slower
  const JobSpec job = gptJob(t, 2, 1);
  auto net = std::make_shared<const Network>(job.topology);
  GeopipeCostModel model(net, ModelProfile::fromJob(job), 2, 1, "1f1b");
  Evaluator ev(model);
  const Candidate c = ev.make({0, 1});
  const int fast = c.order[0] == 0 ? 0 : 1;
  const auto& layers = c.eval.layers;
  const int n_fast = layers[fast].second - layers[fast].first;
  const int n_slow = 12 - n_fast;
  EXPECT_GT(n_fast, 2 * n_slow) << n_fast << " vs " << n_slow;
}

TEST(GeopipeModel, CommunicationHidesBehindComputeUntilItDominates) {
  const JobSpec job = gptJob(fastSite(2), 2, 1);
  auto prof = ModelProfile::fromJob(job);
  auto fast = std::make_shared<const Network>(job.topology);
  // Fast link under GPipe (all micro-batches in flight): only the fill and
  // drain transfers are exposed.
  GeopipeCostModel m1(fast, prof, 2, 1, "gpipe");
  Evaluator e1(m1);
  const auto c1 = e1.make({0, 1});
  EXPECT_LT(c1.eval.breakdown.pipeline_comm_s, 0.01 * c1.cost);
  // 1F1B keeps only D_pp micro-batches in flight, so each round trip's
  // transfers also stretch the steady state: more exposed comm than GPipe.
  GeopipeCostModel m1f(fast, prof, 2, 1, "1f1b");
  Evaluator e1f(m1f);
  const auto c1f = e1f.make({0, 1});
  EXPECT_GT(c1f.eval.breakdown.pipeline_comm_s, c1.eval.breakdown.pipeline_comm_s);
  TopologySpec slow_t = job.topology;
  slow_t.site_links[0][0].bandwidth_gbps = 0.01;
  auto slow = std::make_shared<const Network>(slow_t);
  GeopipeCostModel m2(slow, prof, 2, 1, "1f1b");
  Evaluator e2(m2);
  const auto c2 = e2.make({0, 1});
  EXPECT_GT(c2.eval.breakdown.pipeline_comm_s, c2.eval.breakdown.compute_s);
  EXPECT_NEAR(c2.cost, c2.eval.breakdown.total(), 1e-12);
}

// One stage of 4 replicas on one site (α 5 ms, 1 Gbps): the dense
// exchange is the ring all-reduce, a compressed one the direct all-gather
// GradientSync runs (each member's blob to the 3 others, one hop), PowerSGD
// the ring for 1-D tensors plus two all-gathers.
TEST(GeopipeModel, PricesTheGradientExchangeEachMethodRuns) {
  TopologySpec t = fastSite(4, 100, 1);
  t.sites[0].intra = {5, 1};
  t.site_links = {{t.sites[0].intra}};
  auto dpOf = [&](const std::string& method) {
    JobSpec job = gptJob(t, 1, 4);
    job.compression.gradients.method = method;
    job.compression.gradients.bits = 8;
    auto net = std::make_shared<const Network>(job.topology);
    const ModelProfile prof = ModelProfile::fromJob(job);
    GeopipeCostModel model(net, prof, 1, 4, "1f1b");
    Evaluator ev(model);
    const double params = prof.params(0, prof.numLayers()) + prof.embed_params + prof.head_params;
    const double vectors = prof.vectorParams(0, prof.numLayers()) + prof.head_vector_params;
    return std::make_tuple(ev.make({0, 0, 0, 0}).eval.breakdown.dp_comm_s, params, vectors,
                           prof.grad_wire_bytes_per_param);
  };
  const double a = 0.005, s_per_gb = 8.0;  // 1 Gbps
  auto [dense, params, vectors, b_dense] = dpOf("none");
  EXPECT_NEAR(dense, 2 * 3 * (a + s_per_gb * 4 * params / 4 / 1e9), 1e-9);
  auto [quant, p2, v2, b_quant] = dpOf("quantize");
  EXPECT_DOUBLE_EQ(b_quant, 1 + 4.0 / 256);
  EXPECT_NEAR(quant, a + s_per_gb * b_quant * params / 1e9, 1e-9);
  auto [power, p3, v3, b_power] = dpOf("powersgd");
  EXPECT_NEAR(power,
              2 * 3 * (a + s_per_gb * 4 * vectors / 4 / 1e9) + 2 * a +
                  s_per_gb * b_power * (params - vectors) / 1e9,
              1e-9);
  // Bytes each member sends: 2(D-1)/D of the ring's, (D-1) blobs gathered.
  ModelProfile prof;
  prof.grad_exchange = GradExchange::ALL_GATHER;
  prof.grad_wire_bytes_per_param = 1;
  EXPECT_DOUBLE_EQ(prof.dpBytes(1000, 10).sentBytes(8), 7000);
  prof.grad_exchange = GradExchange::RING_ALL_REDUCE;
  EXPECT_DOUBLE_EQ(prof.dpBytes(1000, 10).sentBytes(8), 7000);  // 1.75 x 4 bytes
}

// A link's duplex bandwidth (its rate while the reverse direction sends
// too) prices every exchange, where both ends send at once; the pipeline's
// transfers keep the link's bandwidth.
TEST(GeopipeModel, PricesExchangesAtTheDuplexBandwidthAndPipelinesAtTheLinks) {
  auto price = [](double duplex_gbps, const std::string& method) {
    TopologySpec t = fastSite(4, 100, 1);
    t.sites[0].intra = {5, 1, duplex_gbps};
    t.site_links = {{t.sites[0].intra}};
    JobSpec job = gptJob(t, 2, 2);
    job.compression.gradients.method = method;
    job.compression.gradients.bits = 8;
    auto net = std::make_shared<const Network>(job.topology);
    GeopipeCostModel model(net, ModelProfile::fromJob(job), 2, 2, "1f1b");
    const GroupStats g = model.groupStats({0, 1});
    return std::make_tuple(g.ring_s_per_gb, g.gather_s_per_gb, g.ring_lat_s, model.edge(0, 2));
  };
  for (const std::string method : {"none", "quantize"}) {
    auto [ring, gather, lat, edge] = price(0, method);
    auto [ring_half, gather_half, lat_half, edge_half] = price(0.5, method);
    EXPECT_DOUBLE_EQ(ring, 2.0 * (2 - 1) / 2 * 8.0) << "1 Gbps: 8 s per GB";
    EXPECT_DOUBLE_EQ(ring_half, 2 * ring) << method;
    EXPECT_DOUBLE_EQ(gather_half, 2 * gather) << method;
    EXPECT_DOUBLE_EQ(lat_half, lat) << "latency is the link's";
    EXPECT_DOUBLE_EQ(edge_half, edge) << "pipeline transfers keep bandwidth_gbps";
  }
}

// DiLoCo: the exchange (priced like the every-step one, with the
// pseudo-gradient's compression) happens once a round after the step: X / H
// per step without overlap; with overlap, hidden up to H x the rest of the
// step. The dtfm model refuses it.
TEST(GeopipeModel, PricesDilocosExchangeOnceARound) {
  TopologySpec t = fastSite(4, 100, 1);
  t.sites[0].intra = {5, 1};
  t.site_links = {{t.sites[0].intra}};
  auto evalOf = [&](const std::string& kind, int h, bool overlap) {
    JobSpec job = gptJob(t, 2, 2);
    job.compression.gradients.method = "quantize";
    if (kind == "diloco") {
      job.compression.gradients.method = "none";
      job.parallelism.data_parallel_sync.kind = "diloco";
      job.parallelism.data_parallel_sync.inner_steps = h;
      job.parallelism.data_parallel_sync.overlap = overlap;
      job.parallelism.data_parallel_sync.compression.method = "quantize";
    }
    auto net = std::make_shared<const Network>(job.topology);
    GeopipeCostModel model(net, ModelProfile::fromJob(job), 2, 2, "1f1b");
    Allocation a;
    a.d_pp = 2;
    a.d_dp = 2;
    a.stages = {{0, 1}, {2, 3}};
    return model.evaluateAllocation(a);
  };
  const PathEval every = evalOf("every_step", 0, false);
  const PathEval h1 = evalOf("diloco", 1, false);
  const PathEval h10 = evalOf("diloco", 10, false);
  const PathEval h10o = evalOf("diloco", 10, true);
  ASSERT_GT(h1.outer_exchange_s, 0);
  EXPECT_EQ(every.outer_exchange_s, 0);
  // The same bytes and links: one round's exchange is every stage's
  // every-step exchange, which the drain partly hides (so no less), less
  // the every-step exchange's wait for the last gradient's receipt (one 5 ms
  // latency; DiLoCo exchanges after the step and needs none).
  EXPECT_GE(h1.breakdown.dp_comm_s + 0.005 + 1e-12, every.breakdown.dp_comm_s);
  EXPECT_DOUBLE_EQ(h10.outer_exchange_s, h1.outer_exchange_s);
  const double rest = h10.total_s - h10.breakdown.dp_comm_s;
  EXPECT_NEAR(h10.breakdown.dp_comm_s - (h1.breakdown.dp_comm_s - h1.outer_exchange_s),
              h1.outer_exchange_s / 10, 1e-12);
  const double exposed = std::max(0.0, h1.outer_exchange_s - 10 * rest) / 10;
  EXPECT_NEAR(h10o.total_s, rest + exposed + (h10.breakdown.dp_comm_s - h1.outer_exchange_s / 10),
              1e-9);
  EXPECT_LT(h10o.total_s, h10.total_s);
  // State: shared weights, pseudo-gradient, momentum; overlap: +start, progress.
  JobSpec job = gptJob(t, 2, 2);
  const double plain = ModelProfile::fromJob(job).state_bytes_per_param;
  job.parallelism.data_parallel_sync.kind = "diloco";
  EXPECT_DOUBLE_EQ(ModelProfile::fromJob(job).state_bytes_per_param, plain + 12);
  job.parallelism.data_parallel_sync.overlap = true;
  EXPECT_DOUBLE_EQ(ModelProfile::fromJob(job).state_bytes_per_param, plain + 20);
  EXPECT_THROW(makeCostModel("dtfm", std::make_shared<const Network>(job.topology),
                             ModelProfile::fromJob(job), job, 2, 2),
               ConfigError);
}

// GroupStats prices a group's pairs from one or two devices per site (links
// are set by the sites): the same all-gather terms as every ordered pair.
TEST(GeopipeModel, GatherStatsFromSitesEqualEveryPair) {
  JobSpec job = paperJob(2);  // spot: machines of 1-4 GPUs at many sites
  job.scheduler.cost_model = "geopipe";
  auto net = std::make_shared<const Network>(job.topology);
  GeopipeCostModel model(net, ModelProfile::fromJob(job), 8, 8, "1f1b");
  std::mt19937_64 rng(5);
  std::vector<int> all(net->size());
  for (int i = 0; i < net->size(); ++i) all[i] = i;
  for (int trial = 0; trial < 50; ++trial) {
    std::shuffle(all.begin(), all.end(), rng);
    std::vector<int> group(all.begin(), all.begin() + 2 + trial % 14);
    std::sort(group.begin(), group.end());
    const GroupStats g = model.groupStats(group);
    double lat = 0, per_gb = 0;
    for (int i : group)
      for (int j : group)
        if (i != j) {
          lat = std::max(lat, net->latencyS(i, j));
          per_gb = std::max(per_gb, net->transferS(i, j, 1.0) - net->latencyS(i, j));
        }
    EXPECT_DOUBLE_EQ(g.gather_lat_s, lat);
    EXPECT_DOUBLE_EQ(g.gather_s_per_gb, per_gb);
  }
}

// Two sites, 50 ms and 1 Gbps apart: a tied model across two stages adds
// the tied sum after the exchanges. Gradient clipping's norm crosses the
// 50 ms once more, from the last stage to stage 0: hidden when the last
// stage finished earlier by more (its drain: half a boundary round trip,
// >= 50 ms here), exposed after the tied sum, which ends both at once.
TEST(GeopipeModel, PricesTheTiedSumAndTheScalarAllReduces) {
  TopologySpec t = testing::randomTopology(2, 5);
  for (auto& d : t.devices) d.memory_gb = 80;
  t.site_links[0][1] = t.site_links[1][0] = {50, 1};
  auto step = [&](const std::string& kind, double clip) {
    JobSpec job = gptJob(t, 2, 1);
    job.model.kind = kind;
    job.model.vocab = 1000;
    job.model.max_positions = job.model.seq_len;
    job.training.grad_clip = clip;
    auto net = std::make_shared<const Network>(job.topology);
    GeopipeCostModel model(net, ModelProfile::fromJob(job), 2, 1, "1f1b");
    Evaluator ev(model);
    return ev.make({0, 1}).eval.breakdown.dp_comm_s;
  };
  EXPECT_EQ(step("gpt", 0), 0.0);
  EXPECT_EQ(step("gpt", 1.0), 0.0);
  // 1000 x 256 fp32 = 1.024 MB each way: 50 ms + max(8.192 ms, 50 + 4.096 ms).
  EXPECT_NEAR(step("gpt2", 0), 0.050 + 0.050 + 0.004096, 1e-9);
  EXPECT_NEAR(step("gpt2", 1.0), 0.050 + 0.050 + 0.004096 + 0.050, 1e-9);
}

// With an exchange every step, stage 1 starts its exchange when stage 0's
// receipt of its last gradient is back (the executor's send_receipt): the
// last crossing no longer hides the exchange, the receipt's way back adds
// to it. Stage 1's replicas are two sites apart (a slow exchange that
// outlasts stage 0's), stage 0's in one site; the boundary's round trip c
// is given. Its exchange then ends the same whatever c, and 40 ms later
// when the sites of stage 0 are 40 ms further from stage 1's.
TEST(GeopipeModel, AnExchangeStartsAfterTheReceiptOfTheStagesLastGradient) {
  auto dpComm = [](double receipt_ms, double c) {
    // Devices 0, 1: stage 0; 2, 3: stage 1 (every device its own site).
    TopologySpec t = testing::randomTopology(4, 2);
    for (auto& d : t.devices) d.memory_gb = 80;
    for (int a = 0; a < 4; ++a)
      for (int b = 0; b < 4; ++b) {
        const bool up = a < 2 && b >= 2, down = a >= 2 && b < 2;
        t.site_links[a][b] = up      ? LinkSpec{receipt_ms, 1}
                             : down  ? LinkSpec{5, 1}
                             : a < 2 ? LinkSpec{0.1, 100}
                                     : LinkSpec{10, 0.05};
      }
    JobSpec job = gptJob(t, 2, 2);
    auto net = std::make_shared<const Network>(job.topology);
    GeopipeCostModel model(net, ModelProfile::fromJob(job), 2, 2, "1f1b");
    const std::vector<GroupStats> stats = {model.groupStats({0, 1}), model.groupStats({2, 3})};
    return model.evaluatePath(stats, {c}).breakdown.dp_comm_s;
  };
  const double base = dpComm(40, 0.2);
  EXPECT_GT(base, 0.1);
  EXPECT_NEAR(dpComm(40, 0.6), base, 1e-12);
  EXPECT_NEAR(dpComm(80, 0.2), base + 0.040, 1e-12);
}

// Memory follows model.dtype: fp32 stores activations at twice the 16-bit
// bytes; bf16 stores them at 16 bit but keeps, for each micro-batch in
// flight, the 16-bit copies autocast made of the matrices' weights.
TEST(GeopipeModel, MemoryFollowsTheComputeDtype) {
  auto memoryOf = [&](const std::string& dtype) {
    JobSpec job = gptJob(fastSite(2), 2, 1);
    job.model.dtype = dtype;
    auto net = std::make_shared<const Network>(job.topology);
    const ModelProfile prof = ModelProfile::fromJob(job);
    GeopipeCostModel model(net, prof, 2, 1, "1f1b");
    Evaluator ev(model);
    const Candidate c = ev.make({0, 1});
    const auto [first, last] = c.eval.layers[0];
    const double params = prof.params(first, last) + prof.embed_params;
    const double matrices = prof.params(first, last) - prof.vectorParams(first, last);
    const double in_flight = 2;  // 1F1B, stage 0 of 2
    return std::make_tuple(c.eval.stage_memory_bytes[0], params * prof.state_bytes_per_param,
                           in_flight * matrices, in_flight * prof.actMemPerSample(first, last));
  };
  auto [fp32, state32, mat32, act32] = memoryOf("fp32");
  auto [bf16, state16, mat16, act16] = memoryOf("bf16");
  EXPECT_DOUBLE_EQ(act32, 2 * act16);
  EXPECT_NEAR(fp32, state32 + act32, 1e-6 * fp32);
  EXPECT_NEAR(bf16, state16 + act16 + 2 * mat16, 1e-6 * bf16);
}

TEST(GeopipeModel, AsymmetricLinksPriceEachDirection) {
  TopologySpec t = testing::randomTopology(2, 3, /*symmetric=*/false);
  t.site_links[0][1] = {10, 10};  // forward fast
  t.site_links[1][0] = {10, 0.01};  // backward slow
  JobSpec job = gptJob(t, 2, 1);
  job.compression.backward.method = "quantize";
  job.compression.backward.bits = 2;
  auto net = std::make_shared<const Network>(t);
  GeopipeCostModel model(net, ModelProfile::fromJob(job), 2, 1, "1f1b");
  // edge(0,1) = fwd on 0->1 + bwd on 1->0 differs from edge(1,0).
  EXPECT_NE(model.edge(0, 1), model.edge(1, 0));
  const auto& p = model.profile();
  EXPECT_NEAR(model.edge(0, 1),
              net->transferS(0, 1, p.act_fwd_wire_bytes / 1e9) +
                  net->transferS(1, 0, p.act_bwd_wire_bytes / 1e9),
              1e-12);
}

TEST(GeopipeModel, MemoryInfeasibleIsReported) {
  TopologySpec t = fastSite(4);
  for (auto& d : t.devices) d.memory_gb = 0.001;
  JobSpec job = gptJob(t, 2, 2);
  try {
    plan(job, searchOptionsFromJob(job));
    FAIL() << "expected InfeasibleError";
  } catch (const InfeasibleError& e) {
    EXPECT_NE(std::string(e.what()).find("GiB"), std::string::npos) << e.what();
  }
}

TEST(GeopipeModel, GpipeNeedsMoreMemoryThan1f1b) {
  TopologySpec t = fastSite(4);
  JobSpec job = gptJob(t, 4, 1);
  job.training.global_batch = 64;
  auto net = std::make_shared<const Network>(t);
  const ModelProfile prof = ModelProfile::fromJob(job);
  // Find a memory size where 1F1B (<= 4 micro-batches in flight) fits and
  // GPipe (64 in flight) does not.
  const double act = prof.actMemPerSample(0, 3);
  const double weights = (prof.params(0, 3) + prof.embed_params) * prof.state_bytes_per_param;
  const double gib = (weights + 8 * act) / (1024.0 * 1024 * 1024);
  for (auto& d : t.devices) d.memory_gb = gib;
  auto net2 = std::make_shared<const Network>(t);
  GeopipeCostModel g(net2, prof, 4, 1, "gpipe"), f(net2, prof, 4, 1, "1f1b");
  Evaluator eg(g), ef(f);
  EXPECT_FALSE(eg.make({0, 1, 2, 3}).eval.feasible);
  EXPECT_TRUE(ef.make({0, 1, 2, 3}).eval.feasible);
}

// AC-SGD stores in memory count with the stage's weights: one store at
// either end of the pipeline, two in the middle; on disk (mmap) none.
TEST(GeopipeModel, ChargesInMemoryAcsgdStoresPerStage) {
  const JobSpec job = gptJob(fastSite(4), 4, 1);
  auto net = std::make_shared<const Network>(job.topology);
  ModelProfile prof = ModelProfile::fromJob(job);
  auto memory = [&](const ModelProfile& p) {
    GeopipeCostModel model(net, p, 4, 1, "1f1b");
    Evaluator ev(model);
    return ev.make({0, 1, 2, 3}).eval.stage_memory_bytes;
  };
  const auto plain = memory(prof);
  ASSERT_EQ(plain.size(), 4u);
  prof.acsgd.store_bytes = 3e9;
  prof.acsgd.in_memory = false;
  EXPECT_EQ(memory(prof), plain);
  prof.acsgd.in_memory = true;
  const auto charged = memory(prof);
  const std::vector<int> stores = {1, 2, 2, 1};
  for (int s = 0; s < 4; ++s) EXPECT_DOUBLE_EQ(charged[s] - plain[s], stores[s] * 3e9) << s;
  EXPECT_EQ(AcsgdStores::storesAt(0, 1), 0);
}

// Two devices with the memory for a middle stage's two stores, two without:
// the plan puts the middle stages on the large ones; with no device large
// enough it refuses, naming the buffers and their fixes.
TEST(GeopipeModel, PlanPutsBufferHungryStagesWhereTheyFit) {
  TopologySpec t = fastSite(4);
  for (auto& d : t.devices) d.memory_gb = 4;
  t.devices[0].memory_gb = t.devices[3].memory_gb = 64;  // in-order puts the ends here
  JobSpec job = gptJob(t, 4, 1);
  job.scheduler.budget_seconds = 0;
  job.scheduler.budget_evaluations = 3000;
  const double gib = 1024.0 * 1024 * 1024;
  AcsgdStores stores;
  stores.store_bytes = 3 * gib;  // middle stages: 6 GiB, over 4
  stores.in_memory = true;
  const auto fn = [&](int) { return stores; };
  const PlanResult p = plan(job, searchOptionsFromJob(job), true, fn);
  ASSERT_TRUE(p.ours.best.eval.feasible) << p.ours.best.eval.infeasible_reason;
  for (int s : {1, 2}) {
    EXPECT_EQ(t.devices[p.ours.allocation.stages[s][0]].memory_gb, 64) << "stage " << s;
    EXPECT_GT(p.ours.best.eval.stage_memory_bytes[s], 6 * gib);
  }
  EXPECT_FALSE(p.in_order.best.eval.feasible);
  stores.store_bytes = 40 * gib;
  try {
    plan(job, searchOptionsFromJob(job), false, fn);
    FAIL() << "expected InfeasibleError";
  } catch (const InfeasibleError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(" GiB, AC-SGD buffers "), std::string::npos) << msg;
    EXPECT_NE(msg.find("buffer_store: mmap"), std::string::npos) << msg;
  }
}

// data_parallel: auto never picks a shape whose stores break the budget.
TEST(GeopipeModel, ShapesOverTheBufferBudgetAreNotTried) {
  JobSpec job = gptJob(fastSite(8), 2, 0);
  job.training.global_batch = 16;
  job.scheduler.budget_seconds = 0;
  job.scheduler.budget_evaluations = 2000;
  // Stores shrink with replicas: 8 / d_dp GB each against a 2.5 GB budget.
  const auto fn = [](int d_dp) {
    AcsgdStores s;
    s.store_bytes = 8e9 / d_dp;
    s.budget_bytes = 2.5e9;
    return s;
  };
  const PlanResult p = plan(job, searchOptionsFromJob(job), false, fn);
  for (const ShapeTrial& s : p.shapes) {
    if (s.d_pp >= 2) {
      EXPECT_GE(s.d_dp, 4) << s.d_pp << "x" << s.d_dp;
    }
  }
  EXPECT_TRUE(p.d_pp == 1 || p.d_dp >= 4) << p.d_pp << "x" << p.d_dp;
  job.parallelism.data_parallel = 2;
  try {
    plan(job, searchOptionsFromJob(job), false, fn);
    FAIL() << "expected InfeasibleError";
  } catch (const InfeasibleError& e) {
    EXPECT_NE(std::string(e.what()).find("buffer_budget_gb"), std::string::npos) << e.what();
  }
}

TEST(GeopipeModel, ShapeSearchLeavesASlowOutlierIdle) {
  // 5 devices: four fast ones in one site and one behind a terrible link.
  TopologySpec t = fastSite(4, 100, 100);
  SiteSpec far;
  far.name = "far";
  far.intra = {0, 100};
  far.devices = {4};
  t.sites.push_back(far);
  DeviceSpec dev;
  dev.name = "far/0";
  dev.site = 1;
  t.devices.push_back(dev);
  t.site_links = {{t.sites[0].intra, {300, 0.001}}, {{300, 0.001}, far.intra}};
  JobSpec job = gptJob(t, 1, 0);  // data_parallel: auto
  job.training.global_batch = 16;
  job.scheduler.budget_seconds = 0;
  job.scheduler.budget_evaluations = 2000;
  const PlanResult p = plan(job, searchOptionsFromJob(job));
  ASSERT_EQ(p.ours.allocation.idle.size(), 1u) << p.d_pp << "x" << p.d_dp;
  EXPECT_EQ(p.ours.allocation.idle[0], 4);
  EXPECT_GT(p.shapes.size(), 3u);
}

// Network keeps devices x devices matrices: a TopologySpec built in C++ past
// the parser's 4096 devices is a ConfigError naming the limit, not the
// bad_alloc (exit 70) that 65536 devices gave `plan` (issue 18).
// A model that gives its own cost (ModelDef::cost -> ModelSpec::cost) is
// priced by it: its body layers one by one, its prologue as the embedding
// and its epilogue as the head; a first block 16x as costly as the other
// three gets a stage of its own, where the GPT pricing splits 2 + 2.
TEST(GeopipeModel, AModelsOwnCostReplacesTheGptPricing) {
  JobSpec job = gptJob(fastSite(2), 2, 1);
  job.model.layers = 4;
  const PlanResult as_gpt = plan(job, searchOptionsFromJob(job));

  job.model.cost.prologue = {1000, 0, 0};
  job.model.cost.epilogue = {2000, 3e6, 0};
  for (double f : {16e9, 1e9, 1e9, 1e9}) job.model.cost.body.push_back({5e6, f, 1e4});
  const ModelProfile prof = ModelProfile::fromJob(job);
  ASSERT_EQ(prof.numLayers(), 4);
  EXPECT_EQ(prof.layers[0].fwd_flops, 16e9);
  EXPECT_EQ(prof.layers[0].bwd_flops, 32e9);
  EXPECT_EQ(prof.layers[1].params, 5e6);
  EXPECT_EQ(prof.layers[1].act_mem_bytes, 1e4);
  EXPECT_EQ(prof.embed_params, 1000);
  EXPECT_EQ(prof.head_params, 2000);
  EXPECT_EQ(prof.head_flops, 9e6);
  const PlanResult own = plan(job, searchOptionsFromJob(job));
  EXPECT_EQ(own.ours.allocation.layers, (std::vector<std::pair<int, int>>{{0, 1}, {1, 4}}));
  EXPECT_NE(as_gpt.ours.allocation.layers, own.ours.allocation.layers);

  job.model.cost.body.pop_back();
  EXPECT_THROW(ModelProfile::fromJob(job), ConfigError);
}

TEST(Network, RefusesMoreDevicesThanItCanHoldAsAConfigError) {
  TopologySpec t;
  t.name = "wide";
  SiteSpec s;
  s.name = "m";
  s.intra = {0.1, 100};
  for (int d = 0; d < 4097; ++d) {
    DeviceSpec dev;
    dev.name = "m/" + std::to_string(d);
    t.devices.push_back(dev);
    s.devices.push_back(d);
  }
  t.sites.push_back(s);
  t.site_links.assign(1, std::vector<LinkSpec>(1, s.intra));
  try {
    Network net(t);
    FAIL() << "4097 devices accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("has 4097 devices; the scheduler places jobs on at most "
                                         "4096"),
              std::string::npos)
        << e.what();
  }
  t.devices.pop_back();
  t.sites[0].devices.pop_back();
  EXPECT_EQ(Network(t).size(), 4096);
}

}  // namespace
}  // namespace geopipe::scheduler
