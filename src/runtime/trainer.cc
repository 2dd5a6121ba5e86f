// geopipe::Trainer: tasklets as threads over the in-process transport, and
// the single-process reference it is checked against.
#include "geopipe/trainer.h"

#include <spdlog/spdlog.h>

#include <cmath>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>

#include "geopipe/error.h"
#include "src/common/blas_check.h"
#include "src/data/dataset.h"
#include "src/data/sampler.h"
#include "src/pipeline/executor.h"
#include "src/runtime/gradient_sync.h"
#include "src/runtime/placement.h"
#include "src/runtime/torch_stage.h"
#include "src/transport/inproc/inproc_transport.h"
#include "src/transport/link_emulator.h"

namespace geopipe {
namespace {

using Clock = std::chrono::steady_clock;

double seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::unique_ptr<torch::optim::Optimizer> makeOptimizer(const OptimizerSpec& spec,
                                                       std::vector<torch::Tensor> params) {
  if (spec.kind == "sgd") {
    return std::make_unique<torch::optim::SGD>(
        params, torch::optim::SGDOptions(spec.lr).momentum(spec.momentum).weight_decay(
                    spec.weight_decay));
  }
  if (spec.kind != "adamw") {
    GEOPIPE_THROW(ConfigError, "training.optimizer.kind '", spec.kind,
                  "' is not supported: expected adamw or sgd");
  }
  return std::make_unique<torch::optim::AdamW>(
      params, torch::optim::AdamWOptions(spec.lr)
                  .betas({spec.beta1, spec.beta2})
                  .eps(spec.eps)
                  .weight_decay(spec.weight_decay));
}

void setLearningRate(torch::optim::Optimizer& opt, double lr) {
  for (auto& group : opt.param_groups()) {
    if (auto* adamw = dynamic_cast<torch::optim::AdamWOptions*>(&group.options())) {
      adamw->lr(lr);
    } else if (auto* sgd = dynamic_cast<torch::optim::SGDOptions*>(&group.options())) {
      sgd->lr(lr);
    }
  }
}

double squaredGradNorm(const std::vector<torch::Tensor>& params) {
  double sum = 0;
  for (const auto& p : params) {
    if (p.grad().defined()) sum += p.grad().to(torch::kDouble).pow(2).sum().item<double>();
  }
  return sum;
}

// Scales gradients so their global norm is at most max_norm (the formula of
// torch.nn.utils.clip_grad_norm_, applied with the norm of all stages).
void clipTo(const std::vector<torch::Tensor>& params, double total_sq, double max_norm) {
  const double norm = std::sqrt(total_sq);
  const double coef = max_norm / (norm + 1e-6);
  if (coef >= 1.0) return;
  torch::NoGradGuard guard;
  for (const auto& p : params) {
    if (p.grad().defined()) p.grad().mul_(coef);
  }
}

int tokensPerStep(const JobSpec& job) { return job.training.global_batch * job.model.seq_len; }

// Collects every tasklet's share of a step and hands the finished step to
// the caller's thread, which calls on_step in order.
class StepBoard {
 public:
  StepBoard(int tasklets, int steps) : tasklets_(tasklets), rows_(steps) {}

  void report(int64_t step, const StepMetrics& part, double loss_sum, bool has_loss) {
    std::lock_guard<std::mutex> lock(mu_);
    Row& row = rows_[static_cast<size_t>(step)];
    StepMetrics& m = row.metrics;
    m.activation_raw_bytes += part.activation_raw_bytes;
    m.activation_wire_bytes += part.activation_wire_bytes;
    m.gradient_raw_bytes += part.gradient_raw_bytes;
    m.gradient_wire_bytes += part.gradient_wire_bytes;
    m.dp_raw_bytes += part.dp_raw_bytes;
    m.dp_wire_bytes += part.dp_wire_bytes;
    if (part.seconds > m.seconds) m.seconds = part.seconds;
    if (part.compute_seconds > m.compute_seconds) {
      m.compute_seconds = part.compute_seconds;
      m.comm_wait_seconds = part.comm_wait_seconds;
    }
    if (has_loss) {
      row.loss_sum += loss_sum;
      row.loss_parts += 1;
    }
    m.lr = part.lr;
    if (++row.arrived == tasklets_) cv_.notify_all();
  }

