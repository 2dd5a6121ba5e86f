// `geopipe bench model`: single-process training tokens/s of a gpt2 model
// against PyTorch eager (Debian's python3-torch) on the same shape, threads
// and batch, measured in one run, in fp32 and bf16.
#include <spdlog/spdlog.h>

#include <cstdio>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <thread>

#include "geopipe/error.h"
#include "geopipe/model.h"
#include "src/cli/bench_common.h"
#include "src/cli/model_commands.h"
#include "src/common/blas_check.h"
#include "src/runtime/precision.h"
#include "src/runtime/tasklet.h"

namespace geopipe::cli {

void addModelBenchOptions(CLI::App& bench, ModelBenchArgs& a) {
  auto* m = bench.add_subcommand(
      "model",
      "Training tokens/s of a gpt2 model in one process vs PyTorch eager on the same "
      "shape, threads and batch (fp32 and bf16), in one run");
  m->add_option("--layers", a.layers)->capture_default_str();
  m->add_option("--hidden", a.hidden)->capture_default_str();
  m->add_option("--heads", a.heads)->capture_default_str();
  m->add_option("--vocab", a.vocab)->capture_default_str();
  m->add_option("--seq-len", a.seq_len)->capture_default_str();
  m->add_option("--batch", a.batch, "samples per step")->capture_default_str();
  m->add_option("--steps", a.steps, "timed steps per run (after 2 warm-up steps)")
      ->capture_default_str();
  m->add_option("--threads", a.threads, "intra-op threads of both (0: the cores)")
      ->capture_default_str();
  m->add_option("--python", a.python, "interpreter with torch for the reference")
      ->capture_default_str();
  m->add_option("--dtypes", a.dtypes, "compute dtypes to compare")->capture_default_str();
}

namespace {

constexpr int kWarmup = 2;

// geopipe's side: the whole model as one slice, AdamW, the families' loss,
// steps on one random batch (as the reference does).
std::vector<double> geopipeSteps(const ModelBenchArgs& a, const std::string& dtype) {
  ModelSpec spec;
  spec.kind = "gpt2";
  spec.preset = "none";
  spec.layers = a.layers;
  spec.hidden = a.hidden;
  spec.heads = a.heads;
  spec.vocab = a.vocab;
  spec.seq_len = a.seq_len;
  spec.dtype = dtype;
  const ModelDef m = makeModel(spec);
  auto slice = buildSlice(m, 0, m.num_layers, 0);
  OptimizerSpec os;
  os.lr = 1e-4;
  auto optimizer = runtime::makeOptimizer(os, uniqueParameters(*slice));
  torch::manual_seed(0);
  const torch::Tensor ids = torch::randint(0, a.vocab, {a.batch, a.seq_len + 1}, torch::kLong);
  const torch::Tensor in = ids.slice(1, 0, a.seq_len), target = ids.slice(1, 1, a.seq_len + 1);
  std::vector<double> times;
  for (int step = 0; step < kWarmup + a.steps; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    optimizer->zero_grad();
    torch::Tensor out;
    {
      runtime::AutocastScope autocast(dtype, torch::kCPU);
      out = slice->forward(in);
    }
    m.loss(out, target).backward();
    optimizer->step();
    if (step >= kWarmup) {
      times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  return times;
}

std::vector<double> eagerSteps(const ModelBenchArgs& a, const std::string& dtype, int threads) {
  const std::string script = "benchmarks/model/torch_eager_gpt2.py";
  const std::string cmd =
      "OPENBLAS_NUM_THREADS=" + std::to_string(threads) + " " + a.python + " " + script +
      " --layers " + std::to_string(a.layers) + " --hidden " + std::to_string(a.hidden) +
      " --heads " + std::to_string(a.heads) + " --vocab " + std::to_string(a.vocab) +
      " --seq-len " + std::to_string(a.seq_len) + " --batch " + std::to_string(a.batch) +
      " --steps " + std::to_string(a.steps) + " --warmup " + std::to_string(kWarmup) +
      " --threads " + std::to_string(threads) + " --dtype " + dtype + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  GEOPIPE_CHECK(p != nullptr, IoError, "cannot run ", cmd);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int rc = pclose(p);
  GEOPIPE_CHECK(rc == 0, IoError, "the PyTorch eager reference failed (", cmd, "): ", out,
                "; it needs Debian's python3-torch (scripts/install-deps) and runs from the "
                "source root");
  const auto j = nlohmann::json::parse(out.substr(out.rfind('{')));
  return j.at("seconds").get<std::vector<double>>();
}

}  // namespace

int runModelBench(const ModelBenchArgs& a, std::ostream& out) {
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int threads = a.threads > 0 ? a.threads : cores;
  torch::set_num_threads(threads);
  common::setBlasThreads(threads);
  const double tokens = double(a.batch) * a.seq_len;
  out << "bench model: gpt2 " << a.layers << " layers x " << a.hidden << " hidden, " << a.heads
      << " heads, vocab " << a.vocab << ", batch " << a.batch << " x " << a.seq_len << " tokens, "
      << threads << " threads, AdamW; " << a.steps << " timed steps after " << kWarmup
      << " warm-up, one process each\n";
  out << std::left << std::setw(26) << "run" << std::right << std::setw(14) << "tokens/s min"
      << std::setw(14) << "median" << std::setw(14) << "max" << std::setw(18) << "vs eager (median)"
      << "\n";
  auto row = [&](const std::string& name, const std::vector<double>& s, double ref) {
    const double med = tokens / median(s);
    const double lo = tokens / *std::max_element(s.begin(), s.end());
    const double hi = tokens / *std::min_element(s.begin(), s.end());
    out << std::left << std::setw(26) << name << std::right << std::fixed << std::setprecision(0)
        << std::setw(14) << lo << std::setw(14) << med << std::setw(14) << hi;
    if (ref > 0) out << std::setw(17) << std::setprecision(3) << med / ref << "x";
    out << "\n";
    out.unsetf(std::ios::fixed);
    return med;
  };
  double fp32_geopipe = 0;
  for (const std::string& dtype : a.dtypes) {
    GEOPIPE_CHECK(dtype == "fp32" || dtype == "bf16", ConfigError, "--dtypes: '", dtype,
                  "' is not fp32 or bf16 (fp16 needs CUDA)");
    // Interleaved, so slow drift of the machine hits both alike.
    const std::vector<double> eager = eagerSteps(a, dtype, threads);
    const std::vector<double> ours = geopipeSteps(a, dtype);
    const double ref = row("pytorch eager " + dtype, eager, 0);
    const double med = row("geopipe " + dtype, ours, ref);
    if (dtype == "fp32") fp32_geopipe = med;
    if (dtype == "bf16" && fp32_geopipe > 0) {
      out << "  geopipe bf16 vs geopipe fp32: " << std::fixed << std::setprecision(3)
          << med / fp32_geopipe << "x\n";
      out.unsetf(std::ios::fixed);
    }
  }
  return 0;
}

}  // namespace geopipe::cli
