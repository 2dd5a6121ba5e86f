// `geopipe bench diloco`: data-parallel sync across continents, side by side
// in one run on the emulated world-wide network of `bench e2e`'s placement
// grid (4 stages x 2 replicas of the tiny GPT): every-step fp32, every-step
// 8-bit with error feedback, DiLoCo at several H with an 8-bit
// pseudo-gradient, and the same job with no data-parallel exchange at all.
// Step time and cross-replica bytes per step on the emulated links; final
// training and validation loss at an equal number of tokens without link
// emulation (the arithmetic does not depend on link speed).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>
#include <utility>

#include "geopipe/error.h"
#include "geopipe/trainer.h"
#include "scheduler/planner.h"
#include "src/cli/bench_common.h"
#include "src/cli/bench_e2e.h"
#include "src/cli/commands.h"
#include "src/common/svg_plot.h"

namespace geopipe::cli {

void addDilocoBenchOptions(CLI::App& bench, DilocoBenchArgs& a) {
  auto* d = bench.add_subcommand(
      "diloco",
      "Every-step data-parallel sync vs DiLoCo local steps on the emulated world-wide network "
      "(4 stages x 2 replicas), side by side in one run");
  d->add_option("--inner-steps", a.inner_steps, "DiLoCo's H values to compare")
      ->delimiter(',')
      ->capture_default_str();
  d->add_option("--quality-steps", a.quality_steps,
                "steps of each loss run (links not emulated; equal tokens for every row)")
      ->capture_default_str();
  d->add_option("--timed-steps", a.timed_steps, "timed steps of the every-step rows")
      ->capture_default_str();
  d->add_option("--scale", a.scale, "bandwidth scale of the world-wide links")
      ->capture_default_str();
  d->add_option("--topology", a.worldwide_topology, "the world-wide scenario's topology")
      ->capture_default_str();
  d->add_option("--out", a.out_dir, "where results.md, results.json and loss.svg go")
      ->capture_default_str();
  d->add_flag("--quick", a.quick, "H = 4 only, 40-step loss runs: a smoke test");
}

namespace {

namespace fs = std::filesystem;
constexpr int kWarmup = 2;

struct Row {
  std::string name;
  int inner_steps = 0;  // 0: every step; -1: no exchange
  std::string grad_method = "none";
  double step_s = 0;
  double cross_bytes = 0;  // per step, both replicas
  double final_loss = 0, val_loss = 0;
  std::vector<double> losses;
  std::vector<double> step_seconds;  // the timed run's, every step
};

void applyRow(JobSpec& job, const Row& row) {
  job.compression.gradients = GradientCompressionSpec{};
  job.parallelism.data_parallel_sync = DataParallelSyncSpec{};
  GradientCompressionSpec c;
  c.method = row.grad_method;
  c.bits = 8;
  if (row.inner_steps == 0) {
    job.compression.gradients = c;
    return;
  }
  DataParallelSyncSpec& s = job.parallelism.data_parallel_sync;
  s.kind = "diloco";
  s.compression = c;
  // No exchange: a round longer than any run here; the run's last step
  // still averages once, after the timed steps.
  s.inner_steps = row.inner_steps > 0 ? row.inner_steps : 1000000;
}

// Step time and cross-replica bytes per step on the emulated links, as
// wall time between the ends of steps (the slowest tasklet's, when the
// step's row is complete): between syncs the replicas run apart, and the
// faster one then waits at the next sync, which per-step times would not
// show. Every step: `timed` steps after the warm-up. No exchange: the same,
// without the last step (the run's closing average). DiLoCo at H: one
// round of H steps, its only exchange after step H - 1: from the end of
// the first step to the end of the last, over H - 1 steps; bytes: the
// round's exchange / H.
void timeRow(const JobSpec& base, const std::vector<int>& devices, int timed, Row& row) {
  JobSpec job = base;
  applyRow(job, row);
  const bool round = row.inner_steps > 0;
  job.training.steps = round ? row.inner_steps : kWarmup + timed + (row.inner_steps < 0 ? 1 : 0);
  job.data.num_samples = 2 * job.training.global_batch;
  using Clock = std::chrono::steady_clock;
  std::vector<Clock::time_point> ends;
  std::vector<double> dp_bytes;
  TrainerOptions opt;
  opt.device_of_rank = devices;
  opt.layers_per_stage = {1, 1, 1, 1};
  opt.on_step = [&](const StepMetrics& m) {
    ends.push_back(Clock::now());
    row.step_seconds.push_back(m.seconds);
    dp_bytes.push_back(double(m.dp_wire_bytes));
  };
  Trainer(makeModel(job.model), job, opt).train();
  auto wall = [&](size_t from, size_t to) {  // step ends, inclusive indices
    return std::chrono::duration<double>(ends[to] - ends[from]).count() / double(to - from);
  };
  if (round) {
    row.step_s = wall(0, ends.size() - 1);
    row.cross_bytes = std::accumulate(dp_bytes.begin(), dp_bytes.end(), 0.0) / row.inner_steps;
    return;
  }
  const size_t last = kWarmup + timed - 1;  // the no-exchange run has one more
  row.step_s = wall(kWarmup - 1, last);
  row.cross_bytes =
      std::accumulate(dp_bytes.begin() + kWarmup, dp_bytes.begin() + long(last) + 1, 0.0) / timed;
}

// Losses without link emulation, `steps` steps of the same global batch
// (equal tokens for every row), with a validation set for the final loss.
void lossRow(const JobSpec& base, int steps, Row& row) {
  JobSpec job = base;
  applyRow(job, row);
  job.transport.emulate_links = false;
  job.training.steps = steps;
  job.data.num_samples = 0;
  job.data.val_fraction = 0.05;
  const TrainResult r = Trainer(makeModel(job.model), job).train();
  row.losses = r.losses;
  const size_t n = std::min<size_t>(20, r.losses.size());
  row.final_loss =
      n ? std::accumulate(r.losses.end() - static_cast<long>(n), r.losses.end(), 0.0) / double(n)
        : 0;
  row.val_loss = r.val_losses.empty() ? 0 : r.val_losses.back().second;
}

}  // namespace

int runDilocoBench(const DilocoBenchArgs& args, std::ostream& out) {
  fs::create_directories(args.out_dir);
  const std::vector<int> hs = args.quick ? std::vector<int>{4} : args.inner_steps;
  const int quality_steps = args.quick ? 40 : args.quality_steps;
  const int timed = args.quick ? 3 : args.timed_steps;
  for (int h : hs) {
    GEOPIPE_CHECK(h >= 2, ConfigError, "--inner-steps ", h,
                  ": DiLoCo's H must be at least 2 here (a round of one step has no inner step "
                  "to time)");
  }
  GEOPIPE_CHECK(quality_steps >= 1 && timed >= 1, ConfigError,
                "--quality-steps and --timed-steps must be at least 1");

  JobSpec base = worldwidePlacementJob(args.worldwide_topology, args.scale);
  base.name = "bench-diloco";
  // One placement for every row: the scheduler's for every-step fp32, so
  // the rows differ only in how the replicas sync.
  JobSpec priced = scheduler::effectiveNetworkJob(base);
  const scheduler::PlanResult plan =
      scheduler::plan(priced, scheduler::searchOptionsFromJob(priced), false);
  const std::vector<int> devices = deviceOfRank(plan.ours.allocation);

  auto row = [](std::string name, int inner_steps, std::string method) {
    Row r;
    r.name = std::move(name);
    r.inner_steps = inner_steps;
    r.grad_method = std::move(method);
    return r;
  };
  std::vector<Row> rows = {row("every step, fp32", 0, "none"),
                           row("every step, 8-bit + EF", 0, "quantize")};
  for (int h : hs) rows.push_back(row("DiLoCo H=" + std::to_string(h) + ", 8-bit", h, "quantize"));
  rows.push_back(row("no exchange", -1, "none"));

  out << "[1/2] loss at equal tokens: " << rows.size() << " runs x " << quality_steps
      << " steps (links not emulated)\n"
      << std::flush;
  for (Row& r : rows) {
    lossRow(base, quality_steps, r);
    out << "  " << r.name << ": final loss " << formatNumber("%.4f", r.final_loss)
        << ", validation " << formatNumber("%.4f", r.val_loss) << "\n"
        << std::flush;
  }
  out << "[2/2] step time on the world-wide links x " << args.scale << "\n" << std::flush;
  for (Row& r : rows) {
    timeRow(base, devices, timed, r);
    out << "  " << r.name << ": " << formatNumber("%.3f", r.step_s) << " s/step, "
        << formatNumber("%.0f", r.cross_bytes / 1e3) << " KB cross-replica per step\n"
        << std::flush;
  }

  const Row& fp32 = rows.front();
  const Row& none = rows.back();
  std::ostringstream md;
  md << "## DiLoCo vs every-step sync (8 single-device regions with the world-wide scenario's "
        "links x "
     << args.scale << "; 4 stages x 2 replicas, tiny GPT on fortunes, one placement)\n\n"
     << "| sync | step (s) | vs no exchange | cross-replica bytes/step | fp32 every-step / this | "
        "final loss | vs fp32 | validation loss |\n"
     << "|---|---|---|---|---|---|---|---|\n";
  for (const Row& r : rows) {
    md << "| " << r.name << " | " << formatNumber("%.3f", r.step_s) << " | "
       << formatNumber("%.2fx", none.step_s > 0 ? r.step_s / none.step_s : 0) << " | "
       << formatNumber("%.0f KB", r.cross_bytes / 1e3) << " | "
       << (r.cross_bytes > 0 ? formatNumber("%.0fx", fp32.cross_bytes / r.cross_bytes)
                             : std::string("-"))
       << " | " << formatNumber("%.4f", r.final_loss) << " | "
       << formatNumber("%+.2f%%", fp32.final_loss > 0
                                      ? 100 * (r.final_loss - fp32.final_loss) / fp32.final_loss
                                      : 0)
       << " | " << formatNumber("%.4f", r.val_loss) << " |\n";
  }
  md << "\nLoss runs: " << quality_steps
     << " steps each, the same global batch (equal tokens); final loss = mean of the last 20 "
        "training losses, validation loss after the last step (5% of the samples held out). "
        "Step time: wall time between the ends of steps (every step: "
     << timed
     << " timed steps after 2 warm-up; DiLoCo: from the end of step 1 to the end of step H, the "
        "round's exchange "
        "included); bytes: per timed step (DiLoCo: the round's exchange / H).\n";
  common::writeTextFile((fs::path(args.out_dir) / "results.md").string(), md.str());
  out << "\n" << md.str();

  nlohmann::json json;
  std::vector<common::Series> series;
  for (const Row& r : rows) {
    json["rows"].push_back({{"name", r.name},
                            {"inner_steps", r.inner_steps},
                            {"step_s", r.step_s},
                            {"cross_replica_bytes_per_step", r.cross_bytes},
                            {"final_loss", r.final_loss},
                            {"val_loss", r.val_loss},
                            {"losses", r.losses},
                            {"step_seconds", r.step_seconds}});
    common::Series s{r.name, {}};
    for (size_t i = 0; i < r.losses.size(); ++i) s.points.emplace_back(double(i + 1), r.losses[i]);
    series.push_back(s);
  }
  common::writeTextFile((fs::path(args.out_dir) / "results.json").string(), json.dump(2));
  common::writeTextFile((fs::path(args.out_dir) / "loss.svg").string(),
                        common::lineChartSvg(series, {"Training loss per step", "step", "loss"}));
  out << "\nwrote " << args.out_dir << "/{results.md,results.json,loss.svg}\n";
  return 0;
}

}  // namespace geopipe::cli
