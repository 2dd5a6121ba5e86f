// The receiving side of the gRPC transport without any gRPC: per-(source,
// tag) FIFO mailboxes, the byte budget behind backpressure, and the
// bookkeeping of which senders' streams have ended.
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

#include "src/transport/transport.h"

namespace geopipe::transport {

class InboxRecvWork;

// One rank's mailboxes. A mailbox, keyed by (source, tag), holds either
// messages that arrived before their receive or receives posted before
// their message, both FIFO (the matching of InprocHub).
//
// Budget: bytes count as buffered from admit() (the first chunk of a message
// arrived) until a receive claims the message. admit() blocks the peer
// service's reading thread while the new message would take the total over
// max_buffered_bytes, unless nothing is buffered or a receive is already
// waiting for that (source, tag): the first keeps one oversize message
// deliverable, the second lets the message the application waits for pass
// messages it does not want yet.
//
// Ended streams: when a sender's stream ends (cleanly or not) its pending
// receives fail with the given reason, and so do later receives from it
// that find no message queued, until a new stream from it opens.
//
// Thread-safety: all methods are thread-safe (one mutex); only admit()
// blocks. Ownership: held by a shared_ptr; receive handles hold it weakly.
class PeerInbox : public std::enable_shared_from_this<PeerInbox> {
 public:
  // describe_peer(src) names a sender in messages, e.g. "rank 1 (host:port)".
  PeerInbox(int rank, int world_size, uint64_t max_buffered_bytes,
            std::function<std::string(int)> describe_peer);
  ~PeerInbox();
  PeerInbox(const PeerInbox&) = delete;
  PeerInbox& operator=(const PeerInbox&) = delete;

  // Application side: a receive for the next message from src with tag.
  std::shared_ptr<RecvWork> post(int src, const Tag& tag);

  // Peer-service side. Blocks until `bytes` of a message (src, tag) may be
  // buffered, then counts them; false (nothing counted) when the inbox is
  // closed or abandon() returns true (polled every 50 ms).
  bool admit(int src, const Tag& tag, uint64_t bytes, const std::function<bool()>& abandon);
  // Uncounts admitted bytes of a message that will never complete.
  void release(uint64_t bytes);
  // A complete message whose payload.size() bytes were admitted.
  void deliver(int src, const Tag& tag, Bytes payload);
  // A message to oneself: counted without waiting, then delivered.
  void deliverLocal(const Tag& tag, Bytes payload);
  // A stream from src opened: clears an earlier ended-stream failure.
  void streamOpened(int src);
  // The stream from src ended: fails src's pending receives (and later ones
  // that find no message) with `reason`, as ProtocolError when `protocol`
  // else IoError.
  void streamEnded(int src, bool protocol, const std::string& reason);
  // Fails every pending and later receive with IoError(reason) and releases
  // blocked admit() calls. Idempotent.
  void close(const std::string& reason);

  // Used by InboxRecvWork on timeout: false when a message matched first.
  bool withdraw(const InboxRecvWork& work, std::exception_ptr error);
  // "grpc: recv on rank R from rank S (addr), tag T".
  std::string describeRecv(int src, const Tag& tag) const;

  uint64_t bufferedBytes() const;
  uint64_t messagesReceived() const;
  uint64_t bytesReceived() const;

 private:
  using Key = std::tuple<int, Tag>;
  struct Mailbox {
    std::deque<Bytes> messages;                          // arrived, not yet received
    std::deque<std::shared_ptr<InboxRecvWork>> waiters;  // posted, not yet matched
  };
  struct Ended {
    bool ended = false;
    bool protocol = false;
    std::string reason;
  };

  // The error a receive from src gets now, or null; caller holds mu_.
  std::exception_ptr failureLocked(int src, const Tag& tag) const;
  void claimLocked(uint64_t bytes);

  const int rank_;
  const int world_size_;
  const uint64_t max_buffered_bytes_;
  const std::function<std::string(int)> describe_peer_;
  mutable std::mutex mu_;
  std::condition_variable budget_cv_;  // admit() waits here
  std::map<Key, Mailbox> boxes_;
  std::vector<Ended> ended_;  // by source rank
  bool closed_ = false;
  std::string close_reason_;
  uint64_t buffered_ = 0;
  uint64_t messages_received_ = 0;
  uint64_t bytes_received_ = 0;
};

}  // namespace geopipe::transport
