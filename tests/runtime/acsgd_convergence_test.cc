// The target, end to end: the tiny GPT on the demo data (Debian's
// fortunes), 2 stages, 300 steps; AC-SGD 4-bit activations (and 8-bit
// backward gradients) end within 2% of the uncompressed loss.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "geopipe/trainer.h"
#include "src/config/job_parser.h"
#include "tests/runtime/convergence_job.h"

using namespace geopipe;
using geopipe::testing::convergenceJob;
using geopipe::testing::finalLoss;

namespace {

TEST(AcsgdConvergence, FourBitMatchesUncompressedWithin2Percent) {
  JobSpec job = convergenceJob(2);
  TrainResult fp32 = Trainer(makeModel(job.model), job).train();
  job.compression.activations.method = "acsgd";
  job.compression.activations.bits = 4;
  job.compression.backward.method = "quantize";
  job.compression.backward.bits = 8;
  TrainResult acsgd = Trainer(makeModel(job.model), job).train();
  const double a = finalLoss(fp32), b = finalLoss(acsgd);
  std::printf("final loss (mean of last 20 steps): fp32 %.4f, acsgd-4bit %.4f (%+.2f%%)\n", a, b,
              100.0 * (b - a) / a);
  EXPECT_LT(a, std::log(256.0) - 1.0);  // it learned something
  EXPECT_LE(std::abs(b - a) / a, 0.02);
}

}  // namespace
