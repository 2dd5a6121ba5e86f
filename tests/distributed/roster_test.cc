// The coordinator's roster alone: spares promoted in join order for the
// free places only, the shrink order (whole replicas' survivors first),
// ranks handed out after a placement, silent spares dropped.
#include "src/distributed/roster.h"

#include <gtest/gtest.h>

#include "geopipe/error.h"

namespace geopipe::distributed {
namespace {

using Clock = Roster::Clock;
using namespace std::chrono_literals;

Roster::Slot worker(const std::string& host, int64_t pid, int device = -1, int previous_rank = -1,
                    bool spare = false) {
  Roster::Slot s;
  s.info.hostname = host;
  s.info.pid = pid;
  s.device = device;
  s.previous_rank = previous_rank;
  s.spare = spare;
  return s;
}

TopologySpec twoSites() {
  TopologySpec t;
  t.sites = {{"a", {}, {0, 1}}, {"b", {}, {2, 3}}};
  for (int d = 0; d < 4; ++d) {
    DeviceSpec dev;
    dev.name = (d < 2 ? "a/" : "b/") + std::to_string(d % 2);
    dev.site = d / 2;
    t.devices.push_back(dev);
  }
  return t;
}

TEST(Roster, SparesTakeOnlyThePlacesNobodyFillsTheLongestWaitingFirst) {
  Roster roster;
  roster.add(worker("h", 1));
  roster.add(worker("h", 2, -1, -1, /*spare=*/true));
  roster.add(worker("h", 3, -1, 4, /*spare=*/true));
  roster.add(worker("h", 4));
  EXPECT_EQ(roster.active(), 2);
  EXPECT_EQ(roster.idleSpares(), 2);
  // 4 tasklets, 2 joined, 1 survivor awaited: one place for a spare.
  EXPECT_EQ(roster.promoteSpares(1, 4, false),
            (std::vector<std::string>{"spare h pid 2 takes a lost tasklet's place (3/4)"}));
  EXPECT_FALSE(roster[1].spare);
  EXPECT_TRUE(roster[2].spare);
  EXPECT_EQ(roster.promoteSpares(0, 4, true),
            (std::vector<std::string>{"spare h pid 3 takes a place of a new replica (4/4)"}));
  EXPECT_EQ(roster[2].previous_rank, -1);  // a promoted spare claims no old rank
  EXPECT_TRUE(roster.promoteSpares(0, 4, false).empty());
  EXPECT_EQ(roster.idleSpares(), 0);
}

TEST(Roster, AShrinkKeepsTheSurvivorsOfWholeReplicasFirstThenByRankNewcomersLast) {
  Roster roster;
  // 2 stages; replica 0 (ranks 0, 1) survived whole, replica 1 only rank 3.
  roster.add(worker("new", 10));
  roster.add(worker("r3", 13, -1, 3));
  roster.add(worker("r1", 11, -1, 1));
  roster.add(worker("r0", 12, -1, 0));
  EXPECT_EQ(
      roster.keepForShrink(2, 2),
      (std::vector<std::string>{
          "worker r3 pid 13 waits as an idle spare: the job continues with fewer replicas",
          "worker new pid 10 waits as an idle spare: the job continues with fewer replicas"}));
  EXPECT_TRUE(roster[0].spare);
  EXPECT_TRUE(roster[1].spare);
  EXPECT_EQ(roster[1].previous_rank, -1);
  EXPECT_FALSE(roster[2].spare);
  EXPECT_FALSE(roster[3].spare);
  EXPECT_EQ(roster.active(), 2);
  // A whole replica's survivors go before a lower rank of a broken one.
  Roster whole;
  whole.add(worker("r0", 20, -1, 0));
  whole.add(worker("new", 21));
  whole.add(worker("r3", 23, -1, 3));
  whole.add(worker("r2", 22, -1, 2));
  EXPECT_EQ(whole.keepForShrink(2, 2).size(), 2u);
  EXPECT_TRUE(whole[0].spare);
  EXPECT_TRUE(whole[1].spare);
  EXPECT_FALSE(whole[2].spare);
  EXPECT_FALSE(whole[3].spare);
  // No whole replica: by previous rank.
  Roster partial;
  partial.add(worker("r2", 2, -1, 2));
  partial.add(worker("r1", 1, -1, 1));
  partial.add(worker("new", 9));
  EXPECT_EQ(partial.keepForShrink(2, 2).size(), 1u);
  EXPECT_TRUE(partial[2].spare);
  EXPECT_FALSE(partial[0].spare);
  EXPECT_FALSE(partial[1].spare);
}

TEST(Roster, RanksGoToTheActiveWorkersAsThePlacementSaysAndEndWithTheirGeneration) {
  const TopologySpec topology = twoSites();
  Roster roster;
  roster.add(worker("x", 1, /*device=*/3));
  roster.add(worker("y", 2, -1, -1, /*spare=*/true));
  roster.add(worker("x", 3, -1, /*previous_rank=*/0));
  EXPECT_EQ(roster.namedDevices(), (std::set<int>{3}));
  const std::vector<RankClaim> claims = roster.claims();
  ASSERT_EQ(claims.size(), 2u);
  EXPECT_EQ(claims[0].device, 3);
  EXPECT_EQ(claims[1].previous_rank, 0);
  EXPECT_EQ(roster.deviceClaims().size(), 1u);
  // Rank 0 on device 2 for the survivor, rank 1 on device 3.
  Roster::Layout layout;
  layout.generation = 2;
  layout.stages = 2;
  layout.device_of_rank = {2, 3};
  layout.topology = &topology;
  layout.first_step = 10;
  const auto now = Clock::now();
  roster.assign(assignRanks(layout.device_of_rank, claims), layout, now);
  ASSERT_EQ(roster.ranks(), 2);
  EXPECT_EQ(roster.ofRank(0)->info.pid, 3);
  EXPECT_EQ(roster.ofRank(1)->info.pid, 1);
  EXPECT_EQ(roster.ofRank(1)->info.stage, 1);
  EXPECT_EQ(roster.ofRank(1)->info.replica, 0);
  EXPECT_EQ(roster.ofRank(1)->last_step, 9);
  EXPECT_EQ(roster.ofRank(1)->generation, 2);
  EXPECT_EQ(roster.ofRank(2), nullptr);
  EXPECT_EQ(roster.describe(0), "tasklet rank 0 (stage 0, replica 0, device 'b/0', host x pid 3)");
  EXPECT_EQ(roster.describe(5), "tasklet 5");
  EXPECT_EQ(roster.placedOn("x"), 2);
  EXPECT_EQ(roster.placedPids(), (std::vector<int64_t>{3, 1}));
  EXPECT_EQ(roster.tasklets().size(), 2u);
  EXPECT_FALSE(roster.everyPlaced([](const Roster::Slot& s) { return s.info.finished; }));
  EXPECT_THROW(roster.assign({0, 1}, layout, now), Error);  // ranks are handed out once
  roster.endGeneration();
  EXPECT_EQ(roster.ranks(), 0);
  EXPECT_TRUE(roster[0].gone);
  EXPECT_FALSE(roster[1].gone);  // the idle spare stays
  EXPECT_EQ(roster.active(), 0);
  EXPECT_EQ(roster.idleSpares(), 1);
}

TEST(Roster, ASpareIsFoundByItsTicketAndDroppedWhenSilent) {
  Roster roster;
  const auto now = Clock::now();
  Roster::Slot a = worker("a", 7, -1, -1, true);
  a.last_seen = now - 5s;
  Roster::Slot b = worker("b", 8, -1, -1, true);
  b.last_seen = now - 5s;
  b.waiting = true;  // inside its Register call: alive
  Roster::Slot c = worker("c", 9, -1, -1, true);
  c.last_seen = now - 500ms;
  const size_t ia = roster.add(a);
  roster.add(b);
  roster.add(c);
  EXPECT_EQ(roster.findSpare(roster[ia].ticket, 7), ia);
  EXPECT_EQ(roster.findSpare(roster[ia].ticket, 8), roster.size());  // another's ticket
  EXPECT_EQ(roster.liveSpares(now, 1s), 2);
  EXPECT_EQ(roster.dropSilentSpares(now, 2s),
            (std::vector<std::string>{"spare a pid 7 is silent for 5 s and no longer a spare"}));
  EXPECT_TRUE(roster[ia].gone);
  EXPECT_EQ(roster.findSpare(roster[ia].ticket, 7), roster.size());
  EXPECT_EQ(roster.idleSpares(), 2);
}

TEST(Roster, TheMostSilentPlacedWorkerIsTheSuspect) {
  const TopologySpec topology = twoSites();
  Roster roster;
  for (int64_t pid = 1; pid <= 3; ++pid) roster.add(worker("h", pid));
  Roster::Layout layout;
  layout.stages = 3;
  layout.device_of_rank = {0, 1, 2};
  layout.topology = &topology;
  const auto now = Clock::now();
  roster.assign({0, 1, 2}, layout, now);
  roster.ofRank(0)->last_seen = now - 9s;
  roster.ofRank(1)->last_seen = now - 4s;
  roster.ofRank(2)->last_seen = now - 1s;
  EXPECT_EQ(roster.mostSilent(-1, now).first, 0);
  EXPECT_NEAR(roster.mostSilent(-1, now).second, 9.0, 0.01);
  EXPECT_EQ(roster.mostSilent(0, now).first, 1);  // the reporter is no suspect
  roster.ofRank(1)->info.finished = true;         // nor is a worker that finished
  EXPECT_EQ(roster.mostSilent(0, now).first, 2);
}

}  // namespace
}  // namespace geopipe::distributed
