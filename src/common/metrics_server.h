// The live metrics endpoint (logging.metrics_port): the Prometheus text
// exposition format (version 0.0.4) and the HTTP server that serves it
// (Debian's cpp-httplib). Torch-free: the CLI renders the numbers.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace httplib {
class Server;
}

namespace geopipe::common {

using MetricLabels = std::vector<std::pair<std::string, std::string>>;

// Builds Prometheus text: a family's "# HELP" and "# TYPE" lines, then its
// samples "name{label="value",...} value". Label names and metric names are
// the caller's constants; label values are escaped (escapeLabelValue).
class PrometheusText {
 public:
  // Starts the family `name`; `type` is "gauge" or "counter".
  void family(const std::string& name, const std::string& type, const std::string& help);
  // A sample of the current family.
  void sample(const MetricLabels& labels, double value);
  void sample(double value) { sample({}, value); }
  const std::string& text() const { return text_; }

 private:
  std::string text_;
  std::string family_;
};

// A label value as the format wants it: backslash, double quote and line
// feed become \\, \" and \n.
std::string escapeLabelValue(const std::string& value);
// A sample value: the shortest text that reads back as `value`; NaN, +Inf
// and -Inf as the format spells them.
std::string formatSampleValue(double value);

// Serves the newest published text at GET /metrics (and /) on host:port,
// from a thread of its own, until destroyed. publish() may be called from
// any thread; a request gets the whole of one published text.
class MetricsServer {
 public:
  // ConfigError naming `field` (the job field that set the port) when
  // host:port cannot be bound (in use, or not an address of this host).
  // Port 0 takes a free one (port() tells which).
  MetricsServer(const std::string& host, int port, const std::string& field);
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  void publish(std::string text);
  int port() const { return port_; }

 private:
  std::unique_ptr<httplib::Server> server_;
  std::mutex mu_;
  std::string text_;  // guarded by mu_
  int port_ = 0;
  std::thread thread_;
};

}  // namespace geopipe::common
