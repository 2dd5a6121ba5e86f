// The staged engine against single-process training: with compression off,
// S stages x R replicas (both schedules) follow the same loss trajectory as
// one process with the same model, seed and global batch.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <tuple>

#include "compression/activation_buffer.h"
#include "geopipe/error.h"
#include "geopipe/trainer.h"
#include "src/config/job_parser.h"
#include "src/data/dataset.h"
#include "src/data/sampler.h"
#include "src/runtime/checkpoint.h"
#include "src/runtime/torch_stage.h"

#include <filesystem>
#include <fstream>
#include <iterator>

using namespace geopipe;

namespace {

JobSpec tinyJob(int stages, int replicas, const std::string& schedule) {
  JobSpec job = config::parseJobString(R"(
model: {preset: none, layers: 4, hidden: 32, heads: 2, seq_len: 16, vocab: 16}
data: {kind: synthetic, num_samples: 256}
training:
  steps: 20
  global_batch: 8
  micro_batch: 1
  optimizer: {kind: adamw, lr: 1.0e-2, weight_decay: 0.01}
  lr_schedule: {kind: cosine, warmup_steps: 3}
  grad_clip: 1.0
  seed: 7
topology:
  sites: [{name: a, devices: 8, intra: {latency_ms: 0, bandwidth_gbps: 10}}]
transport: {emulate_links: false}
)", "tiny.yaml", "");
  job.parallelism.pipeline_stages = stages;
  job.parallelism.data_parallel = replicas;
  job.parallelism.schedule = schedule;
  return job;
}

std::vector<double> referenceLosses(int replicas, ReferenceMode mode) {
  JobSpec job = tinyJob(1, replicas, "1f1b");
  return trainSingleProcess(makeModel(job.model), job, mode).losses;
}

class Exactness : public testing::TestWithParam<std::tuple<int, int, std::string>> {};

TEST_P(Exactness, MatchesSingleProcess) {
  auto [stages, replicas, schedule] = GetParam();
  JobSpec job = tinyJob(stages, replicas, schedule);
  TrainerOptions opt;
  opt.threads_per_tasklet = 1;
  TrainResult staged = Trainer(makeModel(job.model), job, opt).train();
  const auto ref = referenceLosses(replicas, ReferenceMode::ACCUMULATE_LIKE_JOB);
  ASSERT_EQ(staged.losses.size(), ref.size());
  for (size_t i = 0; i < ref.size(); ++i) {
    EXPECT_NEAR(staged.losses[i], ref[i], 1e-5 * std::abs(ref[i])) << "step " << i;
  }
  // Training made progress (the test would pass trivially on a constant).
  EXPECT_LT(ref.back(), ref.front() - 0.5);
}

// Plain full-batch training differs only by the order of float sums, which
// Adam amplifies to ~1e-4 over 20 steps: the same trajectory, looser bound.
TEST(Exactness, FullBatchReferenceAgreesToRounding) {
  JobSpec job = tinyJob(2, 2, "1f1b");
  TrainerOptions opt;
  opt.threads_per_tasklet = 1;
  TrainResult staged = Trainer(makeModel(job.model), job, opt).train();
  auto full = referenceLosses(1, ReferenceMode::FULL_BATCH);
  ASSERT_EQ(staged.losses.size(), full.size());
  for (size_t i = 0; i < full.size(); ++i) {
    EXPECT_NEAR(staged.losses[i], full[i], 1e-3 * std::abs(full[i])) << "step " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(
    StagesReplicasSchedules, Exactness,
    testing::Combine(testing::Values(1, 2, 4), testing::Values(1, 2),
                     testing::Values(std::string("gpipe"), std::string("1f1b"))),
    [](const auto& info) {
      return "S" + std::to_string(std::get<0>(info.param)) + "_R" +
             std::to_string(std::get<1>(info.param)) + "_" + std::get<2>(info.param);
    });

// The reported gradient norm is the global one: each tasklet reports its
// stage's squared norm and the step sums them, so 2 stages x 2 replicas
// report what one process computes over the whole model, with clipping on
// (the norm before clipping) and off (no exchange for it at all). The bytes
// each tasklet's transport sent and received are reported per rank, and
// every byte sent was received.
TEST(Trainer, ReportsGlobalGradNormAndBytesByRank) {
  for (const double clip : {1.0, 0.0}) {
    SCOPED_TRACE("grad_clip " + std::to_string(clip));
    JobSpec job = tinyJob(2, 2, "1f1b");
    job.training.steps = 6;
    job.training.grad_clip = clip;
    std::vector<double> staged, ref;
    uint64_t sent = 0, received = 0;
    TrainerOptions opt;
    opt.threads_per_tasklet = 1;
    opt.on_step = [&](const StepMetrics& m) {
      staged.push_back(m.grad_norm);
      ASSERT_EQ(m.sent_bytes_by_rank.size(), 4u);
      ASSERT_EQ(m.received_bytes_by_rank.size(), 4u);
      std::vector<uint64_t> on_links(4, 0);
      for (const auto& [link, bytes] : m.link_sent_bytes) {
        ASSERT_TRUE(link.first >= 0 && link.first < 4 && link.second >= 0 && link.second < 4);
        EXPECT_GT(bytes, 0u);
        on_links[static_cast<size_t>(link.first)] += bytes;
      }
      // The pipeline's links (stage 0 -> 1 and back, replica r = ranks 2r, 2r+1).
      for (const std::pair<int, int> link : {std::pair{0, 1}, {1, 0}, {2, 3}, {3, 2}})
        EXPECT_GT(m.link_sent_bytes.count(link), 0u) << link.first << " -> " << link.second;
      for (int r = 0; r < 4; ++r) {
        EXPECT_GT(m.sent_bytes_by_rank[r], 0u) << "rank " << r;
        EXPECT_EQ(on_links[r], m.sent_bytes_by_rank[r]) << "rank " << r;
        sent += m.sent_bytes_by_rank[r];
        received += m.received_bytes_by_rank[r];
      }
      EXPECT_GT(m.peak_rss_bytes, 1u << 20);
    };
    Trainer(makeModel(job.model), job, opt).train();
    JobSpec one = job;
    one.parallelism.pipeline_stages = 1;
    trainSingleProcess(makeModel(one.model), one, ReferenceMode::ACCUMULATE_LIKE_JOB,
                       [&](const StepMetrics& m) { ref.push_back(m.grad_norm); });
    ASSERT_EQ(staged.size(), ref.size());
    for (size_t i = 0; i < ref.size(); ++i) {
      EXPECT_GT(ref[i], 0);
      EXPECT_NEAR(staged[i], ref[i], 1e-4 * ref[i]) << "step " << i;
    }
    EXPECT_EQ(sent, received);
  }
}

TEST(Trainer, CompressedRunsTrainAndCountBytes) {
  JobSpec job = tinyJob(2, 2, "1f1b");
  job.compression.activations.method = "acsgd";
  job.compression.activations.bits = 4;
  job.compression.backward.method = "quantize";
  job.compression.backward.bits = 8;
  job.compression.gradients.method = "quantize";
  job.compression.gradients.bits = 8;
  uint64_t act_raw = 0, act_wire = 0, dp_raw = 0, dp_wire = 0;
  TrainerOptions opt;
  opt.threads_per_tasklet = 1;
  opt.on_step = [&](const StepMetrics& m) {
    act_raw += m.activation_raw_bytes;
    act_wire += m.activation_wire_bytes;
    dp_raw += m.dp_raw_bytes;
    dp_wire += m.dp_wire_bytes;
  };
  TrainResult r = Trainer(makeModel(job.model), job, opt).train();
  EXPECT_LT(r.losses.back(), r.losses.front() - 0.5);
  EXPECT_GT(act_raw, 0u);
  EXPECT_LT(act_wire, act_raw);  // first visits go fp16, later 4-bit deltas
  EXPECT_LT(dp_wire * 3, dp_raw);  // 8-bit gradients: about a quarter of fp32
}

TEST(Trainer, RejectsWhatItCannotRun) {
  JobSpec job = tinyJob(2, 1, "1f1b");
  job.transport.kind = "grpc";
  EXPECT_THROW(Trainer(makeModel(job.model), job).train(), ConfigError);
  job = tinyJob(8, 1, "1f1b");  // 4 layers cannot make 8 stages
  EXPECT_THROW(Trainer(makeModel(job.model), job).train(), ConfigError);
  // Threads of one process have no same-host links to run over gRPC.
  job = tinyJob(2, 1, "1f1b");
  job.transport.same_host = "grpc";
  try {
    Trainer(makeModel(job.model), job).train();
    FAIL() << "same_host: grpc was accepted by the in-process Trainer";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("transport.same_host 'grpc'"), std::string::npos)
        << e.what();
  }
}

// AC-SGD stores that break their budget fail when the data has loaded, before
// the first step, with validate's message (jobs validate cannot count:
// data.tokenizer, train --steps; here a budget set in C++ after parsing).
TEST(Trainer, AcsgdBuffersOverTheBudgetFailBeforeTheFirstStep) {
  JobSpec job = tinyJob(2, 1, "1f1b");
  job.compression.activations.method = "acsgd";
  job.compression.activations.buffer_budget_gb = 1e-6;  // 1073 B: 256 x 1048 B do not fit
  TrainerOptions opt;
  int steps = 0;
  opt.on_step = [&](const StepMetrics&) { ++steps; };
  try {
    Trainer(makeModel(job.model), job, opt).train();
    FAIL() << "expected InfeasibleError";
  } catch (const InfeasibleError& e) {
    EXPECT_NE(std::string(e.what()).find("AC-SGD buffer stores exceed buffer_budget_gb"),
              std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("160 samples per replica"), std::string::npos)
        << e.what();  // 20 steps x 8: the run's steps bound the stores
  }
  EXPECT_EQ(steps, 0);
}

TEST(Model, CustomModelsAreRegisteredByName) {
  ModelSpec spec;
  spec.kind = "custom";
  spec.name = "no-such-model";
  try {
    makeModel(spec);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("not a registered model"), std::string::npos);
  }
  registerModel("identity-head", [](const ModelSpec& s) {
    ModelDef m = makeGpt(s);
    m.name = "identity-head";
    return m;
  });
  spec.name = "identity-head";
  spec.layers = 2;
  EXPECT_EQ(makeModel(spec).num_layers, 4);
}

TEST(Model, SlicesStartLikeTheWhole) {
  ModelSpec spec;
  spec.layers = 3;
  spec.hidden = 16;
  spec.heads = 2;
  spec.seq_len = 8;
  spec.vocab = 32;
  ModelDef m = makeGpt(spec);
  auto whole = buildSlice(m, 0, m.num_layers, 5);
  auto tail = buildSlice(m, 2, m.num_layers, 5);
  auto a = whole->parameters(), b = tail->parameters();
  // The tail's parameters are the last ones of the whole model.
  ASSERT_LT(b.size(), a.size());
  for (size_t i = 0; i < b.size(); ++i) {
    EXPECT_TRUE(torch::equal(a[a.size() - b.size() + i], b[i]));
  }
}

TEST(LearningRate, WarmupThenCosineToMin) {
  TrainingSpec t;
  t.steps = 110;
  t.optimizer.lr = 1.0;
  t.lr_schedule.kind = "cosine";
  t.lr_schedule.warmup_steps = 10;
  t.lr_schedule.min_lr = 0.1;
  EXPECT_DOUBLE_EQ(learningRateAt(t, 0), 0.1);
  EXPECT_DOUBLE_EQ(learningRateAt(t, 9), 1.0);
  EXPECT_DOUBLE_EQ(learningRateAt(t, 10), 1.0);
  EXPECT_NEAR(learningRateAt(t, 60), 0.55, 1e-12);
  EXPECT_NEAR(learningRateAt(t, 110), 0.1, 1e-12);
  t.lr_schedule.kind = "linear";
  EXPECT_NEAR(learningRateAt(t, 60), 0.55, 1e-12);
}

}  // namespace

