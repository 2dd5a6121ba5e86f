// The `geopipe` command line, written once for both binaries: global
// options, the verbs that need no LibTorch, exit codes and dispatch.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>

#include "geopipe/job_spec.h"

namespace geopipe::cli {

// The engine's verbs (train, launch, coordinator, worker, probe, eval,
// generate, export) and benchmarks (pipeline, e2e, grpc, ...), which need
// LibTorch. `geopipe` gives them to the command line (main.cc);
// geopipe-lite, the hostile-input build's torch-free binary (lite_main.cc),
// runs without them, so there they are unknown commands. Owned by the
// caller of runCommandLine; called on the main thread: addVerbs and
// addBenchmarks once before the parse, the rest after it.
class EngineVerbs {
 public:
  virtual ~EngineVerbs() = default;
  // Adds the engine's commands to `app` (after validate and plan).
  virtual void addVerbs(CLI::App& app) = 0;
  // Adds the engine's benchmarks to `bench` (after scheduler).
  virtual void addBenchmarks(CLI::App& bench) = 0;
  // The engine's command or benchmark that the parsed command line names,
  // to run (it writes to std::cout; its exceptions are mapped to exit codes
  // by the caller); empty when it names none of them.
  virtual std::function<int()> parsedVerb() = 0;
  // model.plugin's model built as train builds it, and its cost
  // (pluginModelCost): what validate checks and plan prices.
  virtual ModelCost priceModel(const JobSpec& job) = 0;
};

// Parses argv, runs the command it names and returns the process's exit
// code (docs/cli.md#exit-codes): every geopipe::Error becomes one readable
// message. `engine` null: geopipe-lite, whose validate and plan refuse a job
// with model.plugin (building a plugin's model needs LibTorch) instead of
// passing it unchecked.
int runCommandLine(int argc, char** argv, EngineVerbs* engine);

}  // namespace geopipe::cli
