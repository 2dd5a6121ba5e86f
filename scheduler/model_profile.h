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
  double head_flops = 0;       // LM head forward+backward FLOPs per sample
  int micro_batch = 1;         // samples per micro-batch
  int global_batch = 1;        // samples per step across replicas
  // Bytes on the wire per sample at one stage boundary, after compression.
  double act_fwd_wire_bytes = 0;  // forward activations (AC-SGD / direct / fp16)
  double act_bwd_wire_bytes = 0;  // backward activation gradients
  double grad_wire_bytes_per_param = 4;  // data-parallel gradient exchange
  double state_bytes_per_param = 16;     // weights + grads + optimizer state
  AcsgdStores acsgd;                     // AC-SGD buffers (set per shape by plan())

  // Sums over a half-open layer range [first, last).
  double params(int first, int last) const;
  double flopsPerSample(int first, int last) const;  // forward + backward
  double actMemPerSample(int first, int last) const;
  int numLayers() const { return static_cast<int>(layers.size()); }

  // GPT-style decoder from the job's model, training and compression specs.
  // Throws ConfigError for shapes it cannot profile (layers < 1, ...).
  static ModelProfile fromJob(const JobSpec& job);
};

}  // namespace geopipe::scheduler
