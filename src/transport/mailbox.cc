// Mailbox: matching, withdrawal on timeout, failures and the byte budget of
// one rank's receives, for every transport.
#include "src/transport/mailbox.h"

#include <algorithm>

#include "src/transport/completion.h"

namespace geopipe::transport {

// A receive posted on a Mailbox; completed or failed under the mailbox's
// mutex, withdrawn by wait() on timeout. It holds the mailbox weakly: the
// mailbox holds pending receives, so a strong pointer would make a cycle and
// leak every mailbox that still has an abandoned receive.
class MailboxRecvWork : public RecvWork {
 public:
  MailboxRecvWork(std::weak_ptr<Mailbox> mailbox, std::string what, int src, const Tag& tag)
      : mailbox_(std::move(mailbox)), what_(std::move(what)), src_(src), tag_(tag) {}

  void wait(Duration timeout) override {
    if (!completion_.waitUntil(deadlineAfter(timeout))) {
      auto error = GEOPIPE_ERROR_PTR(TimeoutError, what_, ": timed out after ", timeout.count(),
                                     " ms (no matching message arrived)");
      if (auto mailbox = mailbox_.lock()) {
        mailbox->withdraw(*this, error);
      } else {
        completion_.fail(error);  // the mailbox is gone: nothing can match it any more
      }
    }
    completion_.rethrowIfFailed();
  }
  bool done() const override { return completion_.finished(); }
  Clock::time_point finishedAt() const override { return completion_.finishedAt(); }

  Bytes takePayload() override {
    GEOPIPE_CHECK(completion_.finished(), Error, what_,
                  ": takePayload() before the receive completed; call wait() first");
    completion_.rethrowIfFailed();
    GEOPIPE_CHECK(!taken_, Error, what_, ": takePayload() called twice");
    taken_ = true;
    return std::move(payload_);
  }

  // Called by the mailbox with its mutex held.
  void complete(Bytes payload) {
    payload_ = std::move(payload);
    completion_.succeed();
  }
  void fail(std::exception_ptr error) { completion_.fail(std::move(error)); }
  int src() const { return src_; }
  const Tag& tag() const { return tag_; }

 private:
  std::weak_ptr<Mailbox> mailbox_;
  const std::string what_;
  const int src_;
  const Tag tag_;
  Completion completion_;
  Bytes payload_;
  bool taken_ = false;
};

Mailbox::Mailbox(Options options)
    : options_(std::move(options)), failed_(static_cast<size_t>(std::max(options_.world_size, 0))) {
  GEOPIPE_CHECK(options_.world_size >= 1, Error, options_.transport,
                ": mailbox: world size must be >= 1, got ", options_.world_size);
}

Mailbox::~Mailbox() {
  close("the transport was destroyed");
}

std::string Mailbox::describeRecv(int src, const Tag& tag) const {
  const std::string peer =
      options_.describe_peer ? options_.describe_peer(src) : detail::concat("rank ", src);
  return detail::concat(options_.transport, ": recv on rank ", options_.rank, " from ", peer,
                        ", tag ", tag.str());
}

std::exception_ptr Mailbox::failureLocked(int src, const Tag& tag) const {
  if (closed_) {
    return GEOPIPE_ERROR_PTR(IoError, describeRecv(src, tag), " failed: ", close_reason_);
  }
  const SourceFailure& f = failed_[static_cast<size_t>(src)];
  if (!f.failed) return nullptr;
  if (f.kind == ErrorKind::PROTOCOL) {
    return GEOPIPE_ERROR_PTR(ProtocolError, describeRecv(src, tag), " failed: ", f.reason);
  }
  return GEOPIPE_ERROR_PTR(IoError, describeRecv(src, tag), " failed: ", f.reason);
}

void Mailbox::claimLocked(uint64_t bytes) {
  // Count before completing the receive, so that a receiver woken by this
  // message already sees it in the stats.
  buffered_ -= std::min(buffered_, bytes);
  messages_received_ += 1;
  bytes_received_ += bytes;
  budget_cv_.notify_all();
}

void Mailbox::sweepLocked(const std::function<bool(int)>& matches) {
  for (auto it = queues_.begin(); it != queues_.end();) {
    const int src = std::get<0>(it->first);
    if (matches(src)) {
      for (auto& waiter : it->second.waiters)
        waiter->fail(failureLocked(src, std::get<1>(it->first)));
      it->second.waiters.clear();
    }
    it = it->second.messages.empty() && it->second.waiters.empty() ? queues_.erase(it)
                                                                   : std::next(it);
  }
}

std::shared_ptr<RecvWork> Mailbox::post(int src, const Tag& tag) {
  GEOPIPE_CHECK(src >= 0 && src < options_.world_size, Error, options_.transport, ": recv on rank ",
                options_.rank, " from rank ", src, " (tag ", tag.str(),
                "): peer is outside the world [0, ", options_.world_size, ")");
  auto work = std::make_shared<MailboxRecvWork>(weak_from_this(), describeRecv(src, tag), src, tag);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = queues_.find(Key(src, tag));
  if (it != queues_.end() && !it->second.messages.empty()) {
    // Messages that arrived before a failure stay receivable.
    Bytes payload = std::move(it->second.messages.front());
    it->second.messages.pop_front();
    if (it->second.messages.empty() && it->second.waiters.empty()) queues_.erase(it);
    claimLocked(payload.size());
    work->complete(std::move(payload));
  } else if (auto error = failureLocked(src, tag)) {
    work->fail(std::move(error));
  } else {
    queues_[Key(src, tag)].waiters.push_back(work);
    budget_cv_.notify_all();  // a stalled stream may carry this message
  }
  return work;
}

void Mailbox::deliver(int src, const Tag& tag, Bytes payload, bool admitted) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!admitted) buffered_ += payload.size();
  auto it = queues_.find(Key(src, tag));
  if (it != queues_.end() && !it->second.waiters.empty()) {
    std::shared_ptr<MailboxRecvWork> waiter = std::move(it->second.waiters.front());
    it->second.waiters.pop_front();
    if (it->second.waiters.empty() && it->second.messages.empty()) queues_.erase(it);
    claimLocked(payload.size());
    waiter->complete(std::move(payload));
  } else {
    queues_[Key(src, tag)].messages.push_back(std::move(payload));
  }
}

