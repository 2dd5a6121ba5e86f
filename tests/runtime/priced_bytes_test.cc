// The geopipe cost model prices the bytes the runtime really sends: tiny jobs
// run as tasklet threads over the in-process transport, each rank's
// transport wrapped in a decorator that counts what it sends by peer,
// channel, step and collective id, and every counted stream is compared with
// GeopipeCostModel::stepBytes (per boundary direction, per data-parallel
// member, the tied-weight sum).
#include <gtest/gtest.h>

#include <map>
#include <mutex>
#include <thread>
#include <tuple>

#include "scheduler/cost_model.h"
#include "scheduler/network.h"
#include "src/config/job_parser.h"
#include "src/data/dataset.h"
#include "src/data/sampler.h"
#include "src/runtime/placement.h"
#include "src/runtime/tasklet.h"
#include "src/transport/inproc/inproc_transport.h"

using namespace geopipe;

namespace {

// Counts the payload bytes this rank hands to send(), keyed by (peer,
// channel, step, collective id = Tag::micro_batch for collectives).
class CountingTransport : public transport::Transport {
 public:
  using Key = std::tuple<int, transport::Channel, int64_t, int32_t>;
  explicit CountingTransport(std::shared_ptr<transport::Transport> inner)
      : inner_(std::move(inner)) {}
  int rank() const override { return inner_->rank(); }
  int worldSize() const override { return inner_->worldSize(); }
  std::shared_ptr<transport::Work> send(int peer, const transport::Tag& tag,
                                        transport::Bytes payload) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      bytes_[{peer, tag.channel, tag.step, tag.micro_batch}] += payload.size();
      messages_[{peer, tag.channel, tag.step, tag.micro_batch}] += 1;
    }
    return inner_->send(peer, tag, std::move(payload));
  }
  std::shared_ptr<transport::RecvWork> recv(int peer, const transport::Tag& tag) override {
    return inner_->recv(peer, tag);
  }
  transport::TransportStats stats() const override { return inner_->stats(); }
  std::string name() const override { return "counting(" + inner_->name() + ")"; }

  // Bytes and messages to `peer` on `channel` in `step` whose id passes `id_ok`.
  template <typename Pred>
  std::pair<double, int> sent(int peer, transport::Channel channel, int64_t step,
                              Pred id_ok) const {
    std::lock_guard<std::mutex> lock(mu_);
    double b = 0;
    int m = 0;
    for (const auto& [k, v] : bytes_) {
      if (std::get<0>(k) == peer && std::get<1>(k) == channel && std::get<2>(k) == step &&
          id_ok(std::get<3>(k))) {
        b += static_cast<double>(v);
        m += messages_.at(k);
      }
    }
    return {b, m};
  }

 private:
  std::shared_ptr<transport::Transport> inner_;
  mutable std::mutex mu_;
  std::map<Key, uint64_t> bytes_;
  std::map<Key, int> messages_;
};

JobSpec pricedJob(const std::string& model, const std::string& compression) {
  return config::parseJobString("model: " + model + R"(
data: {kind: synthetic, num_samples: 12}
training:
  steps: 4
  global_batch: 6
  micro_batch: 1
  optimizer: {kind: adamw, lr: 1.0e-3}
  grad_clip: 1.0
  seed: 7
parallelism: {pipeline_stages: 2, data_parallel: 3, schedule: 1f1b}
topology:
  sites: [{name: a, devices: 6, intra: {latency_ms: 0, bandwidth_gbps: 10}}]
transport: {emulate_links: false}
)" + compression,
                                "priced.yaml", "");
}

const char* kGpt = "{preset: none, layers: 4, hidden: 64, heads: 2, seq_len: 32, vocab: 32}";

