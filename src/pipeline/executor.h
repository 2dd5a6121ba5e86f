// Runs one stage's action list for a step over a transport: receives are
// posted at the start of the step so data arrives while the stage computes,
// and sends go out in the background. Torch-free: compute is a StageCompute.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "src/common/trace_writer.h"
#include "src/pipeline/schedule.h"
#include "src/transport/transport.h"

namespace geopipe::pipeline {

class CodecLane;

// What forward or backward hands to the neighbouring stage: the payload
// itself, or a function that makes it (`make`, an encode). The executor runs
// `make` on its codec lane (one thread per executor, functions in the order
// they were handed over) and sends its bytes from there, so the compute
// thread goes on with the next micro-batch meanwhile. A `make` may touch
// state of the stage that nothing else touches during a step (an encoder);
// runStep returns only after every `make` of the step has returned. What it
// throws fails the step as a failed send does.
struct Outgoing {
  Outgoing() = default;
  // NOLINTNEXTLINE(google-explicit-constructor): bytes are the common case
  Outgoing(transport::Bytes bytes) : payload(std::move(bytes)) {}
  static Outgoing deferred(std::function<transport::Bytes()> make) {
    Outgoing o;
    o.make = std::move(make);
    return o;
  }
  transport::Bytes payload;
  std::function<transport::Bytes()> make;
};

// The compute of one tasklet, implemented by the runtime (LibTorch) or by a
// test. Called from the executor's thread only, in schedule order.
class StageCompute {
 public:
  virtual ~StageCompute() = default;
  // Forward of micro-batch m. `input` is the payload received from the
  // previous stage (empty on the first stage). Returns the payload for the
  // next stage (ignored on the last stage).
  virtual Outgoing forward(int64_t step, int m, transport::Bytes input) = 0;
  // Backward of micro-batch m. `grad` is the payload from the next stage
  // (empty on the last stage). Returns the payload for the previous stage
  // (ignored on the first stage).
  virtual Outgoing backward(int64_t step, int m, transport::Bytes grad) = 0;
};

struct ExecutorOptions {
  int stage = 0;                 // this tasklet's stage
  int num_stages = 1;            // D_pp
  int prev_rank = -1;            // transport rank of stage - 1 in this replica (-1: none)
  int next_rank = -1;            // transport rank of stage + 1 in this replica (-1: none)
  ScheduleKind schedule = ScheduleKind::ONE_F_ONE_B;
  // Longest wait for one message before the step fails with TimeoutError.
  std::chrono::milliseconds timeout{std::chrono::seconds(120)};
  // The delivery receipt, for a stage whose data-parallel exchange follows
  // the step: a stage's last gradient to stage - 1 and the start of its
  // exchange would otherwise leave its host at once and share its uplink,
  // which slows the gradient that stage - 1 (and the step) waits for.
  // send_receipt: once this stage has the step's last gradient from stage
  // + 1, it tells stage + 1 so (an empty CONTROL message, receiptTag()).
  // await_receipt: runStep returns only after stage - 1's receipt arrived.
  // A pipeline sets both or neither on every stage (send_receipt on all
  // but the last, await_receipt on all but the first).
  bool send_receipt = false;
  bool await_receipt = false;
  // The timeline (logging.trace_dir), or null: each forward and backward,
  // each wait of this thread, and each send and receive from its post to
  // its completion (Work::finishedAt). Not owned; outlives the executor.
  common::TraceWriter* trace = nullptr;
};

// The tag of step `step`'s delivery receipt (ExecutorOptions::send_receipt).
transport::Tag receiptTag(int64_t step);

// Time one step spent, for the "outside compute" share of the critical path.
struct StepTiming {
  double compute_s = 0;   // inside StageCompute::forward/backward
  double wait_recv_s = 0; // blocked on a receive the compute needed
  double wait_codec_s = 0;  // blocked at the end of the step on payloads the
                            // codec lane was still making
  double wait_send_s = 0; // blocked at the end of the step on sends in flight
  double wait_receipt_s = 0;  // then on stage - 1's delivery receipt
  double total_s = 0;
};

// Drives one tasklet through the steps of a job. Not thread-safe: one thread
// calls runStep at a time; the transport does the rest in the background.
class StageExecutor {
 public:
  StageExecutor(transport::Transport& transport, ExecutorOptions options,
                int num_micro_batches);
  ~StageExecutor();
  // Runs every action of `step`; returns when all of this stage's sends have
  // completed. Rethrows transport failures (TimeoutError, ProtocolError)
  // with the stage, step and micro-batch added.
  StepTiming runStep(int64_t step, StageCompute& compute);
  const std::vector<Action>& actions() const { return actions_; }

 private:
  transport::Transport& transport_;
  ExecutorOptions options_;
  int num_micro_batches_;
  std::vector<Action> actions_;
  std::unique_ptr<CodecLane> lane_;  // made by the first deferred payload
};

}  // namespace geopipe::pipeline
