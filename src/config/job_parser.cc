// Reads job YAML into a JobSpec (every field: docs/job-spec.md).
#include "src/config/job_parser.h"

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <sstream>

#include "src/common/file_kind.h"
#include "src/common/strings.h"
#include "src/common/text.h"
#include "src/config/buffer_check.h"
#include "src/config/hf_config.h"
#include "src/config/job_overrides.h"
#include "src/config/resolved_job.h"
#include "src/config/topology_parser.h"
#include "src/config/yaml_fields.h"
#include "src/data/dataset.h"
#include "src/security/pki.h"
#include "src/security/token.h"
#include "src/tokenizer/tokenizer.h"

namespace geopipe::config {
namespace {

namespace fs = std::filesystem;
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr int kBig = 1 << 30;
constexpr int64_t kMaxSamples = 1000000000000;  // data.num_samples
// transport scales: beyond them a link is a typo, not a network.
constexpr double kMinBandwidthScale = 1e-6, kMaxBandwidthScale = 1e6;
constexpr double kMaxLatencyScale = 1e6;
// One tensor of a micro-batch (activations, MLP, logits) in elements: 2^48
// (1 PiB of fp32) is beyond any device, and keeps byte counts far from
// int64 overflow.
constexpr int64_t kMaxTensorElements = int64_t{1} << 48;

const char* const kPresets[] = {"tiny", "gpt2-small", "gpt3-xl", "none", nullptr};

void applyPreset(const std::string& preset, ModelSpec& m) {
  if (preset == "tiny") {
    m.layers = 4, m.hidden = 128, m.heads = 4, m.seq_len = 128, m.vocab = 256;
  } else if (preset == "gpt2-small") {
    m.layers = 12, m.hidden = 768, m.heads = 12, m.seq_len = 1024, m.vocab = 50257;
  } else if (preset == "gpt3-xl") {
    m.layers = 24, m.hidden = 2048, m.heads = 16, m.seq_len = 2048, m.vocab = 50257;
  }
}

std::string resolvePath(const std::string& base_dir, const std::string& p) {
  if (p.empty() || fs::path(p).is_absolute() || base_dir.empty()) return p;
  return (fs::path(base_dir) / p).lexically_normal().string();
}

// The node at a dotted path below root (for positioning cross-field errors);
// an undefined node if any part is absent.
YAML::Node nodeAt(const YAML::Node& root, const std::string& dotted) {
  YAML::Node cur = root;
  size_t start = 0;
  while (cur.IsDefined() && cur.IsMap()) {
    size_t dot = dotted.find('.', start);
    std::string key = dotted.substr(start, dot == std::string::npos ? dot : dot - start);
    const YAML::Node& ccur = cur;
    YAML::Node next = ccur[key];
    if (!next.IsDefined()) return next;
    cur.reset(next);
    if (dot == std::string::npos) return cur;
    start = dot + 1;
  }
  return YAML::Node(YAML::NodeType::Undefined);
}

class JobReader {
 public:
  JobReader(const YAML::Node& root, const ReadContext& ctx, std::string base_dir)
      : root_(root), ctx_(ctx), base_dir_(std::move(base_dir)) {}

  JobSpec read() {
    MapReader r(root_, "", ctx_);
    if (!r.ok()) return job_;
    r.getString("name", job_.name);
    readModel(r.child("model"));
    readData(r.child("data"));
    readTraining(r.child("training"));
    readParallelism(r.child("parallelism"));
    readCompression(r.child("compression"));
    readScheduler(r.child("scheduler"));
    readTopologyField(r);
    readTransport(r.child("transport"));
    readCheckpoint(r.child("checkpoint"));
    readLogging(r.child("logging"));
    readFaultTolerance(r.child("fault_tolerance"));
    readSecurity(r.child("security"));
    r.finish();
    if (job_.name.empty()) {
      job_.name = fs::path(ctx_.file).stem().string();
    }
    if (ctx_.diagnostics->empty()) crossCheck();
    return job_;
  }

 private:
  // Calls fn(reader) on a section when present; a section may be omitted.
  template <typename Fn>
  void section(const YAML::Node& node, const std::string& path, Fn fn) {
    if (!node.IsDefined() || node.IsNull()) return;
    MapReader r(node, path, ctx_);
    if (!r.ok()) return;
    fn(r);
    r.finish();
  }

  void readModel(const YAML::Node& node) {
    section(node, "model", [&](MapReader& r) {
      ModelSpec& m = job_.model;
      r.getEnum("kind", m.kind, {"gpt", "gpt2", "llama", "custom"});
      r.getString("from", m.from);
      m.from = resolvePath(base_dir_, m.from);
      const bool from = !m.from.empty();
      if (from && !m.isFamily()) {
        r.error("from", r.child("from"),
                "model.from imports a Hugging Face folder of a gpt2 or llama model, but "
                "model.kind is '" + m.kind + "': set kind: gpt2 or kind: llama");
      }
      if (from && r.has("preset")) {
        r.error("preset", r.child("preset"),
                "with model.from, config.json supplies the shape: remove model.preset");
      }
      r.getEnum("preset", m.preset, {"tiny", "gpt2-small", "gpt3-xl", "none"});
      if (from && m.isFamily()) {
        try {
          HfModelConfig cfg = readHfConfig(m.from, m.kind);
          checkHfTensors(withFrom(cfg.shape, m.from));
          const std::string dtype = m.dtype;
          const double dropout = m.dropout;
          const std::string dir = m.from;
          m = cfg.shape;
          m.from = dir;
          m.dtype = dtype;
          m.dropout = dropout;
        } catch (const Error& e) {
          r.error("from", r.child("from"), e.what());
        }
      } else {
        applyPreset(m.preset, m);
      }
      const ModelSpec base = m;
      r.getString("name", m.name);
      r.getString("plugin", m.plugin);
      m.plugin = resolvePath(base_dir_, m.plugin);
      readModelOptions(r, m.options);
      r.getInt("layers", m.layers, 1, 4096);
      r.getInt("hidden", m.hidden, 1, 1 << 20);
      r.getInt("heads", m.heads, 1, 4096);
      r.getInt("seq_len", m.seq_len, 1, 1 << 24);
      r.getInt("vocab", m.vocab, 2, 1 << 26);
      r.getInt("ffn_mult", m.ffn_mult, 1, 64);
      r.getDouble("dropout", m.dropout, 0.0, 0.99);
      r.getEnum("dtype", m.dtype, {"fp32", "fp16", "bf16"});
      r.getInt("num_key_value_heads", m.num_key_value_heads, 1, 4096);
      r.getDouble("rope_theta", m.rope_theta, 0.0, 1e12, /*lo_exclusive=*/true);
      r.getDouble("norm_eps", m.norm_eps, 0.0, 1.0, /*lo_exclusive=*/true);
      r.getInt("intermediate_size", m.intermediate_size, 1, 1 << 24);
      r.getInt("max_positions", m.max_positions, 1, 1 << 24);
      if (r.has("tie_embeddings")) {
        bool tie = m.tiedEmbeddings();
        r.getBool("tie_embeddings", tie);
        m.tie_embeddings = tie ? 1 : 0;
      } else {
        r.child("tie_embeddings");
      }
      r.getInt64("bos_token_id", m.bos_token_id, 0, INT64_MAX);
      readTokenIds(r, "eos_token_id", m.eos_token_ids);
      if (m.kind == "custom" && m.name.empty()) {
        r.error("kind is 'custom' but 'name' is missing: set model.name to the "
                "name the model was registered under with the C++ API");
      }
      refuseFieldsOfOtherKinds(r, m);
      if (from && m.isFamily()) compareWithConfig(r, base, m);
    });
  }

