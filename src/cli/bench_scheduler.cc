// Scheduler benchmark table: best cost, evaluations and seconds to reach it,
// and the ratios of the in-order and random placements to ours.
#include "src/cli/bench_scheduler.h"

#include <chrono>
#include <iomanip>
#include <sstream>
#include <string>

#include "scheduler/planner.h"
#include "scheduler/scenarios.h"

namespace geopipe::cli {

namespace {

std::string fmt(double v, int prec) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(prec) << v;
  return os.str();
}

}  // namespace

int runSchedulerBench(const SchedulerBenchOptions& options, std::ostream& out) {
  struct Row {
    std::string name;
    JobSpec job;
    double budget_s;
    int64_t budget_evals;
  };
  std::vector<Row> rows;
  if (options.scenarios.empty()) {
    for (int k = 1; k <= scheduler::kNumPaperScenarios; ++k)
      rows.push_back({scheduler::paperScenarioName(k), scheduler::paperJob(k),
                      options.scenario_budget_seconds,
                      options.scenario_budget_evaluations});
  } else {
    for (const JobSpec& j : options.scenarios)
      rows.push_back({j.name, j, options.scenario_budget_seconds,
                      options.scenario_budget_evaluations});
  }
  for (int n : options.synthetic_devices) {
    JobSpec j = scheduler::paperJob(5);
    j.name = "synthetic-" + std::to_string(n);
    j.topology = scheduler::syntheticWorldwide(n, options.seed + 6);
    j.parallelism.pipeline_stages = 8;
    j.parallelism.data_parallel = n / 8;
    j.training.global_batch = n;
    rows.push_back({j.name, j, options.synthetic_budget_seconds, 0});
  }

  out << "geopipe bench scheduler: algorithm evolutionary, seed " << options.seed
      << ", threads " << options.threads << "\n"
      << "cost = predicted step time (s) under the job's cost model; "
         "ratio = baseline / ours (higher is better for us)\n\n";
  out << std::left << std::setw(20) << "scenario" << std::right << std::setw(6)
      << "dev" << std::setw(9) << "model" << std::setw(10) << "ours_s"
      << std::setw(9) << "evals" << std::setw(11) << "best@eval"
      << std::setw(9) << "best@s" << std::setw(9) << "plan_s"
      << std::setw(11) << "inorder_s" << std::setw(10) << "random_s"
      << std::setw(9) << "in/ours" << std::setw(9) << "rnd/ours"
      << std::setw(10) << "rnd_evals" << std::setw(8) << "rnd_s"
      << std::setw(8) << "row_s" << "\n";
  int rc = 0;
  for (Row& row : rows) {
    JobSpec& job = row.job;
    job.scheduler.algorithm = "evolutionary";
    job.scheduler.seed = options.seed;
    job.scheduler.threads = options.threads;
    job.scheduler.budget_seconds = row.budget_s;
    job.scheduler.budget_evaluations = row.budget_evals;
    const auto t0 = std::chrono::steady_clock::now();
    const scheduler::PlanResult p =
        scheduler::plan(job, scheduler::searchOptionsFromJob(job), true);
    const double row_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double ours = p.ours.best.cost;
    const bool ok = ours <= p.in_order.best.cost * (1 + 1e-9) &&
                    ours <= p.random.best.cost * (1 + 1e-9);
    if (!ok) rc = 1;
    out << std::left << std::setw(20) << row.name << std::right << std::setw(6)
        << job.topology.numDevices() << std::setw(9) << p.cost_model
        << std::setw(10) << fmt(ours, 3) << std::setw(9) << p.evaluations
        << std::setw(11) << p.ours.evaluations_to_best << std::setw(9)
        << fmt(p.ours.seconds_to_best, 2) << std::setw(9)
        << fmt(p.search_seconds, 2) << std::setw(11)
        << fmt(p.in_order.best.cost, 3) << std::setw(10)
        << fmt(p.random.best.cost, 3) << std::setw(9)
        << fmt(p.in_order.best.cost / ours, 2) << std::setw(9)
        << fmt(p.random.best.cost / ours, 2) << std::setw(10)
        << p.random.evaluations << std::setw(8) << fmt(p.random.seconds, 2)
        << std::setw(8) << fmt(row_s, 2) << (ok ? "" : "  !worse") << "\n";
    out.flush();
  }
  out << "\nrandom = best of random partitions, stopped at as many evaluations "
         "as ours or the same wall-clock budget, whichever comes first (a "
         "random partition is a full evaluation, ours are mostly incremental); "
         "in-order = Megatron's rank = device index. plan_s = our search; "
         "row_s = search + baselines.\n";
  return rc;
}

}  // namespace geopipe::cli
