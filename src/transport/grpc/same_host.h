// The gRPC transport's same-host path (GrpcTransportOptions::same_host_sockets):
// a peer whose peer service runs in this host's network namespace gets its
// messages over a Unix socket instead of a gRPC stream. No TLS, HTTP/2 or
// TCP, no chunks, no acknowledgements, and a send that fits in the socket's
// buffer is written by the calling thread (no hand-off to a writer thread).
//
// Finding the peer. A transport whose peer service holds TCP port P also
// listens on the abstract Unix socket "geopipe-peer-P" (abstract sockets
// belong to a network namespace, like the port). A sender dials the socket
// of the port in its peer's address; it reaches a process of this host,
// not necessarily the peer (another host may use the same port), so the
// handshake checks who answers:
//   - both ends read the other's user with SO_PEERCRED and accept only their
//     own (the abstract name has no file permissions);
//   - both prove that they hold the job token without sending it: each
//     sends a random nonce and answers with HMAC-SHA256(token, its role,
//     both ranks, the port, both nonces), which the other checks (the
//     listener first); the listener answers only for its own rank. The
//     port is the dialled one for the sender and the bound one for the
//     listener, so a relay between two socket names fails.
// Anything else (no socket, a full backlog, no answer within 2 s, another
// user, job or rank, a relayed or advertised-elsewhere address) leaves the
// peer to gRPC, so the path can only ever speed a link up. TLS is not used
// on it: the kernel carries the bytes between two processes of one user on
// one host, and the token never crosses the socket.
//
// Failures. A same-host link is not resumed (fault_tolerance.link_grace is
// for network blips; a Unix socket breaks only when a process dies or
// closes): a link that breaks fails its sends, and the receiver fails the
// receives from that sender, as a gRPC link without a grace does.
//
// Wire (after the handshake), both ends on one host so in host byte order:
// frames of a 32-byte header {kind, channel, step, micro_batch, index,
// size} and `size` payload bytes; kind 2 is the sender's goodbye.
#pragma once

#include <sys/socket.h>
#include <sys/un.h>

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "src/transport/completion.h"
#include "src/transport/mailbox.h"
#include "src/transport/transport.h"

namespace geopipe::transport {

// What both ends of a same-host link share with their transport.
struct SameHostConfig {
  int rank = 0;
  int world_size = 1;
  std::string job_token;
  uint64_t max_message_bytes = 0;                 // larger frames are refused (ProtocolError)
  std::shared_ptr<Mailbox> mailbox;               // where received messages go
  std::function<std::string(int)> describe_peer;  // "rank R (host:port)"
};

// A frame's header on the wire.
constexpr size_t kSameHostHeaderBytes = 32;

// The handshake on the wire (host byte order): the sender's hello, the
// listener's reply, the sender's proof, the listener's acceptance (after
// which the sender's frames follow).
constexpr uint32_t kSameHostMagic = 0x48535047;  // "GPSH"
constexpr uint32_t kSameHostVersion = 2;
constexpr size_t kSameHostNonceBytes = 32;
using SameHostMac = std::array<uint8_t, 32>;
struct SameHostHello {
  uint32_t magic = kSameHostMagic;
  uint32_t version = kSameHostVersion;
  int32_t source = 0;
  int32_t destination = 0;
  std::array<uint8_t, kSameHostNonceBytes> nonce{};
};
struct SameHostReply {
  uint32_t magic = kSameHostMagic;
  int32_t rank = 0;
  std::array<uint8_t, kSameHostNonceBytes> nonce{};
  SameHostMac mac{};  // sameHostMac(token, listener=true, ...)
};
struct SameHostProof {
  SameHostMac mac{};  // sameHostMac(token, listener=false, ...)
};
struct SameHostAccepted {
  uint32_t magic = kSameHostMagic;
};
// HMAC-SHA256 under the job token over the role, both ranks, the port whose
// socket name joins them (the sender's dialled one, the listener's bound
// one: a relay between two names fails) and both nonces.
SameHostMac sameHostMac(const std::string& job_token, bool listener, int source, int destination,
                        int port, const std::array<uint8_t, kSameHostNonceBytes>& sender_nonce,
                        const std::array<uint8_t, kSameHostNonceBytes>& listener_nonce);

// "geopipe-peer-PORT": the abstract socket name of the peer service on `port`.
std::string sameHostSocketName(int port);
// Its address (a leading NUL: Linux's abstract namespace, no file); *len is
// the length to pass to bind() or connect().
sockaddr_un sameHostSocketAddress(int port, socklen_t* len);

// The receiving side: accepts same-host links on the abstract socket of
// `port` and delivers their messages to the mailbox, one reader thread per
// link (admit() blocking there is the backpressure, as in gRPC's handler).
// Another process holding the name (another transport bound to the same
// port on another address) leaves listening() false: the senders then find
// that process, which refuses them, and use gRPC.
class SameHostListener {
 public:
  // Never throws: without a socket (the name taken, or no descriptors)
  // listening() is false, with a warning.
  SameHostListener(SameHostConfig config, int port);
  ~SameHostListener();
  SameHostListener(const SameHostListener&) = delete;
  SameHostListener& operator=(const SameHostListener&) = delete;