  // model.options: a mapping of scalars for the custom model's factory.
  void readModelOptions(MapReader& r, std::map<std::string, std::string>& out) {
    const YAML::Node n = r.child("options");
    if (!n.IsDefined() || n.IsNull()) return;
    if (!n.IsMap()) {
      r.error("options", n,
              "expected a mapping of names to scalars (options: {width: 64}), found " +
                  describeNode(n));
      return;
    }
    for (const auto& kv : n) {
      const std::string key = kv.first.IsScalar() ? kv.first.Scalar() : "";
      if (key.empty() || !kv.second.IsScalar()) {
        r.error("options", kv.second.IsDefined() ? kv.second : n,
                "model.options." + (key.empty() ? std::string("?") : key) +
                    ": expected a scalar (a number, a string or a boolean), found " +
                    describeNode(kv.second));
        continue;
      }
      out[key] = kv.second.Scalar();
    }
  }

  static ModelSpec withFrom(ModelSpec m, const std::string& from) {
    m.from = from;
    return m;
  }

  // An id or a list of ids (end-of-text ids).
  void readTokenIds(MapReader& r, const std::string& key, std::vector<int64_t>& out) {
    YAML::Node n = r.child(key);
    if (!n.IsDefined() || n.IsNull()) return;
    std::vector<int64_t> ids;
    auto one = [&](const YAML::Node& e) {
      int64_t id = -1;
      std::string problem;
      if (!e.IsScalar() || !parseDecimalInteger(e.Scalar(), id, problem) || id < 0 ||
          id >= (int64_t{1} << 40)) {
        r.error(key, e,
                "expected a token id (a non-negative integer) or a list of them, found " +
                    describeNode(e) + (problem.empty() ? "" : ": " + problem));
        return false;
      }
      ids.push_back(id);
      return true;
    };
    if (n.IsSequence()) {
      for (const auto& e : n) {
        if (!one(e)) return;
      }
    } else if (!one(n)) {
      return;
    }
    out = ids;
  }

  // A field the chosen kind does not use is refused, never ignored.
  void refuseFieldsOfOtherKinds(MapReader& r, const ModelSpec& m) {
    auto refuse = [&](const char* key, const std::string& why) {
      if (r.has(key)) r.error(key, r.child(key), "model.kind " + m.kind + " " + why);
    };
    if (m.kind == "gpt") {
      const std::string why =
          "does not use this field (the built-in GPT: learned positions sized by seq_len, "
          "LayerNorm eps 1e-5, untied head); use kind: gpt2 or llama for it";
      for (const char* k : {"num_key_value_heads", "rope_theta", "norm_eps", "intermediate_size",
                            "tie_embeddings", "max_positions", "bos_token_id", "eos_token_id"}) {
        refuse(k, why);
      }
    } else if (m.kind == "gpt2") {
      refuse("num_key_value_heads", "has no grouped-query attention (that is kind: llama)");
      refuse("rope_theta", "has learned positions, no rotary embeddings (that is kind: llama)");
    }
    if (m.kind != "custom") {
      refuse("name", "takes no name (name selects a registered model with kind: custom)");
      refuse("plugin", "loads no plugin (a plugin's models are kind: custom, with model.name)");
      refuse("options",
             "takes no options (options are for a plugin's or a registered model, kind: "
             "custom); set this model's own fields instead");
    }
    if (m.isFamily()) {
      if (r.has("ffn_mult") && r.has("intermediate_size")) {
        r.error("intermediate_size", r.child("intermediate_size"),
                "give the MLP width once: intermediate_size or ffn_mult, not both");
      }
      if (m.seq_len > m.maxPositions()) {
        r.error("seq_len", r.child("seq_len"),
                "seq_len " + std::to_string(m.seq_len) + " exceeds the model's maximum positions (" +
                    std::to_string(m.maxPositions()) + "): lower seq_len" +
                    (m.from.empty() ? " or raise max_positions" : ""));
      }
      if (m.kind == "llama" && m.hidden % m.heads == 0 && (m.hidden / m.heads) % 2 != 0) {
        r.error("heads", r.child("heads"),
                "llama's rotary embeddings need an even head dimension, but hidden / heads = " +
                    std::to_string(m.hidden / m.heads) + ": change hidden or heads");
      }
      if (m.kind == "llama" && m.heads % m.kvHeads() != 0) {
        r.error("num_key_value_heads", r.child("num_key_value_heads"),
                "heads (" + std::to_string(m.heads) + ") must be a multiple of "
                "num_key_value_heads (" + std::to_string(m.kvHeads()) + ")");
      }
      for (int64_t id : m.eos_token_ids) {
        if (id >= m.vocab) {
          r.error("eos_token_id", r.child("eos_token_id"),
                  "token id " + std::to_string(id) + " is outside the vocabulary of " +
                      std::to_string(m.vocab));
        }
      }
      if (m.bos_token_id >= m.vocab) {
        r.error("bos_token_id", r.child("bos_token_id"),
                "token id " + std::to_string(m.bos_token_id) +
                    " is outside the vocabulary of " + std::to_string(m.vocab));
      }
    }
  }

  // With model.from, every shape field the user wrote must agree with
  // config.json (seq_len, dtype and dropout are the job's own).
  void compareWithConfig(MapReader& r, const ModelSpec& cfg, const ModelSpec& m) {
    auto check = [&](const char* key, const std::string& mine, const std::string& theirs) {
      if (r.has(key) && mine != theirs) {
        r.error(key, r.child(key),
                std::string("model.") + key + " is " + mine + " but " + m.from +
                    "/config.json says " + theirs + ": remove model." + key +
                    " (config.json supplies the shape) or import another folder");
      }
    };
    auto str = [](double v) {
      std::ostringstream o;
      o << v;
      return o.str();
    };
    check("layers", std::to_string(m.layers), std::to_string(cfg.layers));
    check("hidden", std::to_string(m.hidden), std::to_string(cfg.hidden));
    check("heads", std::to_string(m.heads), std::to_string(cfg.heads));
    check("vocab", std::to_string(m.vocab), std::to_string(cfg.vocab));
    check("num_key_value_heads", std::to_string(m.kvHeads()), std::to_string(cfg.kvHeads()));
    check("intermediate_size", std::to_string(m.ffnWidth()), std::to_string(cfg.ffnWidth()));
    if (r.has("ffn_mult") && int64_t{m.ffn_mult} * m.hidden != cfg.ffnWidth()) {
      check("ffn_mult", std::to_string(m.ffn_mult) + " (an MLP width of " +
                            std::to_string(int64_t{m.ffn_mult} * m.hidden) + ")",
            "an MLP width of " + std::to_string(cfg.ffnWidth()));
    }
    check("max_positions", std::to_string(m.maxPositions()), std::to_string(cfg.maxPositions()));
    check("rope_theta", str(m.rope_theta), str(cfg.rope_theta));
    check("norm_eps", str(m.normEps()), str(cfg.normEps()));
    check("tie_embeddings", m.tiedEmbeddings() ? "true" : "false",
          cfg.tiedEmbeddings() ? "true" : "false");
    check("bos_token_id", std::to_string(m.bos_token_id), std::to_string(cfg.bos_token_id));
    auto ids = [](const std::vector<int64_t>& v) {
      std::string s;
      for (int64_t x : v) s += (s.empty() ? "" : ",") + std::to_string(x);
      return "[" + s + "]";
    };
    check("eos_token_id", ids(m.eos_token_ids), ids(cfg.eos_token_ids));
  }

