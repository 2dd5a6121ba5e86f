// Pieces the benchmark commands share: the built-in tiny job they time and
// the median of a run's step times.
#pragma once

#include <string>
#include <vector>

namespace geopipe::cli {

// The built-in benchmark job as YAML: the tiny GPT on synthetic data,
// global batch 16 in micro-batches of 2, links not emulated. `name` is the
// job's name.
std::string benchTinyJobYaml(const std::string& name);

// Median of v (the upper one for an even count); 0 for an empty v.
double median(std::vector<double> v);

}  // namespace geopipe::cli
