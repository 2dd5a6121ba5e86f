// `geopipe bench replan`: elastic re-planning on the DT-FM paper's 64-device
// scenarios (their first 16, 32, 64 devices) when a site is lost and when 8
// devices join: the re-plan's time and predicted step against the degraded
// plan and a from-scratch plan with six times the budget (predicted by the
// cost model, not measured).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "geopipe/error.h"
#include "scheduler/planner.h"
#include "scheduler/replan.h"
#include "scheduler/scenarios.h"
#include "src/cli/bench_common.h"
#include "src/cli/commands.h"

namespace geopipe::cli {

void addReplanBenchOptions(CLI::App& bench, ReplanBenchArgs& a) {
  auto* r = bench.add_subcommand(
      "replan",
      "Elastic re-planning on a DT-FM paper scenario (its first 16, 32, 64 devices): a site "
      "lost, 8 devices joining; re-plan time and predicted step vs the degraded plan and a "
      "from-scratch plan with a larger budget");
  r->add_option("--devices", a.devices, "topology sizes")->delimiter(',')->capture_default_str();
  r->add_option("--seconds", a.seconds, "re-plan budget (wall-clock, every shape)")
      ->capture_default_str();
  r->add_option("--scratch-factor", a.scratch_factor,
                "the from-scratch plan's budget, in re-plan budgets")
      ->capture_default_str();
  r->add_option("--scenario", a.scenario,
                "the DT-FM paper's 64-device scenario (1 dc-ondemand .. 5 world-wide)")
      ->capture_default_str()
      ->check(CLI::Range(1, scheduler::kNumPaperScenarios));
  r->add_option("--seed", a.seed, "search seed")->capture_default_str();
  r->add_flag("--quick", a.quick, "16 devices, a 1 s budget: a smoke test");
  r->add_flag("--measured", a.measured,
              "instead: train the degraded plan, the re-plan and a from-scratch plan of a small "
              "job (8 devices, a site lost) over emulated links and measure their steps");
}

namespace {

using Clock = std::chrono::steady_clock;

// The job: the paper's (GPT-3 XL's shape, global batch 512) priced by the
// geopipe model, every shape tried, on `topology`.
JobSpec benchJob(const TopologySpec& topology) {
  JobSpec job = scheduler::paperJob(1);
  job.name = "replan-" + topology.name;
  job.scheduler.cost_model = "geopipe";
  job.scheduler.grad_payload_gb.reset();
  job.scheduler.act_payload_gb.reset();
  job.parallelism.pipeline_stages = 1;
  job.parallelism.data_parallel = 0;  // auto: every shape
  job.topology = topology;
  return job;
}

scheduler::SearchOptions timeBudget(const JobSpec& job, double seconds, uint64_t seed) {
  scheduler::SearchOptions o = scheduler::searchOptionsFromJob(job);
  o.algorithm = "evolutionary";
  o.budget_seconds = seconds;
  o.budget_evaluations = 0;
  o.seed = seed;
  return o;
}

// The plan on `devices` (global indices) as the job would run it.
scheduler::CurrentPlan planOn(const JobSpec& job, const std::vector<int>& devices,
                              const ReplanBenchArgs& a) {
  JobSpec sub = job;
  sub.topology = scheduler::subTopology(job.topology, devices);
  const scheduler::PlanResult p =
      scheduler::plan(sub, timeBudget(sub, a.seconds, a.seed), /*with_baselines=*/false);
  return scheduler::globalPlan(p.ours.allocation, devices);
}

std::string shape(int p, int d) {
  return std::to_string(p) + "x" + std::to_string(d);
}

std::string step(double s) {
  return std::isfinite(s) ? formatNumber("%.3f", s) : "inf";
}

}  // namespace

int runReplanBench(const ReplanBenchArgs& args, std::ostream& out) {
  if (args.measured) return runReplanMeasured(args, out);
  ReplanBenchArgs a = args;
  if (a.quick) {
    a.devices = {16};
    a.seconds = std::min(a.seconds, 1.0);
  }
  GEOPIPE_CHECK(a.seconds > 0 && a.scratch_factor > 0, ConfigError,
                "bench replan needs --seconds > 0 and --scratch-factor > 0");
  out << "Elastic re-planning (GPT-3 XL shape, geopipe cost model, paper scenario "
      << scheduler::paperScenarioName(a.scenario)
      << " cut to its first sites of 8 devices; steps predicted by the cost model). Re-plan: "
      << a.seconds << " s budget, warm-started from the degraded plan; from scratch: "
      << a.seconds * a.scratch_factor << " s, no warm start.\n\n";
  out << "| devices | event | live | degraded | degraded step s | re-plan | re-plan step s "
         "| re-plan s | commit | from scratch | scratch step s | re-plan / scratch |\n"
      << "|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  bool ok = true;
  for (int n : a.devices) {
    GEOPIPE_CHECK(n >= 16 && n <= 64 && n % 8 == 0, ConfigError, "bench replan: --devices ", n,
                  " must be a multiple of 8 from 16 to 64");
    // The first n devices of the scenario: n / 8 of its 8-device sites.
    std::vector<int> all(static_cast<size_t>(n));
    std::iota(all.begin(), all.end(), 0);
    const JobSpec job = benchJob(scheduler::subTopology(scheduler::paperScenario(a.scenario), all));
    struct Event {
      std::string name;
      scheduler::CurrentPlan current;
      std::vector<int> live;
    };
    std::vector<Event> events;
    {
      // A site lost: the one rank 0 runs on, every device of it.
      Event e{"site lost", planOn(job, all, a), {}};
      const int site = job.topology.devices[static_cast<size_t>(e.current.device_of_rank[0])].site;
      for (int d : all)
        if (job.topology.devices[static_cast<size_t>(d)].site != site) e.live.push_back(d);
      events.push_back(std::move(e));
    }
    {
      // 8 devices join: the plan ran on all but the last site.
      const std::vector<int> first(all.begin(), all.end() - 8);
      events.push_back({"8 join", planOn(job, first, a), all});
    }
    for (const Event& e : events) {
      scheduler::ReplanOptions o;
      o.budget_seconds = a.seconds;
      o.seed = a.seed;
      const scheduler::ReplanResult r = scheduler::replan(job, e.live, e.current, o);
      JobSpec live_job = job;
      live_job.topology = scheduler::subTopology(job.topology, e.live);
      const scheduler::PlanResult scratch = scheduler::plan(
          live_job, timeBudget(live_job, a.seconds * a.scratch_factor, a.seed), false);
      const double scratch_s = scratch.ours.best.cost;
      const bool never_slower = r.predicted_s <= r.degraded_s;
      ok &= never_slower;
      out << "| " << n << " | " << e.name << " | " << e.live.size() << " | "
          << shape(e.current.stages, r.degraded_replicas) << " | " << step(r.degraded_s) << " | "
          << shape(r.stages, r.replicas) << " | " << step(r.predicted_s)
          << (never_slower ? "" : " (slower!)") << " | " << formatNumber("%.2f", r.seconds) << " | "
          << (r.commit ? "yes" : "no") << " | " << shape(scratch.d_pp, scratch.d_dp) << " | "
          << step(scratch_s) << " | " << formatNumber("%.3f", r.predicted_s / scratch_s) << " |\n";
      out.flush();
    }
  }
  out << "\n"
      << (ok ? "every re-plan is predicted no slower than its degraded plan"
             : "SOME RE-PLAN IS PREDICTED SLOWER THAN ITS DEGRADED PLAN")
      << "\n";
  return ok ? 0 : 1;
}

}  // namespace geopipe::cli
