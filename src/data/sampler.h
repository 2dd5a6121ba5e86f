// Deterministic sample order: which sample ids make up every micro-batch of
// every replica at every step, the same in every process that asks.
#pragma once

#include <cstdint>
#include <vector>

namespace geopipe::data {

// Epoch e visits every sample once in a permutation fixed by (seed, e).
// Step k's global batch is the next global_batch ids of that order (a batch
// never straddles epochs: the tail of an epoch that cannot fill a batch is
// skipped). Replica r of R gets the r-th contiguous slice of the batch and
// cuts it into micro-batches of micro_batch samples. Thread-safe (const).
class Sampler {
 public:
  Sampler(int64_t num_samples, int global_batch, int data_parallel, int micro_batch,
          uint64_t seed);

  int microBatchesPerReplica() const { return micro_batches_; }
  int64_t stepsPerEpoch() const { return steps_per_epoch_; }
  int64_t numSamples() const { return num_samples_; }
  int dataParallel() const { return data_parallel_; }

  // The whole global batch of `step`, in order (replica 0's samples first).
  std::vector<int64_t> globalBatch(int64_t step) const;
  // The sample ids of micro-batch m of replica r at `step`.
  std::vector<int64_t> microBatch(int64_t step, int replica, int m) const;
  // For each of `ids`: the replica that processed it last in steps
  // [0, next_step), or -1 when none did. Walks back one epoch order at a
  // time and stops once every id is found.
  std::vector<int> lastReplicaOf(const std::vector<int64_t>& ids, int64_t next_step) const;

 private:
  std::vector<int64_t> epochOrder(int64_t epoch) const;

  int64_t num_samples_;
  int global_batch_;
  int data_parallel_;
  int micro_batch_;
  int micro_batches_;
  int64_t steps_per_epoch_;
  uint64_t seed_;
};

// Samples whose AC-SGD buffers m(xi) one replica keeps over a whole run,
// ceil(num_samples / replicas): every store of a tasklet holds one entry per
// sample its replica processes. The sampler's AC-SGD binding -- each replica
// owns a fixed shard of about N / R samples, so its stores stop growing at
// that -- is what makes this true (without it a replica eventually visits,
// and stores, every sample). The one place this number is computed: budget
// checks before a run (config::acsgdBufferMemory) and the sharding use it.
int64_t acsgdSamplesPerReplica(int64_t num_samples, int replicas);

}  // namespace geopipe::data
