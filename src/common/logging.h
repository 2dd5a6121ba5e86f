// Logging set-up: one spdlog logger for the process, level from the CLI or
// the job spec.
#pragma once

#include <string>

namespace geopipe::common {

// Sets the global log level from its name (trace, debug, info, warn, error,
// off). Throws ConfigError naming the allowed values on anything else.
void setLogLevel(const std::string& level);

}  // namespace geopipe::common
