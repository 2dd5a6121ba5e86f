// One tasklet: step execution and checkpoint state.
#include "src/runtime/tasklet.h"

#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>

#include "compression/delta_compressor.h"
#include "geopipe/error.h"
#include "src/runtime/lr_schedule.h"
#include "src/runtime/precision.h"
#include "src/runtime/reshard.h"
#include "src/transport/collectives.h"

namespace geopipe::runtime {
namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

double seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

uint64_t takeDelta(uint64_t now, uint64_t& last) {
  uint64_t d = now - last;
  last = now;
  return d;
}

}  // namespace

std::unique_ptr<torch::optim::Optimizer> makeOptimizer(const OptimizerSpec& spec,
                                                       std::vector<torch::Tensor> params) {
  if (spec.kind == "sgd") {
    return std::make_unique<torch::optim::SGD>(
        params, torch::optim::SGDOptions(spec.lr).momentum(spec.momentum).weight_decay(
                    spec.weight_decay));
  }
  if (spec.kind != "adamw") {
    GEOPIPE_THROW(ConfigError, "training.optimizer.kind '", spec.kind,
                  "' is not supported: expected adamw or sgd");
  }
  return std::make_unique<torch::optim::AdamW>(
      params, torch::optim::AdamWOptions(spec.lr)
                  .betas({spec.beta1, spec.beta2})
                  .eps(spec.eps)
                  .weight_decay(spec.weight_decay));
}

void setLearningRate(torch::optim::Optimizer& opt, double lr) {
  for (auto& group : opt.param_groups()) {
    if (auto* adamw = dynamic_cast<torch::optim::AdamWOptions*>(&group.options())) {
      adamw->lr(lr);
    } else if (auto* sgd = dynamic_cast<torch::optim::SGDOptions*>(&group.options())) {
      sgd->lr(lr);
    }
  }
}

double squaredGradNorm(const std::vector<torch::Tensor>& params) {
  double sum = 0;
  for (const auto& p : params) {
    if (p.grad().defined()) sum += p.grad().to(torch::kDouble).pow(2).sum().item<double>();
  }
  return sum;
}

// Scales gradients so their global norm is at most max_norm (the formula of
// torch.nn.utils.clip_grad_norm_, applied with the norm of all stages).
void clipTo(const std::vector<torch::Tensor>& params, double total_sq, double max_norm) {
  const double coef = max_norm / (std::sqrt(total_sq) + 1e-6);
  if (coef >= 1.0) return;
  torch::NoGradGuard guard;
  for (const auto& p : params) {
    if (p.grad().defined()) p.grad().mul_(coef);
  }
}

uint64_t peakRssBytes() {
  struct rusage usage {};
  if (getrusage(RUSAGE_SELF, &usage) != 0) return 0;
  return static_cast<uint64_t>(usage.ru_maxrss) * 1024;  // Linux: kilobytes
}

namespace {

template <typename T>
void addByRank(std::vector<T>& into, const std::vector<T>& part) {
  if (into.size() < part.size()) into.resize(part.size(), 0);
  for (size_t i = 0; i < part.size(); ++i) into[i] += part[i];
}

}  // namespace

void mergeTaskletStep(StepMetrics& m, const StepMetrics& part) {
  m.activation_raw_bytes += part.activation_raw_bytes;
  m.activation_wire_bytes += part.activation_wire_bytes;
  m.gradient_raw_bytes += part.gradient_raw_bytes;
  m.gradient_wire_bytes += part.gradient_wire_bytes;
  m.dp_raw_bytes += part.dp_raw_bytes;
  m.dp_wire_bytes += part.dp_wire_bytes;
  m.seconds = std::max(m.seconds, part.seconds);
  if (part.compute_seconds > m.compute_seconds) {
    m.compute_seconds = part.compute_seconds;
    m.comm_wait_seconds = part.comm_wait_seconds;
  }
  m.lr = part.lr;
  m.val_loss_sum += part.val_loss_sum;
  m.val_tokens += part.val_tokens;
  m.grad_sq_sum += part.grad_sq_sum;
  m.peak_rss_bytes = std::max(m.peak_rss_bytes, part.peak_rss_bytes);
  addByRank(m.sent_bytes_by_rank, part.sent_bytes_by_rank);
  addByRank(m.received_bytes_by_rank, part.received_bytes_by_rank);
  for (const auto& [link, bytes] : part.link_sent_bytes) m.link_sent_bytes[link] += bytes;
  addByRank(m.compute_seconds_by_rank, part.compute_seconds_by_rank);
  addByRank(m.comm_wait_seconds_by_rank, part.comm_wait_seconds_by_rank);
  addByRank(m.seconds_by_rank, part.seconds_by_rank);
}

