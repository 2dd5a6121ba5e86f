// The common module: edit distance and "did you mean", joining, log levels,
// and the values of mix64 / streamKey, which samplers, data generators and the
// quantizer's stochastic rounding (CPU and CUDA) all depend on.
#include <gtest/gtest.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "geopipe/error.h"
#include "src/common/blas_check.h"
#include "src/common/file_kind.h"
#include "src/common/hash.h"
#include "src/common/logging.h"
#include "src/common/strings.h"
#include "src/common/text.h"

namespace geopipe::common {
namespace {

TEST(EditDistance, CountsInsertionsDeletionsSubstitutionsAndTranspositions) {
  EXPECT_EQ(editDistance("", ""), 0);
  EXPECT_EQ(editDistance("", "abc"), 3);
  EXPECT_EQ(editDistance("abc", ""), 3);
  EXPECT_EQ(editDistance("gpipe", "gpipe"), 0);
  EXPECT_EQ(editDistance("gpipe", "gpip"), 1);    // deletion
  EXPECT_EQ(editDistance("gpipe", "gpipes"), 1);  // insertion
  EXPECT_EQ(editDistance("acsgd", "acsgb"), 1);   // substitution
  EXPECT_EQ(editDistance("1fb1", "1f1b"), 1);     // adjacent transposition
  EXPECT_EQ(editDistance("ab", "ba"), 1);
  EXPECT_EQ(editDistance("kitten", "sitting"), 3);
  // Optimal string alignment, not full Damerau: "ca" -> "abc" is 3, not 2.
  EXPECT_EQ(editDistance("ca", "abc"), 3);
  EXPECT_EQ(editDistance("abc", "ca"), 3);
}

TEST(ClosestMatch, SuggestsOnlyPlausibleTypos) {
  const std::vector<std::string> schedules = {"gpipe", "1f1b"};
  EXPECT_EQ(closestMatch("1fb1", schedules), "1f1b");
  EXPECT_EQ(closestMatch("gpip", schedules), "gpipe");
  EXPECT_EQ(closestMatch("pipedream", schedules), "");
  // The limit is max(1, |word| / 3): one edit for short words...
  const std::vector<std::string> methods = {"none", "fp16", "acsgd", "quantize"};
  EXPECT_EQ(closestMatch("fp61", methods), "fp16");
  EXPECT_EQ(closestMatch("fp", methods), "");  // two deletions from fp16
  // ...two for words of 6 to 8 letters, three from 9.
  EXPECT_EQ(closestMatch("quantiez", methods), "quantize");
  EXPECT_EQ(closestMatch("qantiez", methods), "quantize");
  EXPECT_EQ(closestMatch("qantez", methods), "");
  // Ties go to the first candidate; no candidates, no suggestion.
  EXPECT_EQ(closestMatch("ab", {"aa", "bb"}), "aa");
  EXPECT_EQ(closestMatch("x", {}), "");
}

TEST(Join, ListsWithCommasAndOr) {
  EXPECT_EQ(join({}, ", "), "");
  EXPECT_EQ(join({"a"}, ", "), "a");
  EXPECT_EQ(join({"a", "b", "c"}, " | "), "a | b | c");
  EXPECT_EQ(joinOr({}), "");
  EXPECT_EQ(joinOr({"none"}), "none");
  EXPECT_EQ(joinOr({"none", "fp16"}), "none or fp16");
  EXPECT_EQ(joinOr({"none", "fp16", "quantize"}), "none, fp16 or quantize");
}

TEST(LogLevel, ParsesTheDocumentedNamesAndRefusesOthers) {
  const auto before = spdlog::get_level();
  const std::vector<std::pair<std::string, spdlog::level::level_enum>> levels = {
      {"trace", spdlog::level::trace}, {"debug", spdlog::level::debug},
      {"info", spdlog::level::info},   {"warn", spdlog::level::warn},
      {"error", spdlog::level::err},   {"off", spdlog::level::off}};
  for (const auto& [name, level] : levels) {
    setLogLevel(name);
    EXPECT_EQ(spdlog::get_level(), level) << name;
  }
  for (const std::string bad : {"verbose", "", "INFO", "of"}) {
    setLogLevel("debug");
    try {
      setLogLevel(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const ConfigError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("unknown log level '" + bad + "'"), std::string::npos) << what;
      EXPECT_NE(what.find("trace, debug, info, warn, error or off"), std::string::npos) << what;
    }
    EXPECT_EQ(spdlog::get_level(), spdlog::level::debug) << "a refused name changes nothing";
  }
  spdlog::set_level(before);
}

TEST(LogLevel, TheCommandLineWinsOverTheJob) {
  const auto before = spdlog::get_level();
  ASSERT_EQ(pinnedLogLevel(), "") << "nothing pinned yet in this process";
  applyJobLogLevel("error");
  EXPECT_EQ(spdlog::get_level(), spdlog::level::err) << "nothing pinned: the job's level applies";
  setLogLevel("warn");
  pinLogLevel();
  EXPECT_EQ(pinnedLogLevel(), "warn");
  applyJobLogLevel("trace");
  EXPECT_EQ(spdlog::get_level(), spdlog::level::warn) << "the pinned level stays";
  spdlog::set_level(before);
}

// splitmix64's published outputs for seed 0 (its state advances by the golden
// gamma, which mix64 adds first): mix64(k * gamma) is the (k+1)-th output.
TEST(Mix64, IsSplitmix64) {
  constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ull;
  EXPECT_EQ(mix64(0), 0xE220A8397B1DCDAFull);
  EXPECT_EQ(mix64(kGamma), 0x6E789E6AA1B965F4ull);
  EXPECT_EQ(mix64(2 * kGamma), 0x06C45D188009454Full);
  EXPECT_EQ(mix64(1), 0x910A2DEC89025CC1ull);
  EXPECT_EQ(mix64(~uint64_t{0}), 0xE4D971771B652C20ull);
}

// The stochastic-rounding keys are pinned: changing them changes every
// stochastically quantized message, so a resumed run would no longer repeat
// the uninterrupted one (values from an independent Python splitmix64).
TEST(StreamKey, ValuesArePinned) {
  EXPECT_EQ(streamKey(0, 0, 0), 0xFF8AF325u);
  EXPECT_EQ(streamKey(1, 0, 0), 0x52F04317u);
  EXPECT_EQ(streamKey(0, 1, 0), 0x722FC711u);
  EXPECT_EQ(streamKey(0, 0, 1), 0x707C401Du);
  EXPECT_EQ(streamKey(42, 7, 3), 0xFEFBF216u);
}

TEST(Utf8Problem, NamesTheFirstBadByteAndItsOffset) {
  EXPECT_EQ(utf8Problem(""), "");
  EXPECT_EQ(utf8Problem("plain ascii"), "");
  EXPECT_EQ(utf8Problem("\xc3\xa9t\xc3\xa9 \xe6\xb5\x8b \xf0\x9f\x9a\x80"), "");  // été 测 🚀
  EXPECT_EQ(utf8Problem(std::string("a\0b", 3)), "");  // NUL is UTF-8; fields refuse it apart
  EXPECT_EQ(utf8Problem("ab\xff"), "byte 0xff at offset 2 is not valid UTF-8");
  EXPECT_EQ(utf8Problem("x\xc0\xaf"), "byte 0xc0 at offset 1 is not valid UTF-8");  // overlong '/'
  EXPECT_EQ(utf8Problem("\xe0\x80\xaf"), "byte 0xe0 at offset 0 is not valid UTF-8");  // overlong
  EXPECT_EQ(utf8Problem("\xed\xa0\x80"), "byte 0xed at offset 0 is not valid UTF-8");  // surrogate
  EXPECT_EQ(utf8Problem("\xf4\x90\x80\x80"),
            "byte 0xf4 at offset 0 is not valid UTF-8");                         // > U+10FFFF
  EXPECT_EQ(utf8Problem("ok\xc3"), "byte 0xc3 at offset 2 is not valid UTF-8");  // truncated
  EXPECT_EQ(utf8Problem("\x80"), "byte 0x80 at offset 0 is not valid UTF-8");  // lone continuation
}

TEST(Printable, EscapesControlCharactersAndBadBytesKeepsUtf8) {
  EXPECT_EQ(printable("gpu-0 \xc3\xa9"), "gpu-0 \xc3\xa9");
  EXPECT_EQ(printable("a\nb\tc\rd"), "a\\nb\\tc\\rd");
  EXPECT_EQ(printable("\x1b[2J"), "\\x1b[2J");
  EXPECT_EQ(printable(std::string("a\0b", 3)), "a\\x00b");
  EXPECT_EQ(printable("\x7f"), "\\x7f");
  EXPECT_EQ(printable("\xc2\x9b"
                      "31m"),
            "\\u009b31m");  // C1 CSI
  EXPECT_EQ(printable("ab\xff"), "ab\\xff");
  EXPECT_EQ(printable("\xc3"), "\\xc3");
  // Idempotent: its output has nothing left to escape.
  EXPECT_EQ(printable(printable("\x1b\n\xff")), printable("\x1b\n\xff"));
}

TEST(RegularFileProblem, SaysWhatThePathIsInstead) {
  char tmpl[] = "/tmp/geopipe-file-kind-XXXXXX";
  const std::string dir = ::mkdtemp(tmpl);
  const std::string file = dir + "/job.yaml", fifo = dir + "/fifo", link = dir + "/zero",
                    dangling = dir + "/dangling";
  {
    FILE* f = std::fopen(file.c_str(), "w");
    std::fclose(f);
  }
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  ASSERT_EQ(::symlink("/dev/zero", link.c_str()), 0);
  ASSERT_EQ(::symlink("/nonexistent-geopipe", dangling.c_str()), 0);
  EXPECT_EQ(regularFileProblem(file), "");
  EXPECT_EQ(regularFileProblem(dir + "/missing"), "does not exist");
  EXPECT_EQ(regularFileProblem(file + "/x"),
            "does not exist (a part of the path is not a directory)");
  EXPECT_EQ(regularFileProblem(dir), "is a directory, not a regular file");
  EXPECT_EQ(regularFileProblem("/dev/zero"), "is a device, not a regular file");
  EXPECT_EQ(regularFileProblem(fifo), "is a FIFO (named pipe), not a regular file");
  EXPECT_EQ(regularFileProblem(link),
            "is a symbolic link to '/dev/zero', a device, not a regular file");
  EXPECT_EQ(regularFileProblem(dangling),
            "is a symbolic link to '/nonexistent-geopipe', which does not exist");
  for (const auto& p : {file, fifo, link, dangling}) ::unlink(p.c_str());
  ::rmdir(dir.c_str());
}

}  // namespace
}  // namespace geopipe::common

