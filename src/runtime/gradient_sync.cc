// Data-parallel gradient averaging over the transport's collectives.
#include "src/runtime/gradient_sync.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>

#include "compression/options.h"
#include "geopipe/error.h"
#include "src/common/byte_io.h"
#include "src/runtime/gradient_bundle.h"
#include "src/transport/collectives.h"

namespace geopipe::runtime {
namespace {

std::vector<int64_t> shapeOf(const torch::Tensor& t) {
  return std::vector<int64_t>(t.sizes().begin(), t.sizes().end());
}

torch::Tensor gradOf(const torch::Tensor& p) {
  // A parameter unused in this step has no gradient: exchange zeros so
  // every replica makes the same calls.
  if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
  return p.grad();
}

}  // namespace

GradientSync::GradientSync(transport::Transport& transport, std::vector<int> group,
                           const GradientCompressionSpec& spec, uint64_t seed,
                           std::chrono::milliseconds timeout)
    : transport_(transport), group_(std::move(group)), spec_(spec), timeout_(timeout) {
  if (spec_.method != "none") options_ = compression::gradientOptionsFromSpec(spec_, seed);
}

void GradientSync::average(const std::vector<torch::Tensor>& params, int64_t step) {
  if (group_.size() <= 1) {
    applyOwedResiduals(params);
    return;
  }
  if (!params.empty() && !params.front().is_cpu()) {
    averageOnDevice(params, step);
    return;
  }
  if (spec_.method == "none") {
    averageDense(params, step);
  } else {
    averageCompressed(params, step);
  }
}

// One replica exchanges nothing, so nothing is compressed and no residual
// builds up. A residual restored from a checkpoint of more replicas (a job
// that shrank to one) is gradient the average still owes: it is added to
// this step's gradient once and cleared, so it is neither lost nor saved
// again stale.
void GradientSync::applyOwedResiduals(const std::vector<torch::Tensor>& params) {
  if (compressors_.empty() && power_.empty()) return;
  torch::NoGradGuard guard;
  std::vector<torch::Tensor> matrices, vectors;  // the compressors' tensors, in their order
  splitCompressed(params, &matrices, &vectors);
  auto addTo = [](const torch::Tensor& param, std::vector<float>& owed) {
    auto g = param.mutable_grad();
    if (owed.empty() || !g.defined() || static_cast<size_t>(g.numel()) != owed.size()) return;
    g.add_(torch::from_blob(owed.data(), g.sizes(), torch::kFloat32).to(g.device()));
  };
  for (size_t i = 0; i < compressors_.size() && i < matrices.size(); ++i) {
    std::vector<float> owed = compressors_[i]->residual();
    addTo(matrices[i], owed);
  }
  compressors_.clear();
  for (size_t i = 0; i < power_.size() && i < matrices.size(); ++i) {
    compression::PowerSgdCompressor::State st = power_[i]->state();
    addTo(matrices[i], st.residual);
    std::fill(st.residual.begin(), st.residual.end(), 0.0f);
    power_[i]->restore(st);  // keeps the warm-started Q for a later grow back
  }
}

// PowerSGD compresses matrices; vectors (biases, norms) are tiny and go
// through the dense all-reduce, as in the PowerSGD paper. The other methods
// compress every tensor. compressors_ / power_ follow `compressed`'s order.
void GradientSync::splitCompressed(const std::vector<torch::Tensor>& params,
                                   std::vector<torch::Tensor>* compressed,
                                   std::vector<torch::Tensor>* dense) const {
  const bool power = options_.method == compression::GradientMethod::POWERSGD;
  for (const auto& p : params) (power && p.dim() < 2 ? dense : compressed)->push_back(p);
}

void GradientSync::averageOnDevice(const std::vector<torch::Tensor>& params, int64_t step) {
  torch::NoGradGuard guard;
  auto* device = dynamic_cast<transport::DeviceAllReduce*>(&transport_);
  if (spec_.method == "none" && device && device->canAllReduceDevice(group_)) {
    // NCCL's own all-reduce on one flat device buffer.
    std::vector<torch::Tensor> flat_parts;
    for (const auto& p : params) flat_parts.push_back(gradOf(p).reshape(-1));
    auto flat = torch::cat(flat_parts);
    device->allReduceSumDevice(flat.data_ptr<float>(), static_cast<size_t>(flat.numel()), group_,
                               nullptr);
    flat.div_(static_cast<double>(group_.size()));
    int64_t off = 0;
    for (const auto& p : params) {
      p.grad().copy_(flat.narrow(0, off, p.numel()).view_as(p));
      off += p.numel();
    }
    raw_bytes_ += static_cast<uint64_t>(flat.numel()) * 4;
    wire_bytes_ += static_cast<uint64_t>(flat.numel()) * 4;
    return;
  }
  // Otherwise stage through host copies: the collectives and compressors
  // work on host memory.
  std::vector<torch::Tensor> host;
  host.reserve(params.size());
  for (const auto& p : params) {
    auto h = torch::zeros(p.sizes(), torch::kFloat32).set_requires_grad(true);
    h.mutable_grad() = gradOf(p).to(torch::kCPU);
    host.push_back(h);
  }
  if (spec_.method == "none") {
    averageDense(host, step);
  } else {
    averageCompressed(host, step);
  }
  for (size_t i = 0; i < params.size(); ++i) params[i].grad().copy_(host[i].grad());
}

void GradientSync::averageDense(const std::vector<torch::Tensor>& params, int64_t step) {
  size_t total = 0;
  for (const auto& p : params) total += static_cast<size_t>(p.numel());
  flat_.resize(total);
  size_t off = 0;
  for (const auto& p : params) {
    auto g = gradOf(p).contiguous();
    std::memcpy(flat_.data() + off, g.data_ptr<float>(), sizeof(float) * g.numel());
    off += static_cast<size_t>(g.numel());
  }
  transport::CollectiveOptions opt;
  opt.step = step;
  opt.id = 0;
  opt.timeout = timeout_;
  transport::allReduceAverage(transport_, group_, flat_.data(), flat_.size(), opt);
  off = 0;
  torch::NoGradGuard guard;
  for (const auto& p : params) {
    auto g = p.grad();
    g.copy_(torch::from_blob(flat_.data() + off, g.sizes(), torch::kFloat32));
    off += static_cast<size_t>(g.numel());
  }
  raw_bytes_ += total * 4;
  wire_bytes_ += total * 4;
}

void GradientSync::averageCompressed(const std::vector<torch::Tensor>& params, int64_t step) {
  transport::CollectiveOptions opt;
  opt.step = step;
  opt.timeout = timeout_;
  torch::NoGradGuard guard;
  const bool power = options_.method == compression::GradientMethod::POWERSGD;
  std::vector<torch::Tensor> matrices, vectors;
  splitCompressed(params, &matrices, &vectors);
  if (!vectors.empty()) {
    averageDense(vectors, step);
  }
  uint64_t raw = 0;
  for (const auto& p : matrices) raw += static_cast<uint64_t>(p.numel()) * 4;
  raw_bytes_ += raw;
  if (!power) {
    if (compressors_.empty()) {
      for (size_t i = 0; i < matrices.size(); ++i) {
        compressors_.push_back(std::make_unique<compression::GradientCompressor>(options_));
      }
    }
    std::vector<compression::CompressedMessage> mine;
    for (size_t i = 0; i < matrices.size(); ++i) {
      auto g = gradOf(matrices[i]).contiguous();
      mine.push_back(compressors_[i]->compress(g.data_ptr<float>(), shapeOf(g),
                                               static_cast<uint64_t>(step)));
    }
    transport::Bytes blob = encodeGradientBundle(mine);
    wire_bytes_ += blob.size();
    opt.id = 1;
    auto all = transport::allGatherBytes(transport_, group_, blob, opt);
    std::vector<std::vector<compression::CompressedMessage>> per_rank;
    for (const auto& b : all) per_rank.push_back(decodeGradientBundle(b, matrices.size()));
    for (size_t i = 0; i < matrices.size(); ++i) {
      std::vector<compression::CompressedMessage> contributions;
      for (auto& r : per_rank) contributions.push_back(std::move(r[i]));
      std::vector<float> mean = compression::combineMean(contributions);
      auto g = matrices[i].grad();
      GEOPIPE_CHECK_EQ(static_cast<int64_t>(mean.size()), g.numel(), ProtocolError,
                       "combined gradient size");
      g.copy_(torch::from_blob(mean.data(), g.sizes(), torch::kFloat32));
    }
    return;
  }
  if (power_.empty()) {
    for (size_t i = 0; i < matrices.size(); ++i) {
      power_.push_back(std::make_unique<compression::PowerSgdCompressor>(options_));
    }
  }
  auto exchange = [&](std::vector<compression::CompressedMessage> mine, int id) {
    transport::Bytes blob = encodeGradientBundle(mine);
    wire_bytes_ += blob.size();
    opt.id = id;
    auto all = transport::allGatherBytes(transport_, group_, blob, opt);
    std::vector<std::vector<compression::CompressedMessage>> by_tensor(matrices.size());
    for (const auto& b : all) {
      auto msgs = decodeGradientBundle(b, matrices.size());
      for (size_t i = 0; i < msgs.size(); ++i) by_tensor[i].push_back(std::move(msgs[i]));
    }
    return by_tensor;
  };
  std::vector<compression::CompressedMessage> ps;
  for (size_t i = 0; i < matrices.size(); ++i) {
    auto g = gradOf(matrices[i]).contiguous();
    ps.push_back(power_[i]->computeP(g.data_ptr<float>(), shapeOf(g)));
  }
  auto all_p = exchange(std::move(ps), 2);
  std::vector<compression::CompressedMessage> qs;
  for (size_t i = 0; i < matrices.size(); ++i) qs.push_back(power_[i]->computeQ(all_p[i]));
  auto all_q = exchange(std::move(qs), 3);
  for (size_t i = 0; i < matrices.size(); ++i) {
    std::vector<float> g = power_[i]->finish(all_q[i]);
    auto grad = matrices[i].grad();
    GEOPIPE_CHECK_EQ(static_cast<int64_t>(g.size()), grad.numel(), ProtocolError,
                     "PowerSGD gradient size");
    grad.copy_(torch::from_blob(g.data(), grad.sizes(), torch::kFloat32));
  }
}

double allReduceScalarSum(transport::Transport& transport, const std::vector<int>& group,
                          double value, int64_t step, int index,
                          std::chrono::milliseconds timeout) {
  if (group.size() <= 1) return value;
  // Gather every member's double and add in group order: the same sum,
  // bit for bit, on every member.
  common::ByteWriter w(sizeof(double));
  w.write<double>(value);
  const transport::Bytes mine = w.take();
  transport::CollectiveOptions opt;
  opt.step = step;
  opt.id = 1000 + index;
  opt.timeout = timeout;
  auto all = transport::allGatherBytes(transport, group, mine, opt);
  double sum = 0;
  for (const auto& b : all) {
    common::ByteReader r(b, "scalar all-reduce message");
    sum += r.read<double>("value");
    r.expectEnd();
  }
  return sum;
}

}  // namespace geopipe::runtime

