// Model profile: per-layer parameters, FLOPs, activation sizes and the bytes
// each payload costs on the wire after the job's configured compression.
#pragma once

#include <cstdint>
#include <vector>

#include "geopipe/job_spec.h"

namespace geopipe::scheduler {

// One pipeline-cuttable layer (a transformer block). FLOPs are per sample.
struct LayerProfile {
  double params = 0;         // parameters of the block
  double fwd_flops = 0;      // forward FLOPs per sample
  double bwd_flops = 0;      // backward FLOPs per sample (2x forward)
  double act_mem_bytes = 0;  // activations kept for backward, per sample
  double vector_params = 0;  // of `params`: in 1-D tensors (biases, norms)
};

// How the runtime's GradientSync exchanges a stage's gradients among its
// replicas, by compression.gradients.method (src/runtime/gradient_sync.cc,
// src/transport/collectives.h):
//  RING_ALL_REDUCE  none: fp32 ring all-reduce; each member sends
//                   2(D-1)/D of the stage's bytes over 2(D-1) ring hops.
//  ALL_GATHER       fp16 | quantize | topk: each member compresses and sends
//                   its whole blob to each of the D-1 others directly (one
//                   hop, all links at once), (D-1)·blob bytes per member.
//  POWERSGD         1-D tensors (biases, norms) by the fp32 ring, the
//                   matrices' factors P then Q by two all-gathers.
enum class GradExchange { RING_ALL_REDUCE, ALL_GATHER, POWERSGD };

// The bytes of one stage's data-parallel exchange (per member).
struct DpBytes {
  double ring_bytes = 0;    // fp32 values all-reduced by the ring
  double gather_bytes = 0;  // this member's blob(s) of the all-gather(s)
  int gathers = 0;          // all-gathers in a row (PowerSGD: P then Q)
  // What one member sends in a step with d replicas.
  double sentBytes(int d) const {
    return d < 2 ? 0 : 2.0 * (d - 1) / d * ring_bytes + (d - 1) * gather_bytes;
  }
};

// AC-SGD's m(xi) stores of one tasklet for the shape being priced
// (compression.activations.method: acsgd; docs/compression.md): one at
// either end of the pipeline, two in the middle, all alike. Their size comes
// from the data (config::acsgdBufferMemory), so plan() takes them from its
// caller, shape by shape; all zero: not charged.
struct AcsgdStores {
  double store_bytes = 0;   // bytes one store holds over the run
  double budget_bytes = 0;  // buffer_budget_gb: every store's own limit; 0: none
  bool in_memory = false;   // buffer_store: memory, charged with the stage's memory
  // m(xi) stores of stage s of p (0 with one stage: no boundary).
  static int storesAt(int s, int p) { return p < 2 ? 0 : (s == 0 || s == p - 1 ? 1 : 2); }
};

// Everything the cost models need to know about the model and the batch.
// Built from a JobSpec by ModelProfile::fromJob; plain data afterwards.
struct ModelProfile {
  std::vector<LayerProfile> layers;
  double embed_params = 0;     // token + position embedding (first stage)
  double head_params = 0;      // final norm + LM head (last stage)
  double head_vector_params = 0;  // of head_params: the final norm's
  // A tied embedding and head on different stages (model.kind gpt2, or
  // tie_embeddings): after the data-parallel exchange the first and last
  // stage of each replica sum the weight's two fp32 gradients with a
  // two-member ring all-reduce (Tasklet::sumTiedGradients), each sending
  // tied_params·4 bytes. 0: untied.
  double tied_params = 0;
  double head_flops = 0;       // LM head forward+backward FLOPs per sample
  int micro_batch = 1;         // samples per micro-batch
  int global_batch = 1;        // samples per step across replicas
  // Bytes on the wire per sample at one stage boundary, after compression.
  double act_fwd_wire_bytes = 0;  // forward activations (AC-SGD / direct / fp16)
  double act_bwd_wire_bytes = 0;  // backward activation gradients
  // Data-parallel gradient exchange: how, and the bytes per parameter of
  // what it sends (ring: fp32 values; all-gather: a member's blob, scales
  // included; PowerSGD: the factors, per parameter of the matrices).
  GradExchange grad_exchange = GradExchange::RING_ALL_REDUCE;
  double grad_wire_bytes_per_param = 4;
  // Scalar all-reduces every step (allReduceScalarSum: 8 bytes to every
  // other member, one latency): the global gradient norm over a replica's
  // stages after the exchanges (training.grad_clip > 0); fp16's overflow
  // flag over the stages, then over the stage's replicas, before them.
  bool norm_sync = false;
  bool overflow_sync = false;
  // parallelism.data_parallel_sync kind diloco: the exchange above carries
  // the pseudo-gradient once every `outer_every` steps (H) after the
  // optimizer step, not every step behind the backward drain; with
  // `outer_overlap` it runs behind the next round's steps. fp16's flag then
  // stays inside a replica. outer_every 0: every-step sync.
  int outer_every = 0;
  bool outer_overlap = false;
  // Bytes per value of model.dtype (fp32 4, bf16/fp16 2): what the runtime
  // computes in and, with method none, sends between stages.
  int dtype_bytes = 4;
  double state_bytes_per_param = 16;     // weights + grads + optimizer state
  AcsgdStores acsgd;                     // AC-SGD buffers (set per shape by plan())

  // Sums over a half-open layer range [first, last).
  double params(int first, int last) const;
  double flopsPerSample(int first, int last) const;  // forward + backward
  double actMemPerSample(int first, int last) const;
  double vectorParams(int first, int last) const;
  // The data-parallel exchange of a stage holding `params` parameters of
  // which `vector_params` are in 1-D tensors.
  DpBytes dpBytes(double params, double vector_params) const;
  int numLayers() const { return static_cast<int>(layers.size()); }

  // GPT-style decoder from the job's model, training and compression specs.
  // Throws ConfigError for shapes it cannot profile (layers < 1, ...).
  static ModelProfile fromJob(const JobSpec& job);
};

}  // namespace geopipe::scheduler
