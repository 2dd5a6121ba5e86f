// Point-to-point behaviour of the transports (inproc, and inproc behind the
// link emulator), ranks as threads, over world sizes 1..8; failure paths.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <numeric>
#include <random>

#include "geopipe/error.h"
#include "src/transport/factory.h"
#include "tests/transport/world.h"

namespace geopipe::transport::testing {
namespace {

using std::chrono::milliseconds;

class P2PTest : public ::testing::TestWithParam<std::tuple<Kind, int>> {
 protected:
  Kind kind() const { return std::get<0>(GetParam()); }
  int n() const { return std::get<1>(GetParam()); }
};

TEST_P(P2PTest, RingKeepsSendOrderPerPeerAndTag) {
  World world = makeWorld(kind(), n());
  constexpr int kMessages = 30;
  const Tag tag = tagOf(Channel::ACTIVATION, 1);
  spawn(world, [&](Transport& t) {
    const int right = (t.rank() + 1) % n();
    const int left = (t.rank() + n() - 1) % n();
    std::vector<std::shared_ptr<Work>> sends;
    for (int i = 0; i < kMessages; ++i) sends.push_back(t.send(right, tag, stamp(t.rank(), i, i)));
    for (int i = 0; i < kMessages; ++i) {
      Bytes b = recvNow(t, left, tag);
      EXPECT_EQ(unstamp(b), std::make_pair(left, i));
      EXPECT_EQ(b.size(), 8u + i);
    }
    for (auto& s : sends) s->wait(milliseconds(10000));
  });
}

TEST_P(P2PTest, ReceivePostedBeforeOrAfterTheSend) {
  World world = makeWorld(kind(), n());
  ThreadBarrier sync(n());
  spawn(world, [&](Transport& t) {
    const int right = (t.rank() + 1) % n();
    const int left = (t.rank() + n() - 1) % n();
    const Tag early = tagOf(Channel::CONTROL, 7, 1);
    const Tag late = tagOf(Channel::CONTROL, 7, 2);
    // `early`: every receive is posted before any rank sends.
    auto r = t.recv(left, early);
    EXPECT_FALSE(r->done());
    sync.arriveAndWait();
    t.send(right, early, stamp(t.rank(), 1))->wait(milliseconds(10000));
    r->wait(milliseconds(10000));
    EXPECT_EQ(unstamp(r->takePayload()), std::make_pair(left, 1));
    // `late`: every send has completed before any receive is posted.
    t.send(right, late, stamp(t.rank(), 2))->wait(milliseconds(10000));
    sync.arriveAndWait();
    EXPECT_EQ(unstamp(recvNow(t, left, late)), std::make_pair(left, 2));
  });
}

TEST_P(P2PTest, ManyTagsFromSeveralThreadsMatchTheirReceives) {
  World world = makeWorld(kind(), n());
  constexpr int kTags = 40;
  spawn(world, [&](Transport& t) {
    // Two sender threads per rank, each owning half of the tags, send to
    // every peer in a shuffled order; receives are posted in another order.
    auto sender = [&](int half) {
      std::vector<std::pair<int, int>> order;
      for (int peer = 0; peer < n(); ++peer) {
        for (int k = half; k < kTags; k += 2) order.emplace_back(peer, k);
      }
      std::shuffle(order.begin(), order.end(), std::mt19937(t.rank() * 31 + half));
      for (auto [peer, k] : order) {
        t.send(peer, tagOf(Channel::GRADIENT, 3, k), stamp(t.rank(), k * 1000 + peer));
      }
    };
    std::thread a(sender, 0), b(sender, 1);
    std::vector<std::pair<int, int>> order;
    for (int peer = 0; peer < n(); ++peer) {
      for (int k = 0; k < kTags; ++k) order.emplace_back(peer, k);
    }
    std::shuffle(order.begin(), order.end(), std::mt19937(t.rank() + 99));
    std::vector<std::shared_ptr<RecvWork>> recvs;
    for (auto [peer, k] : order) recvs.push_back(t.recv(peer, tagOf(Channel::GRADIENT, 3, k)));
    for (size_t i = 0; i < order.size(); ++i) {
      recvs[i]->wait(milliseconds(10000));
      EXPECT_EQ(unstamp(recvs[i]->takePayload()),
                std::make_pair(order[i].first, order[i].second * 1000 + t.rank()));
    }
    a.join();
    b.join();
  });
  for (auto& t : world.ranks) {
    EXPECT_EQ(t->stats().messages_sent, static_cast<uint64_t>(n() * kTags));
    EXPECT_EQ(t->stats().messages_received, static_cast<uint64_t>(n() * kTags));
  }
}

TEST_P(P2PTest, TimeoutThrowsTimeoutErrorNamingPeerTagAndOperation) {
  World world = makeWorld(kind(), n());
  Transport& t = *world.ranks[0];
  const int peer = n() - 1;
  const Tag tag = tagOf(Channel::ACTIVATION_GRAD, 12, 5);
  auto r = t.recv(peer, tag);
  const auto start = Clock::now();
  try {
    r->wait(milliseconds(50));
    FAIL() << "wait() returned without a message";
  } catch (const TimeoutError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("recv on rank 0 from rank " + std::to_string(peer)), std::string::npos)
        << msg;
    EXPECT_NE(msg.find(tag.str()), std::string::npos) << msg;
    EXPECT_NE(msg.find("timed out after 50 ms"), std::string::npos) << msg;
  }
  EXPECT_GE(Clock::now() - start, milliseconds(50));
  EXPECT_TRUE(r->done());
  EXPECT_THROW(r->wait(milliseconds(1)), TimeoutError);
  // The timed-out receive was withdrawn: the next message goes to the next
  // receive instead of vanishing into the abandoned one.
  world.ranks[peer]->send(0, tag, stamp(peer, 1));
  EXPECT_EQ(unstamp(recvNow(t, peer, tag)), std::make_pair(peer, 1));
}

TEST_P(P2PTest, FailedPeerMakesPendingAndLaterReceivesThrow) {
  if (n() < 2) GTEST_SKIP() << "needs a peer";
  World world = makeWorld(kind(), n());
  Transport& t = *world.ranks[0];
  const Tag tag = tagOf(Channel::ACTIVATION, 4);
  // A message sent before the failure stays receivable.
  world.ranks[1]->send(0, tagOf(Channel::ACTIVATION, 3), stamp(1, 3))->wait(milliseconds(5000));
  auto pending = t.recv(1, tag);
  std::atomic<bool> threw{false};
  std::thread waiter([&] {
    try {
      pending->wait(milliseconds(10000));
    } catch (const IoError& e) {
      threw = std::string(e.what()).find("peer rank 1 has failed (killed by test)") !=
              std::string::npos;
    }
  });
  std::this_thread::sleep_for(milliseconds(20));
  world.hub->markFailed(1, "killed by test");
  waiter.join();
  EXPECT_TRUE(threw.load());
  auto later = t.recv(1, tag);
  try {
    later->wait(milliseconds(1000));
    FAIL() << "receive from a failed peer completed";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("recv on rank 0 from rank 1"), std::string::npos);
  }
  EXPECT_EQ(unstamp(recvNow(t, 1, tagOf(Channel::ACTIVATION, 3))), std::make_pair(1, 3));
  if (kind() == Kind::INPROC) {
    EXPECT_THROW(t.send(1, tag, Bytes(4))->wait(milliseconds(100)), IoError);
  }
  // Other peers are unaffected.
  if (n() > 2) {
    world.ranks[2]->send(0, tag, stamp(2, 0));
    EXPECT_EQ(unstamp(recvNow(t, 2, tag)), std::make_pair(2, 0));
  }
}

