// The gpt2 and llama families: staged training (tied heads across stages
// included) equals single-process training, the KV-cache path equals the
// full forward, and the planner's parameter counts are the built model's.
#include <gtest/gtest.h>

#include <cmath>
#include <tuple>

#include "geopipe/error.h"
#include "geopipe/model.h"
#include "geopipe/trainer.h"
#include "scheduler/model_profile.h"
#include "src/config/job_parser.h"
#include "src/data/dataset.h"
#include "src/model/layers.h"
#include "src/runtime/torch_stage.h"

using namespace geopipe;

namespace {

JobSpec familyJob(const std::string& model_yaml, int stages, int replicas) {
  JobSpec job = config::parseJobString(R"(
model: )" + model_yaml + R"(
data: {kind: synthetic, num_samples: 256}
training:
  steps: 12
  global_batch: 8
  micro_batch: 2
  optimizer: {kind: adamw, lr: 1.0e-2, weight_decay: 0.01}
  lr_schedule: {kind: cosine, warmup_steps: 2}
  grad_clip: 1.0
  seed: 11
topology:
  sites: [{name: a, devices: 8, intra: {latency_ms: 0, bandwidth_gbps: 10}}]
transport: {emulate_links: false}
)",
                                       "family.yaml", "");
  job.parallelism.pipeline_stages = stages;
  job.parallelism.data_parallel = replicas;
  return job;
}

const char* kGpt2 =
    "{kind: gpt2, preset: none, layers: 4, hidden: 32, heads: 4, seq_len: 16, vocab: 32, "
    "max_positions: 24}";
const char* kLlamaGqa =
    "{kind: llama, preset: none, layers: 4, hidden: 32, heads: 4, num_key_value_heads: 2, "
    "seq_len: 16, vocab: 32, intermediate_size: 48, rope_theta: 500.0}";
const char* kLlamaTied =
    "{kind: llama, preset: none, layers: 3, hidden: 32, heads: 4, num_key_value_heads: 1, "
    "seq_len: 16, vocab: 32, tie_embeddings: true}";

class FamilyExactness : public testing::TestWithParam<std::tuple<const char*, int, int>> {};

TEST_P(FamilyExactness, StagedEqualsSingleProcess) {
  auto [model, stages, replicas] = GetParam();
  JobSpec job = familyJob(model, stages, replicas);
  TrainerOptions opt;
  opt.threads_per_tasklet = 1;
  TrainResult staged = Trainer(makeModel(job.model), job, opt).train();
  JobSpec ref_job = familyJob(model, 1, replicas);
  auto ref =
      trainSingleProcess(makeModel(ref_job.model), ref_job, ReferenceMode::ACCUMULATE_LIKE_JOB)
          .losses;
  ASSERT_EQ(staged.losses.size(), ref.size());
  for (size_t i = 0; i < ref.size(); ++i) {
    EXPECT_NEAR(staged.losses[i], ref[i], 1e-5 * std::abs(ref[i])) << "step " << i;
  }
  EXPECT_LT(ref.back(), ref.front() - 0.3);  // it learned something
}

INSTANTIATE_TEST_SUITE_P(Families, FamilyExactness,
                         testing::Values(std::make_tuple(kGpt2, 2, 2), std::make_tuple(kGpt2, 3, 1),
                                         std::make_tuple(kLlamaGqa, 4, 1),
                                         std::make_tuple(kLlamaGqa, 2, 2),
                                         std::make_tuple(kLlamaTied, 2, 1)));

ModelSpec specOf(const char* yaml) {
  return familyJob(yaml, 1, 1).model;
}

TEST(TiedWeights, OneStageHoldsOneTensor) {
  ModelDef m = makeModel(specOf(kGpt2));
  auto slice = buildSlice(m, 0, m.num_layers, 3);
  auto wte = layerParameter(*slice->ptr(0), "wte.weight", m.name, 0);
  auto head =
      layerParameter(*slice->ptr(m.num_layers - 1), "lm_head.weight", m.name, m.num_layers - 1);
  EXPECT_EQ(wte.data_ptr(), head.data_ptr());
  EXPECT_EQ(uniqueParameters(*slice).size() + 1, slice->parameters().size());
}