void StepTally::add(const StepMetrics& part, bool has_loss, double loss) {
  mergeTaskletStep(metrics, part);
  if (has_loss) {
    loss_sum += loss;
    loss_parts += 1;
  }
  ++arrived;
}

StepMetrics StepTally::finished(int64_t step, const JobSpec& job) const {
  StepMetrics m = metrics;
  m.step = step;
  m.loss = loss_parts ? loss_sum / loss_parts : 0;
  const double tokens = double(job.training.global_batch) * double(job.model.seq_len);
  m.tokens_per_second = m.seconds > 0 ? tokens / m.seconds : 0;
  m.grad_norm = std::sqrt(m.grad_sq_sum / std::max(1, job.parallelism.data_parallel));
  return m;
}

void recordStep(TrainResult& result, const StepMetrics& m) {
  result.losses.push_back(m.loss);
  if (m.hasValLoss()) result.val_losses.emplace_back(m.step, m.valLoss());
  result.wire_bytes += m.activation_wire_bytes + m.gradient_wire_bytes + m.dp_wire_bytes;
  result.raw_bytes += m.activation_raw_bytes + m.gradient_raw_bytes + m.dp_raw_bytes;
}

Tasklet::Tasklet(const ModelDef& model, const JobSpec& job, const Placement& placement, int rank,
                 transport::Transport& transport, const data::TokenDataset& dataset,
                 const data::Sampler& sampler, std::chrono::milliseconds timeout,
                 const data::TokenDataset* val, std::shared_ptr<common::TraceWriter> trace)
    : model_(model),
      job_(job),
      sampler_(sampler),
      val_(val),
      rank_(rank),
      stages_(job.parallelism.pipeline_stages),
      layers_of_stage_(placement.layers_of_stage),
      micro_batches_(sampler.microBatchesPerReplica()),
      transport_(transport),
      timeout_(timeout),
      trace_(std::move(trace)) {
  const int replicas = job.parallelism.data_parallel;
  stage_ = rank % stages_;
  replica_ = rank / stages_;
  TorchStageOptions so;
  so.stage = stage_;
  so.num_stages = stages_;
  so.replica = replica_;
  so.first_layer = first_layer_ = placement.layers_of_stage[stage_].first;
  so.last_layer = last_layer_ = placement.layers_of_stage[stage_].second;
  so.micro_batch = job.training.micro_batch;
  so.num_micro_batches = micro_batches_;
  so.seed = job.training.seed;
  so.device = taskletDevice(job.training.device, rank);
  so.dtype = job.model.dtype;
  so.trace = trace_.get();
  checkComputeDtype(job);
  if (stage_ == stages_ - 1 && (dataset.padded() || (val && val->padded()))) {
    checkLossIgnoresPadding(model);
  }
  compute_ = std::make_unique<TorchStage>(model, so, dataset, sampler, job.compression);
  params_ = compute_->parameters();
  optimizer_ = makeOptimizer(job.training.optimizer, params_);

  pipeline::ExecutorOptions eo;
  eo.stage = stage_;
  eo.num_stages = stages_;
  eo.prev_rank = stage_ > 0 ? rank - 1 : -1;
  eo.next_rank = stage_ < stages_ - 1 ? rank + 1 : -1;
  eo.schedule = pipeline::scheduleKindFromName(job.parallelism.schedule);
  eo.timeout = timeout;
  eo.trace = trace_.get();
  // Every step ends in a data-parallel exchange: each stage starts it once
  // its last gradient has reached stage - 1 (ExecutorOptions::send_receipt).
  const bool exchange_every_step = replicas > 1 && !job.parallelism.data_parallel_sync.diloco();
  eo.send_receipt = exchange_every_step && eo.next_rank >= 0;
  eo.await_receipt = exchange_every_step && eo.prev_rank >= 0;
  executor_ = std::make_unique<pipeline::StageExecutor>(transport, eo, micro_batches_);

  for (int r = 0; r < replicas; ++r) dp_group_.push_back(r * stages_ + stage_);
  for (int s = 0; s < stages_; ++s) pp_group_.push_back(replica_ * stages_ + s);
  sync_ = std::make_unique<GradientSync>(transport, dp_group_, job.compression.gradients,
                                         job.training.seed, timeout);
  if (job.parallelism.data_parallel_sync.diloco()) {
    outer_ = std::make_unique<OuterSync>(transport, dp_group_, job.parallelism.data_parallel_sync,
                                         job.training.seed, timeout, params_);
  }
  if (job.model.dtype == "fp16") {
    scaler_ = std::make_unique<LossScaler>();
    compute_->setLossScale(scaler_->scale());
  }

  auto stageOfLayer = [&](int layer) {
    for (int s = 0; s < stages_; ++s) {
      const auto [first, last] = placement.layers_of_stage[s];
      if (first <= layer && layer < last) return s;
    }
    GEOPIPE_THROW(Error, "layer ", layer, " is on no stage of the placement");
  };
  for (const TiedWeight& t : model.tied) {
    const int owner = stageOfLayer(t.owner_layer), user = stageOfLayer(t.user_layer);
    if (owner == user || (stage_ != owner && stage_ != user)) continue;
    TiedCopy copy;
    copy.is_user = stage_ == user;
    const int layer = copy.is_user ? t.user_layer : t.owner_layer;
    copy.param = layerParameter(*compute_->module()->ptr(layer - so.first_layer),
                                copy.is_user ? t.user_param : t.owner_param, model.name, layer);
    copy.peer_rank = replica_ * stages_ + (copy.is_user ? owner : user);
    tied_.push_back(copy);
  }
}

