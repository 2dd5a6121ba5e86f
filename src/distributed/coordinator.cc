// The Coordinator service: join, plan, address exchange, step metrics,
// checkpoint commits, heartbeats, the stop / abort directives, and recovery:
// generations that regroup the surviving workers after a failure.
#include "src/distributed/coordinator.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <condition_variable>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "geopipe/error.h"
#include "geopipe/model.h"
#include "proto/coordinator.grpc.pb.h"
#include "scheduler/planner.h"
#include "src/common/strings.h"
#include "src/config/buffer_check.h"
#include "src/distributed/job_bundle.h"
#include "src/distributed/recovery.h"
#include "src/distributed/request_checks.h"
#include "src/distributed/step_ledger.h"
#include "src/distributed/step_report.h"
#include "src/runtime/checkpoint.h"
#include "src/runtime/placement.h"
#include "src/runtime/precision.h"
#include "src/runtime/tasklet.h"
#include "src/security/token.h"
#include "src/transport/grpc/credentials.h"
#include "src/transport/grpc/grpc_log.h"

namespace geopipe::distributed {
namespace {

using Clock = std::chrono::steady_clock;
namespace pb = geopipe::v1;

constexpr uint32_t kProtocol = pb::COORDINATOR_PROTOCOL_CURRENT;
constexpr auto kPoll = std::chrono::milliseconds(100);

double secondsBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

bool isWildcardHost(const std::string& host) {
  return host.empty() || host == "0.0.0.0" || host == "::" || host == "[::]";
}

// "ipv4:127.0.0.1:5555" / "ipv6:[::1]:5555" -> "127.0.0.1" / "[::1]".
std::string hostOfPeer(const std::string& peer) {
  std::string s = peer;
  const auto colon = s.find(':');
  if (colon != std::string::npos && (s.rfind("ipv4", 0) == 0 || s.rfind("ipv6", 0) == 0)) {
    s = s.substr(colon + 1);
  }
  const auto last = s.rfind(':');
  if (last != std::string::npos) s = s.substr(0, last);
  return s.empty() ? "127.0.0.1" : s;
}

// The topology restricted to `keep` (global device indices, sorted): sites
// without a kept device are dropped; device k of the result is keep[k].
TopologySpec subTopology(const TopologySpec& t, const std::vector<int>& keep) {
  TopologySpec s;
  s.name = t.name;
  s.description = t.description;
  s.source = t.source;
  std::vector<int> new_site(static_cast<size_t>(t.numSites()), -1);
  std::vector<int> old_site;
  for (int d : keep) {
    const int site = t.devices[static_cast<size_t>(d)].site;
    if (new_site[static_cast<size_t>(site)] < 0) {
      new_site[static_cast<size_t>(site)] = static_cast<int>(old_site.size());
      old_site.push_back(site);
      SiteSpec ss = t.sites[static_cast<size_t>(site)];
      ss.devices.clear();
      s.sites.push_back(ss);
    }
  }
  for (size_t k = 0; k < keep.size(); ++k) {
    DeviceSpec dev = t.devices[static_cast<size_t>(keep[k])];
    dev.site = new_site[static_cast<size_t>(dev.site)];
    s.sites[static_cast<size_t>(dev.site)].devices.push_back(static_cast<int>(k));
    s.devices.push_back(dev);
  }
  s.site_links.assign(old_site.size(), std::vector<LinkSpec>(old_site.size()));
  for (size_t a = 0; a < old_site.size(); ++a)
    for (size_t b = 0; b < old_site.size(); ++b)
      s.site_links[a][b] =
          t.site_links[static_cast<size_t>(old_site[a])][static_cast<size_t>(old_site[b])];
  return s;
}

int tokensPerStep(const JobSpec& job) {
  return job.training.global_batch * job.model.seq_len;
}

}  // namespace

class Coordinator::Impl final : public pb::Coordinator::Service {
 public:
  explicit Impl(CoordinatorOptions options) : opt_(std::move(options)) {
    bundle_ = bundleJobFile(opt_.job_path, opt_.overrides);
    job_ = parseBundle(bundle_);
    job_.security = bundle_.security;
    resolveEmulateLinks();
    if (opt_.steps) job_.training.steps = static_cast<int>(*opt_.steps);
    runtime::checkComputeDtype(job_);
    if (job_.parallelism.dataParallelAuto()) {
      const JobSpec priced = scheduler::effectiveNetworkJob(job_);
      auto plan = scheduler::plan(priced, scheduler::searchOptionsFromJob(priced), false,
                                  config::plannerStores(priced));
      job_.parallelism.pipeline_stages = plan.d_pp;
      job_.parallelism.data_parallel = plan.d_dp;
      event(detail::concat("data_parallel: auto -> the scheduler chose ", plan.d_pp, " stages x ",
                           plan.d_dp, " replicas"));
    }
    stages_ = job_.parallelism.pipeline_stages;
    replicas_ = job_.parallelism.data_parallel;
    world_ = stages_ * replicas_;
    max_world_ = world_;
    model_ = makeModel(job_.model);
    GEOPIPE_CHECK(model_.bodyLayers() >= stages_, ConfigError, "model '", model_.name, "' has ",
                  model_.bodyLayers(), " layers to split but parallelism.pipeline_stages is ",
                  stages_);
    resume_replicas_ = replicas_;
    const FaultToleranceSpec& ft0 = job_.fault_tolerance;
    min_replicas_ = ft0.min_replicas > 0 ? std::min(ft0.min_replicas, replicas_) : replicas_;
    if (ft0.min_replicas > 0 && (ft0.max_restarts == 0 || ft0.min_replicas >= replicas_)) {
      event(detail::concat("note: fault_tolerance.min_replicas ", ft0.min_replicas,
                           " has no effect: ",
                           ft0.max_restarts == 0
                               ? std::string("max_restarts is 0, so a failure ends the job")
                               : detail::concat("the job has ", replicas_,
                                                " replica(s), it cannot shrink below that")));
    }
    if (opt_.resume) findResumePoint();
    committed_replicas_ = resume_replicas_;
    ledger_.emplace(job_, first_step_);
    max_reported_ = first_step_ - 1;
    committed_next_step_ = first_step_;
    const FaultToleranceSpec& ft = job_.fault_tolerance;
    heartbeat_timeout_ = opt_.heartbeat_timeout.value_or(
        std::chrono::milliseconds(static_cast<int64_t>(ft.heartbeat_timeout * 1000)));
    rejoin_timeout_ = std::chrono::milliseconds(static_cast<int64_t>(ft.rejoin_timeout * 1000));
    security_ = opt_.security ? *opt_.security : jobSecurity(job_, opt_.allow_insecure_remote);
    if (opt_.allow_insecure_remote) security_.link.allow_insecure_remote = true;
    join_gate_.emplace(security_.token);
    transport::checkPlaintextAllowed(security_.link, opt_.listen_address,
                                     "the coordinator's --listen address");
    max_registrations_ =
        world_ + (opt_.spare_registrations < 0 ? world_ : opt_.spare_registrations);

    transport::installGrpcLogging();
    grpc::ServerBuilder builder;
    builder.AddListeningPort(opt_.listen_address, transport::serverCredentials(security_.link),
                             &port_);
    builder.RegisterService(this);
    builder.SetMaxReceiveMessageSize(transport::kMaxCoordinatorRequestBytes);
    builder.SetMaxSendMessageSize(transport::kMaxCoordinatorReplyBytes);
    builder.AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS,
                               static_cast<int>(opt_.handshake_timeout.count()));
    server_ = builder.BuildAndStart();
    if (!server_ || port_ == 0) {
      GEOPIPE_THROW(IoError, "coordinator cannot listen on '", opt_.listen_address,
                    "' (address in use or not local?); choose another --listen address");
    }
    const auto colon = opt_.listen_address.rfind(':');
    std::string host = opt_.listen_address.substr(0, colon);
    if (isWildcardHost(host)) host = "0.0.0.0";
    address_ = host + ":" + std::to_string(port_);
    monitor_ = std::thread([this] { monitorLoop(); });
  }

