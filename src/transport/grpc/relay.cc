#include "src/transport/grpc/relay.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <list>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <utility>

#include "geopipe/error.h"
#include "src/security/token.h"

namespace geopipe::transport {
namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kMaxHeaderBytes = 8192;
constexpr const char* kDialBackVerb = "GEOPIPE-RELAY ";

// Waits until `fd` is readable (or writable); false at `deadline` or when
// `stopping` is set (checked every 200 ms).
bool waitFor(int fd, short events, Clock::time_point deadline, const std::atomic<bool>& stopping) {
  for (;;) {
    if (stopping.load()) return false;
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd, events, 0};
    const int rc = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 200)));
    if (rc > 0) return true;
    if (rc < 0 && errno != EINTR) return false;
  }
}

// Reads one header (up to and including "\r\n\r\n" for a CONNECT, or "\n"
// for a dial-back) a byte at a time, so that nothing after it is consumed:
// those bytes belong to the connection being relayed. "" on EOF, timeout or
// a header over kMaxHeaderBytes.
std::string readHeader(int fd, Clock::time_point deadline, const std::atomic<bool>& stopping) {
  std::string header;
  while (header.size() < kMaxHeaderBytes) {
    if (!waitFor(fd, POLLIN, deadline, stopping)) return "";
    char c = 0;
    const ssize_t n = ::recv(fd, &c, 1, 0);
    if (n == 0) return "";
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
      return "";
    }
    header.push_back(c);
    if (header.rfind(kDialBackVerb, 0) == 0 && c == '\n') return header;
    if (header.size() >= 4 && header.compare(header.size() - 4, 4, "\r\n\r\n") == 0) return header;
  }
  return "";
}

// Writes all of `data` (non-blocking socket); false on error or `deadline`.
bool writeAll(int fd, const char* data, size_t size, Clock::time_point deadline,
              const std::atomic<bool>& stopping) {
  while (size > 0) {
    const ssize_t n = ::send(fd, data, size, MSG_NOSIGNAL);
    if (n > 0) {
      data += n;
      size -= static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!waitFor(fd, POLLOUT, deadline, stopping)) return false;
      continue;
    }
    return false;
  }
  return true;
}

bool writeAll(int fd, const std::string& s, Clock::time_point deadline,
              const std::atomic<bool>& stopping) {
  return writeAll(fd, s.data(), s.size(), deadline, stopping);
}

}  // namespace

struct Relay::State {
  RelayOptions options;
  DialRequest dial;
  std::atomic<bool> stopping{false};

  mutable std::mutex mu;
  std::condition_variable cv;
  // CONNECTs waiting for their dial-back, by id: the dial-back's socket
  // once it arrived (-1 before).
  std::map<std::string, int> waiting;
  std::set<int> open_fds;  // every socket a handler holds, shut down by stop()
  struct Handler {
    std::thread thread;
    bool done = false;
  };
  std::list<Handler> handlers;
  int active = 0;  // handlers running
  RelayStats counts;
  std::atomic<uint64_t> bytes_forwarded{0};  // counted as they pass, not under `mu`

  void onConnection(int fd) {
    std::lock_guard<std::mutex> lock(mu);
    reapLocked();
    if (stopping.load() || active >= options.max_connections) {
      ++counts.refused;
      ::close(fd);
      return;
    }
    ++active;
    open_fds.insert(fd);
    handlers.emplace_back();
    Handler* h = &handlers.back();
    h->thread = std::thread([this, fd, h] {
      handle(fd);
      std::lock_guard<std::mutex> done_lock(mu);
      h->done = true;
      --active;
      cv.notify_all();
    });
  }

  void reapLocked() {
    for (auto it = handlers.begin(); it != handlers.end();) {
      if (it->done) {
        it->thread.join();
        it = handlers.erase(it);
      } else {
        ++it;
      }
    }
  }

  void closeFd(int fd) {
    {
      std::lock_guard<std::mutex> lock(mu);
      open_fds.erase(fd);
    }
    ::close(fd);
  }

  void refuse(int fd, const char* status) {
    writeAll(fd, std::string("HTTP/1.1 ") + status + "\r\n\r\n",
             Clock::now() + std::chrono::seconds(1), stopping);
    {
      std::lock_guard<std::mutex> lock(mu);
      ++counts.refused;
    }
    closeFd(fd);
  }

