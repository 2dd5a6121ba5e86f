// Tag helpers, the Completion primitive and the shared Work handles.
#include "src/transport/transport.h"

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

bool Completion::succeed() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return false;
    finished_ = true;
  }
  cv_.notify_all();
  return true;
}

bool Completion::fail(std::exception_ptr error) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return false;
    finished_ = true;
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