  ~Impl() override {
    {
      Locked lock(*this);
      shutting_down_ = true;
    }
    cv_.notify_all();
    if (monitor_.joinable()) monitor_.join();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    deliverEvents();
  }

  // --- public API ---------------------------------------------------------

  std::string listeningAddress() const { return address_; }
  JobSpec job() const {
    std::lock_guard<std::mutex> lock(mu_);
    return job_;
  }
  int worldSize() const {
    std::lock_guard<std::mutex> lock(mu_);
    return world_;
  }

  void requestStop(bool checkpoint) {
    Locked lock(*this);
    if (phase_ == Phase::ENDED || stop_requested_) return;
    interrupted_ = true;
    if (!placed_) {
      finalFailureLocked(
          -1,
          phase_ == Phase::REGROUPING
              ? detail::concat("the job was stopped while it regrouped (", regroup_reason_,
                               "); restart it with --resume from the "
                               "last checkpoint")
              : std::string("the job was stopped before every worker joined"),
          "Interrupted");
      return;
    }
    stop_requested_ = true;
    checkpoint_at_stop_ = checkpoint && !job_.checkpoint.dir.empty();
    eventLocked(
        "stop requested: the workers switch to synchronous step reports to agree on "
        "their last step");
    maybeFixStopLocked();
    cv_.notify_all();
  }

  void reportFailure(int64_t pid, int rank, const std::string& cause, const std::string& type) {
    Locked lock(*this);
    if (pid > 0 && rank < 0 && lost_pids_.count(pid)) {
      // Already declared dead and left out of the job: its end is no news.
      eventLocked(detail::concat("lost worker pid ", pid, " is gone: ", cause));
      return;
    }
    awaited_pids_.erase(pid);  // a survivor that died while the others rejoin
    if (rank < 0) {
      for (auto& s : slots_) {
        if (s.info.pid != pid || s.gone) continue;
        if (s.spare) {
          // An idle spare that died is dropped; the job never used it.
          s.gone = true;
          eventLocked(detail::concat("spare ", s.info.hostname, " pid ", pid,
                                     " is gone and no longer a spare: ", cause));
          cv_.notify_all();
          return;
        }
        rank = s.info.rank;
        if (!placed_ && rank < 0) s.gone = true;  // joined, not placed: its place is free again
      }
    }
    std::string who = rank >= 0 ? describeLocked(rank)
                                : detail::concat("worker process ", pid, " (not placed yet)");
    recordFailureLocked(rank, detail::concat(who, " failed: ", cause), type, /*primary=*/true);
  }

  std::vector<TaskletInfo> tasklets() const {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<TaskletInfo> out;
    if (!placed_) return out;
    for (int r = 0; r < static_cast<int>(slot_of_rank_.size()); ++r)
      out.push_back(slots_[static_cast<size_t>(slot_of_rank_[static_cast<size_t>(r)])].info);
    return out;
  }

  std::vector<int64_t> lostWorkers() const {
    std::lock_guard<std::mutex> lock(mu_);
    return std::vector<int64_t>(lost_pids_.begin(), lost_pids_.end());
  }

  int64_t generation() const {
    std::lock_guard<std::mutex> lock(mu_);
    return generation_;
  }
  int recoveries() const {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<int>(restartsLocked());
  }

  std::optional<CoordinatorResult> waitFor(std::chrono::milliseconds timeout) {
    Locked lock(*this);
    if (!cv_.wait_for(lock, timeout, [&] { return phase_ == Phase::ENDED; })) return std::nullopt;
    // Deliver every finished step before returning.
    lock.unlock();
    flushSteps();
    lock.lock();
    CoordinatorResult r;
    r.ok = !failure_;
    r.interrupted = interrupted_;
    r.recoveries = static_cast<int>(restartsLocked());
    r.grows = static_cast<int>(grown_);
    r.replicas = replicas_;
    if (failure_) {
      r.failure = failure_->message;
      r.failure_type = failure_->type;
      r.failed_rank = failure_->rank;
    }
    r.train = result_;
    r.train.first_step = first_step_;
    r.train.interrupted = interrupted_;
    const double done = static_cast<double>(result_.losses.size());
    const auto last_step_at = ledger_->lastTaken();
    if (train_started_ && last_step_at && *last_step_at > start_at_) {
      r.train.seconds = secondsBetween(start_at_, *last_step_at);
      r.train.tokens_per_second = tokensPerStep(job_) * done / r.train.seconds;
    }
    return r;
  }

  bool waitForWorkersGone(std::chrono::milliseconds timeout) {
    Locked lock(*this);
    return cv_.wait_for(lock, timeout, [&] {
      if (!placed_) return true;
      for (int s : slot_of_rank_)
        if (!slots_[static_cast<size_t>(s)].info.finished) return false;
      return true;
    });
  }

  // --- the service --------------------------------------------------------

  grpc::Status Register(grpc::ServerContext* ctx, const pb::RegisterRequest* req,
                        pb::Assignment* out) override {
    Locked lock(*this);
    if (grpc::Status st = checkRegisterRequest(*req); !st.ok()) return st;
    if (grpc::Status st = checkJoinTokenLocked(ctx, *req); !st.ok()) return st;
    // An idle spare calling again (it proves it lives once per heartbeat
    // interval): its slot, not a new registration.
    size_t id = slots_.size();
    if (req->spare_ticket() != 0) {
      for (size_t i = 0; i < slots_.size(); ++i)
        if (slots_[i].ticket == req->spare_ticket() && slots_[i].info.pid == req->pid() &&
            !slots_[i].gone)
          id = i;
    }
    if (phase_ == Phase::ENDED) {
      if (id == slots_.size() || !slots_[id].spare)
        return {grpc::StatusCode::ABORTED, "the job has already ended"};
      slots_[id].gone = true;
      out->set_protocol_version(kProtocol);
      out->set_job_over(true);
      return grpc::Status::OK;
    }
    if (id == slots_.size()) {
      if (grpc::Status st = registerNewLocked(ctx, req); !st.ok()) return st;
      id = slots_.size() - 1;
    }
    slots_[id].last_seen = Clock::now();
    slots_[id].waiting = true;
    maybePlaceLocked();
    const auto call_start = Clock::now();
    const auto spare_poll = heartbeatInterval(heartbeat_timeout_);
    while (!(placed_ && slots_[id].info.rank >= 0) && phase_ != Phase::ENDED && !shutting_down_) {
      if (ctx->IsCancelled()) {
        slots_[id].gone = true;
        slots_[id].waiting = false;
        eventLocked(detail::concat(slots_[id].spare ? "spare " : "worker ", req->hostname(),
                                   " pid ", req->pid(), " left before it was placed"));
        cv_.notify_all();
        return {grpc::StatusCode::CANCELLED, "worker left"};
      }
      if (slots_[id].spare && Clock::now() - call_start >= spare_poll) {
        // Still idle: the spare calls again with its ticket.
        slots_[id].waiting = false;
        slots_[id].last_seen = Clock::now();
        out->set_protocol_version(kProtocol);
        out->set_spare(true);
        out->set_spare_ticket(slots_[id].ticket);
        return grpc::Status::OK;
      }
      cv_.wait_for(lock, kPoll);
    }
    slots_[id].waiting = false;
    if (slots_[id].spare && phase_ == Phase::ENDED) {
      slots_[id].gone = true;
      out->set_protocol_version(kProtocol);
      out->set_job_over(true);
      return grpc::Status::OK;
    }
    if (!placed_ || phase_ == Phase::ENDED || slots_[id].info.rank < 0) {
      return {grpc::StatusCode::ABORTED,
              failure_ ? failure_->message : std::string("the coordinator is shutting down")};
    }
    const Slot& s = slots_[id];
    fillAssignmentLocked(s, out);
    return grpc::Status::OK;
  }

