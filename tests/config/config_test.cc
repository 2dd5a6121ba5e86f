// Job and topology parsing: defaults, presets, topology resolution (repeat,
// defaults, asymmetric links) and the paper's scenarios as shipped.
#include <gtest/gtest.h>

#include <filesystem>
#include <tuple>
#include <utility>

#include "src/common/strings.h"
#include "src/config/diagnostics.h"
#include "src/config/job_parser.h"
#include "src/config/resolved_job.h"
#include "src/config/summary.h"
#include "src/config/topology_parser.h"

using namespace geopipe;
using config::parseJobString;
using config::parseTopologyString;

namespace {

const char* kTwoSites = R"(
topology:
  sites:
    - {name: a, devices: 2, intra: {latency_ms: 1, bandwidth_gbps: 10}, gpu: A100, tflops: 312, memory_gb: 80}
    - name: b
      intra: {latency_ms: 2, bandwidth_gbps: 5}
      devices:
        - {gpu: T4, tflops: 65, memory_gb: 16}
        - {name: big-one}
  inter_site_default: {latency_ms: 20, bandwidth_gbps: 1}
  links:
    - {from: b, to: a, latency_ms: 25, bandwidth_gbps: 0.5}
)";

TEST(JobParser, DefaultsFillAnOmittedSection) {
  JobSpec job = parseJobString(kTwoSites, "inline.yaml", "");
  EXPECT_EQ(job.name, "inline");
  EXPECT_EQ(job.training.steps, TrainingSpec{}.steps);
  EXPECT_EQ(job.parallelism.schedule, "1f1b");
  EXPECT_EQ(job.compression.activations.method, "none");
  EXPECT_EQ(job.scheduler.cost_model, "geopipe");
}

TEST(JobParser, DataPackDefaultsToTrueAndFalseIsTakenWhereDocumentsEnd) {
  EXPECT_TRUE(parseJobString(kTwoSites, "j.yaml", "").data.pack);
  // Tests run in the source root.
  const std::string text = std::string(kTwoSites) +
                           "model: {preset: tiny, seq_len: 8}\n"
                           "data: {kind: text, path: fixtures/data/short.txt, pack: false}\n";
  EXPECT_FALSE(parseJobString(text, "tests/config/j.yaml", "tests/config").data.pack);
}

TEST(JobParser, PresetThenExplicitFieldsOverride) {
  std::string yaml = std::string(kTwoSites) + "model: {preset: gpt3-xl, layers: 12}\n";
  JobSpec job = parseJobString(yaml, "j.yaml", "");
  EXPECT_EQ(job.model.layers, 12);
  EXPECT_EQ(job.model.hidden, 2048);
  EXPECT_EQ(job.model.heads, 16);
  EXPECT_EQ(job.model.seq_len, 2048);
}

TEST(JobParser, DataParallelAuto) {
  std::string yaml = std::string(kTwoSites) +
                     "parallelism: {pipeline_stages: 2, data_parallel: auto}\n";
  JobSpec job = parseJobString(yaml, "j.yaml", "");
  EXPECT_TRUE(job.parallelism.dataParallelAuto());
}

TEST(JobParser, ScientificNotationAndPayloads) {
  std::string yaml = std::string(kTwoSites) +
                     "training: {optimizer: {lr: 3e-4}}\n"
                     "scheduler: {payloads: {grad_gb: 0.65}}\n";
  JobSpec job = parseJobString(yaml, "j.yaml", "");
  EXPECT_DOUBLE_EQ(job.training.optimizer.lr, 3e-4);
  ASSERT_TRUE(job.scheduler.grad_payload_gb.has_value());
  EXPECT_DOUBLE_EQ(*job.scheduler.grad_payload_gb, 0.65);
  EXPECT_FALSE(job.scheduler.act_payload_gb.has_value());
}

TEST(JobParser, RelativePathsResolveAgainstTheJobDirectory) {
  std::string yaml = std::string(kTwoSites) +
                     "checkpoint: {dir: ckpt, every_steps: 5}\n";
  JobSpec job = parseJobString(yaml, "/jobs/j.yaml", "/jobs");
  EXPECT_EQ(job.checkpoint.dir, "/jobs/ckpt");
}

