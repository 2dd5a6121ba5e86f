// InprocHub mailboxes and the InprocTransport endpoint.
#include "src/transport/inproc/inproc_transport.h"

#include <algorithm>

#include "geopipe/error.h"
#include "src/transport/completion.h"

namespace geopipe::transport {

// A receive posted on the hub. Completed (with its payload) or failed by
// the hub under the destination shard's mutex; withdrawn by wait() on
// timeout. It holds the hub weakly: the hub's mailboxes hold pending
// receives, so a strong pointer would make a cycle and leak every hub that
// still has an abandoned receive.
class InprocRecvWork : public RecvWork {
 public:
  InprocRecvWork(std::weak_ptr<InprocHub> hub, int dst, int src, const Tag& tag)
      : hub_(std::move(hub)), dst_(dst), src_(src), tag_(tag) {}

  void wait(Duration timeout) override {
    if (!completion_.waitUntil(deadlineAfter(timeout))) {
      auto error = GEOPIPE_ERROR_PTR(TimeoutError, describe(), ": timed out after ",
                                     timeout.count(), " ms (no matching send arrived)");
      if (auto hub = hub_.lock()) {
        hub->withdraw(*this, error);
      } else {
        completion_.fail(error);  // the hub is gone: nothing can match it any more
      }
    }
    completion_.rethrowIfFailed();
  }
  bool done() const override { return completion_.finished(); }

  Bytes takePayload() override {
    GEOPIPE_CHECK(completion_.finished(), Error, describe(),
                  ": takePayload() before the receive completed; call wait() first");
    completion_.rethrowIfFailed();
    GEOPIPE_CHECK(!taken_, Error, describe(), ": takePayload() called twice");
    taken_ = true;
    return std::move(payload_);
  }

  // Called by the hub with the shard's mutex held.
  void complete(Bytes payload) {
    payload_ = std::move(payload);
    completion_.succeed();
  }
  void fail(std::exception_ptr error) { completion_.fail(std::move(error)); }

  std::string describe() const {
    return detail::concat("inproc: recv on rank ", dst_, " from rank ", src_, ", tag ", tag_.str());
  }
  int dst() const { return dst_; }
  int src() const { return src_; }
  const Tag& tag() const { return tag_; }

