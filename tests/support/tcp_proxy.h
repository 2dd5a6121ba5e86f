// A TCP forwarder on loopback for one link of a test: it delays every byte
// by a fixed time in each direction (added latency without netem), and it
// can cut the connections it carries and refuse new ones for a while (a
// network blip or an outage between two processes that stay alive).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace geopipe::testing {

class TcpProxy {
 public:
  // Forwards 127.0.0.1:port() to 127.0.0.1:`upstream_port`, each chunk
  // `delay` after it was read.
  explicit TcpProxy(int upstream_port,
                    std::chrono::milliseconds delay = std::chrono::milliseconds(0))
      : upstream_port_(upstream_port), delay_(delay) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (listen_fd_ < 0 || ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), len) != 0 ||
        ::listen(listen_fd_, 64) != 0 ||
        ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      throw std::runtime_error("TcpProxy: cannot listen on loopback");
    }
    port_ = ntohs(a.sin_port);
    accept_ = std::thread([this] { acceptLoop(); });
  }
  ~TcpProxy() {
    stop_ = true;
    accept_.join();
    for (auto& p : pipes_) p->wake();
    for (auto& t : threads_) t.join();
    for (int fd : fds_) ::close(fd);
    ::close(listen_fd_);
  }
  TcpProxy(const TcpProxy&) = delete;
  TcpProxy& operator=(const TcpProxy&) = delete;

  int port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

  // Breaks every connection carried so far (both ends see it closed); new
  // ones are forwarded as before. Returns how many it cut.
  int cutAll() {
    std::lock_guard<std::mutex> lock(fds_mu_);
    for (int fd : fds_) ::shutdown(fd, SHUT_RDWR);
    const int n = static_cast<int>(fds_.size()) / 2 - cut_;
    cut_ = static_cast<int>(fds_.size()) / 2;
    return n;
  }
  // While refusing, a new connection is closed as soon as it is accepted
  // (a host that cannot be reached).
  void setRefusing(bool refusing) { refusing_ = refusing; }
  // Connections accepted and forwarded so far.
  int connections() const {
    std::lock_guard<std::mutex> lock(fds_mu_);
    return static_cast<int>(fds_.size()) / 2;
  }

 private:
  using Clock = std::chrono::steady_clock;
  // One direction of one connection: a reader queues what it reads with
  // its due time; a writer sends it when due.
  struct Pipe {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<std::pair<Clock::time_point, std::string>> queue;
    bool closed = false;
    void wake() {
      std::lock_guard<std::mutex> lock(mu);
      closed = true;
      cv.notify_all();
    }
  };

  static int connectTo(int port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(port));
    if (fd >= 0 && ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) return fd;
    if (fd >= 0) ::close(fd);
    return -1;
  }

  // True when `fd` is readable; false after 50 ms or once stopping.
  bool readable(int fd) const {
    pollfd p{fd, POLLIN, 0};
    return !stop_ && ::poll(&p, 1, 50) > 0;
  }

  void acceptLoop() {
    while (!stop_) {
      if (!readable(listen_fd_)) continue;
      const int client = ::accept(listen_fd_, nullptr, nullptr);
      if (client < 0) continue;
      const int server = refusing_ ? -1 : connectTo(upstream_port_);
      if (server < 0) {
        ::close(client);
        continue;
      }
      {
        std::lock_guard<std::mutex> lock(fds_mu_);
        fds_.push_back(client);
        fds_.push_back(server);
      }
      forward(client, server);
      forward(server, client);
    }
  }

  void forward(int from, int to) {
    pipes_.push_back(std::make_unique<Pipe>());
    Pipe* pipe = pipes_.back().get();
    threads_.emplace_back([this, from, pipe] {
      char buf[65536];
      while (!stop_) {
        if (!readable(from)) continue;
        const ssize_t n = ::read(from, buf, sizeof buf);
        std::lock_guard<std::mutex> lock(pipe->mu);
        if (n <= 0) {
          pipe->closed = true;
          pipe->cv.notify_all();
          return;
        }
        pipe->queue.emplace_back(Clock::now() + delay_, std::string(buf, static_cast<size_t>(n)));
        pipe->cv.notify_all();
      }
    });
    threads_.emplace_back([this, to, pipe] {
      std::unique_lock<std::mutex> lock(pipe->mu);
      while (!stop_) {
        if (pipe->queue.empty()) {
          if (pipe->closed) break;
          pipe->cv.wait_for(lock, std::chrono::milliseconds(50));
          continue;
        }
        const auto due = pipe->queue.front().first;
        if (Clock::now() < due) {
          pipe->cv.wait_until(lock, due);
          continue;
        }
        const std::string chunk = std::move(pipe->queue.front().second);
        pipe->queue.pop_front();
        lock.unlock();
        size_t sent = 0;
        while (sent < chunk.size()) {
          const ssize_t n = ::send(to, chunk.data() + sent, chunk.size() - sent, MSG_NOSIGNAL);
          if (n <= 0) break;
          sent += static_cast<size_t>(n);
        }
        lock.lock();
        if (sent < chunk.size()) break;
      }
      ::shutdown(to, SHUT_WR);
    });
  }

  const int upstream_port_;
  const std::chrono::milliseconds delay_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<bool> refusing_{false};
  std::thread accept_;
  // Touched by the accept thread only, and by the destructor once it ended.
  std::vector<std::unique_ptr<Pipe>> pipes_;
  mutable std::mutex fds_mu_;  // fds_ is also read by cutAll()
  std::vector<int> fds_;       // client, server of each connection
  int cut_ = 0;                // connections cut already
  std::vector<std::thread> threads_;
};

}  // namespace geopipe::testing