  void readData(const YAML::Node& node) {
    section(node, "data", [&](MapReader& r) {
      DataSpec& d = job_.data;
      r.getEnum("kind", d.kind, {"synthetic", "text", "tokens", "fortunes"});
      r.getString("path", d.path);
      r.getString("tokenizer", d.tokenizer);
      r.getEnum("token_dtype", d.token_dtype, {"uint16", "uint32"});
      // 10^12 samples is beyond any corpus; more is a typo, and products
      // such as num_samples x seq_len must not overflow.
      r.getInt64("num_samples", d.num_samples, 0, kMaxSamples);
      r.getString("val_path", d.val_path);
      r.getDouble("val_fraction", d.val_fraction, 0.0, 0.5);
      r.getBool("pack", d.pack);
      d.path = resolvePath(base_dir_, d.path);
      d.val_path = resolvePath(base_dir_, d.val_path);
      if (!d.val_path.empty() && d.val_fraction > 0) {
        r.error("val_fraction", r.child("val_fraction"),
                "give one validation set: data.val_path or data.val_fraction, not both");
      }
      d.tokenizer = resolvePath(base_dir_, d.tokenizer);
      if (r.has("token_dtype") && d.kind != "tokens") {
        r.error("token_dtype", r.child("token_dtype"),
                "token_dtype gives the width of a token file's ids, but data.kind '" + d.kind +
                    "' reads no token file: remove data.token_dtype, or set data.kind: tokens");
      }
    });
  }

  static bool validDevice(const std::string& d) {
    if (d == "cpu" || d == "cuda") return true;
    if (d.rfind("cuda:", 0) != 0 || d.size() == 5 || d.size() > 8) return false;
    return d.find_first_not_of("0123456789", 5) == std::string::npos;
  }

  void readTraining(const YAML::Node& node) {
    section(node, "training", [&](MapReader& r) {
      TrainingSpec& t = job_.training;
      r.getInt("steps", t.steps, 1, kBig);
      r.getInt("global_batch", t.global_batch, 1, kBig);
      r.getInt("micro_batch", t.micro_batch, 1, kBig);
      r.getDouble("grad_clip", t.grad_clip, 0.0, kInf);
      r.getUint64("seed", t.seed);
      r.getInt("eval_every", t.eval_every, 0, kBig);
      r.getString("device", t.device);
      section(r.child("optimizer"), "training.optimizer", [&](MapReader& o) {
        OptimizerSpec& opt = t.optimizer;
        o.getEnum("kind", opt.kind, {"adamw", "sgd"});
        o.getDouble("lr", opt.lr, 0.0, 10.0, /*lo_exclusive=*/true);
        o.getDouble("beta1", opt.beta1, 0.0, 1.0);
        o.getDouble("beta2", opt.beta2, 0.0, 1.0);
        o.getDouble("eps", opt.eps, 0.0, 1.0, /*lo_exclusive=*/true);
        o.getDouble("weight_decay", opt.weight_decay, 0.0, 10.0);
        o.getDouble("momentum", opt.momentum, 0.0, 1.0);
        if (opt.beta1 >= 1.0 || opt.beta2 >= 1.0) {
          o.error("beta1 and beta2 must be below 1 (typical: 0.9 and 0.95)");
        }
      });
      section(r.child("lr_schedule"), "training.lr_schedule", [&](MapReader& s) {
        LrScheduleSpec& ls = t.lr_schedule;
        s.getEnum("kind", ls.kind, {"constant", "cosine", "linear"});
        s.getInt("warmup_steps", ls.warmup_steps, 0, kBig);
        s.getDouble("min_lr", ls.min_lr, 0.0, 10.0);
      });
    });
  }

  void readParallelism(const YAML::Node& node) {
    section(node, "parallelism", [&](MapReader& r) {
      ParallelismSpec& p = job_.parallelism;
      r.getInt("pipeline_stages", p.pipeline_stages, 1, 4096);
      YAML::Node dp = r.child("data_parallel");
      if (dp.IsDefined() && dp.IsScalar() && dp.Scalar() == "auto") {
        p.data_parallel = 0;
      } else if (dp.IsDefined() && !dp.IsNull()) {
        // The integers of every other field (parseDecimalInteger), or auto.
        int64_t v = 0;
        std::string problem;
        const bool is_int = dp.IsScalar() && parseDecimalInteger(dp.Scalar(), v, problem);
        if (!is_int || v < 1 || v > 65536) {
          r.error("data_parallel", dp,
                  "expected an integer in 1..65536 or 'auto', found " + describeNode(dp) +
                      (problem.empty() ? "" : ": " + problem));
        } else {
          p.data_parallel = static_cast<int>(v);
        }
      }
      r.getEnum("schedule", p.schedule, {"gpipe", "1f1b"});
      readDataParallelSync(r.child("data_parallel_sync"));
    });
  }

  // parallelism.data_parallel_sync: every_step (the default) or DiLoCo's
  // local steps with an outer optimizer. Its DiLoCo fields are refused
  // under every_step, where nothing would read them.
  void readDataParallelSync(const YAML::Node& node) {
    const std::string path = "parallelism.data_parallel_sync";
    section(node, path, [&](MapReader& d) {
      DataParallelSyncSpec& s = job_.parallelism.data_parallel_sync;
      d.getEnum("kind", s.kind, {"every_step", "diloco"});
      if (!s.diloco()) {
        for (const char* key : {"inner_steps", "outer_optimizer", "compression", "overlap"}) {
          if (d.has(key)) {
            d.error(key, d.child(key),
                    std::string(key) + " configures DiLoCo's local steps but kind is '" + s.kind +
                        "': set kind: diloco or remove it");
          }
        }
        return;
      }
      d.getInt("inner_steps", s.inner_steps, 1, 1000000);
      section(d.child("outer_optimizer"), path + ".outer_optimizer", [&](MapReader& o) {
        OuterOptimizerSpec& opt = s.outer_optimizer;
        o.getEnum("kind", opt.kind, {"nesterov", "sgd"});
        o.getDouble("lr", opt.lr, 0.0, 10.0, /*lo_exclusive=*/true);
        o.getDouble("momentum", opt.momentum, 0.0, 1.0);
        if (opt.momentum >= 1.0) {
          o.error("momentum", o.child("momentum"),
                  "momentum must be below 1 (DiLoCo uses 0.9): at 1 the outer steps never decay");
        } else if (opt.kind == "nesterov" && opt.momentum == 0.0 && o.has("momentum")) {
          o.error("momentum", o.child("momentum"),
                  "nesterov momentum needs momentum > 0: use kind: sgd for plain outer steps");
        }
      });
      section(d.child("compression"), path + ".compression",
              [&](MapReader& g) { readGradientCompression(g, s.compression); });
      d.getBool("overlap", s.overlap);
    });
  }

  void readGradientCompression(MapReader& g, GradientCompressionSpec& s) {
    g.getEnum("method", s.method, {"none", "fp16", "quantize", "topk", "powersgd"});
    g.getInt("bits", s.bits, 1, 8);
    g.getDouble("ratio", s.ratio, 0.0, 1.0, /*lo_exclusive=*/true);
    g.getInt("rank", s.rank, 1, 4096);
    g.getBool("error_feedback", s.error_feedback);
  }

  void readQuantFields(MapReader& r, int& bits, std::string& granularity,
                       int& group_size, std::string& rounding) {
    r.getInt("bits", bits, 1, 8);
    r.getEnum("granularity", granularity, {"tensor", "channel", "group"});
    r.getInt("group_size", group_size, 1, 1 << 24);
    r.getEnum("rounding", rounding, {"nearest", "stochastic"});
  }