  void handle(int fd) {
    const auto deadline = Clock::now() + options.dial_timeout;
    const RelayRequest request = parseRelayRequest(readHeader(fd, deadline, stopping));
    if (request.kind == RelayRequest::Kind::DIAL_BACK) {
      std::lock_guard<std::mutex> lock(mu);
      auto it = waiting.find(request.id);
      if (it == waiting.end() || it->second >= 0) {
        ++counts.refused;
        open_fds.erase(fd);
        ::close(fd);
        return;
      }
      it->second = fd;  // the CONNECT's handler owns it from here
      cv.notify_all();
      return;
    }
    if (request.kind != RelayRequest::Kind::CONNECT) {
      refuse(fd, "400 Bad Request");
      return;
    }
    const int rank = request.rank;
    const std::string& target = request.target;
    const std::string id = security::randomToken();
    {
      std::lock_guard<std::mutex> lock(mu);
      waiting.emplace(id, -1);
    }
    if (!dial(rank, id)) {
      {
        std::lock_guard<std::mutex> lock(mu);
        waiting.erase(id);
      }
      refuse(fd, "503 Service Unavailable");
      return;
    }
    int back = -1;
    bool stopped = false;
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait_until(lock, deadline, [&] { return stopping.load() || waiting[id] >= 0; });
      back = waiting[id];
      waiting.erase(id);
      stopped = stopping.load();
      if (back < 0 && !stopped) ++counts.timed_out;
    }
    if (back < 0) {
      if (stopped) {
        closeFd(fd);
        return;
      }
      spdlog::warn("relay: the worker of rank {} did not dial back within {} ms for {}", rank,
                   options.dial_timeout.count(), target);
      writeAll(fd, "HTTP/1.1 504 Gateway Timeout\r\n\r\n", Clock::now() + std::chrono::seconds(1),
               stopping);
      closeFd(fd);
      return;
    }
    if (!writeAll(fd, "HTTP/1.1 200 Connection established\r\n\r\n",
                  Clock::now() + options.dial_timeout, stopping)) {
      closeFd(back);
      closeFd(fd);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      ++counts.connected;
      ++counts.open;
    }
    splice(fd, back);
    {
      std::lock_guard<std::mutex> lock(mu);
      --counts.open;
    }
    closeFd(back);
    closeFd(fd);
  }

  // Copies bytes both ways until both directions ended (an end of stream is
  // passed on as a half-close) or either side failed. Both sockets came
  // through the gate, which set TCP_NODELAY on them.
  void splice(int a, int b) {
    std::vector<char> buffer(size_t{256} << 10);
    bool open_ab = true;  // a -> b still flows
    bool open_ba = true;
    while ((open_ab || open_ba) && !stopping.load()) {
      pollfd p[2] = {{a, static_cast<short>(open_ab ? POLLIN : 0), 0},
                     {b, static_cast<short>(open_ba ? POLLIN : 0), 0}};
      const int rc = ::poll(p, 2, 200);
      if (rc < 0 && errno != EINTR) break;
      if (rc <= 0) continue;
      bool failed = false;
      for (int i = 0; i < 2 && !failed; ++i) {
        if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        const int from = i == 0 ? a : b;
        const int to = i == 0 ? b : a;
        bool& open = i == 0 ? open_ab : open_ba;
        if (!open) continue;
        const ssize_t n = ::recv(from, buffer.data(), buffer.size(), 0);
        if (n > 0) {
          // A slow reader stalls this pair only; a dead one fails it after
          // the keepalive of the gRPC link notices (the deadline is far).
          if (!writeAll(to, buffer.data(), static_cast<size_t>(n),
                        Clock::now() + std::chrono::hours(24), stopping)) {
            failed = true;
            break;
          }
          bytes_forwarded.fetch_add(static_cast<uint64_t>(n), std::memory_order_relaxed);
        } else if (n == 0) {
          ::shutdown(to, SHUT_WR);
          open = false;
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
          failed = true;
        }
      }
      if (failed) break;
    }
  }
};

Relay::Relay(const std::string& address, DialRequest dial, RelayOptions options)
    : state_(std::make_shared<State>()), gate_(address, options.limits, "the relay") {
  GEOPIPE_CHECK(options.max_connections >= 1, ConfigError,
                "relay: max_connections must be at least 1, not ", options.max_connections);
  state_->options = options;
  state_->dial = std::move(dial);
  std::shared_ptr<State> state = state_;
  gate_.start([state](int, int fd) { state->onConnection(fd); });
}

Relay::~Relay() {
  stop();
}

int Relay::port() const {
  return gate_.port();
}