void Tasklet::sumTiedGradients(int64_t step) {
  torch::NoGradGuard guard;
  for (size_t i = 0; i < tied_.size(); ++i) {
    const TiedCopy& c = tied_[i];
    // Owner first in the group on both sides: the two-member ring adds the
    // same two numbers on both, so the copies get bit-identical sums.
    const std::vector<int> group =
        c.is_user ? std::vector<int>{c.peer_rank, rank_} : std::vector<int>{rank_, c.peer_rank};
    torch::Tensor grad = c.param.grad();
    if (!grad.defined()) grad = c.param.mutable_grad() = torch::zeros_like(c.param);
    torch::Tensor host = grad.to(torch::kCPU).contiguous();
    transport::CollectiveOptions opt;
    opt.step = step;
    opt.id = 2000 + static_cast<int32_t>(i);
    opt.timeout = timeout_;
    transport::allReduceSum(transport_, group, host.data_ptr<float>(),
                            static_cast<size_t>(host.numel()), opt);
    grad.copy_(host);
  }
}

TaskletStep Tasklet::runStep(int64_t step) {
  using common::TraceLane;
  using common::TraceSpan;
  common::TraceWriter* const trace = trace_.get();
  step_ = step;
  const auto t0 = Clock::now();
  optimizer_->zero_grad();
  pipeline::StepTiming timing = executor_->runStep(step, *compute_);
  const auto t_sync = Clock::now();
  bool apply = true;
  if (scaler_) {
    // fp16: unscale, and skip the step everywhere when any tasklet of the
    // job found a non-finite gradient (the flag crosses the replica's
    // stages, then each stage's replicas, so every tasklet sees the same).
    // Under DiLoCo the replicas step alone: the flag stays in the replica.
    const bool sent_inf = compute_->takeFoundInf();
    TraceSpan span(trace, TraceLane::SYNC, "fp16 overflow check", {step});
    double flag = unscaleAndCheck(params_, scaler_->scale()) || sent_inf ? 1.0 : 0.0;
    flag = allReduceScalarSum(transport_, pp_group_, flag, step, 1, timeout_);
    if (!outer_) flag = allReduceScalarSum(transport_, dp_group_, flag, step, 2, timeout_);
    apply = scaler_->update(flag > 0);
    compute_->setLossScale(scaler_->scale());
  }
  // This stage's share of the squared global norm, before clipping; a tied
  // weight counts once: its owner's copy. Reported with the step even when
  // clipping is off (StepMetrics::grad_sq_sum); the step's reader sums it.
  // An fp16 step skipped for a non-finite gradient reports infinity.
  double local_sq = std::numeric_limits<double>::infinity();
  if (apply) {
    if (!outer_) {
      TraceSpan span(trace, TraceLane::SYNC, "data-parallel exchange", {step});
      const uint64_t wire = sync_->wireBytes();
      sync_->average(params_, step);
      span.args().bytes = static_cast<int64_t>(sync_->wireBytes() - wire);
    }
    if (!tied_.empty()) {
      TraceSpan span(trace, TraceLane::SYNC, "tied-weight all-reduce", {step});
      sumTiedGradients(step);
    }
    local_sq = squaredGradNorm(params_);
    for (const TiedCopy& c : tied_) {
      if (c.is_user) local_sq -= squaredGradNorm({c.param});
  }
  if (job_.training.grad_clip > 0) {
    TraceSpan span(trace, TraceLane::SYNC, "grad-norm all-reduce", {step});
    const double sq = allReduceScalarSum(transport_, pp_group_, local_sq, step, 0, timeout_);
    clipTo(params_, sq, job_.training.grad_clip);
  }
  }
  const double lr = learningRateAt(job_.training, step);
  setLearningRate(*optimizer_, lr);
  if (apply) {
    TraceSpan span(trace, TraceLane::COMPUTE, "optimizer step", {step});
    optimizer_->step();
  }
  // DiLoCo: every replica takes part in a round's end, skipped step or not.
  if (outer_) {
    TraceSpan span(trace, TraceLane::SYNC, "outer sync (DiLoCo)", {step});
    outer_->afterStep(step, job_.training.steps);
  }

  TaskletStep out;
  StepMetrics& part = out.part;
  part.step = step;
  part.lr = lr;
  part.seconds = seconds(t0, Clock::now());
  // Waiting at the end of the step for encodes on the codec lane is the
  // stage's own work, not the network's.
  part.compute_seconds = timing.compute_s + timing.wait_codec_s;
  part.comm_wait_seconds = timing.wait_recv_s + timing.wait_send_s + timing.wait_receipt_s +
                           seconds(t_sync, Clock::now());
  if (const auto* e = compute_->activationEncoder()) {
    part.activation_raw_bytes = takeDelta(e->stats().raw_bytes, act_raw_);
    part.activation_wire_bytes = takeDelta(e->stats().wire_bytes, act_wire_);
  }
  if (const auto* e = compute_->gradientEncoder()) {
    part.gradient_raw_bytes = takeDelta(e->stats().raw_bytes, grad_raw_);
    part.gradient_wire_bytes = takeDelta(e->stats().wire_bytes, grad_wire_);
  }
  part.dp_raw_bytes = takeDelta(outer_ ? outer_->rawBytes() : sync_->rawBytes(), dp_raw_);
  part.dp_wire_bytes = takeDelta(outer_ ? outer_->wireBytes() : sync_->wireBytes(), dp_wire_);
  part.grad_sq_sum = local_sq;
  part.peak_rss_bytes = peakRssBytes();
  const transport::TransportStats ts = transport_.stats();
  // This tasklet's entry of the by-rank tables (mergeTaskletStep adds them).
  auto atRank = [&](auto value) {
    std::vector<decltype(value)> v(static_cast<size_t>(rank_) + 1, 0);
    v.back() = value;
    return v;
  };
  part.sent_bytes_by_rank = atRank(takeDelta(ts.bytes_sent, sent_));
  part.received_bytes_by_rank = atRank(takeDelta(ts.bytes_received, received_));
  sent_to_.resize(std::max(sent_to_.size(), ts.bytes_sent_to.size()), 0);
  for (size_t peer = 0; peer < ts.bytes_sent_to.size(); ++peer) {
    const uint64_t bytes = takeDelta(ts.bytes_sent_to[peer], sent_to_[peer]);
    if (bytes > 0) part.link_sent_bytes[{rank_, static_cast<int>(peer)}] = bytes;
  }
  part.compute_seconds_by_rank = atRank(part.compute_seconds);
  part.comm_wait_seconds_by_rank = atRank(part.comm_wait_seconds);
  part.seconds_by_rank = atRank(part.seconds);
  if (stage_ == stages_ - 1) {
    out.has_loss = true;
    out.loss = compute_->takeLossSum() / micro_batches_;
  }
  if (trace) {
    trace->span(TraceLane::COMPUTE, "step", t0, Clock::now(), {step});
    trace->flush();  // the file holds every finished step, even after a crash
  }
  return out;
}

