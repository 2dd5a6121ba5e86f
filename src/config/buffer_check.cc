// AC-SGD buffer memory per tasklet from the job, the compression library's
// entry layout and the data's size.
#include "src/config/buffer_check.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <sstream>

#include "compression/activation_buffer.h"
#include "compression/delta_compressor.h"
#include "compression/options.h"
#include "geopipe/error.h"
#include "src/data/sampler.h"

namespace geopipe::config {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

std::string fmt(double v, int precision) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", precision, v);
  return buf;
}

// The smallest number of GiB, in steps of 0.01, that holds `bytes`.
std::string gibAtLeast(double bytes) {
  return fmt(std::ceil(bytes / kGiB * 100.0) / 100.0, 2);
}

// Most entries a store may hold within `limit` bytes (storeChargedBytes is
// increasing in the count: bisect).
int64_t entriesWithin(const AcsgdBufferMemory& m, double limit) {
  const auto kind = m.in_memory ? compression::StoreKind::MEMORY : compression::StoreKind::MMAP;
  int64_t lo = 0, hi = std::max<int64_t>(1, m.samples_per_replica);
  while (compression::storeChargedBytes(kind, m.entry_bytes, static_cast<uint64_t>(hi)) <= limit) {
    hi *= 2;
    if (hi > (int64_t{1} << 50)) return hi;
  }
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (compression::storeChargedBytes(kind, m.entry_bytes, static_cast<uint64_t>(mid)) <= limit) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// "data.num_samples: 3200 or fewer" for stores of at most `entries` entries
// each, or "" when no smaller data set helps (the run's steps bound the
// stores, or not even one sample fits).
std::string fewerSamples(const AcsgdBufferMemory& m, int64_t entries) {
  if (m.bounded_by_steps || entries < 1) return "";
  const int64_t n = entries * m.replicas;
  return "data.num_samples: " + std::to_string(n) + " or fewer (" + std::to_string(entries) +
         " per replica" + (m.exact ? "" : "; the count above is an upper bound") + ")";
}

// Bytes per store of the same job with quantized b-bit buffers.
uint64_t quantizedStoreBytes(const AcsgdBufferMemory& m, int bits) {
  compression::DeltaCompressorOptions opt;
  opt.buffer_format = compression::BufferFormat::QUANTIZED;
  opt.buffer_bits = bits;
  const size_t entry = compression::bufferEntryBytes(opt, {m.seq_len, m.hidden});
  return compression::storeChargedBytes(
      m.in_memory ? compression::StoreKind::MEMORY : compression::StoreKind::MMAP, entry,
      static_cast<uint64_t>(m.samples_per_replica));
}

// "buffer_format: quantized with buffer_bits: 8 (66.4 MiB per store) or 4 (...)".
std::string quantizedFix(const AcsgdBufferMemory& m) {
  if (m.format != "fp16") {
    return "fewer buffer_bits (4: " + formatBytes(double(quantizedStoreBytes(m, 4))) +
           " per store)";
  }
  return "buffer_format: quantized with buffer_bits: 8 (" +
         formatBytes(double(quantizedStoreBytes(m, 8))) + " per store) or 4 (" +
         formatBytes(double(quantizedStoreBytes(m, 4))) + ")";
}

}  // namespace

std::string formatBytes(double bytes) {
  if (bytes >= kGiB) return fmt(bytes / kGiB, 2) + " GiB";
  if (bytes >= 1024.0 * 1024.0) return fmt(bytes / (1024.0 * 1024.0), 1) + " MiB";
  if (bytes >= 1024.0) return fmt(bytes / 1024.0, 1) + " KiB";
  return fmt(bytes, 0) + " B";
}

uint64_t AcsgdBufferMemory::maxTaskletBytes() const {
  uint64_t most = 0;
  for (size_t s = 0; s < stores_per_stage.size(); ++s) {
    most = std::max(most, taskletBytes(static_cast<int>(s)));
  }
  return most;
}

AcsgdBufferMemory acsgdBufferMemory(const JobSpec& job, int replicas) {
  const auto& a = job.compression.activations;
  if (a.method != "acsgd" || job.parallelism.pipeline_stages < 2) {
    return acsgdBufferMemory(job, replicas, data::SampleCount{});
  }
  return acsgdBufferMemory(job, replicas, data::countTrainSamples(job.data, job.model));
}

