// StagingPool (src/runtime/staging_pool.h): host buffers for tensors leaving
// a device are reused by element count, never lent twice at once, and
// counted; pinned memory itself needs a GPU (tests/gpu).
#include "src/runtime/staging_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "geopipe/error.h"

namespace geopipe::runtime {
namespace {

TEST(StagingPool, ReusesBuffersByElementCountAndNeverLendsOneTwice) {
  StagingPool pool(/*pinned=*/false);
  torch::Tensor a = pool.take({2, 3, 4});
  torch::Tensor b = pool.take({2, 3, 4});
  EXPECT_NE(a.data_ptr(), b.data_ptr());
  EXPECT_EQ(a.sizes(), (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(a.scalar_type(), torch::kFloat32);
  EXPECT_FALSE(a.is_pinned());
  void* const first = a.data_ptr();
  pool.give(a);
  // The same element count in another shape gets the returned buffer.
  torch::Tensor c = pool.take({4, 6});
  EXPECT_EQ(c.data_ptr(), first);
  EXPECT_EQ(c.sizes(), (std::vector<int64_t>{4, 6}));
  // Another count gets a new one.
  torch::Tensor d = pool.take({5});
  EXPECT_NE(d.data_ptr(), first);
  StagingStats s = pool.stats();
  EXPECT_EQ(s.allocated, 3u);
  EXPECT_EQ(s.reused, 1u);
  EXPECT_EQ(s.bytes, (24u + 24u + 5u) * sizeof(float));
  EXPECT_EQ(s.lent, 3u);
  pool.give(b);
  pool.give(c);
  pool.give(d);
  EXPECT_EQ(pool.stats().lent, 0u);
  EXPECT_THROW(pool.give(torch::zeros({3})), Error);  // more back than lent
  EXPECT_THROW(pool.give(torch::zeros({3}, torch::kInt32)), Error);
}

// The compute thread takes while the codec lane gives back: after many
// rounds from two threads no buffer was lent to both at once, and the pool
// holds only what was in flight at most.
TEST(StagingPool, TakesAndGivesFromTwoThreadsAtOnce) {
  StagingPool pool(false);
  constexpr int kRounds = 2000;
  std::vector<torch::Tensor> handed(kRounds);
  std::atomic<int> ready{0}, given{0};
  std::thread lane([&] {
    for (int i = 0; i < kRounds; ++i) {
      while (ready.load() <= i) std::this_thread::yield();
      // Still holds what the taker wrote: nobody else had the buffer.
      EXPECT_EQ(handed[i].data_ptr<float>()[0], static_cast<float>(i));
      pool.give(std::move(handed[i]));
      given.store(i + 1);
    }
  });
  for (int i = 0; i < kRounds; ++i) {
    // At most 8 buffers out at once, as a pipeline's few in-flight
    // payloads: then takes must reuse what the lane gave back, however the
    // two threads are scheduled (a busy machine once ran every take before
    // the lane's first give, so nothing was reused).
    while (i - given.load() >= 8) std::this_thread::yield();
    torch::Tensor t = pool.take({64});
    t.data_ptr<float>()[0] = static_cast<float>(i);
    handed[i] = t;
    ready.store(i + 1);
  }
  lane.join();
  const StagingStats s = pool.stats();
  EXPECT_EQ(s.lent, 0u);
  EXPECT_EQ(s.allocated + s.reused, uint64_t{kRounds});
  EXPECT_LE(s.allocated, 8u) << "only as many buffers as were out at once";
}

}  // namespace
}  // namespace geopipe::runtime