  grpc::Status ReportAddress(grpc::ServerContext* ctx, const pb::AddressRequest* req,
                             pb::AddressTable* out) override {
    Locked lock(*this);
    if (grpc::Status st = checkAddressRequest(*req, boundsLocked()); !st.ok()) return st;
    const auto stale = [&] { return req->generation() != generation_ || !placed_; };
    if (stale() && phase_ != Phase::ENDED) {
      out->set_regroup(true);
      return grpc::Status::OK;
    }
    Slot* s = slotOfRankLocked(req->rank());
    if (!s) return {grpc::StatusCode::INVALID_ARGUMENT, "unknown rank"};
    s->info.address = req->address();
    s->last_seen = Clock::now();
    ++addresses_;
    cv_.notify_all();
    while (addresses_ < world_ && phase_ != Phase::ENDED && !shutting_down_ && !stale()) {
      if (ctx->IsCancelled()) return {grpc::StatusCode::CANCELLED, "worker left"};
      cv_.wait_for(lock, kPoll);
    }
    if (stale() && phase_ != Phase::ENDED) {
      out->set_regroup(true);
      return grpc::Status::OK;
    }
    if (phase_ == Phase::ENDED || shutting_down_) {
      return {grpc::StatusCode::ABORTED,
              failure_ ? failure_->message : std::string("the coordinator is shutting down")};
    }
    if (!train_started_) {
      train_started_ = true;
      start_at_ = Clock::now();
      eventLocked("every worker is connected; training");
    } else if (announced_generation_ != generation_) {
      eventLocked(detail::concat("generation ", generation_,
                                 ": every worker is connected; training from step ",
                                 first_step_ + 1));
    }
    announced_generation_ = generation_;
    for (int r = 0; r < world_; ++r) out->add_addresses(slotOfRankLocked(r)->info.address);
    return grpc::Status::OK;
  }

  grpc::Status ReportStep(grpc::ServerContext*, const pb::StepReport* req,
                          pb::Directive* out) override {
    Locked lock(*this);
    if (grpc::Status st = checkStepReport(*req, boundsLocked()); !st.ok()) return st;
    if (staleLocked(req->generation(), out)) return grpc::Status::OK;
    Slot* s = slotOfRankLocked(req->rank());
    if (!s) return {grpc::StatusCode::INVALID_ARGUMENT, "unknown rank"};
    const auto now = Clock::now();
    s->last_seen = now;
    s->last_step = std::max(s->last_step, req->step());  // reports may arrive out of order
    s->synchronous = s->synchronous || req->synchronous();
    const bool complete = ledger_->add(req->rank(), world_, req->step(), stepMetricsOf(*req),
                                       req->has_loss(), req->loss(), now);
    max_reported_ = std::max(max_reported_, req->step());
    maybeFixStopLocked();
    if (complete) cv_.notify_all();
    fillDirectiveLocked(out, req->generation());
    return grpc::Status::OK;
  }

  grpc::Status ReportCheckpoint(grpc::ServerContext*, const pb::CheckpointReport* req,
                                pb::Directive* out) override {
    Locked lock(*this);
    if (grpc::Status st = checkCheckpointReport(*req, boundsLocked()); !st.ok()) return st;
    if (staleLocked(req->generation(), out)) return grpc::Status::OK;
    Slot* s = slotOfRankLocked(req->rank());
    if (!s) return {grpc::StatusCode::INVALID_ARGUMENT, "unknown rank"};
    s->last_seen = Clock::now();
    if (req->next_step() <= committed_next_step_) {
      // A retried report of a checkpoint committed already.
      fillDirectiveLocked(out, req->generation());
      return grpc::Status::OK;
    }
    auto& pending = checkpoints_[req->next_step()];
    if (!pending.ranks.insert(req->rank()).second) {
      // A repeated report (a retried call) counts once: the commit waits
      // for every tasklet's files, not for world_ reports.
      fillDirectiveLocked(out, req->generation());
      return grpc::Status::OK;
    }
    pending.arrived += 1;
    for (const auto& f : req->files()) pending.files.push_back(f);
    if (pending.arrived == world_) {
      runtime::CheckpointManifest manifest;
      manifest.job = job_.name;
      manifest.next_step = req->next_step();
      manifest.stages = stages_;
      manifest.replicas = replicas_;
      manifest.model_json = runtime::checkpointModelJson(job_.model, job_.data.tokenizer);
      manifest.layers_of_stage = placement_.layers_of_stage;
      for (const auto& f : pending.files) manifest.files.push_back({f, 0, 0});
      checkpoints_.erase(req->next_step());
      ++commits_in_flight_;
      lock.unlock();
      std::string error;
      try {
        runtime::commitCheckpoint(job_.checkpoint.dir, manifest, job_.checkpoint.keep);
      } catch (const Error& e) {
        error = e.what();
      }
      lock.lock();
      --commits_in_flight_;
      if (error.empty()) {
        if (req->next_step() >= committed_next_step_) {
          committed_next_step_ = req->next_step();
          committed_replicas_ = manifest.replicas;
        }
        eventLocked(detail::concat("checkpoint committed: ",
                                   runtime::stepDirectory(job_.checkpoint.dir, req->next_step())));
        if (req->generation() == generation_) maybeGrowLocked();
      } else {
        finalFailureLocked(-1, "cannot commit the checkpoint: " + error, "IoError");
      }
      cv_.notify_all();
    }
    fillDirectiveLocked(out, req->generation());
    return grpc::Status::OK;
  }

  grpc::Status SendHeartbeat(grpc::ServerContext*, const pb::Heartbeat* req,
                             pb::Directive* out) override {
    Locked lock(*this);
    if (grpc::Status st = checkHeartbeat(*req, boundsLocked()); !st.ok()) return st;
    if (staleLocked(req->generation(), out)) return grpc::Status::OK;
    Slot* s = slotOfRankLocked(req->rank());
    if (!s) return {grpc::StatusCode::INVALID_ARGUMENT, "unknown rank"};
    s->last_seen = Clock::now();
    if (req->steps_done() && !s->steps_done) {
      s->steps_done = true;
      cv_.notify_all();
    }
    fillDirectiveLocked(out, req->generation());
    return grpc::Status::OK;
  }

  grpc::Status ReportFailure(grpc::ServerContext*, const pb::FailureReport* req,
                             pb::Directive* out) override {
    Locked lock(*this);
    if (staleLocked(req->generation(), out)) return grpc::Status::OK;
    Slot* s = slotOfRankLocked(req->rank());
    if (!s) return {grpc::StatusCode::INVALID_ARGUMENT, "unknown rank"};
    s->last_seen = Clock::now();
    recordWorkerFailureLocked(req->rank(), req->error(), req->error_type());
    fillDirectiveLocked(out, req->generation());
    return grpc::Status::OK;
  }

  grpc::Status Finish(grpc::ServerContext*, const pb::FinishRequest* req,
                      pb::FinishReply*) override {
    Locked lock(*this);
    if (grpc::Status st = checkFinishRequest(*req, boundsLocked()); !st.ok()) return st;
    // A worker of an ended generation leaving is no news: the failure that
    // ended it is already handled.
    if (req->generation() != generation_ || !placed_) return grpc::Status::OK;
    Slot* s = slotOfRankLocked(req->rank());
    if (!s) return {grpc::StatusCode::INVALID_ARGUMENT, "unknown rank"};
    s->info.finished = true;
    s->last_seen = Clock::now();
    if (!req->ok()) recordWorkerFailureLocked(req->rank(), req->error(), req->error_type());
    cv_.notify_all();
    return grpc::Status::OK;
  }

 private:
  struct Slot {
    TaskletInfo info;
    int device = -1;          // requested device, -1 = any
    std::string listen_host;  // what peers use to reach it
    Clock::time_point last_seen;
    int64_t last_step = -1;
    bool synchronous = false;  // reports synchronously (phase 1 of a stop)
    bool gone = false;        // left before placement, or its generation ended
    int previous_rank = -1;   // its rank in the previous generation, if any
    int64_t generation = 0;   // the generation it was placed in
    bool steps_done = false;  // ran its last step and reported its checkpoint
    bool spare = false;       // an idle spare: not placed until promoted
    bool waiting = false;     // inside its Register call (alive while it lasts)
    uint64_t ticket = 0;      // a spare's proof of identity when it calls again
  };
  struct PendingCheckpoint {
    std::set<int> ranks;  // tasklets that reported
    int arrived = 0;
    std::vector<std::string> files;
  };
  struct Failure {
    std::string message;
    std::string type;
    int rank = -1;
    bool primary = true;
    Clock::time_point at;
    int64_t generation = 0;  // when it was reported (its rank is of that generation)
    // The worker's own error ("Type: what"); empty for what the coordinator
    // observed (silence, a process death, a late step).
    std::string cause;
  };

