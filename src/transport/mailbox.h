// The receiving side of one rank, shared by every transport: per-(source,
// tag) FIFO matching of messages and receives, timeouts that withdraw a
// receive, failures of one source or of the whole mailbox, and the byte
// budget behind backpressure. Transport-neutral: no sockets, no gRPC, no CUDA.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "geopipe/error.h"
#include "src/transport/transport.h"

namespace geopipe::transport {

class MailboxRecvWork;

// One rank's receives (Gloo keeps its pending-send/receive tally once, in the
// base context, and every transport uses it; this is ours). A queue keyed by
// (source, tag) holds either messages that arrived before their receive or
// receives posted before their message, both FIFO, never both; payloads are
// moved, never copied. inproc has one mailbox per destination rank (its hub's
// shards); gRPC and NCCL one per transport.
//
// Messages. deliver() queues a message or hands it to the oldest receive
// waiting for it. A receive posted with post() takes the oldest queued
// message. A receive whose wait() times out is withdrawn (the next message
// goes to the next receive) and keeps failing with the same TimeoutError.
//
// Failures. failSource(src) fails src's pending receives and every later one
// that finds no message queued (messages that arrived before stay
// receivable, as bytes already in a socket buffer would), until
// clearSource(src) (a new stream from src opened). close() fails every
// pending and later receive, whatever its source, and wins over failSource.
// Errors read "<transport>: recv on rank R from <peer>, tag T failed: <reason>".
//
// Budget (transports whose receiving side can stop reading: gRPC, NCCL).
// Bytes count as buffered from admit() (a message is on its way) or
// deliver() (a message that was not admitted) until a receive claims the
// message. admit() blocks while the new message would take the total over
// max_buffered_bytes, unless nothing is buffered or a receive is already
// waiting for that (source, tag): the first keeps one oversize message
// deliverable, the second lets the message the application waits for pass
// messages it does not want yet. inproc never admits, so it is never bounded.
//
// Thread-safety: every method is thread-safe (one mutex); only admit()
// blocks. Ownership: held by a shared_ptr (make it with std::make_shared);
// receive handles hold it weakly, and those still pending when it is
// destroyed fail with IoError.
class Mailbox : public std::enable_shared_from_this<Mailbox> {
 public:
  struct Options {
    // Names the transport in messages: "inproc", "grpc", "nccl".
    std::string transport = "inproc";
    // The receiving rank.
    int rank = 0;
    // Valid sources: [0, world_size).
    int world_size = 1;
    // admit()'s bound on buffered bytes (see the class comment).
    uint64_t max_buffered_bytes = UINT64_MAX;
    // Names a source in messages; unset: "rank S". gRPC adds the address.
    std::function<std::string(int)> describe_peer;
  };

  explicit Mailbox(Options options);
  ~Mailbox();
  Mailbox(const Mailbox&) = delete;
  Mailbox& operator=(const Mailbox&) = delete;

  // A receive for the next message from src with tag. Throws Error for a
  // source outside the world.
  std::shared_ptr<RecvWork> post(int src, const Tag& tag);
  // A complete message from src. Its bytes count as buffered unless
  // `admitted` says admit() already counted them.
  void deliver(int src, const Tag& tag, Bytes payload, bool admitted = false);

  // Blocks until `bytes` of a message (src, tag) may be buffered, then
  // counts them; false (nothing counted) when the mailbox is closed or
  // abandon() returns true (polled every 50 ms, without the mailbox's lock).
  bool admit(int src, const Tag& tag, uint64_t bytes, const std::function<bool()>& abandon);
  // Uncounts admitted bytes of a message that will never be delivered.
  void release(uint64_t bytes);

  // Fails src's pending and later receives with `reason` as an error of
  // `kind` (IO or PROTOCOL); a later call replaces the reason.
  void failSource(int src, ErrorKind kind, const std::string& reason);
  // Receives from src no longer fail (a new stream from it opened).
  void clearSource(int src);
  // Fails every pending and later receive with IoError(reason) and releases
  // blocked admit() calls. Idempotent: the first reason sticks.
  void close(const std::string& reason);
  bool closed() const;

  // "<transport>: recv on rank R from <peer>, tag T".
  std::string describeRecv(int src, const Tag& tag) const;

  uint64_t bufferedBytes() const;
  uint64_t messagesReceived() const;
  uint64_t bytesReceived() const;

 private:
  friend class MailboxRecvWork;
  using Key = std::tuple<int, Tag>;
  struct Queue {
    std::deque<Bytes> messages;                            // arrived, not yet received
    std::deque<std::shared_ptr<MailboxRecvWork>> waiters;  // posted, not yet matched
  };
  struct SourceFailure {
    bool failed = false;
    ErrorKind kind = ErrorKind::IO;
    std::string reason;
  };

  // Withdraws a timed-out receive that is still waiting, failing it with
  // `error`; false when a message was matched to it first.
  bool withdraw(const MailboxRecvWork& work, std::exception_ptr error);
  // The error a receive from src gets now, or null; caller holds mu_.
  std::exception_ptr failureLocked(int src, const Tag& tag) const;
  // A queued message is claimed by a receive; caller holds mu_.
  void claimLocked(uint64_t bytes);
  // Fails the waiting receives whose source `matches`; caller holds mu_.
  void sweepLocked(const std::function<bool(int)>& matches);

  const Options options_;
  mutable std::mutex mu_;
  std::condition_variable budget_cv_;  // admit() waits here
  std::map<Key, Queue> queues_;
  std::vector<SourceFailure> failed_;  // by source rank
  bool closed_ = false;
  std::string close_reason_;
  uint64_t buffered_ = 0;
  uint64_t messages_received_ = 0;
  uint64_t bytes_received_ = 0;
};

}  // namespace geopipe::transport
