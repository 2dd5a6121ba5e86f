// The job a coordinator runs, read once when it starts: the job file with
// its topology inlined (what the workers receive), the coordinator's
// overrides and defaults applied, the data-parallel shape planned when it is
// `auto`, and the checkpoint a --resume continues from. Torch-free header.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "geopipe/job_spec.h"
#include "src/distributed/coordinator.h"
#include "src/distributed/job_bundle.h"

namespace geopipe {
struct ModelDef;
}  // namespace geopipe

namespace geopipe::distributed {

struct CoordinatorJob {
  JobBundle bundle;  // the job file as the workers receive it
  // Parsed, with the bundle's security, CoordinatorOptions::steps,
  // transport.emulate_links and an `auto` data_parallel resolved.
  JobSpec job;
  int min_replicas = 1;  // fault_tolerance.min_replicas, resolved (at most the replicas)
  // Where the first generation starts: step 0, or the checkpoint --resume
  // found (its step directory, the replicas that wrote it and its body
  // layers per stage; empty and the job's replicas without one).
  int64_t first_step = 0;
  std::string resume_dir;
  int resume_replicas = 1;
  std::vector<int> resume_body_split;
};

// Reads the job of `opt` (job_path, steps, resume, emulate_links_by_default)
// and makes its model into `*model`, checked to have a body layer per stage.
// `event` hears, in order, what an operator should know: whether links are
// emulated, the shape the scheduler chose, a min_replicas without effect,
// the checkpoint resumed from. Throws SpecError / ConfigError / IoError for
// a bad job.
CoordinatorJob readCoordinatorJob(const CoordinatorOptions& opt, ModelDef* model,
                                  const std::function<void(const std::string&)>& event);

}  // namespace geopipe::distributed
