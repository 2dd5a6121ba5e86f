// The stage executor over the in-process transport: payloads flow forward
// and backward in schedule order for every stage count, and a dead peer or
// a silent one fails the step with a message naming stage and micro-batch.
#include <gtest/gtest.h>

#include <string>
#include <thread>

#include "geopipe/error.h"
#include "src/pipeline/executor.h"
#include "src/transport/inproc/inproc_transport.h"

using namespace geopipe;
using namespace geopipe::pipeline;
using transport::Bytes;

namespace {

Bytes text(const std::string& s) { return Bytes(s.begin(), s.end()); }
std::string str(const Bytes& b) { return std::string(b.begin(), b.end()); }

// Forward appends "F<stage>" to what it received; the last stage records the
// chain. Backward does the same with "B<stage>" going the other way.
class TraceStage : public StageCompute {
 public:
  TraceStage(int stage, int stages) : stage_(stage), stages_(stages) {}
  Bytes forward(int64_t step, int m, Bytes input) override {
    std::string in = stage_ == 0 ? "s" + std::to_string(step) + "m" + std::to_string(m) : str(input);
    std::string out = in + ">F" + std::to_string(stage_);
    if (stage_ == stages_ - 1) forward_seen.push_back(out);
    order += "F" + std::to_string(m);
    return text(out);
  }
  Bytes backward(int64_t step, int m, Bytes grad) override {
    std::string in = stage_ == stages_ - 1 ? "g" + std::to_string(m) : str(grad);
    std::string out = in + "<B" + std::to_string(stage_);
    if (stage_ == 0) backward_seen.push_back(out);
    order += "B" + std::to_string(m);
    return text(out);
  }
  int stage_, stages_;
  std::vector<std::string> forward_seen, backward_seen;
  std::string order;
};

void runPipeline(int stages, int micro, ScheduleKind kind, std::vector<TraceStage>& computes) {
  auto world = transport::makeInprocWorld(stages);
  std::vector<std::thread> threads;
  for (int s = 0; s < stages; ++s) computes.emplace_back(s, stages);
  for (int s = 0; s < stages; ++s) {
    threads.emplace_back([&, s] {
      ExecutorOptions o;
      o.stage = s;
      o.num_stages = stages;
      o.prev_rank = s > 0 ? s - 1 : -1;
      o.next_rank = s < stages - 1 ? s + 1 : -1;
      o.schedule = kind;
      o.timeout = std::chrono::seconds(20);
      StageExecutor ex(*world[s], o, micro);
      for (int step = 0; step < 2; ++step) ex.runStep(step, computes[s]);
    });
  }
  for (auto& t : threads) t.join();
}

TEST(Executor, PayloadsCrossEveryStageInBothDirections) {
  for (ScheduleKind kind : {ScheduleKind::GPIPE, ScheduleKind::ONE_F_ONE_B}) {
    for (int stages : {1, 2, 3, 5}) {
      const int micro = 4;
      std::vector<TraceStage> c;
      runPipeline(stages, micro, kind, c);
      std::string fchain, bchain;
      for (int s = 0; s < stages; ++s) fchain += ">F" + std::to_string(s);
      for (int s = stages - 1; s >= 0; --s) bchain += "<B" + std::to_string(s);
      ASSERT_EQ(c.back().forward_seen.size(), 2u * micro);
      EXPECT_EQ(c.back().forward_seen[5], "s1m1" + fchain);
      ASSERT_EQ(c.front().backward_seen.size(), 2u * micro);
      EXPECT_EQ(c.front().backward_seen[3], "g3" + bchain);
    }
  }
}

TEST(Executor, ComputeRunsInScheduleOrder) {
  std::vector<TraceStage> c;
  runPipeline(3, 4, ScheduleKind::ONE_F_ONE_B, c);
  // Stage 0 warms up with 2 forwards; two steps run back to back.
  EXPECT_EQ(c[0].order, "F0F1F2B0F3B1B2B3F0F1F2B0F3B1B2B3");
  EXPECT_EQ(c[2].order, "F0B0F1B1F2B2F3B3F0B0F1B1F2B2F3B3");
}

TEST(Executor, DeadPeerFailsTheStepNamingWhere) {
  std::shared_ptr<transport::InprocHub> hub;
  auto world = transport::makeInprocWorld(2, &hub);
  hub->markFailed(0, "killed by the test");
  ExecutorOptions o;
  o.stage = 1;
  o.num_stages = 2;
  o.prev_rank = 0;
  o.timeout = std::chrono::seconds(5);
  StageExecutor ex(*world[1], o, 2);
  TraceStage compute(1, 2);
  try {
    ex.runStep(0, compute);
    FAIL();
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("stage 1 step 0 micro-batch 0"), std::string::npos) << msg;
    EXPECT_NE(msg.find("killed by the test"), std::string::npos) << msg;
  }
}

TEST(Executor, SilentPeerTimesOut) {
  auto world = transport::makeInprocWorld(2);
  ExecutorOptions o;
  o.stage = 1;
  o.num_stages = 2;
  o.prev_rank = 0;
  o.timeout = std::chrono::milliseconds(200);
  StageExecutor ex(*world[1], o, 1);
  TraceStage compute(1, 2);
  EXPECT_THROW(ex.runStep(0, compute), TimeoutError);
}

TEST(Executor, RejectsInconsistentRanks) {
  auto world = transport::makeInprocWorld(2);
  ExecutorOptions o;
  o.stage = 1;
  o.num_stages = 2;  // a middle/last stage without a previous rank
  EXPECT_THROW(StageExecutor(*world[1], o, 1), ConfigError);
}

}  // namespace
