// LibTorch adapters: convert to contiguous fp32 CPU, call the span API, wrap.
#include "compression/torch/tensor_adapter.h"

#include <cstring>

#include "geopipe/error.h"

namespace geopipe::compression {

namespace {

DType dtypeOf(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::FLOAT32;
    case at::kHalf: return DType::FLOAT16;
    case at::kBFloat16: return DType::BFLOAT16;
    default:
      GEOPIPE_THROW(ConfigError, "compression supports float32/float16/bfloat16 tensors, got ",
                    t.scalar_type());
  }
}

at::ScalarType scalarOf(DType d) {
  switch (d) {
    case DType::FLOAT16: return at::kHalf;
    case DType::BFLOAT16: return at::kBFloat16;
    default: return at::kFloat;
  }
}

at::Tensor cpuFloat(const at::Tensor& t) {
  return t.detach().to(at::kCPU, at::kFloat).contiguous();
}

at::Tensor wrap(std::vector<float> values, const std::vector<int64_t>& shape, DType dtype) {
  at::Tensor out = at::empty(shape, at::kFloat);
  if (!values.empty()) std::memcpy(out.data_ptr<float>(), values.data(), 4 * values.size());
  return dtype == DType::FLOAT32 ? out : out.to(scalarOf(dtype));
}

std::vector<int64_t> idsOf(const at::Tensor& ids) {
  const at::Tensor c = ids.to(at::kCPU, at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

}  // namespace

CompressedMessage encodeTensor(const TensorCodecOptions& opt, const at::Tensor& x,
                               uint64_t counter) {
  const DType dt = dtypeOf(x);
  const at::Tensor c = cpuFloat(x);
  return encodeTensor(opt, c.data_ptr<float>(), c.sizes().vec(), dt, counter);
}

at::Tensor decodeToTensor(const CompressedMessage& msg) {
  WireHeader h;
  std::vector<float> v = decodeDense(msg, &h);
  return wrap(std::move(v), h.shape, h.dtype);
}

CompressedMessage encodeActivations(DeltaSender& tx, const at::Tensor& sample_ids,
                                    const at::Tensor& activations, uint64_t counter) {
  const DType dt = dtypeOf(activations);
  const at::Tensor c = cpuFloat(activations);
  const auto ids = idsOf(sample_ids);
  GEOPIPE_CHECK(c.dim() >= 2 && static_cast<int64_t>(ids.size()) == c.size(0), ConfigError,
                "encodeActivations: need one sample id per row of dim 0");
  return tx.encode(ids.data(), c.data_ptr<float>(), c.sizes().vec(), counter, dt);
}

at::Tensor decodeActivations(DeltaReceiver& rx, const at::Tensor& sample_ids,
                             const CompressedMessage& msg) {
  const auto ids = idsOf(sample_ids);
  std::vector<float> out;
  const WireHeader h = rx.decode(ids.data(), ids.size(), msg, out);
  return wrap(std::move(out), h.shape, h.dtype);
}

CompressedMessage compressGradient(GradientCompressor& comp, const at::Tensor& grad,
                                   uint64_t step) {
  const at::Tensor c = cpuFloat(grad);
  return comp.compress(c.data_ptr<float>(), c.sizes().vec(), step);
}

at::Tensor combineMeanTensor(const std::vector<CompressedMessage>& per_rank) {
  GEOPIPE_CHECK(!per_rank.empty(), ConfigError, "combineMeanTensor needs messages");
  const WireHeader h = decodeHeader(per_rank[0].header.data(), per_rank[0].header.size());
  return wrap(combineMean(per_rank), h.shape, DType::FLOAT32);
}

}  // namespace geopipe::compression