 private:
  std::weak_ptr<InprocHub> hub_;
  const int dst_;
  const int src_;
  const Tag tag_;
  Completion completion_;
  Bytes payload_;
  bool taken_ = false;
};

InprocHub::InprocHub(int world_size)
    : world_size_(world_size),
      shards_(static_cast<size_t>(std::max(world_size, 0))),
      counters_(static_cast<size_t>(std::max(world_size, 0))),
      failed_reason_(static_cast<size_t>(std::max(world_size, 0))),
      failed_(new std::atomic<bool>[static_cast<size_t>(std::max(world_size, 0))]) {
  GEOPIPE_CHECK(world_size >= 1, Error, "InprocHub: world size must be >= 1, got ", world_size);
  for (int r = 0; r < world_size; ++r) failed_[r] = false;
}

InprocHub::~InprocHub() {
  for (Shard& shard : shards_) {
    std::lock_guard<std::mutex> lock(shard.mu);
    for (auto& [key, box] : shard.boxes) {
      for (auto& waiter : box.waiters) {
        waiter->fail(
            GEOPIPE_ERROR_PTR(IoError, waiter->describe(), " failed: the hub was destroyed"));
      }
    }
  }
}

void InprocHub::checkRank(int rank, const char* what) const {
  GEOPIPE_CHECK(rank >= 0 && rank < world_size_, Error, "inproc: ", what, " rank ", rank,
                " is outside the world [0, ", world_size_, ")");
}

bool InprocHub::isFailed(int rank) const {
  checkRank(rank, "isFailed:");
  return failed_[rank].load();
}

std::exception_ptr InprocHub::failureLocked(int dst, int src, const Tag& tag) const {
  if (!shut_down_.load() && !failed_[src].load() && !failed_[dst].load()) return nullptr;
  std::lock_guard<std::mutex> lock(failure_mu_);
  const std::string what =
      detail::concat("inproc: recv on rank ", dst, " from rank ", src, ", tag ", tag.str());
  if (shut_down_.load()) {
    return GEOPIPE_ERROR_PTR(IoError, what, " failed: the hub was shut down (", shutdown_reason_,
                             ")");
  }
  if (failed_[src].load()) {
    return GEOPIPE_ERROR_PTR(IoError, what, " failed: peer rank ", src, " has failed (",
                             failed_reason_[src], ")");
  }
  return GEOPIPE_ERROR_PTR(IoError, what, " failed: this rank ", dst, " is marked failed (",
                           failed_reason_[dst], ")");
}

void InprocHub::markFailed(int rank, const std::string& reason) {
  checkRank(rank, "markFailed:");
  {
    std::lock_guard<std::mutex> lock(failure_mu_);
    if (failed_[rank].load()) return;
    failed_reason_[rank] = reason;
    failed_[rank] = true;
  }
  // Fail the receives already waiting on or for the dead rank. A receive
  // posted after this sweep sees the flag in post().
  for (int dst = 0; dst < world_size_; ++dst) {
    Shard& shard = shards_[dst];
    std::lock_guard<std::mutex> lock(shard.mu);
    for (auto it = shard.boxes.begin(); it != shard.boxes.end();) {
      const int src = std::get<0>(it->first);
      if (src == rank || dst == rank) {
        for (auto& waiter : it->second.waiters) {
          waiter->fail(failureLocked(dst, src, std::get<1>(it->first)));
        }
        it->second.waiters.clear();
      }
      it = it->second.messages.empty() && it->second.waiters.empty() ? shard.boxes.erase(it)
                                                                     : std::next(it);
    }
  }
}

void InprocHub::shutdown(const std::string& reason) {
  {
    std::lock_guard<std::mutex> lock(failure_mu_);
    if (shut_down_.load()) return;
    shutdown_reason_ = reason;
    shut_down_ = true;
  }
  for (int dst = 0; dst < world_size_; ++dst) {
    Shard& shard = shards_[dst];
    std::lock_guard<std::mutex> lock(shard.mu);
    for (auto& [key, box] : shard.boxes) {
      for (auto& waiter : box.waiters) {
        waiter->fail(failureLocked(dst, std::get<0>(key), std::get<1>(key)));
      }
      box.waiters.clear();
    }
  }
}

void InprocHub::deliver(int src, int dst, const Tag& tag, Bytes payload) {
  checkRank(src, "send from");
  checkRank(dst, "send to");
  const uint64_t size = payload.size();
  // Count before completing anything, so that a receiver woken by this
  // message already sees it in the stats.
  counters_[src].messages_sent += 1;
  counters_[src].bytes_sent += size;
  Shard& shard = shards_[dst];
  std::lock_guard<std::mutex> lock(shard.mu);
  auto it = shard.boxes.find(Key(src, tag));
  if (it != shard.boxes.end() && !it->second.waiters.empty()) {
    std::shared_ptr<InprocRecvWork> waiter = std::move(it->second.waiters.front());
    it->second.waiters.pop_front();
    if (it->second.waiters.empty() && it->second.messages.empty()) shard.boxes.erase(it);
    counters_[dst].messages_received += 1;
    counters_[dst].bytes_received += size;
    waiter->complete(std::move(payload));
  } else {
    shard.boxes[Key(src, tag)].messages.push_back(std::move(payload));
  }
}

std::shared_ptr<RecvWork> InprocHub::post(int dst, int src, const Tag& tag) {
  checkRank(dst, "recv on");
  checkRank(src, "recv from");
  auto work = std::make_shared<InprocRecvWork>(weak_from_this(), dst, src, tag);
  Shard& shard = shards_[dst];
  std::lock_guard<std::mutex> lock(shard.mu);
  auto it = shard.boxes.find(Key(src, tag));
  if (it != shard.boxes.end() && !it->second.messages.empty()) {
    // Messages that arrived before a failure stay receivable.
    counters_[dst].messages_received += 1;
    counters_[dst].bytes_received += it->second.messages.front().size();
    work->complete(std::move(it->second.messages.front()));
    it->second.messages.pop_front();
    if (it->second.messages.empty() && it->second.waiters.empty()) shard.boxes.erase(it);
  } else if (auto error = failureLocked(dst, src, tag)) {
    work->fail(std::move(error));
  } else {
    shard.boxes[Key(src, tag)].waiters.push_back(work);
  }
  return work;
}

bool InprocHub::withdraw(const InprocRecvWork& work, std::exception_ptr error) {
  Shard& shard = shards_[work.dst()];
  std::lock_guard<std::mutex> lock(shard.mu);
  auto it = shard.boxes.find(Key(work.src(), work.tag()));
  if (it == shard.boxes.end()) return false;
  auto& waiters = it->second.waiters;
  auto pos =
      std::find_if(waiters.begin(), waiters.end(),
                   [&](const std::shared_ptr<InprocRecvWork>& w) { return w.get() == &work; });
  if (pos == waiters.end()) return false;
  (*pos)->fail(std::move(error));
  waiters.erase(pos);
  if (waiters.empty() && it->second.messages.empty()) shard.boxes.erase(it);
  return true;
}

TransportStats InprocHub::stats(int rank) const {
  checkRank(rank, "stats of");
  const Counters& c = counters_[rank];
  TransportStats s;
  s.messages_sent = c.messages_sent.load();
  s.bytes_sent = c.bytes_sent.load();
  s.messages_received = c.messages_received.load();
  s.bytes_received = c.bytes_received.load();
  return s;
}

InprocTransport::InprocTransport(std::shared_ptr<InprocHub> hub, int rank)
    : hub_(std::move(hub)), rank_(rank) {
  GEOPIPE_CHECK(hub_ != nullptr, Error, "InprocTransport: hub is null");
  GEOPIPE_CHECK(rank >= 0 && rank < hub_->worldSize(), Error, "InprocTransport: rank ", rank,
                " is outside the hub's world [0, ", hub_->worldSize(), ")");
}

std::shared_ptr<Work> InprocTransport::send(int peer, const Tag& tag, Bytes payload) {
  GEOPIPE_CHECK(peer >= 0 && peer < worldSize(), Error, "inproc: send from rank ", rank_,
                " to rank ", peer, " (tag ", tag.str(), "): peer is outside the world [0, ",
                worldSize(), ")");
  auto failed = [&](const std::string& why) {
    return std::make_shared<FinishedWork>(GEOPIPE_ERROR_PTR(IoError, "inproc: send from rank ",
                                                            rank_, " to rank ", peer, ", tag ",
                                                            tag.str(), " failed: ", why));
  };
  if (hub_->isShutDown()) return failed("the hub was shut down");
  if (hub_->isFailed(peer)) return failed(detail::concat("peer rank ", peer, " has failed"));
  if (hub_->isFailed(rank_))
    return failed(detail::concat("this rank ", rank_, " is marked failed"));
  hub_->deliver(rank_, peer, tag, std::move(payload));
  return std::make_shared<FinishedWork>();
}

std::shared_ptr<RecvWork> InprocTransport::recv(int peer, const Tag& tag) {
  GEOPIPE_CHECK(peer >= 0 && peer < worldSize(), Error, "inproc: recv on rank ", rank_,
                " from rank ", peer, " (tag ", tag.str(), "): peer is outside the world [0, ",
                worldSize(), ")");
  return hub_->post(rank_, peer, tag);
}

std::vector<std::shared_ptr<Transport>> makeInprocWorld(int world_size,
                                                        std::shared_ptr<InprocHub>* hub_out) {
  auto hub = std::make_shared<InprocHub>(world_size);
  std::vector<std::shared_ptr<Transport>> world;
  world.reserve(static_cast<size_t>(world_size));
  for (int r = 0; r < world_size; ++r) world.push_back(std::make_shared<InprocTransport>(hub, r));
  if (hub_out) *hub_out = hub;
  return world;
}

}  // namespace geopipe::transport
