// One tasklet (stage s of replica r) as a unit the runtime can run anywhere:
// a thread of the in-process Trainer, or a worker process over gRPC. It owns
// its layers, optimizer, boundary codecs, executor and gradient sync, runs
// whole steps, and saves or restores everything a resumed run needs.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "geopipe/model.h"
#include "geopipe/trainer.h"
#include "src/data/dataset.h"
#include "src/data/sampler.h"
#include "src/pipeline/executor.h"
#include "src/runtime/gradient_sync.h"
#include "src/runtime/outer_sync.h"
#include "src/runtime/placement.h"
#include "src/runtime/precision.h"
#include "src/runtime/reshard.h"
#include "src/runtime/torch_stage.h"

namespace geopipe::runtime {

// What one step of one tasklet contributes to the step's metrics.
struct TaskletStep {
  StepMetrics part;       // bytes, times and lr of this tasklet
  bool has_loss = false;  // last stage: loss is the replica's mean loss
  double loss = 0;
};

// Whether the tasklets evaluate the validation set after step `step`
// (0-based) of `steps`: every training.eval_every steps and after the last
// step, when the data has a validation set.
bool evaluationDue(const JobSpec& job, int64_t step, int64_t steps);

// Adds one tasklet's share of a step into the step's totals: bytes add up,
// the step takes as long as its slowest tasklet, and the compute/wait split
// is that of the busiest tasklet. The loss is averaged by the caller over
// the tasklets that report one. Used by the in-process Trainer and by the
// coordinator, so both report the same numbers.
void mergeTaskletStep(StepMetrics& step, const StepMetrics& part);

// One step's ledger row: the tasklets' shares as they arrive, and the
// finished step they make. The in-process Trainer's step board and the
// coordinator's step ledger are both made of these, so both report the same
// numbers by construction.
struct StepTally {
  StepMetrics metrics;  // mergeTaskletStep of the shares so far
  double loss_sum = 0;  // losses of the shares that carry one (last stages)
  int loss_parts = 0;
  int arrived = 0;

  void add(const StepMetrics& part, bool has_loss, double loss);
  // The finished step: its number, the mean loss over the replicas, tokens/s
  // of the global batch at the slowest tasklet's time, the global grad norm.
  StepMetrics finished(int64_t step, const JobSpec& job) const;
};

// Peak resident set size of this process in bytes (getrusage ru_maxrss).
uint64_t peakRssBytes();

// Adds a finished step to a run's totals: its loss, its validation loss if
// any, and its bytes.
void recordStep(TrainResult& result, const StepMetrics& step);

// Not thread-safe: one thread drives a tasklet. The transport, dataset and
// sampler must outlive it. Ranks: rank = replica * stages + stage.
class Tasklet {
 public:
  // `val`: the validation set (may be null: no evaluation). `trace`: this
  // tasklet's timeline (openTrace; null: none), flushed after every step.
  Tasklet(const ModelDef& model, const JobSpec& job, const Placement& placement, int rank,
          transport::Transport& transport, const data::TokenDataset& dataset,
          const data::Sampler& sampler, std::chrono::milliseconds timeout,
          const data::TokenDataset* val = nullptr,
          std::shared_ptr<common::TraceWriter> trace = nullptr);

  // Forward and backward of every micro-batch, gradient exchange with the
  // other replicas, global-norm clipping across the stages, optimizer step.
  TaskletStep runStep(int64_t step);

  // Forward-only pass of this replica's share of the validation set (samples
  // r, r + R, ... in micro-batches of training.micro_batch), pipelined over
  // the stages of the replica; every tasklet calls it after the same step.
  // The last stage adds its summed loss and token count to `into`.
  void evaluate(int64_t step, StepMetrics& into);