namespace {

JobSpec checkpointJob(const std::string& dir) {
  JobSpec job = tinyJob(2, 2, "1f1b");
  job.training.steps = 12;
  job.compression.activations.method = "acsgd";
  job.compression.activations.bits = 3;
  job.compression.backward.method = "quantize";
  job.compression.backward.bits = 6;
  job.compression.gradients.method = "topk";  // error feedback carries state
  job.compression.gradients.ratio = 0.1;
  job.checkpoint.dir = dir;
  job.checkpoint.every_steps = 4;
  job.checkpoint.keep = 3;
  return job;
}

std::string freshDir(const std::string& name) {
  std::string dir = ::testing::TempDir() + "geopipe-ckpt-" + name;
  std::filesystem::remove_all(dir);
  return dir;
}

TEST(Checkpoint, ResumeContinuesExactlyLikeAnUninterruptedRun) {
  JobSpec full = checkpointJob(freshDir("full"));
  TrainerOptions opt;
  opt.threads_per_tasklet = 1;
  TrainResult uninterrupted = Trainer(makeModel(full.model), full, opt).train();

  JobSpec job = checkpointJob(freshDir("resumed"));
  TrainerOptions stop = opt;
  int done = 0;
  stop.on_step = [&](const StepMetrics&) { ++done; };
  stop.should_stop = [&] { return done == 6; };  // killed after step 6; last commit: step 4
  TrainResult first = Trainer(makeModel(job.model), job, stop).train();
  EXPECT_TRUE(first.interrupted);
  ASSERT_EQ(first.losses.size(), 6u);

  TrainerOptions resume = opt;
  resume.resume = true;
  TrainResult second = Trainer(makeModel(job.model), job, resume).train();
  EXPECT_EQ(second.first_step, 4);
  ASSERT_EQ(second.losses.size(), 8u);
  for (size_t i = 0; i < second.losses.size(); ++i) {
    EXPECT_EQ(second.losses[i], uninterrupted.losses[4 + i]) << "step " << 4 + i;
  }
}

// A stop (Ctrl-C in `geopipe train`) commits a checkpoint after the step
// where every tasklet stops, and --resume continues from exactly there.
TEST(Checkpoint, AStopCommitsACheckpointWhereEveryTaskletStopped) {
  JobSpec full = checkpointJob(freshDir("stop-full"));
  full.checkpoint.every_steps = 0;  // only the last step's: any other one comes from the stop
  TrainerOptions opt;
  opt.threads_per_tasklet = 1;
  TrainResult uninterrupted = Trainer(makeModel(full.model), full, opt).train();

  JobSpec job = checkpointJob(freshDir("stop"));
  job.checkpoint.every_steps = 0;
  TrainerOptions stop = opt;
  int done = 0;
  stop.on_step = [&](const StepMetrics&) { ++done; };
  stop.should_stop = [&] { return done >= 3; };
  stop.checkpoint_at_stop = true;
  TrainResult first = Trainer(makeModel(job.model), job, stop).train();
  EXPECT_TRUE(first.interrupted);
  const int64_t stopped = static_cast<int64_t>(first.losses.size());
  ASSERT_GE(stopped, 3);
  ASSERT_LT(stopped, 12);
  auto found = runtime::findLatestCheckpoint(job.checkpoint.dir);
  ASSERT_TRUE(found.has_value()) << "no checkpoint at the stop";
  EXPECT_EQ(found->next_step, stopped);
  std::ifstream latest(job.checkpoint.dir + "/LATEST");
  std::string named;
  latest >> named;
  EXPECT_EQ(named, "step-" + std::string(8 - std::to_string(stopped).size(), '0') +
                       std::to_string(stopped));

  TrainerOptions resume = opt;
  resume.resume = true;
  TrainResult second = Trainer(makeModel(job.model), job, resume).train();
  EXPECT_EQ(second.first_step, stopped);
  ASSERT_EQ(static_cast<int64_t>(second.losses.size()), 12 - stopped);
  for (size_t i = 0; i < second.losses.size(); ++i) {
    EXPECT_EQ(second.losses[i], uninterrupted.losses[stopped + i]) << "step " << stopped + i;
  }
  // The run is finished now: resuming it again says so.
  try {
    Trainer(makeModel(job.model), job, resume).train();
    FAIL() << "resumed a finished run";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("is at step 12, the job's last (training.steps: 12): "
                                         "nothing left to train"),
              std::string::npos)
        << e.what();
  }
}

