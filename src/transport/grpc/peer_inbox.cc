// PeerInbox: mailboxes, byte budget and ended streams of the gRPC transport.
#include "src/transport/grpc/peer_inbox.h"

#include <algorithm>

#include "geopipe/error.h"
#include "src/transport/completion.h"

namespace geopipe::transport {

// A receive posted on a PeerInbox; completed or failed under the inbox's
// mutex, withdrawn by wait() on timeout. Holds the inbox weakly (the inbox
// holds pending receives).
class InboxRecvWork : public RecvWork {
 public:
  InboxRecvWork(std::weak_ptr<PeerInbox> inbox, std::string what, int src, const Tag& tag)
      : inbox_(std::move(inbox)), what_(std::move(what)), src_(src), tag_(tag) {}

  void wait(Duration timeout) override {
    if (!completion_.waitUntil(deadlineAfter(timeout))) {
      auto error = GEOPIPE_ERROR_PTR(TimeoutError, what_, ": timed out after ", timeout.count(),
                                     " ms (no matching message arrived)");
      if (auto inbox = inbox_.lock()) {
        inbox->withdraw(*this, error);
      } else {
        completion_.fail(error);
      }
    }
    completion_.rethrowIfFailed();
  }
  bool done() const override { return completion_.finished(); }

  Bytes takePayload() override {
    GEOPIPE_CHECK(completion_.finished(), Error, what_,
                  ": takePayload() before the receive completed; call wait() first");
    completion_.rethrowIfFailed();
    GEOPIPE_CHECK(!taken_, Error, what_, ": takePayload() called twice");
    taken_ = true;
    return std::move(payload_);
  }

  void complete(Bytes payload) {
    payload_ = std::move(payload);
    completion_.succeed();
  }
  void fail(std::exception_ptr error) { completion_.fail(std::move(error)); }
  int src() const { return src_; }
  const Tag& tag() const { return tag_; }

 private:
  std::weak_ptr<PeerInbox> inbox_;
  const std::string what_;
  const int src_;
  const Tag tag_;
  Completion completion_;
  Bytes payload_;
  bool taken_ = false;
};

PeerInbox::PeerInbox(int rank, int world_size, uint64_t max_buffered_bytes,
                     std::function<std::string(int)> describe_peer)
    : rank_(rank),
      world_size_(world_size),
      max_buffered_bytes_(max_buffered_bytes),
      describe_peer_(std::move(describe_peer)),
      ended_(static_cast<size_t>(std::max(world_size, 0))) {}

PeerInbox::~PeerInbox() {
  close("the transport was destroyed");
}

std::string PeerInbox::describeRecv(int src, const Tag& tag) const {
  return detail::concat("grpc: recv on rank ", rank_, " from ", describe_peer_(src), ", tag ",
                        tag.str());
}

std::exception_ptr PeerInbox::failureLocked(int src, const Tag& tag) const {
  if (closed_) {
    return GEOPIPE_ERROR_PTR(IoError, describeRecv(src, tag), " failed: the transport was closed (",
                             close_reason_, ")");
  }
  const Ended& e = ended_[src];
  if (!e.ended) return nullptr;
  if (e.protocol) {
    return GEOPIPE_ERROR_PTR(ProtocolError, describeRecv(src, tag), " failed: ", e.reason);
  }
  return GEOPIPE_ERROR_PTR(IoError, describeRecv(src, tag), " failed: ", e.reason);
}

void PeerInbox::claimLocked(uint64_t bytes) {
  buffered_ -= std::min(buffered_, bytes);
  messages_received_ += 1;
  bytes_received_ += bytes;
  budget_cv_.notify_all();
}

std::shared_ptr<RecvWork> PeerInbox::post(int src, const Tag& tag) {
  GEOPIPE_CHECK(src >= 0 && src < world_size_, Error, "grpc: recv on rank ", rank_, " from rank ",
                src, ": source is outside the world [0, ", world_size_, ")");
  auto work = std::make_shared<InboxRecvWork>(weak_from_this(), describeRecv(src, tag), src, tag);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = boxes_.find(Key(src, tag));
  if (it != boxes_.end() && !it->second.messages.empty()) {
    // Messages that arrived before a failure stay receivable.
    Bytes payload = std::move(it->second.messages.front());
    it->second.messages.pop_front();
    if (it->second.messages.empty() && it->second.waiters.empty()) boxes_.erase(it);
    claimLocked(payload.size());
    work->complete(std::move(payload));
  } else if (auto error = failureLocked(src, tag)) {
    work->fail(std::move(error));
  } else {
    boxes_[Key(src, tag)].waiters.push_back(work);
    budget_cv_.notify_all();  // a stalled stream may carry this message
  }
  return work;
}

bool PeerInbox::admit(int src, const Tag& tag, uint64_t bytes,
                      const std::function<bool()>& abandon) {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    if (closed_) return false;
    const bool fits = buffered_ == 0 || buffered_ + bytes <= max_buffered_bytes_;
    auto it = boxes_.find(Key(src, tag));
    const bool awaited = it != boxes_.end() && !it->second.waiters.empty();
    if (fits || awaited) {
      buffered_ += bytes;
      return true;
    }
    if (abandon && abandon()) return false;
    budget_cv_.wait_for(lock, std::chrono::milliseconds(50));
  }
}