  void readCompression(const YAML::Node& node) {
    section(node, "compression", [&](MapReader& r) {
      CompressionSpec& c = job_.compression;
      section(r.child("activations"), "compression.activations", [&](MapReader& a) {
        auto& s = c.activations;
        a.getEnum("method", s.method, {"none", "fp16", "acsgd", "direct"});
        readQuantFields(a, s.bits, s.granularity, s.group_size, s.rounding);
        a.getEnum("buffer_store", s.buffer_store, {"memory", "mmap"});
        a.getString("buffer_dir", s.buffer_dir);
        a.getDouble("buffer_budget_gb", s.buffer_budget_gb, 0.0, kInf, true);
        a.getEnum("buffer_format", s.buffer_format, {"fp16", "quantized"});
        a.getInt("buffer_bits", s.buffer_bits, 1, 8);
        s.buffer_dir = resolvePath(base_dir_, s.buffer_dir);
        refuseUnusedBufferFields(a, s);
        if (s.method == "acsgd" && s.buffer_store == "mmap" && s.buffer_dir.empty()) {
          a.error("buffer_store is 'mmap' but 'buffer_dir' is missing: name a "
                  "directory for the memory-mapped AC-SGD buffers");
        }
      });
      section(r.child("backward"), "compression.backward", [&](MapReader& b) {
        auto& s = c.backward;
        b.getEnum("method", s.method, {"none", "fp16", "quantize"});
        readQuantFields(b, s.bits, s.granularity, s.group_size, s.rounding);
      });
      section(r.child("gradients"), "compression.gradients",
              [&](MapReader& g) { readGradientCompression(g, c.gradients); });
    });
  }

  // buffer_format and buffer_bits shape AC-SGD's m(xi) stores; a value the
  // runtime would not use is refused rather than ignored.
  void refuseUnusedBufferFields(MapReader& a, const ActivationCompressionSpec& s) {
    if (s.method != "acsgd") {
      for (const char* key : {"buffer_format", "buffer_bits"}) {
        if (a.has(key)) {
          a.error(key, a.child(key),
                  std::string(key) + " configures AC-SGD's buffers but method is '" + s.method +
                      "': remove it or set method: acsgd");
        }
      }
    } else if (a.has("buffer_bits") && s.buffer_format != "quantized") {
      a.error("buffer_bits", a.child("buffer_bits"),
              "buffer_bits sets the width of a quantized buffer but buffer_format is '" +
                  s.buffer_format +
                  "' (2 bytes per element): set buffer_format: quantized or remove buffer_bits");
    }
  }

  void readScheduler(const YAML::Node& node) {
    section(node, "scheduler", [&](MapReader& r) {
      SchedulerSpec& s = job_.scheduler;
      r.getEnum("algorithm", s.algorithm,
                {"evolutionary", "in-order", "random", "exhaustive"});
      r.getEnum("cost_model", s.cost_model, {"geopipe", "dtfm"});
      section(r.child("budget"), "scheduler.budget", [&](MapReader& b) {
        b.getInt64("evaluations", s.budget_evaluations, 0, INT64_MAX);
        b.getDouble("seconds", s.budget_seconds, 0.0, 86400.0);
        if (s.budget_evaluations == 0 && s.budget_seconds == 0.0) {
          b.error("evaluations and seconds are both 0 (unlimited): the search "
                  "would never stop; set at least one of them");
        }
      });
      r.getUint64("seed", s.seed);
      r.getInt("threads", s.threads, 1, 256);
      section(r.child("payloads"), "scheduler.payloads", [&](MapReader& p) {
        // Up to 1 PB per message: more is a typo that prints 300-digit times.
        p.getOptionalDouble("grad_gb", s.grad_payload_gb, 0.0, 1e6, true);
        p.getOptionalDouble("act_gb", s.act_payload_gb, 0.0, 1e6, true);
      });
    });
  }

  void readTopologyField(MapReader& r) {
    YAML::Node t = r.child("topology");
    if (!t.IsDefined() || t.IsNull()) {
      assumeLocalTopology();
      return;
    }
    if (t.IsScalar() && t.Scalar().find('\0') != std::string::npos) {
      r.error("topology", t, kNulByteMessage);
      return;
    }
    if (t.IsScalar()) {
      if (const std::string problem = common::utf8Problem(t.Scalar()); !problem.empty()) {
        r.error("topology", t, kNotUtf8Message + problem);
        return;
      }
      std::string path = resolvePath(base_dir_, t.Scalar());
      std::string text;
      try {
        text = readTextFile(path, "topology file");
      } catch (const IoError& e) {
        r.error("topology", t,
                std::string(e.what()) + "; paths are relative to the job file's directory");
        return;
      }
      ReadContext tctx{path, ctx_.diagnostics};
      YAML::Node troot = parseYamlDocument(text, tctx);
      if (troot.IsDefined()) job_.topology = readTopology(troot, "", tctx);
      job_.topology.source = path;
    } else {
      job_.topology = readTopology(t, "topology", ctx_);
      job_.topology.source = ctx_.file + " (inline)";
    }
  }

  // No `topology:`: the job runs on this machine, one device per tasklet
  // (assumedLocalTopology). data_parallel: auto would choose the replicas
  // from the devices, which are sized by the replicas: it needs a topology.
  void assumeLocalTopology() {
    const ParallelismSpec& p = job_.parallelism;
    if (p.dataParallelAuto()) {
      fail("parallelism.data_parallel",
           "data_parallel: auto lets the scheduler choose the replicas from the topology's "
           "devices, but the job has no 'topology' (without one geopipe assumes a local "
           "device per tasklet, which leaves nothing to choose): give data_parallel a number, "
           "or add a topology (e.g. topology: ../topologies/local-4.yaml)");
      return;
    }
    const int64_t tasklets = int64_t{p.pipeline_stages} * p.data_parallel;
    if (tasklets > kMaxDevices) {
      fail("parallelism",
           "pipeline_stages x data_parallel = " + std::to_string(tasklets) +
               " tasklets, and without a 'topology' geopipe assumes a local device per "
               "tasklet, at most " +
               std::to_string(kMaxDevices) +
               ": lower data_parallel or pipeline_stages, or add a topology");
      return;
    }
    job_.topology = assumedLocalTopology(static_cast<int>(tasklets));
  }

  void readTransport(const YAML::Node& node) {
    section(node, "transport", [&](MapReader& r) {
      TransportSpec& t = job_.transport;
      r.getEnum("kind", t.kind, {"inproc", "grpc", "nccl"});
      r.getBool("emulate_links", t.emulate_links);
      r.getDouble("bandwidth_scale", t.bandwidth_scale, kMinBandwidthScale, kMaxBandwidthScale,
                  /*lo_exclusive=*/true);
      r.getDouble("latency_scale", t.latency_scale, 0.0, kMaxLatencyScale);
      r.getEnum("same_host", t.same_host, {"unix", "grpc"});
    });
  }

  void readCheckpoint(const YAML::Node& node) {
    section(node, "checkpoint", [&](MapReader& r) {
      CheckpointSpec& c = job_.checkpoint;
      r.getString("dir", c.dir);
      r.getInt("every_steps", c.every_steps, 0, kBig);
      r.getInt("keep", c.keep, 1, 1000);
      c.dir = resolvePath(base_dir_, c.dir);
      if (c.every_steps > 0 && c.dir.empty()) {
        r.error("every_steps is " + std::to_string(c.every_steps) +
                " but 'dir' is missing: name a directory for checkpoints");
      }
    });
  }

  void readLogging(const YAML::Node& node) {
    section(node, "logging", [&](MapReader& r) {
      LoggingSpec& l = job_.logging;
      r.getEnum("level", l.level, {"trace", "debug", "info", "warn", "error", "off"});
      r.getString("metrics_file", l.metrics_file);
      r.getInt("every_steps", l.every_steps, 1, kBig);
      l.metrics_file = resolvePath(base_dir_, l.metrics_file);
      // Output directories: a missing one is created when the run starts; a
      // file in its place (or under a file) can never become one.
      auto readDirectory = [&](const char* key, std::string& dir, const std::string& what) {
        r.getString(key, dir);
        dir = resolvePath(base_dir_, dir);
        std::error_code ec;
        for (fs::path p = dir; !p.empty(); p = p.parent_path()) {
          if (fs::exists(p, ec)) {
            if (!fs::is_directory(p, ec)) {
              r.error(key, r.child(key),
                      "'" + p.string() + "' is a file, not a directory: name a directory for " +
                          what + " (created if missing)");
            }
            break;
          }
          if (p == p.parent_path()) break;
        }
      };
      readDirectory("tensorboard_dir", l.tensorboard_dir, "the TensorBoard event files");
      readDirectory("trace_dir", l.trace_dir, "the timeline traces");
      // The live endpoint (docs/cli.md, "Live metrics endpoint"): 0 is off.
      r.getInt("metrics_port", l.metrics_port, 0, 65535);
      r.getString("metrics_host", l.metrics_host);
      if (r.has("metrics_host")) {
        if (l.metrics_host.empty()) {
          r.error("metrics_host", r.child("metrics_host"),
                  "is empty: name the address the metrics endpoint binds (127.0.0.1, the "
                  "default, keeps it on this machine; 0.0.0.0 serves every interface)");
        } else if (l.metrics_port == 0) {
          r.error("metrics_host", r.child("metrics_host"),
                  "is set but logging.metrics_port is 0 (no endpoint): set metrics_port to a "
                  "port in 1..65535, or remove metrics_host");
        }
      }
    });
  }

