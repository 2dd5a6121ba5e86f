// Tokenizer throughput on one core: MB/s of English text (Debian's fortunes,
// ~2.5 MB, as data.kind fortunes reads them) through GPT-2's byte-level BPE,
// cold and warm word cache, decode, and the test SentencePiece model; each
// against GPT-2's pre-tokenizer regex alone (PCRE2 JIT), the floor every
// GPT-2 tokenizer pays, measured in the same run. Each benchmark checks its
// round trip before it times.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "src/data/dataset.h"
#include "src/tokenizer/gpt2_pretokenizer.h"
#include "src/tokenizer/tokenizer.h"

using namespace geopipe;

namespace {

// Run from the source tree (the tokenizer folders are relative to it).
constexpr const char* kGpt2Dir = "assets/tokenizers/gpt2";
constexpr const char* kSpmDir = "tests/tokenizer/fixtures/spm";

const std::string& corpus() {
  static const std::string text = data::readFortunes();
  return text;
}

void verify(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "verification failed: %s\n", what);
    std::abort();
  }
}

void setBytes(benchmark::State& st, size_t bytes) {
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations() * bytes));
  st.counters["in_bytes"] = static_cast<double>(bytes);
}

void BM_Gpt2Regex(benchmark::State& st) {
  const std::string& text = corpus();
  size_t covered = 0;
  tokenizer::Gpt2PreTokenizer::forEachPiece(text, [&](std::string_view p) { covered += p.size(); });
  verify(covered == text.size(), "pieces tile the text");
  for (auto _ : st) {
    size_t pieces = 0;
    tokenizer::Gpt2PreTokenizer::forEachPiece(text, [&](std::string_view) { ++pieces; });
    benchmark::DoNotOptimize(pieces);
  }
  setBytes(st, text.size());
}

void BM_Gpt2EncodeWarm(benchmark::State& st) {
  const std::string& text = corpus();
  const auto t = tokenizer::loadTokenizer(kGpt2Dir);
  verify(t->decode(t->encode(text)) == text, "gpt2 round trip");  // also warms the cache
  for (auto _ : st) benchmark::DoNotOptimize(t->encode(text));
  setBytes(st, text.size());
}

void BM_Gpt2EncodeCold(benchmark::State& st) {
  // A new tokenizer per iteration (loading it is not timed): every word is
  // merged once, the first pass over a corpus.
  const std::string& text = corpus();
  for (auto _ : st) {
    st.PauseTiming();
    auto t = tokenizer::loadTokenizer(kGpt2Dir);
    st.ResumeTiming();
    benchmark::DoNotOptimize(t->encode(text));
    st.PauseTiming();
    t.reset();
    st.ResumeTiming();
  }
  setBytes(st, text.size());
}

void BM_Gpt2Decode(benchmark::State& st) {
  const std::string& text = corpus();
  const auto t = tokenizer::loadTokenizer(kGpt2Dir);
  const auto ids = t->encode(text);
  verify(t->decode(ids) == text, "gpt2 decode");
  for (auto _ : st) benchmark::DoNotOptimize(t->decode(ids));
  setBytes(st, text.size());  // MB/s of text produced
}

void BM_SentencePieceEncode(benchmark::State& st) {
  // The 1000-piece test model (tests/tokenizer): the library's speed, not
  // that of a 32000-piece Llama model.
  const std::string& text = corpus();
  const auto t = tokenizer::loadTokenizer(kSpmDir);
  verify(t->decode(t->encode(text)) == text, "sentencepiece round trip");
  for (auto _ : st) benchmark::DoNotOptimize(t->encode(text));
  setBytes(st, text.size());
}

// Collects per-run MB/s for the summary table.
class SummaryReporter : public benchmark::ConsoleReporter {
 public:
  std::map<std::string, std::vector<double>> mbps;
  std::vector<std::string> order;
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const auto& r : runs) {
      if (r.run_type != Run::RT_Iteration) continue;
      auto it = r.counters.find("in_bytes");
      if (it == r.counters.end()) continue;
      const std::string name = r.run_name.function_name;
      const double sec = r.GetAdjustedRealTime() / benchmark::GetTimeUnitMultiplier(r.time_unit);
      if (!mbps.count(name)) order.push_back(name);
      mbps[name].push_back(it->second.value / sec / 1e6);
    }
  }
};

}  // namespace

BENCHMARK(BM_Gpt2Regex)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Gpt2EncodeWarm)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Gpt2EncodeCold)->Unit(benchmark::kMillisecond)->Iterations(2);
BENCHMARK(BM_Gpt2Decode)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_SentencePieceEncode)->Unit(benchmark::kMillisecond);

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  std::printf("text: Debian fortunes, %.2f MB\n", corpus().size() / 1e6);
  SummaryReporter rep;
  benchmark::RunSpecifiedBenchmarks(&rep);
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  const auto regex = rep.mbps.find("BM_Gpt2Regex");
  const double regex_mbps = regex == rep.mbps.end() ? 0 : median(regex->second);
  std::printf("\n%-24s %9s %9s %9s %12s\n", "benchmark", "min MB/s", "med MB/s", "max MB/s",
              "vs regex");
  for (const auto& name : rep.order) {
    const auto& v = rep.mbps[name];
    const double med = median(v);
    std::printf("%-24s %9.1f %9.1f %9.1f %11.0f%%\n", name.c_str(),
                *std::min_element(v.begin(), v.end()), med, *std::max_element(v.begin(), v.end()),
                regex_mbps > 0 ? 100.0 * med / regex_mbps : 0.0);
  }
  std::printf("target: GPT-2 encode >= 10 MB/s of English text on one core\n");
  benchmark::Shutdown();
  return 0;
}
