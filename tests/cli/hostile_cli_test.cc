// Hostile and careless input through the built `geopipe` binary: numeric
// options that are NaN, infinite or out of range are refused naming the flag
// with readable bounds, and jobs whose numbers are physically impossible are
// refused by `validate` (and `train`) naming the field, never reaching the
// run as a hang or an exit 70. Issue 18. In the hostile-input build the
// binary is geopipe-lite under ASan/UBSan (GEOPIPE_BINARY_LITE): the cases
// of an engine verb are skipped there, and the lite binary's own refusals
// are checked instead.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "tests/cli/cli_run.h"

// The binary under test runs with AddressSanitizer when this test does
// (they are built with the same flags).
#if defined(__SANITIZE_ADDRESS__)
#define GEOPIPE_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GEOPIPE_TEST_ASAN 1
#endif
#endif

namespace {

using namespace cli_test;

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

#ifdef GEOPIPE_BINARY_LITE
constexpr bool kLite = true;
#else
constexpr bool kLite = false;
#endif

// A sanitizer's report in the binary's output: ASan, LeakSanitizer and UBSan
// exit 1 by default, which is also a spec error's code.
bool sanitizerReport(const std::string& output) {
  return contains(output, "Sanitizer:") || contains(output, ": runtime error: ");
}

// runGeopipe, failing the case on a sanitizer's report.
CommandResult runBinary(const TempDir& dir, const std::vector<std::string>& args) {
  CommandResult r = runGeopipe(dir, args);
  EXPECT_FALSE(sanitizerReport(r.err)) << r.err;
  return r;
}

// Skips a case that needs an engine verb in geopipe-lite, which has none.
#define SKIP_WITHOUT_ENGINE(verbs)                                                     \
  do {                                                                                 \
    if (kLite) {                                                                       \
      GTEST_SKIP() << "needs " << verbs << ", which geopipe-lite (the hostile-input "  \
                   << "build, no LibTorch) does not have; the normal build runs this " \
                   << "case against geopipe";                                          \
    }                                                                                  \
  } while (0)

// A two-device job; `data` and `extra` (more sections) replace or add.
std::string job(const std::string& extra = "",
                const std::string& data = "data: {kind: synthetic, num_samples: 32}\n") {
  return "model: {preset: none, layers: 2, hidden: 16, heads: 2, seq_len: 8, vocab: 16}\n" + data +
         "training: {steps: 2, global_batch: 4, micro_batch: 2}\n"
         "topology:\n"
         "  sites: [{name: local, devices: 2, intra: {latency_ms: 1, bandwidth_gbps: 10}}]\n" +
         extra;
}

struct OptionCase {
  std::vector<std::string> args;
  std::string expect;
};

// Each command line exits 2 with `expect` in a short message.
void expectRefused(const TempDir& dir, const std::vector<OptionCase>& cases) {
  for (const OptionCase& c : cases) {
    const auto r = runBinary(dir, c.args);
    EXPECT_EQ(r.code, 2) << c.args[2] << " " << c.args[3] << "\n" << r.err;
    EXPECT_TRUE(contains(r.err, c.expect)) << r.err;
    // CLI11's own ranges printed DBL_MAX as 309 digits.
    EXPECT_FALSE(contains(r.err, "179769313486")) << r.err;
    EXPECT_LT(r.err.size(), 400u) << r.err;
  }
}

TEST(NumericOptions, NanInfinityAndOutOfRangeAreRefusedNamingTheFlag) {
  TempDir dir;
  writeFile(dir.file("job.yaml"), job());
  const std::string j = dir.file("job.yaml");
  expectRefused(
      dir,
      {
          {{"plan", j, "--budget", "nan"},
           "--budget: expected a finite number in [0, 86400], found 'nan'"},
          {{"plan", j, "--budget", "inf"},
           "--budget: expected a finite number in [0, 86400], found 'inf'"},
          {{"plan", j, "--budget", "-1"}, "--budget: expected a number in [0, 86400], found '-1'"},
          {{"plan", j, "--evaluations", "-5"},
           "--evaluations: expected an integer >= 0, found '-5'"},
          // 1e-400 reads as 0 ("no limit" for --budget): refused as an underflow.
          {{"plan", j, "--budget", "1e-400"},
           "--budget: expected a number in [0, 86400], found '1e-400', which underflows"},
          {{"bench", "scheduler", "--seconds", "nan"},
           "--seconds: expected a finite number in [0, 86400], found 'nan'"},
      });
}

TEST(NumericOptions, EngineVerbsRefuseThemNamingTheFlag) {
  SKIP_WITHOUT_ENGINE("train, launch, coordinator and bench e2e");
  TempDir dir;
  writeFile(dir.file("job.yaml"), job());
  const std::string j = dir.file("job.yaml");
  expectRefused(dir,
                {
                    {{"launch", j, "--heartbeat-timeout", "nan"},
                     "--heartbeat-timeout: expected a finite number in [1, 3600], found 'nan'"},
                    {{"coordinator", j, "--heartbeat-timeout", "1e9"},
                     "--heartbeat-timeout: expected a number in [1, 3600], found '1e9'"},
                    {{"train", j, "--steps", "0"}, "--steps: expected an integer >= 1, found '0'"},
                    {{"bench", "e2e", "--mbps", "5,nan"},
                     "--mbps: expected a finite number in (0, 1e6], found 'nan'"},
                });
  // A list written as the docs write it is one value per item (--help:
  // parsed and checked, nothing run).
  EXPECT_EQ(runBinary(dir, {"bench", "e2e", "--mbps", "5,20", "--help"}).code, 0);
}

struct NumbersCase {
  std::string extra, data, expect;
};

// Jobs whose numbers are physically impossible, and what names the field.
std::vector<NumbersCase> impossibleNumbers() {
  const std::string synthetic = "data: {kind: synthetic, num_samples: 32}\n";
  return {
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
}

TEST(ValidateCommand, ImpossibleNumbersAreRefusedNamingTheField) {
  TempDir dir;
  for (const NumbersCase& c : impossibleNumbers()) {
    writeFile(dir.file("bad.yaml"), job(c.extra, c.data));
    const auto r = runBinary(dir, {"validate", dir.file("bad.yaml")});
    EXPECT_EQ(r.code, 1) << r.out << r.err;
    EXPECT_TRUE(contains(r.out + r.err, c.expect)) << r.out << r.err;
  }
}

TEST(TrainCommand, ImpossibleNumbersAreRefusedAsValidateRefusesThem) {
  SKIP_WITHOUT_ENGINE("train");
  TempDir dir;
  for (const NumbersCase& c : impossibleNumbers()) {
    writeFile(dir.file("bad.yaml"), job(c.extra, c.data));
    const auto r = runBinary(dir, {"train", dir.file("bad.yaml")});
    EXPECT_EQ(r.code, 1) << r.out << r.err;
    EXPECT_TRUE(contains(r.err, c.expect)) << r.err;
  }
}

struct FileCase {
  std::string path, expect;
};

// Paths that are no file to read (a FIFO and a symbolic link to /dev/zero
// made in `dir`), and what each is said to be.
std::vector<FileCase> notFiles(const TempDir& dir) {
  const std::string fifo = dir.file("fifo"), link = dir.file("zero.yaml");
  EXPECT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_EQ(::symlink("/dev/zero", link.c_str()), 0);
  return {
      {"/dev/zero", "'/dev/zero': it is a device, not a regular file"},
      {dir.path.string(), "it is a directory, not a regular file"},
      {fifo, "it is a FIFO (named pipe), not a regular file"},
      {link, "it is a symbolic link to '/dev/zero', a device, not a regular file"},
      {dir.file("missing.yaml"), "it does not exist"},
  };
}

// A job path that is no file to read says what it is, and every command
// exits 4 for it (docs/cli.md: a file could not be read), validate included.
TEST(FileArguments, WhatIsThereInsteadOfAFileIsNamedWithExitCode4) {
  TempDir dir;
  for (const FileCase& c : notFiles(dir)) {
    for (const char* verb : {"validate", "plan"}) {
      const auto r = runBinary(dir, {verb, c.path});
      EXPECT_EQ(r.code, 4) << verb << " " << c.path << "\n" << r.err;
      EXPECT_TRUE(contains(r.err, c.expect)) << verb << "\n" << r.err;
    }
  }
  // A data file that is a device is named as one (it used to be "no such file").
  const std::string link = dir.file("zero.yaml");
  writeFile(dir.file("job.yaml"), job("", "data: {kind: text, path: " + link + "}\n"));
  const auto r = runBinary(dir, {"validate", dir.file("job.yaml")});
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_TRUE(contains(r.err, "data.path: '" + link +
                                  "' is a symbolic link to '/dev/zero', a device, not a regular "
                                  "file: name a text file"))
      << r.err;
}

TEST(FileArguments, TrainSaysTheSameWithExitCode4) {
  SKIP_WITHOUT_ENGINE("train");
  TempDir dir;
  for (const FileCase& c : notFiles(dir)) {
    const auto r = runBinary(dir, {"train", c.path});
    EXPECT_EQ(r.code, 4) << c.path << "\n" << r.err;
    EXPECT_TRUE(contains(r.err, c.expect)) << r.err;
  }
}

// README.md: `geopipe validate TOPOLOGY.yaml`.
TEST(ValidateCommand, AcceptsATopologyFileAlone) {
  TempDir dir;
  writeFile(dir.file("topo.yaml"),
            "name: two-sites\nsites:\n  - {name: a, devices: 2, intra: {latency_ms: 1, "
            "bandwidth_gbps: 10}}\n  - {name: b, devices: 1, gpu: T4}\n"
            "inter_site_default: {latency_ms: 40, bandwidth_gbps: 0.5}\n");
  auto r = runBinary(dir, {"validate", dir.file("topo.yaml")});
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_TRUE(contains(r.out, "topology 'two-sites' (" + dir.file("topo.yaml") +
                                  "): 3 devices in 2 sites (1x T4, 2x V100)"))
      << r.out;
  EXPECT_TRUE(contains(r.out, "slowest 0.5 Gbps (a -> b), longest 40 ms (a -> b)")) << r.out;
  EXPECT_FALSE(contains(r.out, "both ways:")) << "no duplex rate given\n" << r.out;
  EXPECT_TRUE(contains(r.out, "  OK")) << r.out;
  // Where links give a duplex rate, the slowest one (what exchanges get).
  writeFile(dir.file("duplex.yaml"),
            "sites:\n  - {name: a, devices: 1}\n  - {name: b, devices: 1}\n"
            "links:\n  - {from: a, to: b, latency_ms: 1, bandwidth_gbps: 0.02, "
            "duplex_bandwidth_gbps: 0.013}\n"
            "  - {from: b, to: a, latency_ms: 1, bandwidth_gbps: 0.02, "
            "duplex_bandwidth_gbps: 0.017}\n");
  r = runBinary(dir, {"validate", dir.file("duplex.yaml")});
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_TRUE(contains(r.out, "both ways:    slowest 0.013 Gbps (a -> b, duplex_bandwidth_gbps)"))
      << r.out;
  // Its problems are the topology parser's, with the topology's field paths.
  writeFile(dir.file("bad-topo.yaml"), "sites:\n  - {name: a, devices: 2}\n  - {name: b}\n");
  r = runBinary(dir, {"validate", dir.file("bad-topo.yaml"), dir.file("topo.yaml")});
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_TRUE(contains(r.err, "bad-topo.yaml:2:5: sites[0]: missing required key 'intra'"))
      << r.err;
  EXPECT_TRUE(contains(r.err, "sites[1]: missing required key 'devices'")) << r.err;
  EXPECT_TRUE(contains(r.out, "1 of 2 file(s) valid")) << r.out;
  // A job is still a job.
  writeFile(dir.file("job.yaml"), job());
  r = runBinary(dir, {"validate", dir.file("job.yaml")});
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
    const auto r = runBinary(dir, args);
    EXPECT_EQ(r.code, 1) << r.out << r.err;
    EXPECT_FALSE(fs::exists(out)) << r.out << r.err;
  }
  auto r = runBinary(dir, {"certs", out, "--host", "node\x1b[2J"});
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_TRUE(contains(r.err, "--host: 'node\\x1b[2J' is neither a host name")) << r.err;
  EXPECT_FALSE(fs::exists(out));
  // The same directory then works, and a second bad call keeps what is there.
  ASSERT_EQ(runBinary(dir, {"certs", out, "--host", "node1"}).code, 0);
  const std::string ca = readAll(out + "/ca.pem");
  r = runBinary(dir, {"certs", out, "--host", "node2", "--host", "-bad"});
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_FALSE(fs::exists(out + "/node2.pem"));
  EXPECT_EQ(readAll(out + "/ca.pem"), ca);
}

// Memory and the device limit: a 32 KB topology once took 4.3 GB to
// validate, and 65536 devices ended `plan` in bad_alloc (exit 70). Both are
// refused as spec errors (exit 1), within a 1.5 GB address space (under
// ASan: 1.5 GB resident and per allocation).
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
  // ASan reserves terabytes of address space, so `ulimit -v` would stop
  // any run at once: under ASan, its own limits on resident memory and on
  // one allocation, of the same 1.5 GB, stand in (tests/CMakeLists.txt).
#ifdef GEOPIPE_TEST_ASAN
  const char* asan = std::getenv("ASAN_OPTIONS");
  const std::string limit = "ASAN_OPTIONS=" +
                            quote(std::string(asan ? asan : "") +
                                  ":hard_rss_limit_mb=1465"
                                  ":max_allocation_size_mb=1465") +
                            " ";
#else
  const std::string limit = "ulimit -v 1500000; ";
#endif
  for (const Case& c : cases) {
    const std::string cmd = limit + quote(GEOPIPE_BINARY) + " " + c.verb + " " + quote(c.file) +
                            " >" + quote(dir.file("out")) + " 2>&1";
    const int status = std::system(("bash -c " + quote(cmd)).c_str());
    const std::string out = readAll(dir.file("out"));
    EXPECT_FALSE(sanitizerReport(out)) << out;
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << c.verb << "\n" << out;
    EXPECT_TRUE(contains(out, c.expect)) << out;
  }
}