// checkpoint.keep prunes in the Trainer's commits: every_steps 2 over 8
// steps commits 4 checkpoints, keep 2 leaves the last two.
TEST(Checkpoint, TheTrainerKeepsOnlyTheNewestCheckpoints) {
  JobSpec job = checkpointJob(freshDir("keep"));
  job.training.steps = 8;
  job.checkpoint.every_steps = 2;
  job.checkpoint.keep = 2;
  TrainerOptions opt;
  opt.threads_per_tasklet = 1;
  Trainer(makeModel(job.model), job, opt).train();
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(job.checkpoint.dir)) {
    names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"LATEST", "step-00000006", "step-00000008"}));
}

TEST(Checkpoint, CorruptLatestFallsBackToThePreviousOne) {
  JobSpec job = checkpointJob(freshDir("corrupt"));
  job.training.steps = 8;  // commits after steps 4 and 8
  TrainerOptions opt;
  opt.threads_per_tasklet = 1;
  Trainer(makeModel(job.model), job, opt).train();
  // Flip a byte in a weights file of the newest checkpoint.
  const std::string victim = job.checkpoint.dir + "/step-00000008/tasklet-1.pt";
  {
    std::fstream f(victim, std::ios::in | std::ios::out | std::ios::binary);
    ASSERT_TRUE(f.good());
    f.seekp(100);
    f.put('\x42');
  }
  auto found = runtime::findLatestCheckpoint(job.checkpoint.dir);
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->next_step, 4);
  try {
    runtime::readAndVerify(job.checkpoint.dir + "/step-00000008");
    FAIL();
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("tasklet-1.pt' is corrupt"), std::string::npos) << e.what();
  }
  job.training.steps = 10;
  TrainerOptions resume = opt;
  resume.resume = true;
  TrainResult r = Trainer(makeModel(job.model), job, resume).train();
  EXPECT_EQ(r.first_step, 4);
}

