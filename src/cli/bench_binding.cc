// `geopipe bench binding`: a gpt2 model on GPT-2-tokenized fortunes, 2 stages
// whose boundary crosses an emulated WAN link, AC-SGD 4-bit activations; for
// each replica count, the global order (every replica meets every sample: the
// order before binding) against bound shards, in one run: the AC-SGD buffer
// of the boundary on each replica, and the activations' fp32 bytes over wire
// bytes in the first epoch and after it.
#include "src/cli/bench_binding.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "compression/activation_buffer.h"
#include "geopipe/error.h"
#include "geopipe/trainer.h"
#include "src/common/text.h"
#include "src/config/job_parser.h"
#include "src/data/dataset.h"
#include "src/data/sampler.h"
#include "src/runtime/checkpoint.h"
#include "src/tokenizer/token_file.h"
#include "src/tokenizer/tokenizer.h"

namespace geopipe::cli {

void addBindingBenchOptions(CLI::App& bench, BindingBenchArgs& a) {
  auto* b = bench.add_subcommand(
      "binding",
      "AC-SGD with samples bound to replicas vs the global order, side by side: buffer bytes "
      "per boundary and raw/wire bytes of activations after the first epoch, per replica "
      "count (gpt2 on GPT-2-tokenized fortunes over an emulated link)");
  b->add_option("--data", a.data,
                "a uint16 token file of GPT-2 ids (default: Debian's fortunes, tokenized first)");
  b->add_option("--tokenizer", a.tokenizer, "tokenizer folder for the fortunes")
      ->capture_default_str();
  b->add_option("--out", a.out_dir, "output directory (token file, checkpoints, results.md)")
      ->capture_default_str();
  b->add_option("--samples", a.samples, "samples of the data trained on (data.num_samples)")
      ->capture_default_str();
  b->add_option("--epochs", a.epochs, "epochs of every run")->capture_default_str();
  b->add_option("--replicas", a.replicas, "data-parallel replica counts (comma-separated)")
      ->delimiter(',')
      ->capture_default_str();
}

namespace {

namespace fs = std::filesystem;
constexpr int kStages = 2;
constexpr int kDevicesPerSite = 4;

// One run: a replica count and an order.
struct Row {
  int replicas = 1;
  bool bound = false;
  int64_t steps_per_epoch = 0;
  int64_t shard_max = 0;   // the most samples a replica may meet (samplesPerReplica)
  int64_t held_max = 0;    // AC-SGD entries of the boundary on one replica (max)
  int64_t held_total = 0;  // over all replicas
  uint64_t bytes_max = 0;  // their bytes (max over replicas)
  uint64_t bytes_total = 0;
  uint64_t raw_first = 0, wire_first = 0;  // activations, first epoch
  uint64_t raw_later = 0, wire_later = 0;  // activations, the epochs after it
  std::vector<uint64_t> wire_per_step;
  double last_epoch_loss = 0;
  double seconds = 0;
};

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}

std::string kib(uint64_t bytes) {
  return fixed(static_cast<double>(bytes) / 1024.0, 0) + " KiB";
}

double ratio(uint64_t raw, uint64_t wire) {
  return wire ? static_cast<double>(raw) / static_cast<double>(wire) : 0.0;
}

// The job of every run but its replicas, order and steps.
JobSpec benchJob(const std::string& data, int64_t samples) {
  std::ostringstream yaml;
  yaml << R"(name: bench-binding
model: {kind: gpt2, preset: none, layers: 2, hidden: 64, heads: 2, seq_len: 64, vocab: 50257}
data: {kind: tokens, path: ")"
       << data << R"(", token_dtype: uint16, num_samples: )" << samples << R"(}
training:
  global_batch: 8
  micro_batch: 2
  optimizer: {kind: adamw, lr: 1.0e-3, weight_decay: 0.01}
  grad_clip: 1.0
  seed: 7
parallelism: {pipeline_stages: 2, data_parallel: 1}
compression:
  activations: {method: acsgd, bits: 4}
  backward: {method: quantize, bits: 8}
topology:
  sites:
    - {name: west, devices: 4, intra: {latency_ms: 0, bandwidth_gbps: 100}}
    - {name: east, devices: 4, intra: {latency_ms: 0, bandwidth_gbps: 100}}
  links: [{sites: [west, east], latency_ms: 10, bandwidth_gbps: 1}]
transport: {emulate_links: true}
)";
  return config::parseJobString(yaml.str(), "<bench binding>", "");
}