  void fail(std::exception_ptr e) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!error_) error_ = e;
    cv_.notify_all();
  }

  // Blocks until every tasklet reported `step` (or one failed: rethrows).
  StepMetrics wait(int64_t step) {
    std::unique_lock<std::mutex> lock(mu_);
    Row& row = rows_[static_cast<size_t>(step)];
    cv_.wait(lock, [&] { return error_ || row.arrived == tasklets_; });
    if (error_) std::rethrow_exception(error_);
    StepMetrics m = row.metrics;
    m.step = step;
    m.loss = row.loss_parts ? row.loss_sum / row.loss_parts : 0;
    return m;
  }

 private:
  struct Row {
    StepMetrics metrics;
    double loss_sum = 0;
    int loss_parts = 0;
    int arrived = 0;
  };
  std::mutex mu_;
  std::condition_variable cv_;
  int tasklets_;
  std::vector<Row> rows_;
  std::exception_ptr error_;
};

}  // namespace

double learningRateAt(const TrainingSpec& t, int64_t step) {
  const double peak = t.optimizer.lr;
  const auto& s = t.lr_schedule;
  if (step < s.warmup_steps) return peak * static_cast<double>(step + 1) / s.warmup_steps;
  if (s.kind == "constant") return peak;
  const double span = std::max<int64_t>(1, t.steps - s.warmup_steps);
  const double progress = std::min(1.0, static_cast<double>(step - s.warmup_steps) / span);
  if (s.kind == "cosine") {
    return s.min_lr + 0.5 * (peak - s.min_lr) * (1.0 + std::cos(M_PI * progress));
  }
  return peak - (peak - s.min_lr) * progress;  // linear
}

Trainer::Trainer(ModelDef model, JobSpec job, TrainerOptions options)
    : model_(std::move(model)), job_(std::move(job)), options_(std::move(options)) {}

