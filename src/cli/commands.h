// The `geopipe` subcommands as functions (main.cc only parses and dispatches),
// so tests can run them without a process.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "geopipe/job_spec.h"

namespace geopipe::cli {

// Process exit codes (docs/cli.md#exit-codes).
enum class ExitCode : int {
  OK = 0,
  INVALID_SPEC = 1,    // a job/topology/argument value is wrong
  USAGE = 2,           // the command line itself is wrong
  INFEASIBLE = 3,      // valid spec, but no plan can satisfy it
  IO_ERROR = 4,        // a file could not be read or written
  RUNTIME_ERROR = 5,   // a peer, timeout or protocol failure at run time
  INTERNAL_ERROR = 70, // a bug: an exception geopipe did not expect
};

// A check of a parsed job's model that needs LibTorch (the binary gives
// pluginModelCost): throws ConfigError naming the field and the fix.
using ModelCheck = std::function<void(const JobSpec&)>;

// The cost of a parsed job's model as the binary prices it: `geopipe`
// builds model.plugin's model (pluginModelCost); geopipe-lite, which has
// no LibTorch, refuses a job with a plugin (command_line.h). Empty: priced
// as a GPT of its shape.
using ModelPricing = std::function<ModelCost(const JobSpec&)>;

// `geopipe validate JOB...`: prints a summary per valid job and every
// problem of each invalid one. Returns INVALID_SPEC if any job is invalid.
// `overrides` (--set path=value) apply to every job file; with `print`, a
// valid job is printed as the YAML it resolves to (every default filled in,
// config::resolvedJobYaml) instead of its summary. `check_model` runs on
// every parsed job (the binary: model.plugin loaded as train loads it).
int runValidate(const std::vector<std::string>& files, bool quiet, std::ostream& out,
                std::ostream& err, const std::vector<std::string>& overrides = {},
                bool print = false, const ModelCheck& check_model = {});

// A job's model.plugin loaded and its model built as train builds it
// (model.name looked up among the plugin's models, the ModelDef and its
// cost checked); returns the cost the ModelDef gives (empty: none, so it is
// priced as a GPT). A job without model.plugin builds nothing and gets an
// empty cost: its custom model is registered by the user's own program.
// ConfigError naming the plugin when it cannot be loaded (as train).
// Needs LibTorch (plan_bench.cc).
ModelCost pluginModelCost(const JobSpec& job);

struct PlanArgs {
  std::string job;                         // job YAML file
  bool json = false;                       // machine-readable output
  std::optional<std::string> algorithm;    // overrides scheduler.algorithm
  std::optional<std::string> cost_model;   // overrides scheduler.cost_model
  std::optional<uint64_t> seed;            // overrides scheduler.seed
  std::optional<double> budget_seconds;    // overrides scheduler.budget.seconds
  std::optional<int64_t> budget_evaluations;  // overrides scheduler.budget.evaluations
  std::vector<std::string> overrides;         // --set path=value, applied before checking
};
void addPlanOptions(CLI::App& plan, PlanArgs& args);
// The job's model is priced by `price_model` (a plugin's model by the cost
// its ModelDef gives, as train and launch price it).
int runPlanCommand(const PlanArgs& args, std::ostream& out, const ModelPricing& price_model);

struct TrainArgs {
  std::string job;                 // job YAML file
  std::optional<int> steps;        // overrides training.steps
  std::string metrics_file;        // overrides logging.metrics_file
  bool resume = false;             // continue from the newest committed checkpoint
  bool overwrite = false;          // clear an earlier run's checkpoints in checkpoint.dir
  std::string plot_file;           // loss curve as SVG; empty = none
  std::vector<std::string> overrides;  // --set path=value, applied before checking
};
void addTrainOptions(CLI::App& train, TrainArgs& args);
// Exit code 130 when interrupted by Ctrl-C or SIGTERM (the steps done are
// reported; with checkpoint.dir a checkpoint after the last of them).
int runTrainCommand(const TrainArgs& args, std::ostream& out);

struct PipelineBenchArgs {
  std::string job;                 // job YAML; empty = the built-in tiny GPT job
  int steps = 20;                  // timed steps per run (after 2 warm-up steps)
  int stages = 2;                  // pipeline stages of the staged run
  int replicas = 1;                // data-parallel replicas of the staged run
};

struct E2eBenchArgs {
  bool quick = false;                   // 2 bandwidths, 100-step quality runs, 4 timed steps
  std::string out_dir = "bench-out/e2e";  // results.md, results.json, *.svg
  int quality_steps = 300;              // steps of each loss-quality run
  int timed_steps = 8;                  // timed steps per step-time run
  std::vector<double> mbps = {5, 20, 100};  // emulated WAN bandwidths
  std::string worldwide_topology = "examples/topologies/dtfm-worldwide.yaml";
  double placement_scale = 0.02;        // bandwidth scale of the placement runs
  std::string parts = "compression,placement";  // which grids to run
};
int runE2eBench(const E2eBenchArgs& args, std::ostream& out);

struct DilocoBenchArgs {
  bool quick = false;                            // H = 4 only, short loss runs
  std::vector<int> inner_steps = {10, 50, 100};  // DiLoCo's H per row
  int quality_steps = 400;                       // steps of each loss run (equal tokens)
  int timed_steps = 8;                           // timed steps of the every-step rows
  double scale = 0.02;                           // bandwidth scale of the world-wide links
  std::string worldwide_topology = "examples/topologies/dtfm-worldwide.yaml";
  std::string out_dir = "bench-out/diloco";
};
void addDilocoBenchOptions(CLI::App& bench, DilocoBenchArgs& args);
int runDilocoBench(const DilocoBenchArgs& args, std::ostream& out);

struct ReplanBenchArgs {
  int scenario = 1;                         // scheduler::paperScenario (8 sites of 8)
  std::vector<int> devices = {16, 32, 64};  // its first 16, 32, 64 devices
  double seconds = 5.0;                     // re-plan budget (and the current plan's)
  double scratch_factor = 6.0;              // the from-scratch plan's budget / seconds
  uint64_t seed = 1;                        // search seed
  bool quick = false;                       // 16 devices, at most 1 s: a smoke test
  bool measured = false;                    // train the plans of one re-plan instead
};
void addReplanBenchOptions(CLI::App& bench, ReplanBenchArgs& args);
int runReplanBench(const ReplanBenchArgs& args, std::ostream& out);
// --measured: the degraded plan, the re-plan and a from-scratch plan of the
// end-to-end test (a)'s job, trained in-process over emulated links
// (bench_replan_measured.cc).
int runReplanMeasured(const ReplanBenchArgs& args, std::ostream& out);

struct SchedulerBenchArgs {
  double seconds = 2.0;             // search budget per paper scenario
  double synthetic_seconds = 60.0;  // budget per synthetic topology
  bool quick = false;               // skip the 1024-device topology
                                    // (--hard: only 8 to 32 devices)
  bool hard = false;                // the hard-instance table
  uint64_t seed = 1;                // search seed
  int threads = 1;                  // search threads
};
// `geopipe bench scheduler` as a subcommand of `bench` (no LibTorch).
void addSchedulerBenchOptions(CLI::App& bench, SchedulerBenchArgs& args);
int runSchedulerBenchCommand(const SchedulerBenchArgs& args, std::ostream& out);

// `geopipe bench pipeline` and `geopipe bench e2e` as subcommands of `bench`.
void addPipelineBenchOptions(CLI::App& bench, PipelineBenchArgs& args);
int runPipelineBench(const PipelineBenchArgs& args, std::ostream& out);
void addE2eBenchOptions(CLI::App& bench, E2eBenchArgs& args);

struct CertsArgs {
  std::string dir;                 // where ca.pem, ca-key.pem, token and host files go
  std::vector<std::string> hosts;  // NAME[,ALT...]: one certificate per entry
  int days = 365;                  // validity of the host certificates
  bool force = false;              // overwrite existing host files
};
void addCertsOptions(CLI::App& app, CertsArgs& args);
// `geopipe certs DIR --host NAME...`: a CA (made once, reused after), a
// certificate per host and a join token; prints the job's security section.
int runCertsCommand(const CertsArgs& args, std::ostream& out);

struct TokenizeArgs {
  std::string tokenizer;            // tokenizer folder (docs/data.md)
  std::vector<std::string> inputs;  // text files (a document each) or .jsonl (one per line)
  std::string out;                  // the token file; out + ".val" with val_fraction > 0
  double val_fraction = 0.0;        // [0, 1): share of documents held out, the last ones
  std::string dtype = "uint16";     // uint16 | uint32
};
void addTokenizeOptions(CLI::App& app, TokenizeArgs& args);
// `geopipe tokenize`: writes the token file (docs/data.md, "Token files");
// progress on `err` (a bar redrawn in place when err_is_tty, else a line
// every 10 s), documents, tokens and MB/s on `out`.
int runTokenizeCommand(const TokenizeArgs& args, std::ostream& out, std::ostream& err,
                       bool err_is_tty);

}  // namespace geopipe::cli