TEST(JobParser, DataTokenizerResolvesAgainstTheJobDirectoryAndSkipsTheByteCount) {
  // The repository root as the job's directory: the tokenizer and a text
  // shorter in bytes than seq_len + 1 (the token count is checked on load).
  const std::string yaml = std::string(kTwoSites) +
                           "model: {preset: gpt2-small, seq_len: 4096}\n"
                           "data: {kind: text, path: tests/config/fixtures/data/short.txt, "
                           "tokenizer: assets/tokenizers/gpt2}\n";
  const std::string root = std::filesystem::current_path().string();
  JobSpec job = parseJobString(yaml, root + "/j.yaml", root);
  EXPECT_EQ(job.data.tokenizer, root + "/assets/tokenizers/gpt2");
  EXPECT_EQ(job.data.path, root + "/tests/config/fixtures/data/short.txt");
  // Without a tokenizer the same file is too short.
  const std::string bytes = std::string(kTwoSites) +
                            "model: {preset: gpt2-small, seq_len: 4096}\n"
                            "data: {kind: text, path: tests/config/fixtures/data/short.txt}\n";
  EXPECT_THROW(parseJobString(bytes, root + "/j.yaml", root), config::SpecError);
}

// A job without `topology:` runs on one machine: a site of one device per
// tasklet, joined by the same-machine link (docs/job-spec.md, "Without a
// topology").
TEST(JobParser, NoTopologyAssumesALocalDevicePerTasklet) {
  const JobSpec job =
      parseJobString("parallelism: {pipeline_stages: 3, data_parallel: 2}\n", "one-box.yaml", "");
  const TopologySpec& t = job.topology;
  EXPECT_TRUE(config::isAssumedTopology(t));
  ASSERT_EQ(t.numDevices(), 6);
  ASSERT_EQ(t.numSites(), 1);
  EXPECT_EQ(t.devices[5].name, "local/5");
  EXPECT_EQ(t.link(0, 5).latency_ms, 0.0);
  EXPECT_EQ(t.link(5, 0).bandwidth_gbps, 100.0);
  EXPECT_NE(config::formatJobSummary(job).find(
                "topology:     none given; assuming a local one: 6 devices, one site, a device "
                "per tasklet, links of 0 ms and 100 Gbps (the same machine)"),
            std::string::npos)
      << config::formatJobSummary(job);
  // One tasklet: one device (and the summary says so in the singular).
  const JobSpec one = parseJobString("name: one\n", "one.yaml", "");
  EXPECT_EQ(one.topology.numDevices(), 1);
  EXPECT_NE(config::assumedTopologyNote(one.topology).find(": 1 device, one site"),
            std::string::npos);
  // A job that names a topology is not assumed, whatever it holds.
  EXPECT_FALSE(config::isAssumedTopology(parseJobString(kTwoSites, "j.yaml", "").topology));
  EXPECT_EQ(config::assumedTopologyNote(parseJobString(kTwoSites, "j.yaml", "").topology), "");
}

// validate --print writes the assumed topology inline: the printed job
// validates again, no longer assumes anything, and prints the same.
TEST(JobParser, PrintedJobWithoutTopologyCarriesTheAssumedOneInline) {
  const JobSpec job =
      parseJobString("parallelism: {pipeline_stages: 2, data_parallel: 2}\n", "one-box.yaml", "");
  const std::string printed = config::resolvedJobYaml(job);
  EXPECT_NE(printed.find("description: \"assumed: the job gives no topology"), std::string::npos)
      << printed;
  const JobSpec again = parseJobString(printed, "printed.yaml", "");
  EXPECT_FALSE(config::isAssumedTopology(again.topology));
  EXPECT_EQ(again.topology.numDevices(), 4);
  EXPECT_EQ(again.topology.link(0, 3).bandwidth_gbps, 100.0);
  EXPECT_EQ(config::resolvedJobYaml(again), printed);
}

TEST(JobParser, NoTopologyRefusesWhatALocalDevicePerTaskletCannotGive) {
  // data_parallel: auto chooses replicas from the devices.
  try {
    parseJobString("parallelism: {data_parallel: auto}\n", "auto.yaml", "");
    FAIL() << "accepted";
  } catch (const config::SpecError& e) {
    ASSERT_EQ(e.diagnostics().size(), 1u);
    EXPECT_EQ(e.diagnostics()[0].field, "parallelism.data_parallel");
    EXPECT_EQ(e.diagnostics()[0].line, 1);
    EXPECT_NE(std::string(e.what()).find("give data_parallel a number, or add a topology"),
              std::string::npos)
        << e.what();
  }
  // More tasklets than a topology may have devices.
  try {
    parseJobString(
        "parallelism: {pipeline_stages: 64, data_parallel: 65}\n"
        "model: {preset: tiny, layers: 64}\n",
        "big.yaml", "");
    FAIL() << "accepted";
  } catch (const config::SpecError& e) {
    ASSERT_EQ(e.diagnostics().size(), 1u);
    EXPECT_EQ(e.diagnostics()[0].field, "parallelism");
    EXPECT_NE(std::string(e.what()).find("= 4160 tasklets"), std::string::npos) << e.what();
  }
}

