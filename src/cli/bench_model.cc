// `geopipe bench model`: single-process training tokens/s of a gpt2 model
// against PyTorch eager (Debian's python3-torch, or the PyTorch of a GPU
// machine) on the same shape, threads, batch and device, measured in one run,
// in fp32 and bf16; with --staged also the staged engine (2 stages x 1
// replica, fp32 and AC-SGD activations) on the same device, and with
// --peak-tflops the model FLOPs utilisation of each row.
#include <spdlog/spdlog.h>

#include <cstdio>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <thread>

#include "geopipe/error.h"
#include "geopipe/job_file.h"
#include "geopipe/model.h"
#include "geopipe/trainer.h"
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
  m->add_option("--device", a.device, "cpu, or cuda (both sides on cuda:0)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  m->add_option("--peak-tflops", a.peak_tflops,
                "the device's peak TFLOP/s in the compared dtype, for an MFU column (0: none)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  m->add_flag("--staged", a.staged,
              "also the staged engine, 2 stages x 1 replica on the same device, with fp32 and "
              "with AC-SGD (4-bit) activations");
  m->add_option("--micro-batch", a.micro_batch, "the staged rows' micro-batch (0: batch / 2)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
}

namespace {

constexpr int kWarmup = 2;

torch::Device benchDevice(const ModelBenchArgs& a) {
  if (a.device == "cpu") return torch::kCPU;
  GEOPIPE_CHECK(torch::cuda::is_available(), InfeasibleError,
                "--device cuda, but LibTorch sees no CUDA device (a CPU-only LibTorch, or no GPU "
                "visible)");
  return torch::Device(torch::kCUDA, 0);
}

// Waits for the device's queued work, so a step's time is its kernels' too.
void finishDeviceWork(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

ModelSpec benchModelSpec(const ModelBenchArgs& a, const std::string& dtype) {
  ModelSpec spec;
  spec.kind = "gpt2";
  spec.preset = "none";
  spec.layers = a.layers;
  spec.hidden = a.hidden;
  spec.heads = a.heads;
  spec.vocab = a.vocab;
  spec.seq_len = a.seq_len;
  spec.dtype = dtype;
  return spec;
}

// geopipe's side: the whole model as one slice, AdamW, the families' loss,
// steps on one random batch (as the reference does).
std::vector<double> geopipeSteps(const ModelBenchArgs& a, const std::string& dtype) {
  const torch::Device device = benchDevice(a);
  const ModelDef m = makeModel(benchModelSpec(a, dtype));
  auto slice = buildSlice(m, 0, m.num_layers, 0);
  slice->to(device);
  OptimizerSpec os;
  os.lr = 1e-4;
  auto optimizer = runtime::makeOptimizer(os, uniqueParameters(*slice));
  torch::manual_seed(0);
  const torch::Tensor ids =
      torch::randint(0, a.vocab, {a.batch, a.seq_len + 1}, torch::kLong).to(device);
  const torch::Tensor in = ids.slice(1, 0, a.seq_len), target = ids.slice(1, 1, a.seq_len + 1);
  std::vector<double> times;
  for (int step = 0; step < kWarmup + a.steps; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    optimizer->zero_grad();
    torch::Tensor out;
    {
      runtime::AutocastScope autocast(dtype, device);
      out = slice->forward(in);
    }
    m.loss(out, target).backward();
    optimizer->step();
    finishDeviceWork(device);
    if (step >= kWarmup) {
      times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  return times;
}

// The staged engine on the same device: the in-process Trainer with 2
// stages x 1 replica over synthetic data, links not emulated; the step times
// of the timed steps. `activations`: none | acsgd (4 bits, 8-bit backward).
std::vector<double> stagedSteps(const ModelBenchArgs& a, const std::string& dtype,
                                const std::string& activations, int threads) {
  const int micro = a.micro_batch > 0 ? a.micro_batch : std::max(1, a.batch / 2);
  GEOPIPE_CHECK(a.batch % micro == 0, ConfigError, "--micro-batch ", micro,
                " does not divide --batch ", a.batch);
  std::string yaml =
      "name: bench-model-staged\ntraining:\n  global_batch: " + std::to_string(a.batch) +
      "\n  micro_batch: " + std::to_string(micro) +
      "\n  steps: " + std::to_string(kWarmup + a.steps) +
      "\n  optimizer: {kind: adamw, lr: 1.0e-4}\n  device: " + a.device +
      "\ndata: {kind: synthetic, num_samples: " + std::to_string(4 * a.batch) +
      "}\nparallelism: {pipeline_stages: 2, data_parallel: 1}\n"
      "transport: {emulate_links: false}\nmodel: {kind: gpt2, preset: none, "
      "layers: " +
      std::to_string(a.layers) + ", hidden: " + std::to_string(a.hidden) +
      ", heads: " + std::to_string(a.heads) + ", vocab: " + std::to_string(a.vocab) +
      ", seq_len: " + std::to_string(a.seq_len) + ", dtype: " + dtype + "}\n";
  if (activations == "acsgd") {
    yaml +=
        "compression:\n  activations: {method: acsgd, bits: 4, granularity: channel}\n"
        "  backward: {method: quantize, bits: 8}\n";
  }
  const JobSpec job = config::parseJobString(yaml, "<bench model --staged>", "");
  std::vector<double> times;
  TrainerOptions opt;
  opt.threads_per_tasklet = std::max(1, threads / 2);  // the other rows' threads, shared
  opt.on_step = [&](const StepMetrics& s) {
    if (s.step >= kWarmup) times.push_back(s.seconds);
  };
  Trainer(makeModel(job.model), job, opt).train();
  return times;
}

// Training FLOPs per token (PaLM's appendix B): 6 per parameter (forward,
// and backward twice) plus attention's 12 x layers x hidden x seq_len.
double trainingFlopsPerToken(const ModelBenchArgs& a) {
  const ModelDef m = makeModel(benchModelSpec(a, "fp32"));
  auto slice = buildSlice(m, 0, m.num_layers, 0);
  double params = 0;
  for (const auto& p : uniqueParameters(*slice)) params += static_cast<double>(p.numel());
  return 6 * params + 12.0 * a.layers * a.hidden * a.seq_len;
}

std::vector<double> eagerSteps(const ModelBenchArgs& a, const std::string& dtype, int threads) {
  const std::string script = "benchmarks/model/torch_eager_gpt2.py";
  const std::string cmd = "OPENBLAS_NUM_THREADS=" + std::to_string(threads) + " " + a.python + " " +
                          script + " --layers " + std::to_string(a.layers) + " --hidden " +
                          std::to_string(a.hidden) + " --heads " + std::to_string(a.heads) +
                          " --vocab " + std::to_string(a.vocab) + " --seq-len " +
                          std::to_string(a.seq_len) + " --batch " + std::to_string(a.batch) +
                          " --steps " + std::to_string(a.steps) + " --warmup " +
                          std::to_string(kWarmup) + " --threads " + std::to_string(threads) +
                          " --dtype " + dtype + " --device " + a.device + " 2>&1";
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
  benchDevice(a);  // refuses cuda without a device before anything runs
  const double tokens = double(a.batch) * a.seq_len;
  const double flops_per_token = a.peak_tflops > 0 ? trainingFlopsPerToken(a) : 0;
  out << "bench model: gpt2 " << a.layers << " layers x " << a.hidden << " hidden, " << a.heads
      << " heads, vocab " << a.vocab << ", batch " << a.batch << " x " << a.seq_len << " tokens, "
      << threads << " threads, device " << a.device << ", AdamW; " << a.steps
      << " timed steps after " << kWarmup << " warm-up, one process each\n";
  if (flops_per_token > 0) {
    out << "MFU = tokens/s x " << std::setprecision(4) << flops_per_token / 1e9
        << " GFLOP a token (6 x parameters + 12 x layers x hidden x seq_len) / " << a.peak_tflops
        << " TFLOP/s peak\n";
  }
  out << std::left << std::setw(30) << "run" << std::right << std::setw(14) << "tokens/s min"
      << std::setw(14) << "median" << std::setw(14) << "max" << std::setw(18)
      << "vs eager (median)";
  if (flops_per_token > 0) out << std::setw(8) << "MFU";
  out << "\n";
  auto row = [&](const std::string& name, const std::vector<double>& s, double ref) {
    GEOPIPE_CHECK(!s.empty(), Error, "bench model: no timed step for ", name);
    const double med = tokens / median(s);
    const double lo = tokens / *std::max_element(s.begin(), s.end());
    const double hi = tokens / *std::min_element(s.begin(), s.end());
    out << std::left << std::setw(30) << name << std::right << std::fixed << std::setprecision(0)
        << std::setw(14) << lo << std::setw(14) << med << std::setw(14) << hi;
    if (ref > 0) {
      out << std::setw(17) << std::setprecision(3) << med / ref << "x";
    } else {
      out << std::setw(18) << "";
    }
    if (flops_per_token > 0) {
      out << std::setw(7) << std::setprecision(1)
          << 100 * med * flops_per_token / (a.peak_tflops * 1e12) << "%";
    }
    out << "\n";
    out.unsetf(std::ios::fixed);
    return med;
  };
  double fp32_geopipe = 0;
  for (const std::string& dtype : a.dtypes) {
    GEOPIPE_CHECK(dtype == "fp32" || dtype == "bf16", ConfigError, "--dtypes: '", dtype,
                  "' is not fp32 or bf16 (fp16 needs loss scaling, which this bench does not run)");
    // Interleaved, so slow drift of the machine hits both alike.
    const std::vector<double> eager = eagerSteps(a, dtype, threads);
    const std::vector<double> ours = geopipeSteps(a, dtype);
    const double ref = row("pytorch eager " + dtype, eager, 0);
    const double med = row("geopipe " + dtype, ours, ref);
    if (a.staged) {
      const double plain =
          row("geopipe staged 2x1 " + dtype, stagedSteps(a, dtype, "none", threads), ref);
      const double acsgd = row("  with AC-SGD 4-bit", stagedSteps(a, dtype, "acsgd", threads), ref);
      out << "  AC-SGD's cost (encode, decode, buffers) in the staged step: " << std::fixed
          << std::setprecision(1) << 100 * (1 - acsgd / plain) << "% of the step\n";
      out.unsetf(std::ios::fixed);
    }
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
