// The progress line, JSON-lines metrics and the final summary shared by
// `geopipe launch` and `geopipe coordinator` (same fields as `train`).
#pragma once

#include <fstream>
#include <ostream>
#include <string>

#include "geopipe/job_spec.h"
#include "geopipe/trainer.h"

namespace geopipe::cli {

class ProgressDisplay {
 public:
  // Keeps a copy of job. Opens job.logging.metrics_file (appending when `append`, for a resumed
  // run); IoError if it cannot be written.
  ProgressDisplay(const JobSpec& job, std::ostream& out, bool append);
  // One step: a JSON line, and a progress line every logging.every_steps.
  void onStep(const StepMetrics& m);
  // "done after N steps in S s: final loss, tokens/s, wire vs raw".
  void summary(const TrainResult& r, bool interrupted);

 private:
  JobSpec job_;
  std::ostream& out_;
  std::ofstream metrics_;
  double elapsed_ = 0;
  int64_t first_step_ = -1;
  uint64_t raw_ = 0, wire_ = 0;
};

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