  // A new worker's registration (token checked): a slot, as a worker the
  // job waits for or as an idle spare.
  grpc::Status registerNewLocked(grpc::ServerContext* ctx, const pb::RegisterRequest* req) {
    // A survivor rejoining its place after a failure is not counted: the
    // cap is on newcomers (replacements, spares).
    const bool awaited = awaited_pids_.count(req->pid()) > 0;
    if (!awaited && registrations_ >= max_registrations_) {
      eventLocked(detail::concat("refused a registration from ", ctx->peer(), ": ", registrations_,
                                 " registrations accepted already"));
      return {grpc::StatusCode::RESOURCE_EXHAUSTED,
              detail::concat("job '", job_.name, "' has accepted ", registrations_,
                             " registrations already (", world_, " tasklets plus ",
                             max_registrations_ - world_,
                             " for spares and replacements); restart the "
                             "coordinator")};
    }
    int device = -1;
    if (grpc::Status st = resolveDeviceLocked(req->device(), &device); !st.ok()) return st;
    if (!awaited) ++registrations_;
    Slot slot;
    slot.device = device;
    slot.info.hostname = req->hostname();
    slot.info.pid = req->pid();
    slot.listen_host =
        isWildcardHost(req->listen_host()) ? hostOfPeer(ctx->peer()) : req->listen_host();
    slot.last_seen = Clock::now();
    slot.previous_rank = req->has_previous_rank() ? req->previous_rank() : -1;
    awaited_pids_.erase(req->pid());
    slot.spare = joinsAsSpare(placed_, activeSlotsLocked(), static_cast<int>(awaited_pids_.size()),
                              world_, awaited);
    slot.ticket = ++last_ticket_;
    slots_.push_back(slot);
    if (slot.spare) {
      eventLocked(detail::concat("spare joined: ", req->hostname(), " pid ", req->pid(),
                                 ", device ", req->device().empty() ? "any" : req->device(),
                                 " (idle; ", idleSparesLocked(), " spare(s))"));
    } else {
      eventLocked(detail::concat(
          req->has_previous_rank() ? "worker rejoined: " : "worker joined: ", req->hostname(),
          " pid ", req->pid(), ", device ", req->device().empty() ? "any" : req->device(), " (",
          activeSlotsLocked(), "/", world_, ")"));
    }
    return grpc::Status::OK;
  }

  void fillAssignmentLocked(const Slot& s, pb::Assignment* out) {
    out->set_generation(s.generation);
    out->set_heartbeat_interval_ms(heartbeatInterval(heartbeat_timeout_).count());
    out->set_heartbeat_timeout_ms(heartbeat_timeout_.count());
    out->set_recoverable(job_.fault_tolerance.max_restarts > 0);
    out->set_rejoin_timeout_ms(rejoin_timeout_.count());
    out->set_protocol_version(kProtocol);
    out->set_rank(s.info.rank);
    out->set_stages(stages_);
    out->set_replicas(replicas_);
    for (int d : placement_.device_of_rank) out->add_device_of_rank(d);
    for (const auto& [first, last] : placement_.layers_of_stage) {
      out->add_first_layer(first);
      out->add_last_layer(last);
    }
    out->set_placement_source(placement_.source);
    out->set_job_yaml(bundle_.yaml);
    out->set_job_source(bundle_.source);
    out->set_base_dir(bundle_.base_dir);
    out->set_steps(job_.training.steps);
    out->set_first_step(first_step_);
    out->set_resume_dir(resume_dir_);
    out->set_resume_replicas(resume_replicas_);
    out->set_job_token(job_token_);
    out->set_listen_host(s.listen_host);
    out->set_emulate_links(job_.transport.emulate_links);
    int on_host = 0;
    for (int r = 0; r < static_cast<int>(slot_of_rank_.size()); ++r)
      on_host += slotOfRankLocked(r)->info.hostname == s.info.hostname ? 1 : 0;
    out->set_workers_on_host(std::max(1, on_host));
  }

  // transport.emulate_links: the job's, or when it does not say, the
  // default of how the job runs (CoordinatorOptions). Said loudly either
  // way, since emulated links on real hosts throttle every transfer to
  // numbers someone typed into a topology.
  void resolveEmulateLinks() {
    const YAML::Node root = YAML::Load(bundle_.yaml);
    const bool set = root.IsMap() && root["transport"] && root["transport"].IsMap() &&
                     root["transport"]["emulate_links"];
    if (!set) job_.transport.emulate_links = opt_.emulate_links_by_default;
    if (job_.transport.emulate_links && !opt_.emulate_links_by_default) {
      event(detail::concat(
          "links are EMULATED (transport.emulate_links: true): every transfer between workers is "
          "slowed to the topology's bandwidth and latency, as on one machine; for real hosts set "
          "transport.emulate_links: false"));
    } else if (!set) {
      event(job_.transport.emulate_links
                ? "links are emulated (transport.emulate_links not set; the default on one machine)"
                : "links are real, not emulated (transport.emulate_links not set; the default "
                  "across hosts)");
    }
  }

  // The join token check of Register: constant-time, never logged; a host
  // that keeps sending wrong tokens is throttled, and each host's first
  // refusal and each throttling are logged once with its address.
  grpc::Status checkJoinTokenLocked(grpc::ServerContext* ctx, const pb::RegisterRequest& req) {
    const JoinGate::Outcome o =
        join_gate_->check(hostOfPeer(ctx->peer()),
                          detail::concat(ctx->peer(), " (host '", req.hostname().substr(0, 64),
                                         "', pid ", req.pid(), ")"),
                          req.join_token(), Clock::now());
    for (const auto& line : o.events) eventLocked(line);
    switch (o.verdict) {
      case JoinGate::Verdict::ADMIT:
        return grpc::Status::OK;
      case JoinGate::Verdict::THROTTLED:
        return {grpc::StatusCode::RESOURCE_EXHAUSTED, o.message};
      case JoinGate::Verdict::WRONG_TOKEN:
        break;
    }
    return {grpc::StatusCode::PERMISSION_DENIED, o.message};
  }

  void event(const std::string& line) {
    if (opt_.on_event) {
      opt_.on_event(line);
    } else {
      spdlog::info("{}", line);
    }
  }
  // Queues `line` for on_event; the Locked that holds mu_ delivers it.
  void eventLocked(const std::string& line) { events_.push_back(line); }

  // Hands the queued events to on_event in order, outside mu_: a slow sink
  // (the CLI's stdout) holds up no call, and one that calls back into the
  // coordinator finds the lock free. One thread delivers at a time; a
  // thread that finds another delivering leaves its events to it (the
  // deliverer looks again after letting go), and a sink calling back in
  // returns at once (its events follow when it returns).
  void deliverEvents() {
    thread_local const Impl* delivering = nullptr;
    if (delivering == this) return;
    while (true) {
      std::unique_lock<std::mutex> order(deliver_mu_, std::try_to_lock);
      if (!order.owns_lock()) return;
      delivering = this;
      while (true) {
        std::vector<std::string> lines;
        {
          std::lock_guard<std::mutex> lock(mu_);
          lines.swap(events_);
        }
        if (lines.empty()) break;
        for (const auto& line : lines) {
          try {
            event(line);
          } catch (const std::exception& e) {
            spdlog::warn("the coordinator's event sink failed: {} (event: {})", e.what(), line);
          }
        }
      }
      delivering = nullptr;
      order.unlock();
      std::lock_guard<std::mutex> lock(mu_);
      if (events_.empty()) return;
    }
  }