AcsgdBufferMemory acsgdBufferMemory(const JobSpec& job, int replicas,
                                    const data::SampleCount& count) {
  AcsgdBufferMemory m;
  const auto& a = job.compression.activations;
  const int stages = job.parallelism.pipeline_stages;
  if (a.method != "acsgd" || stages < 2 || replicas < 1) return m;
  m.enabled = true;
  // The runtime's own options: the same buffer format, store kind and budget.
  const compression::ActivationCompressionOptions opt =
      compression::activationOptionsFromSpec(a, 0, "check");
  m.in_memory = opt.store.kind == compression::StoreKind::MEMORY;
  m.budget_bytes = opt.store.budget_bytes;
  m.format = opt.delta.buffer_format == compression::BufferFormat::FP16
                 ? "fp16"
                 : "quantized " + std::to_string(opt.delta.buffer_bits) + "-bit";
  m.seq_len = job.model.seq_len;
  m.hidden = job.model.hidden;
  m.entry_bytes = compression::bufferEntryBytes(opt.delta, {m.seq_len, m.hidden});
  m.header_bytes = compression::bufferEntryBytes(opt.delta, {0, 0});
  m.bytes_per_element =
      double(m.entry_bytes - m.header_bytes) / (double(m.seq_len) * double(m.hidden));
  m.stores_per_stage.assign(static_cast<size_t>(stages), 2);
  m.stores_per_stage.front() = m.stores_per_stage.back() = 1;
  m.counted = count.known;
  m.exact = count.exact;
  m.samples_note = count.how;
  if (!count.known) return m;
  m.samples = count.samples;
  m.replicas = replicas;
  const int min_replicas = job.fault_tolerance.min_replicas;
  if (min_replicas > 0 && min_replicas < replicas) {
    m.replicas = min_replicas;
    m.shrinkable = true;
  }
  m.samples_per_replica = data::samplesPerReplica(m.samples, m.replicas, data::sampleOrderFor(job));
  // A replica processes global_batch / R samples a step, so a short run on a
  // large data set fills its stores only that far.
  const int64_t per_step = std::max(1, job.training.global_batch / m.replicas);
  const int64_t by_steps = int64_t{job.training.steps} * per_step;
  if (by_steps < m.samples_per_replica) {
    m.samples_per_replica = by_steps;
    m.bounded_by_steps = true;
  }
  m.store_bytes = compression::storeChargedBytes(
      m.in_memory ? compression::StoreKind::MEMORY : compression::StoreKind::MMAP, m.entry_bytes,
      static_cast<uint64_t>(m.samples_per_replica));
  return m;
}

std::string describeStore(const AcsgdBufferMemory& m) {
  std::ostringstream os;
  os << (m.exact ? "" : "at most ") << m.samples_per_replica << " samples per replica (";
  if (m.bounded_by_steps) {
    os << "training.steps x global_batch / " << m.replicas << " replicas";
  } else {
    os << "ceil(" << m.samples << " samples / " << m.replicas << " replicas"
       << (m.shrinkable ? ", fault_tolerance.min_replicas" : "") << ")";
  }
  os << ") x " << m.seq_len << " seq_len x " << m.hidden << " hidden x "
     << fmt(m.bytes_per_element, m.bytes_per_element == std::floor(m.bytes_per_element) ? 0 : 3)
     << " B (" << m.format << ") + " << m.header_bytes
     << " B per entry = " << formatBytes(double(m.store_bytes)) << " per store";
  return os.str();
}

std::string describeTasklets(const AcsgdBufferMemory& m) {
  const int stages = static_cast<int>(m.stores_per_stage.size());
  std::ostringstream os;
  os << "1 store (" << formatBytes(double(m.taskletBytes(0))) << ") at stages 0 and " << stages - 1;
  if (stages > 2) {
    os << ", 2 (" << formatBytes(double(m.taskletBytes(1))) << ") at stage"
       << (stages > 3 ? "s 1-" + std::to_string(stages - 2) : " 1");
  }
  os << (m.in_memory ? ", in memory" : ", in files under buffer_dir");
  return os.str();
}

std::string budgetProblem(const AcsgdBufferMemory& m) {
  if (!m.overBudget()) return "";
  std::ostringstream os;
  os << "AC-SGD buffer stores exceed buffer_budget_gb (" << formatBytes(double(m.budget_bytes))
     << " per store): " << describeStore(m) << "; every store of a tasklet has its own budget ("
     << describeTasklets(m) << "). Fixes: ";
  std::vector<std::string> fixes;
  if (quantizedStoreBytes(m, m.format == "fp16" ? 8 : 4) <= m.budget_bytes) {
    fixes.push_back(quantizedFix(m));
  }
  const std::string fewer = fewerSamples(m, entriesWithin(m, double(m.budget_bytes)));
  if (!fewer.empty()) fixes.push_back(fewer);
  fixes.push_back("buffer_budget_gb: " + gibAtLeast(double(m.store_bytes)) + " or more" +
                  (m.in_memory ? " (with the memory to hold it, or buffer_store: mmap with a "
                                 "buffer_dir on a disk with the room)"
                               : " (the disk under buffer_dir must have the room)"));
  for (size_t i = 0; i < fixes.size(); ++i) os << (i ? "; " : "") << fixes[i];
  return os.str();
}

