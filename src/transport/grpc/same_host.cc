// The same-host path of the gRPC transport (see same_host.h).
#include "src/transport/grpc/same_host.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <new>
#include <string_view>
#include <system_error>

#include "geopipe/error.h"
#include "src/security/token.h"
#include "src/transport/completion.h"

namespace geopipe::transport {
namespace {

// A local peer answers within microseconds; one that does not within this
// is not worth holding the first send for.
constexpr int kHandshakeMs = 2000;
constexpr uint32_t kData = 1;
constexpr uint32_t kGoodbye = 2;

struct FrameHeader {
  uint32_t kind = kData;
  uint32_t channel = 0;
  int64_t step = 0;
  int32_t micro_batch = 0;
  int32_t index = 0;
  uint64_t size = 0;  // payload bytes that follow
};
static_assert(sizeof(FrameHeader) == kSameHostHeaderBytes, "FrameHeader is the wire header");

// Whether the process at the other end of `fd` runs as this process's user.
bool sameUser(int fd) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  return ::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 && cred.uid == ::geteuid();
}

void setTimeouts(int fd, int64_t ms) {
  timeval tv{};
  tv.tv_sec = ms / 1000;
  tv.tv_usec = static_cast<suseconds_t>((ms % 1000) * 1000);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

// Reads n bytes. With a deadline (the handshake) the whole read ends by it,
// however the bytes trickle in; without one it blocks until they are in.
bool readFull(int fd, void* out, size_t n, Clock::time_point deadline = Clock::time_point::max()) {
  auto* p = static_cast<uint8_t*>(out);
  while (n > 0) {
    if (deadline != Clock::time_point::max()) {
      const auto left =
          std::chrono::duration_cast<std::chrono::microseconds>(deadline - Clock::now()).count();
      if (left <= 0) return false;
      timeval tv{};
      tv.tv_sec = left / 1000000;
      tv.tv_usec = static_cast<suseconds_t>(left % 1000000);
      ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    }
    const ssize_t got = ::recv(fd, p, n, MSG_WAITALL);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    p += got;
    n -= static_cast<size_t>(got);
  }
  return true;
}

bool writeFull(int fd, const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    const ssize_t put = ::send(fd, p, n, MSG_NOSIGNAL);
    if (put < 0 && errno == EINTR) continue;
    if (put <= 0) return false;
    p += put;
    n -= static_cast<size_t>(put);
  }
  return true;
}

bool randomNonce(std::array<uint8_t, kSameHostNonceBytes>& nonce) {
  return ::getrandom(nonce.data(), nonce.size(), 0) == static_cast<ssize_t>(nonce.size());
}

bool sameMac(const SameHostMac& a, const SameHostMac& b) {
  return security::constantTimeEquals(
      std::string_view(reinterpret_cast<const char*>(a.data()), a.size()),
      std::string_view(reinterpret_cast<const char*>(b.data()), b.size()));
}

std::array<uint8_t, kSameHostHeaderBytes> encodeHeader(const FrameHeader& h) {
  std::array<uint8_t, kSameHostHeaderBytes> out{};
  std::memcpy(out.data(), &h, sizeof(h));
  return out;
}

}  // namespace

std::string sameHostSocketName(int port) {
  return detail::concat("geopipe-peer-", port);
}

sockaddr_un sameHostSocketAddress(int port, socklen_t* len) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const std::string name = sameHostSocketName(port);
  std::memcpy(addr.sun_path + 1, name.data(), name.size());
  *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  return addr;
}

SameHostMac sameHostMac(const std::string& job_token, bool listener, int source, int destination,
                        int port, const std::array<uint8_t, kSameHostNonceBytes>& sender_nonce,
                        const std::array<uint8_t, kSameHostNonceBytes>& listener_nonce) {
  std::string data = listener ? "geopipe same-host listener" : "geopipe same-host sender";
  data += detail::concat(" ", source, " ", destination, " ", port, " ");
  data.append(reinterpret_cast<const char*>(sender_nonce.data()), sender_nonce.size());
  data.append(reinterpret_cast<const char*>(listener_nonce.data()), listener_nonce.size());
  SameHostMac mac{};
  unsigned int len = 0;
  // An empty key is still a key (tests run without a job token).
  static const unsigned char kNoKey = 0;
  const void* key = job_token.empty() ? static_cast<const void*>(&kNoKey) : job_token.data();
  if (HMAC(EVP_sha256(), key, static_cast<int>(job_token.size()),
           reinterpret_cast<const unsigned char*>(data.data()), data.size(), mac.data(),
           &len) == nullptr ||
      len != mac.size()) {
    GEOPIPE_THROW(Error, "grpc: HMAC-SHA256 failed for the same-host handshake");
  }
  return mac;
}

