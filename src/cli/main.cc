// The `geopipe` command: the shared command line (command_line.h) with the
// engine's verbs, which need LibTorch. geopipe-lite (lite_main.cc) is the
// same command line without them. Built twice: geopipe-bench
// (GEOPIPE_WITH_BENCHMARKS) also has the engine's benchmarks; `geopipe`
// runs the geopipe-bench next to it for those, so that `make demo` need not
// compile them.
#include <malloc.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iostream>
#include <string>

#include "src/cli/command_line.h"
#include "src/cli/commands.h"
#include "src/cli/distributed_commands.h"
#include "src/cli/model_commands.h"
#include "src/distributed/process.h"
#ifdef GEOPIPE_WITH_BENCHMARKS
#include "src/cli/bench_binding.h"
#endif

namespace geopipe::cli {
namespace {

// The command line as given, for geopipe-bench.
char** g_argv = nullptr;

// Training allocates and frees the same large buffers every step (tensors,
// messages of 100 KB to MBs, gRPC's frames). glibc's defaults give them back
// to the kernel (mmap/munmap above a threshold that only adapts upwards, heap
// tops trimmed past 2x that), so each step faults the same pages in again:
// over a tenth of a gRPC worker's CPU in `bench grpc`, and of the in-process
// engine's. Every geopipe process keeps its freed memory for the next step
// instead: buffers up to 32 MiB (glibc's largest threshold) come from the
// heap, and a heap top is trimmed only past 256 MiB free. RSS stays near its
// peak (docs/operations.md).
void keepFreedMemoryForNextStep() {
  ::mallopt(M_MMAP_THRESHOLD, 32 << 20);
  ::mallopt(M_TRIM_THRESHOLD, 256 << 20);
}

#ifndef GEOPIPE_WITH_BENCHMARKS
// The benchmarks that live in geopipe-bench.
constexpr const char* kEngineBenchmarks[] = {"pipeline", "e2e",     "grpc",   "model",
                                             "soak",     "binding", "diloco", "replan"};

// Runs the same command line with geopipe-bench from this binary's
// directory (exec: its output and exit code are the command's).
int runBenchBinary(const std::string& name) {
  std::string self;
  try {
    self = distributed::selfExecutable("find geopipe-bench beside it");
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  const std::string bench = self.substr(0, self.rfind('/') + 1) + "geopipe-bench";
  if (::access(bench.c_str(), X_OK) != 0) {
    std::cerr << "error: `geopipe bench " << name << "` runs " << bench
              << ", which is not built: `make build` (or `cmake --build build --target "
                 "geopipe-bench`) builds it; `make demo` builds only geopipe\n";
    return 2;
  }
  ::execv(bench.c_str(), g_argv);
  std::cerr << "error: cannot run " << bench << ": " << std::strerror(errno) << "\n";
  return 1;
}
#endif

// train, launch, coordinator, worker, probe, eval, generate, export, and
// bench pipeline, e2e, grpc, model, soak, binding, diloco, replan.
class Engine final : public EngineVerbs {
 public:
  void addVerbs(CLI::App& app) override {
    train_ = app.add_subcommand(
        "train", "Train in this process: tasklets as threads, links emulated per the topology");
    addTrainOptions(*train_, train_args_);

    // launch, coordinator, worker: tasklets as processes (src/distributed/)
    launch_ = app.add_subcommand(
        "launch", "Train with one worker process per tasklet on this machine (gRPC on 127.0.0.1)");
    addLaunchOptions(*launch_, launch_args_);
    coordinator_ = app.add_subcommand(
        "coordinator", "Coordinate a multi-host job: workers join, the job is planned and run");
    addCoordinatorOptions(*coordinator_, coordinator_args_);
    worker_ = app.add_subcommand("worker", "Join a coordinator and run one tasklet");
    addWorkerOptions(*worker_, worker_args_);
    probe_ = app.add_subcommand(
        "probe", "Measure latency and bandwidth between hosts and write a topology for them");
    addProbeOptions(*probe_, probe_args_);

    // model folders: eval, generate, export
    eval_ = app.add_subcommand(
        "eval", "Mean cross-entropy and perplexity of a model folder on a token file");
    addEvalOptions(*eval_, eval_args_);
    generate_ = app.add_subcommand(
        "generate", "Continue a prompt with a model folder (greedy or sampled, KV cache)");
    addGenerateOptions(*generate_, generate_args_);
    export_ = app.add_subcommand("export",
                                 "Merge a checkpoint's tasklets into a Hugging Face model folder");
    addExportOptions(*export_, export_args_);
  }

#ifndef GEOPIPE_WITH_BENCHMARKS
  // The engine benchmarks are listed in `geopipe bench --help`; main()
  // hands their command lines to geopipe-bench before parsing.
  void addBenchmarks(CLI::App& bench) override {
    bench_ = &bench;
    for (const char* name : kEngineBenchmarks) {
      bench.add_subcommand(name, "a LibTorch benchmark, run by geopipe-bench (`geopipe bench " +
                                     std::string(name) + " --help`)");
    }
  }

  std::function<int()> parsedVerb() override {
    if (std::function<int()> verb = engineVerb()) return verb;
    if (!*bench_) return {};
    for (const char* name : kEngineBenchmarks)
      if (bench_->got_subcommand(name)) return [name] { return runBenchBinary(name); };
    return {};
  }
#else
  void addBenchmarks(CLI::App& bench) override {
    bench_ = &bench;
    addPipelineBenchOptions(bench, pipeline_bench_args_);
    addE2eBenchOptions(bench, e2e_bench_args_);
    addGrpcBenchOptions(bench, grpc_bench_args_);
    addModelBenchOptions(bench, model_bench_args_);
    addSoakBenchOptions(bench, soak_bench_args_);
    addBindingBenchOptions(bench, binding_bench_args_);
    addDilocoBenchOptions(bench, diloco_bench_args_);
    addReplanBenchOptions(bench, replan_bench_args_);
  }

  std::function<int()> parsedVerb() override {
    if (std::function<int()> verb = engineVerb()) return verb;
    if (!*bench_) return {};
    if (bench_->got_subcommand("pipeline"))
      return [this] { return runPipelineBench(pipeline_bench_args_, std::cout); };
    if (bench_->got_subcommand("e2e"))
      return [this] { return runE2eBench(e2e_bench_args_, std::cout); };
    if (bench_->got_subcommand("grpc"))
      return [this] { return runGrpcBench(grpc_bench_args_, std::cout); };
    if (bench_->got_subcommand("model"))
      return [this] { return runModelBench(model_bench_args_, std::cout); };
    if (bench_->got_subcommand("soak"))
      return [this] { return runSoakBench(soak_bench_args_, std::cout); };
    if (bench_->got_subcommand("binding"))
      return [this] { return runBindingBench(binding_bench_args_, std::cout); };
    if (bench_->got_subcommand("diloco"))
      return [this] { return runDilocoBench(diloco_bench_args_, std::cout); };
    if (bench_->got_subcommand("replan"))
      return [this] { return runReplanBench(replan_bench_args_, std::cout); };
    return {};
  }
#endif

  ModelCost priceModel(const JobSpec& job) override { return pluginModelCost(job); }

 private:
  // The engine verb the command line chose, if any.
  std::function<int()> engineVerb() {
    if (*train_) return [this] { return runTrainCommand(train_args_, std::cout); };
    if (*launch_) return [this] { return runLaunchCommand(launch_args_, std::cout); };
    if (*coordinator_)
      return [this] { return runCoordinatorCommand(coordinator_args_, std::cout); };
    if (*worker_) return [this] { return runWorkerCommand(worker_args_, std::cout); };
    if (*probe_) return [this] { return runProbeCommand(probe_args_, std::cout); };
    if (*eval_) return [this] { return runEvalCommand(eval_args_, std::cout); };
    if (*generate_) return [this] { return runGenerateCommand(generate_args_, std::cout); };
    if (*export_) return [this] { return runExportCommand(export_args_, std::cout); };
    return {};
  }

  // Each verb's subcommand (owned by the app) and the arguments it parses.
  CLI::App* train_ = nullptr;
  TrainArgs train_args_;
  CLI::App* launch_ = nullptr;
  LaunchArgs launch_args_;
  CLI::App* coordinator_ = nullptr;
  CoordinatorArgs coordinator_args_;
  CLI::App* worker_ = nullptr;
  WorkerArgs worker_args_;
  CLI::App* probe_ = nullptr;
  ProbeArgs probe_args_;
  CLI::App* eval_ = nullptr;
  EvalArgs eval_args_;
  CLI::App* generate_ = nullptr;
  GenerateArgs generate_args_;
  CLI::App* export_ = nullptr;
  ExportArgs export_args_;
  CLI::App* bench_ = nullptr;  // `geopipe bench`, the shared command line's
#ifdef GEOPIPE_WITH_BENCHMARKS
  PipelineBenchArgs pipeline_bench_args_;
  E2eBenchArgs e2e_bench_args_;
  GrpcBenchArgs grpc_bench_args_;
  ModelBenchArgs model_bench_args_;
  SoakBenchArgs soak_bench_args_;
  BindingBenchArgs binding_bench_args_;
  DilocoBenchArgs diloco_bench_args_;
  ReplanBenchArgs replan_bench_args_;
#endif
};

}  // namespace
}  // namespace geopipe::cli

int main(int argc, char** argv) {
  geopipe::cli::g_argv = argv;
  geopipe::cli::keepFreedMemoryForNextStep();
#ifndef GEOPIPE_WITH_BENCHMARKS
  // `geopipe [global options] bench NAME ...` for an engine benchmark.
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "bench") != 0) continue;
    for (const char* name : geopipe::cli::kEngineBenchmarks)
      if (std::strcmp(argv[i + 1], name) == 0) return geopipe::cli::runBenchBinary(name);
    break;
  }
#endif
  geopipe::cli::Engine engine;
  return geopipe::cli::runCommandLine(argc, argv, &engine);
}
