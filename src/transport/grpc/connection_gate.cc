#include "src/transport/grpc/connection_gate.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/server_interceptor.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "geopipe/error.h"

namespace geopipe::transport {
namespace {

using Clock = std::chrono::steady_clock;

// At most one line about refused connections per window.
constexpr auto kRefusalLogWindow = std::chrono::seconds(10);
// Closed and timed-out connections are found by a scan at most this often,
// and at once (but not more than every kMinRescan) when a limit is reached.
constexpr auto kRescan = std::chrono::milliseconds(100);
constexpr auto kMinRescan = std::chrono::milliseconds(5);

std::string stripBrackets(std::string host) {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  return host;
}

// "1.2.3.4" or "::1" for an address; an IPv4-mapped IPv6 address as IPv4.
std::string hostText(const sockaddr_storage& a) {
  char text[INET6_ADDRSTRLEN] = {0};
  if (a.ss_family == AF_INET) {
    const auto& v4 = reinterpret_cast<const sockaddr_in&>(a);
    ::inet_ntop(AF_INET, &v4.sin_addr, text, sizeof text);
    return text;
  }
  if (a.ss_family == AF_INET6) {
    const auto& v6 = reinterpret_cast<const sockaddr_in6&>(a);
    if (IN6_IS_ADDR_V4MAPPED(&v6.sin6_addr)) {
      in_addr v4{};
      std::memcpy(&v4, &v6.sin6_addr.s6_addr[12], 4);
      ::inet_ntop(AF_INET, &v4, text, sizeof text);
    } else {
      ::inet_ntop(AF_INET6, &v6.sin6_addr, text, sizeof text);
    }
    return text;
  }
  return "";
}

int portOf(const sockaddr_storage& a) {
  if (a.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(a).sin_port);
  if (a.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(a).sin6_port);
  return 0;
}

// Binds and listens on one address; returns the socket, or -1 with errno.
int listenOn(const sockaddr* address, socklen_t length, bool dual_stack) {
  const int fd = ::socket(address->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  const int one = 1;
  const int zero = 0;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (address->sa_family == AF_INET6)
    ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, dual_stack ? &zero : &one, sizeof one);
  if (::bind(fd, address, length) != 0 || ::listen(fd, SOMAXCONN) != 0) {
    const int saved = errno;
    ::close(fd);
    errno = saved;
    return -1;
  }
  return fd;
}

int boundPort(int fd) {
  sockaddr_storage a{};
  socklen_t length = sizeof a;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &length) != 0) return 0;
  return portOf(a);
}

struct Pending {
  int fd = -1;
  dev_t dev = 0;
  ino_t ino = 0;
  std::string host;
  Clock::time_point accepted;
};

}  // namespace

bool isWildcardHost(const std::string& host) {
  return host.empty() || host == "0.0.0.0" || host == "::" || host == "[::]" || host == "*";
}

std::string connectionKey(const std::string& grpc_peer) {
  const auto scheme = grpc_peer.find(':');
  if (scheme == std::string::npos) return "";
  const std::string kind = grpc_peer.substr(0, scheme);
  if (kind != "ipv4" && kind != "ipv6") return "";
  std::string rest;
  for (size_t i = scheme + 1; i < grpc_peer.size(); ++i) {
    if (grpc_peer.compare(i, 3, "%5B") == 0 || grpc_peer.compare(i, 3, "%5D") == 0 ||
        grpc_peer.compare(i, 3, "%5b") == 0 || grpc_peer.compare(i, 3, "%5d") == 0) {
      i += 2;
      continue;
    }
    if (grpc_peer[i] == '[' || grpc_peer[i] == ']') continue;
    rest += grpc_peer[i];
  }
  const auto colon = rest.rfind(':');
  if (colon == std::string::npos || colon == 0) return "";
  std::string host = rest.substr(0, colon);
  const std::string port = rest.substr(colon + 1);
  // "::ffff:1.2.3.4" is the IPv4 peer 1.2.3.4.
  const std::string mapped = "::ffff:";
  if (host.size() > mapped.size() && host.compare(0, mapped.size(), mapped) == 0 &&
      host.find('.') != std::string::npos)
    host = host.substr(mapped.size());
  return host + "|" + port;
}

struct ConnectionGate::Shared {
  std::string what;
  ConnectionLimits limits;
  int port = 0;
  std::vector<int> listeners;
  int wake = -1;
  std::thread thread;
  std::atomic<bool> stopping{false};
  Handoff server_handoff;
  Handoff handoff;

