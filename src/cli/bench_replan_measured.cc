// `geopipe bench replan --measured`: the plans of a re-plan run, not only
// priced. The job and topology of the end-to-end test (a) (4 x 2 of a tiny
// GPT on 8 devices in 4 sites, one site lost): the degraded plan (the
// replicas that kept every device), the re-plan and a from-scratch plan on
// the survivors, each trained by the in-process Trainer over emulated links
// for the same steps; measured step time beside the predicted one.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "geopipe/error.h"
#include "geopipe/trainer.h"
#include "scheduler/planner.h"
#include "scheduler/replan.h"
#include "src/cli/bench_common.h"
#include "src/cli/commands.h"
#include "src/config/job_parser.h"
#include "src/runtime/checkpoint.h"
#include "src/runtime/placement.h"

namespace geopipe::cli {
namespace {

// Sites a, b, c, d of 2 devices; devices about as fast as one core here;
// a-b and c-d slow.
JobSpec measuredJob(int steps) {
  JobSpec job = config::parseJobString(R"(
name: replan-measured
model: {preset: none, layers: 4, hidden: 32, heads: 2, seq_len: 16, vocab: 16}
data: {kind: synthetic, num_samples: 256}
training: {steps: 1, global_batch: 8, micro_batch: 2, optimizer: {kind: adamw, lr: 1.0e-2}, seed: 7}
parallelism: {pipeline_stages: 4, data_parallel: 2}
transport: {emulate_links: true}
topology:
  name: four-sites
  sites:
    - {name: a, devices: 2, tflops: 0.002, intra: {latency_ms: 0, bandwidth_gbps: 10}}
    - {name: b, devices: 2, tflops: 0.002, intra: {latency_ms: 0, bandwidth_gbps: 10}}
    - {name: c, devices: 2, tflops: 0.002, intra: {latency_ms: 0, bandwidth_gbps: 10}}
    - {name: d, devices: 2, tflops: 0.002, intra: {latency_ms: 0, bandwidth_gbps: 10}}
  inter_site_default: {latency_ms: 1, bandwidth_gbps: 1}
  links:
    - {sites: [a, b], latency_ms: 5, bandwidth_gbps: 0.5}
    - {sites: [c, d], latency_ms: 20, bandwidth_gbps: 0.1}
)",
                                       "replan-measured.yaml", "");
  job.training.steps = steps;
  return job;
}

struct Row {
  std::string name;
  scheduler::CurrentPlan plan;
  double predicted_s = 0;
  double measured_s = 0;
};

// Mean step time of `plan` trained for the job's steps, the first two left
// out (warm-up).
double measure(const ModelDef& model, JobSpec job, const scheduler::CurrentPlan& plan) {
  job.parallelism.pipeline_stages = plan.stages;
  job.parallelism.data_parallel = plan.replicas;
  TrainerOptions o;
  o.threads_per_tasklet = 1;
  o.device_of_rank = plan.device_of_rank;
  o.layers_per_stage = plan.body_per_stage;
  std::vector<double> seconds;
  o.on_step = [&](const StepMetrics& m) { seconds.push_back(m.seconds); };
  Trainer(model, job, o).train();
  GEOPIPE_CHECK(seconds.size() > 2, Error, "bench replan --measured: too few steps");
  double sum = 0;
  for (size_t i = 2; i < seconds.size(); ++i) sum += seconds[i];
  return sum / static_cast<double>(seconds.size() - 2);
}

std::string devicesOf(const scheduler::CurrentPlan& p) {
  std::vector<int> d = p.device_of_rank;
  std::sort(d.begin(), d.end());
  std::string out;
  for (int x : d) out += (out.empty() ? "" : ",") + std::to_string(x);
  return out;
}

}  // namespace

int runReplanMeasured(const ReplanBenchArgs& a, std::ostream& out) {
  const JobSpec job = measuredJob(a.quick ? 6 : 300);
  const ModelDef model = makeModel(job.model);
  const JobSpec priced = scheduler::effectiveNetworkJob(job);
  const runtime::Placement running = runtime::choosePlacement(model, job, {}, {});
  scheduler::CurrentPlan current;
  current.stages = 4;
  current.replicas = 2;
  current.device_of_rank = running.device_of_rank;
  current.body_per_stage =
      runtime::bodySplit(running.layers_of_stage, model.prologue_layers, model.epilogue_layers);
  // Site of rank 0 lost.
  const int lost_site = job.topology.devices[static_cast<size_t>(current.device_of_rank[0])].site;
  std::vector<int> live;
  for (int d = 0; d < job.topology.numDevices(); ++d)
    if (job.topology.devices[static_cast<size_t>(d)].site != lost_site) live.push_back(d);
  scheduler::ReplanOptions ro;
  ro.budget_seconds = a.seconds;
  ro.seed = a.seed;
  const scheduler::ReplanResult rr = scheduler::replan(priced, live, current, ro);

  std::vector<Row> rows;
  if (std::isfinite(rr.degraded_s)) {
    // The replicas that kept every device, as the runtime's shrink runs them.
    scheduler::CurrentPlan degraded = current;
    degraded.replicas = rr.degraded_replicas;
    degraded.device_of_rank = rr.degraded_device_of_rank;
    rows.push_back({"degraded (no re-plan)", degraded, rr.degraded_s, 0});
  }
  scheduler::CurrentPlan replanned;
  replanned.stages = rr.stages;
  replanned.replicas = rr.replicas;
  replanned.device_of_rank = rr.device_of_rank;
  replanned.body_per_stage = rr.body_per_stage;
  rows.push_back({"re-plan", replanned, rr.predicted_s, 0});
  JobSpec live_job = priced;
  live_job.topology = scheduler::subTopology(priced.topology, live);
  live_job.parallelism.data_parallel = 0;  // every shape
  live_job.model.cost = modelCost(model);
  scheduler::SearchOptions so = scheduler::searchOptionsFromJob(live_job);
  so.budget_seconds = a.seconds * a.scratch_factor;
  so.budget_evaluations = 0;
  so.seed = a.seed;
  const scheduler::PlanResult scratch = scheduler::plan(live_job, so, false);
  rows.push_back({"from scratch", scheduler::globalPlan(scratch.ours.allocation, live),
                  scratch.ours.best.cost, 0});
  for (Row& r : rows) r.measured_s = measure(model, job, r.plan);

  out << "\nMeasured (the job of the end-to-end test (a): tiny GPT, 4 x 2 on 8 devices in 4 sites, "
         "site "
      << job.topology.sites[static_cast<size_t>(lost_site)].name
      << " lost; in-process Trainer over emulated links, " << job.training.steps
      << " steps per plan, the first 2 left out; every tasklet shares this machine's cores):\n\n"
      << "| plan | shape | devices | predicted step s | measured step s | measured / re-plan |\n"
      << "|---|---|---|---|---|---|\n";
  const double replan_measured = rows[rows.size() - 2].measured_s;
  for (const Row& r : rows) {
    out << "| " << r.name << " | " << r.plan.stages << "x" << r.plan.replicas << " | "
        << devicesOf(r.plan) << " | " << formatNumber("%.4f", r.predicted_s) << " | "
        << formatNumber("%.4f", r.measured_s) << " | "
        << formatNumber("%.2f", r.measured_s / replan_measured) << " |\n";
  }
  out << "\nre-plan: " << rr.summary << "\n";
  return 0;
}

}  // namespace geopipe::cli