  // Writes this tasklet's files into step_dir (created if needed) and
  // returns their names: weights and optimizer state (LibTorch archive),
  // error-feedback state, AC-SGD buffer stores.
  std::vector<std::string> saveCheckpoint(const std::string& step_dir) const;
  // Restores what saveCheckpoint wrote in the checkpoint `saved` (its
  // layer ranges empty: a version 1 checkpoint of this job's split), whose
  // next step is `next_step`. IoError / ProtocolError naming the file when
  // something does not match this tasklet.
  //
  // Another replica count is resharded (reshard.h): weights and optimizer
  // of one saved replica, error-feedback residuals of the saved replicas
  // this one takes over, and the AC-SGD buffers of every saved replica of
  // the stage merged (freshest entry per sample, found from the sample
  // order of the steps before `next_step`), keeping only the samples this
  // replica owns when samples are bound to replicas.
  //
  // Another stage count or split: every layer's weights and optimizer state
  // come from the saved stage that held that global layer (the loss scale
  // from the one that held this stage's first layer). What is kept per
  // stage and not per layer starts afresh: the error-feedback residuals of
  // the data-parallel exchange (and PowerSGD's Q). The AC-SGD buffers of a
  // boundary whose cut existed in the saved split are kept, those of a
  // moved boundary dropped (its next visit of each sample is a first
  // visit). A DiLoCo checkpoint resumes only with its own split
  // (ConfigError).
  void loadCheckpoint(const SavedLayout& saved, int64_t next_step = 0);

  // Bytes this tasklet's AC-SGD stores hold (sender's and receiver's, as
  // they charge them against their budgets); 0 without AC-SGD.
  uint64_t acsgdBufferBytes() const;

  int rank() const { return rank_; }
  int stage() const { return stage_; }
  int replica() const { return replica_; }

 private:
  void loadStageWeights(const std::string& path);
  void loadLayers(const SavedLayout& saved, int replica);
  void loadOuterState(const SavedLayout& saved, int stage, const ReshardSources& src);
  void restoreBuffers(const SavedLayout& saved, int64_t next_step);
  std::string fileName(const std::string& suffix) const;

  const ModelDef& model_;
  const JobSpec& job_;
  const data::Sampler& sampler_;
  const data::TokenDataset* val_ = nullptr;
  int rank_, stage_, replica_, stages_;
  int first_layer_, last_layer_;                      // this stage's layers [first, last)
  std::vector<std::pair<int, int>> layers_of_stage_;  // the placement's, every stage
  int micro_batches_;
  transport::Transport& transport_;
  std::chrono::milliseconds timeout_;
  std::unique_ptr<TorchStage> compute_;
  std::vector<torch::Tensor> params_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  std::unique_ptr<pipeline::StageExecutor> executor_;
  std::unique_ptr<GradientSync> sync_;
  std::unique_ptr<OuterSync> outer_;  // data_parallel_sync kind diloco
  std::vector<int> pp_group_, dp_group_;
  std::unique_ptr<LossScaler> scaler_;  // fp16 only
  // This stage's copy of a weight tied to a layer on another stage of the
  // replica (ModelDef::tied): the two copies' gradients are summed every
  // step, so both stay equal to the whole model's weight.
  struct TiedCopy {
    torch::Tensor param;
    int peer_rank = 0;     // the tasklet holding the other copy
    bool is_user = false;  // this copy is the user's (left out of the norm)
  };
  std::vector<TiedCopy> tied_;
  void sumTiedGradients(int64_t step);
  uint64_t act_raw_ = 0, act_wire_ = 0, grad_raw_ = 0, grad_wire_ = 0, dp_raw_ = 0, dp_wire_ = 0;
  uint64_t sent_ = 0, received_ = 0;  // transport byte counters at the previous step
  std::vector<uint64_t> sent_to_;     // and the bytes sent to each peer rank
  std::shared_ptr<common::TraceWriter> trace_;  // null: no timeline
  int64_t step_ = -1;                           // the step last begun, for the trace
};

// The timeline of tasklet `rank` when job.logging.trace_dir is set, else
// null: the directory is created, and the file is
// trace-stage<S>-replica<R>.json there (a worker's generation > 1 adds
// -gen<G>, so a regrouped job keeps every generation's timeline). IoError
// naming the field when the directory or the file cannot be made.
std::shared_ptr<common::TraceWriter> openTrace(const JobSpec& job, int rank, int generation = 0);

// Optimizer, learning rate and clipping helpers shared with the
// single-process reference, so both do the same arithmetic.
std::unique_ptr<torch::optim::Optimizer> makeOptimizer(const OptimizerSpec& spec,
                                                       std::vector<torch::Tensor> params);
void setLearningRate(torch::optim::Optimizer& opt, double lr);
double squaredGradNorm(const std::vector<torch::Tensor>& params);
void clipTo(const std::vector<torch::Tensor>& params, double total_sq, double max_norm);

}  // namespace geopipe::runtime
