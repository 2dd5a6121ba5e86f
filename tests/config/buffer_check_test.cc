// AC-SGD buffer memory before the run (src/config/buffer_check.h): its
// numbers against real stores filled with the same samples, and the
// refusals `validate` gives with their numbers and fixes.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "compression/delta_compressor.h"
#include "compression/options.h"
#include "src/config/buffer_check.h"
#include "src/config/diagnostics.h"
#include "src/config/job_parser.h"
#include "src/config/summary.h"

using namespace geopipe;
using config::parseJobString;

namespace {

// A 3-stage x 2-replica AC-SGD job on synthetic data; `extra` is appended
// (later keys of a section are written inline in `activations`).
std::string job(const std::string& activations, const std::string& extra = "",
                const std::string& memory_gb = "8") {
  return R"(
model: {preset: none, layers: 3, hidden: 24, heads: 2, seq_len: 16, vocab: 64}
data: {kind: synthetic, num_samples: 75}
training: {steps: 1000, global_batch: 4, micro_batch: 2}
parallelism: {pipeline_stages: 3, data_parallel: 2}
compression:
  activations: {method: acsgd, bits: 4, )" +
         activations + R"(}
topology:
  device_defaults: {gpu: cpu, tflops: 1, memory_gb: )" +
         memory_gb + R"(}
  sites: [{name: a, devices: 6, intra: {latency_ms: 1, bandwidth_gbps: 1}}]
)" + extra;
}

std::string replaced(std::string s, const std::string& from, const std::string& to) {
  const size_t at = s.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  return at == std::string::npos ? s : s.replace(at, from.size(), to);
}

std::string refusal(const std::string& yaml) {
  try {
    parseJobString(yaml, "j.yaml", "");
  } catch (const config::SpecError& e) {
    return e.what();
  }
  ADD_FAILURE() << "accepted:\n" << yaml;
  return "";
}

// The check's bytes are what a real sender's and receiver's store hold once
// a replica's samples (ceil(N / R) of them) went through them, for both
// store kinds and buffer formats.
TEST(BufferCheck, BytesEqualRealStoresFilledWithTheSameSamples) {
  const std::string dir = ::testing::TempDir();
  for (const std::string& activations : std::vector<std::string>{
           "buffer_store: memory", "buffer_store: mmap, buffer_dir: " + dir,
           "buffer_format: quantized", "buffer_format: quantized, buffer_bits: 3",
           "buffer_store: mmap, buffer_dir: " + dir +
               ", buffer_format: quantized, buffer_bits: 5"}) {
    const JobSpec j = parseJobString(job("buffer_budget_gb: 0.01, " + activations), "j.yaml", "");
    const config::AcsgdBufferMemory m = config::acsgdBufferMemory(j, 2);
    ASSERT_TRUE(m.enabled && m.counted) << m.samples_note;
    EXPECT_EQ(m.samples, 75);
    EXPECT_EQ(m.samples_per_replica, 38);  // ceil(75 / 2)
    EXPECT_FALSE(m.bounded_by_steps);
    EXPECT_EQ(m.stores_per_stage, (std::vector<int>{1, 2, 1}));

    const auto opt = compression::activationOptionsFromSpec(j.compression.activations, 1,
                                                            "check-" + std::to_string(getpid()));
    compression::DeltaSender tx(opt.delta, compression::makeBufferStore(opt.store));
    auto rx_store = opt.store;
    rx_store.path += ".recv";
    compression::DeltaReceiver rx(opt.delta, compression::makeBufferStore(rx_store));
    std::mt19937 rng(3);
    std::normal_distribution<float> nd;
    std::vector<float> a(2 * 16 * 24), out;
    for (int epoch = 0; epoch < 2; ++epoch) {
      for (int64_t id = 0; id < m.samples_per_replica; id += 2) {
        std::vector<int64_t> ids = {id};
        if (id + 1 < m.samples_per_replica) ids.push_back(id + 1);
        for (auto& v : a) v = nd(rng);
        const std::vector<int64_t> shape = {int64_t(ids.size()), 16, 24};
        rx.decode(ids.data(), ids.size(), tx.encode(ids.data(), a.data(), shape), out);
      }
    }
    EXPECT_EQ(tx.store().entryCount(), 38u);
    EXPECT_EQ(tx.store().bytesUsed(), m.store_bytes) << activations;
    EXPECT_EQ(rx.store().bytesUsed(), m.store_bytes) << activations;
    EXPECT_EQ(m.taskletBytes(1), 2 * tx.store().bytesUsed());
    EXPECT_EQ(m.budget_bytes, opt.store.budget_bytes);
    EXPECT_EQ(m.in_memory, opt.store.kind == compression::StoreKind::MEMORY);
  }
}

