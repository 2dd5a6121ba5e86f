// One-screen, human-readable summary of a checked job spec (what `geopipe
// validate` prints on success).
#pragma once

#include <string>

#include "geopipe/job_spec.h"

namespace geopipe::config {

std::string formatJobSummary(const JobSpec& job);

}  // namespace geopipe::config