TEST(Checkpoint, AManifestThatDisagreesWithItsDirectoryIsSkipped) {
  // A manifest copied into another step's directory (or edited) would
  // resume the wrong step: it is skipped as corrupt, like a bad file.
  JobSpec job = checkpointJob(freshDir("misplaced"));
  job.training.steps = 8;  // commits after steps 4 and 8
  TrainerOptions opt;
  opt.threads_per_tasklet = 1;
  Trainer(makeModel(job.model), job, opt).train();
  const std::string newest = job.checkpoint.dir + "/step-00000008/manifest.json";
  std::string text;
  {
    std::ifstream in(newest);
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  const std::string field = "\"next_step\": 8";
  ASSERT_NE(text.find(field), std::string::npos) << text;
  text.replace(text.find(field), field.size(), "\"next_step\": 7");
  std::ofstream(newest) << text;
  try {
    runtime::readAndVerify(job.checkpoint.dir + "/step-00000008/");
    FAIL();
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("says next_step 7 but lives in 'step-00000008'"),
              std::string::npos)
        << e.what();
  }
  auto found = runtime::findLatestCheckpoint(job.checkpoint.dir);
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->next_step, 4);
}

TEST(Checkpoint, ResumeRefusesNothingToResumeAndVersion1ShapeChanges) {
  JobSpec job = checkpointJob(freshDir("layout"));
  job.training.steps = 4;
  TrainerOptions opt;
  opt.threads_per_tasklet = 1;
  opt.resume = true;
  EXPECT_THROW(Trainer(makeModel(job.model), job, opt).train(), ConfigError);  // nothing yet
  opt.resume = false;
  Trainer(makeModel(job.model), job, opt).train();
  // A version 1 manifest does not say which layers each stage held: another
  // stage count is refused, naming the saved one.
  const std::string manifest = job.checkpoint.dir + "/step-00000004/manifest.json";
  nlohmann::json m = nlohmann::json::parse(std::ifstream(manifest));
  m["version"] = 1;
  m.erase("layers");
  m.erase("model");
  std::ofstream(manifest) << m.dump(2);  // the files' checksums stand
  job.parallelism.pipeline_stages = 1;
  job.training.steps = 8;
  opt.resume = true;
  try {
    Trainer(makeModel(job.model), job, opt).train();
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("(version 1) does not say which layers each stage held: "
                                         "resume with parallelism.pipeline_stages: 2"),
              std::string::npos)
        << e.what();
  }
}

// A resumed run keeps the layer split the checkpoint was written with, even
// when the scheduler (here: the default even split) would cut elsewhere.
TEST(Checkpoint, ResumeKeepsTheSavedLayerSplit) {
  JobSpec job = checkpointJob(freshDir("split"));
  job.parallelism.data_parallel = 1;
  job.training.global_batch = 4;
  job.training.steps = 8;
  TrainerOptions opt;
  opt.threads_per_tasklet = 1;
  opt.layers_per_stage = {1, 3};  // the even split would be {2, 2}
  const TrainResult full = Trainer(makeModel(job.model), job, opt).train();
  std::filesystem::remove_all(job.checkpoint.dir);
  job.training.steps = 4;
  Trainer(makeModel(job.model), job, opt).train();
  job.training.steps = 8;
  TrainerOptions resume;
  resume.threads_per_tasklet = 1;
  resume.resume = true;
  const TrainResult rest = Trainer(makeModel(job.model), job, resume).train();
  ASSERT_EQ(rest.first_step, 4);
  EXPECT_EQ(rest.layers_of_stage, full.layers_of_stage);
  ASSERT_EQ(rest.losses.size(), 4u);
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(rest.losses[i], full.losses[4 + i]) << "step " << 4 + i;
  // Asking for another split than the saved one gets it.
  job.training.steps = 12;  // the run above finished its 8
  resume.layers_per_stage = {2, 2};
  const TrainResult moved = Trainer(makeModel(job.model), job, resume).train();
  EXPECT_EQ(moved.first_step, 8);
  EXPECT_EQ(moved.layers_of_stage, (std::vector<std::pair<int, int>>{{0, 3}, {3, 6}}));
}