// --- SameHostListener --------------------------------------------------------

SameHostListener::SameHostListener(SameHostConfig config, int port)
    : config_(std::move(config)), port_(port) {
  // Without the path, gRPC carries every link: a warning, not a failure.
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    spdlog::warn("grpc: rank {}: no same-host path (socket: {}); peers of this host use gRPC",
                 config_.rank, std::strerror(errno));
    return;
  }
  socklen_t len = 0;
  const sockaddr_un addr = sameHostSocketAddress(port, &len);
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&addr), len) != 0 || ::listen(fd, 64) != 0) {
    // Another transport of this namespace on the same port (another
    // address), or any process that took the name: senders that find it
    // get no proof of the job token from it and use gRPC.
    spdlog::warn("grpc: rank {}: no same-host path ({} is taken: {}); peers of this host use gRPC",
                 config_.rank, sameHostSocketName(port), std::strerror(errno));
    ::close(fd);
    return;
  }
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC);
  if (wake_fd_ < 0) {
    spdlog::warn("grpc: rank {}: no same-host path (eventfd: {}); peers of this host use gRPC",
                 config_.rank, std::strerror(errno));
    ::close(fd);
    return;
  }
  listen_fd_ = fd;
  try {
    acceptor_ = std::thread([this] { acceptLoop(); });
  } catch (const std::system_error& e) {
    spdlog::warn("grpc: rank {}: no same-host path (no thread: {}); peers of this host use gRPC",
                 config_.rank, e.what());
    ::close(listen_fd_);
    ::close(wake_fd_);
    listen_fd_ = wake_fd_ = -1;
  }
}

SameHostListener::~SameHostListener() {
  stop();
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void SameHostListener::stop() {
  if (listen_fd_ < 0 || stopping_.exchange(true)) return;
  const uint64_t one = 1;
  (void)!::write(wake_fd_, &one, sizeof(one));
  if (acceptor_.joinable()) acceptor_.join();
  // Nobody accepts any more: later connects are refused at once.
  ::close(listen_fd_);
  listen_fd_ = -1;
  std::unique_lock<std::mutex> lock(mu_);
  // Wakes readers blocked in recv(); one blocked in admit() polls stopping_.
  for (int fd : fds_) ::shutdown(fd, SHUT_RDWR);
  idle_.wait(lock, [&] { return fds_.empty(); });
}

void SameHostListener::acceptLoop() {
  // Links beyond this many at once are closed unread: a local process
  // cannot pile up threads (a job needs at most one per peer).
  const size_t max_links = static_cast<size_t>(config_.world_size) * 2 + 8;
  while (!stopping_.load()) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      spdlog::warn("grpc: rank {}: the same-host path stopped accepting: {}", config_.rank,
                   std::strerror(errno));
      return;
    }
    if (fds[1].revents != 0) return;
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      // Out of descriptors, say: do not spin on a socket that stays readable.
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_.load() || fds_.size() >= max_links) {
      ::close(fd);
      continue;
    }
    fds_.push_back(fd);
    try {
      std::thread([this, fd] { serve(fd); }).detach();
    } catch (const std::system_error& e) {
      spdlog::warn("grpc: rank {}: a same-host link was refused: no thread for it ({})",
                   config_.rank, e.what());
      fds_.pop_back();
      ::close(fd);
    }
  }
}