std::shared_ptr<common::TraceWriter> openTrace(const JobSpec& job, int rank, int generation) {
  const std::string& dir = job.logging.trace_dir;
  if (dir.empty()) return nullptr;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    GEOPIPE_THROW(IoError, "logging.trace_dir: cannot create the directory '", dir,
                  "': ", ec.message());
  }
  const int stages = job.parallelism.pipeline_stages;
  const int stage = rank % stages, replica = rank / stages;
  std::string name = "trace-stage" + std::to_string(stage) + "-replica" + std::to_string(replica);
  std::string process = "rank " + std::to_string(rank) + ": stage " + std::to_string(stage) +
                        ", replica " + std::to_string(replica);
  if (generation > 1) {
    name += "-gen" + std::to_string(generation);
    process += ", generation " + std::to_string(generation);
  }
  common::TraceWriterOptions o;
  o.path = (fs::path(dir) / (name + ".json")).string();
  o.pid = rank;
  o.process_name = process;
  try {
    return std::make_shared<common::TraceWriter>(o);
  } catch (const IoError& e) {
    rethrowWithContext(e, "logging.trace_dir: ");
  }
}

bool evaluationDue(const JobSpec& job, int64_t step, int64_t steps) {
  if (!job.data.hasValidation()) return false;
  const int every = job.training.eval_every;
  return step + 1 == steps || (every > 0 && (step + 1) % every == 0);
}

