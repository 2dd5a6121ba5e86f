// Restoring a checkpoint with another number of data-parallel replicas than
// wrote it (recovery with fewer replicas, or --resume with a different
// data_parallel): which saved files each new tasklet takes, and how the
// AC-SGD buffer stores of the saved replicas become one. Torch-free.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "compression/activation_buffer.h"

namespace geopipe::runtime {

// Where new replica `replica` of `replicas` finds its state in a checkpoint
// written by `saved_replicas` replicas (of the same stages).
struct ReshardSources {
  // Weights and optimizer state: the same on every saved replica (the
  // gradient exchange leaves every replica with identical gradients), so
  // any one; replica % saved_replicas.
  int model_replica = 0;
  // Error-feedback residuals: every saved replica r goes to exactly one new
  // replica (r % replicas), scaled by replicas / saved_replicas so that the
  // gradient mass the residuals still owe the replica average is kept.
  std::vector<int> residual_replicas;
  float residual_scale = 1.0f;
};
ReshardSources reshardSources(int replica, int replicas, int saved_replicas);

// Fills `into` (cleared first) with one entry per sample id found in any of
// the stores saved at `paths` (one boundary side of one stage, saved
// replica by saved replica): the entry of the saved replica that
// `newest_owner` names for the id (the one that processed the sample last,
// so its buffer is the freshest), else of the lowest-numbered replica that
// holds one. With `keep`, only the ids it accepts are taken (the samples
// the new replica owns when shards are bound to replicas, data/sampler.h).
// The sender's and the receiver's side of a boundary hold the same ids per
// replica and are merged by the same rule, so they stay in lock-step.
// Streams each saved file twice (ids, then the chosen entries): only `into`
// is held, so it works within an mmap store's budget.
// IoError / InfeasibleError as ActivationBufferStore::load (`into` is then
// left empty).
using NewestOwner = std::function<std::vector<int>(const std::vector<int64_t>& ids)>;
using KeepSample = std::function<bool(int64_t id)>;
void mergeBufferStores(const std::vector<std::string>& paths, const NewestOwner& newest_owner,
                       compression::ActivationBufferStore& into, const KeepSample& keep = {});

}  // namespace geopipe::runtime
