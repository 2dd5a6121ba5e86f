// DiLoCo's outer loop: pseudo-gradient exchange and outer optimizer steps.
#include "src/runtime/outer_sync.h"

#include <utility>

#include "geopipe/error.h"

namespace geopipe::runtime {
namespace {

std::string key(const char* name, size_t i) {
  return std::string(name) + "." + std::to_string(i);
}

}  // namespace

bool outerSyncDue(const DataParallelSyncSpec& spec, int64_t step, int64_t steps) {
  return spec.diloco() && ((step + 1) % spec.inner_steps == 0 || step + 1 == steps);
}

OuterSync::OuterSync(transport::Transport& transport, std::vector<int> group,
                     const DataParallelSyncSpec& spec, uint64_t seed,
                     std::chrono::milliseconds timeout, std::vector<torch::Tensor> params)
    : spec_(spec), params_(std::move(params)) {
  sync_ =
      std::make_unique<GradientSync>(transport, std::move(group), spec.compression, seed, timeout);
  torch::NoGradGuard guard;
  for (const auto& p : params_) {
    anchor_.push_back(p.detach().clone().set_requires_grad(true));
    if (spec_.overlap) start_.push_back(p.detach().clone());
  }
  const OuterOptimizerSpec& o = spec_.outer_optimizer;
  outer_ = std::make_unique<torch::optim::SGD>(
      anchor_, torch::optim::SGDOptions(o.lr).momentum(o.momentum).nesterov(o.kind == "nesterov"));
}

OuterSync::~OuterSync() {
  // The exchange reads anchor_: it must end before they go. Its error, if
  // any, was or will be reported by the step that waits for it.
  if (running_.valid()) {
    try {
      running_.get();
    } catch (...) {
    }
  }
}

void OuterSync::exchange(int64_t step) {
  sync_->average(anchor_, step);
}

void OuterSync::settle() {
  if (running_.valid()) running_.get();  // rethrows the exchange's error
  // Nothing runs now: the sync's counters are this thread's to read.
  raw_bytes_ = sync_->rawBytes();
  wire_bytes_ = sync_->wireBytes();
}

void OuterSync::stepSharedWeights() {
  outer_->step();
  for (size_t i = 0; i < anchor_.size(); ++i) {
    params_[i].copy_(anchor_[i]);
    if (!start_.empty()) start_[i].copy_(anchor_[i]);
  }
}

bool OuterSync::afterStep(int64_t step, int64_t steps) {
  if (!outerSyncDue(spec_, step, steps)) return false;
  torch::NoGradGuard guard;
  if (!spec_.overlap) {
    for (size_t i = 0; i < anchor_.size(); ++i) {
      anchor_[i].mutable_grad() = anchor_[i].detach() - params_[i].detach();
    }
    exchange(step);
    settle();
    stepSharedWeights();
    return true;
  }
  // This round's progress, kept on top of the shared weights until its
  // average replaces it one round later.
  std::vector<torch::Tensor> progress;
  for (size_t i = 0; i < anchor_.size(); ++i) progress.push_back(start_[i] - params_[i].detach());
  settle();
  if (averaged_) outer_->step();
  for (size_t i = 0; i < anchor_.size(); ++i) {
    params_[i].copy_(anchor_[i] - progress[i]);
    start_[i].copy_(params_[i]);
    anchor_[i].mutable_grad() = progress[i];
  }
  averaged_ = true;
  running_ = std::async(std::launch::async, [this, step] { exchange(step); });
  if (step + 1 == steps) {
    // The run ends here: apply the last round's average now.
    settle();
    stepSharedWeights();
    averaged_ = false;
  }
  return true;
}

void OuterSync::save(const std::string& path, const std::string& sync_path) {
  settle();
  torch::serialize::OutputArchive archive, optim;
  for (size_t i = 0; i < anchor_.size(); ++i) {
    archive.write(key("anchor", i), anchor_[i].detach());
    if (spec_.overlap) archive.write(key("start", i), start_[i]);
    if (averaged_) archive.write(key("average", i), anchor_[i].grad());
  }
  archive.write("averaged", torch::tensor({averaged_ ? 1 : 0}, torch::kInt64));
  outer_->save(optim);
  archive.write("outer_optimizer", optim);
  try {
    archive.save_to(path);
  } catch (const c10::Error& e) {
    GEOPIPE_THROW(IoError, "cannot write checkpoint '", path, "': ", e.what_without_backtrace());
  }
  sync_->saveState(sync_path);
}

void OuterSync::loadArchive(const std::string& path) {
  torch::NoGradGuard guard;
  try {
    torch::serialize::InputArchive archive, optim;
    archive.load_from(path);
    torch::Tensor flag;
    archive.read("averaged", flag);
    const bool averaged = flag.item<int64_t>() != 0;
    if (averaged && !spec_.overlap) {
      GEOPIPE_THROW(ConfigError, "checkpoint '", path,
                    "' holds an outer step still to be applied (it was written with "
                    "parallelism.data_parallel_sync.overlap: true): resume with overlap: true");
    }
    for (size_t i = 0; i < anchor_.size(); ++i) {
      torch::Tensor t;
      archive.read(key("anchor", i), t);
      anchor_[i].copy_(t);
      if (spec_.overlap) {
        // Written without overlap: the round started at the shared weights.
        if (archive.try_read(key("start", i), t)) {
          start_[i].copy_(t);
        } else {
          start_[i].copy_(anchor_[i]);
        }
      }
      if (averaged) {
        archive.read(key("average", i), t);
        anchor_[i].mutable_grad() = t.to(anchor_[i].device()).clone();
      }
    }
    averaged_ = averaged;
    archive.read("outer_optimizer", optim);
    outer_->load(optim);
  } catch (const c10::Error& e) {
    GEOPIPE_THROW(IoError, "DiLoCo state '", path,
                  "' does not fit this tasklet: ", e.what_without_backtrace());
  }
}

void OuterSync::startFromWeights() {
  torch::NoGradGuard guard;
  for (size_t i = 0; i < anchor_.size(); ++i) {
    anchor_[i].copy_(params_[i]);
    if (spec_.overlap) start_[i].copy_(params_[i]);
  }
}

void OuterSync::load(const std::string& path, const std::string& sync_path) {
  loadArchive(path);
  sync_->loadState(sync_path);
}

void OuterSync::loadMerged(const std::string& path, const std::string& base_sync_path,
                           const std::vector<std::string>& residual_paths, float scale) {
  loadArchive(path);
  sync_->loadMergedState(base_sync_path, residual_paths, scale);
}

}  // namespace geopipe::runtime