void Tasklet::evaluate(int64_t step, StepMetrics& into) {
  if (!val_) return;
  common::TraceSpan span(trace_.get(), common::TraceLane::COMPUTE, "evaluate", {step});
  const int replicas = job_.parallelism.data_parallel;
  const int mb = job_.training.micro_batch;
  std::vector<int64_t> mine;
  for (int64_t id = replica_; id < val_->numSamples(); id += replicas) mine.push_back(id);
  const int micro_batches = static_cast<int>((static_cast<int64_t>(mine.size()) + mb - 1) / mb);
  const int prev = stage_ > 0 ? rank_ - 1 : -1, next = stage_ < stages_ - 1 ? rank_ + 1 : -1;
  // Training frames use index 0; evaluation frames 1, so they never meet.
  constexpr int32_t kEvalIndex = 1;
  const bool was_training = compute_->module()->is_training();
  compute_->module()->eval();
  std::vector<std::shared_ptr<transport::Work>> sends;
  for (int m = 0; m < micro_batches; ++m) {
    const size_t begin = static_cast<size_t>(m) * mb;
    const std::vector<int64_t> ids(mine.begin() + begin,
                                   mine.begin() + std::min(mine.size(), begin + mb));
    transport::Bytes input;
    if (prev >= 0) {
      auto work = transport_.recv(prev, {transport::Channel::ACTIVATION, step, m, kEvalIndex});
      work->wait(timeout_);
      input = work->takePayload();
    }
    transport::Bytes output = compute_->evalForward(step, m, ids, *val_, std::move(input));
    if (next >= 0) {
      sends.push_back(transport_.send(next, {transport::Channel::ACTIVATION, step, m, kEvalIndex},
                                      std::move(output)));
    }
  }
  for (auto& s : sends) s->wait(timeout_);
  if (was_training) compute_->module()->train();
  const auto [sum, tokens] = compute_->takeValSums();
  into.val_loss_sum += sum;
  into.val_tokens += tokens;
}

std::string Tasklet::fileName(const std::string& suffix) const {
  return "tasklet-" + std::to_string(rank_) + "." + suffix;
}

