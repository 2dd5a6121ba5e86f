// The coordinator's step ledger alone: steps complete when every tasklet
// reported once, go on in order, a late step is named with the rank it
// waits for, and steps recomputed after a recovery are handed on once.
#include "src/distributed/step_ledger.h"

#include <gtest/gtest.h>

namespace geopipe::distributed {
namespace {

using Clock = StepLedger::Clock;
using std::chrono::milliseconds;

JobSpec tinyJob() {
  JobSpec job;
  job.training.global_batch = 8;
  job.model.seq_len = 16;
  return job;
}

StepMetrics share(double seconds, uint64_t bytes) {
  StepMetrics m;
  m.seconds = seconds;
  m.activation_raw_bytes = bytes;
  m.activation_wire_bytes = bytes / 2;
  return m;
}

TEST(StepLedger, AStepCompletesOnceEveryTaskletReportedAndGoesOnInOrder) {
  const JobSpec job = tinyJob();
  StepLedger ledger(job, 0);
  TrainResult result;
  const auto t = Clock::now();
  // Step 1 complete before step 0: nothing goes on until step 0 is.
  EXPECT_FALSE(ledger.add(0, 2, 1, share(0.1, 10), false, 0, t));
  EXPECT_TRUE(ledger.add(1, 2, 1, share(0.3, 10), true, 4.0, t));
  EXPECT_FALSE(ledger.add(1, 2, 0, share(0.2, 10), true, 2.0, t));
  EXPECT_FALSE(ledger.add(1, 2, 0, share(0.2, 10), true, 2.0, t)) << "a repeat counts once";
  EXPECT_TRUE(ledger.takeFinished(result).empty());
  EXPECT_TRUE(ledger.add(0, 2, 0, share(0.4, 10), false, 0, t));
  const auto steps = ledger.takeFinished(result);
  ASSERT_EQ(steps.size(), 2u);
  EXPECT_EQ(steps[0].step, 0);
  EXPECT_EQ(steps[0].loss, 2.0);
  EXPECT_EQ(steps[0].seconds, 0.4);  // the slowest tasklet
  EXPECT_EQ(steps[0].activation_raw_bytes, 20u);
  EXPECT_DOUBLE_EQ(steps[0].tokens_per_second, 8 * 16 / 0.4);
  EXPECT_EQ(steps[1].step, 1);
  EXPECT_EQ(steps[1].loss, 4.0);
  EXPECT_EQ(result.losses, (std::vector<double>{2.0, 4.0}));
  EXPECT_EQ(result.raw_bytes, 40u);
  EXPECT_TRUE(ledger.lastTaken().has_value());
}

TEST(StepLedger, ALateStepNamesTheFirstRankItWaitsFor) {
  const JobSpec job = tinyJob();
  StepLedger ledger(job, 0);
  const auto t = Clock::now();
  ledger.add(0, 3, 0, share(0.1, 1), false, 0, t);
  ledger.add(2, 3, 0, share(0.1, 1), true, 1, t);
  EXPECT_FALSE(ledger.overdue(t + milliseconds(500), milliseconds(1000)).has_value());
  const auto late = ledger.overdue(t + milliseconds(1500), milliseconds(1000));
  ASSERT_TRUE(late.has_value());
  EXPECT_EQ(late->first, 0);
  EXPECT_EQ(late->second, 1);
  ledger.add(1, 3, 0, share(0.1, 1), false, 0, t);
  EXPECT_FALSE(ledger.overdue(t + milliseconds(1500), milliseconds(1000)).has_value());
}

TEST(StepLedger, StepsRecomputedAfterARecoveryAreRecordedAgainButHandedOnOnce) {
  const JobSpec job = tinyJob();
  StepLedger ledger(job, 10);  // resumed at step 10
  TrainResult result;
  const auto t = Clock::now();
  for (int64_t step = 10; step < 14; ++step) ledger.add(0, 1, step, share(0.1, 1), true, 1.0, t);
  EXPECT_EQ(ledger.takeFinished(result).size(), 4u);
  // The generation ends with step 14 half reported; the last commit was
  // step 12, so the next generation recomputes 12 on (with other losses,
  // as after a shrink).
  ledger.add(0, 2, 14, share(0.1, 1), true, 1.0, t);
  ledger.dropFrom(12);
  ledger.restartAt(12, result);
  EXPECT_EQ(result.losses.size(), 2u);
  for (int64_t step = 12; step < 16; ++step) ledger.add(0, 1, step, share(0.1, 1), true, 3.0, t);
  const auto steps = ledger.takeFinished(result);
  ASSERT_EQ(steps.size(), 2u);  // 14 and 15: 12 and 13 went on before
  EXPECT_EQ(steps[0].step, 14);
  EXPECT_EQ(result.losses, (std::vector<double>{1.0, 1.0, 3.0, 3.0, 3.0, 3.0}));
  // Bytes count each step once: six steps of 1 raw byte (0 on the wire).
  EXPECT_EQ(result.raw_bytes, 6u);
}

}  // namespace
}  // namespace geopipe::distributed
