// Checkpoint resharding across replica counts.
#include "src/runtime/reshard.h"

#include <algorithm>
#include <filesystem>
#include <iterator>
#include <memory>

#include "geopipe/error.h"

namespace geopipe::runtime {

std::string SavedLayout::file(int stage, int replica, const std::string& suffix) const {
  return (std::filesystem::path(step_dir) /
          ("tasklet-" + std::to_string(replica * stages + stage) + "." + suffix))
      .string();
}

int SavedLayout::stageWithLayers(int first, int last) const {
  for (int s = 0; s < static_cast<int>(layers_of_stage.size()); ++s) {
    if (layers_of_stage[static_cast<size_t>(s)] == std::make_pair(first, last)) return s;
  }
  return -1;
}

int SavedLayout::stageStartingAt(int layer) const {
  for (int s = 1; s < static_cast<int>(layers_of_stage.size()); ++s) {
    if (layers_of_stage[static_cast<size_t>(s)].first == layer) return s;
  }
  return -1;
}

int SavedLayout::stageEndingAt(int layer) const {
  for (int s = 0; s + 1 < static_cast<int>(layers_of_stage.size()); ++s) {
    if (layers_of_stage[static_cast<size_t>(s)].second == layer) return s;
  }
  return -1;
}

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
                       compression::ActivationBufferStore& into, const KeepSample& keep) {
  using Store = compression::ActivationBufferStore;
  // Pass 1, headers only: which ids each saved store holds, and their union.
  std::vector<std::vector<int64_t>> held;
  std::vector<int64_t> ids;
  for (const std::string& path : paths) {
    held.push_back(Store::savedIds(path));
    std::vector<int64_t> merged;
    merged.reserve(ids.size() + held.back().size());
    std::set_union(ids.begin(), ids.end(), held.back().begin(), held.back().end(),
                   std::back_inserter(merged));
    ids.swap(merged);
  }
  if (keep) {
    ids.erase(std::remove_if(ids.begin(), ids.end(), [&](int64_t id) { return !keep(id); }),
              ids.end());
  }
  const std::vector<int> owner = newest_owner(ids);
  GEOPIPE_CHECK(owner.size() == ids.size(), Error, "newest_owner answered ", owner.size(),
                " ids of ", ids.size());
  auto holds = [&](int r, int64_t id) {
    const auto& h = held[static_cast<size_t>(r)];
    return std::binary_search(h.begin(), h.end(), id);
  };
  std::vector<int> from(ids.size(), -1);  // the saved store each id is taken from
  for (size_t i = 0; i < ids.size(); ++i) {
    const int o = owner[i];
    if (o >= 0 && o < static_cast<int>(held.size()) && holds(o, ids[i])) {
      from[i] = o;
      continue;
    }
    for (int r = 0; r < static_cast<int>(held.size()) && from[i] < 0; ++r)
      if (holds(r, ids[i])) from[i] = r;
  }
  // Pass 2: each saved store streamed once, its chosen entries copied
  // straight into `into` (only `into` is ever held, so an mmap store's
  // budget, not RAM, bounds the merge).
  into.clear();
  try {
    for (size_t r = 0; r < paths.size(); ++r) {
      Store::readSaved(paths[r], into.budgetBytes(), [&](int64_t id, uint64_t size) -> uint8_t* {
        const auto it = std::lower_bound(ids.begin(), ids.end(), id);
        if (it == ids.end() || *it != id || from[static_cast<size_t>(it - ids.begin())] !=
                                                static_cast<int>(r)) {
          return nullptr;
        }
        return into.allocate(id, static_cast<size_t>(size));
      });
    }
  } catch (...) {
    into.clear();
    throw;
  }
}

}  // namespace geopipe::runtime
