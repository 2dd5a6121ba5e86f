// Mixed precision (model.dtype): 16-bit compute through LibTorch's autocast
// with fp32 master weights and optimizer state, and dynamic loss scaling for
// fp16. bf16 computes on the CPU and on CUDA; fp16 needs CUDA.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>

#include "geopipe/job_spec.h"

namespace geopipe::runtime {

// InfeasibleError naming the fix when the job's model.dtype cannot compute
// on its training.device (fp16 on the CPU: LibTorch's CPU kernels lack fp16
// matmuls). `plan` and `validate` accept such jobs (they only price them).
void checkComputeDtype(const JobSpec& job);

// Enables autocast to `dtype` ("bf16" | "fp16") on `device` for this thread
// until destroyed; does nothing for "fp32". Matmuls and linear layers then
// run in 16 bits on 16-bit copies of the fp32 weights; reductions, norms and
// the loss stay in fp32 (LibTorch's autocast lists, plus the families' own
// fp32 RMSNorm, softmax and loss).
class AutocastScope {
 public:
  AutocastScope(const std::string& dtype, torch::Device device);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool cpu_ = false, cuda_ = false;
  bool was_cpu_ = false, was_cuda_ = false;
};

// Dynamic loss scaling for fp16 (as torch.cuda.amp.GradScaler): the loss is
// multiplied by scale() before backward; after it the gradients are divided
// by it, and when any tasklet found a non-finite gradient every tasklet
// skips the step and the scale halves; after `growth_interval` steps in a
// row without one it doubles. Deterministic: every tasklet holds the same
// scale because they all see the same agreed flag.
class LossScaler {
 public:
  // The scale never falls below this; an overflow there means the run
  // diverged (InfeasibleError), not that the scale is too large.
  static constexpr double kMinScale = 1.0;
  explicit LossScaler(double initial = 65536.0, int growth_interval = 2000)
      : scale_(initial), growth_interval_(growth_interval) {}
  double scale() const { return scale_; }
  int goodSteps() const { return good_steps_; }
  // After a step: `found_inf` agreed by every tasklet. Returns whether the
  // optimizer may step (false: skip it).
  bool update(bool found_inf);
  // For checkpoints.
  void restore(double scale, int good_steps) {
    scale_ = scale;
    good_steps_ = good_steps;
  }

 private:
  double scale_;
  int growth_interval_;
  int good_steps_ = 0;
};

// Divides every gradient by `scale` in place; true when any is not finite.
bool unscaleAndCheck(const std::vector<torch::Tensor>& params, double scale);

}  // namespace geopipe::runtime
