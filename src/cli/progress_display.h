// The progress line, JSON-lines metrics and the final summary shared by
// `geopipe launch` and `geopipe coordinator` (same fields as `train`).
#pragma once

#include <chrono>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "geopipe/job_spec.h"
#include "geopipe/trainer.h"

namespace geopipe::cli {

class TensorBoardWriter;
}  // namespace geopipe::cli
namespace geopipe::common {
class MetricsServer;
}
namespace geopipe::cli {

// What a multi-process run knows beyond the steps (the coordinator's).
struct ClusterStatus {
  int workers_alive = 0;  // placed workers of the current generation
  int recoveries = 0;     // failures recovered from
};

// A tasklet's step time split for the plot and the endpoint: compute,
// pipeline bubble (fill and drain: the other stages' compute of one
// micro-batch, capped at the time it waited), and the rest of its time
// blocked on communication (network wait).
struct StepBreakdown {
  double compute = 0, bubble = 0, wait = 0;
};
// Per rank (replica * stages + stage) of m's *_by_rank; empty when m has none.
std::vector<StepBreakdown> stepBreakdownByRank(const StepMetrics& m, const JobSpec& job);

// The progress line, metrics file and TensorBoard scalars of a run; onStep is
// called from one thread (TrainerOptions::on_step / the coordinator's).
class ProgressDisplay {
 public:
  // Keeps a copy of job. Opens job.logging.metrics_file (appending when `append`, for a resumed
  // run); IoError if it cannot be written.
  // Opens a TensorBoard event file in job.logging.tensorboard_dir when set
  // (a new file per run: TensorBoard reads every file of the directory).
  ProgressDisplay(const JobSpec& job, std::ostream& out, bool append);
  ~ProgressDisplay();
  // One step: a JSON line (metricsRecord), and a progress line
  // (progressLine) every logging.every_steps, after an evaluation and after
  // the last step.
  void onStep(const StepMetrics& m);
  // "done after N steps in S s: final loss, tokens/s, wire vs raw".
  void summary(const TrainResult& r, bool interrupted);
  // Workers alive and recoveries for the endpoint (launch, coordinator);
  // call before onStep, from the same thread.
  void setClusterStatus(const ClusterStatus& status) { cluster_ = status; }
  // Writes `path` (--plot): the loss (and validation loss) per step above
  // the step time of the busiest tasklet split into compute, bubble and
  // network wait. Nothing when no step ran.
  void writePlot(const std::string& path);

 private:
  JobSpec job_;
  std::ostream& out_;
  using Clock = std::chrono::steady_clock;
  std::ofstream metrics_;
  std::unique_ptr<TensorBoardWriter> tensorboard_;  // scalars per step; null without
  Clock::time_point start_ = Clock::now();  // the elapsed time counts from here
  double step_seconds_ = 0;                 // this run's steps, for the ETA
  int64_t first_step_ = -1;
  uint64_t raw_ = 0, wire_ = 0;
  // The live endpoint (logging.metrics_port); null without.
  std::unique_ptr<common::MetricsServer> server_;
  std::optional<ClusterStatus> cluster_;  // set by launch and coordinator
  std::optional<double> val_loss_;        // the newest validation loss
  // Totals since this run started, for the endpoint's counters.
  uint64_t raw_by_kind_[3] = {0, 0, 0}, wire_by_kind_[3] = {0, 0, 0};
  std::vector<uint64_t> sent_total_, received_total_;
  std::map<std::pair<int, int>, uint64_t> link_sent_total_;  // (from, to) rank
  // The plot's series: (step, value).
  std::vector<std::pair<double, double>> loss_points_, val_points_;
  std::vector<std::pair<double, double>> compute_points_, bubble_points_, wait_points_,
      step_points_;
  // The endpoint's Prometheus text (docs/cli.md, "Live metrics endpoint")
  // after step m (nullptr: before the first step), published to server_.
  void publish(const StepMetrics* m);
  std::string exposition(const StepMetrics* m) const;
};

// The progress line of step m of `steps` (docs/cli.md, "Progress line"):
// step (1-based), loss, validation loss when evaluated, lr, global grad
// norm, tokens/s, the busiest tasklet's share of the step blocked on the
// network, peak RSS, elapsed and ETA as h:mm:ss. About 100 columns.
std::string progressLine(const StepMetrics& m, int steps, double elapsed_seconds,
                         double eta_seconds);

// The JSON-lines record of step m (docs/cli.md, "Metrics file"): "step" is
// 1-based like the progress line; "time" is `now` in ISO 8601 UTC with
// milliseconds and "unix_time" the same instant in seconds.
nlohmann::json metricsRecord(const StepMetrics& m, std::chrono::system_clock::time_point now);

// For a verb that takes a job but shows no progress (the benchmarks):
// ConfigError naming logging.tensorboard_dir, logging.trace_dir or
// logging.metrics_port when the job sets it, so the field is never silently
// ignored.
void refuseTensorBoardDir(const JobSpec& job, const std::string& verb);

// Where the final weights are (the newest committed checkpoint of
// job.checkpoint.dir), or a warning that none were saved; a warning too when
// that checkpoint is not of `last_step` (the run's last step, 1-based).
void printFinalWeights(std::ostream& out, const JobSpec& job, int64_t last_step);

// Before a run that does not --resume (train, launch, coordinator): refuses
// a job.checkpoint.dir holding an earlier run's checkpoints (ConfigError
// naming --resume and --overwrite), or with `overwrite` removes them and says
// so on `out` (runtime::prepareFreshCheckpointDir).
void claimCheckpointDir(std::ostream& out, const JobSpec& job, bool overwrite);

// "12.3 MB".
std::string humanBytesDecimal(double bytes);

}  // namespace geopipe::cli