int SameHostListener::handshake(int fd) {
  if (!sameUser(fd)) return -1;
  const auto deadline = Clock::now() + std::chrono::milliseconds(kHandshakeMs);
  setTimeouts(fd, kHandshakeMs);
  SameHostHello hello;
  if (!readFull(fd, &hello, sizeof(hello), deadline) || hello.magic != kSameHostMagic ||
      hello.version != kSameHostVersion || hello.source < 0 || hello.source >= config_.world_size ||
      hello.source == config_.rank || hello.destination != config_.rank) {
    return -1;
  }
  SameHostReply reply;
  reply.rank = config_.rank;
  if (!randomNonce(reply.nonce)) return -1;
  reply.mac = sameHostMac(config_.job_token, true, hello.source, hello.destination, port_,
                          hello.nonce, reply.nonce);
  SameHostProof proof;
  if (!writeFull(fd, &reply, sizeof(reply)) || !readFull(fd, &proof, sizeof(proof), deadline) ||
      !sameMac(proof.mac, sameHostMac(config_.job_token, false, hello.source, hello.destination,
                                      port_, hello.nonce, reply.nonce))) {
    return -1;
  }
  // Receives from the sender no longer fail for an earlier link before the
  // sender learns that this one is up.
  config_.mailbox->clearSource(hello.source);
  SameHostAccepted accepted;
  if (!writeFull(fd, &accepted, sizeof(accepted))) return -1;
  setTimeouts(fd, 0);
  return hello.source;
}

void SameHostListener::serve(int fd) {
  const int src = handshake(fd);
  if (src >= 0) {
    Mailbox& mailbox = *config_.mailbox;
    const std::string peer = config_.describe_peer(src);
    std::string broke;  // why the link ended without a goodbye, if it did
    while (true) {
      FrameHeader h;
      if (!readFull(fd, &h, sizeof(h))) {
        broke = "broke (its process died, or closed the socket without a goodbye)";
        break;
      }
      if (h.kind == kGoodbye) {
        mailbox.failSource(src, ErrorKind::IO,
                           detail::concat(peer, " closed its same-host link (it shut down)"));
        break;
      }
      if (h.kind != kData || h.channel < static_cast<uint32_t>(Channel::ACTIVATION) ||
          h.channel > static_cast<uint32_t>(Channel::CONTROL) ||
          h.size > config_.max_message_bytes) {
        mailbox.failSource(
            src, ErrorKind::PROTOCOL,
            detail::concat(peer, " sent a same-host frame that was refused (kind ", h.kind,
                           ", channel ", h.channel, ", ", h.size, " bytes; max_message_bytes ",
                           config_.max_message_bytes, ")"));
        break;
      }
      Tag tag;
      tag.channel = static_cast<Channel>(h.channel);
      tag.step = h.step;
      tag.micro_batch = h.micro_batch;
      tag.index = h.index;
      if (!mailbox.admit(src, tag, h.size, [this] { return stopping_.load(); })) break;
      Bytes payload;
      try {
        payload.resize(h.size);
      } catch (const std::bad_alloc&) {
        mailbox.release(h.size);
        mailbox.failSource(src, ErrorKind::IO,
                           detail::concat("cannot allocate ", h.size, " bytes for a message from ",
                                          peer, " (tag ", tag.str(), ")"));
        break;
      }
      if (!readFull(fd, payload.data(), payload.size())) {
        mailbox.release(h.size);
        broke = detail::concat("broke in the middle of a message (tag ", tag.str(),
                               "): its process died");
        break;
      }
      mailbox.deliver(src, tag, std::move(payload), /*admitted=*/true);
    }
    if (!broke.empty() && !stopping_.load()) {
      mailbox.failSource(src, ErrorKind::IO,
                         detail::concat("the same-host link from ", peer, " ", broke));
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = fds_.begin(); it != fds_.end(); ++it) {
    if (*it == fd) {
      fds_.erase(it);
      break;
    }
  }
  ::close(fd);
  idle_.notify_all();
}

// --- SameHostLink ------------------------------------------------------------

std::unique_ptr<SameHostLink> SameHostLink::connect(const SameHostConfig& config, int peer,
                                                    int port) {
  if (port <= 0) return nullptr;
  // Non-blocking connect: a full backlog (a listener that does not accept)
  // fails at once instead of holding the first send.
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return nullptr;
  socklen_t len = 0;
  const sockaddr_un addr = sameHostSocketAddress(port, &len);
  auto refuse = [&](const char* why) -> std::unique_ptr<SameHostLink> {
    spdlog::debug("grpc: rank {} to rank {}: no same-host path ({}: {}); using gRPC", config.rank,
                  peer, sameHostSocketName(port), why);
    ::close(fd);
    return nullptr;
  };
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), len) != 0) {
    return refuse(errno == EAGAIN ? "its backlog is full" : "nothing listens there");
  }
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) return refuse("fcntl failed");
  if (!sameUser(fd)) return refuse("another user's process");
  const auto deadline = Clock::now() + std::chrono::milliseconds(kHandshakeMs);
  setTimeouts(fd, kHandshakeMs);
  SameHostHello hello;
  hello.source = config.rank;
  hello.destination = peer;
  if (!randomNonce(hello.nonce)) return refuse("no random nonce");
  SameHostReply reply;
  if (!writeFull(fd, &hello, sizeof(hello)) || !readFull(fd, &reply, sizeof(reply), deadline)) {
    return refuse("no answer (not this job's rank, or not a geopipe transport)");
  }
  if (reply.magic != kSameHostMagic || reply.rank != peer ||
      !sameMac(reply.mac, sameHostMac(config.job_token, true, config.rank, peer, port, hello.nonce,
                                      reply.nonce))) {
    return refuse("an answer without proof of this job's token");
  }
  SameHostProof proof;
  proof.mac =
      sameHostMac(config.job_token, false, config.rank, peer, port, hello.nonce, reply.nonce);
  SameHostAccepted accepted;
  if (!writeFull(fd, &proof, sizeof(proof)) ||
      !readFull(fd, &accepted, sizeof(accepted), deadline) || accepted.magic != kSameHostMagic) {
    return refuse("the link was not accepted");
  }
  setTimeouts(fd, 0);
  // A larger buffer than the default (about 208 KiB): a 128 KiB activation
  // reaches the reader in fewer pieces (fewer wake-ups), and a message of a
  // few MB goes without the writer thread. The kernel caps it at
  // net.core.wmem_max; no error if it does.
  const int sndbuf = 4 << 20;
  ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
  return std::unique_ptr<SameHostLink>(
      new SameHostLink(fd, config.rank, peer, config.describe_peer(peer)));
}

