// Checkpoint resharding across replica counts.
#include "src/runtime/reshard.h"

#include <algorithm>
#include <cstring>
#include <iterator>
#include <memory>

#include "geopipe/error.h"

namespace geopipe::runtime {

ReshardSources reshardSources(int replica, int replicas, int saved_replicas) {
  GEOPIPE_CHECK(replicas >= 1 && saved_replicas >= 1 && replica >= 0 && replica < replicas,
                ConfigError, "replica ", replica, " of ", replicas, " restored from ",
                saved_replicas, " saved replicas");
  ReshardSources s;
  s.model_replica = replica % saved_replicas;
  for (int r = replica; r < saved_replicas; r += replicas) s.residual_replicas.push_back(r);
  s.residual_scale = static_cast<float>(replicas) / static_cast<float>(saved_replicas);
  return s;
}

void mergeBufferStores(const std::vector<std::string>& paths, const NewestOwner& newest_owner,
                       compression::ActivationBufferStore& into) {
  compression::BufferStoreOptions temp;
  temp.budget_bytes = into.budgetBytes();
  std::vector<std::unique_ptr<compression::ActivationBufferStore>> saved;
  std::vector<int64_t> ids;  // every id of any saved store, ascending, once
  for (const std::string& path : paths) {
    saved.push_back(compression::makeBufferStore(temp));
    saved.back()->load(path);
    const std::vector<int64_t> mine = saved.back()->ids();
    std::vector<int64_t> merged;
    merged.reserve(ids.size() + mine.size());
    std::set_union(ids.begin(), ids.end(), mine.begin(), mine.end(), std::back_inserter(merged));
    ids.swap(merged);
  }
  const std::vector<int> owner = newest_owner(ids);
  GEOPIPE_CHECK(owner.size() == ids.size(), Error, "newest_owner answered ", owner.size(),
                " ids of ", ids.size());
  into.clear();
  for (size_t i = 0; i < ids.size(); ++i) {
    compression::ActivationBufferStore::Entry e;
    const int o = owner[i];
    if (o >= 0 && o < static_cast<int>(saved.size())) e = saved[static_cast<size_t>(o)]->find(ids[i]);
    for (size_t r = 0; !e.data && r < saved.size(); ++r) e = saved[r]->find(ids[i]);
    uint8_t* dst = into.allocate(ids[i], e.size);
    std::memcpy(dst, e.data, e.size);
  }
}

}  // namespace geopipe::runtime