// A 12-step job of `stages` x `replicas` checkpointing every 4 steps into
// `dir` (12 everywhere: the learning rate schedule depends on it).
JobSpec reshardJob(const std::string& dir, int stages, int replicas) {
  JobSpec job = tinyJob(stages, replicas, "1f1b");
  job.training.steps = 12;
  job.checkpoint.dir = dir;
  job.checkpoint.every_steps = 4;
  return job;
}

// Stops after `steps` steps of this run (the checkpoint there committed).
TrainerOptions stopAfter(TrainerOptions o, int steps) {
  auto done = std::make_shared<int>(0);
  o.on_step = [done](const StepMetrics&) { ++*done; };
  o.should_stop = [done, steps] { return *done == steps; };
  return o;
}

// Steps 4.. of two resumed runs, one after the other, against the
// uninterrupted run's: the same up to the order of float sums.
void expectFollowsFromStep4(const TrainResult& uninterrupted, const TrainResult& first,
                            const TrainResult& second) {
  std::vector<double> resumed = first.losses;
  resumed.insert(resumed.end(), second.losses.begin(), second.losses.end());
  ASSERT_EQ(resumed.size(), 8u);
  for (size_t i = 0; i < resumed.size(); ++i) {
    EXPECT_NEAR(resumed[i], uninterrupted.losses[4 + i], 1e-4 * uninterrupted.losses[4 + i])
        << "step " << 4 + i;
  }
}

// A checkpoint of 2 replicas resumed with 1 (what recovery with fewer
// replicas does), then that one's resumed with 2 again. Uncompressed, the
// global batch is the same, so the losses follow the uninterrupted 2-replica
// run up to the order of float sums.
TEST(Checkpoint, ResumeWithAnotherReplicaCountFollowsTheUninterruptedRun) {
  auto job_for = [](const std::string& dir, int replicas) { return reshardJob(dir, 2, replicas); };
  TrainerOptions opt;
  opt.threads_per_tasklet = 1;
  JobSpec full = job_for(freshDir("reshard-full"), 2);
  const TrainResult uninterrupted = Trainer(makeModel(full.model), full, opt).train();

  const std::string dir = freshDir("reshard");
  JobSpec two = job_for(dir, 2);
  Trainer(makeModel(two.model), two, stopAfter(opt, 4)).train();  // step 4, by 2 replicas
  TrainerOptions resume = opt;
  resume.resume = true;
  JobSpec one = job_for(dir, 1);
  const TrainResult shrunk = Trainer(makeModel(one.model), one, stopAfter(resume, 4)).train();
  EXPECT_EQ(shrunk.first_step, 4);
  EXPECT_EQ(runtime::findLatestCheckpoint(dir)->replicas, 1);
  JobSpec again = job_for(dir, 2);
  const TrainResult grown = Trainer(makeModel(again.model), again, resume).train();
  EXPECT_EQ(grown.first_step, 8);
  expectFollowsFromStep4(uninterrupted, shrunk, grown);
}

// Checkpoints by layer: one written by 2 stages x 2 replicas resumed by 4
// stages x 1 replica, whose checkpoint is resumed by 3 stages (another
// split) x 2 replicas. Every tasklet gathers its layers, weights and AdamW
// state, from the saved stages that held them; the tied embedding and LM
// head move between bound and two copies. Uncompressed, the global batch is
// the same, so the losses follow the uninterrupted run up to the order of
// float sums.
TEST(Checkpoint, ResumeWithAnotherStageCountAndSplitFollowsTheUninterruptedRun) {
  const auto job_for = reshardJob;
  TrainerOptions opt;
  opt.threads_per_tasklet = 1;
  JobSpec full = job_for(freshDir("relayout-full"), 2, 2);
  const TrainResult uninterrupted = Trainer(makeModel(full.model), full, opt).train();

  const std::string dir = freshDir("relayout");
  JobSpec two = job_for(dir, 2, 2);
  Trainer(makeModel(two.model), two, stopAfter(opt, 4)).train();
  TrainerOptions resume = opt;
  resume.resume = true;
  JobSpec four = job_for(dir, 4, 1);
  const TrainResult deep = Trainer(makeModel(four.model), four, stopAfter(resume, 4)).train();
  EXPECT_EQ(deep.first_step, 4);
  EXPECT_EQ(deep.layers_of_stage,
            (std::vector<std::pair<int, int>>{{0, 2}, {2, 3}, {3, 4}, {4, 6}}));
  const auto saved = runtime::findLatestCheckpoint(dir);
  ASSERT_TRUE(saved.has_value());
  EXPECT_EQ(saved->stages, 4);
  JobSpec three = job_for(dir, 3, 2);
  TrainerOptions uneven = resume;
  uneven.layers_per_stage = {2, 1, 1};
  const TrainResult rest = Trainer(makeModel(three.model), three, uneven).train();
  EXPECT_EQ(rest.first_step, 8);
  EXPECT_EQ(rest.layers_of_stage, (std::vector<std::pair<int, int>>{{0, 3}, {3, 4}, {4, 6}}));
  expectFollowsFromStep4(uninterrupted, deep, rest);
}

