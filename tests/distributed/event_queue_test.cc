// The coordinator's event queue alone: events delivered in order outside
// the owner's lock, a sink that calls back in finds the lock free and its
// own events follow when it returns, one deliverer at a time.
#include "src/distributed/event_queue.h"

#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <thread>

namespace geopipe::distributed {
namespace {

TEST(EventQueue, EventsGoToTheSinkInOrderOutsideTheLockWhenItIsReleased) {
  std::mutex mu;
  std::vector<std::string> seen;
  bool lock_free = true;
  EventQueue q(
      mu,
      [&](const std::string& line) {
        std::unique_lock<std::mutex> probe(mu, std::try_to_lock);
        lock_free = lock_free && probe.owns_lock();
        seen.push_back(line);
      },
      "test sink");
  {
    EventQueue::Lock lock(q);
    q.push("one");
    q.push("two");
    EXPECT_TRUE(seen.empty());  // not while the lock is held
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"one", "two"}));
  EXPECT_TRUE(lock_free);
  {
    EventQueue::Lock lock(q);
    q.push("three");
    lock.unlock();  // released early: delivered at the end of the scope
  }
  EXPECT_EQ(seen.back(), "three");
}

TEST(EventQueue, ASinkCallingBackInReturnsAtOnceAndItsEventsFollow) {
  std::mutex mu;
  std::vector<std::string> seen;
  int depth = 0, deepest = 0;
  EventQueue* queue = nullptr;
  EventQueue q(
      mu,
      [&](const std::string& line) {
        deepest = std::max(deepest, ++depth);
        seen.push_back(line);
        if (line == "first") {
          EventQueue::Lock lock(*queue);  // the sink calls into its owner
          queue->push("from the sink");
        }
        --depth;
      },
      "test sink");
  queue = &q;
  {
    EventQueue::Lock lock(q);
    q.push("first");
    q.push("second");
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"first", "second", "from the sink"}));
  EXPECT_EQ(deepest, 1);
}

TEST(EventQueue, ASinkThatThrowsLosesOnlyThatEvent) {
  std::mutex mu;
  std::vector<std::string> seen;
  EventQueue q(
      mu,
      [&](const std::string& line) {
        if (line == "bad") throw std::runtime_error("sink broke");
        seen.push_back(line);
      },
      "test sink");
  {
    EventQueue::Lock lock(q);
    q.push("bad");
    q.push("good");
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"good"}));
}

TEST(EventQueue, ManyThreadsOneDelivererAtATimeEveryEventOnce) {
  std::mutex mu;
  std::atomic<int> inside{0};
  std::atomic<bool> overlapped{false};
  std::vector<std::string> seen;  // only the one deliverer writes it
  EventQueue q(
      mu,
      [&](const std::string& line) {
        if (++inside > 1) overlapped = true;
        seen.push_back(line);
        --inside;
      },
      "test sink");
  constexpr int kThreads = 4, kEach = 200;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        EventQueue::Lock lock(q);
        q.push(std::to_string(t) + ":" + std::to_string(i));
      }
    });
  }
  for (auto& th : threads) th.join();
  q.deliver();
  EXPECT_FALSE(overlapped);
  ASSERT_EQ(seen.size(), static_cast<size_t>(kThreads * kEach));
  // Each thread's events in the order it queued them.
  std::vector<int> next(kThreads, 0);
  for (const auto& line : seen) {
    const int t = std::stoi(line.substr(0, line.find(':')));
    EXPECT_EQ(std::stoi(line.substr(line.find(':') + 1)), next[static_cast<size_t>(t)]++);
  }
}

}  // namespace
}  // namespace geopipe::distributed