TEST(TopologyParser, DevicesSitesAndDirectedLinks) {
  JobSpec job = parseJobString(kTwoSites, "j.yaml", "");
  const TopologySpec& t = job.topology;
  ASSERT_EQ(t.numDevices(), 4);
  ASSERT_EQ(t.numSites(), 2);
  EXPECT_EQ(t.devices[0].name, "a/0");
  EXPECT_EQ(t.devices[1].gpu, "A100");
  EXPECT_DOUBLE_EQ(t.devices[1].tflops, 312);
  EXPECT_EQ(t.devices[2].gpu, "T4");
  EXPECT_EQ(t.devices[3].name, "big-one");
  EXPECT_EQ(t.devices[3].site, 1);
  // Intra-site link.
  EXPECT_DOUBLE_EQ(t.link(0, 1).bandwidth_gbps, 10);
  // a -> b uses the default; b -> a was overridden in one direction only.
  EXPECT_DOUBLE_EQ(t.link(0, 2).bandwidth_gbps, 1);
  EXPECT_DOUBLE_EQ(t.link(2, 0).bandwidth_gbps, 0.5);
  EXPECT_DOUBLE_EQ(t.link(2, 0).latency_ms, 25);
}

TEST(TopologyParser, DirectedEntryWinsOverSymmetricWhateverTheOrder) {
  TopologySpec t = parseTopologyString(R"(
sites: [{name: a, devices: 1}, {name: b, devices: 1}]
links:
  - {from: a, to: b, latency_ms: 5, bandwidth_gbps: 0.1}
  - {sites: [a, b], latency_ms: 1, bandwidth_gbps: 2}
)", "t.yaml");
  EXPECT_DOUBLE_EQ(t.link(0, 1).bandwidth_gbps, 0.1);
  EXPECT_DOUBLE_EQ(t.link(1, 0).bandwidth_gbps, 2);
}

TEST(TopologyParser, DuplexBandwidthIsOptionalPerLinkAndChecked) {
  TopologySpec t = parseTopologyString(R"(
sites: [{name: a, devices: 2, intra: {latency_ms: 0, bandwidth_gbps: 10, duplex_bandwidth_gbps: 7}},
        {name: b, devices: 1}]
links:
  - {from: a, to: b, latency_ms: 5, bandwidth_gbps: 0.02, duplex_bandwidth_gbps: 0.013}
  - {from: b, to: a, latency_ms: 5, bandwidth_gbps: 0.02}
)",
                                       "t.yaml");
  EXPECT_DOUBLE_EQ(t.link(0, 1).exchangeGbps(), 7);
  EXPECT_DOUBLE_EQ(t.link(0, 2).bandwidth_gbps, 0.02);
  EXPECT_DOUBLE_EQ(t.link(0, 2).exchangeGbps(), 0.013);
  EXPECT_DOUBLE_EQ(t.link(2, 0).duplex_bandwidth_gbps, 0) << "not given";
  EXPECT_DOUBLE_EQ(t.link(2, 0).exchangeGbps(), 0.02) << "not given: the bandwidth";
  try {
    parseTopologyString(
        "sites: [{name: a, devices: 2, intra: {latency_ms: 0, bandwidth_gbps: 1, "
        "duplex_bandwidth_gbps: 0}}]\n",
        "bad.yaml");
    FAIL() << "a duplex bandwidth of 0 is refused";
  } catch (const config::SpecError& e) {
    ASSERT_EQ(e.diagnostics().size(), 1u);
    EXPECT_EQ(e.diagnostics()[0].field, "sites[0].intra.duplex_bandwidth_gbps");
  }
}

TEST(TopologyParser, RepeatExpandsSites) {
  TopologySpec t = parseTopologyString(R"(
sites:
  - {name: m, repeat: 3, devices: 2, intra: {latency_ms: 0, bandwidth_gbps: 100}}
inter_site_default: {latency_ms: 0, bandwidth_gbps: 3.125}
)", "t.yaml");
  ASSERT_EQ(t.numSites(), 3);
  EXPECT_EQ(t.sites[2].name, "m-2");
  EXPECT_EQ(t.numDevices(), 6);
  EXPECT_EQ(t.devices[5].site, 2);
  EXPECT_DOUBLE_EQ(t.link(0, 1).bandwidth_gbps, 100);
  EXPECT_DOUBLE_EQ(t.link(1, 2).bandwidth_gbps, 3.125);
}