TEST_P(P2PTest, ShutdownFailsEveryPendingReceive) {
  World world = makeWorld(kind(), n());
  std::vector<std::shared_ptr<RecvWork>> recvs;
  for (auto& t : world.ranks) recvs.push_back(t->recv((t->rank() + 1) % n(), Tag{}));
  world.hub->shutdown("test over");
  for (auto& r : recvs) {
    try {
      r->wait(milliseconds(1000));
      FAIL() << "receive completed after shutdown";
    } catch (const IoError& e) {
      EXPECT_NE(std::string(e.what()).find("shut down (test over)"), std::string::npos) << e.what();
    }
  }
}

TEST_P(P2PTest, StatsCountMessagesAndBytes) {
  World world = makeWorld(kind(), n());
  spawn(world, [&](Transport& t) {
    const int right = (t.rank() + 1) % n();
    const int left = (t.rank() + n() - 1) % n();
    t.send(right, Tag{}, Bytes(1000))->wait(milliseconds(5000));
    t.send(right, Tag{}, Bytes(24))->wait(milliseconds(5000));
    recvNow(t, left, Tag{});
    recvNow(t, left, Tag{});
  });
  for (auto& t : world.ranks) {
    const TransportStats s = t->stats();
    EXPECT_EQ(s.messages_sent, 2u);
    EXPECT_EQ(s.bytes_sent, 1024u);
    EXPECT_EQ(s.messages_received, 2u);
    EXPECT_EQ(s.bytes_received, 1024u);
  }
}

INSTANTIATE_TEST_SUITE_P(Worlds, P2PTest,
                         ::testing::Combine(::testing::Values(Kind::INPROC, Kind::EMULATED),
                                            ::testing::Values(1, 2, 3, 4, 8)),
                         [](const ::testing::TestParamInfo<P2PTest::ParamType>& info) {
                           return std::string(kindName(std::get<0>(info.param))) + "_world" +
                                  std::to_string(std::get<1>(info.param));
                         });