SameHostLink::SameHostLink(int fd, int rank, int peer, std::string peer_name)
    : fd_(fd), rank_(rank), peer_(peer), peer_name_(std::move(peer_name)) {}

std::string SameHostLink::describeSend(const Tag& tag) const {
  return detail::concat("grpc: send from rank ", rank_, " to ", peer_name_,
                        " over the same-host path, tag ", tag.str());
}

SameHostLink::~SameHostLink() {
  close(Clock::now());
  ::close(fd_);
}

void SameHostLink::failLocked(const std::string& why) {
  if (failure_.empty()) failure_ = why;
  for (Outgoing& m : queue_) {
    sends_failed_ += 1;
    m.work->completion().fail(GEOPIPE_ERROR_PTR(IoError, m.what, " failed: ", why));
  }
  queue_.clear();
  cv_.notify_all();
}

namespace {
// Writes `m` from m.written on: header, then payload. The bytes written, or
// -1 with errno.
template <typename Message>
ssize_t writeFrom(int fd, const Message& m, int flags) {
  iovec iov[2];
  int n = 0;
  size_t skip = m.written;
  if (skip < m.header.size()) {
    iov[n++] = {const_cast<uint8_t*>(m.header.data()) + skip, m.header.size() - skip};
    skip = 0;
  } else {
    skip -= m.header.size();
  }
  if (skip < m.payload.size()) {
    iov[n++] = {const_cast<uint8_t*>(m.payload.data()) + skip, m.payload.size() - skip};
  }
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = static_cast<size_t>(n);
  return ::sendmsg(fd, &msg, flags | MSG_NOSIGNAL);
}
}  // namespace