// AC-SGD across a new split: 2 stages (cut before layer 3) resumed by 4
// (cuts before 2, 3 and 4). The kept cut's buffers come back, on both of
// its sides; the two new cuts start empty. In the first resumed step the
// kept boundary's sender (stage 1) sends deltas for every sample, fewer
// bytes than the new boundary's sender (stage 2, the same shapes), and the
// checkpoint the resumed run writes holds every boundary in lock-step.
TEST(Checkpoint, ANewSplitKeepsTheBuffersOfCutsThatStayAndDropsTheOthers) {
  JobSpec job = checkpointJob(freshDir("relayout-acsgd"));
  job.data.num_samples = 16;  // two steps per epoch: every sample has a buffer by step 4
  job.parallelism.data_parallel = 1;
  job.training.global_batch = 8;
  job.training.steps = 4;
  TrainerOptions opt;
  opt.threads_per_tasklet = 1;
  Trainer(makeModel(job.model), job, opt).train();
  job.parallelism.pipeline_stages = 4;
  job.training.steps = 8;
  TrainerOptions resume = opt;
  resume.resume = true;
  std::vector<std::vector<uint64_t>> sent;
  resume.on_step = [&](const StepMetrics& m) { sent.push_back(m.sent_bytes_by_rank); };
  const TrainResult r = Trainer(makeModel(job.model), job, resume).train();
  EXPECT_EQ(r.first_step, 4);
  EXPECT_EQ(r.layers_of_stage, (std::vector<std::pair<int, int>>{{0, 2}, {2, 3}, {3, 4}, {4, 6}}));
  ASSERT_EQ(sent.size(), 4u);
  ASSERT_EQ(sent[0].size(), 4u);
  EXPECT_LT(sent[0][1], sent[0][2]) << "the kept cut's sender sends deltas, the new cut's not";
  // One step later both new cuts have a buffer for the samples they saw.
  EXPECT_NEAR(static_cast<double>(sent[3][1]), static_cast<double>(sent[3][2]),
              0.2 * static_cast<double>(sent[3][2]));
  const std::string step_dir = runtime::stepDirectory(job.checkpoint.dir, 8);
  for (int s = 0; s + 1 < 4; ++s) {
    auto send = compression::makeBufferStore({}), recv = compression::makeBufferStore({});
    send->load(step_dir + "/tasklet-" + std::to_string(s) + ".acsgd-send");
    recv->load(step_dir + "/tasklet-" + std::to_string(s + 1) + ".acsgd-recv");
    ASSERT_EQ(send->ids(), recv->ids()) << "cut after stage " << s;
    for (int64_t id : send->ids()) {
      const auto a = send->find(id), b = recv->find(id);
      ASSERT_EQ(a.size, b.size);
      ASSERT_EQ(std::memcmp(a.data, b.data, a.size), 0)
          << "cut after stage " << s << " sample " << id;
    }
  }
}

// Every entry of the stage-0 sender's AC-SGD buffer store equals the stage-1
// receiver's of the same replica: the lock-step both sides keep.
void expectLockStep(const std::string& step_dir, int replicas) {
  for (int r = 0; r < replicas; ++r) {
    auto send = compression::makeBufferStore({}), recv = compression::makeBufferStore({});
    send->load(step_dir + "/tasklet-" + std::to_string(2 * r) + ".acsgd-send");
    recv->load(step_dir + "/tasklet-" + std::to_string(2 * r + 1) + ".acsgd-recv");
    ASSERT_EQ(send->ids(), recv->ids()) << step_dir << " replica " << r;
    ASSERT_GT(send->entryCount(), 0u);
    for (int64_t id : send->ids()) {
      const auto a = send->find(id), b = recv->find(id);
      ASSERT_EQ(a.size, b.size) << "sample " << id;
      ASSERT_EQ(std::memcmp(a.data, b.data, a.size), 0) << step_dir << " sample " << id;
    }
  }
}