void PeerInbox::release(uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  buffered_ -= std::min(buffered_, bytes);
  budget_cv_.notify_all();
}

void PeerInbox::deliver(int src, const Tag& tag, Bytes payload) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = boxes_.find(Key(src, tag));
  if (it != boxes_.end() && !it->second.waiters.empty()) {
    std::shared_ptr<InboxRecvWork> waiter = std::move(it->second.waiters.front());
    it->second.waiters.pop_front();
    if (it->second.waiters.empty() && it->second.messages.empty()) boxes_.erase(it);
    claimLocked(payload.size());
    waiter->complete(std::move(payload));
  } else {
    boxes_[Key(src, tag)].messages.push_back(std::move(payload));
  }
}

void PeerInbox::deliverLocal(const Tag& tag, Bytes payload) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    buffered_ += payload.size();
  }
  deliver(rank_, tag, std::move(payload));
}

void PeerInbox::streamOpened(int src) {
  std::lock_guard<std::mutex> lock(mu_);
  ended_[src] = Ended{};
}

void PeerInbox::streamEnded(int src, bool protocol, const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  ended_[src] = Ended{true, protocol, reason};
  for (auto it = boxes_.begin(); it != boxes_.end();) {
    if (std::get<0>(it->first) == src) {
      for (auto& waiter : it->second.waiters) {
        waiter->fail(failureLocked(src, std::get<1>(it->first)));
      }
      it->second.waiters.clear();
    }
    it = it->second.messages.empty() && it->second.waiters.empty() ? boxes_.erase(it)
                                                                   : std::next(it);
  }
}

void PeerInbox::close(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) return;
  closed_ = true;
  close_reason_ = reason;
  for (auto& [key, box] : boxes_) {
    for (auto& waiter : box.waiters)
      waiter->fail(failureLocked(std::get<0>(key), std::get<1>(key)));
    box.waiters.clear();
  }
  budget_cv_.notify_all();
}

bool PeerInbox::withdraw(const InboxRecvWork& work, std::exception_ptr error) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = boxes_.find(Key(work.src(), work.tag()));
  if (it == boxes_.end()) return false;
  auto& waiters = it->second.waiters;
  auto pos =
      std::find_if(waiters.begin(), waiters.end(),
                   [&](const std::shared_ptr<InboxRecvWork>& w) { return w.get() == &work; });
  if (pos == waiters.end()) return false;
  (*pos)->fail(std::move(error));
  waiters.erase(pos);
  if (waiters.empty() && it->second.messages.empty()) boxes_.erase(it);
  return true;
}

uint64_t PeerInbox::bufferedBytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return buffered_;
}
uint64_t PeerInbox::messagesReceived() const {
  std::lock_guard<std::mutex> lock(mu_);
  return messages_received_;
}
uint64_t PeerInbox::bytesReceived() const {
  std::lock_guard<std::mutex> lock(mu_);
  return bytes_received_;
}

}  // namespace geopipe::transport
