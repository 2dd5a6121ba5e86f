// Shared pieces of the benchmark commands.
#include "src/cli/bench_common.h"

#include <algorithm>

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

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace geopipe::cli
