// The in-process transport: ranks are threads of one process that exchange
// messages through a shared hub of mailboxes. Used by tests and CPU runs.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "src/transport/mailbox.h"
#include "src/transport/transport.h"

namespace geopipe::transport {

// The mailboxes of every rank of one process: one transport::Mailbox
// (mailbox.h) per destination rank, which matches messages and receives per
// (source, tag), FIFO, and withdraws timed-out receives. Payloads are moved,
// never copied, so a 64 MB message costs nothing but the allocation the
// sender already made.
//
// Ownership: create one hub per process with std::make_shared for the job's
// world size and give it to every InprocTransport, which keeps it alive.
// Receive handles hold their mailbox weakly; receives still pending when the
// hub is destroyed fail with IoError.
// Thread-safety: every method may be called from any thread; each
// destination's mailbox has its own mutex. No method blocks except on short
// critical sections.
//
// Failure injection (for testing a dead peer): markFailed(r) fails every
// pending receive from (or on) r and every later one that finds no message
// already queued (messages r sent before it failed stay receivable, as bytes
// already in a socket buffer would be); sends from or to r fail. shutdown()
// fails every pending and future operation. Both throw IoError with the
// reason given here.
class InprocHub {
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
  // Counters of one rank.
  TransportStats stats(int rank) const;

 private:
  void checkRank(int rank, const char* what) const;

  const int world_size_;
  std::vector<std::shared_ptr<Mailbox>> mailboxes_;  // one per destination rank
  std::vector<std::unique_ptr<SendTally>> sent_;     // one per rank
  std::atomic<bool> shut_down_{false};
  // Serializes markFailed() and shutdown(), whose sweeps over several
  // mailboxes must not interleave (a failed source's reason wins over the
  // receiving rank's own failure).
  mutable std::mutex failure_mu_;
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
