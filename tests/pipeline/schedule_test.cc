// GPipe and 1F1B action lists: known orders, deadlock freedom for every
// (stages, micro-batches) in 1..8 x 1..16, and the in-flight bound of 1F1B.
#include <gtest/gtest.h>

#include <algorithm>

#include "geopipe/error.h"
#include "src/pipeline/schedule.h"

using namespace geopipe::pipeline;

namespace {

std::vector<std::vector<Action>> allStages(ScheduleKind kind, int stages, int micro) {
  std::vector<std::vector<Action>> out;
  for (int s = 0; s < stages; ++s) out.push_back(buildSchedule(kind, s, stages, micro));
  return out;
}

// Compute actions only ("F0 F1 B0 ..."), the part the known orders fix.
std::string computeOrder(const std::vector<Action>& actions) {
  std::vector<Action> compute;
  for (const auto& a : actions) {
    if (a.type == ActionType::FORWARD || a.type == ActionType::BACKWARD) compute.push_back(a);
  }
  return formatActions(compute);
}

TEST(Schedule, GpipeKnownOrder) {
  auto a = buildSchedule(ScheduleKind::GPIPE, 1, 3, 3);
  EXPECT_EQ(formatActions(a),
            "rA0 F0 sA0 rA1 F1 sA1 rA2 F2 sA2 rG0 B0 sG0 rG1 B1 sG1 rG2 B2 sG2");
}

TEST(Schedule, OneFOneBKnownOrders) {
  // 4 stages, 8 micro-batches: stage s warms up with 3 - s forwards.
  EXPECT_EQ(computeOrder(buildSchedule(ScheduleKind::ONE_F_ONE_B, 0, 4, 8)),
            "F0 F1 F2 F3 B0 F4 B1 F5 B2 F6 B3 F7 B4 B5 B6 B7");
  EXPECT_EQ(computeOrder(buildSchedule(ScheduleKind::ONE_F_ONE_B, 2, 4, 8)),
            "F0 F1 B0 F2 B1 F3 B2 F4 B3 F5 B4 F6 B5 F7 B6 B7");
  EXPECT_EQ(computeOrder(buildSchedule(ScheduleKind::ONE_F_ONE_B, 3, 4, 8)),
            "F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5 F6 B6 F7 B7");
  // Fewer micro-batches than stages: warm-up is capped by M.
  EXPECT_EQ(computeOrder(buildSchedule(ScheduleKind::ONE_F_ONE_B, 0, 4, 2)),
            "F0 F1 B0 B1");
  EXPECT_EQ(formatActions(buildSchedule(ScheduleKind::ONE_F_ONE_B, 0, 1, 2)), "F0 B0 F1 B1");
}

TEST(Schedule, EveryShapeIsDeadlockFreeAndComplete) {
  for (ScheduleKind kind : {ScheduleKind::GPIPE, ScheduleKind::ONE_F_ONE_B}) {
    for (int stages = 1; stages <= 8; ++stages) {
      for (int micro = 1; micro <= 16; ++micro) {
        auto per_stage = allStages(kind, stages, micro);
        EXPECT_EQ(checkSchedules(per_stage, micro), "")
            << scheduleKindName(kind) << " S=" << stages << " M=" << micro;
        for (const auto& actions : per_stage) {
          int f = 0, b = 0;
          for (const auto& a : actions) {
            f += a.type == ActionType::FORWARD;
            b += a.type == ActionType::BACKWARD;
          }
          EXPECT_EQ(f, micro);
          EXPECT_EQ(b, micro);
        }
      }
    }
  }
}

TEST(Schedule, OneFOneBBoundsMicroBatchesInFlight) {
  for (int stages = 1; stages <= 8; ++stages) {
    for (int micro = 1; micro <= 16; ++micro) {
      for (int s = 0; s < stages; ++s) {
        int in_flight = 0, peak = 0;
        for (const auto& a : buildSchedule(ScheduleKind::ONE_F_ONE_B, s, stages, micro)) {
          if (a.type == ActionType::FORWARD) peak = std::max(peak, ++in_flight);
          if (a.type == ActionType::BACKWARD) --in_flight;
        }
        EXPECT_LE(peak, std::min(stages - s, micro)) << "S=" << stages << " s=" << s;
      }
    }
  }
  // GPipe holds every micro-batch at once.
  int peak = 0, in_flight = 0;
  for (const auto& a : buildSchedule(ScheduleKind::GPIPE, 0, 4, 8)) {
    if (a.type == ActionType::FORWARD) peak = std::max(peak, ++in_flight);
    if (a.type == ActionType::BACKWARD) --in_flight;
  }
  EXPECT_EQ(peak, 8);
}

TEST(Schedule, CheckerFindsADeadlock) {
  // Stage 1 waits for a gradient before it sends its activation onward:
  // a hand-made cycle the checker must report.
  std::vector<std::vector<Action>> bad = {
      {{ActionType::FORWARD, 0}, {ActionType::RECV_GRADIENT, 0},
       {ActionType::SEND_ACTIVATION, 0}, {ActionType::BACKWARD, 0}},
      {{ActionType::RECV_ACTIVATION, 0}, {ActionType::FORWARD, 0},
       {ActionType::BACKWARD, 0}, {ActionType::SEND_GRADIENT, 0}},
  };
  std::string why = checkSchedules(bad, 1);
  EXPECT_NE(why.find("deadlock"), std::string::npos) << why;
  std::vector<std::vector<Action>> backward_first = {
      {{ActionType::BACKWARD, 0}, {ActionType::FORWARD, 0}}};
  EXPECT_NE(checkSchedules(backward_first, 1).find("before F0"), std::string::npos);
}

TEST(Schedule, RejectsBadArguments) {
  EXPECT_THROW(buildSchedule(ScheduleKind::GPIPE, 3, 3, 4), geopipe::ConfigError);
  EXPECT_THROW(buildSchedule(ScheduleKind::GPIPE, 0, 3, 0), geopipe::ConfigError);
  EXPECT_THROW(scheduleKindFromName("zigzag"), geopipe::ConfigError);
  EXPECT_EQ(scheduleKindFromName("1f1b"), ScheduleKind::ONE_F_ONE_B);
}

}  // namespace
