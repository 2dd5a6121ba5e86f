// `geopipe bench grpc`: tokens/s of one job run as worker processes over the
// gRPC transport on loopback against the in-process Trainer (threads over
// the in-process transport), measured in the same run, after checking that
// both produce the same losses.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <thread>

#include <yaml-cpp/yaml.h>
#include "geopipe/error.h"
#include "geopipe/trainer.h"
#include "src/cli/bench_common.h"
#include "src/cli/distributed_commands.h"
#include "src/config/job_parser.h"
#include "src/distributed/launcher.h"

namespace geopipe::cli {
namespace {

constexpr int kWarmupSteps = 2;

// One kind of run over every round: its timed steps pooled, the losses of
// each run, and each round's median.
struct Row {
  std::string name;
  std::vector<double> step_s;               // timed steps, every round
  std::vector<std::vector<double>> losses;  // every step, per round
  std::vector<double> round_median_s;       // per round
  double timed_s = 0;                       // wall-clock of the timed steps, every round
};

}  // namespace

void addGrpcBenchOptions(CLI::App& bench, GrpcBenchArgs& args) {
  auto* g = bench.add_subcommand(
      "grpc",
      "Tokens/s of a job as worker processes on loopback (over the same-host path and over "
      "gRPC; on a GPU over gRPC and NCCL) vs the in-process Trainer, same run");
  g->add_option("--job", args.job, "job YAML (default: built-in tiny GPT)");
  g->add_option("--steps", args.steps, "timed steps per run")->capture_default_str();
  g->add_option("--stages", args.stages, "pipeline stages")->capture_default_str();
  g->add_option("--replicas", args.replicas, "data-parallel replicas")->capture_default_str();
  g->add_option("--device", args.device,
                "training.device: cpu, or cuda to compare gRPC and NCCL worker processes on the "
                "GPU(s), links not emulated")
      ->capture_default_str();
  g->add_option("--rounds", args.rounds,
                "runs of each kind, interleaved (in-process, processes, in-process, ...), so "
                "that drift of the machine hits every kind alike")
      ->check(CLI::Range(1, 20))
      ->capture_default_str();
}

int runGrpcBench(const GrpcBenchArgs& args, std::ostream& out) {
  // The launcher reads a job file: write the job with the bench's settings
  // into the original's directory (so its relative paths still resolve).
  const int steps = args.steps + kWarmupSteps;
  BenchJob bench = loadBenchJob(args.job, benchTinyJobYaml("bench-grpc-tiny"), steps, args.stages,
                                args.replicas);
  YAML::Node& root = bench.root;
  const bool gpu = args.device != "cpu";
  if (gpu) {
    // Transports side by side: no link emulation on any row.
    root["training"]["device"] = args.device;
    root["transport"]["emulate_links"] = false;
  }
  root["transport"]["kind"] = "grpc";
  // The processes of one host reach each other over Unix sockets (the
  // default); a second job runs them over gRPC streams, as between hosts.
  // On a GPU the rows compare gRPC and NCCL, both as between hosts.
  root["transport"]["same_host"] = gpu ? "grpc" : "unix";
  const TempJobFile grpc_job(bench.dir, "bench-grpc", root);
  const std::string& job_path = grpc_job.path();
  std::unique_ptr<TempJobFile> nccl_job;
  if (gpu) {
    root["transport"]["kind"] = "nccl";
    nccl_job = std::make_unique<TempJobFile>(bench.dir, "bench-nccl", root);
  }
  std::unique_ptr<TempJobFile> streams_job;
  if (!gpu) {
    root["transport"]["same_host"] = "grpc";
    streams_job = std::make_unique<TempJobFile>(bench.dir, "bench-grpc-streams", root);
  }
  // The gRPC-streams job without resumable links (no acknowledgements, no
  // retained messages): what resuming a broken link costs while none breaks.
  std::unique_ptr<TempJobFile> no_grace_job;
  if (!gpu) {
    root["fault_tolerance"]["link_grace"] = 0;
    no_grace_job = std::make_unique<TempJobFile>(bench.dir, "bench-grpc-no-grace", root);
  }

  // The in-process run of the same job: threads, no links between processes
  // (the Trainer refuses a same_host other than its default).
  JobSpec job = config::loadJobFile(job_path);
  job.transport.kind = "inproc";
  job.transport.same_host = "unix";
  ModelDef model = makeModel(job.model);
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int world = args.stages * args.replicas;
  const double tokens = double(job.training.global_batch) * job.model.seq_len;

  std::vector<Row> rows;
  rows.reserve(4);  // the callbacks of a run hold a reference to its row
  auto rowNamed = [&](const std::string& name) -> Row& {
    for (Row& r : rows)
      if (r.name == name) return r;
    rows.push_back(Row{name, {}, {}, {}, 0});
    return rows.back();
  };
  using Clock = std::chrono::steady_clock;
  // Callbacks that add one run to `row`: its timed steps, its losses, and
  // the wall-clock from the end of the last warm-up step to the last step.
  auto timedRun = [&](const std::string& name) {
    Row& row = rowNamed(name);
    row.losses.emplace_back();
    const size_t first = row.step_s.size();
    auto t0 = std::make_shared<Clock::time_point>();
    auto t1 = std::make_shared<Clock::time_point>();
    auto on_step = [&row, t0, t1](const StepMetrics& m) {
      row.losses.back().push_back(m.loss);
      if (m.step == kWarmupSteps - 1) *t0 = Clock::now();
      if (m.step >= kWarmupSteps) {
        row.step_s.push_back(m.seconds);
        *t1 = Clock::now();
      }
    };
    auto finish = [&row, t0, t1, first] {
      row.timed_s += std::chrono::duration<double>(*t1 - *t0).count();
      row.round_median_s.push_back(median(
          std::vector<double>(row.step_s.begin() + static_cast<long>(first), row.step_s.end())));
    };
    return std::make_pair(on_step, finish);
  };
  auto inProcess = [&] {
    auto [on_step, finish] = timedRun("in-process Trainer (threads)");
    TrainerOptions opt;
    opt.on_step = on_step;
    Trainer(model, job, opt).train();
    finish();
  };
  auto launched = [&](const std::string& name, const std::string& path) {
    auto [on_step, finish] = timedRun(name);
    distributed::LaunchOptions opt;
    opt.job_path = path;
    opt.on_step = on_step;
    opt.worker_log_level = "warn";
    distributed::LaunchResult r = distributed::launchJob(opt);
    if (!r.job.ok) GEOPIPE_THROW(IoError, "the ", name, " run failed: ", r.job.failure);
    finish();
  };
  for (int round = 0; round < args.rounds; ++round) {
    inProcess();
    launched(gpu ? "gRPC worker processes" : "processes, same_host unix", job_path);
    if (gpu) launched("NCCL worker processes", nccl_job->path());
    if (streams_job) launched("processes, same_host grpc", streams_job->path());
    if (no_grace_job) launched("gRPC, link_grace 0", no_grace_job->path());
  }
  // Verify before timing matters: the same job must give the same losses in
  // every run (on a GPU, to 1e-4: kernels may sum in another order across
  // processes).
  const double tolerance = gpu ? 1e-4 : 1e-6;
  const std::vector<double>& reference = rows[0].losses[0];
  double worst = 0;
  for (const Row& row : rows) {
    for (const std::vector<double>& run : row.losses) {
      for (size_t i = 0; i < reference.size() && i < run.size(); ++i) {
        worst = std::max(worst,
                         std::abs(reference[i] - run[i]) / std::max(1e-12, std::abs(reference[i])));
      }
    }
  }

  const double ref = median(rows[0].step_s);
  char line[256];
  out << "grpc bench: " << job.name << " (" << job.model.layers << " layers, hidden "
      << job.model.hidden << ", seq " << job.model.seq_len << "), " << args.stages << " stages x "
      << args.replicas << " replicas = " << world << " tasklets, global batch "
      << job.training.global_batch << ", " << args.steps << " timed steps after " << kWarmupSteps
      << " warm-up, " << cores << " cores, links "
      << (job.transport.emulate_links ? "emulated" : "not emulated") << ", device "
      << job.training.device << "\n";
  out << args.rounds << " round(s), each run of every kind in turn; losses: max relative "
      << "difference " << worst << " over " << reference.size() << " steps of every run ("
      << (worst <= tolerance ? "same" : "DIFFERENT") << ")\n\n";
  std::snprintf(line, sizeof(line), "%-30s %9s %9s %9s %12s %12s %9s  %s\n", "run", "min s",
                "median s", "max s", "tokens/s", "run tok/s", "vs inproc", "each round");
  out << line;
  for (const Row& row : rows) {
    const double med = median(row.step_s);
    const double run_tokens_per_s =
        row.timed_s > 0 ? tokens * double(row.step_s.size()) / row.timed_s : 0;
    std::string rounds;
    for (size_t k = 0; k < row.round_median_s.size(); ++k) {
      rounds +=
          formatNumber(k ? " %.2fx" : "%.2fx", rows[0].round_median_s[k] / row.round_median_s[k]);
    }
    std::snprintf(line, sizeof(line), "%-30s %9.4f %9.4f %9.4f %12.0f %12.0f %8.2fx  %s\n",
                  row.name.c_str(), *std::min_element(row.step_s.begin(), row.step_s.end()), med,
                  *std::max_element(row.step_s.begin(), row.step_s.end()), tokens / med,
                  run_tokens_per_s, ref / med, rounds.c_str());
    out << line;
  }
  out << "\n'median s' and 'tokens/s' over the timed steps of every round (the slowest "
         "tasklet's); 'run tok/s' from the wall-clock of the timed steps as the coordinator saw "
         "them; 'vs inproc' = in-process median step time / this row's (the target: >= 0.9x); "
         "'each round' = the same ratio against the in-process run of that round. "
      << (gpu ? "The processes reach each other over gRPC streams, as between hosts (NCCL "
                "inside its site).\n"
              : "'same_host unix': the worker processes reach each other over Unix sockets "
                "(the default on one host); 'same_host grpc': over gRPC streams with TLS, as "
                "between hosts; 'gRPC, link_grace 0': the latter without resumable links (no "
                "acknowledgements or retained messages).\n");
  return worst <= tolerance ? 0 : static_cast<int>(5);
}

}  // namespace geopipe::cli
