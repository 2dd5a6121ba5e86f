// Tag helpers, the Completion primitive and the shared Work handles.
#include "src/transport/transport.h"

#include <algorithm>
#include <sstream>
#include <tuple>

#include "geopipe/error.h"
#include "src/transport/completion.h"

namespace geopipe::transport {

const char* channelName(Channel channel) {
  switch (channel) {
    case Channel::ACTIVATION:
      return "ACTIVATION";
    case Channel::ACTIVATION_GRAD:
      return "ACTIVATION_GRAD";
    case Channel::GRADIENT:
      return "GRADIENT";
    case Channel::CONTROL:
      return "CONTROL";
  }
  return "UNKNOWN_CHANNEL";
}

bool Tag::operator<(const Tag& o) const {
  return std::tie(channel, step, micro_batch, index) <
         std::tie(o.channel, o.step, o.micro_batch, o.index);
}

std::string Tag::str() const {
  std::ostringstream os;
  os << channelName(channel) << "/step=" << step << "/mb=" << micro_batch << "/idx=" << index;
  return os.str();
}

SendTally::SendTally(int world_size)
    : world_size_(world_size),
      bytes_to_(new std::atomic<uint64_t>[static_cast<size_t>(std::max(world_size, 0))]()) {}

void SendTally::count(int peer, uint64_t bytes) {
  GEOPIPE_CHECK(peer >= 0 && peer < world_size_, Error, "SendTally: peer ", peer,
                " is outside the world [0, ", world_size_, ")");
  messages_.fetch_add(1, std::memory_order_relaxed);
  bytes_to_[peer].fetch_add(bytes, std::memory_order_relaxed);
}

void SendTally::addTo(TransportStats& into) const {
  into.messages_sent += messages_.load(std::memory_order_relaxed);
  if (into.bytes_sent_to.size() < static_cast<size_t>(world_size_))
    into.bytes_sent_to.resize(static_cast<size_t>(world_size_), 0);
  for (int peer = 0; peer < world_size_; ++peer) {
    const uint64_t bytes = bytes_to_[peer].load(std::memory_order_relaxed);
    into.bytes_sent_to[peer] += bytes;
    into.bytes_sent += bytes;
  }
}

bool Completion::succeed() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return false;
    finished_ = true;
    finished_at_ = Clock::now();
  }
  cv_.notify_all();
  return true;
}

bool Completion::fail(std::exception_ptr error) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return false;
    finished_ = true;
    finished_at_ = Clock::now();
    error_ = std::move(error);
  }
  cv_.notify_all();
  return true;
}

bool Completion::finished() const {
  std::lock_guard<std::mutex> lock(mu_);
  return finished_;
}

bool Completion::waitUntil(Clock::time_point deadline) const {
  std::unique_lock<std::mutex> lock(mu_);
  if (deadline == Clock::time_point::max()) {
    cv_.wait(lock, [&] { return finished_; });
    return true;
  }
  return cv_.wait_until(lock, deadline, [&] { return finished_; });
}

Clock::time_point Completion::finishedAt() const {
  std::lock_guard<std::mutex> lock(mu_);
  return finished_at_;
}

void Completion::rethrowIfFailed() const {
  std::exception_ptr error;
  {
    std::lock_guard<std::mutex> lock(mu_);
    error = error_;
  }
  if (error) std::rethrow_exception(error);
}

void PendingWork::wait(Duration timeout) {
  if (!completion_.waitUntil(deadlineAfter(timeout))) {
    GEOPIPE_THROW(TimeoutError, what_, ": timed out after ", timeout.count(), " ms");
  }
  completion_.rethrowIfFailed();
}

}  // namespace geopipe::transport
