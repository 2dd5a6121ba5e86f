// The `geopipe` command: validate, plan and benchmark jobs. Turns every
// geopipe::Error into one readable message and a documented exit code.
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <unistd.h>

#include <iostream>
#include <string>
#include <vector>

#include "geopipe/error.h"
#include "geopipe/version.h"
#include "src/cli/bench_binding.h"
#include "src/cli/commands.h"
#include "src/cli/distributed_commands.h"
#include "src/cli/model_commands.h"
#include "src/cli/option_checks.h"
#include "src/common/blas_check.h"
#include "src/common/logging.h"
#include "src/common/strings.h"
#include "src/config/diagnostics.h"

namespace {

using geopipe::cli::ExitCode;

// Runs fn, mapping exceptions to exit codes (docs/cli.md#exit-codes).
template <typename Fn>
int guarded(Fn fn) {
  try {
    return fn();
  } catch (const geopipe::config::SpecError& e) {
    std::cerr << e.what() << "\n";
    return static_cast<int>(ExitCode::INVALID_SPEC);
  } catch (const geopipe::ConfigError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return static_cast<int>(ExitCode::INVALID_SPEC);
  } catch (const geopipe::InfeasibleError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return static_cast<int>(ExitCode::INFEASIBLE);
  } catch (const geopipe::IoError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return static_cast<int>(ExitCode::IO_ERROR);
  } catch (const geopipe::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    spdlog::debug("raised at {}", e.location());
    return static_cast<int>(ExitCode::RUNTIME_ERROR);
  } catch (const std::exception& e) {
    std::cerr << "internal error: " << e.what()
              << "\nThis is a bug in geopipe; please report it with the command line.\n";
    return static_cast<int>(ExitCode::INTERNAL_ERROR);
  }
}

// The first word of the command line where a command (or a `bench`
// benchmark) belongs when it names none, as "unknown command 'trian'; did
// you mean 'train'?"; "" when the words are commands (the parse failed for
// another reason).
std::string unknownCommand(CLI::App& app, int argc, char** argv) {
  CLI::App* at = &app;
  std::string said;  // the commands so far, "bench "
  for (int i = 1; i < argc; ++i) {
    const std::string word = argv[i];
    if (word == "--") return "";
    if (word.rfind('-', 0) == 0) {  // an option of `at`; skip its value
      const CLI::Option* option = at->get_option_no_throw(word);
      if (option && option->get_type_size() > 0 && word.find('=') == std::string::npos) ++i;
      continue;
    }
    std::vector<std::string> names;
    CLI::App* next = nullptr;
    for (CLI::App* sub : at->get_subcommands([](CLI::App*) { return true; })) {
      names.push_back(sub->get_name());
      if (sub->get_name() == word) next = sub;
    }
    if (next == nullptr) {
      if (at->get_require_subcommand_min() == 0) return "";  // a positional argument
      const std::string close = geopipe::common::closestMatch(word, names);
      return "unknown command '" + said + word + "'; " +
             (close.empty() ? "the commands are " + geopipe::common::join(names, ", ")
                            : "did you mean '" + said + close + "'?");
    }
    if (next->get_require_subcommand_min() == 0) return "";
    said += word + " ";
    at = next;
  }
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"geopipe: pipeline-parallel LLM training over slow, uneven networks"};
  app.require_subcommand(1);
  // Global options (--log-level) are taken after the command too: every
  // subcommand passes what it does not know to its parent.
  app.fallthrough();
  std::string log_level = "info";
  auto* log_level_option = app.add_option(
      "--log-level", log_level, "trace, debug, info, warn, error or off (wins over the job's "
      "logging.level)");
  log_level_option->capture_default_str();
  app.set_version_flag("--version", std::string("geopipe ") + GEOPIPE_VERSION_STRING);

  // validate
  std::vector<std::string> validate_files;
  bool validate_quiet = false;
  auto* validate = app.add_subcommand(
      "validate", "Check job specs and their topologies, or topology files; list every problem");
  validate
      ->add_option("FILE", validate_files,
                   "job YAML file(s), or topology file(s) (a top level with sites and no "
                   "model)")
      ->required();
  validate->add_flag("-q,--quiet", validate_quiet, "print only problems");
  std::vector<std::string> validate_overrides;
  geopipe::cli::addSetOption(*validate, validate_overrides);
  geopipe::cli::addPluginOption(*validate, validate_overrides);
  bool validate_print = false;
  validate->add_flag("--print", validate_print,
                     "print each valid job as the YAML it resolves to (every default filled "
                     "in, --set applied), which validates again");

