// The stage executor over the in-process transport: payloads flow forward
// and backward in schedule order for every stage count, a dead peer or a
// silent one fails the step with a message naming stage and micro-batch,
// and the timeline shows sends on the wire while the stage computes.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
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
// chain. Backward does the same with "B<stage>" going the other way. A
// deferred stage hands its payloads over as functions that make them, which
// run on the executor's codec lane and record their order in `made`.
class TraceStage : public StageCompute {
 public:
  TraceStage(int stage, int stages, bool deferred = false)
      : stage_(stage), stages_(stages), deferred_(deferred) {}
  Outgoing forward(int64_t step, int m, Bytes input) override {
    std::string in = stage_ == 0 ? "s" + std::to_string(step) + "m" + std::to_string(m) : str(input);
    std::string out = in + ">F" + std::to_string(stage_);
    if (stage_ == stages_ - 1) forward_seen.push_back(out);
    order += "F" + std::to_string(m);
    return hand(out, "F" + std::to_string(m));
  }
  Outgoing backward(int64_t step, int m, Bytes grad) override {
    std::string in = stage_ == stages_ - 1 ? "g" + std::to_string(m) : str(grad);
    std::string out = in + "<B" + std::to_string(stage_);
    if (stage_ == 0) backward_seen.push_back(out);
    order += "B" + std::to_string(m);
    return hand(out, "B" + std::to_string(m));
  }
  int stage_, stages_;
  bool deferred_;
  std::vector<std::string> forward_seen, backward_seen;
  std::string order, made;

 private:
  Outgoing hand(const std::string& payload, const std::string& what) {
    if (!deferred_) return text(payload);
    return Outgoing::deferred([this, payload, what] {
      made += what;
      return text(payload);
    });
  }
};

void runPipeline(int stages, int micro, ScheduleKind kind, std::vector<TraceStage>& computes,
                 bool deferred = false, bool receipts = false) {
  auto world = transport::makeInprocWorld(stages);
  std::vector<std::thread> threads;
  computes.reserve(static_cast<size_t>(stages));
  for (int s = 0; s < stages; ++s) computes.emplace_back(s, stages, deferred);
  for (int s = 0; s < stages; ++s) {
    threads.emplace_back([&, s] {
      ExecutorOptions o;
      o.stage = s;
      o.num_stages = stages;
      o.prev_rank = s > 0 ? s - 1 : -1;
      o.next_rank = s < stages - 1 ? s + 1 : -1;
      o.schedule = kind;
      o.timeout = std::chrono::seconds(20);
      o.send_receipt = receipts && o.next_rank >= 0;
      o.await_receipt = receipts && o.prev_rank >= 0;
      StageExecutor ex(*world[s], o, micro);
      for (int step = 0; step < 2; ++step) ex.runStep(step, computes[s]);
    });
  }
  for (auto& t : threads) t.join();
}