  void readFaultTolerance(const YAML::Node& node) {
    section(node, "fault_tolerance", [&](MapReader& r) {
      FaultToleranceSpec& f = job_.fault_tolerance;
      // Heartbeats go out every second at most, so a shorter timeout would
      // declare healthy workers dead.
      r.getDouble("heartbeat_timeout", f.heartbeat_timeout, 1.0, 3600.0);
      r.getInt("max_restarts", f.max_restarts, 0, 1000);
      r.getDouble("rejoin_timeout", f.rejoin_timeout, 1.0, 86400.0);
      r.getInt("min_replicas", f.min_replicas, 0, kBig);
      r.getDouble("link_grace", f.link_grace, 0.0, 3600.0);
      r.getBool("replan", f.replan);
      for (const char* key : {"replan_margin", "replan_budget"}) {
        if (r.has(key) && !f.replan) {
          r.error(key, r.child(key),
                  "is read only with fault_tolerance.replan: true; set replan: true or remove it");
        }
      }
      r.getDouble("replan_margin", f.replan_margin, 0.0, 0.9);
      r.getDouble("replan_budget", f.replan_budget, 0.1, 600.0);
    });
  }

  // The security section: TLS files (or plaintext) and the join token's
  // file. The files are checked here, so a bad one is reported by
  // `geopipe validate` with its field rather than as a failed handshake.
  void readSecurity(const YAML::Node& node) {
    if (!node.IsDefined()) return;
    const size_t errors_before = ctx_.diagnostics->size();
    SecuritySpec& s = job_.security;
    s.configured = true;
    section(node, "security", [&](MapReader& r) {
      r.getString("ca", s.ca);
      r.getString("cert", s.cert);
      r.getString("key", s.key);
      r.getString("token_file", s.token_file);
      YAML::Node ins = r.child("insecure");
      if (ins.IsDefined() && !ins.IsNull()) {
        const std::string v = ins.IsScalar() ? ins.Scalar() : "";
        if (v == "force") {
          s.insecure = s.insecure_remote = true;
        } else if (v == "true" || v == "yes" || v == "on") {
          s.insecure = true;
        } else if (v != "false" && v != "no" && v != "off") {
          r.error("insecure", ins,
                  "expected true (plaintext on loopback addresses only), false (TLS) or force "
                  "(plaintext on any address), found " +
                      describeNode(ins));
        }
      }
      s.ca = resolvePath(base_dir_, s.ca);
      s.cert = resolvePath(base_dir_, s.cert);
      s.key = resolvePath(base_dir_, s.key);
      s.token_file = resolvePath(base_dir_, s.token_file);
      if (s.insecure) {
        if (!s.ca.empty() || !s.cert.empty() || !s.key.empty()) {
          r.error("insecure", ins,
                  "insecure is set but so are TLS files (ca, cert, key): plaintext uses no "
                  "certificates; remove `insecure` to use TLS, or the file fields for plaintext");
        }
        return;
      }
      const std::pair<const char*, const std::string*> files[] = {
          {"ca", &s.ca}, {"cert", &s.cert}, {"key", &s.key}};
      for (const auto& [key, value] : files) {
        if (value->empty()) {
          r.error(key, YAML::Node(YAML::NodeType::Undefined),
                  std::string("missing: TLS needs ca, cert and key (PEM files; create them with "
                              "`geopipe certs DIR --host NAME`), or set insecure: true for "
                              "plaintext on loopback addresses"));
        }
      }
    });
    if (ctx_.diagnostics->size() != errors_before) return;
    if (!s.insecure) {
      security::TlsFiles files;
      files.ca = s.ca;
      files.cert = s.cert;
      files.key = s.key;
      for (const auto& p : security::checkTlsFiles(files)) fail(p.field, p.message);
    }
    if (!s.token_file.empty()) {
      const std::string problem = security::tokenFileProblem(s.token_file);
      if (!problem.empty()) fail("security.token_file", problem);
    }
  }

  void fail(const std::string& field, const std::string& message) {
    YAML::Node n = nodeAt(root_, field);
    ctx_.diagnostics->add(diagnosticAt(ctx_, n, field, message));
  }

  // Checks that relate several fields; run only on a spec without field
  // errors so the messages are about the user's real numbers.
  void crossCheck() {
    const ModelSpec& m = job_.model;
    const TrainingSpec& t = job_.training;
    const ParallelismSpec& p = job_.parallelism;
    if (m.hidden % m.heads != 0) {
      fail("model.heads", "hidden (" + std::to_string(m.hidden) +
                              ") must be divisible by heads (" +
                              std::to_string(m.heads) + ")");
    }
    if (p.data_parallel_sync.diloco() && job_.compression.gradients.method != "none") {
      fail("compression.gradients.method",
           "'" + job_.compression.gradients.method +
               "' compresses the every-step gradient exchange, which parallelism."
               "data_parallel_sync kind diloco replaces: compress the pseudo-gradient with "
               "parallelism.data_parallel_sync.compression instead");
    }
    if (p.data_parallel_sync.diloco() && job_.fault_tolerance.replan) {
      fail("fault_tolerance.replan",
           "a re-plan reshards the checkpoint by layer, and parallelism.data_parallel_sync kind "
           "diloco keeps its outer state per stage: remove replan (recovery then keeps the "
           "plan, shrinks or takes spares) or use kind: every_step");
    }
    if (p.data_parallel_sync.diloco() && job_.scheduler.cost_model == "dtfm") {
      fail("scheduler.cost_model",
           "dtfm prices the DT-FM paper's every-step gradient exchange, not "
           "parallelism.data_parallel_sync kind diloco: use cost_model: geopipe");
    }
    if (m.layers < p.pipeline_stages) {
      fail("parallelism.pipeline_stages",
           std::to_string(p.pipeline_stages) + " stages but the model has only " +
               std::to_string(m.layers) +
               " layers; each stage needs at least one layer: lower "
               "pipeline_stages or raise model.layers");
    }
    if (!validDevice(t.device)) {
      fail("training.device", "'" + t.device +
                                  "' is not a device: use cpu, cuda (one GPU per tasklet, "
                                  "round robin) or cuda:N");
    }
    const int devices = job_.topology.numDevices();
    if (p.dataParallelAuto()) {
      if (t.global_batch % t.micro_batch != 0) {
        fail("training.global_batch",
             "global_batch (" + std::to_string(t.global_batch) +
                 ") must be a multiple of micro_batch (" +
                 std::to_string(t.micro_batch) + ")");
      }
      if (devices > 0 && p.pipeline_stages > devices) {
        fail("parallelism.pipeline_stages",
             std::to_string(p.pipeline_stages) + " stages need at least as many "
             "devices, but topology '" + job_.topology.source + "' has " +
             std::to_string(devices));
      }
    } else {
      const int per_step = p.data_parallel * t.micro_batch;
      if (t.global_batch % per_step != 0) {
        fail("training.global_batch",
             "global_batch (" + std::to_string(t.global_batch) +
                 ") must be a multiple of data_parallel x micro_batch (" +
                 std::to_string(p.data_parallel) + " x " +
                 std::to_string(t.micro_batch) + " = " + std::to_string(per_step) +
                 ")");
      }
      const int64_t needed = int64_t{p.pipeline_stages} * p.data_parallel;
      if (devices > 0 && needed > devices) {
        fail("parallelism",
             "pipeline_stages x data_parallel = " + std::to_string(needed) +
                 " tasklets need as many devices, but topology '" +
                 job_.topology.source + "' has " + std::to_string(devices) +
                 ": lower data_parallel (or set it to auto) or add devices");
      }
    }
    if (const int min_dp = job_.fault_tolerance.min_replicas; min_dp > 0) {
      if (!p.dataParallelAuto() && min_dp > p.data_parallel) {
        fail("fault_tolerance.min_replicas",
             "min_replicas (" + std::to_string(min_dp) + ") exceeds data_parallel (" +
                 std::to_string(p.data_parallel) +
                 "): a job cannot shrink to more replicas than it has; lower min_replicas");
      } else if (t.global_batch % (min_dp * t.micro_batch) != 0) {
        fail("fault_tolerance.min_replicas",
             "global_batch (" + std::to_string(t.global_batch) + ") cannot be split over " +
                 std::to_string(min_dp) + " replicas of micro-batches of " +
                 std::to_string(t.micro_batch) +
                 ": choose a min_replicas that divides global_batch / micro_batch (" +
                 std::to_string(t.global_batch / t.micro_batch) + ")");
      }
    }
    resolveComputeRates();
    if (job_.scheduler.algorithm == "exhaustive" && devices > 12) {
      fail("scheduler.algorithm",
           "exhaustive search enumerates every allocation and is limited to 12 "
           "devices; this topology has " + std::to_string(devices) +
               ": use evolutionary");
    }
    checkLearningRates();
    checkScaledLinks();
    checkTensorSizes();
    checkData();
    checkActivationBuffers();
  }

