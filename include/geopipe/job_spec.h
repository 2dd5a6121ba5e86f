// Typed job spec: what a job YAML file says, with every default filled in.
// Plain structs shared by the CLI, the scheduler and the runtime; parsing and
// validation live in src/config/ (see docs/job-spec.md for every field).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "geopipe/topology.h"

namespace geopipe {

// The scheduler's price of one layer of a model that gives its own
// (ModelDef::cost) instead of being priced as a GPT.
struct LayerCost {
  double params = 0;     // parameters (weights, gradients, optimizer state priced from them)
  double fwd_flops = 0;  // forward FLOPs per sample; backward is priced at twice this
  double act_bytes = 0;  // activation bytes kept for backward, per sample
};

// A model's own cost, as the scheduler reads it: the body layers it
// balances across stages, and the prologue and epilogue layers (summed)
// pinned to the first and the last stage.
struct ModelCost {
  std::vector<LayerCost> body;  // one per body layer; empty: priced as a GPT
  LayerCost prologue;
  LayerCost epilogue;
  bool empty() const { return body.empty(); }
};

// The network to train. `kind: gpt` is the built-in GPT (byte-level by
// default, untied head, exact GELU, positions sized by seq_len); `gpt2` and
// `llama` are the Hugging Face architectures of those names, built from these
// fields or imported from a model folder (`from`); `custom` is a model
// registered through the C++ API under `name`. docs/models.md.
struct ModelSpec {
  std::string kind = "gpt";     // gpt | gpt2 | llama | custom
  std::string preset = "tiny";  // tiny | gpt2-small | gpt3-xl | none
  std::string name;             // registered model name when kind == custom
  // kind custom: a model plugin, a shared library that registers models
  // (docs/cpp-api.md, "Model plugins"), loaded before the model is built.
  // The parser makes it absolute (relative to the job file's directory).
  std::string plugin;
  // kind custom: free-form settings for the model's factory, each the text
  // of a YAML scalar (the factory parses what it reads).
  std::map<std::string, std::string> options;
  // Not read from YAML: a custom model's own cost (ModelDef::cost), set by
  // the runtime from the model before it plans (runtime::applyModelCost).
  // Empty: the scheduler prices the model as a GPT of the fields above.
  ModelCost cost;
  // A Hugging Face model folder (config.json + model.safetensors, or shards
  // and model.safetensors.index.json) whose shape and weights the job uses
  // (gpt2 | llama). With it, config.json supplies the shape.
  std::string from;
  int layers = 4;               // transformer blocks (pipeline-cuttable units)
  int hidden = 128;             // model width d
  int heads = 4;                // attention heads; hidden % heads == 0
  int seq_len = 128;            // tokens per training sample
  int vocab = 256;              // vocabulary size (256 for byte-level text)
  int ffn_mult = 4;             // MLP width = ffn_mult * hidden (unless intermediate_size)
  double dropout = 0.0;         // dropout probability (0 keeps runs exact)
  std::string dtype = "fp32";   // compute dtype: fp32 | fp16 | bf16
  // Family fields (gpt2 | llama); 0 / unset means the family's default.
  int num_key_value_heads = 0;  // llama grouped-query attention; 0 = heads
  double rope_theta = 10000.0;  // llama rotary base
  double norm_eps = 0.0;        // 0 = 1e-5 (gpt2 LayerNorm) or 1e-6 (llama RMSNorm)
  int intermediate_size = 0;    // MLP width; 0 = ffn_mult * hidden
  int tie_embeddings = -1;      // -1 = family default (gpt2 tied, llama untied), 0, 1
  int max_positions = 0;        // longest sequence; 0 = seq_len (gpt2 learned positions)
  // From config.json or the job, for generation: the id that starts a
  // text (-1 = none) and the ids that end one (config.json may list several).
  int64_t bos_token_id = -1;
  std::vector<int64_t> eos_token_ids;