// Runs `steps` steps of job (2 stages x 3 replicas, in-order placement,
// even split) with counting transports and returns them by rank.
std::vector<std::shared_ptr<CountingTransport>> runCounted(const JobSpec& job) {
  const ModelDef model = makeModel(job.model);
  const int stages = job.parallelism.pipeline_stages, replicas = job.parallelism.data_parallel;
  const int world = stages * replicas;
  runtime::Placement placement;
  for (int r = 0; r < world; ++r) placement.device_of_rank.push_back(r);
  placement.layers_of_stage =
      runtime::stageLayerRanges(model, runtime::evenSplit(model.bodyLayers(), stages));
  placement.source = "caller";
  const data::JobData data = data::loadJobData(job.data, job.model, job.training.seed);
  const data::Sampler sampler(data.train.numSamples(), job.training.global_batch, replicas,
                              job.training.micro_batch, job.training.seed,
                              data::sampleOrderFor(job));
  auto hub = std::make_shared<transport::InprocHub>(world);
  std::vector<std::shared_ptr<CountingTransport>> counted;
  for (int rank = 0; rank < world; ++rank) {
    counted.push_back(std::make_shared<CountingTransport>(
        std::make_shared<transport::InprocTransport>(hub, rank)));
  }
  std::vector<std::exception_ptr> errors(world);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < world; ++rank) {
    threads.emplace_back([&, rank] {
      try {
        torch::set_num_threads(1);
        runtime::Tasklet t(model, job, placement, rank, *counted[rank], data.train, sampler,
                           std::chrono::seconds(120));
        for (int64_t step = 0; step < job.training.steps; ++step) t.runStep(step);
      } catch (...) {
        errors[rank] = std::current_exception();
        hub->shutdown("tasklet failed");
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return counted;
}

scheduler::GeopipeCostModel::StepBytes priced(const JobSpec& job) {
  auto network = std::make_shared<const scheduler::Network>(job.topology);
  scheduler::GeopipeCostModel cm(network, scheduler::ModelProfile::fromJob(job),
                                 job.parallelism.pipeline_stages, job.parallelism.data_parallel,
                                 job.parallelism.schedule);
  std::vector<std::pair<int, int>> layers;
  int first = 0;
  for (int n : runtime::evenSplit(job.model.layers, job.parallelism.pipeline_stages)) {
    layers.emplace_back(first, first + n);
    first += n;
  }
  return cm.stepBytes(layers);
}

// Collective ids (Tag::micro_batch) of GradientSync: 0 dense all-reduce,
// 1 compressed all-gather, 2 and 3 PowerSGD's P and Q; 1000+ scalar
// all-reduces (grad norm), 2000+ the tied-weight sums.
bool isDp(int32_t id) {
  return id >= 0 && id < 1000;
}
bool isTied(int32_t id) {
  return id >= 2000;
}

// Framing the model does not price, per message: a boundary frame's 28-byte
// prefix, 8 bytes per sample id and the compression library's header
// (compression/wire_format.h, ~60 bytes with a shape of 3 dimensions); an
// all-gather blob's 4 + 12 bytes per tensor and each tensor's header
// (~50 bytes); a ring all-reduce sends bare floats (a member's segments can
// differ from 2(D-1)/D of the buffer by a float at each end).
constexpr double kFrameBytesPerMessage = 128;
constexpr double kHeaderBytesPerTensor = 96;

struct Check {
  std::string what;
  double priced = 0, counted = 0, allowance = 0;
};

void expectPriced(const Check& c) {
  SCOPED_TRACE(c.what);
  EXPECT_GE(c.counted, c.priced - 8) << "counted " << c.counted << " priced " << c.priced;
  EXPECT_LE(c.counted, c.priced + c.allowance)
      << "counted " << c.counted << " priced " << c.priced << " allowance " << c.allowance;
}

// Every rank of `job`'s step `step` against the model's prices; returns the
// checks (printed, so the numbers are in the test log).
std::vector<Check> compare(const JobSpec& job, int64_t step) {
  const auto counted = runCounted(job);
  const auto price = priced(job);
  const int p = job.parallelism.pipeline_stages, d = job.parallelism.data_parallel;
  const ModelDef model = makeModel(job.model);
  std::vector<Check> out;
  for (int r = 0; r < d; ++r) {
    for (int s = 0; s + 1 < p; ++s) {
      const int a = r * p + s, b = a + 1;
      auto any = [](int32_t) { return true; };
      auto [fwd, fwd_msgs] = counted[a]->sent(b, transport::Channel::ACTIVATION, step, any);
      auto [bwd, bwd_msgs] = counted[b]->sent(a, transport::Channel::ACTIVATION_GRAD, step, any);
      out.push_back({"activations replica " + std::to_string(r) + " boundary " + std::to_string(s),
                     price.boundary_fwd, fwd, fwd_msgs * kFrameBytesPerMessage});
      out.push_back(
          {"activation gradients replica " + std::to_string(r) + " boundary " + std::to_string(s),
           price.boundary_bwd, bwd, bwd_msgs * kFrameBytesPerMessage});
    }
    for (int s = 0; s < p; ++s) {
      const int me = r * p + s;
      double dp = 0;
      for (int q = 0; q < d; ++q)
        if (q != r)
          dp += counted[me]->sent(q * p + s, transport::Channel::GRADIENT, step, isDp).first;
      // Tensors of the stage: every parameter tensor of its slice.
      const auto range = runtime::stageLayerRanges(
          model, runtime::evenSplit(model.bodyLayers(), p))[static_cast<size_t>(s)];
      auto slice = buildSlice(model, range.first, range.second, 1);
      const double tensors = static_cast<double>(uniqueParameters(*slice).size());
      const double gathered = (d - 1) * price.dp[s].gathers * (4 + tensors * kHeaderBytesPerTensor);
      out.push_back({"data-parallel rank " + std::to_string(me), price.dp[s].sentBytes(d), dp,
                     gathered + 8.0 * 2 * (d - 1)});
    }
    if (p > 1) {
      const int first = r * p, last = r * p + p - 1;
      out.push_back({"tied sum replica " + std::to_string(r) + " first -> last", price.tied,
                     counted[first]->sent(last, transport::Channel::GRADIENT, step, isTied).first,
                     8});
      out.push_back({"tied sum replica " + std::to_string(r) + " last -> first", price.tied,
                     counted[last]->sent(first, transport::Channel::GRADIENT, step, isTied).first,
                     8});
    }
  }
  for (const Check& c : out) {
    std::printf("%-44s priced %10.0f counted %10.0f (+%.0f)\n", c.what.c_str(), c.priced, c.counted,
                c.counted - c.priced);
  }
  return out;
}

// Dense gradients (ring all-reduce), fp32 activations both ways.
TEST(PricedBytes, DenseGradientsAndFp32Activations) {
  for (const Check& c : compare(pricedJob(kGpt, ""), 2)) expectPriced(c);
}

// A compressed gradient method (all-gather of each member's blob to the
// D - 1 others), directly quantized activations and quantized gradients of
// them.
TEST(PricedBytes, QuantizedGradientsAreAllGathered) {
  const std::string compression = R"(
compression:
  activations: {method: direct, bits: 4}
  gradients: {method: quantize, bits: 4}
  backward: {method: quantize, bits: 8}
)";
  for (const Check& c : compare(pricedJob(kGpt, compression), 2)) expectPriced(c);
}

// AC-SGD activations after the first epoch (12 samples, 6 a step: step 2
// sends deltas), fp16 activation gradients, top-k gradients.
TEST(PricedBytes, AcsgdDeltasAndTopkGradients) {
  const std::string compression = R"(
compression:
  activations: {method: acsgd, bits: 4}
  backward: {method: fp16}
  gradients: {method: topk, ratio: 0.05}
)";
  for (const Check& c : compare(pricedJob(kGpt, compression), 2)) expectPriced(c);
}

// PowerSGD: the 1-D tensors by the ring, P and Q by two all-gathers. The
// model prices the factors by one ratio for every matrix (the MLP block's
// shape) and not the headers of its two gathers, so this is a bound check:
// counted 14-17% over priced here; a ring-priced gather would be ~70% over.
TEST(PricedBytes, PowerSgdIsPricedWithinItsShapeApproximation) {
  const std::string compression = R"(
compression:
  gradients: {method: powersgd, rank: 2}
)";
  for (const Check& c : compare(pricedJob(kGpt, compression), 2)) {
    if (c.what.rfind("data-parallel", 0) != 0) {
      expectPriced(c);
      continue;
    }
    SCOPED_TRACE(c.what);
    EXPECT_GT(c.counted, 0.8 * c.priced);
    EXPECT_LT(c.counted, 1.25 * c.priced);
  }
}

// A tied GPT-2 across two stages: the first and last stage of each replica
// sum the tied weight's gradients (vocab x hidden fp32 each way).
TEST(PricedBytes, TiedEmbeddingSumAcrossStages) {
  const auto checks =
      compare(pricedJob("{kind: gpt2, layers: 4, hidden: 64, heads: 2, seq_len: 32, vocab: 32, "
                        "max_positions: 32}",
                        ""),
              2);
  int tied = 0;
  for (const Check& c : checks) {
    expectPriced(c);
    if (c.what.rfind("tied", 0) == 0) {
      ++tied;
      EXPECT_EQ(c.priced, 4.0 * 32 * 64);
    }
  }
  EXPECT_EQ(tied, 6);
}

}  // namespace
