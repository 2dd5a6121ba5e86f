// The progress line and the metrics record of one step, from fixed numbers:
// every field, its format, and the width budget (docs/cli.md, "Progress line
// and metrics").
#include <gtest/gtest.h>

#include "src/cli/progress_display.h"

namespace {

using namespace geopipe;

StepMetrics aStep() {
  StepMetrics m;
  m.step = 11;  // 0-based: the 12th step
  m.loss = 3.45671;
  m.lr = 3e-4;
  m.grad_norm = 1.2345;
  m.seconds = 2.0;
  m.comm_wait_seconds = 0.3;
  m.tokens_per_second = 1234.4;
  m.peak_rss_bytes = 1234567890;
  m.sent_bytes_by_rank = {10, 20};
  m.received_bytes_by_rank = {20, 10};
  m.link_sent_bytes = {{{0, 1}, 10}, {{1, 0}, 15}, {{1, 1}, 5}};
  return m;
}

TEST(ProgressLine, ShowsEveryFieldInAboutAHundredColumns) {
  StepMetrics m = aStep();
  const std::string line = cli::progressLine(m, 200, 83.4, 3723.0);
  EXPECT_EQ(line,
            "step  12/200  loss 3.4567  lr 3.0e-04  gnorm 1.23  1234 tok/s  net 15%  rss 1.2GB"
            "  0:01:23 eta 1:02:03");
  EXPECT_LE(line.size(), 105u);
  m.val_loss_sum = 35.0;
  m.val_tokens = 10;
  const std::string with_val = cli::progressLine(m, 200, 83.4, 3723.0);
  EXPECT_NE(with_val.find("loss 3.4567  val 3.5000  lr"), std::string::npos) << with_val;
  EXPECT_LE(with_val.size(), 120u);
}

TEST(MetricsRecord, IsOneBasedWithWallClockGradNormAndBytesByRank) {
  // 2026-12-06T19:31:27.123Z
  const std::chrono::system_clock::time_point t{std::chrono::milliseconds(1796585487123)};
  const nlohmann::json j = cli::metricsRecord(aStep(), t);
  EXPECT_EQ(j.at("step"), 12);
  EXPECT_EQ(j.at("time"), "2026-12-06T19:31:27.123Z");
  EXPECT_DOUBLE_EQ(j.at("unix_time").get<double>(), 1796585487.123);
  EXPECT_DOUBLE_EQ(j.at("grad_norm").get<double>(), 1.2345);
  EXPECT_EQ(j.at("sent_bytes_by_rank"), nlohmann::json({10, 20}));
  EXPECT_EQ(j.at("received_bytes_by_rank"), nlohmann::json({20, 10}));
  EXPECT_EQ(j.at("peak_rss_bytes"), 1234567890);
  // Per link, in (from, to) order; a send to oneself is its own row.
  EXPECT_EQ(j.at("link_bytes"), nlohmann::json::parse(R"([{"from": 0, "to": 1, "bytes": 10},
                                                          {"from": 1, "to": 0, "bytes": 15},
                                                          {"from": 1, "to": 1, "bytes": 5}])"));
  EXPECT_FALSE(j.contains("val_loss"));
}

}  // namespace
