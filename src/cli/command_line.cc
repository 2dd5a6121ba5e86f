// The `geopipe` command line (command_line.h): the verbs that need no
// LibTorch are defined and dispatched here, the engine's come from the
// binary that has them.
#include "src/cli/command_line.h"

#include <spdlog/spdlog.h>

#include <unistd.h>

#include <iostream>
#include <string>
#include <vector>

#include "geopipe/error.h"
#include "geopipe/version.h"
#include "src/cli/commands.h"
#include "src/cli/option_checks.h"
#include "src/common/blas_check.h"
#include "src/common/logging.h"
#include "src/common/strings.h"
#include "src/common/text.h"
#include "src/config/diagnostics.h"

namespace geopipe::cli {
namespace {

// Runs fn, mapping exceptions to exit codes (docs/cli.md#exit-codes).
template <typename Fn>
int guarded(Fn fn) {
  try {
    return fn();
  } catch (const config::SpecError& e) {
    std::cerr << e.what() << "\n";
    return static_cast<int>(ExitCode::INVALID_SPEC);
  } catch (const ConfigError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return static_cast<int>(ExitCode::INVALID_SPEC);
  } catch (const InfeasibleError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return static_cast<int>(ExitCode::INFEASIBLE);
  } catch (const IoError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return static_cast<int>(ExitCode::IO_ERROR);
  } catch (const Error& e) {
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
std::string unknownCommand(CLI::App& app, int argc, char** argv, bool lite) {
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
      const std::string close = common::closestMatch(word, names);
      return "unknown command '" + said + word + "'; " +
             (close.empty() ? "the commands are " + common::join(names, ", ")
                            : "did you mean '" + said + close + "'?") +
             (lite ? " (geopipe-lite has only the commands that need no LibTorch; train, "
                     "launch and the engine's other commands and benchmarks are in geopipe)"
                   : "");
    }
    if (next->get_require_subcommand_min() == 0) return "";
    said += word + " ";
    at = next;
  }
  return "";
}

// geopipe-lite's pricing of model.plugin: a job without a plugin is priced
// as a GPT of its shape, as in geopipe; one with a plugin is refused, as
// the check it needs (the plugin loaded, its model built) needs LibTorch.
ModelCost refusePluginModel(const JobSpec& job) {
  if (job.model.plugin.empty()) return {};
  GEOPIPE_THROW(ConfigError, "model.plugin: geopipe-lite does not support model plugins: loading '",
                common::printable(job.model.plugin),
                "' and building its model needs LibTorch, which this torch-free binary does "
                "not link; check and plan this job with the full geopipe binary");
}

}  // namespace

int runCommandLine(int argc, char** argv, EngineVerbs* engine) {
  const bool lite = engine == nullptr;
  CLI::App app{lite ? "geopipe-lite: the commands of geopipe that need no LibTorch (the "
                      "hostile-input build's binary; train and the engine's commands are in "
                      "geopipe)"
                    : "geopipe: pipeline-parallel LLM training over slow, uneven networks"};
  app.require_subcommand(1);
  // Global options (--log-level) are taken after the command too: every
  // subcommand passes what it does not know to its parent.
  app.fallthrough();
  std::string log_level = "info";
  auto* log_level_option =
      app.add_option("--log-level", log_level,
                     "trace, debug, info, warn, error or off (wins over the job's "
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
  addSetOption(*validate, validate_overrides);
  addPluginOption(*validate, validate_overrides);
  bool validate_print = false;
  validate->add_flag("--print", validate_print,
                     "print each valid job as the YAML it resolves to (every default filled "
                     "in, --set applied), which validates again");

  // plan
  PlanArgs plan_args;
  auto* plan = app.add_subcommand(
      "plan", "Run the scheduler: allocation, predicted step time, gain over baselines");
  addPlanOptions(*plan, plan_args);

  // train, launch, coordinator, worker, probe, eval, generate, export
  if (engine) engine->addVerbs(app);

  // certs
  CertsArgs certs_args;
  auto* certs = app.add_subcommand(
      "certs", "Create a CA, per-host TLS certificates and a join token for multi-host jobs");
  addCertsOptions(*certs, certs_args);

  // tokenize
  TokenizeArgs tokenize_args;
  auto* tokenize = app.add_subcommand(
      "tokenize", "Tokenize text or JSON-lines files into a token file (nanoGPT's train.bin)");
  addTokenizeOptions(*tokenize, tokenize_args);

  // bench
  SchedulerBenchArgs scheduler_bench_args;
  auto* bench = app.add_subcommand("bench", "Reproducible benchmarks");
  bench->require_subcommand(1);
  addSchedulerBenchOptions(*bench, scheduler_bench_args);
  if (engine) engine->addBenchmarks(*bench);

  // version details
  auto* version = app.add_subcommand("version", "Print version, protocol and BLAS in use");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (const std::string unknown = unknownCommand(app, argc, argv, lite); !unknown.empty()) {
      std::cerr << "error: " << unknown << "\n";
      return static_cast<int>(ExitCode::USAGE);
    }
    int rc = app.exit(e);
    return rc == 0 ? 0 : static_cast<int>(ExitCode::USAGE);
  }

  int rc = guarded([&] {
    common::setLogLevel(log_level);
    if (log_level_option->count() > 0) common::pinLogLevel();
    return 0;
  });
  if (rc != 0) return static_cast<int>(ExitCode::USAGE);

  // model.plugin: priced by the engine, which builds the plugin's model;
  // geopipe-lite cannot build it and says so rather than pass it unchecked.
  const ModelPricing price_model = [engine](const JobSpec& job) {
    return engine ? engine->priceModel(job) : refusePluginModel(job);
  };

  if (*validate) {
    return guarded([&] {
      // model.plugin loaded as train loads it: a plugin that cannot be
      // loaded fails validate with train's error.
      return runValidate(validate_files, validate_quiet, std::cout, std::cerr, validate_overrides,
                         validate_print, [&](const JobSpec& job) { price_model(job); });
    });
  }
  if (*plan) {
    return guarded([&] { return runPlanCommand(plan_args, std::cout, price_model); });
  }
  if (*certs) {
    return guarded([&] { return runCertsCommand(certs_args, std::cout); });
  }
  if (*tokenize) {
    return guarded([&] {
      return runTokenizeCommand(tokenize_args, std::cout, std::cerr, ::isatty(STDERR_FILENO) == 1);
    });
  }
  if (*bench && bench->got_subcommand("scheduler")) {
    return guarded([&] { return runSchedulerBenchCommand(scheduler_bench_args, std::cout); });
  }
  if (engine) {
    if (std::function<int()> verb = engine->parsedVerb()) return guarded(verb);
  }
  if (*version) {
    auto blas = common::detectBlas();
    std::cout << "geopipe " << GEOPIPE_VERSION_STRING << "\n"
              << "wire protocol: geopipe.v1 (version " << GEOPIPE_PROTOCOL_VERSION << ")\n"
              << "BLAS: " << blas.detail << " [" << blas.library << "]"
              << (blas.optimized ? "" : "  <-- SLOW") << "\n";
    return 0;
  }
  return 0;
}

}  // namespace geopipe::cli