TEST(TiedWeights, SplitCopiesStartEqual) {
  ModelDef m = makeModel(specOf(kLlamaTied));
  auto first = buildSlice(m, 0, 2, 3);
  auto last = buildSlice(m, 2, m.num_layers, 3);
  auto emb = layerParameter(*first->ptr(0), "embed_tokens.weight", m.name, 0);
  auto head =
      layerParameter(*last->ptr(last->size() - 1), "lm_head.weight", m.name, m.num_layers - 1);
  EXPECT_TRUE(torch::equal(emb, head));
}

TEST(TiedWeights, UntiedHeadIsItsOwn) {
  ModelDef m = makeModel(specOf(kLlamaGqa));
  EXPECT_TRUE(m.tied.empty());
  auto slice = buildSlice(m, 0, m.num_layers, 3);
  EXPECT_EQ(uniqueParameters(*slice).size(), slice->parameters().size());
}

// Generation runs layers incrementally over a KV cache: prefix then one
// token at a time must give the full forward's outputs.
void expectIncrementalEqualsFull(const char* yaml) {
  ModelDef m = makeModel(specOf(yaml));
  auto slice = buildSlice(m, 0, m.num_layers, 5);
  torch::NoGradGuard guard;
  auto ids = torch::randint(0, 32, {2, 9}, torch::kLong);
  auto full = slice->forward(ids);
  ASSERT_EQ(full.sizes(), torch::IntArrayRef({2, 9, 32}));
  std::vector<model::LayerKv> cache(m.num_layers);
  auto run = [&](const torch::Tensor& x, int64_t offset) {
    torch::Tensor h = x;
    for (int i = 0; i < m.num_layers; ++i) {
      auto* layer = dynamic_cast<model::IncrementalLayer*>(slice->ptr(i).get());
      EXPECT_NE(layer, nullptr);
      h = layer->forwardAt(h, offset, cache[i]);
    }
    return h;
  };
  auto prefix = run(ids.slice(1, 0, 5), 0);
  EXPECT_TRUE(torch::allclose(prefix, full.slice(1, 0, 5), 1e-5, 1e-5));
  for (int64_t t = 5; t < 9; ++t) {
    auto step = run(ids.slice(1, t, t + 1), t);
    EXPECT_TRUE(torch::allclose(step, full.slice(1, t, t + 1), 1e-5, 1e-5)) << "position " << t;
  }
}

TEST(Incremental, Gpt2KvCacheEqualsFullForward) {
  expectIncrementalEqualsFull(kGpt2);
}
TEST(Incremental, LlamaKvCacheEqualsFullForward) {
  expectIncrementalEqualsFull(kLlamaGqa);
}

TEST(Sequences, AnyLengthUpToMaxPositions) {
  ModelDef m = makeModel(specOf(kGpt2));
  auto slice = buildSlice(m, 0, m.num_layers, 5);
  torch::NoGradGuard guard;
  for (int64_t t : {1, 7, 24}) {
    auto out = slice->forward(torch::zeros({1, t}, torch::kLong));
    EXPECT_EQ(out.sizes(), torch::IntArrayRef(m.output_shape(m.num_layers - 1, 1, t)));
  }
  EXPECT_THROW(slice->forward(torch::zeros({1, 25}, torch::kLong)), ConfigError);
}

// The planner prices the block the runtime builds.
void expectProfileMatches(const char* yaml) {
  JobSpec job = familyJob(yaml, 1, 1);
  ModelDef m = makeModel(job.model);
  auto profile = scheduler::ModelProfile::fromJob(job);
  auto numel = [&](int layer) {
    auto l = buildLayer(m, layer, 1);
    double n = 0;
    for (const auto& p : l.ptr()->parameters()) n += p.numel();
    return n;
  };
  EXPECT_DOUBLE_EQ(profile.layers[0].params, numel(1));
  EXPECT_DOUBLE_EQ(profile.embed_params, numel(0));
  EXPECT_DOUBLE_EQ(profile.head_params, numel(m.num_layers - 1));
}

