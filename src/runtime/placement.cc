// Tasklet placement and link emulation for the runtime.
#include "src/runtime/placement.h"

#include <spdlog/spdlog.h>

#include <set>

#include "geopipe/error.h"
#include "scheduler/planner.h"
#include "src/common/strings.h"
#include "src/config/buffer_check.h"
#include "src/transport/link_emulator.h"

namespace geopipe::runtime {

std::vector<int> evenSplit(int layers, int stages) {
  std::vector<int> out(static_cast<size_t>(stages), layers / stages);
  for (int s = 0; s < layers % stages; ++s) ++out[static_cast<size_t>(s)];
  return out;
}

std::vector<std::pair<int, int>> stageLayerRanges(const ModelDef& model,
                                                  const std::vector<int>& body_per_stage) {
  int total = 0;
  for (size_t s = 0; s < body_per_stage.size(); ++s) {
    GEOPIPE_CHECK(body_per_stage[s] >= 1, ConfigError, "stage ", s, " would hold no layer");
    total += body_per_stage[s];
  }
  GEOPIPE_CHECK_EQ(total, model.bodyLayers(), ConfigError,
                   "layers per stage must add up to the model's layers");
  return scheduler::modelLayerRanges(body_per_stage, model.prologue_layers, model.epilogue_layers);
}

std::string resolveAutoDataParallel(JobSpec& job) {
  if (!job.parallelism.dataParallelAuto()) return "";
  const JobSpec priced = scheduler::effectiveNetworkJob(job);
  const auto plan = scheduler::plan(priced, scheduler::searchOptionsFromJob(priced), false,
                                    config::plannerStores(priced));
  job.parallelism.pipeline_stages = plan.d_pp;
  job.parallelism.data_parallel = plan.d_dp;
  return detail::concat("data_parallel: auto -> the scheduler chose ", plan.d_pp, " stages x ",
                        plan.d_dp, " replicas");
}

Placement choosePlacement(const ModelDef& model, const JobSpec& job,
                          const std::vector<int>& devices, const std::vector<int>& body_per_stage) {
  const int stages = job.parallelism.pipeline_stages;
  const int replicas = job.parallelism.data_parallel;
  const int world = stages * replicas;
  const int n_devices = job.topology.numDevices();
  Placement p;
  std::vector<int> body = body_per_stage;
  if (!devices.empty()) {
    GEOPIPE_CHECK_EQ(static_cast<int>(devices.size()), world, ConfigError,
                     "device_of_rank needs one device per tasklet");
    std::set<int> seen;
    for (int d : devices) {
      GEOPIPE_CHECK(d >= 0 && (n_devices == 0 || d < n_devices) && seen.insert(d).second,
                    ConfigError, "device_of_rank: device ", d,
                    " is out of range or used twice");
    }
    p.device_of_rank = devices;
    p.source = "caller";
  } else if (n_devices >= world && job.model.layers == model.bodyLayers()) {
    JobSpec priced = scheduler::effectiveNetworkJob(job);
    // A model that gives its own cost is priced by it, not as a GPT.
    if (priced.model.cost.empty()) priced.model.cost = modelCost(model);
    scheduler::PlanResult plan =
        scheduler::plan(priced, scheduler::searchOptionsFromJob(priced), /*with_baselines=*/false,
                        config::plannerStores(priced));
    const auto& alloc = plan.ours.allocation;
    if (alloc.d_pp == stages && alloc.d_dp == replicas) {
      p.device_of_rank.assign(static_cast<size_t>(world), 0);
      for (int s = 0; s < stages; ++s)
        for (int r = 0; r < replicas; ++r)
          p.device_of_rank[static_cast<size_t>(r * stages + s)] = alloc.stages[s][r];
      if (body.empty()) {
        for (const auto& [first, last] : alloc.layers) body.push_back(last - first);
      }
      p.source = "scheduler";
    }
  }
  if (p.device_of_rank.empty()) {
    GEOPIPE_CHECK(n_devices == 0 || n_devices >= world, InfeasibleError, world,
                  " tasklets need as many devices, topology '", job.topology.name, "' has ",
                  n_devices);
    for (int rank = 0; rank < world; ++rank) p.device_of_rank.push_back(rank);
    p.source = "in-order";
  }
  if (body.empty()) body = evenSplit(model.bodyLayers(), stages);
  GEOPIPE_CHECK_EQ(static_cast<int>(body.size()), stages, ConfigError,
                   "layers_per_stage needs one entry per stage");
  p.layers_of_stage = stageLayerRanges(model, body);
  spdlog::debug("placement ({}): {} tasklets", p.source, world);
  return p;
}

std::shared_ptr<transport::Transport> emulateLinks(std::shared_ptr<transport::Transport> inner,
                                                   const JobSpec& job, const Placement& placement) {
  transport::LinkEmulatorOptions opt;
  opt.bandwidth_scale = job.transport.bandwidth_scale;
  opt.latency_scale = job.transport.latency_scale;
  return std::make_shared<transport::LinkEmulatingTransport>(
      std::move(inner), transport::linksFromTopology(job.topology, placement.device_of_rank), opt);
}

}  // namespace geopipe::runtime
