// geopipe::Trainer: tasklets as threads over the in-process transport, and
// the single-process reference it is checked against.
#include "geopipe/trainer.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>

#include "geopipe/error.h"
#include "src/common/blas_check.h"
#include "src/config/buffer_check.h"
#include "src/data/dataset.h"
#include "src/data/sampler.h"
#include "src/pipeline/executor.h"
#include "src/runtime/checkpoint.h"
#include "src/runtime/gradient_sync.h"
#include "src/runtime/lr_schedule.h"
#include "src/runtime/placement.h"
#include "src/runtime/precision.h"
#include "src/runtime/tasklet.h"
#include "src/runtime/torch_stage.h"
#include "src/transport/inproc/inproc_transport.h"
#include "src/transport/link_emulator.h"

namespace geopipe {
namespace {

using Clock = std::chrono::steady_clock;

double seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

int tokensPerStep(const JobSpec& job) { return job.training.global_batch * job.model.seq_len; }

// Collects every tasklet's share of a step and hands the finished step to
// the caller's thread, which calls on_step in order.
class StepBoard {
 public:
  StepBoard(int tasklets, int steps, const JobSpec& job)
      : tasklets_(tasklets), rows_(steps), job_(job) {}

  void report(int64_t step, const StepMetrics& part, double loss, bool has_loss,
              const std::vector<std::string>& files) {
    std::lock_guard<std::mutex> lock(mu_);
    Row& row = rows_[static_cast<size_t>(step)];
    row.files.insert(row.files.end(), files.begin(), files.end());
    row.tally.add(part, has_loss, loss);
    if (row.tally.arrived == tasklets_) cv_.notify_all();
  }

  void fail(std::exception_ptr e) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!error_) error_ = e;
    cv_.notify_all();
  }

  // Blocks until every tasklet reported `step` (or one failed: rethrows).
  StepMetrics wait(int64_t step, std::vector<std::string>* files = nullptr) {
    std::unique_lock<std::mutex> lock(mu_);
    Row& row = rows_[static_cast<size_t>(step)];
    cv_.wait(lock, [&] { return error_ || row.tally.arrived == tasklets_; });
    if (error_) std::rethrow_exception(error_);
    if (files) *files = row.files;
    return row.tally.finished(step, job_);
  }

 private:
  struct Row {
    runtime::StepTally tally;
    std::vector<std::string> files;  // checkpoint files written after this step
  };
  std::mutex mu_;
  std::condition_variable cv_;
  int tasklets_;
  std::vector<Row> rows_;
  const JobSpec& job_;
  std::exception_ptr error_;
};

// Where a stop that writes a checkpoint ends (TrainerOptions::
// checkpoint_at_stop): after the newest step any tasklet has begun when the
// first tasklet hears of the stop, so that every tasklet stops after the
// same step and the checkpoint is whole. Each tasklet asks at the end of each
// step whether to go on; the thread that polls should_stop requests the stop.
class StopGate {
 public:
  StopGate(int tasklets, int64_t first_step) : begun_(static_cast<size_t>(tasklets), first_step) {}

  void request() {
    std::lock_guard<std::mutex> lock(mu_);
    requested_ = true;
  }

  // Called by tasklet `rank` after step `done`: false when it stops there.
  bool goOn(int rank, int64_t done) {
    std::lock_guard<std::mutex> lock(mu_);
    if (requested_ && stop_after_ < 0)
      stop_after_ = *std::max_element(begun_.begin(), begun_.end());
    if (stop_after_ >= 0 && done >= stop_after_) return false;
    begun_[static_cast<size_t>(rank)] = done + 1;
    return true;
  }

  // The step every tasklet stops after; -1 while undecided. Decided before
  // any tasklet reports that step, so the committing thread sees it when it
  // has the step's reports.
  int64_t stopAfter() {
    std::lock_guard<std::mutex> lock(mu_);
    return stop_after_;
  }

 private:
  std::mutex mu_;
  bool requested_ = false;
  int64_t stop_after_ = -1;
  std::vector<int64_t> begun_;  // by rank: the newest step it has begun
};

}  // namespace

Trainer::Trainer(ModelDef model, JobSpec job, TrainerOptions options)
    : model_(std::move(model)), job_(std::move(job)), options_(std::move(options)) {}