TEST(TopologyParser, PaperScenariosHave64Devices) {
  for (const char* name : {"datacenter", "spot", "multi-university", "regional",
                           "worldwide"}) {
    TopologySpec t = config::loadTopologyFile(
        std::string("examples/topologies/dtfm-") + name + ".yaml");
    EXPECT_EQ(t.numDevices(), 64) << name;
  }
  TopologySpec spot = config::loadTopologyFile("examples/topologies/dtfm-spot.yaml");
  EXPECT_EQ(spot.numSites(), 40);
  EXPECT_EQ(spot.devices[31].site, 7);   // last device of the 4-GPU machines
  EXPECT_EQ(spot.devices[32].site, 8);   // first single-GPU machine
  TopologySpec ww = config::loadTopologyFile("examples/topologies/dtfm-worldwide.yaml");
  // Tokyo (site 3) to Frankfurt (site 6): 223 ms / 0.36 Gbps, both directions.
  EXPECT_DOUBLE_EQ(ww.link(3 * 8, 6 * 8 + 1).latency_ms, 223);
  EXPECT_DOUBLE_EQ(ww.link(6 * 8 + 1, 3 * 8).bandwidth_gbps, 0.36);
}

TEST(TopologyParser, ErrorsNameTheSourceAndPosition) {
  try {
    parseTopologyString("sites:\n  - {name: a, devices: x}\n", "my-topo.yaml");
    FAIL();
  } catch (const config::SpecError& e) {
    ASSERT_EQ(e.diagnostics().size(), 1u);
    const auto& d = e.diagnostics()[0];
    EXPECT_EQ(d.file, "my-topo.yaml");
    EXPECT_EQ(d.line, 2);
    EXPECT_EQ(d.field, "sites[0].devices");
  }
}

TEST(Strings, ClosestMatchSuggestsOnlyPlausibleTypos) {
  std::vector<std::string> keys = {"training", "model", "topology"};
  EXPECT_EQ(common::closestMatch("trainig", keys), "training");
  EXPECT_EQ(common::closestMatch("modle", keys), "model");
  EXPECT_EQ(common::closestMatch("zzzzzz", keys), "");
  EXPECT_EQ(common::editDistance("kitten", "sitting"), 3);
  EXPECT_EQ(common::joinOr({"a", "b", "c"}), "a, b or c");
}

}  // namespace

namespace {

// A topology whose devices give tflops per compute dtype: the site's
// mapping, one device's own mapping, one device's single rate.
std::string perDtypeJob(const std::string& dtype) {
  return R"(
model: {preset: tiny, dtype: )" +
         dtype + R"(}
topology:
  sites:
    - name: lab
      intra: {latency_ms: 0.1, bandwidth_gbps: 100}
      tflops: {fp32: 19.5, bf16: 312, fp16: 312}
      devices:
        - {name: a100}
        - {name: v100, tflops: {fp32: 15.7, fp16: 125}}
        - {name: cpu, tflops: 0.05}
)";
}

TEST(TopologyParser, TflopsPerDtypeFollowsTheJobsComputeDtype) {
  JobSpec fp32 = parseJobString(perDtypeJob("fp32"), "j.yaml", "");
  EXPECT_DOUBLE_EQ(fp32.topology.devices[0].tflops, 19.5);
  EXPECT_DOUBLE_EQ(fp32.topology.devices[1].tflops, 15.7);
  EXPECT_DOUBLE_EQ(fp32.topology.devices[2].tflops, 0.05);  // one rate: any dtype
  EXPECT_TRUE(fp32.topology.devices[2].tflops_by_dtype.empty());
  JobSpec fp16 = parseJobString(perDtypeJob("fp16"), "j.yaml", "");
  EXPECT_DOUBLE_EQ(fp16.topology.devices[0].tflops, 312);
  EXPECT_DOUBLE_EQ(fp16.topology.devices[1].tflops, 125);
}

TEST(TopologyParser, ADtypeADeviceHasNoRateForIsRefusedNamingTheDevice) {
  try {
    parseJobString(perDtypeJob("bf16"), "j.yaml", "");
    FAIL() << "a bf16 job on a device with only fp32 and fp16 rates was accepted";
  } catch (const config::SpecError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("model.dtype"), std::string::npos) << m;
    EXPECT_NE(m.find("'v100' (has fp16, fp32)"), std::string::npos) << m;
    EXPECT_NE(m.find("add bf16: <rate>"), std::string::npos) << m;
    EXPECT_EQ(m.find("'a100'"), std::string::npos) << m;
  }
}