  mutable std::mutex mu;
  std::map<std::string, Pending> pending;  // by connectionKey
  std::map<std::string, int> per_host;
  std::atomic<int> pending_count{0};
  Clock::time_point last_scan{};
  ConnectionGateStats counts;
  // Refusals not yet logged, and when the last line was written.
  uint64_t unlogged_total = 0;
  uint64_t unlogged_per_address = 0;
  std::string last_refused_host;
  Clock::time_point last_log{};
  bool logged_once = false;
  Clock::time_point last_starved_log{};  // out of descriptors
  bool starved_logged = false;

  void forget(std::map<std::string, Pending>::iterator it) {
    auto h = per_host.find(it->second.host);
    if (h != per_host.end() && --h->second <= 0) per_host.erase(h);
    pending.erase(it);
    pending_count.store(static_cast<int>(pending.size()));
  }

  // Drops what is no longer in set-up: timed out, or its socket closed (the
  // descriptor is gone or now names another socket).
  void scan(Clock::time_point now) {
    last_scan = now;
    for (auto it = pending.begin(); it != pending.end();) {
      const Pending& p = it->second;
      struct stat st {};
      const bool open = ::fstat(p.fd, &st) == 0 && st.st_dev == p.dev && st.st_ino == p.ino;
      auto next = std::next(it);
      if (!open || now - p.accepted >= limits.handshake_timeout) forget(it);
      it = next;
    }
  }

  void setUp(const std::string& peer) {
    if (pending_count.load() == 0) return;
    const std::string key = connectionKey(peer);
    std::lock_guard<std::mutex> lock(mu);
    auto it = pending.find(key);
    if (it != pending.end()) forget(it);
  }

  // Logs refusals, at most one line per window (the first at once).
  void logRefusals(Clock::time_point now) {
    if (unlogged_total + unlogged_per_address == 0) return;
    if (logged_once && now - last_log < kRefusalLogWindow) return;
    spdlog::warn(
        "{}: closed {} new connection(s) before their set-up: {} over the {} in set-up allowed "
        "per source address (the last from {}), {} over the {} allowed in total; connections in "
        "set-up end after {} ms (docs/operations.md, 'Limits')",
        what, unlogged_total + unlogged_per_address, unlogged_per_address,
        limits.max_pending_per_address, last_refused_host, unlogged_total, limits.max_pending,
        limits.handshake_timeout.count());
    unlogged_total = unlogged_per_address = 0;
    last_log = now;
    logged_once = true;
  }

  // Admits or closes one accepted connection.
  void admit(int listener, int fd) {
    sockaddr_storage peer{};
    socklen_t length = sizeof peer;
    struct stat st {};
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &length) != 0 ||
        ::fstat(fd, &st) != 0) {
      ::close(fd);
      return;
    }
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    Pending p;
    p.fd = fd;
    p.dev = st.st_dev;
    p.ino = st.st_ino;
    p.host = hostText(peer);
    p.accepted = Clock::now();
    const std::string key = p.host + "|" + std::to_string(portOf(peer));
    bool admitted = false;
    {
      std::lock_guard<std::mutex> lock(mu);
      auto host_count = [&] {
        auto h = per_host.find(p.host);
        return h == per_host.end() ? 0 : h->second;
      };
      auto over = [&] {
        return static_cast<int>(pending.size()) >= limits.max_pending ||
               host_count() >= limits.max_pending_per_address;
      };
      const auto since = p.accepted - last_scan;
      if (since >= kRescan || (over() && since >= kMinRescan)) scan(p.accepted);
      auto old = pending.find(key);
      if (old != pending.end()) forget(old);
      if (static_cast<int>(pending.size()) >= limits.max_pending) {
        ++counts.refused_total;
        ++unlogged_total;
        last_refused_host = p.host;
      } else if (host_count() >= limits.max_pending_per_address) {
        ++counts.refused_per_address;
        ++unlogged_per_address;
        last_refused_host = p.host;
      } else {
        ++counts.admitted;
        ++per_host[p.host];
        pending.emplace(key, p);
        pending_count.store(static_cast<int>(pending.size()));
        admitted = true;
      }
      logRefusals(p.accepted);
    }
    if (!admitted) {
      ::close(fd);
      return;
    }
    handoff(listener, fd);
  }

  void acceptLoop() {
    std::vector<pollfd> polled;
    for (int fd : listeners) polled.push_back({fd, POLLIN, 0});
    polled.push_back({wake, POLLIN, 0});
    while (!stopping.load()) {
      for (auto& p : polled) p.revents = 0;
      const int ready = ::poll(polled.data(), polled.size(), 1000);
      if (stopping.load()) break;
      if (ready <= 0) {
        std::lock_guard<std::mutex> lock(mu);
        logRefusals(Clock::now());
        continue;
      }
      for (size_t i = 0; i + 1 < polled.size(); ++i) {
        if (!(polled[i].revents & POLLIN)) continue;
        for (;;) {
          const int fd = ::accept4(polled[i].fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (fd >= 0) {
            admit(polled[i].fd, fd);
            continue;
          }
          if (errno == EINTR || errno == ECONNABORTED) continue;
          if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            const auto now = Clock::now();
            if (!starved_logged || now - last_starved_log >= kRefusalLogWindow) {
              spdlog::warn(
                  "{}: cannot accept a connection: {} (raise the file-descriptor "
                  "limit, ulimit -n)",
                  what, std::strerror(errno));
              last_starved_log = now;
              starved_logged = true;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
          }
          break;
        }
      }
    }
  }
};

