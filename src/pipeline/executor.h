// Runs one stage's action list for a step over a transport: receives are
// posted at the start of the step so data arrives while the stage computes,
// and sends go out in the background. Torch-free: compute is a StageCompute.
#pragma once

#include <chrono>
#include <cstdint>
#include <vector>

#include "src/common/trace_writer.h"
#include "src/pipeline/schedule.h"
#include "src/transport/transport.h"

namespace geopipe::pipeline {

// The compute of one tasklet, implemented by the runtime (LibTorch) or by a
// test. Called from the executor's thread only, in schedule order.
class StageCompute {
 public:
  virtual ~StageCompute() = default;
  // Forward of micro-batch m. `input` is the payload received from the
  // previous stage (empty on the first stage). Returns the payload for the
  // next stage (ignored on the last stage).
  virtual transport::Bytes forward(int64_t step, int m, transport::Bytes input) = 0;
  // Backward of micro-batch m. `grad` is the payload from the next stage
  // (empty on the last stage). Returns the payload for the previous stage
  // (ignored on the first stage).
  virtual transport::Bytes backward(int64_t step, int m, transport::Bytes grad) = 0;
};

struct ExecutorOptions {
  int stage = 0;                 // this tasklet's stage
  int num_stages = 1;            // D_pp
  int prev_rank = -1;            // transport rank of stage - 1 in this replica (-1: none)
  int next_rank = -1;            // transport rank of stage + 1 in this replica (-1: none)
  ScheduleKind schedule = ScheduleKind::ONE_F_ONE_B;
  // Longest wait for one message before the step fails with TimeoutError.
  std::chrono::milliseconds timeout{std::chrono::seconds(120)};
  // The timeline (logging.trace_dir), or null: each forward and backward,
  // each wait of this thread, and each send and receive from its post to
  // its completion (Work::finishedAt). Not owned; outlives the executor.
  common::TraceWriter* trace = nullptr;
};

// Time one step spent, for the "outside compute" share of the critical path.
struct StepTiming {
  double compute_s = 0;   // inside StageCompute::forward/backward
  double wait_recv_s = 0; // blocked on a receive the compute needed
  double wait_send_s = 0; // blocked at the end of the step on sends in flight
  double total_s = 0;
};

// Drives one tasklet through the steps of a job. Not thread-safe: one thread
// calls runStep at a time; the transport does the rest in the background.
class StageExecutor {
 public:
  StageExecutor(transport::Transport& transport, ExecutorOptions options,
                int num_micro_batches);
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
};

}  // namespace geopipe::pipeline
