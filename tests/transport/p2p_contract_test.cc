// The point-to-point contract of docs/transport.md ("Interface contract"),
// written once and run over every transport: inproc, inproc behind the link
// emulator, and gRPC on loopback; ranks as threads, over several world
// sizes. Matching per (peer, tag), receives before or after their send,
// timeouts that withdraw the receive, a failed peer, shutdown, stats, and
// error messages that name the transport. What only one transport has (TLS,
// addresses, backpressure, the hub's failure injection details) stays in
// its own file.
//
// Adding a transport: give ContractKind a value and teach ContractWorld to
// build a world of it, kill one rank and shut everything down. NCCL is not
// here: its ranks need a GPU each when they are threads of one process (NCCL
// refuses two ranks of a communicator on one device of one host, and
// NCCL_HOSTID, the way around that, is per process), so
// tests/gpu/nccl_transport_tests runs it as processes instead. On a machine
// with a GPU per rank, an NCCL world is an NcclTransport over each rank of an
// inproc world, constructed on one thread per rank (the constructor is
// collective), and kill(r) is the inner hub's markFailed(r): the receiver
// threads' announcement receives then fail, which fails the source in the
// NCCL transport's Mailbox ("nccl: recv on rank ...").
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <random>
#include <thread>

#include "geopipe/error.h"
#include "tests/transport/grpc_world.h"
#include "tests/transport/world.h"

namespace geopipe::transport::testing {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// SAME_HOST: gRPC transports with same_host_sockets, so every link between
// them is a Unix socket (same_host.h).
enum class ContractKind { INPROC, EMULATED, GRPC, SAME_HOST };

const char* contractKindName(ContractKind kind) {
  switch (kind) {
    case ContractKind::INPROC:
      return "inproc";
    case ContractKind::EMULATED:
      return "emulated";
    case ContractKind::GRPC:
      return "grpc";
    case ContractKind::SAME_HOST:
      return "same_host";
  }
  return "unknown";
}

// A world of one kind, and the transport-specific ways to break it.
struct ContractWorld {
  ContractKind kind;
  World world;                                       // every kind
  std::vector<std::shared_ptr<GrpcTransport>> grpc;  // GRPC and SAME_HOST only

  ContractWorld(ContractKind k, int n) : kind(k) {
    if (isGrpc()) {
      GrpcTransportOptions o = grpcTestOptions();
      o.same_host_sockets = kind == ContractKind::SAME_HOST;
      grpc = makeGrpcWorld(n, o);
      world = asWorld(grpc);
    } else {
      world = makeWorld(kind == ContractKind::INPROC ? Kind::INPROC : Kind::EMULATED, n);
    }
  }

  bool isGrpc() const { return kind == ContractKind::GRPC || kind == ContractKind::SAME_HOST; }
  Transport& operator[](int r) { return *world.ranks[r]; }

  // How the receiving side names the transport and a peer in its errors:
  // "<transport>: recv on rank R from <peer>".
  std::string recvFrom(int rank, int peer) const {
    if (isGrpc()) {
      return detail::concat("grpc: recv on rank ", rank, " from rank ", peer, " (",
                            grpc[peer]->listeningAddress(), ")");
    }
    // The emulator only delays sends: its receives are the inner transport's.
    return detail::concat("inproc: recv on rank ", rank, " from rank ", peer);
  }

  // Rank r dies (inproc: the hub marks it failed; gRPC: it shuts down);
  // returns what the receives from it then say.
  std::string kill(int r) {
    if (isGrpc()) {
      const std::string address = grpc[r]->listeningAddress();
      grpc[r]->close();
      return detail::concat("rank ", r, " (", address, ") closed its ",
                            kind == ContractKind::SAME_HOST ? "same-host link" : "stream");
    }
    world.hub->markFailed(r, "killed by test");
    return detail::concat("peer rank ", r, " has failed (killed by test)");
  }