TrainResult Trainer::train() {
  common::warnIfSlowBlas();
  const int stages = job_.parallelism.pipeline_stages;
  GEOPIPE_CHECK(!job_.parallelism.dataParallelAuto(), ConfigError,
                "parallelism.data_parallel: auto must be resolved by the scheduler before "
                "training; run geopipe plan or set a number");
  const int replicas = job_.parallelism.data_parallel;
  const int world = stages * replicas;
  GEOPIPE_CHECK(model_.bodyLayers() >= stages, ConfigError, "model '", model_.name, "' has ",
                model_.bodyLayers(), " layers to split but parallelism.pipeline_stages is ",
                stages);
  GEOPIPE_CHECK(job_.transport.kind == "inproc", ConfigError, "transport.kind '",
                job_.transport.kind,
                "': the in-process Trainer runs tasklets as threads and supports only "
                "inproc; use geopipe launch for grpc");

  const data::TokenDataset dataset = data::loadDataset(job_.data, job_.model, job_.training.seed);
  const data::Sampler sampler(dataset.numSamples(), job_.training.global_batch, replicas,
                              job_.training.micro_batch, job_.training.seed);
  const int micro_batches = sampler.microBatchesPerReplica();

  runtime::Placement placement = runtime::choosePlacement(model_, job_, options_.device_of_rank,
                                                          options_.layers_per_stage);
  TrainResult result;
  result.device_of_rank = placement.device_of_rank;
  result.layers_of_stage = placement.layers_of_stage;
  result.placement_source = placement.source;

  // Transport: one in-process hub; each rank's view optionally wrapped by
  // the link emulator with the topology's link between the ranks' devices.
  auto hub = std::make_shared<transport::InprocHub>(world);
  std::vector<std::shared_ptr<transport::Transport>> transports;
  for (int rank = 0; rank < world; ++rank) {
    std::shared_ptr<transport::Transport> t =
        std::make_shared<transport::InprocTransport>(hub, rank);
    if (job_.transport.emulate_links && job_.topology.numDevices() > 0) {
      t = runtime::emulateLinks(t, job_, placement);
    }
    transports.push_back(t);
  }

  int threads = options_.threads_per_tasklet;
  if (threads <= 0) {
    threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / world);
  }
  torch::set_num_threads(threads);

  const int steps = job_.training.steps;
  StepBoard board(world, steps);
  const auto timeout = std::chrono::milliseconds(int64_t{options_.timeout_seconds} * 1000);
  auto tasklet = [&](int rank) {
    try {
      torch::set_num_threads(threads);
      const int s = rank % stages, r = rank / stages;
      runtime::TorchStageOptions so;
      so.stage = s;
      so.num_stages = stages;
      so.replica = r;
      so.first_layer = placement.layers_of_stage[s].first;
      so.last_layer = placement.layers_of_stage[s].second;
      so.micro_batch = job_.training.micro_batch;
      so.num_micro_batches = micro_batches;
      so.seed = job_.training.seed;
      runtime::TorchStage stage(model_, so, dataset, sampler, job_.compression);
      auto params = stage.parameters();
      auto optimizer = makeOptimizer(job_.training.optimizer, params);

      pipeline::ExecutorOptions eo;
      eo.stage = s;
      eo.num_stages = stages;
      eo.prev_rank = s > 0 ? rank - 1 : -1;
      eo.next_rank = s < stages - 1 ? rank + 1 : -1;
      eo.schedule = pipeline::scheduleKindFromName(job_.parallelism.schedule);
      eo.timeout = timeout;
      transport::Transport& tr = *transports[static_cast<size_t>(rank)];
      pipeline::StageExecutor executor(tr, eo, micro_batches);

      std::vector<int> dp_group, pp_group;
      for (int rr = 0; rr < replicas; ++rr) dp_group.push_back(rr * stages + s);
      for (int ss = 0; ss < stages; ++ss) pp_group.push_back(r * stages + ss);
      runtime::GradientSync sync(tr, dp_group, job_.compression.gradients, job_.training.seed,
                                 timeout);
      uint64_t act_raw = 0, act_wire = 0, grad_raw = 0, grad_wire = 0, dp_raw = 0, dp_wire = 0;
      for (int step = 0; step < steps; ++step) {
        const auto t0 = Clock::now();
        optimizer->zero_grad();
        pipeline::StepTiming timing = executor.runStep(step, stage);
        const auto t_sync = Clock::now();
        sync.average(params, step);
        if (job_.training.grad_clip > 0) {
          double sq = runtime::allReduceScalarSum(tr, pp_group, squaredGradNorm(params), step, 0,
                                                  timeout);
          clipTo(params, sq, job_.training.grad_clip);
        }
        const double lr = learningRateAt(job_.training, step);
        setLearningRate(*optimizer, lr);
        optimizer->step();
        StepMetrics part;
        part.lr = lr;
        part.seconds = seconds(t0, Clock::now());
        part.compute_seconds = timing.compute_s;
        part.comm_wait_seconds = timing.wait_recv_s + timing.wait_send_s + seconds(t_sync, Clock::now());
        auto delta = [](uint64_t now, uint64_t& last) {
          uint64_t d = now - last;
          last = now;
          return d;
        };
        if (auto* e = stage.activationEncoder()) {
          part.activation_raw_bytes = delta(e->stats().raw_bytes, act_raw);
          part.activation_wire_bytes = delta(e->stats().wire_bytes, act_wire);
        }
        if (auto* e = stage.gradientEncoder()) {
          part.gradient_raw_bytes = delta(e->stats().raw_bytes, grad_raw);
          part.gradient_wire_bytes = delta(e->stats().wire_bytes, grad_wire);
        }
        part.dp_raw_bytes = delta(sync.rawBytes(), dp_raw);
        part.dp_wire_bytes = delta(sync.wireBytes(), dp_wire);
        const bool last = s == stages - 1;
        board.report(step, part, last ? stage.takeLossSum() / micro_batches : 0, last);
      }
    } catch (...) {
      board.fail(std::current_exception());
      hub->shutdown("tasklet " + std::to_string(rank) + " failed");
    }
  };

  const auto t_start = Clock::now();
  std::vector<std::thread> workers;
  for (int rank = 0; rank < world; ++rank) workers.emplace_back(tasklet, rank);
  std::exception_ptr error;
  try {
    for (int step = 0; step < steps; ++step) {
      StepMetrics m = board.wait(step);
      m.tokens_per_second = m.seconds > 0 ? tokensPerStep(job_) / m.seconds : 0;
      result.losses.push_back(m.loss);
      result.wire_bytes += m.activation_wire_bytes + m.gradient_wire_bytes + m.dp_wire_bytes;
      result.raw_bytes += m.activation_raw_bytes + m.gradient_raw_bytes + m.dp_raw_bytes;
      if (options_.on_step) options_.on_step(m);
      if (options_.should_stop && options_.should_stop() && step + 1 < steps) {
        result.interrupted = true;
        hub->shutdown("training stopped at step " + std::to_string(step + 1));
        break;
      }
    }
  } catch (...) {
    error = std::current_exception();
    hub->shutdown("training failed");
  }
  for (auto& w : workers) w.join();
  if (error) std::rethrow_exception(error);
  result.seconds = seconds(t_start, Clock::now());
  const double done = static_cast<double>(result.losses.size());
  result.tokens_per_second = result.seconds > 0 ? tokensPerStep(job_) * done / result.seconds : 0;
  return result;
}