TEST(TopologyParser, TflopsMappingKeysAreCheckedAndNotEmpty) {
  const std::string base = R"(
sites:
  - {name: s, devices: 1, tflops: )";
  EXPECT_THROW(parseTopologyString(base + "{fp23: 1}}\n", "t.yaml"), config::SpecError);
  EXPECT_THROW(parseTopologyString(base + "{}}\n", "t.yaml"), config::SpecError);
  EXPECT_THROW(parseTopologyString(base + "{fp32: 0}}\n", "t.yaml"), config::SpecError);
  EXPECT_NO_THROW(parseTopologyString(base + "{fp32: 1}}\n", "t.yaml"));
}

}  // namespace

// parallelism.data_parallel_sync: DiLoCo's fields, the defaults of the
// issue's example, validate --print round-trips; what would be ignored is
// refused with the field and the fix.
TEST(JobParser, DataParallelSyncDilocoIsReadPrintedAndCheckedAcrossFields) {
  const std::string yaml =
      "parallelism:\n"
      "  pipeline_stages: 2\n"
      "  data_parallel: 2\n"
      "  data_parallel_sync:\n"
      "    kind: diloco\n"
      "    inner_steps: 50\n"
      "    compression: {method: quantize, bits: 8}\n"
      "    overlap: true\n";
  const JobSpec job = parseJobString(yaml, "diloco.yaml", "");
  const DataParallelSyncSpec& s = job.parallelism.data_parallel_sync;
  EXPECT_TRUE(s.diloco());
  EXPECT_EQ(s.inner_steps, 50);
  EXPECT_EQ(s.outer_optimizer.kind, "nesterov");
  EXPECT_DOUBLE_EQ(s.outer_optimizer.lr, 0.7);
  EXPECT_DOUBLE_EQ(s.outer_optimizer.momentum, 0.9);
  EXPECT_EQ(s.compression.method, "quantize");
  EXPECT_TRUE(s.overlap);
  const std::string printed = config::resolvedJobYaml(job);
  EXPECT_NE(printed.find("inner_steps: 50"), std::string::npos) << printed;
  EXPECT_EQ(config::resolvedJobYaml(parseJobString(printed, "printed.yaml", "")), printed);
  EXPECT_FALSE(parseJobString("name: x\n", "x.yaml", "").parallelism.data_parallel_sync.diloco());

  auto refusal = [](const std::string& text) -> std::pair<std::string, std::string> {
    try {
      parseJobString(text, "bad.yaml", "");
    } catch (const config::SpecError& e) {
      return {e.diagnostics().empty() ? "" : e.diagnostics()[0].field, e.what()};
    }
    return {"(accepted)", ""};
  };
  auto [field, what] = refusal("parallelism: {data_parallel_sync: {inner_steps: 10}}\n");
  EXPECT_EQ(field, "parallelism.data_parallel_sync.inner_steps");
  EXPECT_NE(what.find("set kind: diloco or remove it"), std::string::npos) << what;
  std::tie(field, what) = refusal(
      "parallelism: {data_parallel: 2, data_parallel_sync: {kind: diloco}}\n"
      "compression: {gradients: {method: topk}}\n");
  EXPECT_EQ(field, "compression.gradients.method");
  EXPECT_NE(what.find("parallelism.data_parallel_sync.compression instead"), std::string::npos)
      << what;
  std::tie(field, what) = refusal(
      "parallelism: {data_parallel_sync: {kind: diloco, outer_optimizer: {momentum: 0}}}\n");
  EXPECT_EQ(field, "parallelism.data_parallel_sync.outer_optimizer.momentum");
  EXPECT_NE(what.find("use kind: sgd"), std::string::npos) << what;
  std::tie(field, what) = refusal(
      "parallelism: {data_parallel_sync: {kind: diloco, outer_optimizer: {momentum: 1}}}\n");
  EXPECT_EQ(field, "parallelism.data_parallel_sync.outer_optimizer.momentum");
  std::tie(field, what) =
      refusal("parallelism: {data_parallel_sync: {kind: diloco}}\nscheduler: {cost_model: dtfm}\n");
  EXPECT_EQ(field, "scheduler.cost_model");
  std::tie(field, what) =
      refusal("parallelism: {data_parallel_sync: {kind: diloco, inner_steps: 0}}\n");
  EXPECT_EQ(field, "parallelism.data_parallel_sync.inner_steps");
}