void Relay::stop() {
  gate_.stop();
  if (state_->stopping.exchange(true)) return;
  std::list<State::Handler> handlers;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    for (int fd : state_->open_fds) ::shutdown(fd, SHUT_RDWR);
    state_->cv.notify_all();
    handlers.swap(state_->handlers);
  }
  for (auto& h : handlers) h.thread.join();
  std::lock_guard<std::mutex> lock(state_->mu);
  // Dial-backs that arrived for a CONNECT that gave up.
  for (auto& [id, fd] : state_->waiting)
    if (fd >= 0) ::close(fd);
  state_->waiting.clear();
}

RelayStats Relay::stats() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  RelayStats s = state_->counts;
  s.bytes_forwarded = state_->bytes_forwarded.load();
  return s;
}

namespace {

std::pair<std::string, std::string> splitHostPort(const std::string& address) {
  const auto colon = address.rfind(':');
  if (colon == std::string::npos) return {address, ""};
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  return {host, address.substr(colon + 1)};
}

}  // namespace

int dialRelay(const std::string& relay_address, const std::string& id,
              std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  const auto [host, port] = splitHostPort(relay_address);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &found);
  if (rc != 0) {
    GEOPIPE_THROW(IoError, "relay ", relay_address, ": cannot resolve '", host,
                  "': ", ::gai_strerror(rc));
  }
  std::string last_error = "no address";
  const std::atomic<bool> never{false};
  for (addrinfo* ai = found; ai != nullptr; ai = ai->ai_next) {
    const int fd = ::socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      last_error = std::strerror(errno);
      continue;
    }
    bool connected = ::connect(fd, ai->ai_addr, ai->ai_addrlen) == 0;
    if (!connected && errno == EINPROGRESS && waitFor(fd, POLLOUT, deadline, never)) {
      int error = 0;
      socklen_t length = sizeof error;
      ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length);
      connected = error == 0;
      if (!connected) last_error = std::strerror(error);
    } else if (!connected) {
      last_error = errno == EINPROGRESS ? "timed out" : std::strerror(errno);
    }
    if (connected && writeAll(fd, std::string(kDialBackVerb) + id + "\n", deadline, never)) {
      ::freeaddrinfo(found);
      return fd;  // the peer service's gate sets TCP_NODELAY when it adopts it
    }
    if (connected) last_error = "the relay closed the connection";
    ::close(fd);
  }
  ::freeaddrinfo(found);
  GEOPIPE_THROW(IoError, "cannot dial the relay at ", relay_address, ": ", last_error);
}

RelayRequest parseRelayRequest(const std::string& header) {
  RelayRequest r;
  const std::string dial_back = kDialBackVerb;
  if (header.rfind(dial_back, 0) == 0) {
    if (header.size() <= dial_back.size() + 1 || header.back() != '\n') return r;
    r.id = header.substr(dial_back.size(), header.size() - dial_back.size() - 1);
    if (r.id.find_first_of(" \r\n") != std::string::npos) return {};
    r.kind = RelayRequest::Kind::DIAL_BACK;
    return r;
  }
  // "CONNECT NAME:ID HTTP/1.x\r\n..." (gRPC's HTTP CONNECT handshaker).
  const std::string verb = "CONNECT ";
  if (header.rfind(verb, 0) != 0) return r;
  const auto end = header.find(' ', verb.size());
  if (end == std::string::npos || header.compare(end, 6, " HTTP/") != 0) return r;
  const std::string target = header.substr(verb.size(), end - verb.size());
  const auto colon = target.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 >= target.size() ||
      target.size() - colon - 1 > 6)
    return r;
  int id = 0;
  for (size_t i = colon + 1; i < target.size(); ++i) {
    const char c = target[i];
    if (c < '0' || c > '9') return r;
    id = id * 10 + (c - '0');
  }
  if (id < 1 || id > 100000) return r;
  r.kind = RelayRequest::Kind::CONNECT;
  r.rank = id - 1;
  r.target = target;
  return r;
}

PeerRoute parsePeerRoute(const std::string& address) {
  const std::string via = " via ";
  const auto at = address.find(via);
  if (at == std::string::npos) return {address, ""};
  return {address.substr(0, at), address.substr(at + via.size())};
}

std::string relayTarget(const std::string& name, int rank) {
  const bool v6 = name.find(':') != std::string::npos && name.front() != '[';
  return (v6 ? "[" + name + "]" : name) + ":" + std::to_string(rank + 1);
}

std::string viaRelay(const std::string& target, const std::string& relay) {
  return target + " via " + relay;
}

std::string relayedAddress(const std::string& name, int rank, const std::string& relay) {
  return viaRelay(relayTarget(name, rank), relay);
}

}  // namespace geopipe::transport
