// CheckpointCollector: per-checkpoint reports until the generation is complete.
#include "src/distributed/checkpoint_collector.h"

namespace geopipe::distributed {

void CheckpointCollector::startGeneration(int stages, int replicas,
                                          std::vector<std::pair<int, int>> layers_of_stage) {
  stages_ = stages;
  replicas_ = replicas;
  layers_of_stage_ = std::move(layers_of_stage);
}

std::optional<runtime::CheckpointManifest> CheckpointCollector::add(
    int64_t next_step, int rank, const std::vector<std::string>& files) {
  Pending& pending = pending_[next_step];
  if (!pending.ranks.insert(rank).second) return std::nullopt;
  pending.files.insert(pending.files.end(), files.begin(), files.end());
  if (static_cast<int>(pending.ranks.size()) != stages_ * replicas_) return std::nullopt;
  runtime::CheckpointManifest manifest;
  manifest.job = job_.name;
  manifest.next_step = next_step;
  manifest.stages = stages_;
  manifest.replicas = replicas_;
  manifest.model_json = runtime::checkpointModelJson(job_.model, job_.data.tokenizer);
  manifest.layers_of_stage = layers_of_stage_;
  for (const auto& f : pending.files) manifest.files.push_back({f, 0, 0});
  pending_.erase(next_step);
  return manifest;
}

}  // namespace geopipe::distributed