  // The schedule decays from the peak lr down to min_lr: a floor above the
  // peak is a slip (1e-3 for 1e-5), never a schedule.
  void checkLearningRates() {
    const TrainingSpec& t = job_.training;
    if (t.lr_schedule.min_lr > t.optimizer.lr) {
      fail("training.lr_schedule.min_lr",
           "min_lr (" + formatNumber(t.lr_schedule.min_lr) +
               ") is above the peak learning rate training.optimizer.lr (" +
               formatNumber(t.optimizer.lr) +
               "); the schedule decays from lr down to min_lr: lower min_lr or raise lr");
    }
  }

  // The link emulator waits latency x latency_scale and sends at bandwidth x
  // bandwidth_scale, so the scaled links must stay within the topology's
  // ranges too: a bandwidth_scale of 1e-300 used to pass and make `train`
  // wait forever on its first message.
  void checkScaledLinks() {
    const TransportSpec& tr = job_.transport;
    const TopologySpec& topo = job_.topology;
    if (!tr.emulate_links) return;
    int slow_a = -1, slow_b = -1, far_a = -1, far_b = -1;
    for (int a = 0; a < topo.numSites(); ++a) {
      for (int b = 0; b < topo.numSites(); ++b) {
        if (a == b && topo.sites[a].devices.size() < 2) continue;  // no intra link in use
        const LinkSpec& l = topo.site_links[a][b];
        // exchangeGbps() <= bandwidth_gbps: the duplex rate when given.
        if (slow_a < 0 || l.exchangeGbps() < topo.site_links[slow_a][slow_b].exchangeGbps()) {
          slow_a = a, slow_b = b;
        }
        if (far_a < 0 || l.latency_ms > topo.site_links[far_a][far_b].latency_ms) {
          far_a = a, far_b = b;
        }
      }
    }
    if (slow_a < 0) return;  // one device: no link
    auto name = [&](int a, int b) {
      return a == b ? "inside site " + topo.sites[a].name
                    : topo.sites[a].name + " -> " + topo.sites[b].name;
    };
    const LinkSpec& slow = topo.site_links[slow_a][slow_b];
    const double gbps = slow.exchangeGbps();
    if (gbps * tr.bandwidth_scale < kMinBandwidthGbps) {
      fail("transport.bandwidth_scale",
           "bandwidth_scale " + formatNumber(tr.bandwidth_scale) + " makes the slowest link (" +
               name(slow_a, slow_b) + ", " +
               (slow.duplex_bandwidth_gbps > 0 ? "duplex_bandwidth_gbps " : "") +
               formatNumber(gbps) + " Gbps) " + formatNumber(gbps * tr.bandwidth_scale) +
               " Gbps, below the " + formatNumber(kMinBandwidthGbps) +
               " Gbps (1 kbit/s) an emulated link needs: use a bandwidth_scale of at least " +
               formatNumber(kMinBandwidthGbps / gbps) + ", or emulate_links: false");
    }
    const double ms = topo.site_links[far_a][far_b].latency_ms;
    if (ms * tr.latency_scale > kMaxLatencyMs) {
      fail("transport.latency_scale",
           "latency_scale " + formatNumber(tr.latency_scale) + " makes the longest link (" +
               name(far_a, far_b) + ", " + formatNumber(ms) + " ms) wait " +
               formatNumber(ms * tr.latency_scale / 60000.0) +
               " minutes one way, over the 10 minutes an emulated link may take: use a "
               "latency_scale of at most " +
               formatNumber(kMaxLatencyMs / ms) + ", or emulate_links: false");
    }
  }

  // Sizes the runtime multiplies and allocates: one micro-batch's tensors
  // and the embedding table. Refused here, naming the fields, rather than
  // overflowing or failing to allocate in the run.
  void checkTensorSizes() {
    const ModelSpec& m = job_.model;
    const int64_t mb = job_.training.micro_batch;
    struct Product {
      const char* field;  // the field the diagnostic names
      const char* what;
      const char* formula;
      const char* fix;
      std::vector<int64_t> factors;
    };
    const Product products[] = {
        {"training.micro_batch",
         "the activations of one micro-batch",
         "micro_batch x seq_len x hidden",
         "lower training.micro_batch, model.seq_len or model.hidden",
         {mb, m.seq_len, m.hidden}},
        {"training.micro_batch",
         "the MLP activations of one micro-batch",
         "micro_batch x seq_len x MLP width",
         "lower training.micro_batch, model.seq_len or the MLP width (ffn_mult, "
         "intermediate_size)",
         {mb, m.seq_len, m.ffnWidth()}},
        {"training.micro_batch",
         "the logits of one micro-batch",
         "micro_batch x seq_len x vocab",
         "lower training.micro_batch, model.seq_len or model.vocab",
         {mb, m.seq_len, m.vocab}},
        {"model.vocab",
         "the token embedding",
         "vocab x hidden",
         "lower model.vocab or model.hidden",
         {m.vocab, m.hidden}},
    };
    for (const Product& p : products) {
      int64_t elements = 1;
      bool overflow = false;
      std::string values;
      for (int64_t f : p.factors) {
        overflow = overflow || __builtin_mul_overflow(elements, f, &elements);
        values += (values.empty() ? "" : " x ") + std::to_string(f);
      }
      if (!overflow && elements <= kMaxTensorElements) continue;
      fail(p.field, std::string(p.what) + ", " + p.formula + " = " + values + " = " +
                        (overflow ? std::string("more than 2^63") : std::to_string(elements)) +
                        " elements, is over the 2^48 (1 PiB of fp32) a tensor may hold: " + p.fix);
      return;
    }
  }

