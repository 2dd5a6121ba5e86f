// The stage executor: schedule actions over a transport.
#include "src/pipeline/executor.h"

#include <map>
#include <memory>
#include <string>

#include "geopipe/error.h"

namespace geopipe::pipeline {
namespace {

using transport::Channel;
using transport::Tag;

double secondsSince(transport::Clock::time_point t0) {
  return std::chrono::duration<double>(transport::Clock::now() - t0).count();
}

}  // namespace

StageExecutor::StageExecutor(transport::Transport& transport, ExecutorOptions options,
                             int num_micro_batches)
    : transport_(transport), options_(options), num_micro_batches_(num_micro_batches) {
  actions_ = buildSchedule(options_.schedule, options_.stage, options_.num_stages,
                           num_micro_batches_);
  GEOPIPE_CHECK((options_.stage == 0) == (options_.prev_rank < 0), ConfigError,
                "stage ", options_.stage, " needs a previous rank iff it is not the first");
  GEOPIPE_CHECK((options_.stage == options_.num_stages - 1) == (options_.next_rank < 0),
                ConfigError, "stage ", options_.stage,
                " needs a next rank iff it is not the last");
}

StepTiming StageExecutor::runStep(int64_t step, StageCompute& compute) {
  StepTiming timing;
  const auto t_step = transport::Clock::now();
  // Post every receive of the step up front: the transport fills them while
  // this thread computes, so communication overlaps compute.
  std::map<std::pair<int, int>, std::shared_ptr<transport::RecvWork>> recvs;
  for (const Action& a : actions_) {
    if (a.type == ActionType::RECV_ACTIVATION) {
      recvs[{0, a.micro_batch}] = transport_.recv(
          options_.prev_rank, Tag{Channel::ACTIVATION, step, a.micro_batch, 0});
    } else if (a.type == ActionType::RECV_GRADIENT) {
      recvs[{1, a.micro_batch}] = transport_.recv(
          options_.next_rank, Tag{Channel::ACTIVATION_GRAD, step, a.micro_batch, 0});
    }
  }
  std::vector<std::shared_ptr<transport::Work>> sends;
  transport::Bytes pending_input, pending_grad, output, grad_out;
  auto waitFor = [&](int kind, int m) {
    auto& work = recvs.at({kind, m});
    const auto t0 = transport::Clock::now();
    const std::string what = std::string("stage ") + std::to_string(options_.stage) +
                             " step " + std::to_string(step) + " micro-batch " +
                             std::to_string(m) + ": waiting for the " +
                             (kind == 0 ? "activation from stage " : "gradient from stage ") +
                             std::to_string(kind == 0 ? options_.stage - 1 : options_.stage + 1);
    // Keep the failure's type (timeout vs. a peer's garbage) and add where.
    try {
      work->wait(options_.timeout);
    } catch (const Error& e) {
      rethrowWithContext(e, what + ": ");
    }
    timing.wait_recv_s += secondsSince(t0);
    return work->takePayload();
  };
  for (const Action& a : actions_) {
    const int m = a.micro_batch;
    switch (a.type) {
      case ActionType::RECV_ACTIVATION:
        pending_input = waitFor(0, m);
        break;
      case ActionType::RECV_GRADIENT:
        pending_grad = waitFor(1, m);
        break;
      case ActionType::FORWARD: {
        const auto t0 = transport::Clock::now();
        output = compute.forward(step, m, std::move(pending_input));
        timing.compute_s += secondsSince(t0);
        pending_input.clear();
        break;
      }
      case ActionType::BACKWARD: {
        const auto t0 = transport::Clock::now();
        grad_out = compute.backward(step, m, std::move(pending_grad));
        timing.compute_s += secondsSince(t0);
        pending_grad.clear();
        break;
      }
      case ActionType::SEND_ACTIVATION:
        sends.push_back(transport_.send(options_.next_rank,
                                        Tag{Channel::ACTIVATION, step, m, 0}, std::move(output)));
        output.clear();
        break;
      case ActionType::SEND_GRADIENT:
        sends.push_back(transport_.send(options_.prev_rank,
                                        Tag{Channel::ACTIVATION_GRAD, step, m, 0},
                                        std::move(grad_out)));
        grad_out.clear();
        break;
    }
  }
  const auto t_send = transport::Clock::now();
  for (auto& s : sends) s->wait(options_.timeout);
  timing.wait_send_s = secondsSince(t_send);
  timing.total_s = secondsSince(t_step);
  return timing;
}

}  // namespace geopipe::pipeline
