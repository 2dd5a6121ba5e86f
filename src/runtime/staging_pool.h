// Host buffers for the copies of boundary tensors that leave a stage's
// device, reused from micro-batch to micro-batch: page-locked (pinned) when
// the tensors come from a CUDA device, so that the device-to-host copy runs
// asynchronously on the compute stream; plain memory otherwise.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <vector>

namespace geopipe::runtime {

struct StagingStats {
  uint64_t allocated = 0;  // buffers made
  uint64_t reused = 0;     // takes served from a returned buffer
  uint64_t bytes = 0;      // bytes of every buffer made
  uint64_t lent = 0;       // buffers taken and not yet given back
};

// Thread-safe: the compute thread takes a buffer, the codec lane gives it
// back once the bytes are encoded.
class StagingPool {
 public:
  explicit StagingPool(bool pinned) : pinned_(pinned) {}
  // An fp32 CPU tensor of `shape`: a returned buffer of the same element
  // count when there is one, else a new one (pinned when the pool is).
  torch::Tensor take(const std::vector<int64_t>& shape);
  // Gives back a buffer take() returned; it must no longer be used.
  void give(torch::Tensor buffer);
  StagingStats stats() const;

 private:
  const bool pinned_;
  mutable std::mutex mu_;
  std::multimap<int64_t, torch::Tensor> free_;  // by element count
  StagingStats stats_;
};

}  // namespace geopipe::runtime