// geopipe-lite: a verb that needs LibTorch is no command there (exit 2,
// saying where it is), never accepted and run as something else.
TEST(LiteBinary, EngineVerbsAreUnknownCommands) {
  if (!kLite) GTEST_SKIP() << "geopipe-lite only: geopipe has the engine verbs";
  TempDir dir;
  writeFile(dir.file("job.yaml"), job());
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"train", dir.file("job.yaml")},
        std::vector<std::string>{"launch", dir.file("job.yaml")},
        std::vector<std::string>{"coordinator", dir.file("job.yaml")},
        std::vector<std::string>{"worker", "--coordinator", "127.0.0.1:1"},
        std::vector<std::string>{"bench", "e2e", "--quick"}}) {
    const auto r = runBinary(dir, args);
    EXPECT_EQ(r.code, 2) << args[0] << "\n" << r.out << r.err;
    EXPECT_TRUE(contains(r.err, "error: unknown command '" + args[0])) << r.err;
    EXPECT_TRUE(contains(r.err, "are in geopipe")) << r.err;
    EXPECT_EQ(r.out, "");
  }
}

// geopipe-lite cannot load a model plugin (that needs LibTorch): validate and
// plan refuse the job saying so, rather than pass it unchecked. A job
// without a plugin is checked and planned as in geopipe.
TEST(LiteBinary, AJobWithAPluginIsRefusedNotPassed) {
  if (!kLite) GTEST_SKIP() << "geopipe-lite only: geopipe loads the plugin (model_cli_tests)";
  TempDir dir;
  writeFile(dir.file("libmine.so"), "not a shared library");
  const std::string custom = job().replace(
      0, job().find('\n'),
      "model: {kind: custom, name: mine, layers: 2, hidden: 16, heads: 2, seq_len: 8, vocab: 16}");
  writeFile(dir.file("plain.yaml"), custom);
  writeFile(dir.file("job.yaml"), custom.substr(0, custom.find("}\n")) + ", plugin: " +
                                      dir.file("libmine.so") + custom.substr(custom.find("}\n")));
  const std::string expect =
      "model.plugin: geopipe-lite does not support model plugins: loading '" +
      dir.file("libmine.so") + "' and building its model needs LibTorch";
  for (const char* verb : {"validate", "plan"}) {
    const auto r = runBinary(dir, {verb, dir.file("job.yaml")});
    EXPECT_EQ(r.code, 1) << verb << "\n" << r.out << r.err;
    EXPECT_TRUE(contains(r.err, expect)) << verb << "\n" << r.err;
    EXPECT_TRUE(contains(r.err, "with the full geopipe binary")) << r.err;
    EXPECT_FALSE(contains(r.out, "OK")) << r.out;
  }
  // --plugin on the command line is the same field.
  auto r = runBinary(dir, {"validate", dir.file("plain.yaml"), "--plugin", dir.file("libmine.so")});
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_TRUE(contains(r.err, expect)) << r.err;
  r = runBinary(dir, {"validate", dir.file("plain.yaml")});
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_TRUE(contains(r.out, "  OK")) << r.out;
  r = runBinary(dir, {"plan", dir.file("plain.yaml"), "--algorithm", "in-order"});
  EXPECT_EQ(r.code, 0) << r.out << r.err;
}

}  // namespace
