// Scheduler benchmark table: best cost, evaluations and seconds to reach it,
// and the ratios of the in-order and random placements to ours.
#include "src/cli/bench_scheduler.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iomanip>
#include <limits>
#include <map>
#include <memory>
#include <sstream>
#include <string>

#include "geopipe/error.h"
#include "scheduler/hard_instances.h"
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

int runHardSchedulerBench(const HardBenchOptions& options, std::ostream& out) {
  using scheduler::SearchOptions;
  using scheduler::SearchResult;
  const SearchOptions defaults;
  out << "geopipe bench scheduler --hard: seed " << options.seed
      << ", 1 thread; ours = evolutionary at the default budget (" << defaults.budget_evaluations
      << " evaluations, " << fmt(defaults.budget_seconds, 1) << " s, adaptive stop after "
      << defaults.stall_evaluations << " evaluations without gain); ours" << options.long_factor
      << "x = the same with " << options.long_factor
      << "x both budgets, seed+1, no adaptive stop; random, dtfm-ga, annealing = "
      << defaults.budget_evaluations << " evaluations (or " << fmt(options.baseline_cap_seconds, 0)
      << " s); exact = exhaustive\n"
      << "ratio = cost / best known (the best any method found; 1.000 = found it); "
         "lb = lower bound / best known (dtfm only)\n\n";
  const std::vector<std::string> methods = {"ours",      "seeds", "random",   "dtfm-ga",
                                            "annealing", "exact", "ours_long"};
  out << std::left << std::setw(18) << "instance" << std::right << std::setw(5) << "dev"
      << std::setw(7) << "shape" << std::setw(9) << "best_s" << std::setw(11) << "found_by"
      << std::setw(7) << "lb";
  for (const auto& m : methods)
    out << std::setw(m == "ours_long" ? 10 : 10)
        << (m == "ours_long" ? "ours" + std::to_string(options.long_factor) + "x" : m);
  out << std::setw(8) << "evals" << std::setw(10) << "best@eval" << std::setw(8) << "best@s"
      << std::setw(8) << "ours_s" << std::setw(20) << "stop" << std::setw(8) << "row_s"
      << "\n";
  int rc = 0;
  // Evaluations / seconds to the best / seconds of every method, printed
  // after the ratio table.
  std::ostringstream effort;
  effort << std::left << std::setw(18) << "instance" << std::right;
  for (const auto& m : methods)
    effort << std::setw(22)
           << (m == "ours_long" ? "ours" + std::to_string(options.long_factor) + "x" : m);
  effort << "\n";
  for (const scheduler::HardInstance& inst :
       scheduler::hardInstances(options.sizes, options.seed)) {
    const auto t0 = std::chrono::steady_clock::now();
    const JobSpec& job = inst.job;
    const int n = job.topology.numDevices();
    const int pp = job.parallelism.pipeline_stages, dp = job.parallelism.data_parallel;
    auto network = std::make_shared<const scheduler::Network>(job.topology);
    const auto model = scheduler::makeCostModel(job.scheduler.cost_model, network,
                                                scheduler::ModelProfile::fromJob(job), job, pp, dp);
    std::map<std::string, SearchResult> res;
    SearchOptions ours = defaults;
    ours.seed = options.seed;
    res["ours"] = scheduler::evolutionarySearch(*model, ours);
    res["seeds"] = scheduler::seedSearch(*model);
    SearchOptions base = defaults;
    base.seed = options.seed;
    base.budget_seconds = options.baseline_cap_seconds;
    base.stall_evaluations = 0;
    res["random"] = scheduler::randomSearch(*model, base);
    const bool full = n <= options.full_max_devices;
    if (full) {
      res["dtfm-ga"] = scheduler::dtfmGeneticSearch(*model, base);
      res["annealing"] = scheduler::annealingSearch(*model, base);
      try {
        SearchOptions ex = defaults;
        ex.budget_seconds = 0;
        res["exact"] = scheduler::exhaustiveSearch(*model, ex);
      } catch (const InfeasibleError&) {
        // Too many partitions, or an order that would not be exact.
      }
      if (!res.count("exact")) {
        SearchOptions lng = defaults;
        lng.seed = options.seed + 1;
        lng.budget_evaluations *= options.long_factor;
        lng.budget_seconds *= options.long_factor;
        lng.stall_evaluations = 0;
        res["ours_long"] = scheduler::evolutionarySearch(*model, lng);
      }
    }
    double best = std::numeric_limits<double>::infinity();
    std::string found_by;
    for (const auto& m : methods) {
      auto it = res.find(m);
      if (it != res.end() && it->second.best.cost < best * (1 - 1e-12)) {
        best = it->second.best.cost;
        found_by = m == "ours_long" ? "ours" + std::to_string(options.long_factor) + "x" : m;
      }
    }
    const double lb = scheduler::costLowerBound(*model);
    if (lb > best * (1 + 1e-9)) rc = 1;
    const SearchResult& o = res["ours"];
    if (o.best.cost > res["seeds"].best.cost * (1 + 1e-9)) rc = 1;
    const double row_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    out << std::left << std::setw(18) << inst.name << std::right << std::setw(5) << n
        << std::setw(7) << (std::to_string(pp) + "x" + std::to_string(dp)) << std::setw(9)
        << fmt(best, 2) << std::setw(11) << found_by << std::setw(7)
        << (lb > 0 ? fmt(lb / best, 2) : std::string("-"));
    for (const auto& m : methods) {
      auto it = res.find(m);
      out << std::setw(10)
          << (it == res.end() ? std::string("-") : fmt(it->second.best.cost / best, 3));
    }
    out << std::setw(8) << o.evaluations << std::setw(10) << o.evaluations_to_best << std::setw(8)
        << fmt(o.seconds_to_best, 2) << std::setw(8) << fmt(o.seconds, 2) << std::setw(20)
        << o.stop_reason << std::setw(8) << fmt(row_s, 1)
        << (lb > best * (1 + 1e-9) ? "  !bound" : "") << "\n";
    out.flush();
    effort << std::left << std::setw(18) << inst.name << std::right;
    for (const auto& m : methods) {
      auto it = res.find(m);
      effort << std::setw(22)
             << (it == res.end() ? std::string("-")
                                 : std::to_string(it->second.evaluations) + " " +
                                       fmt(it->second.seconds_to_best, 2) + "/" +
                                       fmt(it->second.seconds, 2) + "s");
    }
    effort << "\n";
  }
  out << "\nEffort per method: evaluations, seconds to its best / seconds in all\n" << effort.str();
  out << "\nBaseline evaluations: random is full evaluations only, dtfm-ga and annealing "
         "mostly incremental like ours. Above "
      << options.full_max_devices
      << " devices only ours, seeds and random run. exact = exhaustive "
         "search where it is exact and has at most 2e6 partitions; otherwise ours"
      << options.long_factor << "x is the reference.\n";
  return rc;
}

}  // namespace geopipe::cli
