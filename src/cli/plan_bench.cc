// `geopipe plan` and `geopipe bench`: option parsing around the scheduler's
// plan and benchmark functions.
#include "geopipe/model.h"
#include "src/cli/bench_scheduler.h"
#include "src/cli/commands.h"
#include "src/cli/option_checks.h"
#include "src/cli/plan_command.h"
#include "src/config/job_overrides.h"
#include "src/config/job_parser.h"

namespace geopipe::cli {

void addPlanOptions(CLI::App& plan, PlanArgs& args) {
  plan.add_option("JOB", args.job, "job YAML file")->required();
  plan.add_flag("--json", args.json, "print the plan as JSON (docs/scheduler.md)");
  plan.add_option("--algorithm", args.algorithm,
                  "evolutionary, in-order, random or exhaustive (overrides scheduler.algorithm)");
  plan.add_option("--cost-model", args.cost_model,
                  "geopipe or dtfm (overrides scheduler.cost_model)");
  plan.add_option("--seed", args.seed, "search seed (overrides scheduler.seed)");
  plan.add_option("--budget", args.budget_seconds,
                  "search time limit in seconds (overrides scheduler.budget.seconds)")
      ->check(finiteNumberIn(0.0, 86400.0));  // scheduler.budget.seconds' range
  plan.add_option("--evaluations", args.budget_evaluations,
                  "search evaluation limit (overrides scheduler.budget.evaluations)")
      ->check(integerAtLeast(0));
  addSetOption(plan, args.overrides);
  addPluginOption(plan, args.overrides);
}

ModelCost pluginModelCost(const JobSpec& job) {
  if (job.model.plugin.empty()) return {};
  return modelCost(makeModel(job.model));
}

int runPlanCommand(const PlanArgs& args, std::ostream& out) {
  JobSpec job = config::loadJobFile(args.job, args.overrides);
  // A plugin's model is priced by the cost its ModelDef gives, as train
  // and launch price it.
  job.model.cost = pluginModelCost(job);
  PlanOverrides o;
  o.algorithm = args.algorithm;
  o.cost_model = args.cost_model;
  o.seed = args.seed;
  o.budget_seconds = args.budget_seconds;
  o.budget_evaluations = args.budget_evaluations;
  o.json = args.json;
  return runPlan(job, o, out);
}

void addBenchSubcommands(CLI::App& bench, BenchArgs& args) {
  auto* sched = bench.add_subcommand(
      "scheduler",
      "The search on the DT-FM paper's five scenarios (cost model dtfm) and on synthetic "
      "256- and 1024-device world-wide topologies, against in-order and random placement");
  sched->add_option("--seconds", args.seconds, "search budget per paper scenario")
      ->capture_default_str()
      ->check(finiteNumberIn(0.0, 86400.0));
  sched
      ->add_option("--synthetic-seconds", args.synthetic_seconds,
                   "search budget per synthetic topology")
      ->capture_default_str()
      ->check(finiteNumberIn(0.0, 86400.0));
  sched->add_flag("--quick", args.quick,
                  "skip the 1024-device topology (with --hard: only 8 to 32 devices)");
  sched->add_flag("--hard", args.hard,
                  "hard instances (scheduler/hard_instances.h): ours vs seeds, random, the "
                  "DT-FM paper's GA, annealing, exhaustive and a lower bound");
  sched->add_option("--seed", args.seed, "search seed")->capture_default_str();
  sched->add_option("--threads", args.threads, "search threads")->capture_default_str();

  auto* pipe = bench.add_subcommand(
      "pipeline", "Tokens/s of the staged engine vs single-process training, same run");
  pipe->add_option("--job", args.pipeline.job, "job YAML (default: built-in tiny GPT)");
  pipe->add_option("--steps", args.pipeline.steps, "timed steps per run")->capture_default_str();
  pipe->add_option("--stages", args.pipeline.stages, "pipeline stages")->capture_default_str();
  pipe->add_option("--replicas", args.pipeline.replicas, "data-parallel replicas")
      ->capture_default_str();

  auto* e2e = bench.add_subcommand(
      "e2e", "Training over emulated links: compression x bandwidth, placement, predicted vs "
             "measured step time; writes a markdown table, JSON and SVG plots");
  e2e->add_flag("--quick", args.e2e.quick, "a smaller grid (about a third of the time)");
  e2e->add_option("--out", args.e2e.out_dir, "output directory")->capture_default_str();
  e2e->add_option("--quality-steps", args.e2e.quality_steps, "steps of each loss run")
      ->capture_default_str();
  e2e->add_option("--timed-steps", args.e2e.timed_steps, "timed steps per step-time run")
      ->capture_default_str();
  e2e->add_option("--mbps", args.e2e.mbps, "emulated WAN bandwidths (Mbps), comma-separated")
      ->capture_default_str()
      ->delimiter(',')
      ->check(finiteNumberIn(0.0, 1e6, /*lo_exclusive=*/true));
  e2e->add_option("--parts", args.e2e.parts, "compression, placement or both (comma-separated)")
      ->capture_default_str();
  e2e->add_option("--worldwide", args.e2e.worldwide_topology,
                  "topology whose links the placement runs use")
      ->capture_default_str();
}

int runBenchCommand(const CLI::App& bench, const BenchArgs& args, std::ostream& out) {
  if (bench.got_subcommand("scheduler")) {
    if (args.hard) {
      HardBenchOptions h;
      if (args.quick) h.sizes = {8, 12, 16, 32};
      h.seed = args.seed;
      return runHardSchedulerBench(h, out);
    }
    SchedulerBenchOptions o;
    o.scenario_budget_seconds = args.seconds;
    o.synthetic_budget_seconds = args.synthetic_seconds;
    if (args.quick) o.synthetic_devices = {256};
    o.seed = args.seed;
    o.threads = args.threads;
    return runSchedulerBench(o, out);
  }
  if (bench.got_subcommand("pipeline")) return runPipelineBench(args.pipeline, out);
  if (bench.got_subcommand("e2e")) return runE2eBench(args.e2e, out);
  return static_cast<int>(ExitCode::USAGE);
}

}  // namespace geopipe::cli
