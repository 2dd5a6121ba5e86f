// The coordinator's checkpoint commits: every tasklet's report of the files
// it wrote for a checkpoint, gathered until the whole generation has
// reported, then one manifest to commit. Torch-free; not thread-safe (the
// coordinator holds its lock).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "geopipe/job_spec.h"
#include "src/runtime/checkpoint.h"

namespace geopipe::distributed {

class CheckpointCollector {
 public:
  // `job` must outlive the collector: its name, model and tokenizer go into
  // every manifest.
  explicit CheckpointCollector(const JobSpec& job) : job_(job) {}

  // From a placement on: the generation's `stages` x `replicas` tasklets
  // report, each stage holding `layers_of_stage` (as the manifest says).
  void startGeneration(int stages, int replicas, std::vector<std::pair<int, int>> layers_of_stage);

  // Rank `rank`'s files of the checkpoint a resumed run starts at
  // `next_step`. A repeated report (a retried call) counts once: the commit
  // waits for every tasklet's files, not for as many reports. When this
  // report completes the checkpoint, returns its manifest (the files in the
  // order they arrived, sizes and checksums left to the commit) and forgets
  // the step; nullopt otherwise.
  std::optional<runtime::CheckpointManifest> add(int64_t next_step, int rank,
                                                 const std::vector<std::string>& files);

  // A generation ended: the checkpoints still incomplete are dropped.
  void clear() { pending_.clear(); }

 private:
  struct Pending {
    std::set<int> ranks;  // tasklets that reported
    std::vector<std::string> files;
  };
  const JobSpec& job_;
  int stages_ = 0;
  int replicas_ = 0;
  std::vector<std::pair<int, int>> layers_of_stage_;
  std::map<int64_t, Pending> pending_;  // by next_step
};

}  // namespace geopipe::distributed
