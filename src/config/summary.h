// One-screen, human-readable summary of a checked job spec (what `geopipe
// validate` prints on success).
#pragma once

#include <string>

#include "geopipe/job_spec.h"
#include "geopipe/topology.h"

namespace geopipe::config {

std::string formatJobSummary(const JobSpec& job);

// What `geopipe validate TOPOLOGY.yaml` prints: the name, devices per GPU
// kind, sites, and the slowest and the longest link.
std::string formatTopologySummary(const TopologySpec& topology);

}  // namespace geopipe::config