namespace geopipe::runtime {
namespace {

constexpr uint32_t kStateMagic = 0x53475047;  // "GPGS"
constexpr uint32_t kStateVersion = 1;

// A float vector of the state file: u64 count, then the values.
void writeFloats(common::ByteWriter& w, const std::vector<float>& v) {
  w.write<uint64_t>(v.size());
  w.writeArray(v.data(), v.size());
}

std::vector<float> readFloats(common::ByteReader& r, const char* field) {
  return r.readVector<float>(r.read<uint64_t>(field), field);
}

}  // namespace

void GradientSync::saveState(const std::string& path) const {
  common::ByteWriter w;
  w.write<uint32_t>(kStateMagic);
  w.write<uint32_t>(kStateVersion);
  w.write<uint8_t>(static_cast<uint8_t>(spec_.method == "none" ? 0 : 1 + int(options_.method)));
  w.write<uint32_t>(static_cast<uint32_t>(compressors_.size()));
  for (const auto& c : compressors_) writeFloats(w, c->residual());
  w.write<uint32_t>(static_cast<uint32_t>(power_.size()));
  for (const auto& p : power_) {
    auto st = p->state();
    w.write<uint32_t>(static_cast<uint32_t>(st.shape.size()));
    w.writeArray(st.shape.data(), st.shape.size());
    writeFloats(w, st.residual);
    writeFloats(w, st.q);
  }
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(w.bytes().data()),
            static_cast<std::streamsize>(w.size()));
  if (!out) GEOPIPE_THROW(IoError, "cannot write gradient-sync state '", path, "'");
}