std::vector<std::string> Tasklet::saveCheckpoint(const std::string& step_dir) const {
  common::TraceSpan span(trace_.get(), common::TraceLane::CHECKPOINT, "save checkpoint", {step_});
  std::error_code ec;
  fs::create_directories(step_dir, ec);
  if (ec) GEOPIPE_THROW(IoError, "cannot create checkpoint directory '", step_dir, "': ", ec.message());
  std::vector<std::string> files;
  {
    torch::serialize::OutputArchive archive, model_archive, optim_archive;
    compute_->module()->save(model_archive);
    optimizer_->save(optim_archive);
    archive.write("model", model_archive);
    archive.write("optimizer", optim_archive);
    if (scaler_) {
      archive.write("loss_scale",
                    torch::tensor({scaler_->scale(), double(scaler_->goodSteps())}, torch::kDouble));
    }
    const std::string name = fileName("pt");
    const std::string path = (fs::path(step_dir) / name).string();
    try {
      archive.save_to(path);
    } catch (const c10::Error& e) {
      GEOPIPE_THROW(IoError, "cannot write checkpoint '", path, "': ", e.what_without_backtrace());
    }
    files.push_back(name);
  }
  {
    const std::string name = fileName("gradsync");
    sync_->saveState((fs::path(step_dir) / name).string());
    files.push_back(name);
  }
  if (outer_) {
    const std::string name = fileName("outer"), sync_name = fileName("outersync");
    outer_->save((fs::path(step_dir) / name).string(), (fs::path(step_dir) / sync_name).string());
    files.push_back(name);
    files.push_back(sync_name);
  }
  auto* self = const_cast<Tasklet*>(this);
  if (auto* enc = self->compute_->activationEncoderMut(); enc && enc->deltaSender()) {
    const std::string name = fileName("acsgd-send");
    enc->deltaSender()->store().save((fs::path(step_dir) / name).string());
    files.push_back(name);
  }
  if (auto* dec = self->compute_->activationDecoderMut(); dec && dec->deltaReceiver()) {
    const std::string name = fileName("acsgd-recv");
    dec->deltaReceiver()->store().save((fs::path(step_dir) / name).string());
    files.push_back(name);
  }
  return files;
}

uint64_t Tasklet::acsgdBufferBytes() const {
  uint64_t bytes = 0;
  if (auto* enc = compute_->activationEncoderMut(); enc && enc->deltaSender()) {
    bytes += enc->deltaSender()->store().bytesUsed();
  }
  if (auto* dec = compute_->activationDecoderMut(); dec && dec->deltaReceiver()) {
    bytes += dec->deltaReceiver()->store().bytesUsed();
  }
  return bytes;
}

void Tasklet::loadCheckpoint(const SavedLayout& given, int64_t next_step) {
  common::TraceSpan span(trace_.get(), common::TraceLane::CHECKPOINT, "load checkpoint",
                         {next_step});
  SavedLayout saved = given;
  if (saved.stages <= 0) saved.stages = stages_;
  if (saved.replicas <= 0) saved.replicas = job_.parallelism.data_parallel;
  if (saved.layers_of_stage.empty()) {
    // Version 1: no layer ranges, so only this job's own split can read it.
    GEOPIPE_CHECK(saved.stages == stages_, ConfigError, "checkpoint '", saved.step_dir,
                  "' (manifest version 1) does not say which layers each of its ", saved.stages,
                  " stages held: resume it with parallelism.pipeline_stages: ", saved.stages);
    saved.layers_of_stage = layers_of_stage_;
  }
  const int replicas = job_.parallelism.data_parallel;
  GEOPIPE_CHECK(saved.replicas == replicas || next_step > 0, Error,
                "loadCheckpoint: resharding from ", saved.replicas,
                " replicas needs the checkpoint's next_step");
  const ReshardSources src = reshardSources(replica_, replicas, saved.replicas);
  const int same = saved.stageWithLayers(first_layer_, last_layer_);
  if (same < 0) {
    GEOPIPE_CHECK(!fs::exists(saved.file(0, src.model_replica, "outer")), ConfigError,
                  "checkpoint '", saved.step_dir,
                  "' was written under parallelism.data_parallel_sync kind diloco with another "
                  "split of the layers; a DiLoCo checkpoint resumes only with its own split");
    loadLayers(saved, src.model_replica);
    // The residuals and PowerSGD's Q are per stage: they start afresh.
    if (outer_) outer_->startFromWeights();
    restoreBuffers(saved, next_step);
    return;
  }
  loadStageWeights(saved.file(same, src.model_replica, "pt"));
  if (saved.replicas == replicas) {
    sync_->loadState(saved.file(same, replica_, "gradsync"));
  } else {
    std::vector<std::string> residuals;
    for (int r : src.residual_replicas) residuals.push_back(saved.file(same, r, "gradsync"));
    sync_->loadMergedState(saved.file(same, src.model_replica, "gradsync"), residuals,
                           src.residual_scale);
  }
  loadOuterState(saved, same, src);
  restoreBuffers(saved, next_step);
}