TEST(BufferCheck, ReplicasStepsAndMinReplicasSizeTheStores) {
  JobSpec j = parseJobString(job("buffer_format: quantized"), "j.yaml", "");
  // fp16 is 2 B per element; quantized 8-bit 1 B plus a 4 B scale per channel.
  const auto q = config::acsgdBufferMemory(j, 2);
  EXPECT_EQ(q.format, "quantized 8-bit");
  EXPECT_DOUBLE_EQ(q.bytes_per_element, (16.0 * 24 + 4 * 24) / (16 * 24));
  EXPECT_EQ(q.header_bytes, 24u);
  j.compression.activations.buffer_format = "fp16";
  const auto f = config::acsgdBufferMemory(j, 2);
  EXPECT_DOUBLE_EQ(f.bytes_per_element, 2.0);
  EXPECT_EQ(f.entry_bytes, 24u + 2 * 16 * 24);
  EXPECT_LT(q.store_bytes, f.store_bytes);
  EXPECT_EQ(config::acsgdBufferMemory(j, 3).samples_per_replica, 25);
  // A short run fills the stores only as far as its steps reach.
  j.training.steps = 5;
  auto m = config::acsgdBufferMemory(j, 2);
  EXPECT_EQ(m.samples_per_replica, 10);  // 5 steps x 4 / 2
  EXPECT_TRUE(m.bounded_by_steps);
  // A job that may shrink to one replica sizes its stores for it.
  j.training.steps = 1000;
  j.fault_tolerance.min_replicas = 1;
  m = config::acsgdBufferMemory(j, 2);
  EXPECT_EQ(m.replicas, 1);
  EXPECT_EQ(m.samples_per_replica, 75);
  // No stores without AC-SGD or with one stage.
  j.parallelism.pipeline_stages = 1;
  EXPECT_FALSE(config::acsgdBufferMemory(j, 2).enabled);
  j.parallelism.pipeline_stages = 3;
  j.compression.activations.method = "direct";
  EXPECT_FALSE(config::acsgdBufferMemory(j, 2).enabled);
}

// Over the budget: refused at buffer_budget_gb with the numbers (samples per
// replica, seq_len, hidden, bytes per element, per store and per tasklet,
// the budget) and the fixes, each with a number that would fit.
TEST(BufferCheck, OverTheBudgetIsRefusedWithTheNumbersAndTheFixes) {
  // 38 entries of 24 + 768 B = 30096 B per store (quantized 8-bit: 19152 B);
  // the budget is 23998 B.
  const std::string budget = "buffer_budget_gb: 0.00002235";
  const std::string msg = refusal(job(budget));
  for (const char* want :
       {"compression.activations.buffer_budget_gb: AC-SGD buffer stores exceed buffer_budget_gb "
        "(23.4 KiB per store)",
        "38 samples per replica (ceil(75 samples / 2 replicas)) x 16 seq_len x 24 hidden x 2 B "
        "(fp16) + 24 B per entry = 29.4 KiB per store",
        "1 store (29.4 KiB) at stages 0 and 2, 2 (58.8 KiB) at stage 1, in memory",
        "buffer_format: quantized with buffer_bits: 8 (18.7 KiB per store)",
        "data.num_samples: 60 or fewer (30 per replica)", "buffer_budget_gb: 0.01 or more"}) {
    EXPECT_NE(msg.find(want), std::string::npos) << "lacks: " << want << "\n" << msg;
  }
  // Each fix, applied, is accepted.
  EXPECT_NO_THROW(parseJobString(job(budget + ", buffer_format: quantized"), "j.yaml", ""));
  EXPECT_NO_THROW(
      parseJobString(replaced(job(budget), "num_samples: 75", "num_samples: 60"), "j.yaml", ""));
  EXPECT_NO_THROW(parseJobString(job("buffer_budget_gb: 0.01"), "j.yaml", ""));
  // The budget is per store: a middle stage's two stores each get all of it.
  EXPECT_NO_THROW(parseJobString(job("buffer_budget_gb: 0.0000281"), "j.yaml", ""));
}

