// Test harness for transport tests: a world of ranks on one InprocHub,
// optionally link-emulated, and spawn() to run a function on every rank as
// its own thread (Gloo's spawn).
#pragma once

#include <gtest/gtest.h>

#include <condition_variable>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "src/transport/inproc/inproc_transport.h"
#include "src/transport/link_emulator.h"
#include "src/transport/transport.h"

namespace geopipe::transport::testing {

enum class Kind { INPROC, EMULATED };

inline const char* kindName(Kind kind) {
  return kind == Kind::INPROC ? "inproc" : "emulated";
}

// Fast links for functional tests over the emulator: the code paths of the
// emulator, without making the tests slow.
inline LinkSpec fastLink(int, int) {
  return LinkSpec{0.2, 20.0};
}

struct World {
  std::shared_ptr<InprocHub> hub;
  std::vector<std::shared_ptr<Transport>> ranks;
  int size() const { return static_cast<int>(ranks.size()); }
};

inline World makeWorld(Kind kind, int n, LinkFunction links = fastLink,
                       LinkEmulatorOptions options = {}) {
  World world;
  world.ranks = makeInprocWorld(n, &world.hub);
  if (kind == Kind::EMULATED) world.ranks = emulateLinks(world.ranks, links, options);
  return world;
}

// Runs fn(transport) on one thread per rank and rethrows the first failure
// (after joining all threads) so that gtest reports it.
inline void spawn(World& world, const std::function<void(Transport&)>& fn) {
  std::vector<std::thread> threads;
  std::vector<std::exception_ptr> errors(world.ranks.size());
  for (size_t r = 0; r < world.ranks.size(); ++r) {
    threads.emplace_back([&, r] {
      try {
        fn(*world.ranks[r]);
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (size_t r = 0; r < errors.size(); ++r) {
    if (!errors[r]) continue;
    try {
      std::rethrow_exception(errors[r]);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "rank " << r << " threw: " << e.what();
    }
  }
}

// A reusable rendezvous of `n` threads (C++17 has no std::barrier).
class ThreadBarrier {
 public:
  explicit ThreadBarrier(int n) : n_(n) {}
  void arriveAndWait() {
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t gen = generation_;
    if (++arrived_ == n_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    cv_.wait(lock, [&] { return generation_ != gen; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int n_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
};

// A payload that names its sender and sequence number, for order checks.
inline Bytes stamp(int src, int seq, size_t extra = 0) {
  Bytes b(8 + extra, static_cast<uint8_t>(seq * 7 + src));
  std::memcpy(b.data(), &src, 4);
  std::memcpy(b.data() + 4, &seq, 4);
  return b;
}
inline std::pair<int, int> unstamp(const Bytes& b) {
  int src = -1, seq = -1;
  if (b.size() >= 8) {
    std::memcpy(&src, b.data(), 4);
    std::memcpy(&seq, b.data() + 4, 4);
  }
  return {src, seq};
}

inline Bytes recvNow(Transport& t, int peer, const Tag& tag,
                     Duration timeout = std::chrono::seconds(10)) {
  auto r = t.recv(peer, tag);
  r->wait(timeout);
  return r->takePayload();
}

inline Tag tagOf(Channel channel, int64_t step, int32_t index = 0) {
  Tag tag;
  tag.channel = channel;
  tag.step = step;
  tag.index = index;
  return tag;
}

}  // namespace geopipe::transport::testing
