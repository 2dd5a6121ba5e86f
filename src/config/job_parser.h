// The job parser's internals beyond the public geopipe/job_file.h.
#pragma once

#include <string>

#include "geopipe/job_file.h"  // loadJobFile, parseJobString
#include "geopipe/job_spec.h"

namespace geopipe::config {

// The model presets `model.preset` accepts, in the order documented.
const char* const* modelPresetNames();

}  // namespace geopipe::config
