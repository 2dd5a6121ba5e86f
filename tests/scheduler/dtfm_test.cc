// The dtfm cost model reproduces every oracle value of DESIGN.md's table.
#include <gtest/gtest.h>

#include "scheduler/cost_model.h"
#include "scheduler/evaluator.h"
#include "scheduler/scenarios.h"

namespace geopipe::scheduler {
namespace {

struct Oracle {
  double dp, pp2, total;
};
// DESIGN.md: "ident" and "trans" per scenario 1..5.
const Oracle kIdent[] = {{0.091, 16.890, 16.98},
                         {7.280, 42.224, 49.50},
                         {1.834, 15.814, 17.65},
                         {4.620, 34.621, 39.24},
                         {4.620, 54.817, 59.44}};
const Oracle kTrans[] = {{2.912, 0.528, 3.44},
                         {7.280, 42.224, 49.50},
                         {5.517, 10.570, 16.09},
                         {8.342, 26.460, 34.80},
                         {22.758, 26.460, 49.22}};

std::unique_ptr<CostModel> paperModel(int k) {
  const JobSpec job = paperJob(k);
  auto net = std::make_shared<const Network>(job.topology);
  return makeCostModel("dtfm", net, ModelProfile::fromJob(job), job, 8, 8);
}

void expectNear(double got, double want, const std::string& what) {
  EXPECT_NEAR(got, want, 0.005 * want) << what;
}

TEST(DtfmOracle, IdentAndTransMatchThePaperToHalfAPercent) {
  for (int k = 1; k <= kNumPaperScenarios; ++k) {
    auto model = paperModel(k);
    Evaluator ev(*model);
    std::vector<int> ident(64), trans(64);
    for (int d = 0; d < 64; ++d) {
      ident[d] = d / 8;
      trans[d] = d % 8;
    }
    const Candidate ci = ev.make(ident), ct = ev.make(trans);
    const std::string name = paperScenarioName(k);
    expectNear(ci.eval.breakdown.dp_comm_s, kIdent[k - 1].dp, name + " ident DP");
    expectNear(ci.eval.breakdown.pipeline_comm_s, kIdent[k - 1].pp2, name + " ident 2PP");
    expectNear(ci.cost, kIdent[k - 1].total, name + " ident total");
    expectNear(ct.eval.breakdown.dp_comm_s, kTrans[k - 1].dp, name + " trans DP");
    expectNear(ct.eval.breakdown.pipeline_comm_s, kTrans[k - 1].pp2, name + " trans 2PP");
    expectNear(ct.cost, kTrans[k - 1].total, name + " trans total");
  }
}

TEST(DtfmOracle, PayloadsComeFromTheOverrides) {
  const JobSpec job = paperJob(5);
  auto model = paperModel(5);
  auto* dtfm = dynamic_cast<DtfmCostModel*>(model.get());
  ASSERT_NE(dtfm, nullptr);
  EXPECT_DOUBLE_EQ(dtfm->cGradGb(), 0.65);
  EXPECT_DOUBLE_EQ(dtfm->cActGb(), 0.471249);
}

TEST(DtfmOracle, PayloadsFromProfileFollowCompression) {
  JobSpec job = paperJob(1);
  job.scheduler.grad_payload_gb.reset();
  job.scheduler.act_payload_gb.reset();
  auto net = std::make_shared<const Network>(job.topology);
  auto plain = makeCostModel("dtfm", net, ModelProfile::fromJob(job), job, 8, 8);
  job.compression.activations.method = "acsgd";
  job.compression.activations.bits = 4;
  job.compression.backward.method = "quantize";
  job.compression.backward.bits = 4;
  job.compression.gradients.method = "quantize";
  job.compression.gradients.bits = 4;
  auto small = makeCostModel("dtfm", net, ModelProfile::fromJob(job), job, 8, 8);
  auto* a = dynamic_cast<DtfmCostModel*>(plain.get());
  auto* b = dynamic_cast<DtfmCostModel*>(small.get());
  // fp16 -> 4 bits: a quarter of the activation bytes (plus scales), and
  // fp32 gradients -> 4 bits and one fp32 scale per group of 256 (what the
  // gradient quantizer sends): (0.5 + 4/256) / 4.
  EXPECT_NEAR(b->cActGb() / a->cActGb(), 0.25, 0.01);
  EXPECT_NEAR(b->cGradGb() / a->cGradGb(), (0.5 + 4.0 / 256) / 4, 1e-9);
  // GPT-3 XL: ~1.2e9 block parameters; one stage of 3 layers in fp32 ~0.6 GB.
  EXPECT_NEAR(a->cGradGb(), 0.60, 0.05);
}

}  // namespace
}  // namespace geopipe::scheduler