// Payloads handed over as bytes or made on the codec lane arrive alike.
TEST(Executor, PayloadsCrossEveryStageInBothDirections) {
  for (bool deferred : {false, true}) {
    for (ScheduleKind kind : {ScheduleKind::GPIPE, ScheduleKind::ONE_F_ONE_B}) {
      for (int stages : {1, 2, 3, 5}) {
        SCOPED_TRACE(std::string(deferred ? "deferred" : "bytes") + ", " + std::to_string(stages) +
                     " stages");
        const int micro = 4;
        std::vector<TraceStage> c;
        runPipeline(stages, micro, kind, c, deferred);
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
}

// The codec lane makes a stage's payloads one at a time in the order the
// compute handed them over (an AC-SGD encoder's buffers depend on it), and
// every one of them before runStep returns.
TEST(Executor, TheCodecLaneMakesPayloadsInComputeOrder) {
  std::vector<TraceStage> c;
  runPipeline(3, 4, ScheduleKind::ONE_F_ONE_B, c, /*deferred=*/true);
  EXPECT_EQ(c[1].made, c[1].order);  // a middle stage sends after every forward and backward
  EXPECT_EQ(c[1].made, "F0F1B0F2B1F3B2B3F0F1B0F2B1F3B2B3");
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

// Stage 0 of two, whose backward takes 300 ms: it gets to the step's last
// gradient (micro-batch 3 of 4) only after backward 2 has ended.
class SlowBackwardStage : public TraceStage {
 public:
  SlowBackwardStage() : TraceStage(0, 2) {}
  Outgoing backward(int64_t step, int m, Bytes grad) override {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    if (m == 2) before_last_gradient = transport::Clock::now();
    return TraceStage::backward(step, m, std::move(grad));
  }
  transport::Clock::time_point before_last_gradient;
};

// With receipts, stage 1's step ends only once stage 0 holds its last
// gradient (so its data-parallel exchange does not share the uplink with
// that gradient); without, it ends when the gradient is handed off, here
// about 300 ms earlier.
TEST(Executor, AStageWaitsForTheReceiptOfItsLastGradientWhenAsked) {
  for (bool receipts : {false, true}) {
    SCOPED_TRACE(receipts ? "receipts" : "no receipts");
    auto world = transport::makeInprocWorld(2);
    SlowBackwardStage first;
    TraceStage second(1, 2);
    transport::Clock::time_point second_done;
    StepTiming second_timing;
    std::thread t0([&] {
      ExecutorOptions o;
      o.num_stages = 2;
      o.next_rank = 1;
      o.send_receipt = receipts;
      o.timeout = std::chrono::seconds(20);
      StageExecutor(*world[0], o, 4).runStep(0, first);
    });
    std::thread t1([&] {
      ExecutorOptions o;
      o.stage = 1;
      o.num_stages = 2;
      o.prev_rank = 0;
      o.await_receipt = receipts;
      o.timeout = std::chrono::seconds(20);
      second_timing = StageExecutor(*world[1], o, 4).runStep(0, second);
      second_done = transport::Clock::now();
    });
    t0.join();
    t1.join();
    ASSERT_EQ(first.backward_seen.size(), 4u);
    if (receipts) {
      EXPECT_GE(second_done, first.before_last_gradient);
      EXPECT_GT(second_timing.wait_receipt_s, 0.1);
    } else {
      EXPECT_LT(second_done + std::chrono::milliseconds(100), first.before_last_gradient);
      EXPECT_EQ(second_timing.wait_receipt_s, 0);
    }
  }
  // Every stage count, schedule and micro-batch count with receipts: a middle
  // stage both sends and awaits one; two steps in a row complete.
  for (ScheduleKind kind : {ScheduleKind::GPIPE, ScheduleKind::ONE_F_ONE_B}) {
    for (int stages : {2, 3, 5}) {
      for (int micro : {1, 4}) {
        std::vector<TraceStage> c;
        runPipeline(stages, micro, kind, c, /*deferred=*/false, /*receipts=*/true);
        EXPECT_EQ(c.front().backward_seen.size(), 2u * micro);
      }
    }
  }
  // Only a stage with a next (previous) stage can send (await) a receipt.
  auto world = transport::makeInprocWorld(2);
  ExecutorOptions last;
  last.stage = 1;
  last.num_stages = 2;
  last.prev_rank = 0;
  last.send_receipt = true;
  EXPECT_THROW(StageExecutor(*world[1], last, 1), ConfigError);
  ExecutorOptions first;
  first.num_stages = 2;
  first.next_rank = 1;
  first.await_receipt = true;
  EXPECT_THROW(StageExecutor(*world[0], first, 1), ConfigError);
}

// A stage whose forward and backward take 2 ms and send 20 kB.
class SlowStage : public StageCompute {
 public:
  Outgoing forward(int64_t, int, Bytes) override {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    return Bytes(20000, 1);
  }
  Outgoing backward(int64_t, int, Bytes) override {
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

// Stage 0 of two (its next stage is rank 1), GPipe, waiting `timeout` for
// each message.
ExecutorOptions firstOfTwo(std::chrono::milliseconds timeout) {
  ExecutorOptions o;
  o.num_stages = 2;
  o.next_rank = 1;
  o.schedule = ScheduleKind::GPIPE;
  o.timeout = timeout;
  return o;
}

// A stage whose forward takes 20 ms and whose payload takes 20 ms to make
// (an encode), on the codec lane, which records it on the trace's codec row.
class EncodingStage : public StageCompute {
 public:
  explicit EncodingStage(common::TraceWriter* trace) : trace_(trace) {}
  Outgoing forward(int64_t step, int m, Bytes) override {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return Outgoing::deferred([this, step, m] {
      common::TraceSpan span(trace_, common::TraceLane::CODEC, "encode activation", {step, m});
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      return Bytes(100, static_cast<uint8_t>(m));
    });
  }
  Outgoing backward(int64_t, int, Bytes) override { return Bytes(); }

 private:
  common::TraceWriter* trace_;
};

std::vector<nlohmann::json> completeEvents(const std::filesystem::path& file) {
  std::ifstream in(file);
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  const auto j = nlohmann::json::parse(text, nullptr, false);
  std::vector<nlohmann::json> out;
  if (j.is_discarded()) {
    ADD_FAILURE() << "not JSON: " << text;
    return out;
  }
  for (const auto& e : j["traceEvents"])
    if (e["ph"] == "X") out.push_back(e);
  return out;
}

// The compute thread does not wait for a payload to be made: the forward
// of micro-batch m+1 starts while micro-batch m is still being encoded on
// the codec lane, and the timeline shows it on a row of its own.
TEST(Executor, PayloadsAreMadeOnTheCodecLaneWhileTheStageComputes) {
  namespace fs = std::filesystem;
  const fs::path file =
      fs::temp_directory_path() / ("geopipe-codec-lane-" + std::to_string(::getpid()) + ".json");
  auto world = transport::makeInprocWorld(2);
  const int micro = 4;
  std::thread receiver([&] {
    for (int m = 0; m < micro; ++m) {
      auto r = world[1]->recv(0, transport::Tag{transport::Channel::ACTIVATION, 0, m, 0});
      r->wait(std::chrono::seconds(20));
      EXPECT_EQ(r->takePayload(), Bytes(100, static_cast<uint8_t>(m)));
    }
    for (int m = 0; m < micro; ++m) {
      world[1]->send(0, transport::Tag{transport::Channel::ACTIVATION_GRAD, 0, m, 0}, Bytes());
    }
  });
  {
    common::TraceWriterOptions to;
    to.path = file.string();
    common::TraceWriter trace(to);
    ExecutorOptions o = firstOfTwo(std::chrono::seconds(20));
    o.trace = &trace;
    StageExecutor ex(*world[0], o, micro);
    EncodingStage compute(&trace);
    ex.runStep(0, compute);
  }
  receiver.join();
  const auto spans = completeEvents(file);
  fs::remove(file);
  std::map<int64_t, std::pair<int64_t, int64_t>> forward, encode;  // by micro-batch
  std::set<int64_t> encode_rows, compute_rows;
  for (const auto& e : spans) {
    const int64_t a = e["ts"], b = a + e["dur"].get<int64_t>();
    if (e["name"] == "forward") {
      forward[e["args"]["micro_batch"]] = {a, b};
      compute_rows.insert(e["tid"].get<int64_t>());
    }
    if (e["name"] == "encode activation") {
      encode[e["args"]["micro_batch"]] = {a, b};
      encode_rows.insert(e["tid"].get<int64_t>());
    }
  }
  ASSERT_EQ(forward.size(), size_t{micro});
  ASSERT_EQ(encode.size(), size_t{micro});
  ASSERT_EQ(encode_rows.size(), 1u);
  EXPECT_EQ(compute_rows.count(*encode_rows.begin()), 0u) << "encodes drawn on the compute row";
  for (int m = 0; m + 1 < micro; ++m) {
    // Micro-batch m is encoded after its forward, and the next forward
    // starts before that encode ends.
    EXPECT_GE(encode[m].first, forward[m].second) << "micro-batch " << m;
    EXPECT_LT(forward[m + 1].first, encode[m].second) << "micro-batch " << m;
    // One at a time, in order.
    EXPECT_GE(encode[m + 1].first, encode[m].second) << "micro-batch " << m;
  }
}

// A payload that cannot be made (an encoder refusing its input) fails the
// step with its own error type, saying where, and leaves nothing running.
TEST(Executor, APayloadThatCannotBeMadeFailsTheStepSayingWhere) {
  class Refusing : public StageCompute {
   public:
    Outgoing forward(int64_t, int m, Bytes) override {
      return Outgoing::deferred([m]() -> Bytes {
        if (m == 1) GEOPIPE_THROW(ProtocolError, "activation is not finite");
        return Bytes(10, 1);
      });
    }
    Outgoing backward(int64_t, int, Bytes) override { return Bytes(); }
  };
  auto world = transport::makeInprocWorld(2);
  StageExecutor ex(*world[0], firstOfTwo(std::chrono::seconds(2)), 2);
  for (int m = 0; m < 2; ++m) {
    world[1]->send(0, transport::Tag{transport::Channel::ACTIVATION_GRAD, 0, m, 0}, Bytes());
  }
  Refusing compute;
  try {
    ex.runStep(0, compute);
    FAIL() << "the step went through";
  } catch (const ProtocolError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("stage 0 step 0 micro-batch 1: making the payload to rank 1 (send "
                       "activation): activation is not finite"),
              std::string::npos)
        << msg;
  }
}

// A step that fails (here a receive that times out) still waits for the
// payloads its codec lane is making: when runStep throws, the stage's
// encoders are its own again (a checkpoint or a recovery may use them).
TEST(Executor, AFailedStepLeavesNothingRunningOnTheCodecLane) {
  class SlowMaker : public StageCompute {
   public:
    std::atomic<bool> made{false};
    Outgoing forward(int64_t, int, Bytes) override {
      return Outgoing::deferred([this] {
        std::this_thread::sleep_for(std::chrono::milliseconds(400));
        made = true;
        return Bytes(10, 1);
      });
    }
    Outgoing backward(int64_t, int, Bytes) override { return Bytes(); }
  };
  auto world = transport::makeInprocWorld(2);
  // The gradient never comes.
  StageExecutor ex(*world[0], firstOfTwo(std::chrono::milliseconds(50)), 1);
  SlowMaker compute;
  EXPECT_THROW(ex.runStep(0, compute), TimeoutError);
  EXPECT_TRUE(compute.made.load()) << "runStep returned while its payload was still being made";
}

}  // namespace