  // Every rank stops (inproc: the hub shuts down; gRPC: every rank closes).
  void shutDown() {
    if (isGrpc()) {
      for (auto& t : grpc) t->close();
    } else {
      world.hub->shutdown("test over");
    }
  }
  // What receives on rank r say after shutDown().
  std::string shutDownReason(int r) const {
    if (isGrpc()) {
      return detail::concat("the transport was closed (rank ", r, " closed its transport)");
    }
    return "the hub was shut down (test over)";
  }
};

void PrintTo(ContractKind kind, std::ostream* os) {
  *os << contractKindName(kind);
}

class TransportContractTest : public ::testing::TestWithParam<std::tuple<ContractKind, int>> {
 protected:
  ContractKind kind() const { return std::get<0>(GetParam()); }
  int n() const { return std::get<1>(GetParam()); }
};

TEST_P(TransportContractTest, DeliversInSendOrderPerPeerAndTag) {
  ContractWorld cw(kind(), n());
  constexpr int kMessages = 12;
  const Tag tag = tagOf(Channel::ACTIVATION, 1);
  spawn(cw.world, [&](Transport& t) {
    // To every rank, itself included; sizes 8 B .. ~200 KiB cross gRPC's
    // 64 KiB chunks.
    std::vector<std::shared_ptr<Work>> sends;
    for (int p = 0; p < n(); ++p) {
      for (int i = 0; i < kMessages; ++i) {
        sends.push_back(t.send(p, tag, stamp(t.rank(), i, static_cast<size_t>(i) * 18000)));
      }
    }
    for (int p = 0; p < n(); ++p) {
      for (int i = 0; i < kMessages; ++i) {
        Bytes b = recvNow(t, p, tag);
        EXPECT_EQ(unstamp(b), std::make_pair(p, i));
        ASSERT_EQ(b.size(), 8u + static_cast<size_t>(i) * 18000);
        if (i > 0) {
          EXPECT_EQ(b.back(), static_cast<uint8_t>(i * 7 + p));
        }
      }
    }
    for (auto& s : sends) s->wait(seconds(10));
  });
  for (auto& t : cw.world.ranks) {
    const TransportStats s = t->stats();
    EXPECT_EQ(s.messages_sent, static_cast<uint64_t>(n() * kMessages));
    EXPECT_EQ(s.messages_received, static_cast<uint64_t>(n() * kMessages));
  }
}

TEST_P(TransportContractTest, ReceivePostedBeforeOrAfterTheSend) {
  ContractWorld cw(kind(), n());
  ThreadBarrier sync(n());
  spawn(cw.world, [&](Transport& t) {
    const Tag early = tagOf(Channel::CONTROL, 7, 1);
    const Tag late = tagOf(Channel::CONTROL, 7, 2);
    // `early`: every receive is posted before any rank sends.
    std::vector<std::shared_ptr<RecvWork>> recvs;
    for (int p = 0; p < n(); ++p) recvs.push_back(t.recv(p, early));
    for (auto& r : recvs) EXPECT_FALSE(r->done());
    sync.arriveAndWait();
    std::vector<std::shared_ptr<Work>> sends;
    for (int p = 0; p < n(); ++p) sends.push_back(t.send(p, early, stamp(t.rank(), 1)));
    for (int p = 0; p < n(); ++p) {
      recvs[p]->wait(seconds(10));
      EXPECT_EQ(unstamp(recvs[p]->takePayload()), std::make_pair(p, 1));
    }
    // `late`: every send has completed before any receive is posted.
    for (int p = 0; p < n(); ++p) sends.push_back(t.send(p, late, stamp(t.rank(), 2)));
    for (auto& s : sends) s->wait(seconds(10));
    sync.arriveAndWait();
    for (int p = 0; p < n(); ++p) EXPECT_EQ(unstamp(recvNow(t, p, late)), std::make_pair(p, 2));
  });
}

TEST_P(TransportContractTest, ManyTagsFromSeveralThreadsMatchTheirReceives) {
  ContractWorld cw(kind(), n());
  constexpr int kTags = 40;
  auto tagAt = [](int k) {
    Tag tag = tagOf(k % 2 ? Channel::GRADIENT : Channel::ACTIVATION_GRAD, 3 + k / 3, k);
    tag.micro_batch = k % 5;
    return tag;
  };
  spawn(cw.world, [&](Transport& t) {
    // Two sender threads per rank, each owning half of the tags, send to
    // every peer in a shuffled order; receives are posted in another order.
    auto sender = [&](int half) {
      std::vector<std::pair<int, int>> order;
      for (int peer = 0; peer < n(); ++peer) {
        for (int k = half; k < kTags; k += 2) order.emplace_back(peer, k);
      }
      std::shuffle(order.begin(), order.end(), std::mt19937(t.rank() * 31 + half));
      for (auto [peer, k] : order) t.send(peer, tagAt(k), stamp(t.rank(), k * 1000 + peer));
    };
    std::thread a(sender, 0), b(sender, 1);
    std::vector<std::pair<int, int>> order;
    for (int peer = 0; peer < n(); ++peer) {
      for (int k = 0; k < kTags; ++k) order.emplace_back(peer, k);
    }
    std::shuffle(order.begin(), order.end(), std::mt19937(t.rank() + 99));
    std::vector<std::shared_ptr<RecvWork>> recvs;
    for (auto [peer, k] : order) recvs.push_back(t.recv(peer, tagAt(k)));
    for (size_t i = 0; i < order.size(); ++i) {
      recvs[i]->wait(seconds(10));
      EXPECT_EQ(unstamp(recvs[i]->takePayload()),
                std::make_pair(order[i].first, order[i].second * 1000 + t.rank()));
    }
    a.join();
    b.join();
  });
  for (auto& t : cw.world.ranks) {
    EXPECT_EQ(t->stats().messages_sent, static_cast<uint64_t>(n() * kTags));
    EXPECT_EQ(t->stats().messages_received, static_cast<uint64_t>(n() * kTags));
  }
}

TEST_P(TransportContractTest, TimeoutWithdrawsTheReceiveAndNamesTransportPeerAndTag) {
  ContractWorld cw(kind(), n());
  Transport& t = cw[0];
  const int peer = n() - 1;
  const Tag tag = tagOf(Channel::ACTIVATION_GRAD, 12, 5);
  auto r = t.recv(peer, tag);
  const auto start = Clock::now();
  try {
    r->wait(milliseconds(50));
    FAIL() << "wait() returned without a message";
  } catch (const TimeoutError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind(cw.recvFrom(0, peer) + ", tag " + tag.str() + ": timed out after 50 ms", 0),
              0u)
        << msg;
  }
  EXPECT_GE(Clock::now() - start, milliseconds(50));
  EXPECT_TRUE(r->done());
  EXPECT_THROW(r->wait(milliseconds(1)), TimeoutError);
  // The timed-out receive was withdrawn: the next message goes to the next
  // receive instead of vanishing into the abandoned one.
  cw[peer].send(0, tag, stamp(peer, 1))->wait(seconds(10));
  EXPECT_EQ(unstamp(recvNow(t, peer, tag, seconds(5))), std::make_pair(peer, 1));
  EXPECT_THROW(r->wait(milliseconds(1)), TimeoutError);
}

