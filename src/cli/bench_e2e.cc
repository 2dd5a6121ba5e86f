// `geopipe bench e2e`: training over emulated geo-distributed links, side by
// side in one run: compression methods at several bandwidths, scheduled vs
// naive placements, and the cost model's predicted step time beside each
// measured one. Writes results.md, results.json and SVG plots.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>

#include "geopipe/error.h"
#include "geopipe/trainer.h"
#include "scheduler/cost_model.h"
#include "scheduler/planner.h"
#include "src/cli/bench_common.h"
#include "src/cli/bench_e2e.h"
#include "src/cli/commands.h"
#include "src/cli/option_checks.h"
#include "src/common/svg_plot.h"
#include "src/config/job_parser.h"
#include "src/config/topology_parser.h"
#include "src/runtime/placement.h"

namespace geopipe::cli {
namespace {

namespace fs = std::filesystem;
constexpr int kWarmup = 2;  // steps before timing (the first is slow)

double tailMean(const std::vector<double>& v, size_t n) {
  n = std::min(n, v.size());
  return n ? std::accumulate(v.end() - static_cast<long>(n), v.end(), 0.0) / double(n) : 0;
}

// One compression setting of the grid.
struct Method {
  std::string name;
  std::string activations;  // none | acsgd | direct
  int bits = 0;
  bool quantize_backward = false;
};

void applyMethod(JobSpec& job, const Method& m) {
  job.compression.activations.method = m.activations;
  job.compression.activations.bits = m.bits > 0 ? m.bits : 4;
  job.compression.backward.method = m.quantize_backward ? "quantize" : "none";
  job.compression.backward.bits = 8;
}

// A two-region pipeline: 2 stages x 1 replica, the boundary on a WAN link.
JobSpec compressionJob(double mbps) {
  JobSpec job = config::parseJobString(R"(
name: e2e-compression
model: {preset: tiny}
data: {kind: fortunes, num_samples: 256}
training:
  global_batch: 8
  micro_batch: 2
  optimizer: {kind: adamw, lr: 2.0e-3, weight_decay: 0.01}
  lr_schedule: {kind: cosine, warmup_steps: 20, min_lr: 2.0e-4}
  grad_clip: 1.0
  seed: 11
parallelism: {pipeline_stages: 2, data_parallel: 1, schedule: 1f1b}
topology:
  sites: [{name: west, devices: 1}, {name: east, devices: 1}]
  links: [{sites: [west, east], latency_ms: 10, bandwidth_gbps: 1}]
transport: {emulate_links: true}
)", "<bench e2e>", "");
  job.transport.bandwidth_scale = mbps / 1000.0;
  return job;
}

// Eight single-device regions with the world-wide scenario's links.
JobSpec placementJobOf(const std::string& worldwide_path, double scale) {
  TopologySpec ww = config::loadTopologyFile(worldwide_path);
  TopologySpec topo;
  topo.name = "worldwide-8";
  topo.source = worldwide_path + " (one device per region)";
  for (int s = 0; s < ww.numSites(); ++s) {
    SiteSpec site = ww.sites[s];
    DeviceSpec d = ww.devices[site.devices.front()];
    d.site = s;
    d.gpu = "cpu";
    site.devices = {s};
    topo.sites.push_back(site);
    topo.devices.push_back(d);
  }
  topo.site_links = ww.site_links;
  JobSpec job = compressionJob(1000);
  job.name = "e2e-placement";
  job.topology = topo;
  job.parallelism.pipeline_stages = 4;
  job.parallelism.data_parallel = 2;
  job.transport.bandwidth_scale = scale;
  return job;
}

struct Run {
  std::string group, name;
  double mbps = 0;
  double step_s = 0;          // median of timed steps
  double predicted_s = 0;     // cost model, calibrated compute
  double final_loss = 0;      // quality runs only
  uint64_t wire = 0, raw = 0; // per timed step
  std::vector<double> losses;
};

// Median step seconds of `steps` timed steps after the warm-up.
Run timeRun(const JobSpec& base, int timed, const std::vector<int>& devices,
            const std::vector<int>& layers) {
  JobSpec job = base;
  job.training.steps = kWarmup + timed;
  // Two steps per epoch: AC-SGD's first visits (fp16) end after the warm-up
  // and the timed steps send deltas, as in steady-state training.
  job.data.num_samples = 2 * job.training.global_batch;
  Run r;
  std::vector<double> secs;
  TrainerOptions opt;
  opt.device_of_rank = devices;
  opt.layers_per_stage = layers;
  opt.on_step = [&](const StepMetrics& m) {
    if (m.step < kWarmup) return;
    secs.push_back(m.seconds);
    r.wire += m.activation_wire_bytes + m.gradient_wire_bytes + m.dp_wire_bytes;
    r.raw += m.activation_raw_bytes + m.gradient_raw_bytes + m.dp_raw_bytes;
  };
  Trainer(makeModel(job.model), job, opt).train();
  r.step_s = median(secs);
  if (timed > 0) r.wire /= timed, r.raw /= timed;
  return r;
}

// Busiest tasklet's compute seconds per step with links off: the compute
// the cost model is calibrated to (this machine's CPUs stand in for GPUs).
double measuredCompute(const JobSpec& base, const std::vector<int>& devices,
                       const std::vector<int>& layers, int timed) {
  JobSpec job = base;
  job.transport.emulate_links = false;
  job.training.steps = kWarmup + timed;
  job.data.num_samples = 2 * job.training.global_batch;
  std::vector<double> compute;
  TrainerOptions opt;
  opt.device_of_rank = devices;
  opt.layers_per_stage = layers;
  opt.on_step = [&](const StepMetrics& m) {
    if (m.step >= kWarmup) compute.push_back(m.compute_seconds);
  };
  Trainer(makeModel(job.model), job, opt).train();
  return median(compute);
}

// The cost model's step time for an allocation, calibrated to the measured
// compute (calibratedEvaluation).
double predictStep(const JobSpec& base, const scheduler::Allocation& alloc, double compute_s) {
  return calibratedEvaluation(base, alloc, compute_s).total_s;
}

}  // namespace

std::vector<int> deviceOfRank(const scheduler::Allocation& a) {
  std::vector<int> out(static_cast<size_t>(a.d_pp * a.d_dp));
  for (int s = 0; s < a.d_pp; ++s)
    for (int r = 0; r < a.d_dp; ++r) out[static_cast<size_t>(r * a.d_pp + s)] = a.stages[s][r];
  return out;
}

JobSpec worldwidePlacementJob(const std::string& worldwide_path, double scale) {
  return placementJobOf(worldwide_path, scale);
}

scheduler::Allocation allocationOf(const JobSpec& job, const std::vector<int>& device_of_rank,
                                   const std::vector<int>& layers) {
  const int S = job.parallelism.pipeline_stages, R = job.parallelism.data_parallel;
  scheduler::Allocation a;
  a.d_pp = S;
  a.d_dp = R;
  a.stages.assign(S, std::vector<int>(R));
  for (int s = 0; s < S; ++s)
    for (int r = 0; r < R; ++r) a.stages[s][r] = device_of_rank[r * S + s];
  int first = 0;
  for (int s = 0; s < S; ++s) {
    a.layers.emplace_back(first, first + layers[s]);
    first += layers[s];
  }
  return a;
}

scheduler::PathEval calibratedEvaluation(const JobSpec& base, const scheduler::Allocation& alloc,
                                         double compute_s) {
  JobSpec job = scheduler::effectiveNetworkJob(base);
  for (auto& d : job.topology.devices) d.tflops = 1.0;
  auto profile = scheduler::ModelProfile::fromJob(job);
  auto model = scheduler::makeCostModel("geopipe", std::make_shared<scheduler::Network>(job.topology),
                                        profile, job, alloc.d_pp, alloc.d_dp);
  const double at_one = model->evaluateAllocation(alloc).breakdown.compute_s;
  const double tflops = compute_s > 0 ? at_one / compute_s : 1.0;
  for (auto& d : job.topology.devices) d.tflops = tflops;
  model = scheduler::makeCostModel("geopipe", std::make_shared<scheduler::Network>(job.topology),
                                   profile, job, alloc.d_pp, alloc.d_dp);
  return model->evaluateAllocation(alloc);
}

void addE2eBenchOptions(CLI::App& bench, E2eBenchArgs& args) {
  auto* e2e = bench.add_subcommand(
      "e2e",
      "Training over emulated links: compression x bandwidth, placement, predicted vs "
      "measured step time; writes a markdown table, JSON and SVG plots");
  e2e->add_flag("--quick", args.quick, "a smaller grid (about a third of the time)");
  e2e->add_option("--out", args.out_dir, "output directory")->capture_default_str();
  e2e->add_option("--quality-steps", args.quality_steps, "steps of each loss run")
      ->capture_default_str();
  e2e->add_option("--timed-steps", args.timed_steps, "timed steps per step-time run")
      ->capture_default_str();
  e2e->add_option("--mbps", args.mbps, "emulated WAN bandwidths (Mbps), comma-separated")
      ->capture_default_str()
      ->delimiter(',')
      ->check(finiteNumberIn(0.0, 1e6, /*lo_exclusive=*/true));
  e2e->add_option("--parts", args.parts, "compression, placement or both (comma-separated)")
      ->capture_default_str();
  e2e->add_option("--worldwide", args.worldwide_topology,
                  "topology whose links the placement runs use")
      ->capture_default_str();
}

int runE2eBench(const E2eBenchArgs& args, std::ostream& out) {
  fs::create_directories(args.out_dir);
  const int quality_steps = args.quick ? 100 : args.quality_steps;
  const int timed = args.quick ? 4 : args.timed_steps;
  std::vector<double> bandwidths = args.quick ? std::vector<double>{5, 100} : args.mbps;
  const std::vector<Method> methods = {
      {"fp32", "none", 0, false},       {"acsgd-4", "acsgd", 4, true},
      {"acsgd-3", "acsgd", 3, true},    {"acsgd-2", "acsgd", 2, true},
      {"direct-4", "direct", 4, true},  {"direct-2", "direct", 2, true}};
  std::vector<Run> runs;
  nlohmann::json json;
  const bool do_compression = args.parts.find("compression") != std::string::npos;
  const bool do_placement = args.parts.find("placement") != std::string::npos;
  GEOPIPE_CHECK(do_compression || do_placement, ConfigError, "--parts '", args.parts,
                "': expected compression, placement or both");

  // 1. Quality: the same runs without link emulation (the arithmetic does not
  //    depend on link speed), long enough to compare final losses.
  out << "[1/3] quality: " << methods.size() << " settings x " << quality_steps << " steps\n"
      << std::flush;
  std::map<std::string, std::vector<double>> losses;
  for (const Method& m : do_compression ? methods : std::vector<Method>{}) {
    JobSpec job = compressionJob(1000);
    applyMethod(job, m);
    job.transport.emulate_links = false;
    job.training.steps = quality_steps;
    losses[m.name] = Trainer(makeModel(job.model), job).train().losses;
    out << "  " << m.name << ": final loss " << formatNumber("%.4f", tailMean(losses[m.name], 20))
        << "\n"
        << std::flush;
  }

  // 2. Step time per method and bandwidth, each beside its prediction.
  out << "[2/3] step time: " << methods.size() << " settings x " << bandwidths.size()
      << " bandwidths\n"
      << std::flush;
  const std::vector<int> pair = {0, 1}, even = {2, 2};
  double compute_2x1 = do_compression ? measuredCompute(compressionJob(1000), pair, even, timed) : 0;
  for (double mbps : do_compression ? bandwidths : std::vector<double>{}) {
    for (const Method& m : methods) {
      JobSpec job = compressionJob(mbps);
      applyMethod(job, m);
      Run r = timeRun(job, timed, pair, even);
      r.group = "compression";
      r.name = m.name;
      r.mbps = mbps;
      r.losses = losses[m.name];
      r.final_loss = tailMean(r.losses, 20);
      r.predicted_s = predictStep(job, allocationOf(job, pair, even), compute_2x1);
      out << "  " << mbps << " Mbps " << m.name << ": " << formatNumber("%.3f", r.step_s)
          << " s/step (predicted " << formatNumber("%.3f", r.predicted_s) << ")\n"
          << std::flush;
      runs.push_back(r);
    }
  }

  // 3. Placement on eight world-wide regions: ours vs in-order vs random.
  out << "[3/3] placement: 8 regions, 4 stages x 2 replicas\n" << std::flush;
  JobSpec pj = placementJobOf(args.worldwide_topology, args.placement_scale);
  const std::vector<int> one_each = {1, 1, 1, 1};
  if (do_placement) {
    JobSpec priced = scheduler::effectiveNetworkJob(pj);
    scheduler::SearchOptions so = scheduler::searchOptionsFromJob(priced);
    scheduler::PlanResult plan = scheduler::plan(priced, so, /*with_baselines=*/true);
    const std::vector<std::pair<std::string, const scheduler::SearchResult*>> placements = {
        {"scheduled", &plan.ours}, {"in-order", &plan.in_order}, {"random", &plan.random}};
    double compute_4x2 = measuredCompute(pj, deviceOfRank(plan.in_order.allocation), one_each, timed);
    for (const auto& [name, result] : placements) {
      scheduler::Allocation alloc = result->allocation;
      std::vector<int> devices = deviceOfRank(alloc);
      Run r = timeRun(pj, timed, devices, one_each);
      r.group = "placement";
      r.name = name;
      r.mbps = args.placement_scale * 1000;
      r.predicted_s = predictStep(pj, allocationOf(pj, devices, one_each), compute_4x2);
      out << "  " << name << ": " << formatNumber("%.3f", r.step_s) << " s/step (predicted "
          << formatNumber("%.3f", r.predicted_s) << ")\n"
          << std::flush;
      runs.push_back(r);
    }
  }

  // Report.
  std::ostringstream md;
  md << "## Compression (2 stages, one WAN link of 10 ms; tiny GPT on fortunes)\n\n"
     << "| bandwidth | setting | step (s) | predicted (s) | error | speed-up vs fp32 | wire/step | fp32 bytes / wire | final loss | loss vs fp32 |\n"
     << "|---|---|---|---|---|---|---|---|---|---|\n";
  double worst_error = 0;
  for (const Run& r : runs) {
    if (r.group != "compression") continue;
    const Run* base = nullptr;
    for (const Run& b : runs)
      if (b.group == r.group && b.mbps == r.mbps && b.name == "fp32") base = &b;
    const double err = r.step_s > 0 ? (r.predicted_s - r.step_s) / r.step_s : 0;
    worst_error = std::max(worst_error, std::abs(err));
    const double fp32_loss = tailMean(losses["fp32"], 20);
    md << "| " << r.mbps << " Mbps | " << r.name << " | " << formatNumber("%.3f", r.step_s) << " | "
       << formatNumber("%.3f", r.predicted_s) << " | " << formatNumber("%+.0f%%", 100 * err)
       << " | " << formatNumber("%.2fx", base && r.step_s > 0 ? base->step_s / r.step_s : 0)
       << " | " << formatNumber("%.0f KB", r.wire / 1e3) << " | "
       << formatNumber("%.1fx", r.wire ? double(r.raw) / double(r.wire) : 1.0) << " | "
       << formatNumber("%.4f", r.final_loss) << " | "
       << formatNumber("%+.2f%%", 100 * (r.final_loss - fp32_loss) / fp32_loss) << " |\n";
  }
  md << "\n## Placement (8 single-device regions with the world-wide scenario's links x "
     << args.placement_scale << "; 4 stages x 2 replicas, fp32)\n\n"
     << "| placement | step (s) | predicted (s) | error | speed-up of scheduled |\n|---|---|---|---|---|\n";
  double scheduled = 0;
  for (const Run& r : runs)
    if (r.group == "placement" && r.name == "scheduled") scheduled = r.step_s;
  for (const Run& r : runs) {
    if (r.group != "placement") continue;
    const double err = r.step_s > 0 ? (r.predicted_s - r.step_s) / r.step_s : 0;
    worst_error = std::max(worst_error, std::abs(err));
    md << "| " << r.name << " | " << formatNumber("%.3f", r.step_s) << " | "
       << formatNumber("%.3f", r.predicted_s) << " | " << formatNumber("%+.0f%%", 100 * err)
       << " | " << formatNumber("%.2fx", scheduled > 0 ? r.step_s / scheduled : 0) << " |\n";
  }
  md << "\nWorst prediction error: " << formatNumber("%.0f%%", 100 * worst_error) << "\n";
  common::writeTextFile((fs::path(args.out_dir) / "results.md").string(), md.str());
  out << "\n" << md.str();

  // JSON and plots.
  for (const Run& r : runs) {
    json["runs"].push_back({{"group", r.group}, {"name", r.name}, {"mbps", r.mbps},
                            {"step_s", r.step_s}, {"predicted_s", r.predicted_s},
                            {"wire_bytes_per_step", r.wire}, {"raw_bytes_per_step", r.raw},
                            {"final_loss", r.final_loss}});
  }
  for (const auto& [name, l] : losses) json["losses"][name] = l;
  common::writeTextFile((fs::path(args.out_dir) / "results.json").string(), json.dump(2));

  if (!do_compression) {
    out << "\nwrote " << args.out_dir << "/{results.md,results.json}\n";
    return 0;
  }
  std::vector<common::Series> by_step, by_time;
  const double slow = bandwidths.front();
  for (const Method& m : methods) {
    common::Series s{m.name, {}}, t{m.name, {}};
    double step_s = 0;
    for (const Run& r : runs)
      if (r.group == "compression" && r.name == m.name && r.mbps == slow) step_s = r.step_s;
    const auto& l = losses[m.name];
    for (size_t i = 0; i < l.size(); ++i) {
      s.points.emplace_back(double(i + 1), l[i]);
      t.points.emplace_back(step_s * double(i + 1), l[i]);
    }
    by_step.push_back(s);
    by_time.push_back(t);
  }
  common::writeTextFile((fs::path(args.out_dir) / "loss_vs_step.svg").string(),
                        common::lineChartSvg(by_step, {"Training loss per step", "step", "loss"}));
  common::writeTextFile(
      (fs::path(args.out_dir) / "loss_vs_time.svg").string(),
      common::lineChartSvg(by_time,
                           {"Training loss vs wall time at " + formatNumber("%g", slow) + " Mbps",
                            "seconds (steps x measured step time)", "loss"}));
  std::vector<std::pair<std::string, double>> bars;
  for (const Run& r : runs) {
    bars.emplace_back(r.group == "compression" ? formatNumber("%g Mbps ", r.mbps) + r.name
                                               : "placement " + r.name,
                      r.step_s > 0 ? 8.0 * 128 / r.step_s : 0);
  }
  common::writeTextFile((fs::path(args.out_dir) / "throughput.svg").string(),
                        common::barChartSvg(bars, {"Throughput (tokens/s)", "tokens/s", ""}));
  out << "\nwrote " << args.out_dir << "/{results.md,results.json,loss_vs_step.svg,"
      << "loss_vs_time.svg,throughput.svg}\n";
  return 0;
}

}  // namespace geopipe::cli
