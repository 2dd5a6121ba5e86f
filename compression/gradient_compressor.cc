// Gradient compressors with error feedback, top-k, PowerSGD and the
// rank-ordered all-reduce combine.
#include "compression/gradient_compressor.h"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "compression/half.h"
#include "geopipe/error.h"

namespace geopipe::compression {

namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MapMat = Eigen::Map<RowMat>;
using CMapMat = Eigen::Map<const RowMat>;

size_t numelOf(const std::vector<int64_t>& shape) {
  size_t n = 1;
  for (int64_t d : shape) {
    GEOPIPE_CHECK(d >= 0, ConfigError, "negative dimension ", d);
    n *= static_cast<size_t>(d);
  }
  return n;
}

CompressedMessage rawFactor(Method m, const std::vector<float>& v, int64_t rows, int64_t r) {
  WireHeader h;
  h.method = m;
  h.aux = static_cast<uint64_t>(r);
  h.shape = {rows, r};
  std::vector<uint8_t> payload(4 * v.size());
  if (!v.empty()) std::memcpy(payload.data(), v.data(), payload.size());
  return seal(std::move(h), std::move(payload));
}

}  // namespace

const char* toString(GradientMethod m) {
  switch (m) {
    case GradientMethod::NONE: return "none";
    case GradientMethod::FP16: return "fp16";
    case GradientMethod::QUANTIZE: return "quantize";
    case GradientMethod::TOPK: return "topk";
    case GradientMethod::POWERSGD: return "powersgd";
  }
  return "?";
}

void GradientCompressorOptions::validate() const {
  if (method == GradientMethod::QUANTIZE) quantizer.validate();
  GEOPIPE_CHECK(method != GradientMethod::TOPK || (ratio > 0.0 && ratio <= 1.0), ConfigError,
                "gradient top-k ratio must be in (0, 1], got ", ratio);
  GEOPIPE_CHECK(method != GradientMethod::POWERSGD || (rank >= 1 && rank <= 1024), ConfigError,
                "gradient PowerSGD rank must be in 1..1024, got ", rank);
}

CompressedMessage encodeTopK(const float* x, const std::vector<int64_t>& shape, double ratio) {
  const size_t n = numelOf(shape);
  GEOPIPE_CHECK(n <= (uint64_t{1} << 32), ConfigError, "top-k supports up to 2^32 elements");
  GEOPIPE_CHECK(ratio > 0.0 && ratio <= 1.0, ConfigError, "top-k ratio must be in (0, 1]");
  const size_t k = n == 0 ? 0 : std::min(n, std::max<size_t>(1, static_cast<size_t>(std::ceil(ratio * n))));
  std::vector<uint32_t> idx;
  idx.reserve(k);
  if (k > 0) {
    // Threshold = k-th largest |x| (nth_element, O(n)); then one ordered scan
    // takes everything above it and the lowest-index ties, so indices come
    // out sorted.
    std::vector<float> mag(n);
    for (size_t i = 0; i < n; ++i) mag[i] = std::fabs(x[i]);
    std::nth_element(mag.begin(), mag.begin() + (k - 1), mag.end(), std::greater<float>());
    const float t = mag[k - 1];
    GEOPIPE_CHECK(std::isfinite(t), ProtocolError, "cannot top-k a gradient with inf/NaN");
    size_t above = 0;
    for (size_t i = 0; i < n; ++i) above += std::fabs(x[i]) > t;
    size_t ties = k - above;
    for (size_t i = 0; i < n; ++i) {
      const float a = std::fabs(x[i]);
      if (a > t || (a == t && ties > 0)) {
        if (a == t) --ties;
        idx.push_back(static_cast<uint32_t>(i));
      }
    }
  }
  WireHeader h;
  h.method = Method::TOPK;
  h.aux = k;
  h.shape = shape;
  std::vector<uint8_t> payload(8 * k);
  for (size_t j = 0; j < k; ++j) {
    std::memcpy(payload.data() + 4 * j, &idx[j], 4);
    std::memcpy(payload.data() + 4 * k + 4 * j, &x[idx[j]], 4);
  }
  return seal(std::move(h), std::move(payload));
}

