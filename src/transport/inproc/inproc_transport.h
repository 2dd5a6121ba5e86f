// The in-process transport: ranks are threads of one process that exchange
// messages through a shared hub of mailboxes. Used by tests and CPU runs.
#pragma once

#include <atomic>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "src/transport/transport.h"

namespace geopipe::transport {

class InprocRecvWork;

// The mailboxes of every rank of one process. A mailbox is keyed by
// (destination, source, tag) and holds the messages that arrived before
// their receive (FIFO) or the receives posted before their message (FIFO);
// never both. Payloads are moved, never copied, so a 64 MB message costs
// nothing but the allocation the sender already made.
//
// Ownership: create one hub per process with std::make_shared (it must be
// owned by a shared_ptr) for the job's world size and give it to every
// InprocTransport, which keeps it alive. Receive handles hold it weakly
// (the hub holds pending receives); receives still pending when the hub is
// destroyed fail with IoError.
// Thread-safety: every method may be called from any thread; the mailboxes
// are sharded by destination rank, each shard behind its own mutex. No
// method blocks except on those short critical sections.
//
// Failure injection (for testing a dead peer): markFailed(r) fails every
// pending receive from r and every later receive from r that finds no
// message already queued (messages r sent before it failed stay
// receivable, as bytes already in a socket buffer would be); sends from or
// to r fail. shutdown() fails every pending and future operation. Both
// throw IoError with the reason given here.
class InprocHub : public std::enable_shared_from_this<InprocHub> {
 public:
  explicit InprocHub(int world_size);
  ~InprocHub();
  InprocHub(const InprocHub&) = delete;
  InprocHub& operator=(const InprocHub&) = delete;

  int worldSize() const { return world_size_; }

  // Marks `rank` dead: see the class comment. Idempotent; the first reason
  // sticks.
  void markFailed(int rank, const std::string& reason = "marked failed");
  bool isFailed(int rank) const;
  // Fails every pending and future operation of every rank.
  void shutdown(const std::string& reason = "hub shut down");
  bool isShutDown() const { return shut_down_.load(); }

  // Used by InprocTransport: queue a message for dst, or hand it to a
  // waiting receive.
  void deliver(int src, int dst, const Tag& tag, Bytes payload);
  // Used by InprocTransport: post a receive on dst for a message from src.
  std::shared_ptr<RecvWork> post(int dst, int src, const Tag& tag);
  // Used by InprocRecvWork on timeout: withdraws the receive if it is still
  // waiting; false when a message was matched to it first.
  bool withdraw(const InprocRecvWork& work, std::exception_ptr error);
  // Counters of one rank.
  TransportStats stats(int rank) const;

 private:
  // (source, tag) within a destination's shard.
  using Key = std::tuple<int, Tag>;
  struct Mailbox {
    std::deque<Bytes> messages;                           // arrived, not yet received
    std::deque<std::shared_ptr<InprocRecvWork>> waiters;  // posted, not yet matched
  };
  struct Shard {
    mutable std::mutex mu;
    std::map<Key, Mailbox> boxes;
  };
  struct Counters {
    std::atomic<uint64_t> messages_sent{0};
    std::atomic<uint64_t> bytes_sent{0};
    std::atomic<uint64_t> messages_received{0};
    std::atomic<uint64_t> bytes_received{0};
  };

  void checkRank(int rank, const char* what) const;
  // The error a receive on dst from src gets now, or null; caller holds
  // the shard's mutex.
  std::exception_ptr failureLocked(int dst, int src, const Tag& tag) const;

  const int world_size_;
  std::vector<Shard> shards_;       // one per destination rank
  std::vector<Counters> counters_;  // one per rank
  std::atomic<bool> shut_down_{false};
  mutable std::mutex failure_mu_;  // guards the reasons below
  std::string shutdown_reason_;
  std::vector<std::string> failed_reason_;  // empty: alive
  std::unique_ptr<std::atomic<bool>[]> failed_;
};

// One rank's endpoint on an InprocHub. send() completes inside the call
// (the message is in the destination's mailbox or handed to its receive);
// recv() completes when the matching message is there. Thread-safe.
class InprocTransport : public Transport {
 public:
  InprocTransport(std::shared_ptr<InprocHub> hub, int rank);

  int rank() const override { return rank_; }
  int worldSize() const override { return hub_->worldSize(); }
  std::shared_ptr<Work> send(int peer, const Tag& tag, Bytes payload) override;
  std::shared_ptr<RecvWork> recv(int peer, const Tag& tag) override;
  TransportStats stats() const override { return hub_->stats(rank_); }
  std::string name() const override { return "inproc"; }

  const std::shared_ptr<InprocHub>& hub() const { return hub_; }

 private:
  std::shared_ptr<InprocHub> hub_;
  int rank_;
};

// Convenience for tests and single-process runs: a hub for `world_size`
// ranks and one InprocTransport per rank, in rank order.
std::vector<std::shared_ptr<Transport>> makeInprocWorld(
    int world_size, std::shared_ptr<InprocHub>* hub_out = nullptr);

}  // namespace geopipe::transport