// A worker's --threads: 0 shares the host's cores among the tasklets placed
// on it; an explicit count that oversubscribes them is warned about, naming
// the numbers and --threads 0 (issue 18; the worker logs this warning).
TEST(WorkerThreads, OversubscriptionIsWarnedNamingTheFix) {
  using geopipe::common::workerThreads;
  auto w = workerThreads(2, 2, 2);
  EXPECT_EQ(w.threads, 2);
  EXPECT_NE(
      w.warning.find("2 workers on this host with --threads 2 each oversubscribe its 2 cores"),
      std::string::npos)
      << w.warning;
  EXPECT_NE(w.warning.find("use --threads 0 to share them"), std::string::npos) << w.warning;
  EXPECT_NE(workerThreads(3, 1, 2).warning, "");        // one worker, more threads than cores
  EXPECT_NE(workerThreads(1 << 30, 4, 8).warning, "");  // no int overflow hides it
  // Within the cores, or --threads 0: no warning.
  EXPECT_EQ(workerThreads(1, 2, 2).warning, "");
  // More workers than cores with one thread each (what `launch` passes
  // then): --threads 0 would give the same, so nothing to warn about.
  EXPECT_EQ(workerThreads(1, 4, 2).warning, "");
  EXPECT_EQ(workerThreads(4, 2, 8).warning, "");
  w = workerThreads(0, 2, 8);
  EXPECT_EQ(w.threads, 4);
  EXPECT_EQ(w.warning, "");
  w = workerThreads(0, 16, 8);  // more tasklets than cores: one thread each
  EXPECT_EQ(w.threads, 1);
  EXPECT_EQ(w.warning, "");
  EXPECT_EQ(workerThreads(0, 0, 0).threads, 1);  // unknown counts read as 1
}