Row runOne(JobSpec job, int replicas, bool bound, int epochs, const std::string& ckpt) {
  Row row;
  row.replicas = replicas;
  row.bound = bound;
  job.parallelism.data_parallel = replicas;
  const data::Sampler sampler(job.data.num_samples, job.training.global_batch, replicas,
                              job.training.micro_batch, job.training.seed,
                              bound ? data::SampleOrder::BOUND : data::SampleOrder::GLOBAL);
  row.steps_per_epoch = sampler.stepsPerEpoch();
  row.shard_max = sampler.samplesPerReplica();
  const int64_t spe = row.steps_per_epoch;
  job.training.steps = static_cast<int>(epochs * spe);
  std::error_code ec;
  fs::remove_all(ckpt, ec);
  job.checkpoint.dir = ckpt;  // the final step only: the buffers as the run ends
  job.checkpoint.keep = 1;

  TrainerOptions opt;
  opt.threads_per_tasklet = 1;
  opt.bind_samples = bound;
  // Stage s of replica r on device r of site s: the boundary crosses the WAN.
  for (int r = 0; r < replicas; ++r)
    for (int s = 0; s < kStages; ++s) opt.device_of_rank.push_back(s * kDevicesPerSite + r);
  double last_sum = 0;
  opt.on_step = [&](const StepMetrics& m) {
    const bool first = m.step < spe;
    (first ? row.raw_first : row.raw_later) += m.activation_raw_bytes;
    (first ? row.wire_first : row.wire_later) += m.activation_wire_bytes;
    row.wire_per_step.push_back(m.activation_wire_bytes);
    if (m.step >= (epochs - 1) * spe) last_sum += m.loss;
  };
  const auto t0 = std::chrono::steady_clock::now();
  Trainer(makeModel(job.model), job, opt).train();
  row.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  row.last_epoch_loss = last_sum / static_cast<double>(spe);

  // The boundary's buffers as the run ended: the sender side of stage 0 on
  // each replica (its receiver holds the same entries, in lock-step).
  const std::string dir = runtime::stepDirectory(ckpt, job.training.steps);
  for (int r = 0; r < replicas; ++r) {
    const std::string path = dir + "/tasklet-" + std::to_string(r * kStages) + ".acsgd-send";
    int64_t held = 0;
    uint64_t bytes = 0;
    bool foreign = false;
    compression::ActivationBufferStore::readSaved(
        path, std::numeric_limits<uint64_t>::max(), [&](int64_t id, uint64_t size) -> uint8_t* {
          ++held;
          bytes += size;
          foreign = foreign || (bound && id % replicas != r);
          return nullptr;
        });
    GEOPIPE_CHECK(!foreign, Error, "bench binding: replica ", r, " of ", replicas,
                  " buffered a sample of another shard");
    row.held_max = std::max(row.held_max, held);
    row.held_total += held;
    row.bytes_max = std::max(row.bytes_max, bytes);
    row.bytes_total += bytes;
  }
  fs::remove_all(ckpt, ec);
  return row;
}

// What binding promises, checked before anything is printed.
void verify(const Row& row, int64_t samples) {
  if (!row.bound) return;
  GEOPIPE_CHECK(row.held_total == samples && row.held_max == row.shard_max, Error,
                "bench binding: with ", row.replicas, " bound replicas the buffers hold ",
                row.held_total, " samples (", row.held_max, " on one), expected ", samples, " (",
                row.shard_max, ")");
  const auto spe = static_cast<size_t>(row.steps_per_epoch);
  for (size_t s = spe; s < row.wire_per_step.size(); ++s) {
    GEOPIPE_CHECK(row.wire_per_step[s] == row.wire_per_step[spe], Error, "bench binding: step ", s,
                  " sent ", row.wire_per_step[s], " bytes, not the delta-only ",
                  row.wire_per_step[spe], " of step ", spe);
  }
}

}  // namespace

