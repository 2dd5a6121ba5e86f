// Job files into a JobSpec: the public entry point for programs that embed
// geopipe (the CLI uses the same functions). Typed fields with defaults,
// unknown keys rejected, cross-field checks (batch divisibility, enough
// devices, connected topology, data present); every problem reported at
// once with file, line, column and a fix.
#pragma once

#include <string>

#include "geopipe/job_spec.h"

namespace geopipe::config {

// Reads and checks a job file. Relative paths inside it (topology, data,
// checkpoint dir) are resolved against the job file's directory. Throws
// SpecError (a ConfigError) listing every problem, IoError if unreadable.
JobSpec loadJobFile(const std::string& path);

// Same from YAML text; `source` names it in messages and `base_dir` resolves
// relative paths.
JobSpec parseJobString(const std::string& yaml, const std::string& source,
                       const std::string& base_dir);

}  // namespace geopipe::config
