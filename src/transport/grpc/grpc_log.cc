#include "src/transport/grpc/grpc_log.h"

#include <grpc/support/log.h>
#include <spdlog/spdlog.h>

#include <mutex>

#include "geopipe/error.h"

namespace geopipe::transport {
namespace {

// At most one line per gRPC source line per window.
constexpr auto kLogWindow = std::chrono::seconds(10);
// The map of sites is bounded: gRPC has a few hundred log sites.
constexpr size_t kMaxSites = 4096;

std::mutex& sinkMutex() {
  static std::mutex mu;
  return mu;
}

LogThrottle& throttle() {
  static LogThrottle t(kLogWindow);
  return t;
}

void sink(gpr_log_func_args* args) {
  const std::string site = detail::concat(args->file ? args->file : "?", ":", args->line);
  std::string text;
  {
    std::lock_guard<std::mutex> lock(sinkMutex());
    text = throttle().admit(site, args->message ? args->message : "",
                            std::chrono::steady_clock::now());
  }
  if (text.empty()) return;
  switch (args->severity) {
    case GPR_LOG_SEVERITY_ERROR:
      spdlog::warn("grpc: {}", text);
      break;
    case GPR_LOG_SEVERITY_INFO:
      spdlog::info("grpc: {}", text);
      break;
    default:
      spdlog::debug("grpc: {}", text);
      break;
  }
}

}  // namespace

std::string LogThrottle::admit(const std::string& site, const std::string& message,
                               std::chrono::steady_clock::time_point now) {
  auto it = sites_.find(site);
  if (it == sites_.end()) {
    if (sites_.size() >= kMaxSites) sites_.clear();
    sites_.emplace(site, Site{now, 0});
    return message;
  }
  Site& s = it->second;
  if (now - s.last < window_) {
    s.suppressed += 1;
    return "";
  }
  std::string text = message;
  if (s.suppressed > 0) {
    text += detail::concat(" (and ", s.suppressed, " more like it in the last ",
                           std::chrono::duration_cast<std::chrono::seconds>(now - s.last).count(),
                           " s)");
  }
  s.last = now;
  s.suppressed = 0;
  return text;
}

void installGrpcLogging() {
  static std::once_flag once;
  std::call_once(once, [] { gpr_set_log_function(&sink); });
}

}  // namespace geopipe::transport
