// GPipe and 1F1B action lists and a deadlock checker.
#include "src/pipeline/schedule.h"

#include <algorithm>
#include <map>
#include <sstream>
#include <tuple>

#include "geopipe/error.h"

namespace geopipe::pipeline {

ScheduleKind scheduleKindFromName(const std::string& name) {
  if (name == "gpipe") return ScheduleKind::GPIPE;
  if (name == "1f1b") return ScheduleKind::ONE_F_ONE_B;
  GEOPIPE_THROW(ConfigError, "unknown pipeline schedule '", name,
                "': expected gpipe or 1f1b");
}

const char* scheduleKindName(ScheduleKind kind) {
  return kind == ScheduleKind::GPIPE ? "gpipe" : "1f1b";
}

std::string formatAction(const Action& a) {
  static const char* const kNames[] = {"rA", "F", "sA", "rG", "B", "sG"};
  return kNames[static_cast<int>(a.type)] + std::to_string(a.micro_batch);
}

std::string formatActions(const std::vector<Action>& actions) {
  std::string out;
  for (size_t i = 0; i < actions.size(); ++i) {
    if (i) out += ' ';
    out += formatAction(actions[i]);
  }
  return out;
}

namespace {

void forward(std::vector<Action>& out, int m, int stage, int num_stages) {
  if (stage > 0) out.push_back({ActionType::RECV_ACTIVATION, m});
  out.push_back({ActionType::FORWARD, m});
  if (stage < num_stages - 1) out.push_back({ActionType::SEND_ACTIVATION, m});
}

void backward(std::vector<Action>& out, int m, int stage, int num_stages) {
  if (stage < num_stages - 1) out.push_back({ActionType::RECV_GRADIENT, m});
  out.push_back({ActionType::BACKWARD, m});
  if (stage > 0) out.push_back({ActionType::SEND_GRADIENT, m});
}

}  // namespace

std::vector<Action> buildSchedule(ScheduleKind kind, int stage, int num_stages,
                                  int num_micro_batches) {
  GEOPIPE_CHECK(num_stages >= 1 && stage >= 0 && stage < num_stages, ConfigError,
                "stage ", stage, " outside a pipeline of ", num_stages, " stages");
  GEOPIPE_CHECK(num_micro_batches >= 1, ConfigError,
                "a step needs at least one micro-batch, got ", num_micro_batches);
  std::vector<Action> out;
  const int m_total = num_micro_batches;
  if (kind == ScheduleKind::GPIPE) {
    for (int m = 0; m < m_total; ++m) forward(out, m, stage, num_stages);
    for (int m = 0; m < m_total; ++m) backward(out, m, stage, num_stages);
    return out;
  }
  const int warmup = std::min(num_stages - stage - 1, m_total);
  int next_f = 0, next_b = 0;
  for (; next_f < warmup; ++next_f) forward(out, next_f, stage, num_stages);
  while (next_f < m_total) {
    forward(out, next_f++, stage, num_stages);
    backward(out, next_b++, stage, num_stages);
  }
  while (next_b < m_total) backward(out, next_b++, stage, num_stages);
  return out;
}

std::string checkSchedules(const std::vector<std::vector<Action>>& per_stage,
                           int num_micro_batches) {
  const int stages = static_cast<int>(per_stage.size());
  // Messages in flight: (kind 0 = activation to s, 1 = gradient to s, s, m).
  std::map<std::tuple<int, int, int>, int> mailbox;
  std::vector<size_t> pc(stages, 0);
  // Per stage: which forwards / backwards ran (a backward needs its forward).
  std::vector<std::vector<bool>> fwd(stages, std::vector<bool>(num_micro_batches)),
      bwd(stages, std::vector<bool>(num_micro_batches));
  auto take = [&](int kind, int s, int m) {
    auto it = mailbox.find({kind, s, m});
    if (it == mailbox.end() || it->second == 0) return false;
    --it->second;
    return true;
  };
  bool progress = true;
  while (progress) {
    progress = false;
    for (int s = 0; s < stages; ++s) {
      while (pc[s] < per_stage[s].size()) {
        const Action& a = per_stage[s][pc[s]];
        const int m = a.micro_batch;
        if (m < 0 || m >= num_micro_batches) {
          return "stage " + std::to_string(s) + ": micro-batch out of range in " +
                 formatAction(a);
        }
        bool ok = true;
        switch (a.type) {
          case ActionType::RECV_ACTIVATION:
            ok = take(0, s, m);
            break;
          case ActionType::RECV_GRADIENT:
            ok = take(1, s, m);
            break;
          case ActionType::SEND_ACTIVATION:
            if (s + 1 >= stages) return "last stage sends an activation";
            if (!fwd[s][m]) return "stage " + std::to_string(s) + " sends before forward: " + formatAction(a);
            mailbox[{0, s + 1, m}]++;
            break;
          case ActionType::SEND_GRADIENT:
            if (s == 0) return "first stage sends a gradient";
            if (!bwd[s][m]) return "stage " + std::to_string(s) + " sends before backward: " + formatAction(a);
            mailbox[{1, s - 1, m}]++;
            break;
          case ActionType::FORWARD:
            fwd[s][m] = true;
            break;
          case ActionType::BACKWARD:
            if (!fwd[s][m]) {
              return "stage " + std::to_string(s) + " runs B" + std::to_string(m) +
                     " before F" + std::to_string(m);
            }
            bwd[s][m] = true;
            break;
        }
        if (!ok) break;
        ++pc[s];
        progress = true;
      }
    }
  }
  std::ostringstream blocked;
  bool deadlock = false;
  for (int s = 0; s < stages; ++s) {
    if (pc[s] < per_stage[s].size()) {
      deadlock = true;
      blocked << " stage " << s << " waits at " << formatAction(per_stage[s][pc[s]]) << ";";
    }
    for (int m = 0; m < num_micro_batches; ++m) {
      if (!deadlock && (!fwd[s][m] || !bwd[s][m])) {
        return "stage " + std::to_string(s) + " never ran micro-batch " + std::to_string(m);
      }
    }
  }
  if (deadlock) return "deadlock:" + blocked.str();
  for (const auto& [key, count] : mailbox) {
    if (count != 0) return "a message was sent but never received";
  }
  return "";
}

}  // namespace geopipe::pipeline