// What saveState wrote, read back and checked against the job's method.
struct GradientSync::SavedState {
  std::vector<std::vector<float>> residuals;               // per compressed tensor
  std::vector<compression::PowerSgdCompressor::State> power;  // per PowerSGD matrix
};

GradientSync::SavedState GradientSync::readState(const std::string& path) const {
  std::ifstream in(path, std::ios::binary);
  if (!in) GEOPIPE_THROW(IoError, "cannot read gradient-sync state '", path, "'");
  const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                                   std::istreambuf_iterator<char>());
  common::ByteReader r(bytes, "gradient-sync state '" + path + "'");
  if (r.read<uint32_t>("magic") != kStateMagic || r.read<uint32_t>("version") != kStateVersion) {
    GEOPIPE_THROW(ProtocolError, "'", path, "' is not a gradient-sync state of this version");
  }
  const uint8_t method = r.read<uint8_t>("method");
  const uint8_t expected = static_cast<uint8_t>(spec_.method == "none" ? 0 : 1 + int(options_.method));
  if (method != expected) {
    GEOPIPE_THROW(ProtocolError, "'", path, "' was written with another gradient compression "
                  "method than compression.gradients.method '", spec_.method,
                  "': resume with the job's original compression settings");
  }
  SavedState st;
  const uint32_t n = r.read<uint32_t>("residual count");
  for (uint32_t i = 0; i < n; ++i) st.residuals.push_back(readFloats(r, "residual"));
  const uint32_t np = r.read<uint32_t>("PowerSGD matrix count");
  for (uint32_t i = 0; i < np; ++i) {
    compression::PowerSgdCompressor::State p;
    const uint32_t ndim = r.read<uint32_t>("PowerSGD ndim");
    if (ndim > 8) GEOPIPE_THROW(ProtocolError, "'", path, "': bad PowerSGD shape");
    p.shape = r.readVector<int64_t>(ndim, "PowerSGD shape");
    p.residual = readFloats(r, "PowerSGD residual");
    p.q = readFloats(r, "PowerSGD Q");
    st.power.push_back(std::move(p));
  }
  r.expectEnd();
  return st;
}

