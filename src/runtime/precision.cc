// Mixed precision: autocast scopes and dynamic loss scaling.
#include "src/runtime/precision.h"

#include <ATen/autocast_mode.h>

#include <algorithm>

#include "geopipe/error.h"

namespace geopipe::runtime {

void checkComputeDtype(const JobSpec& job) {
  const std::string& dtype = job.model.dtype;
  GEOPIPE_CHECK(dtype == "fp32" || dtype == "bf16" || dtype == "fp16", ConfigError, "model.dtype '",
                dtype, "' is not fp32, bf16 or fp16");
  if (dtype == "fp16" && job.training.device == "cpu") {
    GEOPIPE_THROW(InfeasibleError,
                  "model.dtype fp16 computes only on CUDA (LibTorch's CPU kernels have no fp16 "
                  "matrix products), and training.device is cpu: use model.dtype bf16 (16-bit "
                  "compute on the CPU) or fp32, or training.device: cuda. A job with fp16 is "
                  "still valid for `geopipe plan`, which only prices it");
  }
}

AutocastScope::AutocastScope(const std::string& dtype, torch::Device device) {
  if (dtype == "fp32") return;
  const at::ScalarType t = dtype == "bf16" ? at::kBFloat16 : at::kHalf;
  if (device.is_cpu()) {
    was_cpu_ = at::autocast::is_cpu_enabled();
    at::autocast::set_autocast_cpu_dtype(t);
    at::autocast::set_cpu_enabled(true);
    cpu_ = true;
  } else {
    was_cuda_ = at::autocast::is_enabled();
    at::autocast::set_autocast_gpu_dtype(t);
    at::autocast::set_enabled(true);
    cuda_ = true;
  }
}

AutocastScope::~AutocastScope() {
  if (cpu_) at::autocast::set_cpu_enabled(was_cpu_);
  if (cuda_) at::autocast::set_enabled(was_cuda_);
  // The 16-bit weight copies autocast cached for this forward pass are
  // stale once the optimizer steps.
  if (cpu_ || cuda_) at::autocast::clear_cache();
}

bool LossScaler::update(bool found_inf) {
  if (found_inf) {
    GEOPIPE_CHECK(scale_ > kMinScale, InfeasibleError,
                  "fp16: gradients overflow even with the loss scale at its floor (", kMinScale,
                  "): the run diverged; lower the learning rate, clip gradients "
                  "(training.grad_clip) or train in model.dtype bf16");
    scale_ = std::max(kMinScale, scale_ * 0.5);
    good_steps_ = 0;
    return false;
  }
  if (++good_steps_ >= growth_interval_) {
    scale_ *= 2.0;
    good_steps_ = 0;
  }
  return true;
}

bool unscaleAndCheck(const std::vector<torch::Tensor>& params, double scale) {
  torch::NoGradGuard guard;
  bool bad = false;
  const double inv = 1.0 / scale;
  for (const auto& p : params) {
    if (!p.grad().defined()) continue;
    p.grad().mul_(inv);
    if (!torch::isfinite(p.grad()).all().item<bool>()) bad = true;
  }
  return bad;
}

}  // namespace geopipe::runtime
