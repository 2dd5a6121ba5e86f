// What only the in-process transport has: the hub's construction, its
// failure injection, receives outliving the hub, the factory's built-in kind,
// and Tag. The point-to-point contract (matching, timeouts, failures) is
// tested once for every transport in p2p_contract_test.cc.
#include <gtest/gtest.h>

#include <string>
#include <thread>

#include "geopipe/error.h"
#include "src/transport/factory.h"
#include "tests/transport/world.h"

namespace geopipe::transport::testing {
namespace {

using std::chrono::milliseconds;

TEST(InprocTransport, RejectsRanksOutsideTheHub) {
  World world = makeWorld(Kind::INPROC, 2);
  EXPECT_THROW(InprocTransport(world.hub, 2), Error);
  EXPECT_THROW(InprocHub(0), Error);
}

std::string failureOf(const std::shared_ptr<Work>& work) {
  try {
    work->wait(milliseconds(1000));
  } catch (const IoError& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// markFailed(r) also fails r's own receives and sends; the reasons rank:
// shutdown, then a dead source, then the dead receiver.
TEST(InprocHub, AFailedRanksOwnOperationsFailAndTheReasonsRank) {
  World world = makeWorld(Kind::INPROC, 3);
  const Tag tag = tagOf(Channel::ACTIVATION, 1);
  auto pending = world.ranks[0]->recv(1, tag);
  world.hub->markFailed(0, "rank 0 down");
  EXPECT_TRUE(world.hub->isFailed(0));
  std::string what = failureOf(pending);
  EXPECT_TRUE(contains(what, "inproc: recv on rank 0 from rank 1, tag " + tag.str() +
                                 " failed: this rank 0 is marked failed (rank 0 down)"))
      << what;
  what = failureOf(world.ranks[0]->recv(2, tag));
  EXPECT_TRUE(contains(what, "this rank 0 is marked failed (rank 0 down)")) << what;
  what = failureOf(world.ranks[0]->send(2, tag, Bytes(1)));
  EXPECT_TRUE(contains(what, "inproc: send from rank 0 to rank 2")) << what;
  what = failureOf(world.ranks[2]->send(0, tag, Bytes(1)));
  EXPECT_TRUE(contains(what, "peer rank 0 has failed")) << what;
  // A dead source's reason wins over the receiver's own failure.
  world.hub->markFailed(1, "rank 1 down");
  what = failureOf(world.ranks[0]->recv(1, tag));
  EXPECT_TRUE(contains(what, "peer rank 1 has failed (rank 1 down)")) << what;
  world.hub->markFailed(1, "again");  // idempotent: the first reason sticks
  what = failureOf(world.ranks[2]->recv(1, tag));
  EXPECT_TRUE(contains(what, "peer rank 1 has failed (rank 1 down)")) << what;
  // Rank 2 still talks to itself; a shutdown's reason wins over everything.
  world.ranks[2]->send(2, tag, Bytes(2));
  EXPECT_EQ(recvNow(*world.ranks[2], 2, tag).size(), 2u);
  world.hub->shutdown("over");
  what = failureOf(world.ranks[0]->recv(1, tag));
  EXPECT_TRUE(contains(what, "the hub was shut down (over)")) << what;
  what = failureOf(world.ranks[2]->send(2, tag, Bytes(1)));
  EXPECT_TRUE(contains(what, "the hub was shut down")) << what;
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