  // A device whose topology gives tflops per dtype computes at the rate of
  // the job's model.dtype; a dtype it lacks is an error naming the device,
  // not a silent fallback to another dtype's rate.
  void resolveComputeRates() {
    const std::string& dtype = job_.model.dtype;
    std::vector<std::string> lacking;
    for (DeviceSpec& d : job_.topology.devices) {
      if (d.tflops_by_dtype.empty()) continue;
      const auto it = d.tflops_by_dtype.find(dtype);
      if (it != d.tflops_by_dtype.end()) {
        d.tflops = it->second;
        continue;
      }
      if (lacking.size() < 3) {
        std::string have;
        for (const auto& [k, v] : d.tflops_by_dtype) have += (have.empty() ? "" : ", ") + k;
        lacking.push_back("'" + d.name + "' (has " + have + ")");
      } else if (lacking.size() == 3) {
        lacking.push_back("...");
      }
    }
    if (lacking.empty()) return;
    std::string names;
    for (const std::string& l : lacking) names += (names.empty() ? "" : ", ") + l;
    fail("model.dtype", "the job computes in " + dtype + " but topology '" +
                            job_.topology.source + "' gives no " + dtype +
                            " tflops for device " + names + ": add " + dtype +
                            ": <rate> to their tflops mapping, or change model.dtype");
  }

  // AC-SGD's m(xi) stores against buffer_budget_gb and the topology's
  // memory, before the run (src/config/buffer_check.h). With data_parallel:
  // auto the stores depend on the shape `plan` picks, and plan checks them.
  void checkActivationBuffers() {
    if (job_.parallelism.dataParallelAuto() || !ctx_.diagnostics->empty()) return;
    const AcsgdBufferMemory m = acsgdBufferMemory(job_, job_.parallelism.data_parallel);
    const std::string budget = budgetProblem(m);
    if (!budget.empty()) fail("compression.activations.buffer_budget_gb", budget);
    const std::string memory = deviceMemoryProblem(m, job_.topology);
    if (!memory.empty()) fail("compression.activations.buffer_store", memory);
  }

  // data.tokenizer: only for text, a folder holding a tokenizer whose ids
  // all fit model.vocab. False when it is wrong (then data.path is not
  // checked: its messages would be about bytes the tokenizer changes).
  bool checkTokenizer() {
    const DataSpec& d = job_.data;
    if (d.tokenizer.empty()) return true;
    if (d.kind != "text") {
      fail("data.tokenizer",
           "kind '" + d.kind +
               "' does not tokenize; data.tokenizer is for kind text (the file "
               "is tokenized as it loads). Remove data.tokenizer" +
               (d.kind == "tokens" ? std::string(" (a token file is tokenized already: geopipe "
                                                 "tokenize writes one)")
                                   : std::string()) +
               " or set data.kind: text");
      return false;
    }
    std::unique_ptr<tokenizer::Tokenizer> tok;
    try {
      tok = tokenizer::loadTokenizer(d.tokenizer);
    } catch (const Error& e) {
      fail("data.tokenizer",
           std::string(e.what()) + " (paths are relative to the job file's directory)");
      return false;
    }
    if (!tok->eosId()) {
      fail("data.tokenizer", "tokenizer '" + d.tokenizer + "' (" + tok->kind() +
                                 ") has no end-of-text token to end the document with");
      return false;
    }
    if (tok->vocabSize() > job_.model.vocab) {
      fail("data.tokenizer",
           "data.tokenizer '" + d.tokenizer + "' (" + tok->kind() + ") has " +
               std::to_string(tok->vocabSize()) + " ids but model.vocab is " +
               std::to_string(job_.model.vocab) + ": ids >= " + std::to_string(job_.model.vocab) +
               " would have no embedding; set model.vocab: " + std::to_string(tok->vocabSize()) +
               " or more (preset gpt2-small has 50257)");
      return false;
    }
    return true;
  }

  void checkData() {
    const DataSpec& d = job_.data;
    if ((d.kind == "synthetic" || d.kind == "fortunes") && !d.path.empty()) {
      fail("data.path", "data.kind '" + d.kind + "' reads no file (" +
                            (d.kind == "synthetic" ? "it generates its samples"
                                                   : "it reads the installed fortunes texts") +
                            "), so data.path would be ignored: remove data.path, or set "
                            "data.kind: text (a text file) or tokens (a token file)");
    }
    if (d.kind == "synthetic") {
      try {
        data::countTrainSamples(d, job_.model);  // the size check of the generator itself
      } catch (const ConfigError& e) {
        fail("data.num_samples", e.what());
      }
    }
    if (!checkTokenizer()) return;
    const std::string text_problem = data::tokenizedTextProblem(d);
    if (!text_problem.empty()) fail("data.path", text_problem);
    if (!d.pack) {
      const std::string problem = data::unpackedDataProblem(d, job_.model);
      if (!problem.empty()) {
        fail("data.pack", "pack: false cuts samples at document ends, but " + problem +
                              "; or set data.pack: true");
      }
    }
    if (job_.training.eval_every > 0 && !d.hasValidation()) {
      fail("training.eval_every",
           "eval_every is " + std::to_string(job_.training.eval_every) +
               " but the data has no validation set: set data.val_path (a file like "
               "data.path) or data.val_fraction (the last whole samples held out)");
    }
    if (!d.val_path.empty()) {
      if (d.kind != "text" && d.kind != "tokens") {
        fail("data.val_path", "data.kind '" + d.kind +
                                  "' has no file to pair a validation file with; use "
                                  "data.val_fraction to hold out samples");
      } else {
        checkDataFile("data.val_path", d.val_path);
      }
    }
    if (d.kind == "text" || d.kind == "tokens") {
      if (d.path.empty()) {
        fail("data.kind", "kind '" + d.kind + "' needs data.path (a " +
                              (d.kind == "text" ? "text file" : "token file") + ")");
        return;
      }
      checkDataFile("data.path", d.path);
    }
  }

  // A text or token file of data.kind: exists, a whole number of tokens,
  // at least one sample.
  void checkDataFile(const std::string& field, const std::string& path) {
    const DataSpec& d = job_.data;
    std::error_code ec;
    if (const std::string problem = common::regularFileProblem(path); !problem.empty()) {
      // Say what is there: "no such file" for /dev/zero or a directory sent
      // users looking for a typo.
      const std::string file = d.kind == "text" ? "a text file" : "a token file";
      fail(field, problem == "does not exist"
                      ? "no such file '" + common::printable(path) +
                            "'; paths are relative to the job file's directory"
                      : "'" + common::printable(path) + "' " + problem + ": name " + file +
                            " (paths are relative to the job file's directory)");
      return;
    }
    const uint64_t bytes = fs::file_size(path, ec);
    const uint64_t width = d.kind == "text" ? 1 : (d.token_dtype == "uint16" ? 2 : 4);
    if (d.kind == "tokens" && bytes % width != 0) {
      fail(field, "'" + path + "' has " + std::to_string(bytes) + " bytes, not a multiple of " +
                      std::to_string(width) + " (token_dtype " + d.token_dtype +
                      "); is token_dtype right?");
      return;
    }
    // With a tokenizer, the tokens are counted when the data loads (a
    // normalizer can make more tokens than bytes); TokenDataset refuses
    // too few there.
    const uint64_t need = uint64_t(job_.model.seq_len + 1) * width;
    if (d.tokenizer.empty() && bytes < need) {
      fail(field, "'" + path + "' holds " + std::to_string(bytes / width) +
                      " tokens, fewer than one sample needs (seq_len + 1 = " +
                      std::to_string(job_.model.seq_len + 1) + ")");
    }
  }

