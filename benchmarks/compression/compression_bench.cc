// Compression benchmarks (single core): each verifies its result, then times,
// then the summary prints GB/s of fp32 input and the ratio to memcpy of the
// same bytes measured in the same run (min / median / max over repetitions).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "compression/bit_pack.h"
#include "compression/delta_compressor.h"
#include "compression/gradient_compressor.h"
#include "compression/half.h"
#include "compression/quantizer.h"

using namespace geopipe::compression;

namespace {

// GPT-like micro-batch: 4 samples x 512 tokens x 1024 hidden, fp32 (8 MiB).
constexpr int64_t kB = 4, kS = 512, kH = 1024;
constexpr size_t kN = kB * kS * kH;

const std::vector<float>& activations() {
  static const std::vector<float> v = [] {
    std::mt19937 rng(1);
    std::normal_distribution<float> d(0, 1);
    std::vector<float> x(kN);
    for (auto& e : x) e = d(rng);
    return x;
  }();
  return v;
}

void verify(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "verification failed: %s\n", what);
    std::abort();
  }
}

QuantizerOptions quantizerFor(int bits, int gran) {
  QuantizerOptions q;
  q.bits = bits;
  q.granularity = static_cast<Granularity>(gran);
  q.group_size = 128;
  return q;
}

void BM_Memcpy(benchmark::State& st) {
  const auto& x = activations();
  std::vector<float> y(kN);
  for (auto _ : st) {
    std::memcpy(y.data(), x.data(), 4 * kN);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  verify(y == x, "memcpy");
  st.counters["in_bytes"] = 4.0 * kN;
}

void BM_QuantizePack(benchmark::State& st) {
  const auto q = quantizerFor(static_cast<int>(st.range(0)), static_cast<int>(st.range(1)));
  const auto& x = activations();
  std::vector<float> scales(scaleCount(q, kN, kH));
  std::vector<uint8_t> packed(packedBytes(kN, q.bits));
  // Verify: round trip within the half-step bound.
  computeScales(q, x.data(), kN, kH, scales.data());
  quantizePacked(q, x.data(), kN, kH, scales.data(), 0, packed.data());
  std::vector<float> y(kN);
  dequantizePacked(q, packed.data(), packed.size(), kN, kH, scales.data(), y.data());
  float smax = *std::max_element(scales.begin(), scales.end());
  for (size_t i = 0; i < kN; i += 997) {
    verify(std::fabs(y[i] - x[i]) <= smax / ((1 << q.bits) - 1) * 1.001f, "quantize bound");
  }
  for (auto _ : st) {
    computeScales(q, x.data(), kN, kH, scales.data());
    quantizePacked(q, x.data(), kN, kH, scales.data(), 0, packed.data());
    benchmark::DoNotOptimize(packed.data());
    benchmark::ClobberMemory();
  }
  st.counters["in_bytes"] = 4.0 * kN;
  st.counters["ratio_vs_fp32"] = 4.0 * kN / (packed.size() + 4.0 * scales.size());
}

void BM_UnpackDequant(benchmark::State& st) {
  const auto q = quantizerFor(static_cast<int>(st.range(0)), static_cast<int>(st.range(1)));
  const auto& x = activations();
  auto qt = quantize(q, x.data(), kN, kH);
  std::vector<float> y(kN);
  dequantize(q, qt, y.data());
  verify(std::fabs(y[12345] - x[12345]) <= 2.0f * 8 / ((1 << q.bits) - 1) + 1e-3f || q.bits < 3,
         "dequantize");
  for (auto _ : st) {
    dequantizePacked(q, qt.packed.data(), qt.packed.size(), kN, kH, qt.scales.data(), y.data());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  st.counters["in_bytes"] = 4.0 * kN;
}

// Raw quantize cost of the same step: per-sample per-channel scales + pack,
// no buffers (the reference for the buffer-store overhead target).
void BM_AcsgdRawQuantize(benchmark::State& st) {
  const auto q = quantizerFor(static_cast<int>(st.range(0)), 1);
  const auto& x = activations();
  const size_t per = kS * kH;
  std::vector<float> scales(kH);
  std::vector<uint8_t> packed(packedBytes(per, q.bits));
  for (auto _ : st) {
    for (int64_t s = 0; s < kB; ++s) {
      computeScales(q, x.data() + s * per, per, kH, scales.data());
      quantizePacked(q, x.data() + s * per, per, kH, scales.data(), 0, packed.data());
    }
    benchmark::DoNotOptimize(packed.data());
  }
  st.counters["in_bytes"] = 4.0 * kN;
}

// Full AC-SGD sender step in steady state: read m (fp16), delta, quantise,
// pack, dequantise the wire bytes, update m, store fp16.
void BM_AcsgdStep(benchmark::State& st) {
  DeltaCompressorOptions opt;
  opt.quantizer = quantizerFor(static_cast<int>(st.range(0)), 1);
  DeltaSender tx(opt, makeBufferStore({}));
  DeltaReceiver rx(opt, makeBufferStore({}));
  std::vector<int64_t> ids = {0, 1, 2, 3};
  std::vector<float> a = activations(), out;
  const std::vector<int64_t> shape = {kB, kS, kH};
  rx.decode(ids.data(), 4, tx.encode(ids.data(), a.data(), shape), out);  // first visit
  for (size_t i = 0; i < kN; ++i) a[i] += 0.01f * std::sin(float(i));
  auto msg = tx.encode(ids.data(), a.data(), shape);
  rx.decode(ids.data(), 4, msg, out);
  std::vector<float> mt;
  readBuffer(opt, tx.store(), 2, {kS, kH}, mt);
  verify(std::memcmp(mt.data(), out.data() + 2 * kS * kH, 4 * mt.size()) == 0, "acsgd invariant");
  size_t wire = msg.wireBytes();
  for (auto _ : st) {
    auto m = tx.encode(ids.data(), a.data(), shape);
    benchmark::DoNotOptimize(m.payload.data());
  }
  st.counters["in_bytes"] = 4.0 * kN;
  st.counters["ratio_vs_fp32"] = 4.0 * kN / wire;
}

void BM_AcsgdReceive(benchmark::State& st) {
  DeltaCompressorOptions opt;
  opt.quantizer = quantizerFor(static_cast<int>(st.range(0)), 1);
  DeltaSender tx(opt, makeBufferStore({}));
  DeltaReceiver rx(opt, makeBufferStore({}));
  std::vector<int64_t> ids = {0, 1, 2, 3};
  std::vector<float> a = activations(), out;
  const std::vector<int64_t> shape = {kB, kS, kH};
  rx.decode(ids.data(), 4, tx.encode(ids.data(), a.data(), shape), out);
  auto msg = tx.encode(ids.data(), a.data(), shape);
  for (auto _ : st) {
    // Same delta applied repeatedly: cost is what matters here.
    rx.decode(ids.data(), 4, msg, out);
    benchmark::DoNotOptimize(out.data());
  }
  st.counters["in_bytes"] = 4.0 * kN;
}

const std::vector<float>& gradient() {
  static const std::vector<float> g = [] {
    std::mt19937 rng(2);
    std::normal_distribution<float> d(0, 1);
    std::vector<float> v(4096 * 4096);
    for (auto& e : v) e = d(rng);
    return v;
  }();
  return g;
}

void BM_TopK(benchmark::State& st) {
  const auto& g = gradient();
  const double ratio = st.range(0) / 1000.0;
  CompressedMessage m;
  for (auto _ : st) {
    m = encodeTopK(g.data(), {4096, 4096}, ratio);
    benchmark::DoNotOptimize(m.payload.data());
  }
  auto d = decodeDense(m);
  size_t nz = 0;
  for (float v : d) nz += v != 0;
  verify(nz == static_cast<size_t>(std::ceil(ratio * g.size())), "topk count");
  st.counters["in_bytes"] = 4.0 * g.size();
  st.counters["ratio_vs_fp32"] = 4.0 * g.size() / m.wireBytes();
}

void BM_PowerSgd(benchmark::State& st) {
  const auto& g = gradient();
  GradientCompressorOptions o;
  o.rank = static_cast<int>(st.range(0));
  PowerSgdCompressor c(o);
  size_t wire = 0;
  for (auto _ : st) {
    auto p = c.computeP(g.data(), {4096, 4096});
    auto q = c.computeQ({p});
    auto out = c.finish({q});
    wire = p.wireBytes() + q.wireBytes();
    benchmark::DoNotOptimize(out.data());
  }
  verify(wire == static_cast<size_t>(2 * (4096 * o.rank * 4 + 64)), "powersgd size");
  st.counters["in_bytes"] = 4.0 * g.size();
  st.counters["ratio_vs_fp32"] = 4.0 * g.size() / wire;
}

// Collects per-run timings for the summary table.
class SummaryReporter : public benchmark::ConsoleReporter {
 public:
  struct Stat {
    std::vector<double> gbps;
    double ratio = 0;
  };
  std::map<std::string, Stat> stats;
  std::vector<std::string> order;
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const auto& r : runs) {
      if (r.run_type != Run::RT_Iteration) continue;
      const std::string name = r.run_name.function_name + (r.run_name.args.empty() ? "" : "/" + r.run_name.args);
      auto it = r.counters.find("in_bytes");
      if (it == r.counters.end()) continue;
      const double sec = r.GetAdjustedRealTime() / benchmark::GetTimeUnitMultiplier(r.time_unit);
      if (!stats.count(name)) order.push_back(name);
      auto& s = stats[name];
      s.gbps.push_back(it->second.value / sec / 1e9);
      auto rt = r.counters.find("ratio_vs_fp32");
      if (rt != r.counters.end()) s.ratio = rt->second.value;
    }
  }
};

}  // namespace

