// GPT profile: parameter and FLOP counts per block, activation memory after
// Korthikanti et al., and wire bytes after the configured compression.
#include "scheduler/model_profile.h"

#include <algorithm>

#include "geopipe/error.h"

namespace geopipe::scheduler {

double ModelProfile::params(int first, int last) const {
  double s = 0;
  for (int l = first; l < last; ++l) s += layers[l].params;
  return s;
}

double ModelProfile::flopsPerSample(int first, int last) const {
  double s = 0;
  for (int l = first; l < last; ++l) s += layers[l].fwd_flops + layers[l].bwd_flops;
  return s;
}

double ModelProfile::actMemPerSample(int first, int last) const {
  double s = 0;
  for (int l = first; l < last; ++l) s += layers[l].act_mem_bytes;
  return s;
}

double ModelProfile::vectorParams(int first, int last) const {
  double s = 0;
  for (int l = first; l < last; ++l) s += layers[l].vector_params;
  return s;
}

DpBytes ModelProfile::dpBytes(double params, double vector_params) const {
  DpBytes b;
  switch (grad_exchange) {
    case GradExchange::RING_ALL_REDUCE:
      b.ring_bytes = 4 * params;
      break;
    case GradExchange::ALL_GATHER:
      b.gather_bytes = grad_wire_bytes_per_param * params;
      b.gathers = 1;
      break;
    case GradExchange::POWERSGD:
      b.ring_bytes = 4 * vector_params;
      b.gather_bytes = grad_wire_bytes_per_param * (params - vector_params);
      b.gathers = 2;
      break;
  }
  return b;
}

namespace {

int dtypeBits(const std::string& dtype) {
  if (dtype == "fp16" || dtype == "bf16") return 16;
  if (dtype == "fp32") return 32;
  GEOPIPE_THROW(ConfigError, "model.dtype '", dtype,
                "' is not one of fp32, fp16, bf16");
}

// Scale overhead in bytes of one quantized tensor of `elems` elements whose
// last dimension is `channels`: one fp32 max-abs scale per tensor, channel or
// group.
double scaleBytes(const std::string& granularity, double elems, int channels,
                  int group_size) {
  if (granularity == "tensor") return 4;
  if (granularity == "group") return 4 * elems / std::max(1, group_size);
  return 4.0 * channels;  // channel
}

}  // namespace

ModelProfile ModelProfile::fromJob(const JobSpec& job) {
  const ModelSpec& m = job.model;
  GEOPIPE_CHECK(m.layers >= 1, ConfigError, "model.layers = ", m.layers,
                "; expected >= 1");
  GEOPIPE_CHECK(m.hidden >= 1 && m.seq_len >= 1 && m.vocab >= 1, ConfigError,
                "model.hidden, seq_len and vocab must be >= 1");
  GEOPIPE_CHECK(job.training.micro_batch >= 1, ConfigError,
                "training.micro_batch = ", job.training.micro_batch,
                "; expected >= 1");
  const double h = m.hidden, s = m.seq_len, v = m.vocab;
  const double f = std::max(1, m.ffn_mult);
  const double heads = std::max(1, m.heads);
  const int bits = dtypeBits(m.dtype);
  ModelProfile p;
  p.dtype_bytes = bits / 8;
  p.micro_batch = job.training.micro_batch;
  p.global_batch = job.training.global_batch;
  LayerProfile layer;
  if (!m.isFamily()) {
    // Block: QKV + projection 4h^2+4h, MLP 2fh^2+fh+h, two layer norms 4h.
    const double matmul_params = (4 + 2 * f) * h * h;
    layer.params = matmul_params + (9 + f) * h;
    layer.vector_params = (9 + f) * h;
    // Forward FLOPs per sample: 2 FLOPs per weight per token, plus attention
    // scores and weighted values 2 * 2 * s^2 * h. Backward is twice forward.
    layer.fwd_flops = 2 * s * matmul_params + 4 * s * s * h;
    // Stored activations per sample (Korthikanti et al. 2022, 16-bit):
    // s*h*(34 + 5*a*s/h) bytes; scaled by the dtype's width.
    layer.act_mem_bytes = s * h * (34 + 5 * heads * s / h) * (bits / 16.0);
    p.embed_params = v * h + s * h;
    p.head_params = v * h + 2 * h;  // untied head + final norm
    p.head_vector_params = 2 * h;
  } else {
    // The families' real blocks. F = MLP width, kv = key/value width
    // (grouped-query attention: kv_heads x head_dim).
    const double F = m.ffnWidth();
    const double kv = static_cast<double>(m.kvHeads()) * (m.hidden / std::max(1, m.heads));
    const bool llama = m.kind == "llama";
    // gpt2: c_attn 3h^2 + c_proj h^2 and MLP 2hF, with biases and two
    // LayerNorms; llama: q, o h^2 each, k, v h*kv each, SwiGLU 3hF, two
    // RMSNorms, no biases.
    const double matmul_params = llama ? 2 * h * h + 2 * h * kv + 3 * h * F : 4 * h * h + 2 * h * F;
    layer.vector_params = llama ? 2 * h : 3 * h + h + F + h + 4 * h;
    layer.params = matmul_params + layer.vector_params;
    layer.fwd_flops = 2 * s * matmul_params + 4 * s * s * h;
    // Stored activations per sample, 16-bit, in Korthikanti et al.'s terms
    // generalised to the MLP width and the key/value width: attention 2sh
    // (input) + 2s(h+kv) (q, k) + 2s kv (v) + 2sh (projection input)
    // + 5as^2 (scores, softmax, dropout), + sh dropout mask in gpt2;
    // norms 4sh; MLP gpt2: 3sh + 4sF (GELU input and output, mask),
    // llama: 2sh + 8sF (gate, up, SiLU, product).
    const double attn = s * (2 * h + 2 * (h + kv) + 2 * kv + 2 * h + (llama ? 0 : h)) +
                        5 * heads * s * s;
    const double mlp = llama ? s * (2 * h + 8 * F) : s * (3 * h + 4 * F);
    layer.act_mem_bytes = (attn + 4 * s * h + mlp) * (bits / 16.0);
    const double positions = llama ? 0 : m.maxPositions();
    p.embed_params = v * h + positions * h;
    // Final norm, and the head's weight: its own when untied; when tied the
    // last stage still keeps a copy (summed with the embedding's gradient
    // every step), so it costs the same memory and data-parallel bytes.
    p.head_params = v * h + (llama ? h : 2 * h);
    p.head_vector_params = llama ? h : 2 * h;
    if (m.tiedEmbeddings()) p.tied_params = v * h;
  }
  layer.bwd_flops = 2 * layer.fwd_flops;
  p.layers.assign(m.layers, layer);
  if (!m.cost.empty()) {
    // The model's own cost (ModelDef::cost) replaces the GPT's: its body
    // layers one by one, its prologue as the embedding, its epilogue as the
    // head. The wire bytes at a boundary stay seq_len x hidden per sample.
    if (static_cast<int>(m.cost.body.size()) != m.layers) {
      GEOPIPE_THROW(ConfigError, "model '", m.name, "' gives the cost of ", m.cost.body.size(),
                    " body layers but model.layers is ", m.layers);
    }
    p.layers.clear();
    for (const LayerCost& c : m.cost.body) {
      LayerProfile l;
      l.params = c.params;
      l.fwd_flops = c.fwd_flops;
      l.bwd_flops = 2 * c.fwd_flops;
      l.act_mem_bytes = c.act_bytes;
      p.layers.push_back(l);
    }
    p.embed_params = m.cost.prologue.params;
    p.head_params = m.cost.epilogue.params;
    p.head_vector_params = 0;
    p.tied_params = 0;
  }
  p.head_flops = m.cost.empty() ? 3 * 2 * s * h * v : 3 * m.cost.epilogue.fwd_flops;

  // Wire bytes per sample at a stage boundary: s*h elements.
  const double elems = s * h;
  const auto& fa = job.compression.activations;
  if (fa.method == "acsgd" || fa.method == "direct") {
    p.act_fwd_wire_bytes =
        elems * fa.bits / 8.0 +
        scaleBytes(fa.granularity, elems, m.hidden, fa.group_size) /
            p.micro_batch;
  } else if (fa.method == "fp16") {
    p.act_fwd_wire_bytes = elems * 2;
  } else {
    p.act_fwd_wire_bytes = elems * bits / 8.0;
  }
  const auto& ba = job.compression.backward;
  if (ba.method == "quantize") {
    p.act_bwd_wire_bytes =
        elems * ba.bits / 8.0 +
        scaleBytes(ba.granularity, elems, m.hidden, ba.group_size) /
            p.micro_batch;
  } else if (ba.method == "fp16") {
    p.act_bwd_wire_bytes = elems * 2;
  } else {
    p.act_bwd_wire_bytes = elems * bits / 8.0;
  }
  // The data-parallel exchange as GradientSync runs it (see GradExchange).
  const DataParallelSyncSpec& sync = job.parallelism.data_parallel_sync;
  const auto& g = sync.diloco() ? sync.compression : job.compression.gradients;
  p.outer_every = sync.diloco() ? sync.inner_steps : 0;
  p.outer_overlap = sync.diloco() && sync.overlap;
  p.grad_exchange = g.method == "none"       ? GradExchange::RING_ALL_REDUCE
                    : g.method == "powersgd" ? GradExchange::POWERSGD
                                             : GradExchange::ALL_GATHER;
  if (g.method == "fp16") {
    p.grad_wire_bytes_per_param = 2;
  } else if (g.method == "quantize") {
    // b-bit codes and one fp32 scale per group of 256 (the gradient
    // compressor's quantizer, compression/gradient_compressor.h).
    p.grad_wire_bytes_per_param = g.bits / 8.0 + 4.0 / 256;
  } else if (g.method == "topk") {
    // value (fp32) + index (u32) per kept entry.
    p.grad_wire_bytes_per_param = g.ratio * 8.0;
  } else if (g.method == "powersgd") {
    // Rank-r factors P (m x r) and Q (n x r) of an m x n block matrix
    // (h x f*h): 4*r*(m+n)/(m*n) bytes per parameter of the matrices.
    const double width = m.isFamily() ? m.ffnWidth() : f * h;
    p.grad_wire_bytes_per_param = std::min(4.0, 4.0 * g.rank * (h + width) / (width * h));
  } else {
    p.grad_wire_bytes_per_param = 4;  // fp32 gradients, whatever the dtype
  }
  // Tasklet::runStep's scalar all-reduces.
  p.norm_sync = job.training.grad_clip > 0;
  p.overflow_sync = m.dtype == "fp16";
  // Weights + gradients + optimizer state. AdamW keeps fp32 master weights
  // and two moments: 16 bytes/param in mixed precision (2+2+12) and in fp32
  // (4+4+8). SGD: weights + grads (+ momentum).
  if (job.training.optimizer.kind == "sgd") {
    // fp32 master weights and fp32 gradients whatever the compute dtype
    // (16-bit compute casts copies), plus the momentum buffer.
    p.state_bytes_per_param = 8.0 + (job.training.optimizer.momentum != 0 ? 4 : 0);
  } else {
    p.state_bytes_per_param = 16;
  }
  // DiLoCo (OuterSync): the shared weights, their gradient (the exchanged
  // pseudo-gradient) and the outer momentum; with overlap also the round's
  // start and this round's progress.
  if (sync.diloco()) {
    p.state_bytes_per_param += 8.0 + (sync.outer_optimizer.momentum != 0 ? 4 : 0);
    if (sync.overlap) p.state_bytes_per_param += 8.0;
  }
  return p;
}

}  // namespace geopipe::scheduler
