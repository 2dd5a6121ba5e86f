// Text and JSON rendering of a scheduler plan (see docs/scheduler.md for the
// JSON schema).
#include "src/cli/plan_command.h"

#include <cstdio>
#include <iomanip>
#include <memory>
#include <optional>
#include <sstream>

#include <nlohmann/json.hpp>

#include "geopipe/error.h"
#include "scheduler/cost_model.h"
#include "scheduler/planner.h"
#include "src/config/buffer_check.h"

namespace geopipe::cli {

namespace {

using config::AcsgdBufferMemory;
using scheduler::PlanResult;
using scheduler::SearchResult;

std::string fmt(double v, int prec = 3) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(prec) << v;
  return os.str();
}

// What the scheduler priced: "own_cost" (the cost a plugin's ModelDef
// gives, ModelSpec::cost), "gpt" for a custom model without one, else the
// built-in kind.
std::string pricedAs(const ModelSpec& m) {
  if (!m.cost.empty()) return "own_cost";
  return m.kind == "custom" ? "gpt" : m.kind;
}

// Why a custom model is priced as it is; "" for a built-in one.
std::string customModelNote(const ModelSpec& m) {
  if (m.kind != "custom") return "";
  if (!m.cost.empty()) {
    return "model '" + m.name + "' is priced by the cost its ModelDef gives (" +
           std::to_string(m.cost.body.size()) +
           " body layers, each its own FLOPs, parameters "
           "and activation bytes), as train and launch price it";
  }
  if (!m.plugin.empty()) {
    return "model '" + m.name +
           "' of model.plugin gives no cost (ModelDef::cost), so the model "
           "is priced as a GPT of its shape";
  }
  return "model.kind custom without model.plugin: a model your own program registers is not "
         "seen by plan, so the model is priced as a GPT of its shape; load it as a plugin "
         "(model.plugin or --plugin) to price it by its own cost";
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

// DiLoCo's line of the plan: the chosen placement's step with every-step
// sync (compression.gradients set to the pseudo-gradient's compression)
// beside the DiLoCo step, so the two are priced on the same devices.
struct DilocoPricing {
  int inner_steps = 0;
  bool overlap = false;
  double outer_exchange_s = 0;  // one round's exchange
  double every_step_s = 0;      // this placement with every-step sync
};

std::optional<DilocoPricing> dilocoPricing(const JobSpec& job, const PlanResult& p) {
  const DataParallelSyncSpec& sync = job.parallelism.data_parallel_sync;
  if (!sync.diloco()) return std::nullopt;
  JobSpec every = job;
  every.parallelism.data_parallel_sync = DataParallelSyncSpec{};
  every.compression.gradients = sync.compression;
  every.parallelism.data_parallel = p.d_dp;
  const auto model =
      scheduler::makeCostModel(p.cost_model, std::make_shared<scheduler::Network>(every.topology),
                               scheduler::ModelProfile::fromJob(every), every, p.d_pp, p.d_dp);
  DilocoPricing d;
  d.inner_steps = sync.inner_steps;
  d.overlap = sync.overlap;
  d.outer_exchange_s = p.ours.best.eval.outer_exchange_s;
  d.every_step_s = model->evaluateAllocation(p.ours.allocation).total_s;
  return d;
}

// Bytes each device of stage s needs in the plan's memory model (geopipe;
// -1 for dtfm, which prices no memory).
double stageMemory(const PlanResult& p, int s) {
  const auto& m = p.ours.best.eval.stage_memory_bytes;
  return s < static_cast<int>(m.size()) ? m[static_cast<size_t>(s)] : -1.0;
}

nlohmann::json buffersJson(const AcsgdBufferMemory& b, const PlanResult& p) {
  if (!b.counted) return {{"counted", false}, {"note", b.samples_note}};
  nlohmann::json stages = nlohmann::json::array();
  for (int s = 0; s < static_cast<int>(b.stores_per_stage.size()); ++s) {
    nlohmann::json st = {{"stage", s},
                         {"stores", b.stores_per_stage[static_cast<size_t>(s)]},
                         {"bytes", b.taskletBytes(s)}};
    if (stageMemory(p, s) >= 0) st["device_memory_bytes"] = stageMemory(p, s);
    stages.push_back(st);
  }
  return {{"counted", true},
          {"exact", b.exact},
          {"samples", b.samples},
          {"replicas", b.replicas},
          {"samples_per_replica", b.samples_per_replica},
          {"bounded_by_steps", b.bounded_by_steps},
          {"seq_len", b.seq_len},
          {"hidden", b.hidden},
          {"format", b.format},
          {"bytes_per_element", b.bytes_per_element},
          {"entry_bytes", b.entry_bytes},
          {"store_bytes", b.store_bytes},
          {"budget_bytes", b.budget_bytes},
          {"store", b.in_memory ? "memory" : "mmap"},
          {"stages", stages}};
}

void printJson(const JobSpec& job, const PlanResult& p, const AcsgdBufferMemory& buffers,
               std::ostream& out) {
  const double ours = p.ours.best.cost;
  nlohmann::json j;
  j["job"] = job.name;
  j["topology"] = job.topology.name;
  j["cost_model"] = p.cost_model;
  j["algorithm"] = p.algorithm;
  j["pipeline_stages"] = p.d_pp;
  j["data_parallel"] = p.d_dp;
  j["predicted_step_s"] = ours;
  j["model_priced_as"] = pricedAs(job.model);
  if (const std::string note = customModelNote(job.model); !note.empty()) j["model_note"] = note;
  j["breakdown"] = breakdownJson(p.ours.best.eval.breakdown);
  if (const auto d = dilocoPricing(job, p)) {
    j["diloco"] = {{"inner_steps", d->inner_steps},
                   {"overlap", d->overlap},
                   {"outer_exchange_s", d->outer_exchange_s},
                   {"every_step_sync_step_s", d->every_step_s}};
  }
  nlohmann::json alloc = nlohmann::json::array();
  for (const auto& t : p.ours.allocation.tasklets(job.topology)) {
    alloc.push_back({{"stage", t.stage},
                     {"replica", t.replica},
                     {"device", t.device},
                     {"device_name", job.topology.devices[t.device].name},
                     {"site", job.topology.sites[t.site].name},
                     {"site_index", t.site},
                     {"layers", {t.first_layer, t.last_layer}}});
    if (buffers.enabled && buffers.counted) {
      alloc.back()["acsgd_buffer_bytes"] = buffers.taskletBytes(t.stage);
    }
  }
  j["allocation"] = alloc;
  if (buffers.enabled) j["acsgd_buffers"] = buffersJson(buffers, p);
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
  j["budget_seconds"] = job.scheduler.budget_seconds;
  j["budget_evaluations"] = job.scheduler.budget_evaluations;
  j["stop_reason"] = p.ours.stop_reason;
  out << j.dump(2) << "\n";
}

void printBuffers(const JobSpec& job, const PlanResult& p, const AcsgdBufferMemory& b,
                  std::ostream& out) {
  out << "\nAC-SGD buffers (compression.activations, buffer_store "
      << (b.in_memory ? "memory" : "mmap") << "):\n";
  if (!b.counted) {
    out << "  not counted before the data loads: " << b.samples_note
        << "; the run checks the budget once it has\n";
    return;
  }
  out << "  " << config::describeStore(b) << "\n  per tasklet: " << config::describeTasklets(b)
      << "; budget " << config::formatBytes(double(b.budget_bytes)) << " per store\n";
  const bool priced = stageMemory(p, 0) >= 0;
  out << "  stage  stores  buffers     " << (priced ? "device memory needed  smallest device" : "")
      << "\n";
  for (int s = 0; s < static_cast<int>(b.stores_per_stage.size()); ++s) {
    out << "  " << std::setw(5) << s << "  " << std::setw(6)
        << b.stores_per_stage[static_cast<size_t>(s)] << "  " << std::left << std::setw(10)
        << config::formatBytes(double(b.taskletBytes(s))) << std::right;
    if (priced) {
      double smallest = -1;
      for (int device : p.ours.allocation.stages[static_cast<size_t>(s)]) {
        const double gb = job.topology.devices[static_cast<size_t>(device)].memory_gb;
        smallest = smallest < 0 ? gb : std::min(smallest, gb);
      }
      out << "  " << std::left << std::setw(20) << config::formatBytes(stageMemory(p, s)) << "  "
          << fmt(smallest, 1) << " GiB" << std::right;
    }
    out << "\n";
  }
}

void printText(const JobSpec& job, const PlanResult& p, const AcsgdBufferMemory& buffers,
               std::ostream& out) {
  const auto& b = p.ours.best.eval.breakdown;
  const double total = p.ours.best.cost;
  const int idle = static_cast<int>(p.ours.allocation.idle.size());
  out << "plan for job '" << job.name << "' on topology '" << job.topology.name
      << "' (" << job.topology.numDevices() << " devices, "
      << job.topology.numSites() << " sites)\n";
  out << "cost model " << p.cost_model << ", algorithm " << p.algorithm
      << ", shape " << p.d_pp << " stages x " << p.d_dp << " replicas";
  if (idle > 0) out << ", " << idle << " devices idle";
  if (const std::string note = customModelNote(job.model); !note.empty()) {
    out << "\nnote: " << note;
  }
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
  if (const auto d = dilocoPricing(job, p)) {
    out << "  DiLoCo: one outer exchange of " << fmt(d->outer_exchange_s) << " s every "
        << d->inner_steps << " steps, "
        << (d->overlap ? "behind the next round's steps" : "after the round's last step")
        << "\n  every-step sync on this placement: " << fmt(d->every_step_s) << " s per step ("
        << fmt(total > 0 ? d->every_step_s / total : 0, 2) << "x)\n";
  }
  auto limit = [](auto v, const std::string& unit) {
    return v > 0 ? fmt(double(v), unit == "s" ? 1 : 0) + " " + unit : "no " + unit + " limit";
  };
  out << "search: " << p.evaluations << " evaluations in " << fmt(p.search_seconds, 2)
      << " s of a budget of " << limit(job.scheduler.budget_seconds, "s") << " / "
      << limit(job.scheduler.budget_evaluations, "evaluations") << "; best after "
      << p.ours.evaluations_to_best << " evaluations, " << fmt(p.ours.seconds_to_best, 2)
      << " s; stopped: " << p.ours.stop_reason << "\n\n";

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
  if (buffers.enabled) printBuffers(job, p, buffers, out);
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
  // The links the run will have (transport.bandwidth_scale, latency_scale
  // when emulated): the same job `train` and the runtime's placement price.
  JobSpec job = scheduler::effectiveNetworkJob(job_in);
  if (o.algorithm) job.scheduler.algorithm = *o.algorithm;
  if (o.cost_model) job.scheduler.cost_model = *o.cost_model;
  if (o.seed) job.scheduler.seed = *o.seed;
  if (o.budget_seconds) job.scheduler.budget_seconds = *o.budget_seconds;
  if (o.budget_evaluations)
    job.scheduler.budget_evaluations = *o.budget_evaluations;
  // AC-SGD's stores: sized from the data, charged by the planner shape by
  // shape; refused here with their numbers and the fixes.
  const auto stores = config::plannerStores(job);
  PlanResult p;
  try {
    p = scheduler::plan(job, scheduler::searchOptionsFromJob(job), true, stores);
  } catch (const InfeasibleError& e) {
    const AcsgdBufferMemory b = config::acsgdBufferMemory(
        job, job.parallelism.dataParallelAuto() ? 1 : job.parallelism.data_parallel);
    if (!b.enabled || !b.counted || !stores) throw;
    GEOPIPE_THROW(InfeasibleError, e.what(), "\nAC-SGD buffers",
                  job.parallelism.dataParallelAuto() ? " with 1 replica" : "", ": ",
                  config::describeStore(b), " (", config::describeTasklets(b), "). ",
                  b.in_memory ? config::memoryFixes(b, b.stores_per_stage.size() > 2 ? 1 : 0, 0, 0)
                              : std::string());
  }
  const AcsgdBufferMemory buffers = config::acsgdBufferMemory(job, p.d_dp);
  // The planner skips shapes over the budget and the geopipe model charges
  // in-memory stores; dtfm prices no memory, so check its shape here.
  const std::string budget = config::budgetProblem(buffers);
  if (!budget.empty()) GEOPIPE_THROW(InfeasibleError, budget);
  if (p.cost_model != "geopipe") {
    const std::string memory = config::deviceMemoryProblem(buffers, job.topology);
    if (!memory.empty()) GEOPIPE_THROW(InfeasibleError, memory);
  }
  if (o.json) {
    printJson(job, p, buffers, out);
  } else {
    printText(job, p, buffers, out);
  }
  return 0;
}

}  // namespace geopipe::cli
