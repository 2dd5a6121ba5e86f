// `geopipe train JOB.yaml`: train in this process (tasklets as threads over
// the in-process transport, links emulated per the topology), with a
// progress line per step, JSON-lines metrics and a final summary.
#include <spdlog/spdlog.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <nlohmann/json.hpp>

#include "geopipe/error.h"
#include "geopipe/trainer.h"
#include "scheduler/planner.h"
#include "src/cli/commands.h"
#include "src/cli/option_checks.h"
#include "src/cli/progress_display.h"
#include "src/common/logging.h"
#include "src/config/buffer_check.h"
#include "src/config/job_overrides.h"
#include "src/config/job_parser.h"
#include "src/config/summary.h"
#include "src/runtime/placement.h"

#include <sstream>

namespace geopipe::cli {
namespace {

std::atomic<bool> g_interrupted{false};

// The first SIGINT or SIGTERM asks for a stop (with a checkpoint); the
// handler then steps aside, so a second one ends the process at once.
void onSignal(int signal) {
  g_interrupted = true;
  std::signal(signal, SIG_DFL);
}

}  // namespace

void addTrainOptions(CLI::App& train, TrainArgs& args) {
  train.add_option("JOB", args.job, "job YAML file")->required();
  train.add_option("--steps", args.steps, "override training.steps")->check(integerAtLeast(1));
  train.add_option("--metrics", args.metrics_file, "write JSON lines here (overrides logging.metrics_file)");
  train.add_option("--plot", args.plot_file,
                   "write the loss and the step-time breakdown as SVG here");
  addCheckpointStartOptions(train, args.resume, args.overwrite);
  addSetOption(train, args.overrides);
  addPluginOption(train, args.overrides);
}

ModelCost pluginModelCost(const JobSpec& job) {
  if (job.model.plugin.empty()) return {};
  return modelCost(makeModel(job.model));
}

int runTrainCommand(const TrainArgs& args, std::ostream& out) {
  JobSpec job = config::loadJobFile(args.job, args.overrides);
  common::applyJobLogLevel(job.logging.level);
  if (args.steps) job.training.steps = *args.steps;
  if (!args.metrics_file.empty()) job.logging.metrics_file = args.metrics_file;
  // Built (a plugin loaded) before any planning: a model that gives its own
  // cost is priced by it.
  ModelDef model = makeModel(job.model);
  job.model.cost = modelCost(model);
  // data_parallel: auto: the scheduler picks the shape, then train that shape.
  if (const std::string chosen = runtime::resolveAutoDataParallel(job); !chosen.empty())
    out << chosen << "\n";
  if (!args.resume) claimCheckpointDir(out, job, args.overwrite);
  // Place the tasklets with the scheduler here (rather than inside the
  // Trainer) so the summary can say what the placement gains over Megatron's
  // in-order one on the links this run has.
  TrainerOptions opt;
  std::string placement_note;
  const int world = job.parallelism.pipeline_stages * job.parallelism.data_parallel;
  if (job.topology.numDevices() >= world && job.model.layers == model.bodyLayers()) {
    const JobSpec priced = scheduler::effectiveNetworkJob(job);
    auto plan = scheduler::plan(priced, scheduler::searchOptionsFromJob(priced), true,
                                config::plannerStores(priced));
    if (plan.d_pp == job.parallelism.pipeline_stages && plan.d_dp == job.parallelism.data_parallel) {
      const auto& a = plan.ours.allocation;
      opt.device_of_rank.assign(static_cast<size_t>(world), 0);
      for (int s = 0; s < a.d_pp; ++s)
        for (int r = 0; r < a.d_dp; ++r) opt.device_of_rank[r * a.d_pp + s] = a.stages[s][r];
      for (const auto& [first, last] : a.layers) opt.layers_per_stage.push_back(last - first);
      std::ostringstream note;
      note << std::fixed << std::setprecision(3) << "scheduler (" << plan.cost_model
           << " cost model): predicted step " << plan.ours.best.cost << " s with this placement, "
           << plan.in_order.best.cost << " s in-order (" << std::setprecision(2)
           << (plan.ours.best.cost > 0 ? plan.in_order.best.cost / plan.ours.best.cost : 1.0)
           << "x gain), " << plan.random.best.cost << " s best random";
      placement_note = note.str();
    }
  }
  // The same progress line, JSON-lines metrics and summary as `launch`;
  // a resumed run appends to the metrics of the run it continues.
  ProgressDisplay progress(job, out, args.resume);
  const int steps = job.training.steps;
  if (const std::string note = config::assumedTopologyNote(job.topology); !note.empty()) {
    out << "topology: " << note << "\n";
  }
  out << "training '" << job.name << "': " << job.parallelism.pipeline_stages << " stages x "
      << job.parallelism.data_parallel << " replicas, " << steps << " steps, activations "
      << job.compression.activations.method << ", topology '" << job.topology.name << "'"
      << (job.transport.emulate_links ? " (links emulated, bandwidth x" +
                                            std::to_string(job.transport.bandwidth_scale) + ")"
                                      : "")
      << "\n";
  g_interrupted = false;
  auto previous = std::signal(SIGINT, onSignal);
  auto previous_term = std::signal(SIGTERM, onSignal);
  opt.should_stop = [] { return g_interrupted.load(); };
  opt.checkpoint_at_stop = true;  // as `launch` does: --resume continues from the stop
  opt.resume = args.resume;
  opt.on_step = [&](const StepMetrics& m) { progress.onStep(m); };
  TrainResult r;
  try {
    r = Trainer(model, job, opt).train();
  } catch (...) {
    std::signal(SIGINT, previous);
    std::signal(SIGTERM, previous_term);
    throw;
  }
  std::signal(SIGINT, previous);
  std::signal(SIGTERM, previous_term);
  if (!placement_note.empty()) out << placement_note << "\n";
  if (!args.plot_file.empty()) progress.writePlot(args.plot_file);
  if (!opt.device_of_rank.empty()) r.placement_source = "scheduler";
  progress.summary(r, r.interrupted);
  return r.interrupted ? 130 : 0;
}

}  // namespace geopipe::cli
