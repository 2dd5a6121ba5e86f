// AC-SGD buffer memory of a job's tasklets, computed before the run from the
// job and the size of its data: what `validate` and `plan` show and refuse
// (docs/compression.md, "Buffer memory before the run"). Torch-free.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "geopipe/job_spec.h"
#include "scheduler/model_profile.h"
#include "src/data/dataset.h"

namespace geopipe::config {

// The m(xi) stores of one shape (D_pp stages x R replicas). Tasklet (s, r)
// keeps a sender store for boundary s (to stage s+1) unless s is last and a
// receiver store for boundary s-1 unless s is first: one store at either end
// of the pipeline, two in the middle, none with one stage. Every store holds
// one entry per sample its replica processes, of the same size (a boundary
// carries [seq_len, hidden] per sample), so all stores of a job are alike.
struct AcsgdBufferMemory {
  bool enabled = false;      // method acsgd and >= 2 stages
  bool counted = false;      // the sample count is known (else see `samples_note`)
  bool exact = true;         // false: `samples` is an upper bound
  std::string samples_note;  // where the sample count comes from, or why it is unknown
  int64_t samples = 0;       // N: training samples of the job
  int replicas = 0;          // R: replicas the stores are sized for
  bool shrinkable = false;   // R is fault_tolerance.min_replicas (below data_parallel)
  // Entries per store: min(ceil(N / R), steps x global_batch / R).
  int64_t samples_per_replica = 0;
  bool bounded_by_steps = false;      // the run's steps, not N / R, set it
  int seq_len = 0, hidden = 0;        // the per-sample boundary shape
  std::string format;                 // "fp16" or "quantized 8-bit"
  double bytes_per_element = 0;       // stored bytes per element, scales included
  uint64_t entry_bytes = 0;           // one sample's entry (compression::bufferEntryBytes)
  uint64_t header_bytes = 0;          // of which the entry's header and dims
  uint64_t store_bytes = 0;           // one store holds (compression::storeChargedBytes)
  uint64_t budget_bytes = 0;          // buffer_budget_gb: every store's own limit
  bool in_memory = true;              // buffer_store memory (else mmap: a file on disk)
  std::vector<int> stores_per_stage;  // 1, 2, ..., 2, 1

  uint64_t taskletBytes(int stage) const {
    return static_cast<uint64_t>(stores_per_stage[static_cast<size_t>(stage)]) * store_bytes;
  }
  uint64_t maxTaskletBytes() const;
  bool overBudget() const { return enabled && counted && store_bytes > budget_bytes; }
};

// The stores of `job` run with `replicas` data-parallel replicas (the job's
// own data_parallel, or the shape a plan picked), counting the samples from
// the data (data::countTrainSamples). A job with fault_tolerance.min_replicas
// may shrink to that many replicas, whose stores then hold the samples of
// the lost ones (runtime/reshard.h): the stores are sized for it.
AcsgdBufferMemory acsgdBufferMemory(const JobSpec& job, int replicas);
// The same with the sample count given (the runtime, once the data loaded).
AcsgdBufferMemory acsgdBufferMemory(const JobSpec& job, int replicas,
                                    const data::SampleCount& count);

// One line: "4096 samples per replica x 128 x 128 x 2 B (fp16) + 24 B per
// entry = 128.1 MiB per store".
std::string describeStore(const AcsgdBufferMemory& m);
// "1 store (128.1 MiB) at stages 0 and 3, 2 (256.2 MiB) at stages 1-2".
std::string describeTasklets(const AcsgdBufferMemory& m);

// Why the stores break buffer_budget_gb, with the numbers and the fixes
// (quantized buffers, fewer samples, a larger budget); "" when they fit.
std::string budgetProblem(const AcsgdBufferMemory& m);
// The fixes when the in-memory stores of a tasklet of `stage` (with
// `other_bytes` of its device's memory taken by the stage's weights, 0 when
// unknown) do not fit in `memory_bytes` (0: unknown, then the fixes carry no
// numbers): mmap, quantized buffers, fewer samples.
std::string memoryFixes(const AcsgdBufferMemory& m, int stage, double memory_bytes,
                        double other_bytes);
// Placement-free check of in-memory stores against the topology: the
// tasklets' buffers alone, largest first, against the devices' memory_gb,
// largest first (a placement exists for the buffers alone exactly when each
// k-th largest need fits the k-th largest device). "" when they fit; the
// planner charges buffers with each stage's weights, optimizer state and
// activations (`geopipe plan`).
std::string deviceMemoryProblem(const AcsgdBufferMemory& m, const TopologySpec& topology);

// What the scheduler charges per shape (scheduler::plan's acsgd_stores):
// the job's stores at d_dp replicas, the data counted once. Empty when the
// job has no AC-SGD stores or its samples cannot be counted before loading.
std::function<scheduler::AcsgdStores(int d_dp)> plannerStores(const JobSpec& job);

// Once the data is loaded (Trainer, worker): InfeasibleError with
// budgetProblem's message when the stores of `samples` training samples over
// `replicas` replicas break buffer_budget_gb. For jobs `validate` could not
// count (data.tokenizer) and runs whose steps were overridden, so they too
// fail before the first step rather than when a store fills up.
void checkBufferBudget(const JobSpec& job, int replicas, int64_t samples);

// Bytes as "512 B", "12.3 KiB", "123.4 MiB" or "12.34 GiB".
std::string formatBytes(double bytes);

}  // namespace geopipe::config
