// One tasklet's LibTorch compute for the stage executor.
#include "src/runtime/torch_stage.h"

#include <c10/core/Event.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <thread>

#include "geopipe/error.h"
#include "src/runtime/precision.h"

namespace geopipe::runtime {
namespace {

std::vector<int64_t> shapeOf(const torch::Tensor& t) {
  return std::vector<int64_t>(t.sizes().begin(), t.sizes().end());
}

std::string shapeString(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

}  // namespace

std::pair<torch::Tensor, torch::Tensor> tokenBatch(const data::TokenDataset& dataset,
                                                   const std::vector<int64_t>& ids) {
  const int64_t n = static_cast<int64_t>(ids.size()), t = dataset.seqLen();
  std::vector<int32_t> in(static_cast<size_t>(n * t)), tgt(static_cast<size_t>(n * t));
  for (int64_t i = 0; i < n; ++i) dataset.sample(ids[i], in.data() + i * t, tgt.data() + i * t);
  auto inputs = torch::from_blob(in.data(), {n, t}, torch::kInt32).to(torch::kLong);
  auto targets = torch::from_blob(tgt.data(), {n, t}, torch::kInt32).to(torch::kLong);
  return {inputs, targets};
}

double lossWeight(const data::TokenDataset& dataset, const data::Sampler& sampler, int64_t step,
                  const std::vector<int64_t>& ids) {
  int64_t mine = 0, all = 0;
  for (int64_t id : ids) mine += dataset.targetsOf(id);
  for (int64_t id : sampler.globalBatch(step)) all += dataset.targetsOf(id);
  return static_cast<double>(mine) * sampler.microBatchesPerReplica() * sampler.dataParallel() /
         static_cast<double>(all);
}

void checkLossIgnoresPadding(const ModelDef& model) {
  // One sample of two positions, the second padded: the loss must be the
  // first position's alone. Made-up numbers, no RNG (training's streams
  // stay untouched).
  const std::vector<int64_t> shape = model.output_shape(model.num_layers - 1, 1, 2);
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  const torch::Tensor out = torch::arange(numel, torch::kFloat32).mul(0.37).sin().reshape(shape);
  std::string why;
  try {
    torch::NoGradGuard guard;
    const auto padded = torch::tensor({int64_t{0}, int64_t{data::kIgnoreTarget}}).reshape({1, 2});
    const auto first = torch::zeros({1, 1}, torch::kLong);
    const double a = model.loss(out, padded).item<double>();
    const double b = model.loss(out.slice(1, 0, 1), first).item<double>();
    if (!(std::abs(a - b) <= 1e-6 * std::max(1.0, std::abs(b)))) {
      why = "it gives " + std::to_string(a) + " with the padded position and " + std::to_string(b) +
            " without";
    }
  } catch (const c10::Error& e) {
    why = std::string("it fails on them: ") + e.what_without_backtrace();
  }
  if (!why.empty()) {
    GEOPIPE_THROW(ConfigError, "data.pack: false pads samples with target ", data::kIgnoreTarget,
                  ", but model '", model.name, "''s loss does not leave them out (", why,
                  "); give the loss ignore_index -100 (cross_entropy's default) or use "
                  "data.pack: true");
  }
}

torch::Device taskletDevice(const std::string& device, int rank) {
  if (device == "cpu") return torch::kCPU;
  GEOPIPE_CHECK(torch::cuda::is_available(), InfeasibleError, "training.device is '", device,
                "' but LibTorch sees no CUDA device (a CPU-only LibTorch, or no GPU visible); "
                "use training.device: cpu, or build with a CUDA LibTorch (docs/gpu.md)");
  const int count = static_cast<int>(torch::cuda::device_count());
  if (device == "cuda")
    return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(rank % count));
  const int index = std::stoi(device.substr(5));
  GEOPIPE_CHECK(index < count, InfeasibleError, "training.device is '", device, "' but only ",
                count, " CUDA devices are visible");
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
}

TorchStage::TorchStage(const ModelDef& model, TorchStageOptions options,
                       const data::TokenDataset& dataset, const data::Sampler& sampler,
                       const CompressionSpec& compression)
    : model_(model),
      options_(options),
      dataset_(dataset),
      sampler_(sampler),
      staging_(options.device.is_cuda()) {
  GEOPIPE_CHECK(model.max_positions <= 0 || dataset.seqLen() <= model.max_positions, ConfigError,
                "model.seq_len ", dataset.seqLen(), " exceeds model '", model.name, "''s ",
                model.max_positions, " positions: lower model.seq_len");
  module_ = buildSlice(model, options.first_layer, options.last_layer, options.seed);
  module_->to(options.device);
  const bool first = options.stage == 0, last = options.stage == options.num_stages - 1;
  // Boundary b sits between stages b and b+1; each side names its buffer
  // store after the boundary and replica so mmap files never collide.
  auto name = [&](int boundary) {
    return "r" + std::to_string(options.replica) + "-b" + std::to_string(boundary);
  };
  if (!last) {
    send_act_ = BoundaryEncoder::forActivations(compression.activations, options.seed,
                                                name(options.stage), options.dtype);
    recv_grad_ = BoundaryDecoder::forGradients(compression.backward, options.seed);
  }
  if (!first) {
    recv_act_ = BoundaryDecoder::forActivations(compression.activations, options.seed,
                                                name(options.stage - 1));
    send_grad_ = BoundaryEncoder::forGradients(compression.backward, options.seed, options.dtype);
  }
  // Evaluation sends activations uncompressed.
  const ActivationCompressionSpec plain;
  if (!last)
    eval_send_ = BoundaryEncoder::forActivations(plain, options.seed, "eval", options.dtype);
  if (!first) eval_recv_ = BoundaryDecoder::forActivations(plain, options.seed, "eval");
}

std::pair<double, uint64_t> TorchStage::takeValSums() {
  std::pair<double, uint64_t> out{val_sum_, val_tokens_};
  val_sum_ = 0;
  val_tokens_ = 0;
  return out;
}

transport::Bytes TorchStage::evalForward(int64_t step, int m, const std::vector<int64_t>& ids,
                                         const data::TokenDataset& val, transport::Bytes input) {
  torch::NoGradGuard guard;
  const int64_t batch = static_cast<int64_t>(ids.size()), seq = val.seqLen();
  torch::Tensor x, targets;
  if (options_.stage == 0) {
    auto [inputs, tgts] = tokenBatch(val, ids);
    x = inputs.to(options_.device);
    targets = tgts;
  } else {
    const auto in_shape = model_.output_shape(options_.first_layer - 1, batch, seq);
    eval_recv_->decode(input, step, m, ids, in_shape, scratch_);
    x = torch::from_blob(scratch_.data(), in_shape, torch::kFloat32).to(options_.device);
  }
  torch::Tensor out;
  {
    AutocastScope autocast(options_.dtype, options_.device);
    out = module_->forward(x);
  }
  if (options_.stage == options_.num_stages - 1) {
    if (!targets.defined()) targets = tokenBatch(val, ids).second;
    // The model's loss is a mean over the predicted tokens, padding left
    // out (the same mask as training's).
    const int64_t counted =
        val.padded() ? targets.ne(data::kIgnoreTarget).sum().item<int64_t>() : targets.numel();
    val_sum_ +=
        model_.loss(out.to(torch::kFloat32), targets.to(options_.device)).item<double>() * static_cast<double>(counted);
    val_tokens_ += static_cast<uint64_t>(counted);
    return {};
  }
  auto detached = out.to(torch::kCPU, torch::kFloat32).contiguous();
  return eval_send_->encode(step, m, 1, ids, detached.data_ptr<float>(), shapeOf(detached));
}

std::vector<int64_t> TorchStage::sampleIds(int64_t step, int m) const {
  return sampler_.microBatch(step, options_.replica, m);
}

double TorchStage::takeLossSum() {
  double s = loss_sum_;
  loss_sum_ = 0;
  return s;
}

pipeline::Outgoing TorchStage::forward(int64_t step, int m, transport::Bytes input) {
  const auto ids = sampleIds(step, m);
  const int64_t batch = static_cast<int64_t>(ids.size());
  Stash stash;
  torch::Tensor targets;
  if (options_.stage == 0) {
    auto [inputs, tgts] = tokenBatch(dataset_, ids);
    stash.input = inputs.to(options_.device);
    targets = tgts;
  } else {
    const auto in_shape = model_.output_shape(options_.first_layer - 1, batch, dataset_.seqLen());
    {
      common::TraceSpan span(options_.trace, common::TraceLane::COMPUTE, "decode activation",
                             {step, m, -1, static_cast<int64_t>(input.size())});
      recv_act_->decode(input, step, m, ids, in_shape, scratch_);
    }
    auto in = torch::from_blob(scratch_.data(), in_shape, torch::kFloat32);
    stash.input = options_.device.is_cpu() ? in.clone() : in.to(options_.device);
    stash.input.set_requires_grad(true);
  }
  torch::Tensor out;
  {
    AutocastScope autocast(options_.dtype, options_.device);
    out = module_->forward(stash.input);
  }
  const auto declared = model_.output_shape(options_.last_layer - 1, batch, dataset_.seqLen());
  if (shapeOf(out) != declared) {
    GEOPIPE_THROW(ConfigError, "model '", model_.name, "' layer ", options_.last_layer - 1,
                  " returned shape ", shapeString(shapeOf(out)), " but output_shape declares ",
                  shapeString(declared));
  }
  if (options_.stage == options_.num_stages - 1) {
    if (!targets.defined()) targets = tokenBatch(dataset_, ids).second;
    // Mean over this replica's micro-batches; replicas average their
    // gradients, so the step's gradient is that of the global-batch mean.
    // The loss in fp32 whatever the compute dtype (autocast leaves some
    // models' logits in 16 bits). With padding, each micro-batch weighs by
    // its real targets.
    auto loss = model_.loss(out.to(torch::kFloat32), targets.to(options_.device));
    if (dataset_.padded()) {
      const double w = lossWeight(dataset_, sampler_, step, ids);
      loss_sum_ += loss.item<double>() * w;
      stash.output = loss * (loss_scale_ * w / options_.num_micro_batches);
    } else {
      loss_sum_ += loss.item<double>();
      stash.output = loss_scale_ == 1.0 ? loss / options_.num_micro_batches
                                        : loss * (loss_scale_ / options_.num_micro_batches);
    }
    stash_[m] = std::move(stash);
    return {};
  }
  HostCopy copy = toHost(out.detach());
  stash.output = out;
  stash_[m] = std::move(stash);
  return pipeline::Outgoing::deferred([this, copy, step, m, ids] {
    copy.wait();
    common::TraceSpan span(options_.trace, common::TraceLane::CODEC, "encode activation",
                           {step, m});
    transport::Bytes message = send_act_->encode(step, m, options_.num_micro_batches, ids,
                                                 copy.host.data_ptr<float>(), shapeOf(copy.host));
    span.args().bytes = static_cast<int64_t>(message.size());
    return message;
  });
}

pipeline::Outgoing TorchStage::backward(int64_t step, int m, transport::Bytes grad) {
  auto it = stash_.find(m);
  GEOPIPE_CHECK(it != stash_.end(), ConfigError, "stage ", options_.stage,
                " backward of micro-batch ", m, " without its forward");
  Stash stash = std::move(it->second);
  stash_.erase(it);
  if (options_.stage == options_.num_stages - 1) {
    stash.output.backward();
  } else {
    const auto ids = sampleIds(step, m);
    const auto shape = shapeOf(stash.output);
    {
      common::TraceSpan span(options_.trace, common::TraceLane::COMPUTE, "decode gradient",
                             {step, m, -1, static_cast<int64_t>(grad.size())});
      recv_grad_->decode(grad, step, m, ids, shape, scratch_);
    }
    auto g = torch::from_blob(scratch_.data(), shape, torch::kFloat32);
    stash.output.backward(g.to(options_.device, stash.output.scalar_type()));
  }
  if (options_.stage == 0) return {};
  HostCopy copy = toHost(stash.input.grad());
  const bool scaled = loss_scale_ != 1.0;
  return pipeline::Outgoing::deferred([this, copy, step, m, scaled] {
    copy.wait();
    torch::Tensor g_in = copy.host;
    if (scaled && !torch::isfinite(g_in).all().item<bool>()) {
      // fp16: the scaled gradient overflowed. The step will be skipped by
      // every tasklet (Tasklet::runStep agrees on it); send zeros, which
      // every codec can encode, rather than inf, which a quantizer refuses.
      found_inf_ = true;
      g_in = torch::zeros_like(g_in);
    }
    common::TraceSpan span(options_.trace, common::TraceLane::CODEC, "encode gradient", {step, m});
    transport::Bytes message =
        send_grad_->encode(step, m, options_.num_micro_batches, sampleIds(step, m),
                           g_in.data_ptr<float>(), shapeOf(g_in));
    span.args().bytes = static_cast<int64_t>(message.size());
    return message;
  });
}

TorchStage::HostCopy TorchStage::toHost(const torch::Tensor& t) {
  HostCopy copy;
  if (!t.is_cuda()) {
    // A view of the tensor when it is fp32 and contiguous already, which is
    // safe because nothing ever writes a stage's output or an input's
    // gradient in place (autograd makes new tensors; the optimizer step
    // and the next step's micro-batches come after the lane is drained).
    copy.host = t.to(torch::kFloat32).contiguous();
    return copy;
  }
  copy.host = staging_.take(shapeOf(t));
  StagingPool* const pool = &staging_;
  copy.lease = std::shared_ptr<void>(nullptr, [pool, buffer = copy.host](void*) {
    pool->give(buffer);
  });
  copy.host.copy_(t, /*non_blocking=*/true);
  const c10::impl::DeviceGuardImplInterface* device =
      c10::impl::getDeviceGuardImpl(t.device().type());
  copy.ready = std::make_shared<c10::Event>(t.device().type());
  copy.ready->record(device->getStream(t.device()));
  return copy;
}

void TorchStage::HostCopy::wait() const {
  if (!ready) return;
  // The copy waits behind the kernels queued before it: poll from 20 us,
  // backing off to 0.5 ms, so a long forward costs the lane's core little.
  // (LibTorch 1.13's c10::Event has no blocking wait.)
  auto pause = std::chrono::microseconds(20);
  while (!ready->query()) {
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(500));
  }
}

}  // namespace geopipe::runtime