void GradientSync::applyState(const SavedState& st) {
  compressors_.clear();
  for (const auto& residual : st.residuals) {
    compressors_.push_back(std::make_unique<compression::GradientCompressor>(options_));
    compressors_.back()->setResidual(residual);
  }
  power_.clear();
  for (const auto& p : st.power) {
    power_.push_back(std::make_unique<compression::PowerSgdCompressor>(options_));
    power_.back()->restore(p);
  }
}

void GradientSync::loadState(const std::string& path) {
  applyState(readState(path));
}

namespace {

// acc += scale * v, where an empty vector stands for zeros (a compressor
// that has not run yet).
void addScaled(std::vector<float>& acc, const std::vector<float>& v, float scale,
               const std::string& path) {
  if (v.empty()) return;
  if (acc.empty()) acc.assign(v.size(), 0.0f);
  GEOPIPE_CHECK(acc.size() == v.size(), ProtocolError, "'", path,
                "' holds a residual of another size than the other replicas' states");
  for (size_t i = 0; i < v.size(); ++i) acc[i] += scale * v[i];
}

}  // namespace

void GradientSync::loadMergedState(const std::string& base_path,
                                   const std::vector<std::string>& residual_paths, float scale) {
  SavedState st = readState(base_path);
  for (auto& r : st.residuals) r.clear();
  for (auto& p : st.power) std::fill(p.residual.begin(), p.residual.end(), 0.0f);
  for (const std::string& path : residual_paths) {
    const SavedState other = readState(path);
    GEOPIPE_CHECK(other.residuals.size() == st.residuals.size() &&
                      other.power.size() == st.power.size(),
                  ProtocolError, "'", path, "' holds state for another number of tensors than '",
                  base_path, "'");
    for (size_t i = 0; i < st.residuals.size(); ++i)
      addScaled(st.residuals[i], other.residuals[i], scale, path);
    for (size_t i = 0; i < st.power.size(); ++i)
      addScaled(st.power[i].residual, other.power[i].residual, scale, path);
  }
  applyState(st);
}

}  // namespace geopipe::runtime