TrainResult Trainer::train() {
  common::warnIfSlowBlas();
  runtime::checkComputeDtype(job_);
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
  GEOPIPE_CHECK(job_.transport.same_host == "unix", ConfigError, "transport.same_host '",
                job_.transport.same_host,
                "': the in-process Trainer runs tasklets as threads of one process, with no "
                "links between processes to choose for; remove it, or use geopipe launch");

  const data::JobData job_data = data::loadJobData(job_.data, job_.model, job_.training.seed);
  const data::TokenDataset& dataset = job_data.train;
  const data::TokenDataset* val = job_data.val ? &*job_data.val : nullptr;
  config::checkBufferBudget(job_, replicas, dataset.numSamples());
  const data::Sampler sampler(
      dataset.numSamples(), job_.training.global_batch, replicas, job_.training.micro_batch,
      job_.training.seed,
      options_.bind_samples ? data::sampleOrderFor(job_) : data::SampleOrder::GLOBAL);

  int64_t first_step = 0;
  runtime::SavedLayout resume_from;
  // A resumed run keeps the layer split its checkpoint was written with.
  std::vector<int> layers_per_stage = options_.layers_per_stage;
  if (options_.resume) {
    const std::string& dir = job_.checkpoint.dir;
    const runtime::CheckpointManifest manifest =
        runtime::resumePoint(dir, stages, replicas, job_.training.steps);
    first_step = manifest.next_step;
    resume_from = {runtime::stepDirectory(dir, first_step), manifest.stages, manifest.replicas,
                   manifest.layers_of_stage};
    spdlog::info("resuming from '{}' at step {}", resume_from.step_dir, first_step);
    // The saved split stands unless the caller names one or the stage count
    // changed; either way every tasklet finds its layers (loadCheckpoint).
    const std::vector<int> saved =
        runtime::savedBodySplit(manifest, model_.prologue_layers, model_.epilogue_layers);
    if (layers_per_stage.empty() && static_cast<int>(saved.size()) == stages) {
      layers_per_stage = saved;
    }
  }
  runtime::Placement placement = runtime::choosePlacement(model_, job_, options_.device_of_rank,
                                                          layers_per_stage);
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
  // OpenBLAS has its own pool: left at one thread per core while every
  // tasklet thread calls it, the cores are oversubscribed (measured ~6x
  // slower on 2 cores with 4 tasklets).
  common::setBlasThreads(threads);

  const int steps = job_.training.steps;
  StepBoard board(world, steps, job_);
  const auto timeout = std::chrono::milliseconds(int64_t{options_.timeout_seconds} * 1000);
  // Checkpoints: written after step k when (k + 1) is a multiple of
  // checkpoint.every_steps (and after the last step); committed by this
  // thread once every tasklet has written its files.
  const std::string& ckpt_dir = job_.checkpoint.dir;
  auto checkpointAfter = [&](int64_t step) {
    return runtime::checkpointDue(job_.checkpoint, step, steps);
  };
  result.first_step = first_step;
  // A stop that writes a checkpoint ends where the gate says; one that does
  // not ends at once (the hub is shut down under the tasklets).
  const bool stop_commits = options_.checkpoint_at_stop && !ckpt_dir.empty();
  StopGate gate(world, first_step);

  // logging.trace_dir: every tasklet's timeline, opened before any thread
  // starts, so a directory that cannot be made fails the run at once.
  std::vector<std::shared_ptr<common::TraceWriter>> traces(static_cast<size_t>(world));
  for (int rank = 0; rank < world; ++rank) {
    traces[static_cast<size_t>(rank)] = runtime::openTrace(job_, rank);
  }
  if (!job_.logging.trace_dir.empty()) {
    spdlog::info("timeline trace: {}/trace-stage*-replica*.json", job_.logging.trace_dir);
  }

  const bool acsgd = job_.compression.activations.method == "acsgd" && stages > 1;
  if (acsgd) result.acsgd_buffer_bytes.assign(static_cast<size_t>(world), 0);
  auto tasklet = [&](int rank) {
    try {
      torch::set_num_threads(threads);
      runtime::Tasklet t(model_, job_, placement, rank, *transports[static_cast<size_t>(rank)],
                         dataset, sampler, timeout, val, traces[static_cast<size_t>(rank)]);
      if (!resume_from.step_dir.empty()) t.loadCheckpoint(resume_from, first_step);
      for (int64_t step = first_step; step < steps; ++step) {
        runtime::TaskletStep ts = t.runStep(step);
        if (runtime::evaluationDue(job_, step, steps)) t.evaluate(step, ts.part);
        const bool stop_here = stop_commits && !gate.goOn(rank, step);
        std::vector<std::string> files;
        if (checkpointAfter(step) || stop_here) {
          files = t.saveCheckpoint(runtime::stepDirectory(ckpt_dir, step + 1));
        }
        board.report(step, ts.part, ts.loss, ts.has_loss, files);
        if (stop_here) break;
      }
      if (acsgd) result.acsgd_buffer_bytes[static_cast<size_t>(rank)] = t.acsgdBufferBytes();
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
    for (int64_t step = first_step; step < steps; ++step) {
      std::vector<std::string> files;
      StepMetrics m = board.wait(step, &files);
      const bool stop_here = stop_commits && gate.stopAfter() == step;
      if (checkpointAfter(step) || stop_here) {
        runtime::CheckpointManifest manifest;
        manifest.job = job_.name;
        manifest.next_step = step + 1;
        manifest.stages = stages;
        manifest.replicas = replicas;
        manifest.model_json = runtime::checkpointModelJson(job_.model, job_.data.tokenizer);
        manifest.layers_of_stage = placement.layers_of_stage;
        for (const auto& f : files) manifest.files.push_back({f, 0, 0});
        runtime::commitCheckpoint(ckpt_dir, manifest, job_.checkpoint.keep);
      }
      runtime::recordStep(result, m);
      if (options_.on_step) options_.on_step(m);
      if (stop_here) {
        result.interrupted = step + 1 < steps;
        break;
      }
      if (options_.should_stop && options_.should_stop() && step + 1 < steps) {
        if (stop_commits) {
          gate.request();  // the tasklets stop at a common step, committed above
          continue;
        }
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
  const double done = static_cast<double>(result.losses.size());  // this run's steps
  result.tokens_per_second = result.seconds > 0 ? tokensPerStep(job_) * done / result.seconds : 0;
  return result;
}

TrainResult trainSingleProcess(const ModelDef& model, const JobSpec& job, ReferenceMode mode,
                               const std::function<void(const StepMetrics&)>& on_step) {
  common::warnIfSlowBlas();
  const int replicas = job.parallelism.dataParallelAuto() ? 1 : job.parallelism.data_parallel;
  const data::TokenDataset dataset =
      data::loadJobData(job.data, job.model, job.training.seed).train;
  const data::Sampler sampler(dataset.numSamples(), job.training.global_batch, replicas,
                              job.training.micro_batch, job.training.seed,
                              data::sampleOrderFor(job));
  const int micro_batches = sampler.microBatchesPerReplica();
  if (dataset.padded()) runtime::checkLossIgnoresPadding(model);
  auto module = buildSlice(model, 0, model.num_layers, job.training.seed);
  auto params = uniqueParameters(*module);
  auto optimizer = runtime::makeOptimizer(job.training.optimizer, params);
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
          const std::vector<int64_t> ids = sampler.microBatch(step, r, m);
          auto [inputs, targets] = runtime::tokenBatch(dataset, ids);
          auto loss = model.loss(module->forward(inputs), targets);
          if (dataset.padded()) {  // the staged engine's arithmetic (TorchStage::forward)
            const double w = runtime::lossWeight(dataset, sampler, step, ids);
            replica_loss += loss.item<double>() * w;
            (loss * (w / micro_batches)).backward();
          } else {
            replica_loss += loss.item<double>();
            (loss / micro_batches).backward();
          }
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
    const double grad_sq = runtime::squaredGradNorm(params);
    if (job.training.grad_clip > 0) runtime::clipTo(params, grad_sq, job.training.grad_clip);
    const double lr = learningRateAt(job.training, step);
    runtime::setLearningRate(*optimizer, lr);
    optimizer->step();
    StepMetrics m;
    m.step = step;
    m.loss = loss_value;
    m.lr = lr;
    m.seconds = seconds(t0, Clock::now());
    m.tokens_per_second = m.seconds > 0 ? tokensPerStep(job) / m.seconds : 0;
    m.grad_sq_sum = grad_sq;
    m.grad_norm = std::sqrt(grad_sq);
    m.peak_rss_bytes = runtime::peakRssBytes();
    result.losses.push_back(m.loss);
    if (on_step) on_step(m);
  }
  result.seconds = seconds(t_start, Clock::now());
  result.tokens_per_second =
      result.seconds > 0 ? double(tokensPerStep(job)) * job.training.steps / result.seconds : 0;
  return result;
}

}  // namespace geopipe