  // plan
  geopipe::cli::PlanArgs plan_args;
  auto* plan = app.add_subcommand(
      "plan", "Run the scheduler: allocation, predicted step time, gain over baselines");
  geopipe::cli::addPlanOptions(*plan, plan_args);

  // train
  geopipe::cli::TrainArgs train_args;
  auto* train = app.add_subcommand(
      "train", "Train in this process: tasklets as threads, links emulated per the topology");
  geopipe::cli::addTrainOptions(*train, train_args);

  // launch, coordinator, worker: tasklets as processes (src/distributed/)
  geopipe::cli::LaunchArgs launch_args;
  auto* launch = app.add_subcommand(
      "launch", "Train with one worker process per tasklet on this machine (gRPC on 127.0.0.1)");
  geopipe::cli::addLaunchOptions(*launch, launch_args);
  geopipe::cli::CoordinatorArgs coordinator_args;
  auto* coordinator = app.add_subcommand(
      "coordinator", "Coordinate a multi-host job: workers join, the job is planned and run");
  geopipe::cli::addCoordinatorOptions(*coordinator, coordinator_args);
  geopipe::cli::WorkerArgs worker_args;
  auto* worker = app.add_subcommand("worker", "Join a coordinator and run one tasklet");
  geopipe::cli::addWorkerOptions(*worker, worker_args);
  geopipe::cli::ProbeArgs probe_args;
  auto* probe = app.add_subcommand(
      "probe", "Measure latency and bandwidth between hosts and write a topology for them");
  geopipe::cli::addProbeOptions(*probe, probe_args);

  // model folders: eval, generate, export
  geopipe::cli::EvalArgs eval_args;
  auto* eval = app.add_subcommand(
      "eval", "Mean cross-entropy and perplexity of a model folder on a token file");
  geopipe::cli::addEvalOptions(*eval, eval_args);
  geopipe::cli::GenerateArgs generate_args;
  auto* generate = app.add_subcommand(
      "generate", "Continue a prompt with a model folder (greedy or sampled, KV cache)");
  geopipe::cli::addGenerateOptions(*generate, generate_args);
  geopipe::cli::ExportArgs export_args;
  auto* export_cmd = app.add_subcommand(
      "export", "Merge a checkpoint's tasklets into a Hugging Face model folder");
  geopipe::cli::addExportOptions(*export_cmd, export_args);

  // certs
  geopipe::cli::CertsArgs certs_args;
  auto* certs = app.add_subcommand(
      "certs", "Create a CA, per-host TLS certificates and a join token for multi-host jobs");
  geopipe::cli::addCertsOptions(*certs, certs_args);

  // tokenize
  geopipe::cli::TokenizeArgs tokenize_args;
  auto* tokenize = app.add_subcommand(
      "tokenize", "Tokenize text or JSON-lines files into a token file (nanoGPT's train.bin)");
  geopipe::cli::addTokenizeOptions(*tokenize, tokenize_args);

  // bench
  geopipe::cli::BenchArgs bench_args;
  auto* bench = app.add_subcommand("bench", "Reproducible benchmarks");
  bench->require_subcommand(1);
  geopipe::cli::addBenchSubcommands(*bench, bench_args);
  geopipe::cli::GrpcBenchArgs grpc_bench_args;
  geopipe::cli::addGrpcBenchOptions(*bench, grpc_bench_args);
  geopipe::cli::ModelBenchArgs model_bench_args;
  geopipe::cli::addModelBenchOptions(*bench, model_bench_args);
  geopipe::cli::SoakBenchArgs soak_bench_args;
  geopipe::cli::addSoakBenchOptions(*bench, soak_bench_args);
  geopipe::cli::BindingBenchArgs binding_bench_args;
  geopipe::cli::addBindingBenchOptions(*bench, binding_bench_args);
  geopipe::cli::DilocoBenchArgs diloco_bench_args;
  geopipe::cli::addDilocoBenchOptions(*bench, diloco_bench_args);
  geopipe::cli::ReplanBenchArgs replan_bench_args;
  geopipe::cli::addReplanBenchOptions(*bench, replan_bench_args);

