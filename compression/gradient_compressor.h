// Data-parallel gradient compressors with error feedback (fp16, b-bit
// quantisation, top-k, PowerSGD) and the transport-free all-reduce combine
// that the runtime runs over whatever transport links a stage's replicas.
//
// Error feedback (Seide et al.; Karimireddy et al.): each rank keeps a
// residual e per tensor and sends C(g + e); then e <- (g + e) - D(C(g + e)).
// Nothing is dropped for good: what one step fails to send is added to the
// next, so the sum of what was sent tracks the sum of true gradients.
//
// All-reduce specification (every rank gets bit-identical results):
//   fp16 / quantize / top-k: every rank compresses its error-fed gradient,
//     the messages of all W ranks are gathered (all-gather over the
//     transport), and each rank calls combineMean(msgs) with msgs in rank
//     order: decode each to dense fp32, sum in rank order (fp32, left to
//     right), divide by W. Same function, same bytes, same order
//     -> same bits everywhere. Top-k messages are sparse: their union is
//     scatter-added into a dense zero vector in rank order.
//   PowerSGD (Vogels et al. 2019), rank r, for M = g + e reshaped to
//     [rows, cols] (rows = shape[0]): round 1: P_i = M_i Q (Q is shared: seeded
//     identically on all ranks, then warm-started from the previous step);
//     all-gather P_i, P = combineMean(P_i), orthonormalise P (Gram-Schmidt).
//     round 2: Q_i = M_i^T P; all-gather, Q = combineMean(Q_i). The averaged
//     gradient is P Q^T; each rank's residual is e_i = M_i - P Q_i^T (what
//     the rank-r projection P P^T M_i missed). Exact when rank(M) <= r.
#pragma once

#include <cstdint>
#include <vector>

#include "compression/quantizer.h"
#include "compression/wire_format.h"

namespace geopipe::compression {

enum class GradientMethod : uint8_t { NONE = 0, FP16 = 1, QUANTIZE = 2, TOPK = 3, POWERSGD = 4 };
const char* toString(GradientMethod m);

struct GradientCompressorOptions {
  GradientMethod method = GradientMethod::FP16;  // what goes on the wire
  QuantizerOptions quantizer = defaultQuantizer();  // QUANTIZE: bits, granularity, rounding
  double ratio = 0.01;          // TOPK: fraction of entries kept, (0, 1]
  int rank = 4;                 // POWERSGD: rank r >= 1
  bool error_feedback = true;   // carry the residual into the next step
  uint64_t seed = 0;            // POWERSGD: initial Q (must match on all ranks)
  void validate() const;        // ConfigError

  static QuantizerOptions defaultQuantizer() {
    QuantizerOptions q;
    q.bits = 8;
    q.granularity = Granularity::GROUP;  // gradients have no channel structure in general
    q.group_size = 256;
    return q;
  }
};

// One compressor per gradient tensor per rank (it owns that tensor's
// residual). compress() is called once per step; not thread-safe.
// Handles NONE, FP16, QUANTIZE and TOPK; use PowerSgdCompressor for POWERSGD.
class GradientCompressor {
 public:
  explicit GradientCompressor(GradientCompressorOptions opt);
  // Compresses grad + residual; updates the residual when error feedback is on.
  CompressedMessage compress(const float* grad, const std::vector<int64_t>& shape,
                             uint64_t step = 0);
  const std::vector<float>& residual() const { return residual_; }
  void resetResidual() { residual_.clear(); }
  // Restores a residual saved with residual() (checkpoint resume); empty
  // means none yet.
  void setResidual(std::vector<float> residual) { residual_ = std::move(residual); }

 private:
  GradientCompressorOptions opt_;
  std::vector<float> residual_, fed_;
};

// Decodes a RAW / FP16 / QUANTIZED / TOPK / POWERSGD_* message to dense fp32
// (ProtocolError on bad bytes). Fills *header when given. Allocates the
// header's numel floats, which for TOPK a few bytes can make huge: check the
// shape against the expected one first (decodeHeader; combineMean does).
std::vector<float> decodeDense(const CompressedMessage& msg, WireHeader* header = nullptr);

// The all-reduce combine: mean of the decoded messages, summed in the given
// (rank) order. All messages must describe the same shape (ProtocolError).
std::vector<float> combineMean(const std::vector<CompressedMessage>& per_rank);

// Top-k encoding of x: the k = max(1, ceil(ratio * n)) largest |x_i| (ties
// broken by lowest index), indices ascending.
CompressedMessage encodeTopK(const float* x, const std::vector<int64_t>& shape, double ratio);

// PowerSGD with error feedback for one 2-D (or higher, flattened to
// [shape[0], rest]) gradient. Per step: p = computeP(grad); exchange;
// q = computeQ(all p); exchange; g = finish(all q).
class PowerSgdCompressor {
 public:
  explicit PowerSgdCompressor(GradientCompressorOptions opt);
  // Round 1: M = grad + residual; returns P_i = M Q as a POWERSGD_P message.
  CompressedMessage computeP(const float* grad, const std::vector<int64_t>& shape);
  // Round 2: P = orthonormalised mean of all ranks' P; returns Q_i = M^T P.
  CompressedMessage computeQ(const std::vector<CompressedMessage>& all_p);
  // Q = mean of all ranks' Q; returns the averaged gradient P Q^T (rows*cols),
  // identical on every rank, and updates the residual M - P Q_i^T.
  std::vector<float> finish(const std::vector<CompressedMessage>& all_q);
  const std::vector<float>& residual() const { return residual_; }

  // Everything a resumed run needs to continue bit-identically: the shape,
  // the error-feedback residual and the warm-started Q.
  struct State {
    std::vector<int64_t> shape;
    std::vector<float> residual;
    std::vector<float> q;  // empty until the first computeP
  };
  State state() const;
  void restore(const State& state);  // ProtocolError if inconsistent

 private:
  GradientCompressorOptions opt_;
  int64_t rows_ = 0, cols_ = 0, r_ = 0;
  std::vector<int64_t> shape_;
  std::vector<float> m_, q_, p_, q_local_, residual_;  // row-major [rows,r], [cols,r]
  bool have_q_ = false;
};

// Gram-Schmidt orthonormalisation of the r columns of a row-major [rows, r]
// matrix, in place; columns that become (numerically) zero are set to zero.
void orthonormalizeColumns(float* a, int64_t rows, int64_t r);

}  // namespace geopipe::compression
