// Hostile and careless input through the built `geopipe` binary: numeric
// options that are NaN, infinite or out of range are refused naming the flag
// with readable bounds, and jobs whose numbers are physically impossible are
// refused by `validate` (and `train`) naming the field, never reaching the
// run as a hang or an exit 70. Issue 18.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

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
      // 1e-400 reads as 0 ("no limit" for --budget): refused as an underflow.
      {{"plan", j, "--budget", "1e-400"},
       "--budget: expected a number in [0, 86400], found '1e-400', which underflows"},
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

// A job path that is no file to read says what it is, and every command
// exits 4 for it (docs/cli.md: a file could not be read), validate included.
TEST(FileArguments, WhatIsThereInsteadOfAFileIsNamedWithExitCode4) {
  TempDir dir;
  const std::string fifo = dir.file("fifo"), link = dir.file("zero.yaml");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  ASSERT_EQ(::symlink("/dev/zero", link.c_str()), 0);
  struct Case {
    std::string path, expect;
  };
  const Case cases[] = {
      {"/dev/zero", "'/dev/zero': it is a device, not a regular file"},
      {dir.path.string(), "it is a directory, not a regular file"},
      {fifo, "it is a FIFO (named pipe), not a regular file"},
      {link, "it is a symbolic link to '/dev/zero', a device, not a regular file"},
      {dir.file("missing.yaml"), "it does not exist"},
  };
  for (const Case& c : cases) {
    for (const char* verb : {"validate", "plan", "train"}) {
      const auto r = runGeopipe(dir, {verb, c.path});
      EXPECT_EQ(r.code, 4) << verb << " " << c.path << "\n" << r.err;
      EXPECT_TRUE(contains(r.err, c.expect)) << verb << "\n" << r.err;
    }
  }
  // A data file that is a device is named as one (it used to be "no such file").
  writeFile(dir.file("job.yaml"), job("", "data: {kind: text, path: " + link + "}\n"));
  const auto r = runGeopipe(dir, {"validate", dir.file("job.yaml")});
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_TRUE(contains(r.err, "data.path: '" + link +
                                  "' is a symbolic link to '/dev/zero', a device, not a regular "
                                  "file: name a text file"))
      << r.err;
}

// README.md: `geopipe validate TOPOLOGY.yaml`.
TEST(ValidateCommand, AcceptsATopologyFileAlone) {
  TempDir dir;
  writeFile(dir.file("topo.yaml"),
            "name: two-sites\nsites:\n  - {name: a, devices: 2, intra: {latency_ms: 1, "
            "bandwidth_gbps: 10}}\n  - {name: b, devices: 1, gpu: T4}\n"
            "inter_site_default: {latency_ms: 40, bandwidth_gbps: 0.5}\n");
  auto r = runGeopipe(dir, {"validate", dir.file("topo.yaml")});
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_TRUE(contains(r.out, "topology 'two-sites' (" + dir.file("topo.yaml") +
                                  "): 3 devices in 2 sites (1x T4, 2x V100)"))
      << r.out;
  EXPECT_TRUE(contains(r.out, "slowest 0.5 Gbps (a -> b), longest 40 ms (a -> b)")) << r.out;
  EXPECT_TRUE(contains(r.out, "  OK")) << r.out;
  // Its problems are the topology parser's, with the topology's field paths.
  writeFile(dir.file("bad-topo.yaml"), "sites:\n  - {name: a, devices: 2}\n  - {name: b}\n");
  r = runGeopipe(dir, {"validate", dir.file("bad-topo.yaml"), dir.file("topo.yaml")});
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_TRUE(contains(r.err, "bad-topo.yaml:2:5: sites[0]: missing required key 'intra'"))
      << r.err;
  EXPECT_TRUE(contains(r.err, "sites[1]: missing required key 'devices'")) << r.err;
  EXPECT_TRUE(contains(r.out, "1 of 2 file(s) valid")) << r.out;
  // A job is still a job.
  writeFile(dir.file("job.yaml"), job());
  r = runGeopipe(dir, {"validate", dir.file("job.yaml")});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "job 'job'")) << r.out;
}

// A refused `certs` leaves nothing behind: no directory, no CA, no token.
TEST(CertsCommand, ARejectedHostWritesNothing) {
  TempDir dir;
  const std::string out = dir.file("pki");
  for (const std::vector<std::string>& hosts :
       {std::vector<std::string>{"--host", "node1", "--host", "bad host!"},
        std::vector<std::string>{"--host", "node1", "--host", "node1,10.0.0.2"}}) {
    std::vector<std::string> args = {"certs", out};
    args.insert(args.end(), hosts.begin(), hosts.end());
    const auto r = runGeopipe(dir, args);
    EXPECT_EQ(r.code, 1) << r.out << r.err;
    EXPECT_FALSE(fs::exists(out)) << r.out << r.err;
  }
  auto r = runGeopipe(dir, {"certs", out, "--host", "node\x1b[2J"});
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_TRUE(contains(r.err, "--host: 'node\\x1b[2J' is neither a host name")) << r.err;
  EXPECT_FALSE(fs::exists(out));
  // The same directory then works, and a second bad call keeps what is there.
  ASSERT_EQ(runGeopipe(dir, {"certs", out, "--host", "node1"}).code, 0);
  const std::string ca = readAll(out + "/ca.pem");
  r = runGeopipe(dir, {"certs", out, "--host", "node2", "--host", "-bad"});
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_FALSE(fs::exists(out + "/node2.pem"));
  EXPECT_EQ(readAll(out + "/ca.pem"), ca);
}

// Memory and the device limit: a 32 KB topology once took 4.3 GB to
// validate, and 65536 devices ended `plan` in bad_alloc (exit 70). Both are
// refused as spec errors (exit 1), within a 1.5 GB address space.
TEST(ValidateCommand, SizesAreBoundedBeforeExpanding) {
  TempDir dir;
  writeFile(dir.file("fat.yaml"),
            "device_defaults: {gpu: " + std::string(32000, 'g') +
                "}\nsites:\n  - {name: m, repeat: 1024, devices: 64, intra: {latency_ms: 1, "
                "bandwidth_gbps: 10}}\ninter_site_default: {latency_ms: 10, bandwidth_gbps: 1}\n");
  writeFile(dir.file("wide.yaml"),
            job("", "data: {kind: synthetic, num_samples: 32}\n")
                .replace(job().find("  sites:"), std::string::npos,
                         "  sites: [{name: m, repeat: 1024, devices: 64, intra: {latency_ms: 1, "
                         "bandwidth_gbps: 10}}]\n  inter_site_default: {latency_ms: 10, "
                         "bandwidth_gbps: 1}\n"));
  struct Case {
    std::string verb, file, expect;
  };
  const Case cases[] = {
      {"validate", dir.file("fat.yaml"), "device_defaults.gpu: is 32000 bytes long"},
      {"validate", dir.file("wide.yaml"),
       "topology.sites[0].repeat: this site takes the topology to 65536 devices"},
      {"plan", dir.file("wide.yaml"), "over the 4096 supported"},
  };
  for (const Case& c : cases) {
    const std::string cmd = "ulimit -v 1500000; " + quote(GEOPIPE_BINARY) + " " + c.verb + " " +
                            quote(c.file) + " >" + quote(dir.file("out")) + " 2>&1";
    const int status = std::system(("bash -c " + quote(cmd)).c_str());
    const std::string out = readAll(dir.file("out"));
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << c.verb << "\n" << out;
    EXPECT_TRUE(contains(out, c.expect)) << out;
  }
}

}  // namespace