  // version details
  auto* version = app.add_subcommand("version", "Print version, protocol and BLAS in use");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (const std::string unknown = unknownCommand(app, argc, argv); !unknown.empty()) {
      std::cerr << "error: " << unknown << "\n";
      return static_cast<int>(ExitCode::USAGE);
    }
    int rc = app.exit(e);
    return rc == 0 ? 0 : static_cast<int>(ExitCode::USAGE);
  }

  int rc = guarded([&] {
    geopipe::common::setLogLevel(log_level);
    if (log_level_option->count() > 0) geopipe::common::pinLogLevel();
    return 0;
  });
  if (rc != 0) return static_cast<int>(ExitCode::USAGE);

  if (*validate) {
    return guarded([&] {
      // model.plugin loaded as train loads it: a plugin that cannot be
      // loaded fails validate with train's error.
      return geopipe::cli::runValidate(
          validate_files, validate_quiet, std::cout, std::cerr, validate_overrides, validate_print,
          [](const geopipe::JobSpec& job) { geopipe::cli::pluginModelCost(job); });
    });
  }
  if (*plan) {
    return guarded([&] { return geopipe::cli::runPlanCommand(plan_args, std::cout); });
  }
  if (*train) {
    return guarded([&] { return geopipe::cli::runTrainCommand(train_args, std::cout); });
  }
  if (*launch) {
    return guarded([&] { return geopipe::cli::runLaunchCommand(launch_args, std::cout); });
  }
  if (*coordinator) {
    return guarded(
        [&] { return geopipe::cli::runCoordinatorCommand(coordinator_args, std::cout); });
  }
  if (*worker) {
    return guarded([&] { return geopipe::cli::runWorkerCommand(worker_args, std::cout); });
  }
  if (*probe) {
    return guarded([&] { return geopipe::cli::runProbeCommand(probe_args, std::cout); });
  }
  if (*eval) {
    return guarded([&] { return geopipe::cli::runEvalCommand(eval_args, std::cout); });
  }
  if (*generate) {
    return guarded([&] { return geopipe::cli::runGenerateCommand(generate_args, std::cout); });
  }
  if (*export_cmd) {
    return guarded([&] { return geopipe::cli::runExportCommand(export_args, std::cout); });
  }
  if (*certs) {
    return guarded([&] { return geopipe::cli::runCertsCommand(certs_args, std::cout); });
  }
  if (*tokenize) {
    return guarded([&] {
      return geopipe::cli::runTokenizeCommand(tokenize_args, std::cout, std::cerr,
                                              ::isatty(STDERR_FILENO) == 1);
    });
  }
  if (*bench && bench->got_subcommand("grpc")) {
    return guarded([&] { return geopipe::cli::runGrpcBench(grpc_bench_args, std::cout); });
  }
  if (*bench && bench->got_subcommand("model")) {
    return guarded([&] { return geopipe::cli::runModelBench(model_bench_args, std::cout); });
  }
  if (*bench && bench->got_subcommand("binding")) {
    return guarded([&] { return geopipe::cli::runBindingBench(binding_bench_args, std::cout); });
  }
  if (*bench && bench->got_subcommand("diloco")) {
    return guarded([&] { return geopipe::cli::runDilocoBench(diloco_bench_args, std::cout); });
  }
  if (*bench && bench->got_subcommand("replan")) {
    return guarded([&] { return geopipe::cli::runReplanBench(replan_bench_args, std::cout); });
  }
  if (*bench && bench->got_subcommand("soak")) {
    return guarded([&] { return geopipe::cli::runSoakBench(soak_bench_args, std::cout); });
  }
  if (*bench) {
    return guarded([&] { return geopipe::cli::runBenchCommand(*bench, bench_args, std::cout); });
  }
  if (*version) {
    auto blas = geopipe::common::detectBlas();
    std::cout << "geopipe " << GEOPIPE_VERSION_STRING << "\n"
              << "wire protocol: geopipe.v1 (version " << GEOPIPE_PROTOCOL_VERSION
              << ")\n"
              << "BLAS: " << blas.detail << " [" << blas.library << "]"
              << (blas.optimized ? "" : "  <-- SLOW") << "\n";
    return 0;
  }
  return 0;
}
