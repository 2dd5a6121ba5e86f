// Deterministic sample order: which sample ids make up every micro-batch of
// every replica at every step, the same in every process that asks.
#pragma once

#include <cstdint>
#include <vector>

#include "geopipe/job_spec.h"

namespace geopipe::data {

// Which replica may take which sample (docs/data.md, "Sample order").
enum class SampleOrder : uint8_t {
  // Every replica draws from all samples: epoch e is one permutation of all
  // of them, step k's global batch its next global_batch ids, replica r the
  // r-th contiguous slice of the batch. A batch never straddles epochs: the
  // tail of an epoch that cannot fill one (num_samples mod global_batch
  // samples, different ones each epoch) is skipped.
  GLOBAL,
  // Replica r of R owns a fixed shard, the samples with id % R == r, and
  // each epoch walks its shard in a new order, global_batch / R samples a
  // step. An epoch has ceil(ceil(N / R) / (global_batch / R)) steps; a
  // shard that does not fill its last step tops it up with the first
  // samples of that epoch's order again, so every sample is visited at
  // least once per epoch and (steps x global_batch - N) visits per epoch
  // are second ones. AC-SGD keeps one buffer per sample on each replica
  // that meets it: bound, a replica's buffers hold its shard, ~1/R of the
  // samples, and every visit after the first epoch sends a delta.
  BOUND,
};

// The one rule: BOUND when the job's activations use AC-SGD, else GLOBAL.
SampleOrder sampleOrderFor(const JobSpec& job);

// The most samples one replica visits over a run (so the most AC-SGD buffer
// entries a boundary side of one tasklet holds): BOUND ceil(N / R) (replica
// 0's shard); GLOBAL all N (any replica may meet any sample). Torch-free,
// for validate and plan.
int64_t samplesPerReplica(int64_t num_samples, int replicas, SampleOrder order);

// The order of one job: global_batch samples a step over `data_parallel`
// replicas, each cutting its share into micro-batches of micro_batch.
// Every lookup costs O(its result): the epoch's shuffle is a keyed
// Feistel permutation (permutation.h), not a table. Immutable, thread-safe.
class Sampler {
 public:
  Sampler(int64_t num_samples, int global_batch, int data_parallel, int micro_batch, uint64_t seed,
          SampleOrder order = SampleOrder::GLOBAL);

  // The same order for another replica count (a checkpoint written by
  // `replicas` replicas, resharded).
  Sampler withReplicas(int replicas) const;

  int microBatchesPerReplica() const { return micro_batches_; }
  int64_t stepsPerEpoch() const { return steps_per_epoch_; }
  int64_t numSamples() const { return num_samples_; }
  int dataParallel() const { return data_parallel_; }
  SampleOrder order() const { return order_; }
  int64_t samplesPerReplica() const;
  // BOUND: the replica that owns sample `id`; GLOBAL: -1 (any replica).
  int ownerOf(int64_t id) const;

  // The whole global batch of `step`, in order (replica 0's samples first).
  std::vector<int64_t> globalBatch(int64_t step) const;
  // The sample ids of micro-batch m of replica r at `step`.
  std::vector<int64_t> microBatch(int64_t step, int replica, int m) const;
  // For each of `ids`: the replica that processed it last in steps
  // [0, next_step), or -1 when none did (or it is no sample id of this
  // data). O(1) per id (BOUND), or one
  // inverse lookup per epoch walked back until the id is found (GLOBAL).
  std::vector<int> lastReplicaOf(const std::vector<int64_t>& ids, int64_t next_step) const;

 private:
  // The `count` ids from position `first` of replica r's share of `step`.
  void replicaSlice(int64_t step, int replica, int64_t first, int64_t count,
                    std::vector<int64_t>& out) const;
  int64_t shardSize(int replica) const;
  uint64_t epochKey(int64_t epoch, int replica) const;

  int64_t num_samples_;
  int global_batch_;
  int data_parallel_;
  int micro_batch_;
  int micro_batches_;
  int per_replica_;  // samples of one replica per step
  int64_t steps_per_epoch_;
  uint64_t seed_;
  SampleOrder order_;
};

}  // namespace geopipe::data