void Tasklet::loadStageWeights(const std::string& path) {
  try {
    torch::serialize::InputArchive archive, model_archive, optim_archive;
    archive.load_from(path);
    archive.read("model", model_archive);
    archive.read("optimizer", optim_archive);
    compute_->module()->load(model_archive);
    compute_->bindTiedWeights();
    optimizer_->load(optim_archive);
    torch::Tensor scale;
    if (scaler_ && archive.try_read("loss_scale", scale)) {
      scaler_->restore(scale[0].item<double>(), static_cast<int>(scale[1].item<double>()));
      compute_->setLossScale(scaler_->scale());
    }
  } catch (const c10::Error& e) {
    GEOPIPE_THROW(IoError, "checkpoint '", path, "' does not fit tasklet ", rank_, " (stage ",
                  stage_, ", replica ", replica_, "): ", e.what_without_backtrace());
  }
}

namespace {

// The optimizer's key of a parameter (LibTorch's own: its TensorImpl).
std::string stateKey(const torch::Tensor& p) {
  return c10::guts::to_string(p.unsafeGetTensorImpl());
}

// A copy of one parameter's optimizer state on `device`.
std::unique_ptr<torch::optim::OptimizerParamState> copyState(
    const torch::optim::OptimizerParamState& s, const torch::Device& device) {
  auto to = [&](const torch::Tensor& t) {
    return t.defined() ? t.to(device, /*non_blocking=*/false, /*copy=*/true) : t;
  };
  if (const auto* a = dynamic_cast<const torch::optim::AdamWParamState*>(&s)) {
    auto c = std::make_unique<torch::optim::AdamWParamState>();
    c->step(a->step());
    c->exp_avg(to(a->exp_avg()));
    c->exp_avg_sq(to(a->exp_avg_sq()));
    c->max_exp_avg_sq(to(a->max_exp_avg_sq()));
    return c;
  }
  if (const auto* m = dynamic_cast<const torch::optim::SGDParamState*>(&s)) {
    auto c = std::make_unique<torch::optim::SGDParamState>();
    c->momentum_buffer(to(m->momentum_buffer()));
    return c;
  }
  GEOPIPE_THROW(Error, "an optimizer state of unknown kind (makeOptimizer makes adamw or sgd)");
}

}  // namespace

// Another split: each saved stage that held some of this stage's layers is
// rebuilt as it was (its slice of the model, its optimizer), loaded from its
// file, and those layers' weights and optimizer state are copied over, by
// global layer index and parameter name.
void Tasklet::loadLayers(const SavedLayout& saved, int replica) {
  torch::NoGradGuard no_grad;
  ModelDef plain = model_;
  plain.load_weights = nullptr;  // the checkpoint's weights replace any pretrained ones
  auto& state = optimizer_->state();
  bool scale_read = false;
  for (int s = 0; s < saved.stages; ++s) {
    const auto [saved_first, saved_last] = saved.layers_of_stage[static_cast<size_t>(s)];
    const int from = std::max(saved_first, first_layer_), to = std::min(saved_last, last_layer_);
    if (from >= to) continue;
    const std::string path = saved.file(s, replica, "pt");
    try {
      torch::nn::Sequential slice = buildSlice(plain, saved_first, saved_last, job_.training.seed);
      torch::serialize::InputArchive archive, model_archive, optim_archive;
      archive.load_from(path, torch::kCPU);
      archive.read("model", model_archive);
      archive.read("optimizer", optim_archive);
      slice->load(model_archive);
      bindTiedWeights(plain, slice, saved_first, saved_last);
      auto saved_opt = makeOptimizer(job_.training.optimizer, uniqueParameters(*slice));
      saved_opt->load(optim_archive);
      for (int layer = from; layer < to; ++layer) {
        const auto held = slice->ptr(layer - saved_first)->named_parameters();
        for (const auto& p : compute_->module()->ptr(layer - first_layer_)->named_parameters()) {
          const torch::Tensor* q = held.find(p.key());
          GEOPIPE_CHECK(q != nullptr && q->sizes() == p.value().sizes(), IoError, "checkpoint '",
                        path, "' holds no parameter '", p.key(), "' of layer ", layer,
                        " of the shape tasklet ", rank_, " has");
          p.value().copy_(*q);
          const auto it = saved_opt->state().find(stateKey(*q));
          if (it != saved_opt->state().end()) {
            state[stateKey(p.value())] = copyState(*it->second, p.value().device());
          }
        }
      }
      torch::Tensor scale;
      if (scaler_ && !scale_read && from == first_layer_ && archive.try_read("loss_scale", scale)) {
        scaler_->restore(scale[0].item<double>(), static_cast<int>(scale[1].item<double>()));
        compute_->setLossScale(scaler_->scale());
        scale_read = true;
      }
    } catch (const c10::Error& e) {
      GEOPIPE_THROW(IoError, "checkpoint '", path, "' does not fit tasklet ", rank_, " (layers ",
                    from, " to ", to - 1, " of saved stage ", s, "): ", e.what_without_backtrace());
    }
  }
}