bool Mailbox::admit(int src, const Tag& tag, uint64_t bytes, const std::function<bool()>& abandon) {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    if (closed_) return false;
    const bool fits = buffered_ == 0 || buffered_ + bytes <= options_.max_buffered_bytes;
    auto it = queues_.find(Key(src, tag));
    const bool awaited = it != queues_.end() && !it->second.waiters.empty();
    if (fits || awaited) {
      buffered_ += bytes;
      return true;
    }
    if (abandon) {
      // Asked without mu_: the caller's test may take its own locks, which
      // are held elsewhere while delivering here.
      lock.unlock();
      const bool give_up = abandon();
      lock.lock();
      if (give_up) return false;
    }
    budget_cv_.wait_for(lock, std::chrono::milliseconds(50));
  }
}

void Mailbox::release(uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  buffered_ -= std::min(buffered_, bytes);
  budget_cv_.notify_all();
}

void Mailbox::failSource(int src, ErrorKind kind, const std::string& reason) {
  GEOPIPE_CHECK(src >= 0 && src < options_.world_size, Error, options_.transport,
                ": mailbox: failSource(", src, ") is outside the world [0, ", options_.world_size,
                ")");
  std::lock_guard<std::mutex> lock(mu_);
  failed_[static_cast<size_t>(src)] = SourceFailure{true, kind, reason};
  sweepLocked([src](int s) { return s == src; });
}

void Mailbox::clearSource(int src) {
  GEOPIPE_CHECK(src >= 0 && src < options_.world_size, Error, options_.transport,
                ": mailbox: clearSource(", src, ") is outside the world [0, ", options_.world_size,
                ")");
  std::lock_guard<std::mutex> lock(mu_);
  failed_[static_cast<size_t>(src)] = SourceFailure{};
}

void Mailbox::close(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) return;
  closed_ = true;
  close_reason_ = reason;
  sweepLocked([](int) { return true; });
  budget_cv_.notify_all();
}

bool Mailbox::closed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return closed_;
}

bool Mailbox::withdraw(const MailboxRecvWork& work, std::exception_ptr error) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = queues_.find(Key(work.src(), work.tag()));
  if (it == queues_.end()) return false;
  auto& waiters = it->second.waiters;
  auto pos =
      std::find_if(waiters.begin(), waiters.end(),
                   [&](const std::shared_ptr<MailboxRecvWork>& w) { return w.get() == &work; });
  if (pos == waiters.end()) return false;
  (*pos)->fail(std::move(error));
  waiters.erase(pos);
  if (waiters.empty() && it->second.messages.empty()) queues_.erase(it);
  return true;
}

uint64_t Mailbox::bufferedBytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return buffered_;
}

uint64_t Mailbox::messagesReceived() const {
  std::lock_guard<std::mutex> lock(mu_);
  return messages_received_;
}

uint64_t Mailbox::bytesReceived() const {
  std::lock_guard<std::mutex> lock(mu_);
  return bytes_received_;
}

}  // namespace geopipe::transport
