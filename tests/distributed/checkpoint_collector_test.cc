// The coordinator's checkpoint commits alone: a manifest once every tasklet
// of the generation reported its files, a repeated report counted once.
#include "src/distributed/checkpoint_collector.h"

#include <gtest/gtest.h>

namespace geopipe::distributed {
namespace {

JobSpec tinyJob() {
  JobSpec job;
  job.name = "tiny";
  return job;
}

TEST(CheckpointCollector, AManifestComesOnceEveryTaskletReportedItsFiles) {
  const JobSpec job = tinyJob();
  CheckpointCollector c(job);
  c.startGeneration(2, 1, {{0, 3}, {3, 6}});
  EXPECT_FALSE(c.add(10, 1, {"tasklet-1.pt"}));
  // A retried report of rank 1 counts once: still waiting for rank 0.
  EXPECT_FALSE(c.add(10, 1, {"tasklet-1.pt"}));
  // Another checkpoint's report is another's.
  EXPECT_FALSE(c.add(20, 0, {"late.pt"}));
  const auto m = c.add(10, 0, {"tasklet-0.pt", "optim-0.pt"});
  ASSERT_TRUE(m);
  EXPECT_EQ(m->job, "tiny");
  EXPECT_EQ(m->next_step, 10);
  EXPECT_EQ(m->stages, 2);
  EXPECT_EQ(m->replicas, 1);
  EXPECT_EQ(m->layers_of_stage, (std::vector<std::pair<int, int>>{{0, 3}, {3, 6}}));
  EXPECT_EQ(m->model_json, runtime::checkpointModelJson(job.model, job.data.tokenizer));
  ASSERT_EQ(m->files.size(), 3u);  // in the order they arrived
  EXPECT_EQ(m->files[0].name, "tasklet-1.pt");
  EXPECT_EQ(m->files[2].name, "optim-0.pt");
  // The step is forgotten: a late repeat starts a new collection.
  EXPECT_FALSE(c.add(10, 0, {"tasklet-0.pt"}));
}

TEST(CheckpointCollector, ANewGenerationWaitsForItsOwnTaskletsAndForgetsTheOld) {
  const JobSpec job = tinyJob();
  CheckpointCollector c(job);
  c.startGeneration(1, 3, {{0, 4}});
  EXPECT_FALSE(c.add(5, 0, {"a"}));
  EXPECT_FALSE(c.add(5, 1, {"b"}));
  c.clear();  // the generation ended
  c.startGeneration(1, 2, {{0, 4}});
  EXPECT_FALSE(c.add(5, 0, {"a"}));
  const auto m = c.add(5, 1, {"b"});
  ASSERT_TRUE(m);
  EXPECT_EQ(m->replicas, 2);
  EXPECT_EQ(m->files.size(), 2u);
}

}  // namespace
}  // namespace geopipe::distributed