std::vector<float> decodeDense(const CompressedMessage& msg, WireHeader* header) {
  WireHeader h = decodeHeader(msg.header.data(), msg.header.size());
  std::vector<float> out;
  switch (h.method) {
    case Method::RAW:
    case Method::FP16:
    case Method::BF16:
    case Method::QUANTIZED:
      out = decodeTensor(msg).values;
      break;
    case Method::POWERSGD_P:
    case Method::POWERSGD_Q: {
      checkPayload(h, msg.payload.data(), msg.payload.size());
      out.resize(h.numel());
      if (!out.empty()) std::memcpy(out.data(), msg.payload.data(), 4 * out.size());
      break;
    }
    case Method::TOPK: {
      checkPayload(h, msg.payload.data(), msg.payload.size());
      const size_t n = h.numel(), k = h.aux;
      out.assign(n, 0.0f);
      int64_t prev = -1;
      for (size_t j = 0; j < k; ++j) {
        uint32_t i;
        float v;
        std::memcpy(&i, msg.payload.data() + 4 * j, 4);
        std::memcpy(&v, msg.payload.data() + 4 * k + 4 * j, 4);
        GEOPIPE_CHECK(static_cast<int64_t>(i) > prev && i < n, ProtocolError, "top-k index ", j,
                      " is ", i, ": indices must be strictly increasing and < ", n);
        GEOPIPE_CHECK(std::isfinite(v), ProtocolError, "top-k value ", j, " is not finite");
        out[i] = v;
        prev = i;
      }
      break;
    }
    case Method::ACSGD:
      GEOPIPE_THROW(ProtocolError, "an acsgd message is not a gradient; use DeltaReceiver");
  }
  if (header) *header = std::move(h);
  return out;
}

std::vector<float> combineMean(const std::vector<CompressedMessage>& per_rank) {
  GEOPIPE_CHECK(!per_rank.empty(), ConfigError, "combineMean needs at least one rank's message");
  // Shapes first: a sparse (top-k) header can describe a huge dense tensor
  // in a few bytes, so nothing is expanded until every rank (this one
  // included) agrees on the shape.
  const WireHeader first = decodeHeader(per_rank[0].header.data(), per_rank[0].header.size());
  for (size_t r = 1; r < per_rank.size(); ++r) {
    const WireHeader h = decodeHeader(per_rank[r].header.data(), per_rank[r].header.size());
    GEOPIPE_CHECK(h.shape == first.shape, ProtocolError, "rank ", r,
                  " sent a tensor of another shape than rank 0");
  }
  std::vector<float> acc = decodeDense(per_rank[0]);
  for (size_t r = 1; r < per_rank.size(); ++r) {
    const std::vector<float> v = decodeDense(per_rank[r]);
    for (size_t i = 0; i < acc.size(); ++i) acc[i] = acc[i] + v[i];
  }
  const float w = static_cast<float>(per_rank.size());
  for (auto& v : acc) v = v / w;
  return acc;
}

GradientCompressor::GradientCompressor(GradientCompressorOptions opt) : opt_(std::move(opt)) {
  opt_.validate();
  GEOPIPE_CHECK(opt_.method != GradientMethod::POWERSGD, ConfigError,
                "GradientCompressor does not support powersgd; use PowerSgdCompressor");
}

CompressedMessage GradientCompressor::compress(const float* grad, const std::vector<int64_t>& shape,
                                               uint64_t step) {
  const size_t n = numelOf(shape);
  const bool ef = opt_.error_feedback && opt_.method != GradientMethod::NONE;
  if (ef && residual_.size() != n) residual_.assign(n, 0.0f);
  const float* x = grad;
  if (ef) {
    fed_.resize(n);
    for (size_t i = 0; i < n; ++i) fed_[i] = grad[i] + residual_[i];
    x = fed_.data();
  }
  CompressedMessage msg;
  TensorCodecOptions tc;
  switch (opt_.method) {
    case GradientMethod::NONE: tc.method = Method::RAW; break;
    case GradientMethod::FP16: tc.method = Method::FP16; break;
    case GradientMethod::QUANTIZE:
      tc.method = Method::QUANTIZED;
      tc.quantizer = opt_.quantizer;
      break;
    default: break;
  }
  if (opt_.method == GradientMethod::TOPK) {
    msg = encodeTopK(x, shape, opt_.ratio);
  } else {
    // Gradients have no last-dim channel structure guarantee: per-channel
    // still works (scales over shape.back()), tensor and group need nothing.
    msg = encodeTensor(tc, x, shape, DType::FLOAT32, step);
  }
  if (ef) {
    // e <- (g + e) - D(C(g + e)), from the exact bytes sent.
    const std::vector<float> sent = decodeDense(msg);
    for (size_t i = 0; i < n; ++i) residual_[i] = fed_[i] - sent[i];
  }
  return msg;
}

void orthonormalizeColumns(float* a, int64_t rows, int64_t r) {
  MapMat m(a, rows, r);
  for (int64_t c = 0; c < r; ++c) {
    auto col = m.col(c);
    // Two passes of modified Gram-Schmidt for stability in fp32.
    for (int pass = 0; pass < 2; ++pass) {
      for (int64_t j = 0; j < c; ++j) {
        const float d = m.col(j).dot(col);
        col -= d * m.col(j);
      }
    }
    const float norm = col.norm();
    if (norm > 1e-20f) col /= norm;
    else col.setZero();
  }
}

PowerSgdCompressor::PowerSgdCompressor(GradientCompressorOptions opt) : opt_(std::move(opt)) {
  opt_.method = GradientMethod::POWERSGD;
  opt_.validate();
}

