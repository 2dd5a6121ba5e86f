// Text and JSON rendering of a scheduler plan (see docs/scheduler.md for the
// JSON schema).
#include "src/cli/plan_command.h"

#include <cstdio>
#include <iomanip>
#include <sstream>

#include <nlohmann/json.hpp>

#include "scheduler/planner.h"

namespace geopipe::cli {

namespace {

using scheduler::PlanResult;
using scheduler::SearchResult;

std::string fmt(double v, int prec = 3) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(prec) << v;
  return os.str();
}

nlohmann::json breakdownJson(const scheduler::Breakdown& b) {
  return {{"compute_s", b.compute_s},
          {"bubble_s", b.bubble_s},
          {"pipeline_comm_s", b.pipeline_comm_s},
          {"data_parallel_comm_s", b.dp_comm_s}};
}

nlohmann::json baselineJson(const SearchResult& r, double ours) {
  return {{"predicted_step_s", r.best.cost},
          {"ratio_to_ours", r.best.cost / ours},
          {"breakdown", breakdownJson(r.best.eval.breakdown)},
          {"evaluations", r.evaluations},
          {"search_seconds", r.seconds}};
}

void printJson(const JobSpec& job, const PlanResult& p, std::ostream& out) {
  const double ours = p.ours.best.cost;
  nlohmann::json j;
  j["job"] = job.name;
  j["topology"] = job.topology.name;
  j["cost_model"] = p.cost_model;
  j["algorithm"] = p.algorithm;
  j["pipeline_stages"] = p.d_pp;
  j["data_parallel"] = p.d_dp;
  j["predicted_step_s"] = ours;
  j["breakdown"] = breakdownJson(p.ours.best.eval.breakdown);
  nlohmann::json alloc = nlohmann::json::array();
  for (const auto& t : p.ours.allocation.tasklets(job.topology)) {
    alloc.push_back({{"stage", t.stage},
                     {"replica", t.replica},
                     {"device", t.device},
                     {"device_name", job.topology.devices[t.device].name},
                     {"site", job.topology.sites[t.site].name},
                     {"site_index", t.site},
                     {"layers", {t.first_layer, t.last_layer}}});
  }
  j["allocation"] = alloc;
  j["idle_devices"] = p.ours.allocation.idle;
  nlohmann::json base = nlohmann::json::object();
  if (p.has_baselines) {
    base["in-order"] = baselineJson(p.in_order, ours);
    base["random"] = baselineJson(p.random, ours);
  }
  j["baselines"] = base;
  j["search_seconds"] = p.search_seconds;
  j["evaluations"] = p.evaluations;
  j["evaluations_to_best"] = p.ours.evaluations_to_best;
  j["seconds_to_best"] = p.ours.seconds_to_best;
  out << j.dump(2) << "\n";
}

void printText(const JobSpec& job, const PlanResult& p, std::ostream& out) {
  const auto& b = p.ours.best.eval.breakdown;
  const double total = p.ours.best.cost;
  const int idle = static_cast<int>(p.ours.allocation.idle.size());
  out << "plan for job '" << job.name << "' on topology '" << job.topology.name
      << "' (" << job.topology.numDevices() << " devices, "
      << job.topology.numSites() << " sites)\n";
  out << "cost model " << p.cost_model << ", algorithm " << p.algorithm
      << ", shape " << p.d_pp << " stages x " << p.d_dp << " replicas";
  if (idle > 0) out << ", " << idle << " devices idle";
  out << "\n\npredicted step time: " << fmt(total) << " s\n";
  auto line = [&](const char* name, double v) {
    out << "  " << std::left << std::setw(22) << name << std::right
        << std::setw(10) << fmt(v) << " s  " << std::setw(5)
        << fmt(total > 0 ? 100 * v / total : 0, 1) << " %\n";
  };
  line("compute", b.compute_s);
  line("bubble", b.bubble_s);
  line("pipeline comm", b.pipeline_comm_s);
  line("data parallel comm", b.dp_comm_s);
  out << "search: " << p.evaluations << " evaluations in "
      << fmt(p.search_seconds, 2) << " s (best after "
      << p.ours.evaluations_to_best << " evaluations, "
      << fmt(p.ours.seconds_to_best, 2) << " s)\n\n";

  out << "allocation:\n  stage  replica  device  " << std::left
      << std::setw(24) << "name" << std::setw(16) << "site" << "layers\n"
      << std::right;
  for (const auto& t : p.ours.allocation.tasklets(job.topology)) {
    out << "  " << std::setw(5) << t.stage << "  " << std::setw(7) << t.replica
        << "  " << std::setw(6) << t.device << "  " << std::left
        << std::setw(24) << job.topology.devices[t.device].name << std::setw(16)
        << job.topology.sites[t.site].name << "[" << t.first_layer << ", "
        << t.last_layer << ")\n"
        << std::right;
  }
  if (idle > 0) {
    out << "  idle:";
    for (int d : p.ours.allocation.idle) out << " " << d;
    out << "\n";
  }
  if (p.has_baselines) {
    out << "\ncomparison (same shape, ratio = placement / ours):\n";
    out << "  " << std::left << std::setw(22) << "placement" << std::right
        << std::setw(12) << "step (s)" << std::setw(10) << "ratio"
        << std::setw(13) << "evaluations" << "\n";
    auto row = [&](const std::string& name, const SearchResult& r) {
      out << "  " << std::left << std::setw(22) << name << std::right
          << std::setw(12) << fmt(r.best.cost) << std::setw(9)
          << fmt(r.best.cost / total, 2) << "x" << std::setw(13)
          << r.evaluations << "\n";
    };
    row("ours (" + p.algorithm + ")", p.ours);
    row("in-order", p.in_order);
    row("random", p.random);
  }
}

}  // namespace

int runPlan(const JobSpec& job_in, const PlanOverrides& o, std::ostream& out) {
  JobSpec job = job_in;
  if (o.algorithm) job.scheduler.algorithm = *o.algorithm;
  if (o.cost_model) job.scheduler.cost_model = *o.cost_model;
  if (o.seed) job.scheduler.seed = *o.seed;
  if (o.budget_seconds) job.scheduler.budget_seconds = *o.budget_seconds;
  if (o.budget_evaluations)
    job.scheduler.budget_evaluations = *o.budget_evaluations;
  const PlanResult p =
      scheduler::plan(job, scheduler::searchOptionsFromJob(job), true);
  if (o.json) {
    printJson(job, p, out);
  } else {
    printText(job, p, out);
  }
  return 0;
}

}  // namespace geopipe::cli