namespace {

// Tells the gate that a call arrived, so its connection is set up.
class SetUpInterceptor : public grpc::experimental::Interceptor {
 public:
  SetUpInterceptor(std::shared_ptr<ConnectionGate::Shared> gate,
                   grpc::experimental::ServerRpcInfo* info)
      : gate_(std::move(gate)), info_(info) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::POST_RECV_INITIAL_METADATA) &&
        info_->server_context() != nullptr)
      gate_->setUp(info_->server_context()->peer());
    methods->Proceed();
  }

 private:
  std::shared_ptr<ConnectionGate::Shared> gate_;
  grpc::experimental::ServerRpcInfo* info_;
};

class SetUpInterceptorFactory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit SetUpInterceptorFactory(std::shared_ptr<ConnectionGate::Shared> gate)
      : gate_(std::move(gate)) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new SetUpInterceptor(gate_, info);
  }

 private:
  std::shared_ptr<ConnectionGate::Shared> gate_;
};

}  // namespace

ConnectionGate::ConnectionGate(const std::string& address, ConnectionLimits limits,
                               std::string what)
    : shared_(std::make_shared<Shared>()) {
  GEOPIPE_CHECK(limits.max_pending >= 1 && limits.max_pending_per_address >= 1 &&
                    limits.handshake_timeout.count() >= 1,
                ConfigError, what, ": connection limits must be at least 1 (max_pending ",
                limits.max_pending, ", max_pending_per_address ", limits.max_pending_per_address,
                ", handshake timeout ", limits.handshake_timeout.count(), " ms)");
  shared_->what = std::move(what);
  shared_->limits = limits;
  const auto colon = address.rfind(':');
  GEOPIPE_CHECK(colon != std::string::npos, IoError, shared_->what, " cannot listen on '", address,
                "': expected host:port");
  const std::string host = stripBrackets(address.substr(0, colon));
  const std::string port_text = address.substr(colon + 1);
  int port = 0;
  try {
    size_t used = 0;
    port = std::stoi(port_text, &used);
    if (used != port_text.size() || port < 0 || port > 65535) throw std::out_of_range("port");
  } catch (const std::exception&) {
    GEOPIPE_THROW(IoError, shared_->what, " cannot listen on '", address, "': the port '",
                  port_text, "' is not a number in [0, 65535]");
  }

  // The addresses to listen on: a wildcard host's dual-stack [::] (or
  // 0.0.0.0 without IPv6), else every address the host resolves to.
  std::vector<std::pair<sockaddr_storage, socklen_t>> addresses;
  bool dual_stack = false;
  if (isWildcardHost(host)) {
    sockaddr_storage a{};
    auto& v6 = reinterpret_cast<sockaddr_in6&>(a);
    v6.sin6_family = AF_INET6;
    v6.sin6_addr = in6addr_any;
    addresses.emplace_back(a, static_cast<socklen_t>(sizeof(sockaddr_in6)));
    dual_stack = true;
  } else {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    const int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &found);
    GEOPIPE_CHECK(rc == 0, IoError, shared_->what, " cannot listen on '", address,
                  "': cannot resolve '", host, "' (", ::gai_strerror(rc),
                  "); give a local address or hostname of this machine");
    std::vector<std::string> seen;
    for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
      sockaddr_storage s{};
      std::memcpy(&s, a->ai_addr, a->ai_addrlen);
      const std::string text = hostText(s);
      if (std::find(seen.begin(), seen.end(), text) != seen.end()) continue;
      seen.push_back(text);
      addresses.emplace_back(s, a->ai_addrlen);
    }
    ::freeaddrinfo(found);
  }
  // Every address on one port. An address whose family this machine lacks
  // is skipped; one whose port is taken fails the gate (a client dialling
  // it would reach another process), except that with port 0 the search
  // for a port free on every address starts again.
  int error = 0;
  for (int attempt = 0; attempt < 16; ++attempt) {
    int chosen = port;
    error = 0;
    for (auto [a, length] : addresses) {
      if (a.ss_family == AF_INET) reinterpret_cast<sockaddr_in&>(a).sin_port = htons(chosen);
      if (a.ss_family == AF_INET6) reinterpret_cast<sockaddr_in6&>(a).sin6_port = htons(chosen);
      int fd = listenOn(reinterpret_cast<const sockaddr*>(&a), length, dual_stack);
      if (fd < 0 && dual_stack && (errno == EAFNOSUPPORT || errno == EADDRNOTAVAIL)) {
        sockaddr_storage b{};
        auto& v4 = reinterpret_cast<sockaddr_in&>(b);
        v4.sin_family = AF_INET;
        v4.sin_addr.s_addr = htonl(INADDR_ANY);
        v4.sin_port = htons(chosen);
        fd = listenOn(reinterpret_cast<const sockaddr*>(&b), sizeof(sockaddr_in), false);
      }
      if (fd < 0) {
        if (errno == EAFNOSUPPORT || errno == EADDRNOTAVAIL) continue;
        error = errno;
        break;
      }
      shared_->listeners.push_back(fd);
      if (chosen == 0) chosen = boundPort(fd);  // the others share the first one's port
    }
    if (error == 0 && !shared_->listeners.empty()) {
      port = chosen;
      break;
    }
    for (int fd : shared_->listeners) ::close(fd);
    shared_->listeners.clear();
    if (error == 0) error = EADDRNOTAVAIL;
    if (port != 0 || error != EADDRINUSE) break;
  }
  GEOPIPE_CHECK(!shared_->listeners.empty() && port > 0, IoError, shared_->what,
                " cannot listen on '", address, "': ", std::strerror(error),
                " (address in use or not local?); choose another address or port");
  shared_->port = port;
  shared_->wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (shared_->wake < 0) {
    for (int fd : shared_->listeners) ::close(fd);
    GEOPIPE_THROW(IoError, shared_->what, ": eventfd: ", std::strerror(errno));
  }
}