// In memory, the buffers alone must fit a device of the topology; on disk
// (mmap) only the budget counts.
TEST(BufferCheck, InMemoryBuffersThatFitNoDeviceAreRefusedAtBufferStore) {
  const std::string tiny = "0.0000419";  // 44989 B: one store fits, a middle stage's two do not
  const std::string msg = refusal(job("buffer_store: memory", "", tiny));
  for (const char* want :
       {"compression.activations.buffer_store: AC-SGD buffers in memory (buffer_store: memory) "
        "do not fit topology",
        "a tasklet of stage 1 keeps 2 stores of 38 samples per replica",
        "58.8 KiB per tasklet, more than its largest device has",
        "buffer_store: mmap with a buffer_dir", "buffer_format: quantized with buffer_bits: 8",
        "data.num_samples: 56 or fewer (28 per replica)"}) {
    EXPECT_NE(msg.find(want), std::string::npos) << "lacks: " << want << "\n" << msg;
  }
  EXPECT_NO_THROW(parseJobString(
      job("buffer_store: mmap, buffer_dir: " + ::testing::TempDir(), "", tiny), "j.yaml", ""));
  // Two devices large enough for the two middle tasklets, the rest small:
  // the buffers alone can be placed, so validate leaves it to the planner.
  std::string mixed =
      replaced(job("buffer_store: memory", "", tiny), "sites: [{name: a, devices: 6,",
               "sites: [{name: b, devices: 2, memory_gb: 1, intra: {latency_ms: "
               "1, bandwidth_gbps: 1}}, {name: a, devices: 4,");
  mixed += "  inter_site_default: {latency_ms: 1, bandwidth_gbps: 1}\n";
  EXPECT_NO_THROW(parseJobString(mixed, "j.yaml", "")) << mixed;
  // Only one large device for two middle tasklets: refused.
  mixed = replaced(mixed, "devices: 2, memory_gb: 1", "devices: 1, memory_gb: 1");
  mixed = replaced(mixed, "devices: 4,", "devices: 5,");
  EXPECT_NE(refusal(mixed).find("only 1 device(s) have that much"), std::string::npos)
      << refusal(mixed);
}

TEST(BufferCheck, BufferFieldsParseAndTheSummaryShowsTheBuffers) {
  const JobSpec j = parseJobString(job("buffer_format: quantized, buffer_bits: 4"), "j.yaml", "");
  EXPECT_EQ(j.compression.activations.buffer_format, "quantized");
  EXPECT_EQ(j.compression.activations.buffer_bits, 4);
  const std::string s = config::formatJobSummary(j);
  EXPECT_NE(s.find("AC-SGD buffers: 38 samples per replica"), std::string::npos) << s;
  EXPECT_NE(s.find("(quantized 4-bit)"), std::string::npos) << s;
  EXPECT_NE(s.find("per tasklet: 1 store"), std::string::npos) << s;
  // data_parallel: auto and tokenized text: said, not guessed.
  const std::string yaml =
      replaced(job("buffer_store: memory"), "data_parallel: 2", "data_parallel: auto");
  EXPECT_NE(config::formatJobSummary(parseJobString(yaml, "j.yaml", ""))
                .find("sized by data_parallel (auto)"),
            std::string::npos);
}

// The runtime's check once the data is loaded (data.tokenizer jobs, --steps).
TEST(BufferCheck, CheckBufferBudgetThrowsWithTheMessage) {
  JobSpec j = parseJobString(job("buffer_budget_gb: 0.0000281"), "j.yaml", "");
  EXPECT_NO_THROW(config::checkBufferBudget(j, 2, 75));
  try {
    config::checkBufferBudget(j, 2, 1000);
    FAIL();
  } catch (const InfeasibleError& e) {
    EXPECT_NE(std::string(e.what()).find("500 samples per replica"), std::string::npos) << e.what();
  }
}

}  // namespace
