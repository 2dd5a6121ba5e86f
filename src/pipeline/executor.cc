// The stage executor: schedule actions over a transport.
#include "src/pipeline/executor.h"

#include <future>
#include <map>
#include <memory>
#include <string>

#include "geopipe/error.h"
#include "src/pipeline/codec_lane.h"

namespace geopipe::pipeline {
namespace {

using transport::Channel;
using transport::Tag;

double secondsSince(transport::Clock::time_point t0) {
  return std::chrono::duration<double>(transport::Clock::now() - t0).count();
}

// Collectives number their CONTROL messages from 0 (CollectiveOptions::id);
// the receipt keeps out of their way.
constexpr int32_t kReceiptId = -1;

}  // namespace

Tag receiptTag(int64_t step) {
  return Tag{Channel::CONTROL, step, kReceiptId, 0};
}

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
  GEOPIPE_CHECK(!options_.send_receipt || options_.next_rank >= 0, ConfigError, "stage ",
                options_.stage, " is the last: it has no next stage to send a receipt to");
  GEOPIPE_CHECK(!options_.await_receipt || options_.prev_rank >= 0, ConfigError, "stage ",
                options_.stage, " is the first: no previous stage sends it a receipt");
}

StageExecutor::~StageExecutor() = default;

StepTiming StageExecutor::runStep(int64_t step, StageCompute& compute) {
  using common::TraceLane;
  StepTiming timing;
  common::TraceWriter* const trace = options_.trace;
  const auto t_step = transport::Clock::now();
  // Post every receive of the step up front: the transport fills them while
  // this thread computes, so communication overlaps compute.
  struct Posted {
    std::shared_ptr<transport::RecvWork> work;
    transport::Clock::time_point at;  // when it was posted (the trace's start)
  };
  std::map<std::pair<int, int>, Posted> recvs;
  for (const Action& a : actions_) {
    if (a.type != ActionType::RECV_ACTIVATION && a.type != ActionType::RECV_GRADIENT) continue;
    const bool activation = a.type == ActionType::RECV_ACTIVATION;
    const Tag tag{activation ? Channel::ACTIVATION : Channel::ACTIVATION_GRAD, step, a.micro_batch,
                  0};
    const auto at = transport::Clock::now();
    recvs[{activation ? 0 : 1, a.micro_batch}] = {
        transport_.recv(activation ? options_.prev_rank : options_.next_rank, tag), at};
  }
  std::shared_ptr<transport::RecvWork> receipt;
  if (options_.await_receipt) receipt = transport_.recv(options_.prev_rank, receiptTag(step));
  // The action after which this stage holds the step's last gradient.
  size_t last_grad_recv = actions_.size();
  for (size_t i = 0; i < actions_.size(); ++i) {
    if (actions_[i].type == ActionType::RECV_GRADIENT) last_grad_recv = i;
  }
  std::shared_ptr<transport::Work> receipt_sent;
  // Sends in flight; waited for at the end of the step. A payload made on
  // the codec lane is sent from there: `made` is the lane's job, which fills
  // in `posted` (the send, when it was posted, its bytes) once it has sent.
  struct Posting {
    std::shared_ptr<transport::Work> work;
    transport::Clock::time_point at;
    size_t bytes = 0;
  };
  struct Sent {
    const char* what;  // the trace's name
    int micro_batch;
    int peer;
    std::shared_ptr<Posting> posted;
    std::future<void> made;
  };
  std::vector<Sent> sends;
  // However the step ends, no job of it is left running on the lane: the
  // stage's encoders are its own again once runStep returns or throws.
  struct DrainLane {
    std::vector<Sent>& sends;
    ~DrainLane() {
      for (auto& s : sends)
        if (s.made.valid()) s.made.wait();
    }
  } drain{sends};
  transport::Bytes pending_input, pending_grad;
  Outgoing output, grad_out;
  auto waitFor = [&](int kind, int m) {
    const Posted& posted = recvs.at({kind, m});
    const auto t0 = transport::Clock::now();
    const std::string what = std::string("stage ") + std::to_string(options_.stage) +
                             " step " + std::to_string(step) + " micro-batch " +
                             std::to_string(m) + ": waiting for the " +
                             (kind == 0 ? "activation from stage " : "gradient from stage ") +
                             std::to_string(kind == 0 ? options_.stage - 1 : options_.stage + 1);
    // Keep the failure's type (timeout vs. a peer's garbage) and add where.
    try {
      posted.work->wait(options_.timeout);
    } catch (const Error& e) {
      rethrowWithContext(e, what + ": ");
    }
    const auto t1 = transport::Clock::now();
    timing.wait_recv_s += std::chrono::duration<double>(t1 - t0).count();
    transport::Bytes payload = posted.work->takePayload();
    if (trace) {
      const common::TraceArgs args{step, m, kind == 0 ? options_.prev_rank : options_.next_rank,
                                   static_cast<int64_t>(payload.size())};
      trace->span(TraceLane::COMPUTE, kind == 0 ? "wait for activation" : "wait for gradient", t0,
                  t1, args);
      trace->span(TraceLane::RECV, kind == 0 ? "recv activation" : "recv gradient", posted.at,
                  posted.work->finishedAt(), args);
    }
    return payload;
  };
  auto post = [&](const char* what, int peer, Channel channel, int m, Outgoing& out) {
    const Tag tag{channel, step, m, 0};
    auto posted = std::make_shared<Posting>();
    std::future<void> made;
    if (!out.make) {
      posted->at = transport::Clock::now();
      posted->bytes = out.payload.size();
      posted->work = transport_.send(peer, tag, std::move(out.payload));
    } else {
      if (!lane_) lane_ = std::make_unique<CodecLane>();
      made = lane_->post([this, posted, peer, tag, make = std::move(out.make)] {
        transport::Bytes payload = make();
        posted->at = transport::Clock::now();
        posted->bytes = payload.size();
        posted->work = transport_.send(peer, tag, std::move(payload));
      });
    }
    sends.push_back({what, m, peer, std::move(posted), std::move(made)});
    out = Outgoing();
  };
  for (size_t i = 0; i < actions_.size(); ++i) {
    const Action& a = actions_[i];
    const int m = a.micro_batch;
    switch (a.type) {
      case ActionType::RECV_ACTIVATION:
        pending_input = waitFor(0, m);
        break;
      case ActionType::RECV_GRADIENT:
        pending_grad = waitFor(1, m);
        if (options_.send_receipt && i == last_grad_recv) {
          receipt_sent = transport_.send(options_.next_rank, receiptTag(step), {});
        }
        break;
      case ActionType::FORWARD: {
        const auto t0 = transport::Clock::now();
        output = compute.forward(step, m, std::move(pending_input));
        const auto t1 = transport::Clock::now();
        timing.compute_s += std::chrono::duration<double>(t1 - t0).count();
        if (trace) trace->span(TraceLane::COMPUTE, "forward", t0, t1, {step, m});
        pending_input.clear();
        break;
      }
      case ActionType::BACKWARD: {
        const auto t0 = transport::Clock::now();
        grad_out = compute.backward(step, m, std::move(pending_grad));
        const auto t1 = transport::Clock::now();
        timing.compute_s += std::chrono::duration<double>(t1 - t0).count();
        if (trace) trace->span(TraceLane::COMPUTE, "backward", t0, t1, {step, m});
        pending_grad.clear();
        break;
      }
      case ActionType::SEND_ACTIVATION:
        post("send activation", options_.next_rank, Channel::ACTIVATION, m, output);
        break;
      case ActionType::SEND_GRADIENT:
        post("send gradient", options_.prev_rank, Channel::ACTIVATION_GRAD, m, grad_out);
        break;
    }
  }
  // First the payloads still being made on the codec lane (their sends are
  // posted as they are done), then every send in flight.
  const auto t_made = transport::Clock::now();
  for (auto& s : sends) {
    if (!s.made.valid()) continue;
    const auto where = [&] {
      return "stage " + std::to_string(options_.stage) + " step " + std::to_string(step) +
             " micro-batch " + std::to_string(s.micro_batch) + ": making the payload to rank " +
             std::to_string(s.peer) + " (" + s.what + "): ";
    };
    try {
      s.made.get();
    } catch (const Error& e) {
      rethrowWithContext(e, where());
    } catch (const std::exception& e) {
      // LibTorch's (c10::Error) or the allocator's: kept as an Error, with where.
      GEOPIPE_THROW(Error, where(), e.what());
    }
  }
  const auto t_send = transport::Clock::now();
  timing.wait_codec_s = std::chrono::duration<double>(t_send - t_made).count();
  for (auto& s : sends) s.posted->work->wait(options_.timeout);
  if (receipt_sent) receipt_sent->wait(options_.timeout);
  const auto t_end = transport::Clock::now();
  timing.wait_send_s = std::chrono::duration<double>(t_end - t_send).count();
  if (receipt) {
    try {
      receipt->wait(options_.timeout);
    } catch (const Error& e) {
      rethrowWithContext(e, "stage " + std::to_string(options_.stage) + " step " +
                                std::to_string(step) + ": waiting for stage " +
                                std::to_string(options_.stage - 1) +
                                "'s receipt of the last gradient: ");
    }
    timing.wait_receipt_s = secondsSince(t_end);
  }
  timing.total_s = secondsSince(t_step);
  if (trace) {
    // In post order, so the writer packs them into the fewest send rows.
    for (const Sent& s : sends) {
      trace->span(TraceLane::SEND, s.what, s.posted->at, s.posted->work->finishedAt(),
                  {step, s.micro_batch, s.peer, static_cast<int64_t>(s.posted->bytes)});
    }
    if (t_send > t_made + std::chrono::microseconds(1)) {
      trace->span(TraceLane::COMPUTE, "wait for encodes", t_made, t_send, {step});
    }
    if (!sends.empty()) trace->span(TraceLane::COMPUTE, "wait for sends", t_send, t_end, {step});
    if (receipt) {
      trace->span(TraceLane::COMPUTE, "wait for receipt", t_end, transport::Clock::now(), {step});
    }
  }
  return timing;
}

}  // namespace geopipe::pipeline
