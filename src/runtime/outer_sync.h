// DiLoCo's outer loop for one tasklet (parallelism.data_parallel_sync kind
// diloco): the replicas of a stage train alone for H inner steps, then
// average their pseudo-gradients (the weights at the last sync minus the
// weights now) through a GradientSync, with its compressors and error
// feedback, and take one outer optimizer step on the shared weights.
//
// With overlap, round k's average runs on a background thread during
// round k + 1 and is applied at the end of round k + 1; each replica then
// goes on from the new shared weights plus its own progress of round k + 1,
// which the next average replaces. The last step of the run applies
// everything outstanding, so every replica ends with the same weights.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "geopipe/job_spec.h"
#include "src/runtime/gradient_sync.h"
#include "src/transport/transport.h"

namespace geopipe::runtime {

// Whether the outer step falls after inner step `step` (0-based) of a run of
// `steps`: every H-th step, and the last.
bool outerSyncDue(const DataParallelSyncSpec& spec, int64_t step, int64_t steps);

class OuterSync {
 public:
  // `params`: the tasklet's weights (the inner optimizer's), whose values at
  // construction are the first round's start. `group` as for GradientSync.
  OuterSync(transport::Transport& transport, std::vector<int> group,
            const DataParallelSyncSpec& spec, uint64_t seed, std::chrono::milliseconds timeout,
            std::vector<torch::Tensor> params);
  ~OuterSync();
  OuterSync(const OuterSync&) = delete;
  OuterSync& operator=(const OuterSync&) = delete;

  // Called after the inner optimizer's step `step` of `steps`: at the end of
  // a round, exchanges and applies (or, with overlap, starts the exchange
  // and applies the previous round's). Returns whether a round ended.
  bool afterStep(int64_t step, int64_t steps);

  // Waits for an exchange still running (a checkpoint stores its result)
  // and takes the bytes of the finished ones.
  void settle();

  // Shared weights, outer optimizer state, the round's start (overlap) and
  // a settled exchange's result, as one LibTorch archive; the GradientSync
  // state (error-feedback residuals) as a second file. IoError naming the
  // file when it cannot be written or read, or does not fit.
  void save(const std::string& path, const std::string& sync_path);
  void load(const std::string& path, const std::string& sync_path);
  // The state of a job that resumes with another number of replicas: the
  // archive of one saved replica (the shared weights are the same on all),
  // residuals merged as GradientSync::loadMergedState does.
  void loadMerged(const std::string& path, const std::string& base_sync_path,
                  const std::vector<std::string>& residual_paths, float scale);

  // The weights as they are now are the shared weights and the round's
  // start: a resume from a checkpoint written under every_step sync.
  void startFromWeights();

  // Bytes of the exchanges finished so far (settled ones only).
  uint64_t rawBytes() const { return raw_bytes_; }
  uint64_t wireBytes() const { return wire_bytes_; }

 private:
  // Averages anchor_'s grads (the pseudo-gradients) over the group, in
  // place; on the background thread with overlap. settle() reads its byte
  // counts once nothing runs.
  void exchange(int64_t step);
  // One outer step (anchor_'s grads hold the average), then every replica
  // goes on from the new shared weights.
  void stepSharedWeights();
  void loadArchive(const std::string& path);

  DataParallelSyncSpec spec_;
  std::unique_ptr<GradientSync> sync_;
  std::vector<torch::Tensor> params_;  // the inner optimizer's weights
  // The shared weights as of the last applied outer step; their grads carry
  // the pseudo-gradient into the exchange and its average out of it.
  std::vector<torch::Tensor> anchor_;
  std::vector<torch::Tensor> start_;  // overlap: this replica's round start
  std::unique_ptr<torch::optim::Optimizer> outer_;
  std::future<void> running_;  // overlap: the exchange in flight
  bool averaged_ = false;      // overlap: anchor_ grads hold an unapplied average
  uint64_t raw_bytes_ = 0, wire_bytes_ = 0;
};

}  // namespace geopipe::runtime
