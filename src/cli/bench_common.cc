// Shared pieces of the benchmark commands.
#include "src/cli/bench_common.h"

#include <cstdio>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "geopipe/error.h"
#include "src/common/text.h"

namespace geopipe::cli {

std::string benchTinyJobYaml(const std::string& name) {
  return "name: " + name + R"(
model: {preset: tiny}
data: {kind: synthetic, num_samples: 1024}
training:
  global_batch: 16
  micro_batch: 2
  optimizer: {kind: adamw, lr: 1.0e-3}
topology:
  sites: [{name: local, devices: 8, intra: {latency_ms: 0, bandwidth_gbps: 100}}]
transport: {emulate_links: false}
)";
}

std::string formatNumber(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), format, v);
  return buf;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

BenchJob loadBenchJob(const std::string& job_file, const std::string& builtin, int steps,
                      int stages, int replicas) {
  namespace fs = std::filesystem;
  std::string text = builtin;
  BenchJob job;
  job.dir = fs::temp_directory_path().string();
  if (!job_file.empty()) {
    std::ifstream in(job_file);
    if (!in) GEOPIPE_THROW(IoError, "cannot read job file '", common::printable(job_file), "'");
    text.assign(std::istreambuf_iterator<char>(in), {});
    job.dir = fs::absolute(job_file).parent_path().string();
  }
  job.root = YAML::Load(text);
  // The benchmarks print their own tables, not the progress line.
  GEOPIPE_CHECK(!job.root["logging"] || !job.root["logging"]["tensorboard_dir"], ConfigError,
                "logging.tensorboard_dir is set in '", job_file,
                "' but geopipe bench does not write TensorBoard files (train, launch and "
                "coordinator do): remove it from the job for the benchmark");
  GEOPIPE_CHECK(!job.root["logging"] || !job.root["logging"]["trace_dir"], ConfigError,
                "logging.trace_dir is set in '", job_file,
                "' but geopipe bench writes no timeline traces (train, launch and worker do): "
                "remove it from the job for the benchmark");
  GEOPIPE_CHECK(!job.root["logging"] || !job.root["logging"]["metrics_port"], ConfigError,
                "logging.metrics_port is set in '", job_file,
                "' but geopipe bench serves no metrics endpoint (train, launch and coordinator "
                "do): remove it from the job for the benchmark");
  job.root["training"]["steps"] = steps;
  job.root["parallelism"]["pipeline_stages"] = stages;
  job.root["parallelism"]["data_parallel"] = replicas;
  job.root["checkpoint"] = YAML::Node(YAML::NodeType::Map);
  job.root["logging"] = YAML::Node(YAML::NodeType::Map);
  return job;
}

TempJobFile::TempJobFile(const std::string& dir, const std::string& name,
                         const YAML::Node& root)
    : path_((std::filesystem::path(dir) /
             ("." + name + "-" + std::to_string(::getpid()) + ".yaml"))
                .string()) {
  YAML::Emitter emit;
  emit << root;
  std::ofstream f(path_);
  if (!f) GEOPIPE_THROW(IoError, "cannot write '", common::printable(path_), "'");
  f << emit.c_str() << "\n";
}

TempJobFile::~TempJobFile() {
  std::error_code ec;
  std::filesystem::remove(path_, ec);
}

}  // namespace geopipe::cli
