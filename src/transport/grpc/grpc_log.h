// gRPC's own log lines, routed through spdlog and rate-limited per source
// line: a failed TLS handshake logs one ERROR line inside gRPC, so a flood
// of garbage connections (before any authentication) would otherwise write
// one line each to stderr. Torch-free, gRPC-free header.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>

namespace geopipe::transport {

// Installs the sink (gpr_set_log_function) once per process; later calls do
// nothing. Called by every gRPC server and client geopipe creates.
void installGrpcLogging();

// What the sink does with one gRPC line, separated for tests: at most one
// line per source location (`site`) per `window`; the first line after a
// quiet window says how many were suppressed. Returns the text to log, or
// "" to drop it. Not thread-safe by itself (the sink holds a lock).
class LogThrottle {
 public:
  explicit LogThrottle(std::chrono::steady_clock::duration window) : window_(window) {}
  std::string admit(const std::string& site, const std::string& message,
                    std::chrono::steady_clock::time_point now);

 private:
  struct Site {
    std::chrono::steady_clock::time_point last;
    uint64_t suppressed = 0;
  };
  std::chrono::steady_clock::duration window_;
  std::map<std::string, Site> sites_;
};

}  // namespace geopipe::transport