// The same with AC-SGD activations, quantized backward gradients and top-k
// DP gradients with error feedback. The trajectory is not the 2-replica one:
// top-k of one replica's gradient keeps other coordinates than the mean of
// two replicas' top-k, so the losses are not compared with it. What the
// mechanism guarantees is checked instead, exactly:
// - resharding is a function of the checkpoint alone: another Trainer
//   resuming a copy of it computes bit-identical losses;
// - no AC-SGD buffer is lost: by step 8 every sample has one, so the
//   resumed steps send deltas only, the same bytes per step as the
//   uninterrupted run (a sample without its buffer goes as fp16, larger);
// - the merged buffers keep every boundary in lock-step (byte for byte in
//   the checkpoint the resumed run writes, after 8 steps that used them).
TEST(Checkpoint, ResumeWithFewerReplicasKeepsCompressedTrainingOnTrack) {
  TrainerOptions opt;
  opt.threads_per_tasklet = 1;
  auto recordActivationBytes = [](TrainerOptions o, std::vector<uint64_t>& bytes) {
    o.on_step = [&bytes](const StepMetrics& m) { bytes.push_back(m.activation_wire_bytes); };
    return o;
  };
  // 24 samples, 3 steps per epoch: by step 8 both replicas have buffers
  // for most samples, of different ages, so the merge has to choose.
  JobSpec full = checkpointJob(freshDir("reshard-acsgd-full"));
  full.data.num_samples = 24;
  full.training.steps = 16;
  std::vector<uint64_t> full_bytes;
  Trainer(makeModel(full.model), full, recordActivationBytes(opt, full_bytes)).train();

  JobSpec job = checkpointJob(freshDir("reshard-acsgd"));
  job.data.num_samples = 24;
  job.training.steps = 16;
  TrainerOptions stop = opt;
  int done = 0;
  stop.on_step = [&](const StepMetrics&) { ++done; };
  stop.should_stop = [&] { return done == 8; };  // commits at 4 and 8, by 2 replicas
  Trainer(makeModel(job.model), job, stop).train();
  // The reference: a copy of the step-8 checkpoint, resharded and resumed by
  // another Trainer.
  JobSpec reference_job = job;
  reference_job.checkpoint.dir = freshDir("reshard-acsgd-reference");
  std::filesystem::copy(job.checkpoint.dir, reference_job.checkpoint.dir,
                        std::filesystem::copy_options::recursive);
  job.parallelism.data_parallel = 1;
  reference_job.parallelism.data_parallel = 1;
  TrainerOptions resume = opt;
  resume.resume = true;
  std::vector<uint64_t> shrunk_bytes;
  const TrainResult shrunk =
      Trainer(makeModel(job.model), job, recordActivationBytes(resume, shrunk_bytes)).train();
  EXPECT_EQ(shrunk.first_step, 8);
  ASSERT_EQ(shrunk.losses.size(), 8u);
  const TrainResult reference =
      Trainer(makeModel(reference_job.model), reference_job, resume).train();
  EXPECT_EQ(shrunk.losses, reference.losses) << "the same checkpoint resharded twice";
  ASSERT_EQ(full_bytes.size(), 16u);
  EXPECT_EQ(shrunk_bytes, std::vector<uint64_t>(full_bytes.begin() + 8, full_bytes.end()))
      << "activation bytes per step: a sample without its AC-SGD buffer goes as fp16";
  expectLockStep(full.checkpoint.dir + "/step-00000016", 2);
  expectLockStep(job.checkpoint.dir + "/step-00000016", 1);

  // Growing back to 2 replicas deals the shards again: each replica keeps
  // the buffers of the samples it owns now (half of the one replica's),
  // its sender and receiver the same ones.
  job.parallelism.data_parallel = 2;
  job.training.steps = 20;
  const TrainResult grown = Trainer(makeModel(job.model), job, resume).train();
  EXPECT_EQ(grown.first_step, 16);
  const std::string last = job.checkpoint.dir + "/step-00000020";
  expectLockStep(last, 2);
  for (int r = 0; r < 2; ++r) {
    auto store = compression::makeBufferStore({});
    store->load(last + "/tasklet-" + std::to_string(2 * r) + ".acsgd-send");
    EXPECT_EQ(store->entryCount(), 12u) << "replica " << r;
    for (int64_t id : store->ids()) EXPECT_EQ(id % 2, r) << "replica " << r;
  }
}

}  // namespace

namespace {

// data.pack: false over a token file of documents of 2 to 40 ids (vocab
// 16, end-of-text 15): many samples are padded, by different amounts.
JobSpec unpackedJob(int stages, int replicas) {
  // One file per test: ctest runs tests in parallel, and rewriting a file
  // another test has mapped kills that test (SIGBUS).
  const std::string path = ::testing::TempDir() + "geopipe-unpacked-" +
                           ::testing::UnitTest::GetInstance()->current_test_info()->name() +
                           ".bin";
  std::vector<uint16_t> ids;
  uint64_t x = 12345;
  while (ids.size() < 4000) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    const int len = 2 + static_cast<int>((x >> 33) % 39);
    for (int i = 0; i + 1 < len; ++i) ids.push_back(static_cast<uint16_t>((x >> (i % 40)) % 15));
    ids.push_back(15);
  }
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(ids.data()),
             static_cast<std::streamsize>(2 * ids.size()));
  JobSpec job = tinyJob(stages, replicas, "1f1b");
  job.model.kind = "gpt2";  // kind gpt has no end-of-text id
  job.data.kind = "tokens";
  job.data.path = path;
  job.data.pack = false;
  job.model.eos_token_ids = {15};
  return job;
}