  YAML::Node root_;
  ReadContext ctx_;
  std::string base_dir_;
  JobSpec job_;
};

}  // namespace

const char* const* modelPresetNames() { return kPresets; }

JobSpec parseJobString(const std::string& yaml, const std::string& source,
                       const std::string& base_dir) {
  Diagnostics diags;
  ReadContext ctx{source, &diags};
  YAML::Node root = parseYamlDocument(yaml, ctx);
  JobSpec job;
  if (root.IsDefined()) job = JobReader(root, ctx, base_dir).read();
  diags.throwIfAny();
  job.source = source;
  return job;
}

JobSpec loadJobFile(const std::string& path) {
  std::string text = readTextFile(path, "job file");
  std::string base = fs::path(path).parent_path().string();
  return parseJobString(text, path, base);
}

namespace {

// "training.optimizer.lr=1e-3" -> path and value; SpecError when malformed.
struct Override {
  std::string text;  // as given, for messages
  std::vector<std::string> path;
  std::string dotted;
  std::string value;
};

[[noreturn]] void refuseOverride(const std::string& text, const std::string& message) {
  Diagnostic d;
  d.file = "--set " + text;
  d.message = message;
  throw SpecError({d});
}

Override splitOverride(const std::string& text) {
  Override o;
  o.text = text;
  const size_t eq = text.find('=');
  if (eq == std::string::npos) {
    refuseOverride(text, "expected path.to.field=value, e.g. --set training.steps=200");
  }
  o.dotted = text.substr(0, eq);
  o.value = text.substr(eq + 1);
  size_t start = 0;
  while (true) {
    const size_t dot = o.dotted.find('.', start);
    const std::string part = o.dotted.substr(start, dot == std::string::npos ? dot : dot - start);
    if (part.empty()) {
      refuseOverride(text, "the path '" + o.dotted +
                               "' has an empty part: name the field as in the job file, "
                               "sections joined by '.', e.g. training.optimizer.lr");
    }
    o.path.push_back(part);
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return o;
}

// Whether a diagnostic of `field` is about what override `o` wrote: the
// field itself, inside it, or a section on its path that is unknown.
bool concerns(const Override& o, const std::string& field) {
  if (field.empty()) return false;
  auto under = [](const std::string& a, const std::string& b) {  // a inside b
    return a.size() > b.size() && a.compare(0, b.size(), b) == 0 && a[b.size()] == '.';
  };
  return field == o.dotted || under(field, o.dotted) || under(o.dotted, field);
}

// Every field path a job can have ("training.optimizer.lr"), from the
// resolved YAML of jobs that together print every field.
std::vector<std::string> knownFieldPaths() {
  std::vector<JobSpec> jobs(3);
  jobs[1].model.kind = "llama";
  jobs[1].model.bos_token_id = 0;
  jobs[1].model.eos_token_ids = {0};
  jobs[1].data = {"tokens", "p", "t", "uint16", 0, "v", 0.0, true};
  jobs[1].compression.activations.method = "acsgd";
  jobs[1].compression.activations.buffer_format = "quantized";
  jobs[1].compression.activations.buffer_dir = "d";
  jobs[1].scheduler.grad_payload_gb = jobs[1].scheduler.act_payload_gb = 1.0;
  jobs[1].checkpoint.dir = "c";
  jobs[1].logging.metrics_file = "m";
  jobs[1].logging.tensorboard_dir = "b";
  jobs[1].logging.trace_dir = "t";
  jobs[1].security = {true, "a", "b", "c", "d", false, false};
  jobs[0].model.from = "f";
  jobs[2].model.kind = "custom";  // the shape fields and name
  jobs[2].model.name = "n";
  std::vector<std::string> paths;
  std::function<void(const YAML::Node&, const std::string&)> walk = [&](const YAML::Node& n,
                                                                        const std::string& at) {
    if (!n.IsMap()) return;
    for (auto it = n.begin(); it != n.end(); ++it) {
      const std::string path = at.empty() ? it->first.Scalar() : at + "." + it->first.Scalar();
      if (std::find(paths.begin(), paths.end(), path) == paths.end()) paths.push_back(path);
      if (path != "topology") walk(it->second, path);
    }
  };
  for (const JobSpec& job : jobs) walk(YAML::Load(resolvedJobYaml(job)), "");
  return paths;
}

// For an override of a field that does not exist: the field path it most
// likely means, whole ("training.lr" -> "training.optimizer.lr"): one that
// ends the same way (the closest of those), else the closest; "" when none
// is close.
std::string closestFieldPath(const std::string& dotted) {
  static const std::vector<std::string> kPaths = knownFieldPaths();
  const std::string last = "." + dotted.substr(dotted.rfind('.') + 1);
  std::string best;
  for (const std::string& p : kPaths) {
    if (p != dotted && p.size() > last.size() &&
        p.compare(p.size() - last.size(), std::string::npos, last) == 0 &&
        (best.empty() || common::editDistance(dotted, p) < common::editDistance(dotted, best))) {
      best = p;
    }
  }
  if (!best.empty()) return best;
  const std::string close = common::closestMatch(dotted, kPaths);
  return close == dotted ? "" : close;
}

}  // namespace

void applyOverrides(YAML::Node& root, const std::vector<std::string>& overrides) {
  if (overrides.empty()) return;
  if (!root.IsDefined() || root.IsNull()) root.reset(YAML::Node(YAML::NodeType::Map));
  for (const std::string& text : overrides) {
    const Override o = splitOverride(text);
    YAML::Node value;
    try {
      value = o.value.empty() ? YAML::Node(YAML::NodeType::Null) : YAML::Load(o.value);
    } catch (const YAML::Exception& e) {
      refuseOverride(text, "the value '" + o.value + "' is not YAML (" + e.msg +
                               "): quote it for the shell, e.g. --set 'name=my job'");
    }
    if (!root.IsMap()) refuseOverride(text, "the job's top level is not a mapping");
    YAML::Node node = root;
    std::string walked;
    for (size_t i = 0; i + 1 < o.path.size(); ++i) {
      walked += (walked.empty() ? "" : ".") + o.path[i];
      YAML::Node next = node[o.path[i]];
      if (!next.IsDefined() || next.IsNull()) {
        node[o.path[i]] = YAML::Node(YAML::NodeType::Map);
        next.reset(node[o.path[i]]);
      } else if (!next.IsMap()) {
        refuseOverride(text, walked + " is " + describeNode(next) +
                                 " in the job, not a section with fields: set " + walked +
                                 " itself, e.g. --set " + walked + "=...");
      }
      node.reset(next);
    }
    node[o.path.back()] = value;
  }
}

JobSpec parseJobString(const std::string& yaml, const std::string& source,
                       const std::string& base_dir, const std::vector<std::string>& overrides) {
  if (overrides.empty()) return parseJobString(yaml, source, base_dir);
  Diagnostics diags;
  ReadContext ctx{source, &diags};
  YAML::Node root = parseYamlDocument(yaml, ctx);
  diags.throwIfAny();
  applyOverrides(root, overrides);
  JobSpec job = JobReader(root, ctx, base_dir).read();
  if (diags.empty()) {
    job.source = source;
    return job;
  }
  // Name the override that wrote a field instead of a line of the file.
  std::vector<Diagnostic> items = diags.items();
  for (Diagnostic& d : items) {
    for (auto it = overrides.rbegin(); it != overrides.rend(); ++it) {  // the last one wins
      const Override o = splitOverride(*it);
      if (concerns(o, d.field)) {
        d.file = "--set " + *it;
        d.line = 0;
        d.column = 0;
        if (d.message.rfind("unknown key", 0) == 0) {
          if (const std::string path = closestFieldPath(o.dotted); !path.empty()) {
            d.message += "; the field is probably " + path + ": --set " + path + "=" + o.value;
          }
        }
        break;
      }
    }
  }
  throw SpecError(items);
}

JobSpec loadJobFile(const std::string& path, const std::vector<std::string>& overrides) {
  std::string text = readTextFile(path, "job file");
  std::string base = fs::path(path).parent_path().string();
  return parseJobString(text, path, base, overrides);
}

}  // namespace geopipe::config