  void findResumePoint() {
    const std::string& dir = job_.checkpoint.dir;
    const runtime::CheckpointManifest manifest =
        runtime::resumePoint(dir, stages_, replicas_, job_.training.steps);
    resume_replicas_ = manifest.replicas;
    first_step_ = manifest.next_step;
    // Keep the layer split the checkpoint was written with (version 2).
    resume_body_split_ =
        runtime::savedBodySplit(manifest, model_.prologue_layers, model_.epilogue_layers);
    resume_dir_ = runtime::stepDirectory(dir, first_step_);
    event(detail::concat("resuming from '", resume_dir_, "' at step ", first_step_));
  }

  // Workers the next placement uses: joined, not gone, not spares.
  int activeSlotsLocked() const {
    int n = 0;
    for (const auto& s : slots_) n += s.gone || s.spare ? 0 : 1;
    return n;
  }
  int idleSparesLocked() const {
    int n = 0;
    for (const auto& s : slots_) n += !s.gone && s.spare ? 1 : 0;
    return n;
  }
  // Idle spares heard from within two of their calling intervals (a dead
  // one is dropped only after heartbeat_timeout; a grow should not count it).
  int liveSparesLocked() const {
    const auto now = Clock::now();
    const auto recent = 2 * heartbeatInterval(heartbeat_timeout_);
    int n = 0;
    for (const auto& s : slots_)
      n += !s.gone && s.spare && (s.waiting || now - s.last_seen <= recent) ? 1 : 0;
    return n;
  }

  // While the job waits for placement: idle spares (the longest waiting
  // first) take the places no joined worker or awaited survivor fills.
  void promoteSparesLocked() {
    int n = sparesToPromote(activeSlotsLocked(), static_cast<int>(awaited_pids_.size()), world_,
                            idleSparesLocked());
    for (auto& s : slots_) {
      if (n == 0) break;
      if (s.gone || !s.spare) continue;
      s.spare = false;
      s.previous_rank = -1;
      --n;
      eventLocked(detail::concat("spare ", s.info.hostname, " pid ", s.info.pid,
                                 replicas_before_grow_ > 0 ? " takes a place of a new replica ("
                                                           : " takes a lost tasklet's place (",
                                 activeSlotsLocked(), "/", world_, ")"));
    }
  }

  grpc::Status resolveDeviceLocked(const std::string& name, int* device) {
    std::vector<DeviceClaim> taken;
    for (const auto& s : slots_)
      if (!s.gone && s.device >= 0) taken.push_back({s.device, s.info.hostname, s.info.pid});
    return resolveDevice(name, job_.topology, taken, device);
  }

  // Places the job once every tasklet has a worker and no checkpoint is
  // being committed (a new generation resumes from the newest commit).
  void maybePlaceLocked() {
    if (!placed_ && phase_ != Phase::ENDED) promoteSparesLocked();
    if (placed_ || phase_ == Phase::ENDED || activeSlotsLocked() != world_ ||
        commits_in_flight_ > 0)
      return;
    try {
      placeLocked();
    } catch (const Error& e) {
      finalFailureLocked(-1, detail::concat("cannot place the job: ", e.what()), "ConfigError");
    }
    cv_.notify_all();
  }

  // What the request checks know of the job.
  // Ranks are bounded by the largest world the job has had: a worker of an
  // older generation (before a shrink) must hear "regroup", not be refused.
  RequestBounds boundsLocked() const { return {max_world_, job_.training.steps}; }

  // Plans the job over the devices the workers asked for (all of them when
  // every worker said "any") and gives every worker a rank. A new
  // generation over the same devices reuses the previous plan, so the
  // recovered run computes exactly what the uninterrupted one would.
  void placeLocked() {
    std::vector<size_t> active;
    std::set<int> named;
    for (size_t i = 0; i < slots_.size(); ++i) {
      if (slots_[i].gone || slots_[i].spare) continue;
      active.push_back(i);
      if (slots_[i].device >= 0) named.insert(slots_[i].device);
    }
    const int n_devices = job_.topology.numDevices();
    const auto previous_layers = placement_.layers_of_stage;
    const bool reuse = generation_ > 1 &&
                       static_cast<int>(placement_.device_of_rank.size()) == world_ &&
                       std::all_of(named.begin(), named.end(), [&](int d) {
                         return std::count(placement_.device_of_rank.begin(),
                                           placement_.device_of_rank.end(), d) > 0;
                       });
    if (reuse) {
      // The same plan: every named device is one the previous plan used.
    } else if (named.empty() || n_devices == 0) {
      placement_ = runtime::choosePlacement(model_, job_, {}, resume_body_split_);
    } else {
      // Named devices (fewer than the topology's when the job shrank).
      std::vector<int> keep(named.begin(), named.end());
      for (int d = 0; d < n_devices && static_cast<int>(keep.size()) < world_; ++d)
        if (!named.count(d)) keep.push_back(d);
      std::sort(keep.begin(), keep.end());
      JobSpec sub = job_;
      sub.topology = subTopology(job_.topology, keep);
      placement_ = runtime::choosePlacement(model_, sub, {}, resume_body_split_);
      for (int& d : placement_.device_of_rank) d = keep[static_cast<size_t>(d)];
    }
    if (generation_ > 1 && placement_.layers_of_stage != previous_layers) {
      // The checkpoint holds each stage's layers: a new generation keeps the cut.
      placement_.layers_of_stage = previous_layers;
    }
    std::vector<RankClaim> claims;
    for (size_t i : active) claims.push_back({slots_[i].device, slots_[i].previous_rank});
    const std::vector<int> worker_of_rank = assignRanks(placement_.device_of_rank, claims);
    slot_of_rank_.assign(static_cast<size_t>(world_), -1);
    for (int r = 0; r < world_; ++r)
      slot_of_rank_[static_cast<size_t>(r)] =
          static_cast<int>(active[static_cast<size_t>(worker_of_rank[static_cast<size_t>(r)])]);
    startGenerationLocked();
    for (int r = 0; r < world_; ++r) {
      Slot& s = slots_[static_cast<size_t>(slot_of_rank_[static_cast<size_t>(r)])];
      GEOPIPE_CHECK(s.info.rank < 0, Error, "rank assigned twice");
      s.generation = generation_;
      s.info.rank = r;
      s.info.stage = r % stages_;
      s.info.replica = r / stages_;
      s.info.device = placement_.device_of_rank[static_cast<size_t>(r)];
      s.info.device_name = n_devices > 0
                               ? job_.topology.devices[static_cast<size_t>(s.info.device)].name
                               : std::to_string(s.info.device);
      s.last_seen = Clock::now();
      s.last_step = first_step_ - 1;
      s.synchronous = false;
    }
    // The peers' job token: a secret only the workers placed here learn
    // (over the coordinator's TLS link), checked on every peer stream.
    job_token_ = security::randomToken();
    result_.device_of_rank = placement_.device_of_rank;
    result_.layers_of_stage = placement_.layers_of_stage;
    result_.placement_source = placement_.source;
    placed_ = true;
    phase_ = Phase::RUNNING;
    std::string line = detail::concat(
        generation_ > 1 ? detail::concat("generation ", generation_, " ") : std::string(),
        "placement (", placement_.source, reuse ? ", unchanged" : "", "):");
    for (int r = 0; r < world_; ++r) {
      const auto& l = placement_.layers_of_stage[static_cast<size_t>(r % stages_)];
      line += detail::concat(" rank ", r, "->device ",
                             placement_.device_of_rank[static_cast<size_t>(r)], " [", l.first, ",",
                             l.second, ")");
    }
    eventLocked(line);
  }

  Slot* slotOfRankLocked(int rank) {
    if (!placed_ || rank < 0 || rank >= world_) return nullptr;
    return &slots_[static_cast<size_t>(slot_of_rank_[static_cast<size_t>(rank)])];
  }

  std::string describeLocked(int rank) {
    const Slot* s = slotOfRankLocked(rank);
    if (!s) return detail::concat("tasklet ", rank);
    return detail::concat("tasklet rank ", rank, " (stage ", s->info.stage, ", replica ",
                          s->info.replica, ", device '", s->info.device_name, "', host ",
                          s->info.hostname, " pid ", s->info.pid, ")");
  }