CompressedMessage PowerSgdCompressor::computeP(const float* grad, const std::vector<int64_t>& shape) {
  GEOPIPE_CHECK(shape.size() >= 2, ConfigError,
                "PowerSGD needs a matrix (ndim >= 2); send 1-D tensors with fp16 or quantize");
  const int64_t rows = shape[0];
  const int64_t cols = static_cast<int64_t>(numelOf(shape)) / std::max<int64_t>(rows, 1);
  const int64_t r = std::min<int64_t>(opt_.rank, std::min(rows, cols));
  if (shape != shape_) {  // first call or new shape: reset state
    shape_ = shape;
    rows_ = rows;
    cols_ = cols;
    r_ = std::max<int64_t>(r, 1);
    residual_.assign(static_cast<size_t>(rows * cols), 0.0f);
    have_q_ = false;
  }
  const size_t n = static_cast<size_t>(rows_ * cols_);
  m_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    m_[i] = grad[i] + (opt_.error_feedback ? residual_[i] : 0.0f);
    GEOPIPE_CHECK(std::isfinite(m_[i]), ProtocolError, "PowerSGD: gradient has inf/NaN");
  }
  if (!have_q_) {
    // Same seed on every rank -> same initial Q everywhere.
    std::mt19937_64 rng(opt_.seed ^ 0x5053474451ull);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    q_.resize(static_cast<size_t>(cols_ * r_));
    for (auto& v : q_) v = nd(rng);
    have_q_ = true;
  }
  p_.assign(static_cast<size_t>(rows_ * r_), 0.0f);
  MapMat(p_.data(), rows_, r_).noalias() =
      CMapMat(m_.data(), rows_, cols_) * CMapMat(q_.data(), cols_, r_);
  return rawFactor(Method::POWERSGD_P, p_, rows_, r_);
}

PowerSgdCompressor::State PowerSgdCompressor::state() const {
  State st;
  st.shape = shape_;
  st.residual = residual_;
  if (have_q_) st.q = q_;
  return st;
}

void PowerSgdCompressor::restore(const State& st) {
  if (st.shape.empty()) {
    shape_.clear();
    residual_.clear();
    q_.clear();
    have_q_ = false;
    return;
  }
  const int64_t rows = st.shape[0];
  const int64_t cols = static_cast<int64_t>(numelOf(st.shape)) / std::max<int64_t>(rows, 1);
  const int64_t r = std::max<int64_t>(std::min<int64_t>(opt_.rank, std::min(rows, cols)), 1);
  GEOPIPE_CHECK(st.residual.size() == static_cast<size_t>(rows * cols) &&
                    (st.q.empty() || st.q.size() == static_cast<size_t>(cols * r)),
                ProtocolError, "PowerSGD state does not match its shape (corrupt checkpoint?)");
  shape_ = st.shape;
  rows_ = rows;
  cols_ = cols;
  r_ = r;
  residual_ = st.residual;
  q_ = st.q;
  have_q_ = !st.q.empty();
}

CompressedMessage PowerSgdCompressor::computeQ(const std::vector<CompressedMessage>& all_p) {
  GEOPIPE_CHECK(!m_.empty() || rows_ * cols_ == 0, ConfigError, "computeQ before computeP");
  p_ = combineMean(all_p);
  GEOPIPE_CHECK_EQ(p_.size(), static_cast<size_t>(rows_ * r_), ProtocolError,
                   "PowerSGD P factor of wrong size");
  orthonormalizeColumns(p_.data(), rows_, r_);
  q_local_.assign(static_cast<size_t>(cols_ * r_), 0.0f);
  MapMat(q_local_.data(), cols_, r_).noalias() =
      CMapMat(m_.data(), rows_, cols_).transpose() * CMapMat(p_.data(), rows_, r_);
  return rawFactor(Method::POWERSGD_Q, q_local_, cols_, r_);
}

std::vector<float> PowerSgdCompressor::finish(const std::vector<CompressedMessage>& all_q) {
  q_ = combineMean(all_q);
  GEOPIPE_CHECK_EQ(q_.size(), static_cast<size_t>(cols_ * r_), ProtocolError,
                   "PowerSGD Q factor of wrong size");
  std::vector<float> out(static_cast<size_t>(rows_ * cols_));
  MapMat(out.data(), rows_, cols_).noalias() =
      CMapMat(p_.data(), rows_, r_) * CMapMat(q_.data(), cols_, r_).transpose();
  if (opt_.error_feedback) {
    // e_i = M_i - P Q_i^T: what this rank's own projection missed.
    RowMat mine = CMapMat(p_.data(), rows_, r_) * CMapMat(q_local_.data(), cols_, r_).transpose();
    for (size_t i = 0; i < out.size(); ++i) residual_[i] = m_[i] - mine.data()[i];
  }
  // Warm start: the next step's Q is this step's averaged Q (q_).
  return out;
}

}  // namespace geopipe::compression