  bool isFamily() const { return kind == "gpt2" || kind == "llama"; }
  int kvHeads() const { return num_key_value_heads > 0 ? num_key_value_heads : heads; }
  int ffnWidth() const { return intermediate_size > 0 ? intermediate_size : ffn_mult * hidden; }
  double normEps() const { return norm_eps > 0 ? norm_eps : (kind == "llama" ? 1e-6 : 1e-5); }
  bool tiedEmbeddings() const {
    return tie_embeddings >= 0 ? tie_embeddings == 1 : kind == "gpt2";
  }
  int maxPositions() const { return max_positions > 0 ? max_positions : seq_len; }
};

// Where training samples come from.
struct DataSpec {
  std::string kind = "synthetic";  // text | tokens | fortunes | synthetic
  std::string path;                // file for text | tokens
  // text only: a tokenizer folder (docs/data.md); the file is one document,
  // tokenized as it loads. Empty: the text's bytes are the tokens (vocab 256).
  std::string tokenizer;
  std::string token_dtype = "uint16";  // tokens: uint16 | uint32
  int64_t num_samples = 0;         // 0 = as many as the data holds
  // Validation set (training.eval_every): a file of the same kind as `path`
  // (text | tokens), or the last whole samples of the data held out.
  std::string val_path;
  double val_fraction = 0.0;       // in [0, 1); 0 = none held out
  // true: samples are cut from the stream across document boundaries (as
  // nanoGPT). false: a sample never crosses a document's end; the last one
  // of a document is padded, the padding left out of the loss (docs/data.md).
  bool pack = true;
  bool hasValidation() const { return !val_path.empty() || val_fraction > 0; }
};

struct OptimizerSpec {
  std::string kind = "adamw";  // adamw | sgd
  double lr = 3e-4;            // peak learning rate
  double beta1 = 0.9;          // AdamW first-moment decay
  double beta2 = 0.95;         // AdamW second-moment decay
  double eps = 1e-8;           // AdamW denominator epsilon
  double weight_decay = 0.0;   // decoupled weight decay
  double momentum = 0.0;       // SGD momentum
};

struct LrScheduleSpec {
  std::string kind = "constant";  // constant | cosine | linear
  int warmup_steps = 0;           // linear warm-up from 0 to lr
  double min_lr = 0.0;            // floor of cosine / linear decay
};

struct TrainingSpec {
  int steps = 100;          // optimizer steps
  int global_batch = 8;     // samples per step across all replicas
  int micro_batch = 1;      // samples per micro-batch per replica
  OptimizerSpec optimizer;
  LrScheduleSpec lr_schedule;
  double grad_clip = 0.0;   // global-norm clipping; 0 disables
  uint64_t seed = 1234;     // model init, data order, stochastic rounding
  // Validation loss every this many steps (and after the last step) when
  // the data has a validation set; 0 = only after the last step.
  int eval_every = 0;
  // Where tasklets compute: "cpu", "cuda" (tasklet rank r on cuda:(r % the
  // visible devices)) or "cuda:N". CUDA needs a CUDA-enabled LibTorch.
  std::string device = "cpu";
};

// Data-parallel gradient exchange.
struct GradientCompressionSpec {
  std::string method = "none";  // none | fp16 | quantize | topk | powersgd
  int bits = 8;                 // quantize: 1..8
  double ratio = 0.01;          // topk: fraction of entries kept, (0, 1]
  int rank = 4;                 // powersgd: rank r >= 1
  bool error_feedback = true;   // carry the residual into the next step
};

// DiLoCo's outer optimizer: applied to the replicas' averaged
// pseudo-gradient (parameters at the last sync minus now) every H steps.
struct OuterOptimizerSpec {
  std::string kind = "nesterov";  // nesterov | sgd (sgd: heavy-ball momentum, 0 = plain)
  double lr = 0.7;
  double momentum = 0.9;
};

// How the replicas of a stage keep their weights together.
//   every_step: average the gradients every step (compression.gradients).
//   diloco: H inner steps with the normal optimizer, each replica alone,
//     then average the pseudo-gradient (compressed with `compression` and
//     error feedback) and take one outer optimizer step; overlap applies
//     each outer step one round late, so its exchange runs behind the next
//     round's H inner steps (docs/job-spec.md "data_parallel_sync").
struct DataParallelSyncSpec {
  std::string kind = "every_step";  // every_step | diloco
  int inner_steps = 100;            // H (diloco)
  OuterOptimizerSpec outer_optimizer;
  GradientCompressionSpec compression;  // of the pseudo-gradient (diloco)
  bool overlap = false;
  bool diloco() const { return kind == "diloco"; }
};

// How tasklets are laid out: D_pp stages x D_dp replicas.
struct ParallelismSpec {
  int pipeline_stages = 1;         // D_pp
  int data_parallel = 1;           // D_dp; 0 means `auto` (the scheduler picks)
  std::string schedule = "1f1b";   // gpipe | 1f1b
  DataParallelSyncSpec data_parallel_sync;
  bool dataParallelAuto() const { return data_parallel == 0; }
};

// Forward activations between stages.
struct ActivationCompressionSpec {
  std::string method = "none";         // none | fp16 | acsgd | direct
  int bits = 4;                        // 1..8 for acsgd | direct
  std::string granularity = "channel"; // tensor | channel | group
  int group_size = 128;                // elements per group (granularity group)
  std::string rounding = "nearest";    // nearest | stochastic
  std::string buffer_store = "memory"; // memory | mmap (AC-SGD m(xi) buffers)
  std::string buffer_dir;              // directory for mmap buffers
  double buffer_budget_gb = 4.0;       // byte budget of each buffer store (GiB)
  std::string buffer_format = "fp16";  // fp16 | quantized: how m(xi) is stored
  int buffer_bits = 8;                 // quantized: bits per stored element, 1..8
};

// Backward activation gradients between stages.
struct BackwardCompressionSpec {
  std::string method = "none";         // none | fp16 | quantize
  int bits = 8;                        // 1..8 for quantize
  std::string granularity = "channel"; // tensor | channel | group
  int group_size = 128;
  std::string rounding = "nearest";    // nearest | stochastic
};

struct CompressionSpec {
  ActivationCompressionSpec activations;
  BackwardCompressionSpec backward;
  GradientCompressionSpec gradients;
};

struct SchedulerSpec {
  std::string algorithm = "evolutionary";  // evolutionary | in-order | random | exhaustive
  std::string cost_model = "geopipe";      // geopipe | dtfm
  int64_t budget_evaluations = 150000;     // candidate evaluations; 0 = unlimited
  double budget_seconds = 3.0;             // wall-clock cap; 0 = unlimited
  uint64_t seed = 1;                       // search seed (deterministic)
  int threads = 1;                         // worker threads for the search
  // Payload overrides for cost_model dtfm, in GB (the paper's c_grad and
  // c_act); unset means derive them from the model profile.
  std::optional<double> grad_payload_gb;
  std::optional<double> act_payload_gb;
};

struct TransportSpec {
  std::string kind = "inproc";   // inproc | grpc | nccl
  bool emulate_links = true;     // shape each link to the topology
  double bandwidth_scale = 1.0;  // multiply every bandwidth (CPU-sized runs)
  double latency_scale = 1.0;    // multiply every latency
  // How worker processes on one host reach each other: "unix" (a Unix
  // socket, no TLS/HTTP2/TCP; docs/transport.md "Same-host path") or
  // "grpc" (the same gRPC streams as between hosts).
  std::string same_host = "unix";
};

struct CheckpointSpec {
  std::string dir;       // empty disables checkpoints
  int every_steps = 0;   // 0 disables periodic checkpoints
  int keep = 2;          // committed checkpoints to keep
};

// What the coordinator does when a worker dies, hangs or is cut off
// (docs/operations.md, "Failure handling").
struct FaultToleranceSpec {
  double heartbeat_timeout = 10.0;  // seconds of silence before a worker counts as dead
  int max_restarts = 3;             // automatic recoveries per run; 0: a failure ends the job
  double rejoin_timeout = 60.0;     // seconds to wait for every tasklet's worker after a failure
  // Fewest data-parallel replicas the job may continue with when a lost
  // worker is not replaced within rejoin_timeout (the global batch stays
  // the same, split over fewer replicas). 0 (the default): never shrink.
  int min_replicas = 0;
  // Seconds a broken connection between two workers may take to come back:
  // the sender reconnects and resends what the receiver has not
  // acknowledged, so a shorter blip costs no restart and changes no result.
  // 0: a broken connection fails the generation at once.
  double link_grace = 30.0;
  // Elastic re-planning (coordinator): when the live devices change (a lost
  // worker nobody replaces within rejoin_timeout, or idle spares at a
  // checkpoint commit), run the scheduler on the devices that are there and
  // commit a new shape and placement when its predicted step beats the
  // degraded plan's by replan_margin; every tasklet reshards by layer.
  bool replan = false;
  double replan_margin = 0.10;  // 0..0.9: the new plan must be this much faster
  double replan_budget = 5.0;   // seconds the re-plan's search may take
};

struct LoggingSpec {
  std::string level = "info";  // trace | debug | info | warn | error | off
  std::string metrics_file;    // JSON lines, one per step; empty disables
  int every_steps = 1;         // progress line period
  // TensorBoard event file directory (created if needed); empty disables.
  // Written by the process that shows the progress line (train, launch,
  // coordinator).
  std::string tensorboard_dir;
  // Chrome-trace timeline directory (created if needed); empty disables.
  // Every tasklet writes trace-stage<S>-replica<R>.json there: the in-process
  // Trainer's threads, and under launch / coordinator each worker process
  // on its own host.
  std::string trace_dir;
  // Prometheus text endpoint (GET /metrics) of the process that shows the
  // progress line (train, launch, coordinator); 0 disables, else 1..65535.
  int metrics_port = 0;
  // Address the endpoint binds: loopback unless the job says otherwise (the
  // coordinator may be reachable from the internet).
  std::string metrics_host = "127.0.0.1";
};

// How the job's gRPC links (coordinator and peers) are secured; see
// docs/operations.md#security-model. Paths are resolved against the job
// file's directory. The token itself never appears here, only its file.
struct SecuritySpec {
  bool configured = false;       // the job has a `security:` section
  std::string ca;                // PEM CA certificate(s) every host's certificate is signed by
  std::string cert;              // the coordinator host's certificate, PEM
  std::string key;               // its private key, PEM, mode 600
  std::string token_file;        // the join token; empty: the GEOPIPE_JOB_TOKEN variable
  bool insecure = false;         // plaintext gRPC (`insecure: true`), loopback addresses only
  bool insecure_remote = false;  // `insecure: force`: plaintext on any address
};

struct JobSpec {
  std::string name;
  std::string source;  // path of the job file
  ModelSpec model;
  DataSpec data;
  TrainingSpec training;
  ParallelismSpec parallelism;
  CompressionSpec compression;
  SchedulerSpec scheduler;
  TopologySpec topology;
  TransportSpec transport;
  CheckpointSpec checkpoint;
  LoggingSpec logging;
  FaultToleranceSpec fault_tolerance;
  SecuritySpec security;

  // Micro-batches per step for one replica: global_batch / (D_dp * micro_batch).
  int microBatchesPerReplica(int data_parallel) const {
    return training.global_batch / (data_parallel * training.micro_batch);
  }
};

}  // namespace geopipe
