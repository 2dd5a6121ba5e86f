// Resharding a checkpoint across replica counts: which saved files a new
// replica takes, and the merge of AC-SGD buffer stores that keeps a
// boundary's sender and receiver in lock-step.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "compression/activation_buffer.h"
#include "geopipe/error.h"
#include "src/runtime/reshard.h"

using namespace geopipe;
using geopipe::compression::ActivationBufferStore;
using geopipe::compression::BufferStoreOptions;
using geopipe::compression::makeBufferStore;
using geopipe::runtime::mergeBufferStores;
using geopipe::runtime::reshardSources;

namespace {

TEST(ReshardSources, EverySavedResidualGoesToExactlyOneNewReplica) {
  for (int saved = 1; saved <= 5; ++saved) {
    for (int now = 1; now <= 5; ++now) {
      std::map<int, int> taken;  // saved replica -> times given out
      for (int r = 0; r < now; ++r) {
        const auto s = reshardSources(r, now, saved);
        EXPECT_EQ(s.model_replica, r % saved);
        EXPECT_FLOAT_EQ(s.residual_scale, static_cast<float>(now) / saved);
        for (int src : s.residual_replicas) {
          EXPECT_GE(src, 0);
          EXPECT_LT(src, saved);
          ++taken[src];
        }
      }
      for (int src = 0; src < saved; ++src)
        EXPECT_EQ(taken[src], 1) << saved << " -> " << now << ", saved replica " << src;
    }
  }
  // 3 -> 1: the one replica owes what all three owed, in average units.
  const auto one = reshardSources(0, 1, 3);
  EXPECT_EQ(one.residual_replicas, (std::vector<int>{0, 1, 2}));
  EXPECT_FLOAT_EQ(one.residual_scale, 1.0f / 3.0f);
  // 1 -> 2: the new replica starts without a residual.
  EXPECT_TRUE(reshardSources(1, 2, 1).residual_replicas.empty());
  EXPECT_THROW(reshardSources(2, 2, 1), ConfigError);
}

std::unique_ptr<ActivationBufferStore> memoryStore() {
  return makeBufferStore(BufferStoreOptions{});
}

void put(ActivationBufferStore& s, int64_t id, const std::string& bytes) {
  uint8_t* p = s.allocate(id, bytes.size());
  std::copy(bytes.begin(), bytes.end(), p);
}

std::string get(ActivationBufferStore& s, int64_t id) {
  auto e = s.find(id);
  return e.data ? std::string(reinterpret_cast<char*>(e.data), e.size) : std::string("<none>");
}

TEST(MergeBufferStores, NewestOwnerWinsAndBothSidesOfABoundaryAgree) {
  const auto dir = std::filesystem::path(::testing::TempDir()) / "geopipe-reshard-merge";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  // Two saved replicas; samples 1 and 2 were seen by both (different
  // buffers), 0 only by replica 0, 3 only by replica 1. A replica's
  // sender and receiver hold the same bytes per sample (lock-step).
  std::vector<std::string> send_paths, recv_paths;
  const std::vector<std::map<int64_t, std::string>> content = {
      {{0, "r0-s0"}, {1, "r0-s1"}, {2, "r0-s2"}},
      {{1, "r1-s1-longer"}, {2, "r1-s2"}, {3, "r1-s3"}}};
  for (size_t r = 0; r < content.size(); ++r) {
    auto send = memoryStore(), recv = memoryStore();
    for (const auto& [id, bytes] : content[r]) {
      put(*send, id, bytes);
      put(*recv, id, bytes);
    }
    send_paths.push_back((dir / ("send-" + std::to_string(r))).string());
    recv_paths.push_back((dir / ("recv-" + std::to_string(r))).string());
    send->save(send_paths.back());
    recv->save(recv_paths.back());
  }
  // Sample 1 was last processed by replica 1, sample 2 by replica 0,
  // sample 3 "by replica 0" (which has no buffer for it: fallback), sample
  // 0 by nobody known (-1: fallback to the lowest that has it).
  std::vector<std::vector<int64_t>> asked;
  auto owner = [&](const std::vector<int64_t>& ids) {
    asked.push_back(ids);
    std::map<int64_t, int> o = {{0, -1}, {1, 1}, {2, 0}, {3, 0}};
    std::vector<int> out;
    for (int64_t id : ids) out.push_back(o.at(id));
    return out;
  };
  auto sender = memoryStore(), receiver = memoryStore();
  put(*sender, 99, "stale entry, cleared by the merge");
  mergeBufferStores(send_paths, owner, *sender);
  mergeBufferStores(recv_paths, owner, *receiver);
  ASSERT_EQ(asked.size(), 2u);
  EXPECT_EQ(asked[0], (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(sender->ids(), (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(get(*sender, 0), "r0-s0");
  EXPECT_EQ(get(*sender, 1), "r1-s1-longer");
  EXPECT_EQ(get(*sender, 2), "r0-s2");
  EXPECT_EQ(get(*sender, 3), "r1-s3");
  EXPECT_EQ(get(*sender, 99), "<none>");
  for (int64_t id : sender->ids()) EXPECT_EQ(get(*sender, id), get(*receiver, id)) << id;

  // Into an mmap store (a dataset larger than RAM): the same entries.
  BufferStoreOptions mm;
  mm.kind = compression::StoreKind::MMAP;
  mm.path = (dir / "mmap-store").string();
  mm.budget_bytes = 1 << 20;
  auto mapped = makeBufferStore(mm);
  mergeBufferStores(send_paths, owner, *mapped);
  EXPECT_EQ(mapped->ids(), sender->ids());
  for (int64_t id : sender->ids()) EXPECT_EQ(get(*mapped, id), get(*sender, id)) << id;

  // A corrupt saved store is an IoError naming it, and nothing is kept.
  const std::string bad = (dir / "corrupt").string();
  std::filesystem::copy_file(send_paths[1], bad);
  {
    std::fstream f(bad, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(40);
    f.put('\x5a');
  }
  try {
    mergeBufferStores({send_paths[0], bad}, owner, *mapped);
    FAIL();
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("corrupt"), std::string::npos) << e.what();
  }
  EXPECT_EQ(mapped->entryCount(), 0u);

  // A missing saved store is an IoError naming it.
  try {
    mergeBufferStores({send_paths[0], (dir / "missing").string()}, owner, *sender);
    FAIL();
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("missing"), std::string::npos) << e.what();
  }
}

}  // namespace
