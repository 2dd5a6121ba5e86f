// Reused host buffers for boundary tensors leaving the device.
#include "src/runtime/staging_pool.h"

#include <utility>

#include "geopipe/error.h"

namespace geopipe::runtime {

torch::Tensor StagingPool::take(const std::vector<int64_t>& shape) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.lent;
    auto it = free_.find(numel);
    if (it != free_.end()) {
      torch::Tensor buffer = std::move(it->second);
      free_.erase(it);
      ++stats_.reused;
      return buffer.view(shape);
    }
    ++stats_.allocated;
    stats_.bytes += static_cast<uint64_t>(numel) * sizeof(float);
  }
  return torch::empty(shape, torch::TensorOptions().dtype(torch::kFloat32).pinned_memory(pinned_));
}

void StagingPool::give(torch::Tensor buffer) {
  GEOPIPE_CHECK(
      buffer.defined() && buffer.is_contiguous() && buffer.scalar_type() == torch::kFloat32, Error,
      "StagingPool::give: not a buffer of this pool");
  std::lock_guard<std::mutex> lock(mu_);
  GEOPIPE_CHECK(stats_.lent > 0, Error, "StagingPool::give: more buffers given back than taken");
  --stats_.lent;
  const int64_t numel = buffer.numel();
  free_.emplace(numel, std::move(buffer));
}

StagingStats StagingPool::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace geopipe::runtime
