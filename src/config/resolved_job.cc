// JobSpec -> job YAML with every default filled in (validate --print).
#include "src/config/resolved_job.h"

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace geopipe::config {
namespace {

// The shortest decimal that strtod reads back as `v`.
std::string number(double v) {
  char buf[40];
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    // Whole numbers as written by hand ("30", not "3e+01").
    std::snprintf(buf, sizeof(buf), "%.0f", v);
    return buf;
  }
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

// A key and its value in the current mapping.
template <typename T>
void field(YAML::Emitter& out, const char* key, const T& value) {
  out << YAML::Key << key << YAML::Value << value;
}
void real(YAML::Emitter& out, const char* key, double value) {
  field(out, key, number(value));
}
void flag(YAML::Emitter& out, const char* key, bool value) {
  field(out, key, value ? "true" : "false");
}
void text(YAML::Emitter& out, const char* key, const std::string& value) {
  out << YAML::Key << key << YAML::Value << YAML::DoubleQuoted << value;
}
void textIfSet(YAML::Emitter& out, const char* key, const std::string& value) {
  if (!value.empty()) text(out, key, value);
}

void beginSection(YAML::Emitter& out, const char* key) {
  out << YAML::Key << key << YAML::Value << YAML::BeginMap;
}

void model(YAML::Emitter& out, const ModelSpec& m) {
  beginSection(out, "model");
  field(out, "kind", m.kind);
  if (!m.from.empty()) {
    // config.json supplies the shape; the job's own fields only.
    text(out, "from", m.from);
    field(out, "seq_len", m.seq_len);
    field(out, "dtype", m.dtype);
    real(out, "dropout", m.dropout);
    out << YAML::EndMap;
    return;
  }
  field(out, "preset", "none");
  if (m.kind == "custom") {
    text(out, "name", m.name);
    textIfSet(out, "plugin", m.plugin);
    if (!m.options.empty()) {
      beginSection(out, "options");
      for (const auto& [key, value] : m.options) text(out, key.c_str(), value);
      out << YAML::EndMap;
    }
  }
  field(out, "layers", m.layers);
  field(out, "hidden", m.hidden);
  field(out, "heads", m.heads);
  field(out, "seq_len", m.seq_len);
  field(out, "vocab", m.vocab);
  if (m.isFamily()) {
    field(out, "intermediate_size", m.ffnWidth());  // ffn_mult and it are one width
  } else {
    field(out, "ffn_mult", m.ffn_mult);
  }
  real(out, "dropout", m.dropout);
  field(out, "dtype", m.dtype);
  if (m.isFamily()) {
    if (m.kind == "llama") {
      field(out, "num_key_value_heads", m.kvHeads());
      real(out, "rope_theta", m.rope_theta);
    }
    real(out, "norm_eps", m.normEps());
    flag(out, "tie_embeddings", m.tiedEmbeddings());
    field(out, "max_positions", m.maxPositions());
    if (m.bos_token_id >= 0) field(out, "bos_token_id", m.bos_token_id);
    if (!m.eos_token_ids.empty()) {
      out << YAML::Key << "eos_token_id" << YAML::Value << YAML::Flow << m.eos_token_ids;
    }
  }
  out << YAML::EndMap;
}

void data(YAML::Emitter& out, const DataSpec& d) {
  beginSection(out, "data");
  field(out, "kind", d.kind);
  textIfSet(out, "path", d.path);
  textIfSet(out, "tokenizer", d.tokenizer);
  if (d.kind == "tokens") field(out, "token_dtype", d.token_dtype);
  field(out, "num_samples", d.num_samples);
  textIfSet(out, "val_path", d.val_path);
  if (d.val_path.empty()) real(out, "val_fraction", d.val_fraction);
  flag(out, "pack", d.pack);
  out << YAML::EndMap;
}

void training(YAML::Emitter& out, const TrainingSpec& t) {
  beginSection(out, "training");
  field(out, "steps", t.steps);
  field(out, "global_batch", t.global_batch);
  field(out, "micro_batch", t.micro_batch);
  beginSection(out, "optimizer");
  field(out, "kind", t.optimizer.kind);
  real(out, "lr", t.optimizer.lr);
  real(out, "beta1", t.optimizer.beta1);
  real(out, "beta2", t.optimizer.beta2);
  real(out, "eps", t.optimizer.eps);
  real(out, "weight_decay", t.optimizer.weight_decay);
  real(out, "momentum", t.optimizer.momentum);
  out << YAML::EndMap;
  beginSection(out, "lr_schedule");
  field(out, "kind", t.lr_schedule.kind);
  field(out, "warmup_steps", t.lr_schedule.warmup_steps);
  real(out, "min_lr", t.lr_schedule.min_lr);
  out << YAML::EndMap;
  real(out, "grad_clip", t.grad_clip);
  field(out, "seed", t.seed);
  field(out, "eval_every", t.eval_every);
  field(out, "device", t.device);
  out << YAML::EndMap;
}

void quantization(YAML::Emitter& out, int bits, const std::string& granularity, int group_size,
                  const std::string& rounding) {
  field(out, "bits", bits);
  field(out, "granularity", granularity);
  field(out, "group_size", group_size);
  field(out, "rounding", rounding);
}

void gradientCompression(YAML::Emitter& out, const char* name, const GradientCompressionSpec& g) {
  beginSection(out, name);
  field(out, "method", g.method);
  field(out, "bits", g.bits);
  real(out, "ratio", g.ratio);
  field(out, "rank", g.rank);
  flag(out, "error_feedback", g.error_feedback);
  out << YAML::EndMap;
}

// Every-step sync prints only its kind: the DiLoCo fields are refused there.
void dataParallelSync(YAML::Emitter& out, const DataParallelSyncSpec& s) {
  beginSection(out, "data_parallel_sync");
  field(out, "kind", s.kind);
  if (s.diloco()) {
    field(out, "inner_steps", s.inner_steps);
    beginSection(out, "outer_optimizer");
    field(out, "kind", s.outer_optimizer.kind);
    real(out, "lr", s.outer_optimizer.lr);
    real(out, "momentum", s.outer_optimizer.momentum);
    out << YAML::EndMap;
    gradientCompression(out, "compression", s.compression);
    flag(out, "overlap", s.overlap);
  }
  out << YAML::EndMap;
}

void compression(YAML::Emitter& out, const CompressionSpec& c) {
  beginSection(out, "compression");
  const auto& a = c.activations;
  beginSection(out, "activations");
  field(out, "method", a.method);
  quantization(out, a.bits, a.granularity, a.group_size, a.rounding);
  field(out, "buffer_store", a.buffer_store);
  textIfSet(out, "buffer_dir", a.buffer_dir);
  real(out, "buffer_budget_gb", a.buffer_budget_gb);
  if (a.method == "acsgd") {  // the parser refuses them for other methods
    field(out, "buffer_format", a.buffer_format);
    if (a.buffer_format == "quantized") field(out, "buffer_bits", a.buffer_bits);
  }
  out << YAML::EndMap;
  const auto& b = c.backward;
  beginSection(out, "backward");
  field(out, "method", b.method);
  quantization(out, b.bits, b.granularity, b.group_size, b.rounding);
  out << YAML::EndMap;
  gradientCompression(out, "gradients", c.gradients);
  out << YAML::EndMap;
}

void scheduler(YAML::Emitter& out, const SchedulerSpec& s) {
  beginSection(out, "scheduler");
  field(out, "algorithm", s.algorithm);
  field(out, "cost_model", s.cost_model);
  beginSection(out, "budget");
  field(out, "evaluations", s.budget_evaluations);
  real(out, "seconds", s.budget_seconds);
  out << YAML::EndMap;
  field(out, "seed", s.seed);
  field(out, "threads", s.threads);
  if (s.grad_payload_gb || s.act_payload_gb) {
    beginSection(out, "payloads");
    if (s.grad_payload_gb) real(out, "grad_gb", *s.grad_payload_gb);
    if (s.act_payload_gb) real(out, "act_gb", *s.act_payload_gb);
    out << YAML::EndMap;
  }
  out << YAML::EndMap;
}

void link(YAML::Emitter& out, const LinkSpec& l) {
  real(out, "latency_ms", l.latency_ms);
  real(out, "bandwidth_gbps", l.bandwidth_gbps);
  if (l.duplex_bandwidth_gbps > 0) real(out, "duplex_bandwidth_gbps", l.duplex_bandwidth_gbps);
}

// Every site with its devices, and every directed link between two sites.
void topology(YAML::Emitter& out, const TopologySpec& t) {
  beginSection(out, "topology");
  if (!t.name.empty()) text(out, "name", t.name);
  if (!t.description.empty()) text(out, "description", t.description);
  out << YAML::Key << "sites" << YAML::Value << YAML::BeginSeq;
  for (const SiteSpec& site : t.sites) {
    out << YAML::BeginMap;
    text(out, "name", site.name);
    out << YAML::Key << "intra" << YAML::Value << YAML::Flow << YAML::BeginMap;
    link(out, site.intra);
    out << YAML::EndMap;
    out << YAML::Key << "devices" << YAML::Value << YAML::BeginSeq;
    for (int index : site.devices) {
      const DeviceSpec& d = t.devices[static_cast<size_t>(index)];
      out << YAML::Flow << YAML::BeginMap;
      text(out, "name", d.name);
      text(out, "gpu", d.gpu);
      if (d.tflops_by_dtype.empty()) {
        real(out, "tflops", d.tflops);
      } else {
        out << YAML::Key << "tflops" << YAML::Value << YAML::Flow << YAML::BeginMap;
        for (const auto& [dtype, rate] : d.tflops_by_dtype) real(out, dtype.c_str(), rate);
        out << YAML::EndMap;
      }
      real(out, "memory_gb", d.memory_gb);
      out << YAML::EndMap;
    }
    out << YAML::EndSeq << YAML::EndMap;
  }
  out << YAML::EndSeq;
  if (t.numSites() > 1) {
    out << YAML::Key << "links" << YAML::Value << YAML::BeginSeq;
    for (int a = 0; a < t.numSites(); ++a) {
      for (int b = 0; b < t.numSites(); ++b) {
        if (a == b) continue;
        out << YAML::Flow << YAML::BeginMap;
        text(out, "from", t.sites[static_cast<size_t>(a)].name);
        text(out, "to", t.sites[static_cast<size_t>(b)].name);
        link(out, t.site_links[static_cast<size_t>(a)][static_cast<size_t>(b)]);
        out << YAML::EndMap;
      }
    }
    out << YAML::EndSeq;
  }
  out << YAML::EndMap;
}

}  // namespace

std::string resolvedJobYaml(const JobSpec& job, bool emulate_links_set) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  text(out, "name", job.name);
  model(out, job.model);
  data(out, job.data);
  training(out, job.training);
  beginSection(out, "parallelism");
  field(out, "pipeline_stages", job.parallelism.pipeline_stages);
  if (job.parallelism.dataParallelAuto()) {
    field(out, "data_parallel", "auto");
  } else {
    field(out, "data_parallel", job.parallelism.data_parallel);
  }
  field(out, "schedule", job.parallelism.schedule);
  dataParallelSync(out, job.parallelism.data_parallel_sync);
  out << YAML::EndMap;
  compression(out, job.compression);
  scheduler(out, job.scheduler);
  // An assumed topology (the job gave none) too, so the printed job
  // validates and runs as this one does; its description says it was assumed.
  topology(out, job.topology);
  beginSection(out, "transport");
  field(out, "kind", job.transport.kind);
  if (emulate_links_set) {
    flag(out, "emulate_links", job.transport.emulate_links);
  } else {
    out << YAML::Comment(
        "emulate_links not set: emulated under train and launch, real under coordinator");
  }
  real(out, "bandwidth_scale", job.transport.bandwidth_scale);
  real(out, "latency_scale", job.transport.latency_scale);
  field(out, "same_host", job.transport.same_host);
  out << YAML::EndMap;
  beginSection(out, "checkpoint");
  textIfSet(out, "dir", job.checkpoint.dir);
  field(out, "every_steps", job.checkpoint.every_steps);
  field(out, "keep", job.checkpoint.keep);
  out << YAML::EndMap;
  beginSection(out, "logging");
  field(out, "level", job.logging.level);
  textIfSet(out, "metrics_file", job.logging.metrics_file);
  field(out, "every_steps", job.logging.every_steps);
  textIfSet(out, "tensorboard_dir", job.logging.tensorboard_dir);
  textIfSet(out, "trace_dir", job.logging.trace_dir);
  if (job.logging.metrics_port != 0) {
    field(out, "metrics_port", job.logging.metrics_port);
    field(out, "metrics_host", job.logging.metrics_host);
  }
  out << YAML::EndMap;
  const FaultToleranceSpec& f = job.fault_tolerance;
  beginSection(out, "fault_tolerance");
  real(out, "heartbeat_timeout", f.heartbeat_timeout);
  field(out, "max_restarts", f.max_restarts);
  real(out, "rejoin_timeout", f.rejoin_timeout);
  field(out, "min_replicas", f.min_replicas);
  real(out, "link_grace", f.link_grace);
  field(out, "replan", f.replan);
  if (f.replan) {
    real(out, "replan_margin", f.replan_margin);
    real(out, "replan_budget", f.replan_budget);
  }
  out << YAML::EndMap;
  if (job.security.configured) {
    const SecuritySpec& s = job.security;
    beginSection(out, "security");
    textIfSet(out, "ca", s.ca);
    textIfSet(out, "cert", s.cert);
    textIfSet(out, "key", s.key);
    textIfSet(out, "token_file", s.token_file);
    field(out, "insecure", s.insecure_remote ? "force" : s.insecure ? "true" : "false");
    out << YAML::EndMap;
  }
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace geopipe::config
