// The stage executor over the in-process transport: payloads flow forward
// and backward in schedule order for every stage count, a dead peer or a
// silent one fails the step with a message naming stage and micro-batch,
// and the timeline shows sends on the wire while the stage computes.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "geopipe/error.h"
#include "src/common/trace_writer.h"
#include "src/pipeline/executor.h"
#include "src/transport/inproc/inproc_transport.h"
#include "src/transport/link_emulator.h"

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

// A stage whose forward and backward take 2 ms and send 20 kB.
class SlowStage : public StageCompute {
 public:
  Bytes forward(int64_t, int, Bytes) override {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    return Bytes(20000, 1);
  }
  Bytes backward(int64_t, int, Bytes) override {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    return Bytes(20000, 2);
  }
};

// Over a 0.01 Gbps link a 20 kB message is on the wire 16 ms. The sends
// are asynchronous, so stage 0 computes the next micro-batch meanwhile, and
// its timeline says so: a send span (post to completion) overlaps a later
// forward. Every forward, backward, send and receive of both steps is there,
// sends of one stage matching receives of the other.
TEST(Executor, TraceShowsSendsOnTheWireWhileTheStageComputes) {
  namespace fs = std::filesystem;
  const fs::path dir =
      fs::temp_directory_path() / ("geopipe-exec-trace-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  auto world = transport::emulateLinks(transport::makeInprocWorld(2), [](int, int) {
    return LinkSpec{0.5, 0.01};
  });
  const int micro = 4, steps = 2;
  std::vector<std::thread> threads;
  for (int s = 0; s < 2; ++s) {
    threads.emplace_back([&, s] {
      common::TraceWriterOptions to;
      to.path = (dir / ("stage" + std::to_string(s) + ".json")).string();
      to.pid = s;
      to.process_name = "stage " + std::to_string(s);
      common::TraceWriter trace(to);
      ExecutorOptions o;
      o.stage = s;
      o.num_stages = 2;
      o.prev_rank = s > 0 ? 0 : -1;
      o.next_rank = s < 1 ? 1 : -1;
      o.schedule = ScheduleKind::GPIPE;
      o.timeout = std::chrono::seconds(20);
      o.trace = &trace;
      StageExecutor ex(*world[s], o, micro);
      SlowStage compute;
      for (int step = 0; step < steps; ++step) ex.runStep(step, compute);
    });
  }
  for (auto& t : threads) t.join();

  std::vector<std::vector<nlohmann::json>> spans(2);
  for (int s = 0; s < 2; ++s) {
    std::ifstream in(dir / ("stage" + std::to_string(s) + ".json"));
    const std::string text((std::istreambuf_iterator<char>(in)), {});
    const auto j = nlohmann::json::parse(text, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << text;
    for (const auto& e : j["traceEvents"])
      if (e["ph"] == "X") spans[s].push_back(e);
  }
  fs::remove_all(dir);
  auto count = [&](int s, const std::string& name) {
    int n = 0;
    for (const auto& e : spans[s]) n += e["name"] == name;
    return n;
  };
  for (int s = 0; s < 2; ++s) {
    EXPECT_EQ(count(s, "forward"), micro * steps) << "stage " << s;
    EXPECT_EQ(count(s, "backward"), micro * steps) << "stage " << s;
  }
  EXPECT_EQ(count(0, "send activation"), micro * steps);
  EXPECT_EQ(count(1, "recv activation"), micro * steps);
  EXPECT_EQ(count(1, "send gradient"), micro * steps);
  EXPECT_EQ(count(0, "recv gradient"), micro * steps);
  int overlaps = 0;
  for (const auto& send : spans[0]) {
    if (send["name"] != "send activation") continue;
    const int64_t a = send["ts"], b = a + send["dur"].get<int64_t>();
    // From post to completion: at least the 16 ms of serialization.
    EXPECT_GE(b - a, 10000) << send;
    EXPECT_EQ(send["args"]["peer"], 1);
    EXPECT_EQ(send["args"]["bytes"], 20000);
    for (const auto& c : spans[0]) {
      const int64_t t = c["ts"];
      if (c["name"] == "forward" && t >= a && t < b) ++overlaps;
    }
  }
  EXPECT_GT(overlaps, 0) << "no send of stage 0 overlaps a later forward";
}

}  // namespace
