// Pieces the benchmark commands share: the built-in tiny job they time and
// the median of a run's step times.
#pragma once

#include <string>
#include <vector>

#include <yaml-cpp/yaml.h>

namespace geopipe::cli {

// The built-in benchmark job as YAML: the tiny GPT on synthetic data,
// global batch 16 in micro-batches of 2, links not emulated. `name` is the
// job's name.
std::string benchTinyJobYaml(const std::string& name);

// Median of v (the upper one for an even count); 0 for an empty v.
double median(std::vector<double> v);

// One number through a printf format ("%.3f"), for the benchmark tables.
std::string formatNumber(const char* format, double v);

// The job a launched benchmark runs, as a YAML tree: the user's file
// `job_file` when given, else `builtin`; with the bench's steps, stages and
// replicas, and no checkpoints or log files. `dir` is where a copy must be
// written so that the job's relative paths still resolve: the file's
// directory, else the temporary directory.
struct BenchJob {
  YAML::Node root;
  std::string dir;
};
BenchJob loadBenchJob(const std::string& job_file, const std::string& builtin, int steps,
                      int stages, int replicas);

// Writes `root` to DIR/.NAME-PID.yaml for the launcher to read and removes
// the file when destroyed. IoError if it cannot be written.
class TempJobFile {
 public:
  TempJobFile(const std::string& dir, const std::string& name, const YAML::Node& root);
  ~TempJobFile();
  TempJobFile(const TempJobFile&) = delete;
  TempJobFile& operator=(const TempJobFile&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace geopipe::cli