  // The standing instructions for a worker of `generation`: regroup when
  // its generation has ended (and the job goes on).
  void fillDirectiveLocked(pb::Directive* d, int64_t generation) {
    d->set_stop_requested(stop_requested_);
    d->set_stop_after_step(stop_after_);
    d->set_checkpoint_at_stop(checkpoint_at_stop_);
    d->set_abort(abort_);
    d->set_abort_reason(abort_reason_);
    d->set_generation(generation_);
    if (!abort_ && (generation != generation_ || !placed_)) {
      d->set_regroup(true);
      d->set_abort_reason(regroup_reason_);
    }
    d->set_complete(completeLocked());
  }

  // Phase 2 of a stop. Once every tasklet of the generation reports
  // synchronously (it waits for each answer before its next step, and had
  // every earlier one answered), or has reported its last step, no worker
  // can be more than one step past the newest report: the step after it is
  // one all workers can stop after.
  void maybeFixStopLocked() {
    if (!stop_requested_ || stop_after_ >= 0 || !placed_) return;
    for (int r = 0; r < world_; ++r) {
      const Slot* s = slotOfRankLocked(r);
      if (!s->synchronous && s->last_step < job_.training.steps - 1) return;
    }
    stop_after_ = std::min<int64_t>(max_reported_ + 1, job_.training.steps - 1);
    eventLocked(detail::concat("stopping after step ", stop_after_ + 1,
                               checkpoint_at_stop_ ? " (with a checkpoint)" : ""));
  }

  // A call from a worker of an ended generation: answered with regroup.
  bool staleLocked(int64_t generation, pb::Directive* out) {
    if (generation == generation_ && placed_) return false;
    fillDirectiveLocked(out, generation);
    return true;
  }

  // Every tasklet ran its last step and reported its checkpoint (whose
  // commit ran inside the last report): workers may leave.
  bool completeLocked() const {
    if (!placed_ || abort_ || commits_in_flight_ > 0) return false;
    for (int s : slot_of_rank_)
      if (!slots_[static_cast<size_t>(s)].steps_done) return false;
    return true;
  }

  // A worker's own report that its step failed.
  void recordWorkerFailureLocked(int rank, const std::string& error, const std::string& type) {
    // A broken link or a timeout is often the consequence of another
    // tasklet's death: hold it for failure_grace in case the root cause
    // arrives.
    ErrorKind kind;
    const bool primary =
        !kindFromName(type, &kind) || (kind != ErrorKind::IO && kind != ErrorKind::TIMEOUT);
    const std::string cause = (type.empty() ? "" : type + ": ") + error;
    recordFailureLocked(rank, detail::concat(describeLocked(rank), " failed: ", cause), type,
                        primary, cause);
  }

  void recordFailureLocked(int rank, const std::string& message, const std::string& type,
                           bool primary, const std::string& cause = "") {
    if (phase_ == Phase::ENDED && failure_) return;
    if (abort_) return;  // later failures are consequences of the abort
    if (!pending_ || (primary && !pending_->primary)) {
      pending_ = Failure{message, type, rank, primary, Clock::now(), generation_, cause};
      spdlog::debug("failure candidate: {}", message);
    }
    cv_.notify_all();
  }

  // A worker's broken link or timeout is usually a peer that died: when
  // the grace period ends, a tasklet that has been silent for most of it
  // (heartbeats come every second) is the root cause, not the reporter.
  void blameSilentTaskletLocked(Failure& f, Clock::time_point now) {
    if (!placed_) return;
    int suspect = -1;
    double longest = 0;
    for (int r = 0; r < world_; ++r) {
      const Slot& s = *slotOfRankLocked(r);
      if (s.info.finished || r == f.rank) continue;
      const double silent = secondsBetween(s.last_seen, now);
      if (silent > longest) {
        longest = silent;
        suspect = r;
      }
    }
    const double threshold =
        std::max(1.5, 0.75 * std::chrono::duration<double>(opt_.failure_grace).count());
    if (suspect < 0 || longest < threshold) return;
    f.message = detail::concat(
        describeLocked(suspect), " failed: no heartbeat for ", static_cast<int>(longest),
        " s, the process died or its host is gone (first noticed as: ", f.message, ")");
    f.rank = suspect;
    f.type = kindName(ErrorKind::TIMEOUT);
  }

  // A failure is final: ends the job, or (recoverable, restarts left, the
  // job placed) ends only this generation.
  void decideFailureLocked(const Failure& f) {
    pending_.reset();
    if (f.rank >= 0 && f.generation != generation_) {
      // Its generation ended meanwhile (a grow back): the rank names
      // another worker now, and whoever is gone is missed at the rejoin.
      eventLocked(detail::concat("after generation ", f.generation, " ended: ", f.message));
      return;
    }
    if (completeLocked()) {
      // Every step is done and committed; the others may have left already.
      eventLocked("after the job completed: " + f.message);
      if (f.rank >= 0) slotOfRankLocked(f.rank)->info.finished = true;
      return;
    }
    const int max_restarts = job_.fault_tolerance.max_restarts;
    if (!isRecoverableFailure(f.type) || (!placed_ && phase_ != Phase::REGROUPING)) {
      finalFailureLocked(f.rank, f.message, f.type);
      return;
    }
    if (!placed_) {
      // A worker died while the others rejoin: rejoin_timeout bounds the
      // wait for its replacement.
      eventLocked(detail::concat("while regrouping: ", f.message));
      return;
    }
    if (restartsLocked() >= max_restarts) {
      finalFailureLocked(f.rank,
                         max_restarts == 0
                             ? f.message
                             : detail::concat(f.message, "; no restart left (", max_restarts,
                                              " done, fault_tolerance.max_restarts)"),
                         f.type);
      return;
    }
    if (!f.cause.empty() && f.cause == regroup_failure_.cause && noStepThisGenerationLocked()) {
      // The error that ended the last generation, again before this one
      // completed a step: deterministic (a bad file every restart reads),
      // so another restart would only end the same way.
      finalFailureLocked(
          f.rank,
          detail::concat(f.message, "; generation ", generation_ - 1,
                         " ended with the same error before this generation completed a step: it "
                         "would end every restart the same way, so the job is not recovered again"),
          f.type);
      return;
    }
    regroupLocked(f);
  }

  // No tasklet of the current generation has reported a step yet.
  bool noStepThisGenerationLocked() {
    for (int r = 0; r < world_; ++r)
      if (slotOfRankLocked(r)->last_step >= first_step_) return false;
    return true;
  }

  // Ends the current generation: the failed worker is left out (a launcher
  // replaces it), every other worker is told to regroup on its next call
  // and Registers again; the next generation is placed once every tasklet
  // has a worker, within rejoin_timeout.
  void regroupLocked(const Failure& f) {
    eventLocked("failure detected: " + f.message);
    if (f.rank >= 0) lost_pids_.insert(slotOfRankLocked(f.rank)->info.pid);
    const int64_t redo = endGenerationLocked(f);
    eventLocked(detail::concat(
        "recovering (restart ", restartsLocked(), " of ", job_.fault_tolerance.max_restarts,
        "): generation ", generation_, " resumes from ",
        committed_next_step_ > 0 ? detail::concat("the checkpoint at step ", committed_next_step_)
                                 : std::string("step 0 (no checkpoint committed yet)"),
        redo > 0 ? detail::concat(", recomputing ", redo, " step(s) done since") : std::string(),
        "; waiting up to ", rejoin_timeout_.count() / 1000, " s for ", world_, " workers",
        min_replicas_ < replicas_
            ? detail::concat(" (then going on with fewer replicas, down to ", min_replicas_, ")")
            : std::string()));
    cv_.notify_all();
  }

  // Ends the current generation for `why`: the placed workers not lost are
  // awaited (their places kept), everyone hears "regroup", the steps past
  // the last commit are dropped. Returns how many will be recomputed.
  int64_t endGenerationLocked(const Failure& why) {
    // The survivors' places are kept for them; a spare takes the others.
    awaited_pids_.clear();
    for (int r = 0; r < static_cast<int>(slot_of_rank_.size()); ++r) {
      const int64_t pid = slotOfRankLocked(r)->info.pid;
      if (!lost_pids_.count(pid)) awaited_pids_.insert(pid);
    }
    const int64_t redo = max_reported_ + 1 - committed_next_step_;
    ++generation_;
    phase_ = Phase::REGROUPING;
    regroup_since_ = Clock::now();
    regroup_failure_ = why;
    regroup_reason_ = detail::concat("generation ", generation_ - 1, " ended: ", why.message);
    for (auto& s : slots_)
      if (!s.spare) s.gone = true;
    placed_ = false;
    slot_of_rank_.clear();
    addresses_ = 0;
    // Steps past the last commit are recomputed; earlier ones are complete
    // (a commit needs every tasklet's report) and still to be emitted.
    ledger_->dropFrom(committed_next_step_);
    checkpoints_.clear();
    return redo;
  }

