// `geopipe plan JOB.yaml`: run the scheduler on a parsed job and print the
// allocation, predicted step time, breakdown and baselines (text or JSON).
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>

#include "geopipe/job_spec.h"

namespace geopipe::cli {

// Command-line overrides of the job's `scheduler:` section.
struct PlanOverrides {
  std::optional<std::string> algorithm;       // --algorithm
  std::optional<std::string> cost_model;      // --cost-model
  std::optional<uint64_t> seed;               // --seed
  std::optional<double> budget_seconds;       // --budget (seconds)
  std::optional<int64_t> budget_evaluations;  // --budget-evaluations
  bool json = false;                          // --json
};

// Plans `job` (with overrides applied) and prints it to `out`. Returns the
// exit code (0). Throws geopipe::ConfigError / InfeasibleError on user
// errors (unknown algorithm, too few devices, memory, disconnected sites).
int runPlan(const JobSpec& job, const PlanOverrides& overrides,
            std::ostream& out);

}  // namespace geopipe::cli