TEST_P(TransportContractTest, FailedPeerFailsPendingAndLaterReceivesNotQueuedMessages) {
  if (n() < 2) GTEST_SKIP() << "needs a peer";
  ContractWorld cw(kind(), n());
  Transport& t = cw[0];
  const Tag tag = tagOf(Channel::ACTIVATION, 4);
  // A message sent before the failure stays receivable.
  cw[1].send(0, tagOf(Channel::ACTIVATION, 3), stamp(1, 3))->wait(seconds(10));
  auto pending = t.recv(1, tag);
  std::string what;
  std::thread waiter([&] {
    try {
      pending->wait(seconds(10));
    } catch (const IoError& e) {
      what = e.what();
    } catch (const std::exception& e) {
      what = std::string("not an IoError: ") + e.what();
    }
  });
  std::this_thread::sleep_for(milliseconds(20));
  const std::string reason = cw.kill(1);
  waiter.join();
  EXPECT_EQ(what.rfind(cw.recvFrom(0, 1) + ", tag " + tag.str() + " failed: " + reason, 0), 0u)
      << what;
  auto later = t.recv(1, tag);
  try {
    later->wait(seconds(1));
    FAIL() << "receive from a failed peer completed";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find(cw.recvFrom(0, 1)), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(reason), std::string::npos) << e.what();
  }
  EXPECT_EQ(unstamp(recvNow(t, 1, tagOf(Channel::ACTIVATION, 3))), std::make_pair(1, 3));
  // Other peers are unaffected.
  if (n() > 2) {
    cw[2].send(0, tag, stamp(2, 0));
    EXPECT_EQ(unstamp(recvNow(t, 2, tag)), std::make_pair(2, 0));
  }
}

