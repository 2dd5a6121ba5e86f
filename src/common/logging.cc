// Logging set-up on top of spdlog.
#include "src/common/logging.h"

#include <spdlog/spdlog.h>

#include "geopipe/error.h"

namespace geopipe::common {

void setLogLevel(const std::string& level) {
  auto parsed = spdlog::level::from_str(level);
  // from_str maps unknown names to `off`; only accept `off` when asked for.
  if (parsed == spdlog::level::off && level != "off") {
    GEOPIPE_THROW(ConfigError, "unknown log level '", level,
                  "': expected trace, debug, info, warn, error or off");
  }
  spdlog::set_level(parsed);
  spdlog::set_pattern("[%H:%M:%S.%e] [%^%l%$] %v");
}

namespace {
std::string& pinned() {
  static std::string level;
  return level;
}
}  // namespace

void pinLogLevel() {
  pinned() = spdlog::level::to_string_view(spdlog::get_level()).data();
  if (pinned() == "warning") pinned() = "warn";
}

std::string pinnedLogLevel() { return pinned(); }

void applyJobLogLevel(const std::string& level) {
  if (pinned().empty()) setLogLevel(level);
}

}  // namespace geopipe::common
