// Collectives over the real transports with ranks as threads: all-reduce
// exactness and bit-identical results, all-gather order, broadcast,
// barrier, subgroups, concurrent collectives, failure paths.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <random>

#include "geopipe/error.h"
#include "src/transport/collectives.h"
#include "tests/transport/world.h"

namespace geopipe::transport::testing {
namespace {

using std::chrono::milliseconds;

std::vector<int> allRanks(int n) {
  std::vector<int> g(n);
  for (int i = 0; i < n; ++i) g[i] = i;
  return g;
}

class CollectivesTest : public ::testing::TestWithParam<std::tuple<Kind, int>> {
 protected:
  Kind kind() const { return std::get<0>(GetParam()); }
  int n() const { return std::get<1>(GetParam()); }
};

TEST_P(CollectivesTest, AllReduceSumIsExactAndIdenticalOnEveryRank) {
  World world = makeWorld(kind(), n());
  CollectiveOptions options;
  options.chunk_bytes = 4096;  // several chunks per ring segment
  for (size_t count : {size_t{0}, size_t{1}, size_t{5}, size_t{1000}, size_t{100003}}) {
    std::vector<std::vector<float>> results(n());
    spawn(world, [&](Transport& t) {
      std::vector<float> x(count);
      // Small integers: every partial sum is exact, whatever the order.
      for (size_t i = 0; i < count; ++i) x[i] = static_cast<float>((t.rank() + 1) * (i % 17) - 8);
      allReduceSum(t, allRanks(n()), x.data(), count, options);
      results[t.rank()] = std::move(x);
    });
    for (size_t i = 0; i < count; ++i) {
      float expected = 0;
      for (int r = 0; r < n(); ++r) expected += static_cast<float>((r + 1) * (i % 17) - 8);
      ASSERT_EQ(results[0][i], expected) << "count " << count << " element " << i;
    }
    for (int r = 1; r < n() && count > 0; ++r) {
      ASSERT_EQ(0, std::memcmp(results[r].data(), results[0].data(), count * sizeof(float)))
          << "rank " << r << " differs from rank 0, count " << count;
    }
  }
}

TEST_P(CollectivesTest, AllReduceOfArbitraryFloatsIsBitIdenticalAndClose) {
  World world = makeWorld(kind(), n());
  constexpr size_t kCount = 50001;
  std::vector<std::vector<float>> inputs(n()), results(n());
  for (int r = 0; r < n(); ++r) {
    std::mt19937 rng(r + 1);
    std::normal_distribution<float> normal;
    inputs[r].resize(kCount);
    for (size_t i = 0; i < kCount; ++i)
      inputs[r][i] = normal(rng) * std::pow(10.0f, (i % 7) - 3.0f);
  }
  CollectiveOptions options;
  options.chunk_bytes = 16384;
  options.step = 42;
  spawn(world, [&](Transport& t) {
    std::vector<float> x = inputs[t.rank()];
    allReduceAverage(t, allRanks(n()), x.data(), kCount, options);
    results[t.rank()] = std::move(x);
  });
  for (int r = 1; r < n(); ++r) {
    ASSERT_EQ(0, std::memcmp(results[r].data(), results[0].data(), kCount * sizeof(float)))
        << "rank " << r;
  }
  for (size_t i = 0; i < kCount; ++i) {
    double sum = 0, mag = 0;
    for (int r = 0; r < n(); ++r) {
      sum += inputs[r][i];
      mag += std::abs(inputs[r][i]);
    }
    ASSERT_NEAR(results[0][i], sum / n(), 1e-6 * mag + 1e-30) << "element " << i;
  }
}

TEST_P(CollectivesTest, AllGatherReturnsContributionsInGroupOrder) {
  World world = makeWorld(kind(), n());
  // A group listed in a scrambled order: result[i] must come from group[i].
  std::vector<int> group = allRanks(n());
  std::reverse(group.begin(), group.end());
  if (n() > 2) std::swap(group[0], group[1]);
  spawn(world, [&](Transport& t) {
    Bytes mine(static_cast<size_t>(t.rank()) * 1000 + 1, static_cast<uint8_t>(t.rank() + 1));
    std::vector<Bytes> all = allGatherBytes(t, group, mine);
    ASSERT_EQ(all.size(), group.size());
    for (size_t i = 0; i < group.size(); ++i) {
      EXPECT_EQ(all[i], Bytes(static_cast<size_t>(group[i]) * 1000 + 1,
                              static_cast<uint8_t>(group[i] + 1)));
    }
  });
}

TEST_P(CollectivesTest, BroadcastFromEveryRoot) {
  World world = makeWorld(kind(), n());
  spawn(world, [&](Transport& t) {
    for (int root = 0; root < n(); ++root) {
      Bytes data = t.rank() == root ? Bytes(777, static_cast<uint8_t>(root + 10)) : Bytes{9};
      CollectiveOptions options;
      options.step = root;
      broadcast(t, allRanks(n()), root, data, options);
      EXPECT_EQ(data, Bytes(777, static_cast<uint8_t>(root + 10)));
    }
  });
}

TEST_P(CollectivesTest, BarrierHoldsEveryoneUntilTheLastArrives) {
  World world = makeWorld(kind(), n());
  std::atomic<int> arrived{0};
  spawn(world, [&](Transport& t) {
    for (int round = 1; round <= 3; ++round) {
      if (t.rank() == n() - 1) std::this_thread::sleep_for(milliseconds(10));
      arrived += 1;
      CollectiveOptions options;
      options.step = round;
      barrier(t, allRanks(n()), options);
      EXPECT_GE(arrived.load(), round * n());
      // Nobody may run into the next round's increment before all have
      // checked this one: a second barrier separates them.
      options.id = 1;
      barrier(t, allRanks(n()), options);
    }
  });
}

TEST_P(CollectivesTest, ConcurrentCollectivesWithDistinctIdsStayApart) {
  World world = makeWorld(kind(), n());
  spawn(world, [&](Transport& t) {
    auto bucket = [&](int id, std::vector<float>* out) {
      CollectiveOptions options;
      options.id = id;
      options.chunk_bytes = 256;
      std::vector<float> x(999, static_cast<float>(id * 100 + t.rank()));
      allReduceSum(t, allRanks(n()), x.data(), x.size(), options);
      *out = std::move(x);
    };
    std::vector<float> a, b;
    std::thread other(bucket, 1, &b);
    bucket(0, &a);
    other.join();
    const float base = static_cast<float>(n() * (n() - 1) / 2);
    for (float v : a) ASSERT_EQ(v, base);
    for (float v : b) ASSERT_EQ(v, base + 100.0f * n());
  });
}

INSTANTIATE_TEST_SUITE_P(Worlds, CollectivesTest,
                         ::testing::Combine(::testing::Values(Kind::INPROC, Kind::EMULATED),
                                            ::testing::Values(1, 2, 3, 4, 5, 6, 7, 8)),
                         [](const ::testing::TestParamInfo<CollectivesTest::ParamType>& info) {
                           return std::string(kindName(std::get<0>(info.param))) + "_world" +
                                  std::to_string(std::get<1>(info.param));
                         });

TEST(Collectives, DisjointSubgroupsRunSideBySide) {
  World world = makeWorld(Kind::EMULATED, 8);
  const std::vector<int> odd = {5, 1, 3};
  const std::vector<int> rest = {7, 0, 2, 4, 6};
  spawn(world, [&](Transport& t) {
    const bool in_odd = std::find(odd.begin(), odd.end(), t.rank()) != odd.end();
    const std::vector<int>& group = in_odd ? odd : rest;
    std::vector<float> x(1234, static_cast<float>(t.rank()));
    allReduceSum(t, group, x.data(), x.size());
    const float expected = in_odd ? 9.0f : 19.0f;
    for (float v : x) ASSERT_EQ(v, expected);
    std::vector<Bytes> all = allGatherBytes(t, group, Bytes{static_cast<uint8_t>(t.rank())});
    for (size_t i = 0; i < group.size(); ++i)
      EXPECT_EQ(all[i], Bytes{static_cast<uint8_t>(group[i])});
  });
}

TEST(Collectives, GroupOfOneSendsNothing) {
  World world = makeWorld(Kind::INPROC, 3);
  Transport& t = *world.ranks[2];
  std::vector<float> x = {1.5f, 2.5f};
  allReduceSum(t, {2}, x.data(), x.size());
  allReduceAverage(t, {2}, x.data(), x.size());
  EXPECT_EQ(x, (std::vector<float>{1.5f, 2.5f}));
  EXPECT_EQ(allGatherBytes(t, {2}, Bytes{7}), std::vector<Bytes>{Bytes{7}});
  Bytes data{1};
  broadcast(t, {2}, 2, data);
  barrier(t, {2});
  EXPECT_EQ(t.stats().messages_sent, 0u);
}

TEST(Collectives, RejectsBadGroups) {
  World world = makeWorld(Kind::INPROC, 3);
  Transport& t = *world.ranks[0];
  float x = 0;
  EXPECT_THROW(allReduceSum(t, {1, 2}, &x, 1), Error);     // caller not a member
  EXPECT_THROW(allReduceSum(t, {0, 0, 1}, &x, 1), Error);  // duplicate
  EXPECT_THROW(allReduceSum(t, {0, 3}, &x, 1), Error);     // outside the world
  EXPECT_THROW(allReduceSum(t, {}, &x, 1), Error);
  Bytes data;
  EXPECT_THROW(broadcast(t, {0, 1}, 2, data), Error);  // root not a member
}

TEST(Collectives, MissingMemberTimesOutWithTheCollectiveNamed) {
  World world = makeWorld(Kind::INPROC, 2);
  CollectiveOptions options;
  options.timeout = milliseconds(50);
  options.step = 17;
  std::vector<float> x(10, 1.0f);
  try {
    allReduceSum(*world.ranks[0], {0, 1}, x.data(), x.size(), options);
    FAIL() << "all-reduce finished without its peer";
  } catch (const TimeoutError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("allReduceSum(step=17, id=0) on rank 0 in group [0,1]"), std::string::npos)
        << msg;
    EXPECT_NE(msg.find("from rank 1"), std::string::npos) << msg;
  }
}

TEST(Collectives, DeadMemberFailsTheCollectiveWithIoError) {
  World world = makeWorld(Kind::INPROC, 3);
  world.hub->markFailed(2, "node lost");
  std::vector<float> x(10, 1.0f);
  EXPECT_THROW(allReduceSum(*world.ranks[0], {0, 1, 2}, x.data(), x.size()), IoError);
  EXPECT_THROW(barrier(*world.ranks[1], {1, 2}), IoError);
}

TEST(Collectives, MismatchedCountsAreAProtocolError) {
  World world = makeWorld(Kind::INPROC, 2);
  CollectiveOptions options;
  options.timeout = milliseconds(500);
  std::atomic<int> protocol_errors{0};
  spawn(world, [&](Transport& t) {
    std::vector<float> x(t.rank() == 0 ? 10 : 12, 1.0f);
    try {
      allReduceSum(t, {0, 1}, x.data(), x.size(), options);
    } catch (const ProtocolError&) {
      protocol_errors += 1;
    } catch (const TimeoutError&) {
    }
  });
  EXPECT_GE(protocol_errors.load(), 1);
}

}  // namespace
}  // namespace geopipe::transport::testing
