// EventQueue: delivery outside the owner's lock, in order, one thread at a time.
#include "src/distributed/event_queue.h"

#include <spdlog/spdlog.h>

#include <exception>

namespace geopipe::distributed {

EventQueue::EventQueue(std::mutex& mu, std::function<void(const std::string&)> sink,
                       std::string name)
    : mu_(mu), sink_(std::move(sink)), name_(std::move(name)) {}

void EventQueue::deliver() {
  thread_local const EventQueue* delivering = nullptr;
  if (delivering == this) return;
  while (true) {
    std::unique_lock<std::mutex> order(deliver_mu_, std::try_to_lock);
    if (!order.owns_lock()) return;
    delivering = this;
    while (true) {
      std::vector<std::string> lines;
      {
        std::lock_guard<std::mutex> lock(mu_);
        lines.swap(lines_);
      }
      if (lines.empty()) break;
      for (const auto& line : lines) {
        try {
          sink_(line);
        } catch (const std::exception& e) {
          spdlog::warn("{} failed: {} (event: {})", name_, e.what(), line);
        }
      }
    }
    delivering = nullptr;
    order.unlock();
    std::lock_guard<std::mutex> lock(mu_);
    if (lines_.empty()) return;
  }
}

}  // namespace geopipe::distributed
