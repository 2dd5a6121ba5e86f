// Building blocks shared by the Work implementations of src/transport: a
// one-shot completion with a stored failure, and ready-made finished handles.
#pragma once

#include <condition_variable>
#include <exception>
#include <mutex>

#include "geopipe/error.h"
#include "src/transport/transport.h"

// An exception_ptr holding ErrorType with the streamed message and this
// file:line, for failures that are stored in a Work rather than thrown.
#define GEOPIPE_ERROR_PTR(ErrorType, ...) \
  std::make_exception_ptr(                \
      ErrorType(::geopipe::detail::concat(__VA_ARGS__), __FILE__ ":" GEOPIPE_STRINGIFY(__LINE__)))

namespace geopipe::transport {

// A one-shot completion flag that stores the failure, if any. The first of
// succeed()/fail() wins; later calls return false and change nothing.
// Thread-safe; waitUntil() blocks the caller on a condition variable.
class Completion {
 public:
  bool succeed();
  bool fail(std::exception_ptr error);
  bool finished() const;
  // Blocks until finished or `deadline`; returns finished().
  bool waitUntil(Clock::time_point deadline) const;
  // Rethrows the stored failure; returns normally after succeed() or while
  // still pending.
  void rethrowIfFailed() const;
  // When the first succeed()/fail() ran; Clock::time_point{} before.
  Clock::time_point finishedAt() const;

 private:
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  bool finished_ = false;
  Clock::time_point finished_at_{};
  std::exception_ptr error_;
};

// A Work that is finished when it is made: success when `error` is null,
// else every wait() rethrows it. Used for operations that complete inside
// the call (an inproc send) or fail before they start.
class FinishedWork : public Work {
 public:
  explicit FinishedWork(std::exception_ptr error = nullptr) : error_(std::move(error)) {}
  void wait(Duration) override {
    if (error_) std::rethrow_exception(error_);
  }
  bool done() const override { return true; }
  Clock::time_point finishedAt() const override { return made_at_; }

 private:
  std::exception_ptr error_;
  const Clock::time_point made_at_ = Clock::now();
};

// A Work completed later by whoever holds it (the link emulator's delivery
// thread completes its sends). On timeout, wait() throws TimeoutError with
// `what` (e.g. "send from rank 0 to rank 1, tag ...") in the message and
// leaves the operation pending.
class PendingWork : public Work {
 public:
  explicit PendingWork(std::string what) : what_(std::move(what)) {}
  void wait(Duration timeout) override;
  bool done() const override { return completion_.finished(); }
  Clock::time_point finishedAt() const override { return completion_.finishedAt(); }
  Completion& completion() { return completion_; }

 private:
  std::string what_;
  Completion completion_;
};

}  // namespace geopipe::transport