int runBindingBench(const BindingBenchArgs& args, std::ostream& out) {
  GEOPIPE_CHECK(args.epochs >= 2, ConfigError, "bench binding: --epochs must be >= 2 (got ",
                args.epochs, "): the wire ratio after the first epoch needs a second");
  GEOPIPE_CHECK(!args.replicas.empty(), ConfigError, "bench binding: --replicas is empty");
  for (int r : args.replicas) {
    GEOPIPE_CHECK(r >= 1 && r <= kDevicesPerSite && 8 % (2 * r) == 0, ConfigError,
                  "bench binding: --replicas ", r,
                  " must split the global batch of 8 into micro-batches of 2 (1, 2 or 4)");
  }
  std::error_code ec;
  fs::create_directories(args.out_dir, ec);
  GEOPIPE_CHECK(!ec, IoError, "cannot create '", common::printable(args.out_dir),
                "': ", ec.message());
  std::string data = args.data;
  std::string data_note;
  if (data.empty()) {
    const auto tok = tokenizer::loadTokenizer(args.tokenizer);
    data = (fs::path(args.out_dir) / "fortunes-gpt2.bin").string();
    const tokenizer::TokenizeResult t =
        tokenizer::tokenizeFiles(*tok, data::fortuneFiles(), data, {});
    data_note = "Debian's fortunes, one document per file (" + std::to_string(t.documents) +
                " documents, " + std::to_string(t.tokens) + " GPT-2 tokens, " + tok->kind() +
                " from " + args.tokenizer + ")";
  } else {
    data_note = data;
  }
  data = fs::absolute(data).string();
  const JobSpec base = benchJob(data, args.samples);
  {
    // The data must hold the samples asked for (num_samples only cuts).
    const data::TokenDataset ds = data::loadDataset(base.data, base.model, base.training.seed);
    GEOPIPE_CHECK(ds.numSamples() == args.samples, ConfigError, "bench binding: '", data,
                  "' holds ", ds.numSamples(), " samples of 64 tokens, fewer than --samples ",
                  args.samples);
  }
  out << "bench binding: gpt2 (2 layers, hidden 64, vocab 50257, seq_len 64) on " << data_note
      << ", " << args.samples << " samples, global batch 8 in micro-batches of 2, " << args.epochs
      << " epochs; 2 stages, the boundary over an emulated 1 Gbps / 10 ms link;"
      << " AC-SGD 4-bit activations, 8-bit backward\n"
      << std::flush;

  std::vector<Row> rows;
  for (int r : args.replicas) {
    for (bool bound : {false, true}) {
      const std::string ckpt =
          (fs::path(args.out_dir) / ("ckpt-r" + std::to_string(r) + (bound ? "-bound" : "-global")))
              .string();
      out << "  R = " << r << ", " << (bound ? "bound shards" : "global order") << " ..."
          << std::flush;
      rows.push_back(runOne(base, r, bound, args.epochs, ckpt));
      verify(rows.back(), args.samples);
      out << " " << fixed(rows.back().seconds, 1) << " s\n" << std::flush;
    }
    // One replica: both orders are the same order (N a multiple of the batch).
    const Row& a = rows[rows.size() - 2];
    const Row& b = rows.back();
    if (r == 1 && args.samples % 8 == 0) {
      GEOPIPE_CHECK(a.wire_per_step == b.wire_per_step && a.bytes_total == b.bytes_total, Error,
                    "bench binding: with one replica the two orders must send the same bytes");
    }
  }

  std::ostringstream t;
  t << "| R | order | samples buffered per replica | of N | buffer of the boundary, one replica "
       "| all replicas | raw : wire, epoch 1 | raw : wire, epochs 2-"
    << args.epochs << " | last-epoch loss | run (s) |\n"
    << "|---|---|---|---|---|---|---|---|---|---|\n";
  for (const Row& row : rows) {
    t << "| " << row.replicas << " | " << (row.bound ? "bound shards" : "global (before)") << " | "
      << row.held_max << " | "
      << fixed(100.0 * static_cast<double>(row.held_max) / static_cast<double>(args.samples), 0)
      << "% | " << kib(row.bytes_max) << " | " << kib(row.bytes_total) << " | "
      << fixed(ratio(row.raw_first, row.wire_first), 2) << "x | "
      << fixed(ratio(row.raw_later, row.wire_later), 2) << "x | " << fixed(row.last_epoch_loss, 3)
      << " | " << fixed(row.seconds, 1) << " |\n";
  }
  t << "\n";
  for (size_t i = 0; i + 1 < rows.size(); i += 2) {
    const Row& g = rows[i];
    const Row& b = rows[i + 1];
    t << "R = " << g.replicas << ": buffer per boundary and replica "
      << fixed(static_cast<double>(g.bytes_max) / std::max<double>(1.0, double(b.bytes_max)), 2)
      << "x smaller bound; raw : wire after the first epoch "
      << fixed(ratio(b.raw_later, b.wire_later), 2) << "x bound vs "
      << fixed(ratio(g.raw_later, g.wire_later), 2) << "x global ("
      << fixed(ratio(b.raw_later, b.wire_later) / std::max(1e-9, ratio(g.raw_later, g.wire_later)),
               2)
      << "x)\n";
  }
  out << "\n" << t.str();
  const std::string md = (fs::path(args.out_dir) / "results.md").string();
  std::ofstream(md) << t.str();
  out << "\nverified: bound replicas buffer exactly their shard, every step after the first "
         "epoch sends the same delta-only bytes, and one replica's two orders are the same; "
         "written "
      << md << "\n";
  return 0;
}

}  // namespace geopipe::cli