BENCHMARK(BM_Memcpy)->Unit(benchmark::kMicrosecond);
// args: bits, granularity (0 tensor, 1 channel, 2 group of 128)
BENCHMARK(BM_QuantizePack)->ArgsProduct({{2, 3, 4, 8}, {0, 1, 2}})->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_UnpackDequant)->ArgsProduct({{2, 3, 4, 8}, {0, 1, 2}})->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_AcsgdRawQuantize)->Arg(2)->Arg(4)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_AcsgdStep)->Arg(2)->Arg(4)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_AcsgdReceive)->Arg(4)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_TopK)->Arg(10)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PowerSgd)->Arg(4)->Unit(benchmark::kMillisecond);

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  SummaryReporter rep;
  benchmark::RunSpecifiedBenchmarks(&rep);
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  const auto mc = rep.stats.find("BM_Memcpy");
  const double memcpy_gbps = mc == rep.stats.end() ? 0 : median(mc->second.gbps);
  std::printf("\n%-28s %9s %9s %9s %10s %9s\n", "benchmark", "min GB/s", "med GB/s", "max GB/s",
              "vs memcpy", "ratio");
  for (const auto& name : rep.order) {
    const auto& s = rep.stats[name];
    const double lo = *std::min_element(s.gbps.begin(), s.gbps.end());
    const double hi = *std::max_element(s.gbps.begin(), s.gbps.end());
    const double med = median(s.gbps);
    std::printf("%-28s %9.2f %9.2f %9.2f %9.0f%% %8.1fx\n", name.c_str(), lo, med, hi,
                memcpy_gbps > 0 ? 100.0 * med / memcpy_gbps : 0.0, s.ratio);
  }
  const auto raw = rep.stats.find("BM_AcsgdRawQuantize/4");
  const auto step = rep.stats.find("BM_AcsgdStep/4");
  if (raw != rep.stats.end() && step != rep.stats.end()) {
    const double t_raw = 1 / median(raw->second.gbps), t_step = 1 / median(step->second.gbps);
    std::printf("AC-SGD 4-bit: buffer overhead = %.2fx the raw quantize cost (target <= 2x)\n",
                (t_step - t_raw) / t_raw);
  }
  benchmark::Shutdown();
  return 0;
}