// The AC-SGD buffer stores of this stage's two boundaries: each from the
// saved stage on the same side of the same cut (merged over the saved
// replicas when their count differs); a cut the saved split did not have
// starts empty, on both of its sides.
void Tasklet::restoreBuffers(const SavedLayout& saved, int64_t next_step) {
  const int replicas = job_.parallelism.data_parallel;
  auto restore = [&](compression::ActivationBufferStore& store, int stage,
                     const std::string& suffix) {
    store.clear();
    if (stage < 0) return;
    if (saved.replicas == replicas) {
      store.load(saved.file(stage, replica_, suffix));
      return;
    }
    std::vector<std::string> paths;
    for (int r = 0; r < saved.replicas; ++r) paths.push_back(saved.file(stage, r, suffix));
    const data::Sampler saved_sampler = sampler_.withReplicas(saved.replicas);
    // Bound shards are dealt again for the new replica count: this replica
    // keeps the buffers of the samples it owns now, and its peer across
    // the boundary keeps the same ones.
    KeepSample keep;
    if (sampler_.order() == data::SampleOrder::BOUND) {
      keep = [&](int64_t id) { return sampler_.ownerOf(id) == replica_; };
    }
    mergeBufferStores(
        paths,
        [&](const std::vector<int64_t>& ids) {
          return saved_sampler.lastReplicaOf(ids, next_step);
        },
        store, keep);
  };
  if (auto* enc = compute_->activationEncoderMut(); enc && enc->deltaSender()) {
    restore(enc->deltaSender()->store(), saved.stageEndingAt(last_layer_), "acsgd-send");
  }
  if (auto* dec = compute_->activationDecoderMut(); dec && dec->deltaReceiver()) {
    restore(dec->deltaReceiver()->store(), saved.stageStartingAt(first_layer_), "acsgd-recv");
  }
}

// DiLoCo's state beside the weights: the shared weights and the outer
// optimizer are the same on every replica, so a resharded resume takes the
// model replica's, with the residuals merged as for the gradient sync. A
// checkpoint of an every-step job starts the first round at its weights;
// one of a DiLoCo job cannot resume under every-step sync, whose replicas
// would keep the different weights they hold mid-round.
void Tasklet::loadOuterState(const SavedLayout& saved, int stage, const ReshardSources& src) {
  const std::string outer = saved.file(stage, src.model_replica, "outer");
  const bool saved_outer = fs::exists(outer);
  if (!outer_) {
    GEOPIPE_CHECK(!saved_outer, ConfigError, "checkpoint '", saved.step_dir,
                  "' was written under parallelism.data_parallel_sync kind diloco, whose "
                  "replicas hold different weights between outer steps: resume it with kind: "
                  "diloco");
    return;
  }
  if (!saved_outer) {
    outer_->startFromWeights();
    return;
  }
  if (saved.replicas == job_.parallelism.data_parallel) {
    outer_->load(outer, saved.file(stage, replica_, "outersync"));
    return;
  }
  std::vector<std::string> residuals;
  for (int r : src.residual_replicas) residuals.push_back(saved.file(stage, r, "outersync"));
  outer_->loadMerged(outer, saved.file(stage, src.model_replica, "outersync"), residuals,
                     src.residual_scale);
}

}  // namespace geopipe::runtime