class LargePayloadTest : public ::testing::TestWithParam<Kind> {};

TEST_P(LargePayloadTest, SixtyFourMegabytesBothWays) {
  constexpr size_t kSize = size_t{64} << 20;
  World world = makeWorld(GetParam(), 2);
  spawn(world, [&](Transport& t) {
    const int peer = 1 - t.rank();
    Bytes out(kSize);
    for (size_t i = 0; i < kSize; i += 4096) out[i] = static_cast<uint8_t>(i / 4096 + t.rank());
    out.back() = static_cast<uint8_t>(0xA0 + t.rank());
    auto send = t.send(peer, tagOf(Channel::ACTIVATION, 0), std::move(out));
    Bytes in = recvNow(t, peer, tagOf(Channel::ACTIVATION, 0));
    ASSERT_EQ(in.size(), kSize);
    bool ok = true;
    for (size_t i = 0; i < kSize; i += 4096) ok &= in[i] == static_cast<uint8_t>(i / 4096 + peer);
    EXPECT_TRUE(ok);
    EXPECT_EQ(in.back(), static_cast<uint8_t>(0xA0 + peer));
    send->wait(milliseconds(10000));
  });
}

INSTANTIATE_TEST_SUITE_P(Kinds, LargePayloadTest, ::testing::Values(Kind::INPROC, Kind::EMULATED),
                         [](const ::testing::TestParamInfo<Kind>& info) {
                           return std::string(kindName(info.param));
                         });

TEST(InprocTransport, RejectsPeersOutsideTheWorld) {
  World world = makeWorld(Kind::INPROC, 2);
  EXPECT_THROW(world.ranks[0]->send(2, Tag{}, Bytes()), Error);
  EXPECT_THROW(world.ranks[0]->recv(-1, Tag{}), Error);
  EXPECT_THROW(InprocTransport(world.hub, 2), Error);
  EXPECT_THROW(InprocHub(0), Error);
}

TEST(InprocTransport, PayloadIsTakenOnceAndOnlyAfterCompletion) {
  World world = makeWorld(Kind::INPROC, 1);
  auto r = world.ranks[0]->recv(0, Tag{});
  EXPECT_THROW(r->takePayload(), Error);
  world.ranks[0]->send(0, Tag{}, Bytes{1, 2, 3});
  r->wait(milliseconds(100));
  EXPECT_EQ(r->takePayload(), (Bytes{1, 2, 3}));
  EXPECT_THROW(r->takePayload(), Error);
}

TEST(InprocTransport, WaitForeverReturnsWhenTheMessageArrives) {
  World world = makeWorld(Kind::INPROC, 2);
  auto r = world.ranks[0]->recv(1, Tag{});
  std::thread sender([&] {
    std::this_thread::sleep_for(milliseconds(10));
    world.ranks[1]->send(0, Tag{}, Bytes(3));
  });
  r->wait(kWaitForever);
  EXPECT_EQ(r->takePayload().size(), 3u);
  sender.join();
}

TEST(InprocTransport, ReceivesPendingWhenTheHubIsDestroyedFail) {
  std::shared_ptr<RecvWork> r;
  {
    World world = makeWorld(Kind::INPROC, 2);
    r = world.ranks[0]->recv(1, Tag{});
  }
  EXPECT_THROW(r->wait(kWaitForever), IoError);
}

TEST(TransportFactory, BuildsInprocAndRefusesKindsThatAreNotBuilt) {
  auto hub = std::make_shared<InprocHub>(2);
  TransportOptions options;
  options.rank = 1;
  options.hub = hub;
  auto t = makeTransport("inproc", options);
  EXPECT_EQ(t->name(), "inproc");
  EXPECT_EQ(t->rank(), 1);
  try {
    makeTransport("grpc", options);
    FAIL();
  } catch (const InfeasibleError& e) {
    EXPECT_NE(std::string(e.what()).find("transport grpc is not linked into this binary"),
              std::string::npos);
  }
  EXPECT_THROW(makeTransport("nccl", options), InfeasibleError);
  EXPECT_THROW(makeTransport("tcp", options), ConfigError);
  EXPECT_THROW(makeTransport("inproc", TransportOptions{}), Error);
}

TEST(Tag, OrdersAndPrints) {
  Tag a = tagOf(Channel::ACTIVATION, 2, 1);
  Tag b = tagOf(Channel::ACTIVATION, 2, 2);
  EXPECT_TRUE(a < b);
  EXPECT_FALSE(b < a);
  EXPECT_NE(a, b);
  EXPECT_EQ(a.str(), "ACTIVATION/step=2/mb=0/idx=1");
}

}  // namespace
}  // namespace geopipe::transport::testing
