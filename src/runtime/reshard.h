// Restoring a checkpoint with another number of data-parallel replicas than
// wrote it (recovery with fewer replicas, or --resume with a different
// data_parallel): which saved files each new tasklet takes, and how the
// AC-SGD buffer stores of the saved replicas become one. Torch-free.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "compression/activation_buffer.h"

namespace geopipe::runtime {

// A committed checkpoint as a resuming tasklet reads it: the shape that
// wrote it and the global layers [first, last) each saved stage held. A
// tasklet whose layers are exactly one saved stage's takes that stage's
// files; another split gathers every layer from the saved stage that held
// it (Tasklet::loadCheckpoint).
struct SavedLayout {
  std::string step_dir;
  int stages = 0;
  int replicas = 0;
  std::vector<std::pair<int, int>> layers_of_stage;

  // Path of the file of saved stage `stage`, replica `replica`:
  // "<step_dir>/tasklet-<replica * stages + stage>.<suffix>".
  std::string file(int stage, int replica, const std::string& suffix) const;
  // The saved stage that held exactly the layers [first, last); -1 if none.
  int stageWithLayers(int first, int last) const;
  // The saved stage whose input boundary is the cut before `layer` (it
  // starts there and is not the first); -1 when the saved split had no cut
  // there. stageEndingAt: the saved stage whose output boundary is that
  // cut (it ends there and is not the last). A boundary is kept across a
  // new split, with its AC-SGD buffers, exactly when both exist.
  int stageStartingAt(int layer) const;
  int stageEndingAt(int layer) const;
};

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
