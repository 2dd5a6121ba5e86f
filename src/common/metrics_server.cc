// Prometheus text and its HTTP endpoint; the only file that includes
// httplib.h.
#include "src/common/metrics_server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstring>

#include "geopipe/error.h"

namespace geopipe::common {

std::string escapeLabelValue(const std::string& value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

namespace {

// HELP text escapes backslash and line feed (not quotes).
std::string escapeHelp(const std::string& help) {
  std::string out;
  for (char c : help) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

std::string formatSampleValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof(buf), value);
  return std::string(buf, r.ptr);
}

void PrometheusText::family(const std::string& name, const std::string& type,
                            const std::string& help) {
  family_ = name;
  text_ += "# HELP " + name + " " + escapeHelp(help) + "\n";
  text_ += "# TYPE " + name + " " + type + "\n";
}

void PrometheusText::sample(const MetricLabels& labels, double value) {
  text_ += family_;
  if (!labels.empty()) {
    text_ += '{';
    for (size_t i = 0; i < labels.size(); ++i) {
      if (i > 0) text_ += ',';
      text_ += labels[i].first + "=\"" + escapeLabelValue(labels[i].second) + "\"";
    }
    text_ += '}';
  }
  text_ += ' ' + formatSampleValue(value) + '\n';
}

MetricsServer::MetricsServer(const std::string& host, int port, const std::string& field)
    : server_(std::make_unique<httplib::Server>()) {
  // httplib's default sets SO_REUSEPORT, which lets a second process bind a
  // port already listened on (and take half its requests): SO_REUSEADDR
  // only, so a port in use is an error.
  server_->set_socket_options([](int sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  // A scrape is one small GET: two threads, short timeouts.
  server_->new_task_queue = [] { return new httplib::ThreadPool(2); };
  server_->set_read_timeout(5, 0);
  server_->set_write_timeout(5, 0);
  server_->set_payload_max_length(4096);
  const auto handler = [this](const httplib::Request&, httplib::Response& res) {
    std::string body;
    {
      std::lock_guard<std::mutex> lock(mu_);
      body = text_;
    }
    res.set_content(body, "text/plain; version=0.0.4; charset=utf-8");
  };
  server_->Get("/metrics", handler);
  server_->Get("/", handler);
  errno = 0;
  if (port == 0) {
    port_ = server_->bind_to_any_port(host);
  } else if (server_->bind_to_port(host, port)) {
    port_ = port;
  }
  if (port_ <= 0) {
    const int err = errno;
    GEOPIPE_THROW(ConfigError, field, ": cannot serve the metrics endpoint on ", host, ":", port,
                  " (", err != 0 ? std::strerror(err) : "bind failed",
                  "): the port is in use or the host is not an address of this machine; choose "
                  "another port (or 0 to turn the endpoint off)");
  }
  thread_ = std::thread([this] { server_->listen_after_bind(); });
  // stop() does nothing before the loop runs: wait for it, so the
  // destructor cannot miss it.
  for (int i = 0; i < 5000 && !server_->is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

MetricsServer::~MetricsServer() {
  server_->stop();
  if (thread_.joinable()) thread_.join();
}

void MetricsServer::publish(std::string text) {
  std::lock_guard<std::mutex> lock(mu_);
  text_ = std::move(text);
}

}  // namespace geopipe::common