std::shared_ptr<Work> SameHostLink::send(const Tag& tag, Bytes payload) {
  FrameHeader h;
  h.channel = static_cast<uint32_t>(tag.channel);
  h.step = tag.step;
  h.micro_batch = tag.micro_batch;
  h.index = tag.index;
  h.size = payload.size();
  std::unique_lock<std::mutex> lock(mu_);
  if (!failure_.empty() || closing_) {
    sends_failed_ += 1;
    return std::make_shared<FinishedWork>(GEOPIPE_ERROR_PTR(
        IoError, describeSend(tag), " failed: ",
        failure_.empty()
            ? std::string("the transport is closing")
            : detail::concat("the same-host link to ", peer_name_, " broke earlier: ", failure_)));
  }
  Outgoing m;
  m.header = encodeHeader(h);
  m.payload = std::move(payload);
  if (queue_.empty()) {
    // Nothing ahead of it: the socket may take it all at once.
    const ssize_t n = writeFrom(fd_, m, MSG_DONTWAIT);
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      const std::string why =
          detail::concat("the same-host link to ", peer_name_, " broke: ", std::strerror(errno));
      failLocked(why);
      sends_failed_ += 1;
      return std::make_shared<FinishedWork>(
          GEOPIPE_ERROR_PTR(IoError, describeSend(tag), " failed: ", why));
    }
    if (n > 0) m.written = static_cast<size_t>(n);
    if (m.written == m.header.size() + m.payload.size()) {
      messages_sent_ += 1;
      return std::make_shared<FinishedWork>();
    }
  }
  m.what = describeSend(tag);
  m.work = std::make_shared<PendingWork>(m.what);
  auto work = m.work;
  queue_.push_back(std::move(m));
  if (!writer_started_) {
    try {
      writer_ = std::thread([this] { run(); });
      writer_started_ = true;
    } catch (const std::system_error& e) {
      // No writer runs: failing the queue here races with nobody.
      failLocked(detail::concat("no writer thread for the same-host link to ", peer_name_, ": ",
                                e.what()));
      return work;
    }
  }
  cv_.notify_all();
  return work;
}

void SameHostLink::run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return !queue_.empty() || closing_ || !failure_.empty(); });
    if (!failure_.empty() || queue_.empty()) return;  // broken, or closing with nothing left
    // The front stays queued while it is written, so send() queues behind
    // it; only this thread removes it (deque references survive push_back).
    Outgoing& m = queue_.front();
    lock.unlock();
    const ssize_t n = writeFrom(fd_, m, 0);
    const int err = errno;
    lock.lock();
    if (n < 0) {
      if (err == EINTR) continue;
      failLocked(timed_out_ ? std::string("not written within close_timeout (the transport was "
                                          "closed)")
                            : detail::concat("the same-host link to ", peer_name_,
                                             " broke: ", std::strerror(err)));
      return;
    }
    m.written += static_cast<size_t>(n);
    if (m.written == m.header.size() + m.payload.size()) {
      messages_sent_ += 1;
      m.work->completion().succeed();
      queue_.pop_front();
      cv_.notify_all();
    }
  }
}

void SameHostLink::close(Clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  if (closing_) return;
  closing_ = true;
  cv_.notify_all();
  const bool drained =
      cv_.wait_until(lock, deadline, [&] { return queue_.empty() || !failure_.empty(); });
  if (drained && failure_.empty()) {
    // The goodbye: the receiver fails its later receives from this rank at
    // once instead of waiting for them.
    FrameHeader goodbye;
    goodbye.kind = kGoodbye;
    // Within what is left of close_timeout; past it, only if the socket
    // takes it at once.
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    const auto bytes = encodeHeader(goodbye);
    bool said = false;
    if (left > 0) {
      setTimeouts(fd_, left);
      said = writeFull(fd_, bytes.data(), bytes.size());
    } else {
      said = ::send(fd_, bytes.data(), bytes.size(), MSG_DONTWAIT | MSG_NOSIGNAL) ==
             static_cast<ssize_t>(bytes.size());
    }
    if (!said) failure_ = "the goodbye was not written";
    ::shutdown(fd_, SHUT_WR);
  } else {
    // Wakes a writer blocked in sendmsg(); it fails the queue.
    timed_out_ = true;
    ::shutdown(fd_, SHUT_RDWR);
  }
  lock.unlock();
  if (writer_.joinable()) writer_.join();
  lock.lock();
  if (!queue_.empty()) failLocked("not written within close_timeout (the transport was closed)");
}

}  // namespace geopipe::transport
