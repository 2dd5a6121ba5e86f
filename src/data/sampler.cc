// Deterministic sample order for every step, replica and micro-batch.
#include "src/data/sampler.h"

#include <unordered_map>

#include "geopipe/error.h"
#include "src/common/hash.h"

namespace geopipe::data {

Sampler::Sampler(int64_t num_samples, int global_batch, int data_parallel, int micro_batch,
                 uint64_t seed)
    : num_samples_(num_samples),
      global_batch_(global_batch),
      data_parallel_(data_parallel),
      micro_batch_(micro_batch),
      seed_(seed) {
  GEOPIPE_CHECK(data_parallel >= 1 && micro_batch >= 1 &&
                    global_batch % (data_parallel * micro_batch) == 0,
                ConfigError, "training.global_batch (", global_batch,
                ") must be a multiple of data_parallel x micro_batch (", data_parallel, " x ",
                micro_batch, ")");
  if (num_samples < global_batch) {
    GEOPIPE_THROW(ConfigError, "the data holds ", num_samples,
                  " samples, fewer than one global batch (training.global_batch = ", global_batch,
                  "): use more data or a smaller batch");
  }
  micro_batches_ = global_batch / (data_parallel * micro_batch);
  steps_per_epoch_ = num_samples / global_batch;
}

std::vector<int64_t> Sampler::epochOrder(int64_t epoch) const {
  // Fisher-Yates with our own generator, so the order is the same on every
  // platform and standard library.
  std::vector<int64_t> order(static_cast<size_t>(num_samples_));
  for (int64_t i = 0; i < num_samples_; ++i) order[static_cast<size_t>(i)] = i;
  uint64_t state = common::mix64(seed_ ^ common::mix64(static_cast<uint64_t>(epoch) + 0x51ED27ull));
  for (int64_t i = num_samples_ - 1; i > 0; --i) {
    state = common::mix64(state);
    int64_t j = static_cast<int64_t>(state % static_cast<uint64_t>(i + 1));
    std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(j)]);
  }
  return order;
}

std::vector<int64_t> Sampler::globalBatch(int64_t step) const {
  const int64_t epoch = step / steps_per_epoch_;
  const int64_t offset = (step % steps_per_epoch_) * global_batch_;
  std::vector<int64_t> order = epochOrder(epoch);
  return std::vector<int64_t>(order.begin() + offset, order.begin() + offset + global_batch_);
}

std::vector<int64_t> Sampler::microBatch(int64_t step, int replica, int m) const {
  GEOPIPE_CHECK(replica >= 0 && replica < data_parallel_ && m >= 0 && m < micro_batches_,
                ConfigError, "micro-batch ", m, " of replica ", replica, " out of range");
  std::vector<int64_t> batch = globalBatch(step);
  const int64_t per_replica = global_batch_ / data_parallel_;
  const int64_t start = replica * per_replica + static_cast<int64_t>(m) * micro_batch_;
  return std::vector<int64_t>(batch.begin() + start, batch.begin() + start + micro_batch_);
}

std::vector<int> Sampler::lastReplicaOf(const std::vector<int64_t>& ids,
                                       int64_t next_step) const {
  std::vector<int> out(ids.size(), -1);
  std::unordered_map<int64_t, std::vector<size_t>> wanted;  // id -> its positions in `ids`
  for (size_t i = 0; i < ids.size(); ++i) wanted[ids[i]].push_back(i);
  const int64_t per_replica = global_batch_ / data_parallel_;
  int64_t step = next_step - 1;
  while (step >= 0 && !wanted.empty()) {
    const int64_t epoch = step / steps_per_epoch_;
    const std::vector<int64_t> order = epochOrder(epoch);
    for (; step >= epoch * steps_per_epoch_ && !wanted.empty(); --step) {
      const int64_t offset = (step % steps_per_epoch_) * global_batch_;
      for (int64_t k = 0; k < global_batch_; ++k) {
        auto it = wanted.find(order[static_cast<size_t>(offset + k)]);
        if (it == wanted.end()) continue;
        for (size_t pos : it->second) out[pos] = static_cast<int>(k / per_replica);
        wanted.erase(it);
      }
    }
  }
  return out;
}

int64_t acsgdSamplesPerReplica(int64_t num_samples, int replicas) {
  GEOPIPE_CHECK(num_samples >= 0 && replicas >= 1, ConfigError, "acsgdSamplesPerReplica(",
                num_samples, ", ", replicas, "): expected samples >= 0 and replicas >= 1");
  return (num_samples + replicas - 1) / replicas;
}

}  // namespace geopipe::data