ConnectionGate::~ConnectionGate() {
  stop();
  ::close(shared_->wake);
}

int ConnectionGate::port() const {
  return shared_->port;
}

void ConnectionGate::serve(grpc::ServerBuilder& builder,
                           std::shared_ptr<grpc::ServerCredentials> credentials) {
  std::shared_ptr<grpc::experimental::ExternalConnectionAcceptor> acceptor =
      builder.experimental().AddExternalConnectionAcceptor(
          grpc::ServerBuilder::experimental_type::ExternalConnectionType::FROM_FD,
          std::move(credentials));
  shared_->server_handoff = [acceptor](int listener, int fd) {
    grpc::experimental::ExternalConnectionAcceptor::NewConnectionParameters p;
    p.listener_fd = listener;
    p.fd = fd;
    // Only while the server runs: gRPC drops (and leaks) a connection
    // handed over before the server started or after it shut down, so
    // start() follows BuildAndStart and stop() precedes Shutdown.
    acceptor->HandleNewConnection(&p);
  };
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> creators;
  creators.push_back(std::make_unique<SetUpInterceptorFactory>(shared_));
  builder.experimental().SetInterceptorCreators(std::move(creators));
  builder.AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS,
                             static_cast<int>(shared_->limits.handshake_timeout.count()));
}

void ConnectionGate::start(Handoff handoff) {
  GEOPIPE_CHECK(!shared_->thread.joinable(), Error, shared_->what, ": the gate is started twice");
  shared_->handoff = handoff ? std::move(handoff) : shared_->server_handoff;
  GEOPIPE_CHECK(static_cast<bool>(shared_->handoff), Error, shared_->what,
                ": ConnectionGate::start without a handoff and without serve()");
  Shared* s = shared_.get();
  shared_->thread = std::thread([s] { s->acceptLoop(); });
}

void ConnectionGate::stop() {
  if (shared_->stopping.exchange(true)) return;
  const uint64_t one = 1;
  if (::write(shared_->wake, &one, sizeof one) < 0) {
    // The poll wakes within a second anyway.
  }
  if (shared_->thread.joinable()) shared_->thread.join();
  for (int fd : shared_->listeners) ::close(fd);
  shared_->listeners.clear();
}

void ConnectionGate::adopt(int fd) {
  GEOPIPE_CHECK(shared_->thread.joinable() && !shared_->stopping.load(), Error, shared_->what,
                ": ConnectionGate::adopt before start() or after stop()");
  // gRPC only records the listener of an external connection: none here.
  shared_->admit(-1, fd);
}

void ConnectionGate::setUp(const std::string& peer) {
  shared_->setUp(peer);
}

ConnectionGateStats ConnectionGate::stats() const {
  std::lock_guard<std::mutex> lock(shared_->mu);
  shared_->scan(Clock::now());
  ConnectionGateStats s = shared_->counts;
  s.pending = static_cast<int>(shared_->pending.size());
  return s;
}

}  // namespace geopipe::transport