  // Generations started by failures (a grow back is none).
  int64_t restartsLocked() const { return generation_ - 1 - grows_; }

  // A job that shrank grows back when a checkpoint has just been committed
  // and the idle spares fill whole replicas again: the generation ends (no
  // failure, no restart counted), the spares take the new places, and every
  // tasklet reshards from that checkpoint.
  void maybeGrowLocked() {
    // Not while a failure is being decided or another commit runs (the
    // next commit tries again), nor at the end or a stop.
    if (phase_ != Phase::RUNNING || abort_ || pending_ || commits_in_flight_ > 0 ||
        stop_requested_ || replicas_ >= max_world_ / stages_ ||
        committed_next_step_ >= job_.training.steps) {
      return;
    }
    const int r = grownReplicas(liveSparesLocked(), stages_, replicas_, max_world_ / stages_,
                                job_.training.global_batch, job_.training.micro_batch);
    if (r == 0) return;
    const int old_replicas = replicas_;
    const Failure why{detail::concat("growing back from ", old_replicas, " to ", r,
                                     " replicas with idle spares"),
                      kindName(ErrorKind::TIMEOUT), -1, true, Clock::now()};
    endGenerationLocked(why);
    ++grows_;
    replicas_before_grow_ = old_replicas;
    setReplicasLocked(r);
    eventLocked(detail::concat(why.message, ": generation ", generation_,
                               " resumes from the checkpoint at step ", committed_next_step_,
                               " with ", r, " of ", max_world_ / stages_,
                               " replicas; waiting up to ", rejoin_timeout_.count() / 1000,
                               " s for ", world_, " workers"));
    maybePlaceLocked();
    cv_.notify_all();
  }

  // rejoin_timeout has passed (no commit in flight) without a worker for
  // every tasklet. Survivors that have not rejoined by now are counted as
  // lost, so idle spares may take their places too; then the job is placed
  // if it can be, or shrinks (min_replicas). False: neither, the job fails.
  bool giveUpWaitingLocked() {
    if (!awaited_pids_.empty()) {
      eventLocked(detail::concat(awaited_pids_.size(), " survivor(s) did not rejoin within ",
                                 rejoin_timeout_.count() / 1000,
                                 " s (fault_tolerance.rejoin_timeout): counted as lost"));
      for (int64_t pid : awaited_pids_) lost_pids_.insert(pid);
      awaited_pids_.clear();
    }
    maybePlaceLocked();
    return placed_ || phase_ == Phase::ENDED || shrinkLocked();
  }

  // The job runs `r` replicas from the next placement on (a shrink or a
  // grow back; max_world_ keeps the largest world for the request bounds).
  void setReplicasLocked(int r) {
    replicas_ = r;
    world_ = stages_ * r;
    job_.parallelism.data_parallel = r;
  }

