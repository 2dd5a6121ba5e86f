// `geopipe bench pipeline`: tokens/s of the staged engine against plain
// single-process training of the same model on the same cores, measured in
// one run, and the share of step time spent outside compute.
#include <algorithm>
#include <cstdio>
#include <thread>

#include "geopipe/trainer.h"
#include "src/cli/bench_common.h"
#include "src/cli/commands.h"
#include "src/cli/progress_display.h"
#include "src/common/blas_check.h"
#include "src/config/job_parser.h"

namespace geopipe::cli {
namespace {

constexpr int kWarmupSteps = 2;

struct Row {
  std::string name;
  std::vector<double> step_s;     // timed steps only
  std::vector<double> outside_s;  // step time not spent computing (busiest tasklet)
  double final_loss = 0;
};

}  // namespace

void addPipelineBenchOptions(CLI::App& bench, PipelineBenchArgs& args) {
  auto* pipe = bench.add_subcommand(
      "pipeline", "Tokens/s of the staged engine vs single-process training, same run");
  pipe->add_option("--job", args.job, "job YAML (default: built-in tiny GPT)");
  pipe->add_option("--steps", args.steps, "timed steps per run")->capture_default_str();
  pipe->add_option("--stages", args.stages, "pipeline stages")->capture_default_str();
  pipe->add_option("--replicas", args.replicas, "data-parallel replicas")->capture_default_str();
}

int runPipelineBench(const PipelineBenchArgs& args, std::ostream& out) {
  JobSpec job = args.job.empty() ? config::parseJobString(benchTinyJobYaml("bench-pipeline-tiny"),
                                                          "<bench pipeline>", "")
                                 : config::loadJobFile(args.job);
  refuseTensorBoardDir(job, "geopipe bench pipeline");
  job.training.steps = args.steps + kWarmupSteps;
  job.parallelism.pipeline_stages = args.stages;
  job.parallelism.data_parallel = args.replicas;
  ModelDef model = makeModel(job.model);
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const double tokens = double(job.training.global_batch) * job.model.seq_len;

  std::vector<Row> rows;
  // The reference is plain training in one process, with every core and
  // with one thread (small matrices can run faster single-threaded); the
  // faster of the two is what the staged engine is compared against.
  for (int threads : {cores, 1}) {
    if (threads == 1 && cores == 1) break;
    Row row{"single process (" + std::to_string(threads) + (threads == 1 ? " thread)" : " threads)"),
            {}, {}, 0};
    torch::set_num_threads(threads);
    common::setBlasThreads(threads);
    auto r = trainSingleProcess(model, job, ReferenceMode::FULL_BATCH, [&](const StepMetrics& m) {
      if (m.step >= kWarmupSteps) {
        row.step_s.push_back(m.seconds);
        row.outside_s.push_back(0);
      }
    });
    row.final_loss = r.losses.back();
    rows.push_back(row);
  }
  const size_t singles = rows.size();
  for (const char* method : {"none", "acsgd"}) {
    JobSpec staged = job;
    staged.compression.activations.method = method;
    staged.compression.activations.bits = 4;
    Row row{std::string("staged ") + std::to_string(args.stages) + "x" +
                std::to_string(args.replicas) + (std::string(method) == "none" ? " fp32" : " acsgd-4"),
            {}, {}, 0};
    TrainerOptions opt;
    opt.on_step = [&](const StepMetrics& m) {
      if (m.step >= kWarmupSteps) {
        row.step_s.push_back(m.seconds);
        row.outside_s.push_back(std::max(0.0, m.seconds - m.compute_seconds));
      }
    };
    auto r = Trainer(model, staged, opt).train();
    row.final_loss = r.losses.back();
    rows.push_back(row);
  }

  double ref = median(rows[0].step_s);
  for (size_t i = 1; i < singles; ++i) ref = std::min(ref, median(rows[i].step_s));
  char line[256];
  out << "pipeline bench: " << job.name << " (" << job.model.layers << " layers, hidden "
      << job.model.hidden << ", seq " << job.model.seq_len << "), global batch "
      << job.training.global_batch << ", micro-batch " << job.training.micro_batch << ", "
      << args.steps << " timed steps after " << kWarmupSteps << " warm-up, " << cores
      << " cores\n\n";
  std::snprintf(line, sizeof(line), "%-28s %9s %9s %9s %10s %9s %10s %9s\n", "run", "min s",
                "median s", "max s", "tokens/s", "vs single", "outside", "loss");
  out << line;
  for (const Row& row : rows) {
    const double med = median(row.step_s);
    const double outside = med > 0 ? median(row.outside_s) / med : 0;
    std::snprintf(line, sizeof(line), "%-28s %9.4f %9.4f %9.4f %10.0f %8.2fx %9.1f%% %9.4f\n",
                  row.name.c_str(), *std::min_element(row.step_s.begin(), row.step_s.end()), med,
                  *std::max_element(row.step_s.begin(), row.step_s.end()), tokens / med,
                  ref / med, 100.0 * outside, row.final_loss);
    out << line;
  }
  out << "\n'vs single' = the faster single-process median step time / this run's (higher is better);\n"
         "'outside' = median share of the step the busiest tasklet spent not computing\n"
         "(waiting for peers, gradient exchange, optimizer).\n";
  return 0;
}

}  // namespace geopipe::cli
