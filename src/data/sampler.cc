// Deterministic sample order for every step, replica and micro-batch.
#include "src/data/sampler.h"

#include "geopipe/error.h"
#include "src/common/hash.h"
#include "src/data/permutation.h"

namespace geopipe::data {

SampleOrder sampleOrderFor(const JobSpec& job) {
  return job.compression.activations.method == "acsgd" ? SampleOrder::BOUND : SampleOrder::GLOBAL;
}

int64_t samplesPerReplica(int64_t num_samples, int replicas, SampleOrder order) {
  GEOPIPE_CHECK(num_samples >= 0 && replicas >= 1, ConfigError, num_samples, " samples over ",
                replicas, " replicas");
  return order == SampleOrder::BOUND ? (num_samples + replicas - 1) / replicas : num_samples;
}

Sampler::Sampler(int64_t num_samples, int global_batch, int data_parallel, int micro_batch,
                 uint64_t seed, SampleOrder order)
    : num_samples_(num_samples),
      global_batch_(global_batch),
      data_parallel_(data_parallel),
      micro_batch_(micro_batch),
      seed_(seed),
      order_(order) {
  GEOPIPE_CHECK(data_parallel >= 1 && micro_batch >= 1 && global_batch >= 1 &&
                    global_batch % (data_parallel * micro_batch) == 0,
                ConfigError, "training.global_batch (", global_batch,
                ") must be a multiple of data_parallel x micro_batch (", data_parallel, " x ",
                micro_batch, ")");
  if (num_samples < global_batch) {
    GEOPIPE_THROW(ConfigError, "the data holds ", num_samples,
                  " samples, fewer than one global batch (training.global_batch = ", global_batch,
                  "): use more data or a smaller batch");
  }
  per_replica_ = global_batch / data_parallel;
  micro_batches_ = per_replica_ / micro_batch;
  if (order == SampleOrder::GLOBAL) {
    steps_per_epoch_ = num_samples / global_batch;
  } else {
    // Replica 0's shard is the largest; every shard holds at least
    // floor(N / R) >= global_batch / R samples (N >= global_batch), so a
    // step's top-up never repeats a sample of the same step.
    steps_per_epoch_ = (shardSize(0) + per_replica_ - 1) / per_replica_;
  }
}

Sampler Sampler::withReplicas(int replicas) const {
  return Sampler(num_samples_, global_batch_, replicas, micro_batch_, seed_, order_);
}

int64_t Sampler::samplesPerReplica() const {
  return data::samplesPerReplica(num_samples_, data_parallel_, order_);
}

int Sampler::ownerOf(int64_t id) const {
  return order_ == SampleOrder::BOUND ? static_cast<int>(id % data_parallel_) : -1;
}

int64_t Sampler::shardSize(int replica) const {
  // The ids r, r + R, r + 2R, ... below N.
  return (num_samples_ - replica + data_parallel_ - 1) / data_parallel_;
}

uint64_t Sampler::epochKey(int64_t epoch, int replica) const {
  const uint64_t key =
      common::mix64(seed_ ^ common::mix64(static_cast<uint64_t>(epoch) + 0x51ED27ull));
  // Replica 0 shuffles with the global order's key: with one replica the
  // bound order is the global one (up to the top-up of the last step), so
  // a run with AC-SGD sees the samples in the order of the same run without.
  if (order_ == SampleOrder::GLOBAL || replica == 0) return key;
  return common::mix64(key ^ common::mix64(static_cast<uint64_t>(replica) + 0xB0D5A3ull));
}

void Sampler::replicaSlice(int64_t step, int replica, int64_t first, int64_t count,
                           std::vector<int64_t>& out) const {
  const int64_t epoch = step / steps_per_epoch_, in_epoch = step % steps_per_epoch_;
  if (order_ == SampleOrder::GLOBAL) {
    const Permutation order(static_cast<uint64_t>(num_samples_), epochKey(epoch, 0));
    const int64_t base = in_epoch * global_batch_ + int64_t{replica} * per_replica_ + first;
    for (int64_t i = 0; i < count; ++i) {
      out.push_back(static_cast<int64_t>(order.at(static_cast<uint64_t>(base + i))));
    }
    return;
  }
  const int64_t shard = shardSize(replica);
  const Permutation order(static_cast<uint64_t>(shard), epochKey(epoch, replica));
  const int64_t base = in_epoch * per_replica_ + first;
  for (int64_t i = 0; i < count; ++i) {
    int64_t p = base + i;
    if (p >= shard) p -= shard;  // the top-up: this epoch's first samples again
    const auto j = static_cast<int64_t>(order.at(static_cast<uint64_t>(p)));
    out.push_back(j * data_parallel_ + replica);
  }
}

std::vector<int64_t> Sampler::globalBatch(int64_t step) const {
  GEOPIPE_CHECK(step >= 0, ConfigError, "step ", step, " is negative");
  std::vector<int64_t> out;
  out.reserve(static_cast<size_t>(global_batch_));
  for (int r = 0; r < data_parallel_; ++r) replicaSlice(step, r, 0, per_replica_, out);
  return out;
}

std::vector<int64_t> Sampler::microBatch(int64_t step, int replica, int m) const {
  GEOPIPE_CHECK(
      step >= 0 && replica >= 0 && replica < data_parallel_ && m >= 0 && m < micro_batches_,
      ConfigError, "micro-batch ", m, " of replica ", replica, " at step ", step, " out of range");
  std::vector<int64_t> out;
  out.reserve(static_cast<size_t>(micro_batch_));
  replicaSlice(step, replica, int64_t{m} * micro_batch_, micro_batch_, out);
  return out;
}

std::vector<int> Sampler::lastReplicaOf(const std::vector<int64_t>& ids, int64_t next_step) const {
  std::vector<int> out(ids.size(), -1);
  if (next_step <= 0) return out;
  const int64_t last_epoch = (next_step - 1) / steps_per_epoch_;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int64_t id = ids[i];
    if (id < 0 || id >= num_samples_) continue;  // not a sample of this data
    if (order_ == SampleOrder::BOUND) {
      // Only its owner ever takes it; epoch 0 visits every sample, so
      // after it the sample has been visited, before it when its place in
      // epoch 0's order is before next_step's (the top-up comes last).
      const int r = ownerOf(id);
      if (next_step >= steps_per_epoch_) {
        out[i] = r;
        continue;
      }
      const Permutation order(static_cast<uint64_t>(shardSize(r)), epochKey(0, r));
      const auto p =
          static_cast<int64_t>(order.indexOf(static_cast<uint64_t>(id / data_parallel_)));
      if (p < next_step * per_replica_) out[i] = r;
      continue;
    }
    // GLOBAL: the newest epoch that put it in a batch run before next_step.
    for (int64_t e = last_epoch; e >= 0; --e) {
      const Permutation order(static_cast<uint64_t>(num_samples_), epochKey(e, 0));
      const auto p = static_cast<int64_t>(order.indexOf(static_cast<uint64_t>(id)));
      if (p >= steps_per_epoch_ * global_batch_) continue;  // in that epoch's skipped tail
      if (e * steps_per_epoch_ + p / global_batch_ >= next_step) continue;
      out[i] = static_cast<int>((p % global_batch_) / per_replica_);
      break;
    }
  }
  return out;
}

}  // namespace geopipe::data