std::string memoryFixes(const AcsgdBufferMemory& m, int stage, double memory_bytes,
                        double other_bytes) {
  std::vector<std::string> fixes;
  fixes.push_back(
      "buffer_store: mmap with a buffer_dir (the stores go to disk, each within "
      "buffer_budget_gb)");
  const int stores = m.stores_per_stage[static_cast<size_t>(stage)];
  const double room = (memory_bytes - other_bytes) / stores;  // per store
  if (memory_bytes <= 0) {  // the room is unknown: name the fixes without numbers
    fixes.push_back(quantizedFix(m));
    if (!m.bounded_by_steps) fixes.push_back("fewer samples (data.num_samples)");
  } else {
    if (double(quantizedStoreBytes(m, m.format == "fp16" ? 8 : 4)) <= room) {
      fixes.push_back(quantizedFix(m));
    }
    const std::string fewer = fewerSamples(m, room > 0 ? entriesWithin(m, room) : 0);
    if (!fewer.empty()) fixes.push_back(fewer);
  }
  std::string out = "Fixes: ";
  for (size_t i = 0; i < fixes.size(); ++i) out += (i ? "; " : "") + fixes[i];
  return out;
}

std::string deviceMemoryProblem(const AcsgdBufferMemory& m, const TopologySpec& topology) {
  if (!m.enabled || !m.counted || !m.in_memory || topology.devices.empty()) return "";
  std::vector<double> memory;
  for (const auto& d : topology.devices) memory.push_back(d.memory_gb * kGiB);
  std::sort(memory.rbegin(), memory.rend());
  // Needs, largest first: the middle stages' (2 stores) before the ends'.
  struct Need {
    double bytes;
    int stage;
  };
  std::vector<Need> needs;
  for (size_t s = 0; s < m.stores_per_stage.size(); ++s) {
    for (int r = 0; r < m.replicas; ++r) {
      needs.push_back({double(m.taskletBytes(static_cast<int>(s))), static_cast<int>(s)});
    }
  }
  std::stable_sort(needs.begin(), needs.end(),
                   [](const Need& a, const Need& b) { return a.bytes > b.bytes; });
  for (size_t k = 0; k < needs.size() && k < memory.size(); ++k) {
    if (needs[k].bytes <= memory[k]) continue;
    const int s = needs[k].stage;
    const int stores = m.stores_per_stage[static_cast<size_t>(s)];
    std::ostringstream os;
    os << "AC-SGD buffers in memory (buffer_store: memory) do not fit topology '"
       << (topology.name.empty() ? topology.source : topology.name) << "': a tasklet of stage " << s
       << " keeps " << stores << " store" << (stores > 1 ? "s" : "") << " of " << describeStore(m)
       << ", " << formatBytes(needs[k].bytes) << " per tasklet";
    if (k == 0) {
      os << ", more than its largest device has (" << formatBytes(memory[0]) << ")";
    } else {
      os << ", and only " << k << " device(s) have that much for the " << needs.size()
         << " tasklets that need memory (" << m.replicas << " replicas x "
         << m.stores_per_stage.size() << " stages)";
    }
    os << ", before the stage's weights, optimizer state and activations. "
       << memoryFixes(m, s, memory[k], 0);
    return os.str();
  }
  return "";
}

std::function<scheduler::AcsgdStores(int d_dp)> plannerStores(const JobSpec& job) {
  if (job.compression.activations.method != "acsgd") return {};
  const data::SampleCount count = data::countTrainSamples(job.data, job.model);
  if (!count.known) return {};
  JobSpec sized = job;
  // The planner may try more stages than the job names (data_parallel:
  // auto); a store's size does not depend on the stage count.
  sized.parallelism.pipeline_stages = std::max(2, job.parallelism.pipeline_stages);
  return [sized = std::move(sized), count](int d_dp) {
    const AcsgdBufferMemory m = acsgdBufferMemory(sized, d_dp, count);
    scheduler::AcsgdStores s;
    s.store_bytes = double(m.store_bytes);
    s.budget_bytes = double(m.budget_bytes);
    s.in_memory = m.in_memory;
    return s;
  };
}

void checkBufferBudget(const JobSpec& job, int replicas, int64_t samples) {
  data::SampleCount count;
  count.samples = samples;
  count.how = "the loaded data";
  const std::string problem = budgetProblem(acsgdBufferMemory(job, replicas, count));
  if (!problem.empty()) GEOPIPE_THROW(InfeasibleError, problem);
}

}  // namespace geopipe::config
