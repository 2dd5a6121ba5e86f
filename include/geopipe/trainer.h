// geopipe::Trainer: trains a ModelDef under a JobSpec with pipeline and data
// parallelism. In this build every tasklet (stage s of replica r) runs as a
// thread of this process over the in-process transport, with each link shaped
// to the topology by the link emulator when the job asks for it.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "geopipe/job_spec.h"
#include "geopipe/model.h"

namespace geopipe {

// What one optimizer step did, across all tasklets.
struct StepMetrics {
  int64_t step = 0;
  double loss = 0;            // mean training loss of the global batch
  double lr = 0;              // learning rate used for this step
  double seconds = 0;         // wall-clock of the step (slowest tasklet)
  double tokens_per_second = 0;
  uint64_t activation_raw_bytes = 0;   // fp32 size of activations sent this step
  uint64_t activation_wire_bytes = 0;  // bytes actually sent for them
  uint64_t gradient_raw_bytes = 0;     // same for backward activation gradients
  uint64_t gradient_wire_bytes = 0;
  uint64_t dp_raw_bytes = 0;           // data-parallel gradient exchange, fp32 size
  uint64_t dp_wire_bytes = 0;          // and on the wire
  double compute_seconds = 0;  // busiest tasklet's compute time
  double comm_wait_seconds = 0;  // that tasklet's time blocked on communication
  // Gradient norm before clipping. A tasklet reports the squared L2 norm of
  // its averaged gradients (a weight tied across stages counted once);
  // merged steps sum them, and the finished step's grad_norm is
  // sqrt(sum / data_parallel): the global norm over every stage, the one
  // training.grad_clip clips (replicas hold the same averaged gradients).
  // Needs no exchange beyond the step reports.
  double grad_sq_sum = 0;
  double grad_norm = 0;
  // Peak resident set size (getrusage ru_maxrss) of the process running the
  // tasklet; merged steps keep the largest. Host memory: with several
  // tasklets in one process (train) it is that process's, over gRPC the
  // largest worker process's.
  uint64_t peak_rss_bytes = 0;
  // Bytes each tasklet handed to / took from its transport since its
  // previous step, by rank (replica * stages + stage): pipeline, data-parallel
  // and control traffic after compression. A tasklet's own share has its
  // entry at its rank (zeros before); merged steps add element-wise.
  std::vector<uint64_t> sent_bytes_by_rank;
  std::vector<uint64_t> received_bytes_by_rank;
  // The same sent bytes by directed link, keyed (from rank, to rank): what
  // each tasklet's transport sent to each peer since its previous step (a
  // send to itself under (r, r)). Only links with traffic have an entry;
  // the entries from rank r sum to sent_bytes_by_rank[r]. Merged steps add.
  std::map<std::pair<int, int>, uint64_t> link_sent_bytes;
  // Each tasklet's compute time and time blocked on communication (the
  // compute_seconds / comm_wait_seconds it reported) and its step's
  // wall-clock, by rank as above: the per-stage shares of the live endpoint.
  std::vector<double> compute_seconds_by_rank;
  std::vector<double> comm_wait_seconds_by_rank;
  std::vector<double> seconds_by_rank;
  // Validation after this step (training.eval_every): summed next-token
  // cross-entropy and predicted tokens over the whole validation set;
  // val_tokens == 0 when no evaluation ran.
  double val_loss_sum = 0;
  uint64_t val_tokens = 0;
  bool hasValLoss() const { return val_tokens > 0; }
  double valLoss() const { return val_tokens ? val_loss_sum / static_cast<double>(val_tokens) : 0; }
};

struct TrainResult {
  int64_t first_step = 0;       // > 0 when resumed from a checkpoint
  std::vector<double> losses;   // per step run, from first_step
  // (step, validation loss) of every evaluation, in order.
  std::vector<std::pair<int64_t, double>> val_losses;
  double seconds = 0;           // whole run
  double tokens_per_second = 0; // all steps
  uint64_t wire_bytes = 0;      // all pipeline + data-parallel traffic
  uint64_t raw_bytes = 0;       // the same traffic in fp32
  std::vector<int> device_of_rank;  // placement used: rank = replica * stages + stage
  std::vector<std::pair<int, int>> layers_of_stage;  // [first, last) model layers
  std::string placement_source;  // "caller", "scheduler" or "in-order"
  bool interrupted = false;      // should_stop ended the run early
  // Bytes each rank's AC-SGD buffer stores hold at the end of the run (its
  // sender's and receiver's together, as the stores charge them against
  // buffer_budget_gb; rank = replica * stages + stage); empty without AC-SGD.
  std::vector<uint64_t> acsgd_buffer_bytes;
};

struct TrainerOptions {
  // Called after every step from the thread that called train().
  std::function<void(const StepMetrics&)> on_step;
  // LibTorch intra-op threads per tasklet; 0 = max(1, cores / tasklets).
  int threads_per_tasklet = 0;
  // Device of each rank (replica * stages + stage); empty = ask the
  // scheduler (job.scheduler) when the topology has enough devices, else
  // in-order.
  std::vector<int> device_of_rank;
  // Body layers per stage (model.layers split); empty = the plan's layers,
  // or an even split.
  std::vector<int> layers_per_stage;
  // Longest wait for a peer's message before the step fails.
  int timeout_seconds = 300;
  // Polled after every step from the thread that called train(); when it
  // returns true every tasklet is stopped and train() returns the steps done
  // so far with TrainResult::interrupted set (Ctrl-C in the CLI).
  std::function<bool()> should_stop;
  // What a stop does when the job has a checkpoint.dir. false: the tasklets
  // stop at once, as a crash would; the newest periodic checkpoint stays the
  // newest. true: every tasklet finishes the steps any of them has begun
  // (tasklets run ahead of the thread that polls should_stop), all write a
  // checkpoint after that same step and it is committed before train()
  // returns, so `resume` continues from where the run stopped (Ctrl-C in
  // `geopipe train`, like `launch`).
  bool checkpoint_at_stop = false;
  // Continue from the newest committed checkpoint in job.checkpoint.dir
  // (corrupt or partial ones are skipped); ConfigError if there is none or it
  // was written by another stages x replicas layout.
  bool resume = false;
  // With AC-SGD activations each replica owns a fixed shard of the samples
  // (docs/data.md, "Sample order"). false: every replica draws from all
  // samples as without AC-SGD, the order before shards were bound; for
  // benchmarks that measure what binding changes (`geopipe bench binding`).
  bool bind_samples = true;
};

// Trains `model` as `job` describes (training, parallelism, compression,
// topology, transport). Throws ConfigError for settings it cannot run,
// TimeoutError / ProtocolError when a tasklet fails (naming it).
class Trainer {
 public:
  Trainer(ModelDef model, JobSpec job, TrainerOptions options = {});
  TrainResult train();

 private:
  ModelDef model_;
  JobSpec job_;
  TrainerOptions options_;
};

// How the single-process reference forms a step's gradient.
enum class ReferenceMode {
  // One forward/backward over the whole global batch: plain training.
  FULL_BATCH,
  // The job's micro-batches, accumulated per replica in the same order as
  // the pipeline, then averaged over replicas: the same arithmetic as the
  // staged engine, so the two agree to rounding (Adam amplifies any
  // reordering of float sums, which is why the exactness test uses this).
  ACCUMULATE_LIKE_JOB,
};

// The same model, data, seed and global batch trained in one process without
// pipelining or compression: the reference the staged engine must match.
TrainResult trainSingleProcess(const ModelDef& model, const JobSpec& job,
                               ReferenceMode mode = ReferenceMode::FULL_BATCH,
                               const std::function<void(const StepMetrics&)>& on_step = {});

// Learning rate of `step` (0-based) under job.training's optimizer and schedule.
double learningRateAt(const TrainingSpec& training, int64_t step);

}  // namespace geopipe