TrainResult trainSingleProcess(const ModelDef& model, const JobSpec& job, ReferenceMode mode,
                               const std::function<void(const StepMetrics&)>& on_step) {
  common::warnIfSlowBlas();
  const int replicas = job.parallelism.dataParallelAuto() ? 1 : job.parallelism.data_parallel;
  const data::TokenDataset dataset = data::loadDataset(job.data, job.model, job.training.seed);
  const data::Sampler sampler(dataset.numSamples(), job.training.global_batch, replicas,
                              job.training.micro_batch, job.training.seed);
  const int micro_batches = sampler.microBatchesPerReplica();
  auto module = buildSlice(model, 0, model.num_layers, job.training.seed);
  auto params = module->parameters();
  auto optimizer = makeOptimizer(job.training.optimizer, params);
  std::vector<std::vector<torch::Tensor>> per_replica(static_cast<size_t>(replicas));
  TrainResult result;
  const auto t_start = Clock::now();
  for (int step = 0; step < job.training.steps; ++step) {
    const auto t0 = Clock::now();
    double loss_value = 0;
    if (mode == ReferenceMode::FULL_BATCH) {
      optimizer->zero_grad();
      auto [inputs, targets] = runtime::tokenBatch(dataset, sampler.globalBatch(step));
      auto loss = model.loss(module->forward(inputs), targets);
      loss.backward();
      loss_value = loss.item<double>();
    } else {
      for (int r = 0; r < replicas; ++r) {
        optimizer->zero_grad();
        double replica_loss = 0;
        for (int m = 0; m < micro_batches; ++m) {
          auto [inputs, targets] = runtime::tokenBatch(dataset, sampler.microBatch(step, r, m));
          auto loss = model.loss(module->forward(inputs), targets);
          replica_loss += loss.item<double>();
          (loss / micro_batches).backward();
        }
        loss_value += replica_loss / micro_batches / replicas;
        per_replica[r].clear();
        for (const auto& p : params) per_replica[r].push_back(p.grad().clone());
      }
      // Average over replicas in replica order, as the all-reduce does.
      torch::NoGradGuard guard;
      for (size_t i = 0; i < params.size(); ++i) {
        auto sum = per_replica[0][i].clone();
        for (int r = 1; r < replicas; ++r) sum.add_(per_replica[r][i]);
        params[i].mutable_grad() = replicas > 1 ? sum / static_cast<float>(replicas) : sum;
      }
    }
    if (job.training.grad_clip > 0) clipTo(params, squaredGradNorm(params), job.training.grad_clip);
    const double lr = learningRateAt(job.training, step);
    setLearningRate(*optimizer, lr);
    optimizer->step();
    StepMetrics m;
    m.step = step;
    m.loss = loss_value;
    m.lr = lr;
    m.seconds = seconds(t0, Clock::now());
    m.tokens_per_second = m.seconds > 0 ? tokensPerStep(job) / m.seconds : 0;
    result.losses.push_back(m.loss);
    if (on_step) on_step(m);
  }
  result.seconds = seconds(t_start, Clock::now());
  result.tokens_per_second =
      result.seconds > 0 ? double(tokensPerStep(job)) * job.training.steps / result.seconds : 0;
  return result;
}

}  // namespace geopipe