TEST_P(TransportContractTest, ShutdownFailsPendingAndLaterReceives) {
  ContractWorld cw(kind(), n());
  std::vector<std::shared_ptr<RecvWork>> recvs;
  for (auto& t : cw.world.ranks) recvs.push_back(t->recv((t->rank() + 1) % n(), Tag{}));
  cw.shutDown();
  for (int r = 0; r < n(); ++r) {
    try {
      recvs[r]->wait(seconds(1));
      FAIL() << "receive completed after shutdown";
    } catch (const IoError& e) {
      EXPECT_NE(std::string(e.what()).find(cw.recvFrom(r, (r + 1) % n())), std::string::npos)
          << e.what();
      EXPECT_NE(std::string(e.what()).find(cw.shutDownReason(r)), std::string::npos) << e.what();
    }
    EXPECT_THROW(cw[r].recv(0, Tag{})->wait(seconds(1)), IoError);
  }
}

TEST_P(TransportContractTest, StatsCountMessagesAndBytes) {
  ContractWorld cw(kind(), n());
  spawn(cw.world, [&](Transport& t) {
    const int right = (t.rank() + 1) % n();
    const int left = (t.rank() + n() - 1) % n();
    t.send(right, Tag{}, Bytes(1000))->wait(seconds(5));
    t.send(right, Tag{}, Bytes(24))->wait(seconds(5));
    recvNow(t, left, Tag{});
    recvNow(t, left, Tag{});
  });
  for (auto& t : cw.world.ranks) {
    const TransportStats s = t->stats();
    EXPECT_EQ(s.messages_sent, 2u);
    EXPECT_EQ(s.bytes_sent, 1024u);
    EXPECT_EQ(s.messages_received, 2u);
    EXPECT_EQ(s.bytes_received, 1024u);
    // Only the same-host world's messages to another rank take the Unix socket.
    EXPECT_EQ(s.same_host_messages, kind() == ContractKind::SAME_HOST && n() > 1 ? 2u : 0u);
  }
}

// Bytes are counted by destination rank too (the per-link bytes of the
// metrics): rank r sends 10 * p + r + 1 bytes to every rank p, itself
// included, and a second, empty message to the next rank.
TEST_P(TransportContractTest, StatsCountBytesByDestination) {
  ContractWorld cw(kind(), n());
  spawn(cw.world, [&](Transport& t) {
    const int me = t.rank();
    for (int p = 0; p < n(); ++p) {
      t.send(p, Tag{}, Bytes(static_cast<size_t>(10 * p + me + 1)))->wait(seconds(5));
    }
    t.send((me + 1) % n(), tagOf(Channel::CONTROL, 1, 1), Bytes{})->wait(seconds(5));
    for (int p = 0; p < n(); ++p) recvNow(t, p, Tag{});
    recvNow(t, (me + n() - 1) % n(), tagOf(Channel::CONTROL, 1, 1));
  });
  for (int r = 0; r < n(); ++r) {
    const TransportStats s = cw[r].stats();
    ASSERT_EQ(s.bytes_sent_to.size(), static_cast<size_t>(n())) << "rank " << r;
    uint64_t sum = 0;
    for (int p = 0; p < n(); ++p) {
      EXPECT_EQ(s.bytes_sent_to[p], static_cast<uint64_t>(10 * p + r + 1))
          << "rank " << r << " to " << p;
      sum += s.bytes_sent_to[p];
    }
    EXPECT_EQ(s.bytes_sent, sum) << "rank " << r;
    EXPECT_EQ(s.messages_sent, static_cast<uint64_t>(n() + 1)) << "rank " << r;
  }
}

TEST_P(TransportContractTest, EmptyMessagesAndPayloadTakenOnceAfterCompletion) {
  ContractWorld cw(kind(), n());
  const int peer = n() - 1;
  auto r = cw[0].recv(peer, Tag{});
  EXPECT_THROW(r->takePayload(), Error);
  cw[peer].send(0, Tag{}, Bytes{1, 2, 3})->wait(seconds(10));
  r->wait(seconds(10));
  EXPECT_EQ(r->takePayload(), (Bytes{1, 2, 3}));
  EXPECT_THROW(r->takePayload(), Error);
  cw[peer].send(0, tagOf(Channel::CONTROL, 2), Bytes{})->wait(seconds(10));
  EXPECT_TRUE(recvNow(cw[0], peer, tagOf(Channel::CONTROL, 2)).empty());
}

