// Pipeline schedules as explicit per-stage action lists: which micro-batch a
// stage runs forward or backward next, and when it receives and sends.
#pragma once

#include <string>
#include <vector>

namespace geopipe::pipeline {

enum class ScheduleKind { GPIPE, ONE_F_ONE_B };

// Parses "gpipe" or "1f1b"; throws ConfigError otherwise.
ScheduleKind scheduleKindFromName(const std::string& name);
const char* scheduleKindName(ScheduleKind kind);

enum class ActionType {
  RECV_ACTIVATION,  // from stage s-1: the input of FORWARD(m)
  FORWARD,
  SEND_ACTIVATION,  // to stage s+1: the output of FORWARD(m)
  RECV_GRADIENT,    // from stage s+1: d loss / d output of micro-batch m
  BACKWARD,
  SEND_GRADIENT,    // to stage s-1: d loss / d input of micro-batch m
};

struct Action {
  ActionType type;
  int micro_batch;
  bool operator==(const Action& o) const {
    return type == o.type && micro_batch == o.micro_batch;
  }
};

// "F3", "B0", "rA3" (recv activation), "sA3", "rG3", "sG3".
std::string formatAction(const Action& a);
std::string formatActions(const std::vector<Action>& actions);

// The actions of `stage` (0-based) in a pipeline of `num_stages` stages for
// one optimizer step of `num_micro_batches` micro-batches.
//
// GPipe: all forwards, then all backwards (in micro-batch order): peak
// activation memory grows with the micro-batch count.
// 1F1B: stage s first runs min(S - s - 1, M) warm-up forwards, then alternates
// one forward and one backward, then drains the remaining backwards: at most
// S - s micro-batches are in flight on stage s.
// Receives come right before the compute that needs them and sends right
// after the compute that produced them; the executor posts receives early
// and sends in the background, so communication overlaps compute.
std::vector<Action> buildSchedule(ScheduleKind kind, int stage, int num_stages,
                                  int num_micro_batches);

// Simulates all stages' action lists with buffered sends and blocking
// receives. Returns an empty string when every stage finishes, or a
// description of the deadlock / mismatch (for tests and for checking a
// user-supplied schedule).
std::string checkSchedules(const std::vector<std::vector<Action>>& per_stage,
                           int num_micro_batches);

}  // namespace geopipe::pipeline
