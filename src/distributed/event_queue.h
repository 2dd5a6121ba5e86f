// The coordinator's one-line events, queued under its lock and handed to the
// sink outside it, in order, by one thread at a time.
#pragma once

#include <functional>
#include <mutex>
#include <string>
#include <vector>

namespace geopipe::distributed {

// Events a service queues while it holds its lock and delivers after it let
// go: a slow sink (the CLI's stdout) holds up no call, and a sink that calls
// back into the service finds the lock free. The owner's mutex guards the
// queue: push() is called holding it, deliver() without it. One thread
// delivers at a time; a thread that finds another delivering leaves its
// events to it (the deliverer looks again after letting go), and a sink
// calling back in returns at once from deliver() (its events follow when it
// returns). A sink that throws is logged and the next event delivered.
class EventQueue {
 public:
  // `mu` is the owner's lock and must outlive the queue; `sink` gets every
  // line; `name` says whose sink failed in the warning ("the coordinator's
  // event sink").
  EventQueue(std::mutex& mu, std::function<void(const std::string&)> sink, std::string name);

  // Queues `line` (the caller holds the owner's lock).
  void push(std::string line) { lines_.push_back(std::move(line)); }
  // Hands the queued lines to the sink (the caller does not hold the lock).
  void deliver();

  // Holds the owner's lock; on release (the end of its scope) delivers the
  // events queued meanwhile, outside the lock.
  class Lock : public std::unique_lock<std::mutex> {
   public:
    explicit Lock(EventQueue& q) : std::unique_lock<std::mutex>(q.mu_), queue_(q) {}
    ~Lock() {
      if (owns_lock()) unlock();
      queue_.deliver();
    }
    Lock(const Lock&) = delete;
    Lock& operator=(const Lock&) = delete;

   private:
    EventQueue& queue_;
  };

 private:
  std::mutex& mu_;
  const std::function<void(const std::string&)> sink_;
  const std::string name_;
  std::mutex deliver_mu_;           // one thread delivers at a time
  std::vector<std::string> lines_;  // queued (mu_)
};

}  // namespace geopipe::distributed
