// Data-parallel gradient exchange of one stage group: average the replicas'
// gradients in place, uncompressed (deterministic all-reduce) or through the
// compression library's compressors with error feedback.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <vector>

#include "compression/gradient_compressor.h"
#include "geopipe/job_spec.h"
#include "src/transport/transport.h"

namespace geopipe::runtime {

// One per tasklet. `group` lists the transport ranks of every replica of
// this stage (this rank included) in replica order; all members call
// average() for the same step with parameters of the same shapes. Every
// member ends with bit-identical gradients.
class GradientSync {
 public:
  GradientSync(transport::Transport& transport, std::vector<int> group,
               const GradientCompressionSpec& spec, uint64_t seed,
               std::chrono::milliseconds timeout);
  void average(const std::vector<torch::Tensor>& params, int64_t step);
  // Error-feedback residuals and PowerSGD state, for exact resume. The file
  // starts with a magic and the method; loadState refuses a file written for
  // another method or tensor count (ProtocolError) or unreadable (IoError).
  void saveState(const std::string& path) const;
  void loadState(const std::string& path);
  // Restores a replica of a job that resumes with another number of
  // replicas: PowerSGD's shared Q (the same on every replica) from
  // `base_path`, and as error-feedback residuals `scale` times the sum of
  // the residuals in `residual_paths` (zero when there are none). With
  // scale = new replicas / saved replicas and every saved replica's state
  // given to exactly one new replica, the gradient mass the residuals still
  // owe the average is kept.
  void loadMergedState(const std::string& base_path,
                       const std::vector<std::string>& residual_paths, float scale);
  uint64_t rawBytes() const { return raw_bytes_; }
  uint64_t wireBytes() const { return wire_bytes_; }

 private:
  // Gradients on a GPU: NCCL's all-reduce when the transport offers it and
  // the exchange is uncompressed, else the host paths on host copies.
  void averageOnDevice(const std::vector<torch::Tensor>& params, int64_t step);
  void averageDense(const std::vector<torch::Tensor>& params, int64_t step);
  void averageCompressed(const std::vector<torch::Tensor>& params, int64_t step);
  void applyOwedResiduals(const std::vector<torch::Tensor>& params);
  void splitCompressed(const std::vector<torch::Tensor>& params,
                       std::vector<torch::Tensor>* compressed,
                       std::vector<torch::Tensor>* dense) const;
  struct SavedState;
  SavedState readState(const std::string& path) const;
  void applyState(const SavedState& state);

  transport::Transport& transport_;
  std::vector<int> group_;
  GradientCompressionSpec spec_;
  compression::GradientCompressorOptions options_;
  std::chrono::milliseconds timeout_;
  std::vector<std::unique_ptr<compression::GradientCompressor>> compressors_;
  std::vector<std::unique_ptr<compression::PowerSgdCompressor>> power_;
  std::vector<float> flat_;
  uint64_t raw_bytes_ = 0, wire_bytes_ = 0;
};

// Sum of `value` over `group` (same order on every member, so the same
// result everywhere); used for the global gradient norm across stages.
double allReduceScalarSum(transport::Transport& transport, const std::vector<int>& group,
                          double value, int64_t step, int index,
                          std::chrono::milliseconds timeout);

}  // namespace geopipe::runtime