// The mean cross-entropy over the real (unpadded) targets of `ids`, from
// the untrained whole model: the masked mean, by hand.
double maskedMean(const JobSpec& job, const data::TokenDataset& ds,
                  const std::vector<int64_t>& ids) {
  const ModelDef m = makeModel(job.model);
  auto whole = buildSlice(m, 0, m.num_layers, job.training.seed);
  torch::NoGradGuard guard;
  double sum = 0;
  int64_t real = 0;
  for (int64_t id : ids) {
    auto [in, tgt] = runtime::tokenBatch(ds, {id});
    auto logits = whole->forward(in);
    auto ce = torch::nn::functional::cross_entropy(
        logits.reshape({-1, logits.size(-1)}), tgt.reshape({-1}),
        torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
    auto keep = tgt.reshape({-1}).ne(data::kIgnoreTarget);
    sum += ce.masked_select(keep).to(torch::kDouble).sum().item<double>();
    real += keep.sum().item<int64_t>();
    EXPECT_EQ(keep.sum().item<int64_t>(), ds.targetsOf(id));
  }
  return sum / static_cast<double>(real);
}

// pack: false: the step's loss is the mean over every real target of the
// global batch (micro-batches of different real lengths weigh by them), on
// 2 stages x 2 replicas as in one process; the validation loss uses the
// same mask.
TEST(Unpacked, LossIsTheMaskedMeanOfTheGlobalBatch) {
  JobSpec job = unpackedJob(2, 2);
  job.data.val_fraction = 0.1;
  job.training.eval_every = 1;
  const data::JobData d = data::loadJobData(job.data, job.model, job.training.seed);
  ASSERT_TRUE(d.train.padded());
  ASSERT_TRUE(d.val->padded());
  const data::Sampler sampler(d.train.numSamples(), job.training.global_batch, 2,
                              job.training.micro_batch, job.training.seed);
  TrainerOptions opt;
  opt.threads_per_tasklet = 1;
  JobSpec first = job;
  first.training.steps = 1;
  first.training.optimizer.lr = 1e-30;  // the evaluation after step 0 sees the initial weights
  const TrainResult r = Trainer(makeModel(first.model), first, opt).train();
  ASSERT_EQ(r.losses.size(), 1u);
  const double want = maskedMean(job, d.train, sampler.globalBatch(0));
  EXPECT_NEAR(r.losses[0], want, 1e-5 * want);
  // Not the plain mean of the micro-batch means (what an unweighted
  // accumulation gives): the test can tell the two apart.
  double plain = 0;
  for (int64_t id : sampler.globalBatch(0)) plain += maskedMean(job, d.train, {id}) / 8;
  EXPECT_GT(std::abs(plain - want), 1e-5 * want);
  std::vector<int64_t> all_val;
  for (int64_t i = 0; i < d.val->numSamples(); ++i) all_val.push_back(i);
  ASSERT_EQ(r.val_losses.size(), 1u);
  EXPECT_NEAR(r.val_losses[0].second, maskedMean(job, *d.val, all_val), 1e-5);

  // And the whole run follows one process doing the same arithmetic.
  job.training.eval_every = 0;
  job.data.val_fraction = 0;
  const TrainResult staged = Trainer(makeModel(job.model), job, opt).train();
  const TrainResult ref =
      trainSingleProcess(makeModel(job.model), job, ReferenceMode::ACCUMULATE_LIKE_JOB);
  const TrainResult full = trainSingleProcess(makeModel(job.model), job, ReferenceMode::FULL_BATCH);
  ASSERT_EQ(staged.losses.size(), ref.losses.size());
  for (size_t i = 0; i < ref.losses.size(); ++i) {
    EXPECT_NEAR(staged.losses[i], ref.losses[i], 1e-5 * ref.losses[i]) << "step " << i;
    EXPECT_NEAR(staged.losses[i], full.losses[i], 1e-3 * full.losses[i]) << "step " << i;
  }
  EXPECT_LT(ref.losses.back(), ref.losses.front() - 0.3);
}

// A custom model whose loss counts the padding is refused before a step.
TEST(Unpacked, ALossThatCountsPaddingIsRefused) {
  JobSpec job = unpackedJob(1, 1);
  ModelDef m = makeModel(job.model);
  m.name = "mse-head";
  m.loss = [](const torch::Tensor& out, const torch::Tensor& targets) {
    return (out.mean(-1) - targets.to(torch::kFloat32)).pow(2).mean();
  };
  try {
    Trainer(m, job).train();
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("ignore_index -100"), std::string::npos) << e.what();
  }
  EXPECT_THROW(trainSingleProcess(m, job), ConfigError);
}

// With AC-SGD each replica keeps the buffers of its own shard only (ids
// r mod 2), and from the second epoch on every visit sends a delta: every
// step then puts the same bytes on the wire, fewer than any step of the
// first epoch. Without binding (the order before it) the buffers hold
// samples of both shards and later epochs still send some samples whole.
TEST(Binding, ReplicasKeepTheirShardAndSendOnlyDeltasAfterTheFirstEpoch) {
  auto run = [](bool bind, std::vector<uint64_t>& wire) {
    JobSpec job = tinyJob(2, 2, "1f1b");
    job.data.num_samples = 48;  // 2 shards of 24: 6 steps of 4 per replica an epoch
    job.training.steps = 18;
    job.compression.activations.method = "acsgd";
    job.compression.activations.bits = 4;
    job.checkpoint.dir = freshDir(bind ? "bound" : "unbound");
    TrainerOptions opt;
    opt.threads_per_tasklet = 1;
    opt.bind_samples = bind;
    opt.on_step = [&](const StepMetrics& m) { wire.push_back(m.activation_wire_bytes); };
    Trainer(makeModel(job.model), job, opt).train();
    return job.checkpoint.dir + "/step-00000018";
  };
  std::vector<uint64_t> bound, unbound;
  const std::string dir = run(true, bound);
  expectLockStep(dir, 2);
  for (int r = 0; r < 2; ++r) {
    auto store = compression::makeBufferStore({});
    store->load(dir + "/tasklet-" + std::to_string(2 * r) + ".acsgd-send");
    EXPECT_EQ(store->entryCount(), 24u);
    for (int64_t id : store->ids()) EXPECT_EQ(id % 2, r) << "replica " << r;
  }
  ASSERT_EQ(bound.size(), 18u);
  for (size_t step = 6; step < 18; ++step) {
    EXPECT_EQ(bound[step], bound[6]) << "step " << step;
    for (size_t first = 0; first < 6; ++first) EXPECT_LT(bound[step], bound[first]);
  }
  const std::string unbound_dir = run(false, unbound);
  uint64_t held = 0;
  for (int r = 0; r < 2; ++r) {
    auto store = compression::makeBufferStore({});
    store->load(unbound_dir + "/tasklet-" + std::to_string(2 * r) + ".acsgd-send");
    held += store->entryCount();
  }
  EXPECT_GT(held, 48u);  // the same samples buffered on both replicas
  uint64_t later_bound = 0, later_unbound = 0;
  for (size_t step = 6; step < 18; ++step) {
    later_bound += bound[step];
    later_unbound += unbound[step];
  }
  EXPECT_GT(later_unbound, later_bound);
}

}  // namespace
