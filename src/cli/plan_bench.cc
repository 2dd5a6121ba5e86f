// `geopipe plan` and `geopipe bench scheduler`: option parsing around the
// scheduler's plan and benchmark functions (no LibTorch: geopipe-lite has
// them too).
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

int runPlanCommand(const PlanArgs& args, std::ostream& out, const ModelPricing& price_model) {
  JobSpec job = config::loadJobFile(args.job, args.overrides);
  // A plugin's model is priced by the cost its ModelDef gives, as train
  // and launch price it.
  job.model.cost = price_model(job);
  PlanOverrides o;
  o.algorithm = args.algorithm;
  o.cost_model = args.cost_model;
  o.seed = args.seed;
  o.budget_seconds = args.budget_seconds;
  o.budget_evaluations = args.budget_evaluations;
  o.json = args.json;
  return runPlan(job, o, out);
}

void addSchedulerBenchOptions(CLI::App& bench, SchedulerBenchArgs& args) {
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
}

int runSchedulerBenchCommand(const SchedulerBenchArgs& args, std::ostream& out) {
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

}  // namespace geopipe::cli
