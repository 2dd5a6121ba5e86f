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

// For a job that names no topology, what geopipe assumes in its place
// ("none given; assuming a local one: 4 devices, one site, ..."), which
// `validate`, `train` and `launch` print after "topology: "; "" when the job
// names a topology.
std::string assumedTopologyNote(const TopologySpec& topology);

}  // namespace geopipe::config