  bool listening() const { return listen_fd_ >= 0; }
  // Stops accepting and reading (a reader blocked in admit() gives up
  // once the mailbox is closed). Idempotent.
  void stop();

 private:
  void acceptLoop();
  void serve(int fd);
  // The sender's hello checked; its rank, or -1 (the link is closed).
  int handshake(int fd);

  const SameHostConfig config_;
  const int port_;
  int listen_fd_ = -1;
  int wake_fd_ = -1;  // an eventfd that ends the accept loop
  std::atomic<bool> stopping_{false};
  std::mutex mu_;
  std::condition_variable idle_;  // signalled when a link's reader ends
  std::vector<int> fds_;          // open links (each with a detached reader)
  std::thread acceptor_;
};

// The sending side towards one peer. Messages go out in send order: from
// the calling thread while nothing is queued and the socket takes the
// whole message without blocking, otherwise from a writer thread started
// for the remainder. Thread-safe.
class SameHostLink {
 public:
  // Dials the peer service on `port` of this host and checks that it is
  // rank `peer` of this job; null when it is not (use gRPC). Errors name
  // the link as config.describe_peer(peer) did then.
  static std::unique_ptr<SameHostLink> connect(const SameHostConfig& config, int peer, int port);
  ~SameHostLink();
  SameHostLink(const SameHostLink&) = delete;
  SameHostLink& operator=(const SameHostLink&) = delete;

  std::shared_ptr<Work> send(const Tag& tag, Bytes payload);
  // Writes what is queued (until `deadline`), then the goodbye; past the
  // deadline, fails what is left with IoError. Later sends fail.
  void close(Clock::time_point deadline);

  uint64_t messagesSent() const { return messages_sent_.load(); }
  uint64_t sendsFailed() const { return sends_failed_.load(); }

 private:
  struct Outgoing {
    std::array<uint8_t, kSameHostHeaderBytes> header{};
    Bytes payload;
    size_t written = 0;  // of header + payload
    std::shared_ptr<PendingWork> work;
    std::string what;
  };
  SameHostLink(int fd, int rank, int peer, std::string peer_name);
  // "grpc: send from rank R to rank P (host:port) over the same-host path,
  // tag T": built only for a send that is queued or fails.
  std::string describeSend(const Tag& tag) const;
  void run();  // the writer thread
  // Marks the link broken; fails the queue (caller holds mu_).
  void failLocked(const std::string& why);

  const int fd_;
  const int rank_;
  const int peer_;
  const std::string peer_name_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Outgoing> queue_;  // the front may be partly written
  bool writer_started_ = false;
  bool closing_ = false;
  bool timed_out_ = false;  // close() gave up on the queue (the writer's error says so)
  std::string failure_;     // non-empty once broken
  std::thread writer_;
  std::atomic<uint64_t> messages_sent_{0};
  std::atomic<uint64_t> sends_failed_{0};
};

}  // namespace geopipe::transport
