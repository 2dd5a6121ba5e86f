// Human-readable summary of a job spec.
#include "src/config/summary.h"

#include "src/config/buffer_check.h"

#include <cstdio>
#include <map>
#include <sstream>

#include "src/common/text.h"
#include "src/config/topology_parser.h"
#include "src/config/yaml_fields.h"

namespace geopipe::config {
namespace {

std::string describeActivations(const ActivationCompressionSpec& a) {
  if (a.method == "none" || a.method == "fp16") return a.method;
  std::ostringstream os;
  os << a.method << " " << a.bits << "-bit, per-" << a.granularity
     << (a.granularity == "group" ? " (" + std::to_string(a.group_size) + ")" : "")
     << ", " << a.rounding;
  return os.str();
}

// AC-SGD's m(xi) stores per tasklet (buffer_check.h); "" without them.
std::string describeBuffers(const JobSpec& job) {
  const auto& a = job.compression.activations;
  if (a.method != "acsgd" || job.parallelism.pipeline_stages < 2) return "";
  std::ostringstream os;
  os << "  AC-SGD buffers: ";
  if (job.parallelism.dataParallelAuto()) {
    os << "sized by data_parallel (auto): `geopipe plan` checks the shape it picks\n";
    return os.str();
  }
  const AcsgdBufferMemory m = acsgdBufferMemory(job, job.parallelism.data_parallel);
  if (!m.counted) {
    os << "not counted before the data loads (" << m.samples_note
       << "); the run checks them once it has\n";
    return os.str();
  }
  os << describeStore(m) << "\n                  per tasklet: " << describeTasklets(m)
     << "; budget " << formatBytes(double(m.budget_bytes)) << " per store\n";
  return os.str();
}

// "'NAME' (SOURCE): N devices in M sites (2x A100, 4x V100)", the
// topology line of both summaries.
std::string topologyShape(const TopologySpec& t) {
  std::map<std::string, int> gpus;
  for (const auto& d : t.devices) gpus[d.gpu]++;
  std::ostringstream os;
  os << "'" << common::printable(t.name) << "' (" << common::printable(t.source)
     << "): " << t.numDevices() << " devices in " << t.numSites() << " sites (";
  bool first = true;
  for (const auto& [gpu, count] : gpus) {
    os << (first ? "" : ", ") << count << "x " << common::printable(gpu);
    first = false;
  }
  os << ")";
  return os.str();
}

}  // namespace

std::string formatJobSummary(const JobSpec& job) {
  std::ostringstream os;
  const ModelSpec& m = job.model;
  const TopologySpec& t = job.topology;
  const ParallelismSpec& p = job.parallelism;
  os << "job '" << common::printable(job.name) << "' (" << common::printable(job.source) << ")\n";
  os << "  model:        " << m.kind << (m.kind == "custom" ? " " + m.name : "")
     << ", " << m.layers << " layers, hidden " << m.hidden << ", " << m.heads
     << " heads, seq " << m.seq_len << ", vocab " << m.vocab << ", " << m.dtype
     << (m.from.empty() ? "" : ", from " + m.from) << "\n";
  if (m.dtype == "fp16" && job.training.device == "cpu") {
    os << "  note:         model.dtype fp16 computes only on CUDA: this job is for `plan` "
          "(train/launch need training.device: cuda, or dtype bf16)\n";
  }
  os << "  data:         " << job.data.kind << (job.data.path.empty() ? "" : " " + job.data.path)
     << (job.data.tokenizer.empty() ? "" : ", tokenizer " + job.data.tokenizer) << "\n";
  os << "  training:     " << job.training.steps << " steps, global batch "
     << job.training.global_batch << ", micro-batch " << job.training.micro_batch
     << ", " << job.training.optimizer.kind << " lr "
     << job.training.optimizer.lr << " (" << job.training.lr_schedule.kind
     << "), seed " << job.training.seed << "\n";
  os << "  parallelism:  " << p.pipeline_stages << " stages x "
     << (p.dataParallelAuto() ? std::string("auto") : std::to_string(p.data_parallel))
     << " replicas, " << p.schedule << "\n";
  os << "  compression:  activations " << describeActivations(job.compression.activations)
     << "; backward " << job.compression.backward.method
     << (job.compression.backward.method == "quantize"
             ? " " + std::to_string(job.compression.backward.bits) + "-bit" : "")
     << "; gradients " << job.compression.gradients.method << "\n";
  os << describeBuffers(job);
  os << "  scheduler:    " << job.scheduler.algorithm << ", cost model "
     << job.scheduler.cost_model << ", seed " << job.scheduler.seed << "\n";
  const std::string assumed = assumedTopologyNote(t);
  os << "  topology:     " << (assumed.empty() ? topologyShape(t) : assumed) << "\n";
  os << "  transport:    " << job.transport.kind
     << (job.transport.emulate_links ? ", links emulated" : "") << "\n";
  const SecuritySpec& sec = job.security;
  os << "  security:     ";
  if (!sec.configured) {
    os << "none (launch: ephemeral TLS certificates and token; coordinator: refused)\n";
  } else if (sec.insecure) {
    os << "plaintext" << (sec.insecure_remote ? " on any address (forced)" : " on loopback only")
       << ", join token "
       << (sec.token_file.empty() ? "from $GEOPIPE_JOB_TOKEN if set" : "in " + sec.token_file)
       << "\n";
  } else {
    os << "mutual TLS (ca " << sec.ca << ", cert " << sec.cert << "), join token "
       << (sec.token_file.empty() ? "from $GEOPIPE_JOB_TOKEN" : "in " + sec.token_file) << "\n";
  }
  return os.str();
}

std::string assumedTopologyNote(const TopologySpec& t) {
  if (!isAssumedTopology(t)) return "";
  const LinkSpec& l = t.site_links[0][0];
  const int n = t.numDevices();
  return "none given; assuming a local one: " + std::to_string(n) +
         (n == 1 ? " device" : " devices") + ", one site, a device per tasklet, links of " +
         formatNumber(l.latency_ms) + " ms and " + formatNumber(l.bandwidth_gbps) +
         " Gbps (the same machine); name a topology to describe a network";
}

std::string formatTopologySummary(const TopologySpec& t) {
  std::ostringstream os;
  os << "topology " << topologyShape(t) << "\n";
  // The links a plan can use: between sites, and inside a site of two or
  // more devices.
  int slow_a = -1, slow_b = -1, far_a = -1, far_b = -1, duplex_a = -1, duplex_b = -1;
  for (int a = 0; a < t.numSites(); ++a) {
    for (int b = 0; b < t.numSites(); ++b) {
      if (a == b && t.sites[a].devices.size() < 2) continue;
      const LinkSpec& l = t.site_links[a][b];
      if (l.duplex_bandwidth_gbps > 0 &&
          (duplex_a < 0 ||
           l.duplex_bandwidth_gbps < t.site_links[duplex_a][duplex_b].duplex_bandwidth_gbps)) {
        duplex_a = a, duplex_b = b;
      }
      if (slow_a < 0 || l.bandwidth_gbps < t.site_links[slow_a][slow_b].bandwidth_gbps) {
        slow_a = a, slow_b = b;
      }
      if (far_a < 0 || l.latency_ms > t.site_links[far_a][far_b].latency_ms) far_a = a, far_b = b;
    }
  }
  if (slow_a >= 0) {
    auto name = [&](int a, int b) {
      return common::printable(a == b ? "inside " + t.sites[a].name
                                      : t.sites[a].name + " -> " + t.sites[b].name);
    };
    os << "  links:        slowest " << t.site_links[slow_a][slow_b].bandwidth_gbps << " Gbps ("
       << name(slow_a, slow_b) << "), longest " << t.site_links[far_a][far_b].latency_ms << " ms ("
       << name(far_a, far_b) << ")\n";
    // What data-parallel exchanges are priced at, where the file gives it.
    if (duplex_a >= 0) {
      os << "  both ways:    slowest " << t.site_links[duplex_a][duplex_b].duplex_bandwidth_gbps
         << " Gbps (" << name(duplex_a, duplex_b) << ", duplex_bandwidth_gbps)\n";
    }
  }
  return os.str();
}

}  // namespace geopipe::config