  // Recovery with fewer replicas: rejoin_timeout has passed without a
  // worker for every tasklet. When the workers at hand fill at least
  // fault_tolerance.min_replicas whole replicas, the job goes on with as
  // many (the global batch split over fewer replicas, each new tasklet
  // resharding the checkpoint); workers beyond them wait as idle spares.
  // False when it cannot.
  bool shrinkLocked() {
    const int active = activeSlotsLocked();
    const int r = shrunkReplicas(active, stages_, replicas_, min_replicas_,
                                 job_.training.global_batch, job_.training.micro_batch);
    if (r == 0) return false;
    const int old_replicas = replicas_;
    setReplicasLocked(r);
    // Keep the survivors of whole replicas first (in rank order), then the
    // others by previous rank, newcomers last; the rest become idle spares.
    std::vector<size_t> order;
    std::map<int, int> survivors_of_replica;
    for (size_t i = 0; i < slots_.size(); ++i) {
      if (slots_[i].gone || slots_[i].spare) continue;
      order.push_back(i);
      if (slots_[i].previous_rank >= 0) ++survivors_of_replica[slots_[i].previous_rank / stages_];
    }
    auto key = [&](size_t i) {
      const int prev = slots_[i].previous_rank;
      if (prev < 0) return std::make_pair(2, 0);
      return std::make_pair(survivors_of_replica[prev / stages_] == stages_ ? 0 : 1, prev);
    };
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return key(a) < key(b); });
    for (size_t k = static_cast<size_t>(world_); k < order.size(); ++k) {
      Slot& s = slots_[order[k]];
      s.spare = true;
      s.previous_rank = -1;
      eventLocked(detail::concat("worker ", s.info.hostname, " pid ", s.info.pid,
                                 " waits as an idle spare: the job continues with fewer replicas"));
    }
    eventLocked(detail::concat(
        "no replacement within ", rejoin_timeout_.count() / 1000,
        " s (fault_tolerance.rejoin_timeout): continuing with ", r, " of ", old_replicas,
        " replicas (fault_tolerance.min_replicas ", min_replicas_, "), ",
        job_.training.global_batch / r, " samples each",
        committed_next_step_ > 0
            ? detail::concat(", resharded from the checkpoint at step ", committed_next_step_)
            : std::string(", from step 0")));
    try {
      placeLocked();
    } catch (const Error& e) {
      finalFailureLocked(-1, detail::concat("cannot place the job: ", e.what()), "ConfigError");
    }
    cv_.notify_all();
    return true;
  }

  // At placement: where this generation starts. The first starts where
  // --resume said (or at step 0), a later one at the newest commit.
  void startGenerationLocked() {
    awaited_pids_.clear();
    if (generation_ == 1) return;
    if (replicas_before_grow_ > 0) {
      // A grow back that got its workers (not one that shrank again).
      if (replicas_ > replicas_before_grow_) ++grown_;
      replicas_before_grow_ = 0;
    }
    first_step_ = committed_next_step_;
    resume_replicas_ = committed_replicas_;
    resume_dir_ =
        first_step_ > 0 ? runtime::stepDirectory(job_.checkpoint.dir, first_step_) : std::string();
    ledger_->restartAt(first_step_, result_);
    for (auto& s : slots_) s.steps_done = false;
  }

  void finalFailureLocked(int rank, const std::string& message, const std::string& type) {
    if (abort_) return;
    failure_ = Failure{message, type, rank, true, Clock::now()};
    abort_ = true;
    abort_reason_ = message;
    phase_ = Phase::ENDED;
    eventLocked("job failed: " + message);
    cv_.notify_all();
  }

  void monitorLoop() {
    Locked lock(*this);
    while (!shutting_down_) {
      cv_.wait_for(lock, std::chrono::milliseconds(50));
      if (shutting_down_) break;
      const auto now = Clock::now();
      if (phase_ == Phase::RUNNING) {
        for (int r = 0; r < world_; ++r) {
          const Slot& s = *slotOfRankLocked(r);
          if (s.info.finished) continue;
          const double silent = secondsBetween(s.last_seen, now);
          if (silent * 1000 > heartbeat_timeout_.count()) {
            recordFailureLocked(
                r,
                detail::concat(describeLocked(r), " failed: no heartbeat for ",
                               static_cast<int>(silent), " s (last step done: ", s.last_step + 1,
                               "); the process died or hangs, or its host is gone or cut off"),
                kindName(ErrorKind::TIMEOUT), true);
          }
        }
        // The step barrier's deadline: the oldest incomplete step.
        if (const auto late = ledger_->overdue(now, opt_.step_deadline)) {
          const auto [step, r] = *late;
          recordFailureLocked(
              r,
              detail::concat(describeLocked(r), " failed: step ", step + 1, " not reported within ",
                             opt_.step_deadline.count() / 1000, " s of the first tasklet's report"),
              kindName(ErrorKind::TIMEOUT), true);
        }
        // Done: every tasklet finished cleanly and every checkpoint committed.
        bool all_finished = true;
        for (int r = 0; r < world_; ++r) all_finished &= slotOfRankLocked(r)->info.finished;
        if (all_finished && !pending_ && commits_in_flight_ == 0 && phase_ != Phase::ENDED) {
          phase_ = Phase::ENDED;
          cv_.notify_all();
        }
      }
      if (pending_ && !abort_ && (pending_->primary || now - pending_->at >= opt_.failure_grace)) {
        Failure f = *pending_;
        if (!f.primary) blameSilentTaskletLocked(f, now);
        decideFailureLocked(f);
      }
      // An idle spare calls again once per heartbeat interval: one silent
      // for heartbeat_timeout (dead, hung, cut off) is dropped. So is a
      // spare promoted for a lost place that did not call again (another
      // spare is promoted in its stead).
      for (auto& s : slots_) {
        if (s.gone || s.waiting || s.info.rank >= 0) continue;
        const double silent = secondsBetween(s.last_seen, now);
        if (silent * 1000 > heartbeat_timeout_.count()) {
          s.gone = true;
          eventLocked(detail::concat("spare ", s.info.hostname, " pid ", s.info.pid,
                                     " is silent for ", static_cast<int>(silent),
                                     " s and no longer a spare"));
        }
      }
      if (phase_ == Phase::REGROUPING) {
        maybePlaceLocked();  // waits for commits that were in flight
        if (!placed_ && now - regroup_since_ > rejoin_timeout_ && commits_in_flight_ == 0 &&
            !giveUpWaitingLocked()) {
          const Failure& f = regroup_failure_;
          finalFailureLocked(
              f.rank,
              detail::concat(f.message, "; recovery gave up: ", activeSlotsLocked(), " of ", world_,
                             " workers rejoined within ", rejoin_timeout_.count() / 1000,
                             " s (fault_tolerance.rejoin_timeout)",
                             min_replicas_ < replicas_
                                 ? detail::concat(", too few for ", min_replicas_,
                                                  " replica(s) (fault_tolerance.min_replicas)")
                                 : std::string(),
                             ". Start a worker for the lost tasklet sooner, ",
                             min_replicas_ < replicas_ ? "lower" : "set",
                             " fault_tolerance.min_replicas, or restart the job with --resume"),
              f.type);
        }
      }
      lock.unlock();
      deliverEvents();
      flushSteps();
      lock.lock();
    }
  }

  // Hands finished steps to on_step in order (outside the lock).
  void flushSteps() {
    std::lock_guard<std::mutex> flush(flush_mu_);
    std::vector<StepMetrics> ready;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ready = ledger_->takeFinished(result_);
    }
    if (opt_.on_step)
      for (const auto& m : ready) opt_.on_step(m);
  }

  // Holds mu_. On release (the end of its scope) it delivers the events
  // queued meanwhile, outside mu_ (deliverEvents).
  class Locked : public std::unique_lock<std::mutex> {
   public:
    explicit Locked(Impl& impl) : std::unique_lock<std::mutex>(impl.mu_), impl_(impl) {}
    ~Locked() {
      if (owns_lock()) unlock();
      impl_.deliverEvents();
    }
    Locked(const Locked&) = delete;
    Locked& operator=(const Locked&) = delete;

   private:
    Impl& impl_;
  };

  CoordinatorOptions opt_;
  JobBundle bundle_;
  JobSpec job_;
  ModelDef model_;
  int stages_ = 1, replicas_ = 1, world_ = 1;
  int max_world_ = 1;  // world_ before any shrink
  int64_t first_step_ = 0;
  std::string resume_dir_;
  std::string job_token_;
  JobSecurity security_;
  int registrations_ = 0;  // accepted Register calls (right token, known device)
  int max_registrations_ = 0;
  std::optional<JoinGate> join_gate_;  // from security_, set in the constructor
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::string address_;
  std::thread monitor_;

  mutable std::mutex mu_;
  std::mutex flush_mu_;
  std::mutex deliver_mu_;            // one thread delivers events at a time
  std::vector<std::string> events_;  // queued for on_event (mu_)
  std::condition_variable cv_;
  bool shutting_down_ = false;
  std::vector<Slot> slots_;
  std::vector<int> slot_of_rank_;
  runtime::Placement placement_;
  // Where the job is: JOINING until the first placement, RUNNING while a
  // generation trains, REGROUPING from the end of a generation (a failure,
  // a grow back) until the next placement, ENDED (complete, failed or
  // stopped before it ran) for good.
  enum class Phase { JOINING, RUNNING, REGROUPING, ENDED };
  Phase phase_ = Phase::JOINING;
  // The current generation has a placement (ranks, addresses): from
  // RUNNING on, kept when the job ends while running.
  bool placed_ = false;
  int addresses_ = 0;
  bool train_started_ = false;
  Clock::time_point start_at_;
  std::optional<StepLedger> ledger_;  // set in the constructor
  std::map<int64_t, PendingCheckpoint> checkpoints_;
  int commits_in_flight_ = 0;
  int64_t max_reported_ = -1;
  bool stop_requested_ = false;  // phase 1 of a stop (see maybeFixStopLocked)
  int64_t stop_after_ = -1;
  bool checkpoint_at_stop_ = false;
  bool abort_ = false;
  std::string abort_reason_;
  bool interrupted_ = false;
  std::optional<Failure> pending_;
  std::optional<Failure> failure_;
  TrainResult result_;

  // Failure handling.
  std::chrono::milliseconds heartbeat_timeout_{10000};
  std::chrono::milliseconds rejoin_timeout_{60000};
  int64_t generation_ = 1;            // +1 per recovery or grow back
  int64_t announced_generation_ = 0;  // generation whose start was logged
  int64_t committed_next_step_ = 0;   // the newest committed checkpoint's step
  std::vector<int> resume_body_split_;  // --resume: the checkpoint's body layers per stage
  int committed_replicas_ = 1;        // replicas that wrote it
  int resume_replicas_ = 1;           // replicas that wrote the one this generation loads
  int min_replicas_ = 1;              // fault_tolerance.min_replicas, resolved
  int64_t grows_ = 0;                 // generations started to grow back after a shrink
  int64_t grown_ = 0;                 // of those, placed with more replicas
  int replicas_before_grow_ = 0;      // > 0 while a grow back waits for its workers
  Clock::time_point regroup_since_;
  Failure regroup_failure_;         // what ended the last generation
  std::string regroup_reason_;      // told to the workers
  std::set<int64_t> lost_pids_;     // declared dead, left out
  std::set<int64_t> awaited_pids_;  // survivors of the ended generation not yet rejoined
  uint64_t last_ticket_ = 0;        // spare tickets handed out
};

Coordinator::Coordinator(CoordinatorOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}
Coordinator::~Coordinator() = default;
std::string Coordinator::listeningAddress() const {
  return impl_->listeningAddress();
}
JobSpec Coordinator::job() const {
  return impl_->job();
}
int Coordinator::worldSize() const {
  return impl_->worldSize();
}
void Coordinator::requestStop(bool checkpoint) {
  impl_->requestStop(checkpoint);
}
void Coordinator::reportFailure(int64_t pid, int rank, const std::string& cause,
                                const std::string& type) {
  impl_->reportFailure(pid, rank, cause, type);
}
std::vector<TaskletInfo> Coordinator::tasklets() const {
  return impl_->tasklets();
}
std::vector<int64_t> Coordinator::lostWorkers() const {
  return impl_->lostWorkers();
}
int64_t Coordinator::generation() const {
  return impl_->generation();
}
int Coordinator::recoveries() const {
  return impl_->recoveries();
}
std::optional<CoordinatorResult> Coordinator::waitFor(std::chrono::milliseconds timeout) {
  return impl_->waitFor(timeout);
}
bool Coordinator::waitForWorkersGone(std::chrono::milliseconds timeout) {
  return impl_->waitForWorkersGone(timeout);
}

}  // namespace geopipe::distributed
