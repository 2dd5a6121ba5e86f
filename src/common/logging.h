// Logging set-up: one spdlog logger for the process, level from the CLI or
// the job spec.
#pragma once

#include <string>

namespace geopipe::common {

// Sets the global log level from its name (trace, debug, info, warn, error,
// off). Throws ConfigError naming the allowed values on anything else.
void setLogLevel(const std::string& level);

// The command line's --log-level wins over a job's logging.level: main()
// pins the level when the flag was given.
void pinLogLevel();
// The pinned level's name, or "" when none was pinned.
std::string pinnedLogLevel();
// Applies a job's logging.level unless the command line pinned one.
void applyJobLogLevel(const std::string& level);

}  // namespace geopipe::common
