// Hostile and careless input through the built `geopipe` binary: numeric
// options that are NaN, infinite or out of range are refused naming the flag
// with readable bounds, and jobs whose numbers are physically impossible are
// refused by `validate` (and `train`) naming the field, never reaching the
// run as a hang or an exit 70. Issue 18.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/cli/cli_run.h"

namespace {

using namespace cli_test;

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// A two-device job; `data` and `extra` (more sections) replace or add.
std::string job(const std::string& extra = "",
                const std::string& data = "data: {kind: synthetic, num_samples: 32}\n") {
  return "model: {preset: none, layers: 2, hidden: 16, heads: 2, seq_len: 8, vocab: 16}\n" + data +
         "training: {steps: 2, global_batch: 4, micro_batch: 2}\n"
         "topology:\n"
         "  sites: [{name: local, devices: 2, intra: {latency_ms: 1, bandwidth_gbps: 10}}]\n" +
         extra;
}

TEST(NumericOptions, NanInfinityAndOutOfRangeAreRefusedNamingTheFlag) {
  TempDir dir;
  writeFile(dir.file("job.yaml"), job());
  const std::string j = dir.file("job.yaml");
  struct Case {
    std::vector<std::string> args;
    std::string expect;
  };
  const Case cases[] = {
      {{"plan", j, "--budget", "nan"},
       "--budget: expected a finite number in [0, 86400], found 'nan'"},
      {{"plan", j, "--budget", "inf"},
       "--budget: expected a finite number in [0, 86400], found 'inf'"},
      {{"plan", j, "--budget", "-1"}, "--budget: expected a number in [0, 86400], found '-1'"},
      {{"plan", j, "--evaluations", "-5"}, "--evaluations: expected an integer >= 0, found '-5'"},
      {{"launch", j, "--heartbeat-timeout", "nan"},
       "--heartbeat-timeout: expected a finite number in [1, 3600], found 'nan'"},
      {{"coordinator", j, "--heartbeat-timeout", "1e9"},
       "--heartbeat-timeout: expected a number in [1, 3600], found '1e9'"},
      {{"train", j, "--steps", "0"}, "--steps: expected an integer >= 1, found '0'"},
      {{"bench", "e2e", "--mbps", "5,nan"},
       "--mbps: expected a finite number in (0, 1e6], found 'nan'"},
  };
  for (const Case& c : cases) {
    const auto r = runGeopipe(dir, c.args);
    EXPECT_EQ(r.code, 2) << c.args[2] << " " << c.args[3] << "\n" << r.err;
    EXPECT_TRUE(contains(r.err, c.expect)) << r.err;
    // CLI11's own ranges printed DBL_MAX as 309 digits.
    EXPECT_FALSE(contains(r.err, "179769313486")) << r.err;
    EXPECT_LT(r.err.size(), 400u) << r.err;
  }
  // A list written as the docs write it is one value per item (--help:
  // parsed and checked, nothing run).
  EXPECT_EQ(runGeopipe(dir, {"bench", "e2e", "--mbps", "5,20", "--help"}).code, 0);
}

TEST(ValidateCommand, ImpossibleNumbersAreRefusedNamingTheField) {
  TempDir dir;
  struct Case {
    std::string extra, data, expect;
  };
  const std::string synthetic = "data: {kind: synthetic, num_samples: 32}\n";
  const Case cases[] = {
      // Both used to pass validation, then `train` waited forever.
      {"transport: {bandwidth_scale: 1e-300}\n", synthetic,
       "transport.bandwidth_scale: expected a number in (1e-6, 1e6], found 1e-300"},
      {"transport: {latency_scale: 1e9}\n", synthetic,
       "transport.latency_scale: expected a number in [0, 1e6], found 1e9"},
      // Used to end in exit 70 (bad_alloc) and "holds 1 tokens".
      {"", "data: {num_samples: 1000000000000000}\n", "data.num_samples: expected an integer in"},
      {"", "data: {num_samples: 4611686018427387904}\n",
       "data.num_samples: expected an integer in"},
      {"", "data: {num_samples: 1000000000}\n", "data.num_samples: synthetic data is generated"},
  };
  for (const Case& c : cases) {
    writeFile(dir.file("bad.yaml"), job(c.extra, c.data));
    auto r = runGeopipe(dir, {"validate", dir.file("bad.yaml")});
    EXPECT_EQ(r.code, 1) << r.out << r.err;
    EXPECT_TRUE(contains(r.out + r.err, c.expect)) << r.out << r.err;
    r = runGeopipe(dir, {"train", dir.file("bad.yaml")});
    EXPECT_EQ(r.code, 1) << r.out << r.err;
    EXPECT_TRUE(contains(r.err, c.expect)) << r.err;
  }
}

}  // namespace