TEST(Profile, Gpt2BlockParams) {
  expectProfileMatches(kGpt2);
}
TEST(Profile, LlamaGqaBlockParams) {
  expectProfileMatches(kLlamaGqa);
}

}  // namespace

namespace {

// Evaluation runs its own forward passes through plain codecs: it must not
// disturb training (AC-SGD buffers, RNG, optimizer), so the training losses
// with and without evaluation are identical, and the validation loss falls.
TEST(Evaluation, NeverTouchesTrainingAndItsLossFalls) {
  auto job = [](int eval_every) {
    JobSpec j = familyJob(kGpt2, 2, 2);
    j.training.steps = 16;
    j.data.val_fraction = 0.125;
    j.training.eval_every = eval_every;
    j.compression.activations.method = "acsgd";
    j.compression.activations.bits = 2;
    j.compression.backward.method = "quantize";
    return j;
  };
  TrainerOptions opt;
  opt.threads_per_tasklet = 1;
  const JobSpec with = job(4);
  TrainResult evaluated = Trainer(makeModel(with.model), with, opt).train();
  JobSpec without = job(0);
  without.data.val_fraction = 0;  // no validation set: the data splits the same below
  without.data.num_samples = 0;
  // Same training samples: hold out by hand what val_fraction held out.
  const int64_t held = 256 / 8;
  without.data.num_samples = 256 - held;
  TrainResult plain = Trainer(makeModel(without.model), without, opt).train();
  ASSERT_EQ(evaluated.losses.size(), plain.losses.size());
  for (size_t i = 0; i < plain.losses.size(); ++i) {
    EXPECT_EQ(evaluated.losses[i], plain.losses[i]) << "step " << i;
  }
  ASSERT_EQ(evaluated.val_losses.size(), 4u);  // after steps 4, 8, 12, 16
  EXPECT_EQ(evaluated.val_losses.front().first, 3);
  EXPECT_EQ(evaluated.val_losses.back().first, 15);
  EXPECT_LT(evaluated.val_losses.back().second, evaluated.val_losses.front().second - 0.1);
  EXPECT_TRUE(plain.val_losses.empty());
}

// The pipelined validation loss of 2 stages x 2 replicas equals one
// process's mean cross-entropy over the same validation samples.
TEST(Evaluation, StagedValidationLossEqualsOneProcess) {
  JobSpec job = familyJob(kLlamaGqa, 3, 2);
  job.training.steps = 2;
  job.training.eval_every = 1;
  job.data.val_fraction = 0.1;
  TrainerOptions opt;
  opt.threads_per_tasklet = 1;
  TrainResult staged = Trainer(makeModel(job.model), job, opt).train();
  ASSERT_EQ(staged.val_losses.size(), 2u);
  // One process: the untrained model's mean cross-entropy over every
  // validation sample.
  const ModelDef m = makeModel(job.model);
  auto data = data::loadJobData(job.data, job.model, job.training.seed);
  auto whole = buildSlice(m, 0, m.num_layers, job.training.seed);
  torch::NoGradGuard guard;
  double sum = 0;
  int64_t tokens = 0;
  for (int64_t i = 0; i < data.val->numSamples(); ++i) {
    auto [in, tgt] = runtime::tokenBatch(*data.val, {i});
    sum += m.loss(whole->forward(in), tgt).item<double>() * tgt.numel();
    tokens += tgt.numel();
  }
  // The staged run evaluates after its first step; a step with lr 1e-30
  // changes no weight measurably.
  JobSpec zero = job;
  zero.training.steps = 1;
  zero.training.optimizer.lr = 1e-30;
  TrainResult untrained = Trainer(makeModel(zero.model), zero, opt).train();
  ASSERT_EQ(untrained.val_losses.size(), 1u);
  EXPECT_NEAR(untrained.val_losses[0].second, sum / tokens, 1e-5);
}

}  // namespace