TEST_P(TransportContractTest, WaitForeverReturnsWhenTheMessageArrives) {
  ContractWorld cw(kind(), n());
  const int peer = n() - 1;
  auto r = cw[0].recv(peer, Tag{});
  std::thread sender([&] {
    std::this_thread::sleep_for(milliseconds(10));
    cw[peer].send(0, Tag{}, Bytes(3));
  });
  r->wait(kWaitForever);
  EXPECT_EQ(r->takePayload().size(), 3u);
  sender.join();
}

TEST_P(TransportContractTest, RejectsPeersOutsideTheWorld) {
  ContractWorld cw(kind(), n());
  EXPECT_THROW(cw[0].send(n(), Tag{}, Bytes()), Error);
  EXPECT_THROW(cw[0].send(-1, Tag{}, Bytes()), Error);
  EXPECT_THROW(cw[0].recv(n(), Tag{}), Error);
  EXPECT_THROW(cw[0].recv(-1, Tag{}), Error);
}

std::vector<std::tuple<ContractKind, int>> contractWorlds() {
  std::vector<std::tuple<ContractKind, int>> worlds;
  for (ContractKind kind : {ContractKind::INPROC, ContractKind::EMULATED}) {
    for (int n : {1, 2, 3, 4, 8}) worlds.emplace_back(kind, n);
  }
  // gRPC: a server per rank on two shared cores; 8 ranks adds time, not paths.
  for (int n : {1, 2, 3, 4}) worlds.emplace_back(ContractKind::GRPC, n);
  for (int n : {1, 2, 4}) worlds.emplace_back(ContractKind::SAME_HOST, n);
  return worlds;
}

INSTANTIATE_TEST_SUITE_P(
    Transports, TransportContractTest, ::testing::ValuesIn(contractWorlds()),
    [](const ::testing::TestParamInfo<TransportContractTest::ParamType>& info) {
      return std::string(contractKindName(std::get<0>(info.param))) + "_world" +
             std::to_string(std::get<1>(info.param));
    });

class TransportLargePayloadTest : public ::testing::TestWithParam<ContractKind> {};

TEST_P(TransportLargePayloadTest, SixtyFourMegabytesBothWays) {
  constexpr size_t kSize = size_t{64} << 20;
  ContractWorld cw(GetParam(), 2);
  spawn(cw.world, [&](Transport& t) {
    const int peer = 1 - t.rank();
    Bytes out(kSize);
    for (size_t i = 0; i < kSize; i += 4096) out[i] = static_cast<uint8_t>(i / 4096 + t.rank());
    out.back() = static_cast<uint8_t>(0xA0 + t.rank());
    auto send = t.send(peer, tagOf(Channel::ACTIVATION, 0), std::move(out));
    Bytes in = recvNow(t, peer, tagOf(Channel::ACTIVATION, 0), seconds(30));
    ASSERT_EQ(in.size(), kSize);
    bool ok = true;
    for (size_t i = 0; i < kSize; i += 4096) ok &= in[i] == static_cast<uint8_t>(i / 4096 + peer);
    EXPECT_TRUE(ok);
    EXPECT_EQ(in.back(), static_cast<uint8_t>(0xA0 + peer));
    send->wait(seconds(30));
  });
  for (auto& t : cw.world.ranks) {
    EXPECT_EQ(t->stats().bytes_sent, kSize);
    EXPECT_EQ(t->stats().bytes_received, kSize);
  }
}

INSTANTIATE_TEST_SUITE_P(Transports, TransportLargePayloadTest,
                         ::testing::Values(ContractKind::INPROC, ContractKind::EMULATED,
                                           ContractKind::GRPC, ContractKind::SAME_HOST),
                         [](const ::testing::TestParamInfo<ContractKind>& info) {
                           return std::string(contractKindName(info.param));
                         });

}  // namespace
}  // namespace geopipe::transport::testing
