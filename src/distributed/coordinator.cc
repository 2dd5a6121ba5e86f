// The Coordinator service: join, plan, address exchange, step metrics,
// checkpoint commits, heartbeats, the stop / abort directives, and recovery:
// generations that regroup the surviving workers after a failure.
#include "src/distributed/coordinator.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "geopipe/error.h"
#include "geopipe/model.h"
#include "proto/coordinator.grpc.pb.h"
#include "scheduler/planner.h"
#include "scheduler/relayed_links.h"
#include "scheduler/replan.h"
#include "src/common/strings.h"
#include "src/common/text.h"
#include "src/config/buffer_check.h"
#include "src/distributed/checkpoint_collector.h"
#include "src/distributed/coordinator_job.h"
#include "src/distributed/event_queue.h"
#include "src/distributed/generation_plan.h"
#include "src/distributed/job_bundle.h"
#include "src/distributed/recovery.h"
#include "src/distributed/request_checks.h"
#include "src/distributed/roster.h"
#include "src/distributed/step_ledger.h"
#include "src/distributed/step_report.h"
#include "src/runtime/checkpoint.h"
#include "src/runtime/placement.h"
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
// A re-plan for growth waits until no idle spare has joined for this long.
constexpr auto kGrowSettle = std::chrono::seconds(3);

double secondsBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
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

int tokensPerStep(const JobSpec& job) {
  return job.training.global_batch * job.model.seq_len;
}

}  // namespace

class Coordinator::Impl final : public pb::Coordinator::Service {
  // Holds mu_; on release delivers the events queued meanwhile, outside it.
  using Locked = EventQueue::Lock;

 public:
  explicit Impl(CoordinatorOptions options) : opt_(std::move(options)) {
    CoordinatorJob cj =
        readCoordinatorJob(opt_, &model_, [this](const std::string& line) { event(line); });
    bundle_ = std::move(cj.bundle);
    job_ = std::move(cj.job);
    stages_ = job_.parallelism.pipeline_stages;
    replicas_ = job_.parallelism.data_parallel;
    world_ = stages_ * replicas_;
    max_world_ = world_;
    min_replicas_ = cj.min_replicas;
    first_step_ = cj.first_step;
    resume_dir_ = std::move(cj.resume_dir);
    resume_replicas_ = cj.resume_replicas;
    resume_body_split_ = std::move(cj.resume_body_split);
    committed_replicas_ = resume_replicas_;
    replan_ = job_.fault_tolerance.replan;
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
    // Before the service: a bad --relay-site fails with nothing started.
    startRelay();
    // Connections come through the gate, which bounds those still in their
    // set-up before gRPC sees them.
    gate_.emplace(opt_.listen_address, opt_.connections,
                  "the coordinator (--listen " + opt_.listen_address + ")");
    port_ = gate_->port();
    grpc::ServerBuilder builder;
    gate_->serve(builder, transport::serverCredentials(security_.link));
    builder.RegisterService(this);
    builder.SetMaxReceiveMessageSize(transport::kMaxCoordinatorRequestBytes);
    builder.SetMaxSendMessageSize(transport::kMaxCoordinatorReplyBytes);
    server_ = builder.BuildAndStart();
    if (!server_) {
      GEOPIPE_THROW(IoError, "the coordinator's gRPC server did not start on '",
                    opt_.listen_address, "'; choose another --listen address");
    }
    gate_->start();
    const auto colon = opt_.listen_address.rfind(':');
    std::string host = opt_.listen_address.substr(0, colon);
    if (transport::isWildcardHost(host)) host = "0.0.0.0";
    address_ = host + ":" + std::to_string(port_);
    monitor_ = std::thread([this] { monitorLoop(); });
  }

  // --relay: the relay for workers that accept no connections, and the
  // site their incoming links are priced through.
  void startRelay() {
    if (opt_.relay_listen.empty()) {
      GEOPIPE_CHECK(opt_.relay_site.empty(), ConfigError, "--relay-site '",
                    common::printable(opt_.relay_site),
                    "' without --relay: give the relay's listen address too "
                    "(--relay 0.0.0.0:7421), or drop --relay-site");
      return;
    }
    std::string sites;
    for (int i = 0; i < job_.topology.numSites(); ++i) {
      const std::string& name = job_.topology.sites[static_cast<size_t>(i)].name;
      if (name == opt_.relay_site) relay_site_ = i;
      sites += (sites.empty() ? "" : ", ") + name;
    }
    GEOPIPE_CHECK(!opt_.relay_site.empty(), ConfigError,
                  "--relay needs --relay-site SITE: the topology site this coordinator runs in, "
                  "through which relayed workers' links are priced (the topology's sites: ",
                  sites.empty() ? "none" : sites, ")");
    GEOPIPE_CHECK(relay_site_ >= 0, ConfigError, "--relay-site '",
                  common::printable(opt_.relay_site), "' is not a site of the topology '",
                  common::printable(job_.topology.source),
                  "' (its sites: ", sites.empty() ? "none" : sites, ")");
    transport::checkPlaintextAllowed(security_.link, opt_.relay_listen,
                                     "the coordinator's --relay address");
    relay_ = std::make_unique<transport::Relay>(
        opt_.relay_listen, [this](int rank, const std::string& id) { return askDial(rank, id); });
    event(detail::concat("relay for workers that accept no connections listens on port ",
                         relay_->port(), " (--relay ", opt_.relay_listen,
                         "); relayed links are "
                         "priced through site '",
                         opt_.relay_site, "'"));
  }

  // The relay asks the worker of `rank` to dial back (its RelayDials stream
  // writes `id`); false when no relayed worker of that rank listens.
  bool askDial(int rank, const std::string& id) {
    Locked lock(events_);
    auto it = dial_queues_.find(rank);
    if (it == dial_queues_.end()) return false;
    it->second.ids.push_back(id);
    cv_.notify_all();
    return true;
  }

  ~Impl() override {
    {
      Locked lock(events_);
      shutting_down_ = true;
    }
    cv_.notify_all();
    if (monitor_.joinable()) monitor_.join();
    // A re-plan search in flight ends within its budget (replan_budget).
    if (search_thread_.joinable()) search_thread_.join();
    if (gate_) gate_->stop();
    if (relay_) {
      const transport::RelayStats rs = relay_->stats();
      relay_->stop();
      spdlog::info(
          "relay: {} connection(s) relayed, {:.1f} MiB forwarded, {} refused, {} not "
          "dialled back in time",
          rs.connected, static_cast<double>(rs.bytes_forwarded) / (1 << 20), rs.refused,
          rs.timed_out);
    }
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    events_.deliver();
  }

  // --- public API ---------------------------------------------------------

  std::string listeningAddress() const { return address_; }
  std::optional<int> relayPort() const {
    return relay_ ? std::optional<int>(relay_->port()) : std::nullopt;
  }
  std::optional<transport::RelayStats> relayStats() const {
    return relay_ ? std::optional<transport::RelayStats>(relay_->stats()) : std::nullopt;
  }
  JobSpec job() const {
    std::lock_guard<std::mutex> lock(mu_);
    return job_;
  }
  int worldSize() const {
    std::lock_guard<std::mutex> lock(mu_);
    return world_;
  }

  void requestStop(bool checkpoint) {
    Locked lock(events_);
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
    Locked lock(events_);
    if (pid > 0 && rank < 0 && lost_pids_.count(pid)) {
      // Already declared dead and left out of the job: its end is no news.
      eventLocked(detail::concat("lost worker pid ", pid, " is gone: ", cause));
      return;
    }
    awaited_pids_.erase(pid);  // a survivor that died while the others rejoin
    if (rank < 0) {
      for (auto& s : roster_.slots()) {
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
    return roster_.tasklets();
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
    Locked lock(events_);
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
    r.replans = replans_;
    r.replicas = replicas_;
    r.stages = stages_;
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
    Locked lock(events_);
    return cv_.wait_for(lock, timeout, [&] {
      return !placed_ || roster_.everyPlaced([](const Slot& s) { return s.info.finished; });
    });
  }

  // --- the service --------------------------------------------------------

  grpc::Status Register(grpc::ServerContext* ctx, const pb::RegisterRequest* req,
                        pb::Assignment* out) override {
    Locked lock(events_);
    if (grpc::Status st = checkRegisterRequest(*req); !st.ok()) return st;
    if (grpc::Status st = checkJoinTokenLocked(ctx, *req); !st.ok()) return st;
    // An idle spare calling again (it proves it lives once per heartbeat
    // interval): its slot, not a new registration.
    size_t id = req->spare_ticket() != 0 ? roster_.findSpare(req->spare_ticket(), req->pid())
                                         : roster_.size();
    if (phase_ == Phase::ENDED) {
      if (id == roster_.size() || !roster_[id].spare)
        return {grpc::StatusCode::ABORTED, "the job has already ended"};
      roster_[id].gone = true;
      out->set_protocol_version(kProtocol);
      out->set_job_over(true);
      return grpc::Status::OK;
    }
    if (id == roster_.size()) {
      if (grpc::Status st = registerNewLocked(ctx, req); !st.ok()) return st;
      id = roster_.size() - 1;
    }
    roster_[id].last_seen = Clock::now();
    roster_[id].waiting = true;
    maybePlaceLocked();
    const auto call_start = Clock::now();
    const auto spare_poll = heartbeatInterval(heartbeat_timeout_);
    while (!(placed_ && roster_[id].info.rank >= 0) && phase_ != Phase::ENDED && !shutting_down_) {
      if (ctx->IsCancelled()) {
        roster_[id].gone = true;
        roster_[id].waiting = false;
        eventLocked(detail::concat(roster_[id].spare ? "spare " : "worker ", req->hostname(),
                                   " pid ", req->pid(), " left before it was placed"));
        cv_.notify_all();
        return {grpc::StatusCode::CANCELLED, "worker left"};
      }
      if (roster_[id].spare && Clock::now() - call_start >= spare_poll) {
        // Still idle: the spare calls again with its ticket.
        roster_[id].waiting = false;
        roster_[id].last_seen = Clock::now();
        out->set_protocol_version(kProtocol);
        out->set_spare(true);
        out->set_spare_ticket(roster_[id].ticket);
        return grpc::Status::OK;
      }
      cv_.wait_for(lock, kPoll);
    }
    roster_[id].waiting = false;
    if (roster_[id].spare && phase_ == Phase::ENDED) {
      roster_[id].gone = true;
      out->set_protocol_version(kProtocol);
      out->set_job_over(true);
      return grpc::Status::OK;
    }
    if (!placed_ || phase_ == Phase::ENDED || roster_[id].info.rank < 0) {
      return {grpc::StatusCode::ABORTED,
              failure_ ? failure_->message : std::string("the coordinator is shutting down")};
    }
    fillAssignmentLocked(roster_[id], out);
    return grpc::Status::OK;
  }

  grpc::Status ReportAddress(grpc::ServerContext* ctx, const pb::AddressRequest* req,
                             pb::AddressTable* out) override {
    Locked lock(events_);
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
    for (int r = 0; r < world_; ++r) {
      const Slot* slot = slotOfRankLocked(r);
      out->add_addresses(slot->info.address);
      out->add_relayed(slot->relayed);
    }
    return grpc::Status::OK;
  }

  // A relayed worker's standing request for dial-backs, for one generation:
  // each CONNECT the relay gets for its rank becomes one RelayDial here.
  grpc::Status RelayDials(grpc::ServerContext* ctx, const pb::RelayDialRequest* req,
                          grpc::ServerWriter<pb::RelayDial>* writer) override {
    Locked lock(events_);
    if (!relay_) {
      return {grpc::StatusCode::FAILED_PRECONDITION, "this coordinator runs no relay (--relay)"};
    }
    const auto stale = [&] {
      return req->generation() != generation_ || !placed_ || phase_ == Phase::ENDED ||
             shutting_down_;
    };
    Slot* s = stale() ? nullptr : slotOfRankLocked(req->rank());
    if (!s || !s->relayed) {
      return {grpc::StatusCode::FAILED_PRECONDITION,
              detail::concat("rank ", req->rank(), " of generation ", req->generation(),
                             " is not a relayed worker of the current generation")};
    }
    const uint64_t serial = ++dial_serial_;
    DialQueue& mine = dial_queues_[req->rank()];
    mine = DialQueue{serial, {}};  // a newer stream for the rank replaces an older one
    const auto owned = [&] {
      auto it = dial_queues_.find(req->rank());
      return it != dial_queues_.end() && it->second.serial == serial;
    };
    while (!stale() && !ctx->IsCancelled() && owned()) {
      auto& ids = dial_queues_[req->rank()].ids;
      if (ids.empty()) {
        cv_.wait_for(lock, kPoll);
        continue;
      }
      pb::RelayDial dial;
      dial.set_id(ids.front());
      ids.pop_front();
      lock.unlock();
      const bool written = writer->Write(dial);
      lock.lock();
      if (!written) break;
    }
    if (owned()) dial_queues_.erase(req->rank());
    return grpc::Status::OK;
  }

  grpc::Status ReportStep(grpc::ServerContext*, const pb::StepReport* req,
                          pb::Directive* out) override {
    Locked lock(events_);
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
    Locked lock(events_);
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
    // Once every tasklet's files are in: commit the manifest (outside mu_).
    if (auto manifest = checkpoints_.add(req->next_step(), req->rank(),
                                         {req->files().begin(), req->files().end()})) {
      ++commits_in_flight_;
      lock.unlock();
      std::string error;
      try {
        runtime::commitCheckpoint(job_.checkpoint.dir, *manifest, job_.checkpoint.keep);
      } catch (const Error& e) {
        error = e.what();
      }
      lock.lock();
      --commits_in_flight_;
      if (error.empty()) {
        if (req->next_step() >= committed_next_step_) {
          committed_next_step_ = req->next_step();
          committed_replicas_ = manifest->replicas;
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
    Locked lock(events_);
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
    Locked lock(events_);
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
    Locked lock(events_);
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
  using Slot = Roster::Slot;
  // A new worker's registration (token checked): a slot, as a worker the
  // job waits for or as an idle spare.
  grpc::Status registerNewLocked(grpc::ServerContext* ctx, const pb::RegisterRequest* req) {
    // A survivor rejoining its place after a failure is not counted: the
    // cap is on newcomers (replacements, spares). Nor is, once per failure
    // it was blamed for, a worker that was left out but lives on (it
    // reported the failure itself, a broken link, and registers again):
    // recoveries must not use up the cap.
    const bool awaited = awaited_pids_.count(req->pid()) > 0;
    const bool returning = !awaited && blamed_alive_.count(req->pid()) > 0;
    if (!awaited && !returning && registrations_ >= max_registrations_) {
      eventLocked(detail::concat("refused a registration from ", ctx->peer(), ": ", registrations_,
                                 " registrations accepted already"));
      return {grpc::StatusCode::RESOURCE_EXHAUSTED,
              detail::concat("job '", common::printable(job_.name), "' has accepted ",
                             registrations_, " registrations already (", world_, " tasklets plus ",
                             max_registrations_ - world_,
                             " for spares and replacements); restart the "
                             "coordinator")};
    }
    int device = -1;
    if (grpc::Status st =
            resolveDevice(req->device(), job_.topology, roster_.deviceClaims(), &device);
        !st.ok())
      return st;
    if (req->relayed()) {
      if (grpc::Status st = checkRelayedLocked(*req); !st.ok()) return st;
    }
    if (returning) {
      blamed_alive_.erase(blamed_alive_.find(req->pid()));
    } else if (!awaited) {
      ++registrations_;
    }
    if (req->has_device_spec()) describeDeviceLocked(device, req->device_spec(), *req);
    Slot slot;
    slot.device = device;
    slot.info.hostname = req->hostname();
    slot.info.pid = req->pid();
    slot.listen_host = transport::isWildcardHost(req->listen_host()) ? hostOfPeer(ctx->peer())
                                                                     : req->listen_host();
    slot.last_seen = Clock::now();
    slot.previous_rank = req->has_previous_rank() ? req->previous_rank() : -1;
    slot.relayed = req->relayed();
    // From now on every plan and re-plan prices the device's incoming links
    // through the relay (once: a device relayed before is left as it is).
    if (slot.relayed && scheduler::relayIncomingLinks(job_.topology, device, relay_site_)) {
      eventLocked(detail::concat(
          "device '", common::printable(job_.topology.devices[static_cast<size_t>(device)].name),
          "' is reached through the relay (worker ", req->hostname(), " pid ", req->pid(),
          " accepts no connections)"));
    }
    awaited_pids_.erase(req->pid());
    slot.spare = joinsAsSpare(placed_, roster_.active(), static_cast<int>(awaited_pids_.size()),
                              world_, awaited);
    roster_.add(slot);
    if (slot.spare) {
      last_spare_joined_ = slot.last_seen;
      eventLocked(detail::concat("spare joined: ", req->hostname(), " pid ", req->pid(),
                                 ", device ", req->device().empty() ? "any" : req->device(),
                                 " (idle; ", roster_.idleSpares(), " spare(s))"));
    } else {
      eventLocked(detail::concat(
          req->has_previous_rank() ? "worker rejoined: " : "worker joined: ", req->hostname(),
          " pid ", req->pid(), ", device ", req->device().empty() ? "any" : req->device(), " (",
          roster_.active(), "/", world_, ")"));
    }
    return grpc::Status::OK;
  }

  // `worker --relay`: refused unless this coordinator runs a relay, the
  // worker names its device (its links are priced through the relay) and
  // links are not emulated (the emulator shapes direct links only).
  grpc::Status checkRelayedLocked(const pb::RegisterRequest& req) const {
    if (!relay_) {
      return {grpc::StatusCode::FAILED_PRECONDITION,
              "this worker accepts no connections (--relay), but the coordinator runs no relay: "
              "start it with --relay HOST:PORT --relay-site SITE, or give the worker a --listen "
              "port its peers can reach"};
    }
    if (req.device().empty() || req.device() == "any") {
      return {grpc::StatusCode::FAILED_PRECONDITION,
              "a worker reached through the relay (--relay) must name its device "
              "(--device NAME or INDEX), so that its links are priced through the relay"};
    }
    if (job_.transport.emulate_links) {
      return {grpc::StatusCode::FAILED_PRECONDITION,
              "transport.emulate_links is on, but a worker reached through the relay (--relay) "
              "cannot have its links emulated (the emulator shapes direct links); set "
              "transport.emulate_links: false"};
    }
    return grpc::Status::OK;
  }

  // `worker --device-spec`: the worker's own description of the device it
  // named replaces the topology's (its links stay the topology's); every
  // later plan and re-plan prices it.
  void describeDeviceLocked(int device, const pb::DeviceDescription& d,
                            const pb::RegisterRequest& req) {
    DeviceSpec& spec = job_.topology.devices[static_cast<size_t>(device)];
    if (!d.gpu().empty()) spec.gpu = d.gpu();
    if (d.tflops() > 0) {
      spec.tflops = d.tflops();
      spec.tflops_by_dtype.clear();
    }
    if (d.memory_gb() > 0) spec.memory_gb = d.memory_gb();
    eventLocked(detail::concat("device '", common::printable(spec.name), "' described by worker ",
                               common::printable(req.hostname()), " pid ", req.pid(), ": ",
                               describeDeviceSpec(d), " (now ", common::printable(spec.gpu), ", ",
                               spec.tflops, " TFLOPS, ", spec.memory_gb, " GB)"));
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
    out->set_workers_on_host(std::max(1, roster_.placedOn(s.info.hostname)));
    if (relay_) out->set_relay_port(relay_->port());
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
  void eventLocked(const std::string& line) { events_.push(line); }
  void eventsLocked(const std::vector<std::string>& lines) {
    for (const auto& line : lines) events_.push(line);
  }

  // Idle spares heard from within two of their calling intervals.
  int liveSparesLocked() const {
    return roster_.liveSpares(Clock::now(), 2 * heartbeatInterval(heartbeat_timeout_));
  }

  // Places the job once every tasklet has a worker and no checkpoint is
  // being committed (a new generation resumes from the newest commit).
  void maybePlaceLocked() {
    if (!placed_ && phase_ != Phase::ENDED)
      eventsLocked(roster_.promoteSpares(static_cast<int>(awaited_pids_.size()), world_,
                                         replicas_before_grow_ > 0));
    if (placed_ || phase_ == Phase::ENDED || commits_in_flight_ > 0) return;
    if (replanned_ ? !replannedDevicesHeldLocked() : roster_.active() != world_) return;
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
    const auto previous_layers = placement_.layers_of_stage;
    if (replanned_) {
      // A re-plan: every worker goes to the device it is on (survivors
      // keep theirs, spares the ones the plan gave them); workers on a
      // device the plan leaves out wait as idle spares.
      const std::set<int> chosen(replanned_->device_of_rank.begin(),
                                 replanned_->device_of_rank.end());
      for (auto& s : roster_.slots()) {
        if (s.gone || s.spare) continue;
        s.device = deviceOfLocked(s);
        if (!chosen.count(s.device)) {
          s.spare = true;
          s.previous_rank = -1;
          eventLocked(detail::concat("worker ", s.info.hostname, " pid ", s.info.pid,
                                     " waits as an idle spare: the new plan leaves its device ",
                                     s.device, " out"));
        }
      }
    }
    const DevicePlan plan =
        replanned_ ? DevicePlan{}
                   : planDevices(roster_.namedDevices(), job_.topology.numDevices(), world_,
                                 generation_ > 1 ? &placement_.device_of_rank : nullptr);
    if (replanned_) {
      placement_ = *replanned_;
      replanned_.reset();
    } else if (plan.reuse) {
      // The same plan: every named device is one the previous plan used.
    } else if (plan.devices.empty()) {
      placement_ = runtime::choosePlacement(model_, job_, {}, resume_body_split_);
    } else {
      // Named devices (fewer than the topology's when the job shrank).
      JobSpec sub = job_;
      sub.topology = scheduler::subTopology(job_.topology, plan.devices);
      placement_ = runtime::choosePlacement(model_, sub, {}, resume_body_split_);
      for (int& d : placement_.device_of_rank) d = plan.devices[static_cast<size_t>(d)];
    }
    if (generation_ > 1 && placement_.source != "re-plan" &&
        placement_.layers_of_stage != previous_layers) {
      // The checkpoint holds each stage's layers: a new generation keeps the cut.
      placement_.layers_of_stage = previous_layers;
    }
    const std::vector<int> worker_of_rank =
        assignRanks(placement_.device_of_rank, roster_.claims());
    startGenerationLocked();
    roster_.assign(worker_of_rank,
                   {generation_, stages_, placement_.device_of_rank, &job_.topology, first_step_},
                   Clock::now());
    checkpoints_.startGeneration(stages_, replicas_, placement_.layers_of_stage);
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
        "placement (", placement_.source, plan.reuse ? ", unchanged" : "", "):");
    for (int r = 0; r < world_; ++r) {
      const auto& l = placement_.layers_of_stage[static_cast<size_t>(r % stages_)];
      line += detail::concat(" rank ", r, "->device ",
                             placement_.device_of_rank[static_cast<size_t>(r)], " [", l.first, ",",
                             l.second, ")");
    }
    eventLocked(line);
  }

  // The worker of `rank` in the current generation (nullptr if none).
  Slot* slotOfRankLocked(int rank) { return placed_ ? roster_.ofRank(rank) : nullptr; }
  std::string describeLocked(int rank) {
    return placed_ ? roster_.describe(rank) : detail::concat("tasklet ", rank);
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
    const int64_t last = job_.training.steps - 1;
    if (!roster_.everyPlaced([&](const Slot& s) { return s.synchronous || s.last_step >= last; }))
      return;
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
    return roster_.everyPlaced([](const Slot& s) { return s.steps_done; });
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
    const auto [suspect, longest] = roster_.mostSilent(f.rank, now);
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
    const FailureDecision d =
        decideFailure(f, {generation_, completeLocked(), placed_, phase_ == Phase::REGROUPING,
                          restartsLocked(), job_.fault_tolerance.max_restarts,
                          regroup_failure_.cause, noStepThisGenerationLocked()});
    switch (d.action) {
      case FailureAction::NOTE:
      case FailureAction::NOTE_FINISHED:
        eventLocked(d.message);
        if (d.action == FailureAction::NOTE_FINISHED && f.rank >= 0)
          slotOfRankLocked(f.rank)->info.finished = true;
        return;
      case FailureAction::END_JOB:
        finalFailureLocked(f.rank, d.message, f.type);
        return;
      case FailureAction::REGROUP:
        regroupLocked(f);
        return;
    }
  }

  // No tasklet of the current generation has reported a step yet.
  bool noStepThisGenerationLocked() {
    return roster_.everyPlaced([&](const Slot& s) { return s.last_step < first_step_; });
  }

  // Ends the current generation: the failed worker is left out (a launcher
  // replaces it), every other worker is told to regroup on its next call
  // and Registers again; the next generation is placed once every tasklet
  // has a worker, within rejoin_timeout.
  void regroupLocked(const Failure& f) {
    eventLocked("failure detected: " + f.message);
    if (f.rank >= 0) {
      const int64_t pid = slotOfRankLocked(f.rank)->info.pid;
      lost_pids_.insert(pid);
      blamed_alive_.insert(pid);
    }
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
    for (const int64_t pid : roster_.placedPids())
      if (!lost_pids_.count(pid)) awaited_pids_.insert(pid);
    // Where each placed worker ran: a survivor that rejoins (whenever it
    // does) is still on that device, whatever the next plan is.
    for (int r = 0; r < roster_.ranks(); ++r)
      device_of_pid_[roster_.ofRank(r)->info.pid] =
          placement_.device_of_rank[static_cast<size_t>(r)];
    const int64_t redo = max_reported_ + 1 - committed_next_step_;
    ++generation_;
    phase_ = Phase::REGROUPING;
    regroup_since_ = Clock::now();
    regroup_searched_ = false;
    regroup_failure_ = why;
    regroup_reason_ = detail::concat("generation ", generation_ - 1, " ended: ", why.message);
    roster_.endGeneration();
    placed_ = false;
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
    if (replan_) {
      grow_due_ = true;  // the monitor prices a re-plan with the idle spares
      return;
    }
    // Not while a failure is being decided or another commit runs (the
    // next commit tries again), nor at the end or a stop.
    if (!growPossibleLocked() || replicas_ >= max_world_ / stages_) return;
    const int r = grownReplicas(liveSparesLocked(), stages_, replicas_, max_world_ / stages_,
                                job_.training.global_batch, job_.training.micro_batch);
    if (r == 0) return;
    const int old_replicas = replicas_;
    const Failure why{
        detail::concat("growing back from ", old_replicas, " to ", r, " replicas with idle spares"),
        kindName(ErrorKind::TIMEOUT),
        -1,
        true,
        Clock::now(),
        0,
        {}};
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

  // A grow (or a re-plan for growth) may end the generation now: a
  // checkpoint has just been committed, no failure is being decided, no
  // other commit runs, no stop, steps are left.
  bool growPossibleLocked() const {
    return phase_ == Phase::RUNNING && !abort_ && !pending_ && commits_in_flight_ == 0 &&
           !stop_requested_ && committed_next_step_ < job_.training.steps;
  }

  // The topology device a worker is on: the one it named, the one its rank
  // runs on, or (a survivor rejoining) the one it ran on when its
  // generation ended; -1 when it has none yet (it said "any" and was never
  // placed).
  int deviceOfLocked(const Slot& s) const {
    if (s.device >= 0) return s.device;
    if (placed_ && s.info.rank >= 0) return s.info.device;
    const auto it = device_of_pid_.find(s.info.pid);
    return it == device_of_pid_.end() ? -1 : it->second;
  }

  // Every device of the re-planned placement has an active worker on it.
  bool replannedDevicesHeldLocked() const {
    std::set<int> held;
    for (const auto& s : roster_.slots())
      if (!s.gone && !s.spare) held.insert(deviceOfLocked(s));
    for (int d : replanned_->device_of_rank)
      if (!held.count(d)) return false;
    return true;
  }

  // Elastic re-planning (fault_tolerance.replan). A search is prepared
  // under mu_, runs on a thread of its own (its budget may be seconds, and
  // the monitor goes on watching heartbeats and deadlines meanwhile), and
  // its answer is applied by the monitor only if the job is where it was
  // (ReplanSearch, below).

  // Starts a re-plan search. The live devices: every active worker's, and
  // with `growing` every live idle spare's; a worker without a device takes
  // a free one of the topology (never a lost one). False when there is
  // nothing to price (growing, and no spare the last search has not priced).
  bool startSearchLocked(bool growing) {
    auto search = std::make_shared<ReplanSearch>();
    search->generation = generation_;
    search->phase = phase_;
    search->growing = growing;
    auto& device_of_slot = search->device_of_slot;
    std::set<int> held;
    const auto recent = 2 * heartbeatInterval(heartbeat_timeout_);
    const auto now = Clock::now();
    std::vector<size_t>& spares = search->spares;
    for (size_t id = 0; id < roster_.size(); ++id) {
      const Slot& s = roster_[id];
      if (s.gone) continue;
      if (s.spare) {
        if (!growing || !(s.waiting || now - s.last_seen <= recent)) continue;
        spares.push_back(id);
      }
      const int d = deviceOfLocked(s);
      device_of_slot.emplace_back(id, d);
      if (d >= 0) held.insert(d);
    }
    if (growing && (spares.empty() || spares == grow_priced_spares_)) return false;
    // The plan the job runs, or the re-plan still waiting for its workers
    // (one of them never came): devices of it nobody holds now were lost
    // with their workers.
    const runtime::Placement& running = replanned_ ? *replanned_ : placement_;
    std::set<int>& lost = search->lost;
    lost = lost_devices_;
    if (!growing)
      for (int d : running.device_of_rank)
        if (!held.count(d)) lost.insert(d);
    int next_free = 0;
    for (auto& [id, d] : device_of_slot) {
      if (d >= 0) continue;
      while (next_free < job_.topology.numDevices() &&
             (held.count(next_free) || lost.count(next_free)))
        ++next_free;
      if (next_free >= job_.topology.numDevices()) break;
      d = next_free;
      held.insert(d);
    }
    device_of_slot.erase(
        std::remove_if(device_of_slot.begin(), device_of_slot.end(),
                       [](const std::pair<size_t, int>& e) { return e.second < 0; }),
        device_of_slot.end());
    search->live.assign(held.begin(), held.end());
    scheduler::CurrentPlan& current = search->current;
    current.stages = static_cast<int>(running.layers_of_stage.size());
    current.replicas = static_cast<int>(running.device_of_rank.size()) / current.stages;
    current.device_of_rank = running.device_of_rank;
    current.body_per_stage =
        runtime::bodySplit(running.layers_of_stage, model_.prologue_layers, model_.epilogue_layers);
    const FaultToleranceSpec& ft = job_.fault_tolerance;
    scheduler::ReplanOptions& ro = search->options;
    ro.budget_seconds = ft.replan_budget;
    ro.margin = ft.replan_margin;
    ro.seed = job_.scheduler.seed;
    search->priced = scheduler::effectiveNetworkJob(job_);
    search_ = search;
    search_thread_ = std::thread([search, before = opt_.before_replan_search] {
      try {
        if (before) before();
        search->result = scheduler::replan(search->priced, search->live, search->current,
                                           search->options, config::plannerStores(search->priced));
      } catch (const std::exception& e) {
        search->error = e.what();
      }
      search->done.store(true);
    });
    return true;
  }

  // Applies a finished search (the monitor, under mu_). Returns whether a
  // new plan was committed: then the next placement is the re-plan's, and
  // when growing the current generation has ended.
  bool applySearchLocked() {
    search_thread_.join();
    const std::shared_ptr<ReplanSearch> done = std::move(search_);
    search_.reset();
    const ReplanSearch& sr = *done;
    const bool growing = sr.growing;
    const std::vector<size_t>& spares = sr.spares;
    const std::vector<std::pair<size_t, int>>& device_of_slot = sr.device_of_slot;
    const std::vector<int>& live = sr.live;
    const std::optional<scheduler::ReplanResult>& rr = sr.result;
    const std::string& error = sr.error;
    if (generation_ != sr.generation || phase_ != sr.phase ||
        placed_ != (sr.phase == Phase::RUNNING) || abort_ || (growing && !growPossibleLocked())) {
      return false;  // the job moved on meanwhile
    }
    if (!rr) {
      eventLocked(detail::concat("re-plan on ", live.size(), " devices failed: ", error));
      return false;
    }
    eventLocked(detail::concat("re-plan on ", live.size(), " devices (",
                               growing ? detail::concat(spares.size(), " idle spare(s) live")
                                       : std::string("devices lost"),
                               "): ", rr->summary));
    if (!rr->commit) {
      if (growing) grow_priced_spares_ = spares;  // priced: not again until the spares change
      return false;
    }
    lost_devices_ = sr.lost;
    if (growing) {
      const Failure why{detail::concat("re-planning with ", spares.size(), " idle spare(s)"),
                        kindName(ErrorKind::TIMEOUT),
                        -1,
                        true,
                        Clock::now(),
                        0,
                        {}};
      endGenerationLocked(why);
      ++grows_;  // not a failure: no restart counted
    }
    const std::set<int> chosen(rr->device_of_rank.begin(), rr->device_of_rank.end());
    for (const auto& [id, d] : device_of_slot) {
      Slot& s = roster_[id];
      if (s.gone) continue;  // a placed worker of the generation just ended: rejoins
      if (s.spare && !chosen.count(d)) continue;  // stays an idle spare, on no device
      s.device = d;
      if (s.spare && chosen.count(d)) {
        s.spare = false;
        s.previous_rank = -1;
      } else if (!s.spare && !chosen.count(d)) {
        s.spare = true;
        s.previous_rank = -1;
        eventLocked(detail::concat("worker ", s.info.hostname, " pid ", s.info.pid,
                                   " waits as an idle spare: the new plan leaves its device ", d,
                                   " out"));
      }
    }
    stages_ = rr->stages;
    setReplicasLocked(rr->replicas);
    job_.parallelism.pipeline_stages = stages_;
    max_world_ = std::max(max_world_, world_);
    runtime::Placement p;
    p.device_of_rank = rr->device_of_rank;
    p.layers_of_stage = runtime::stageLayerRanges(model_, rr->body_per_stage);
    p.source = "re-plan";
    replanned_ = std::move(p);
    resume_body_split_.clear();  // the --resume checkpoint's split is for another shape
    ++replans_;
    grow_priced_spares_.clear();
    eventLocked(detail::concat("re-planned: generation ", generation_, " runs ", stages_,
                               " stages x ", replicas_, " replicas on ", world_,
                               " devices, resharded by layer from the checkpoint at step ",
                               committed_next_step_));
    regroup_since_ = Clock::now();  // the workers of the new plan get rejoin_timeout
    regroup_searched_ = false;      // and a search again if they do not all come
    maybePlaceLocked();
    cv_.notify_all();
    return true;
  }

  // rejoin_timeout has passed (no commit or search in flight) without a
  // worker for every tasklet. Survivors that have not rejoined by now are
  // counted as lost, so idle spares may take their places too; then the job
  // is placed if it can be, or re-plans (once per wait: the monitor applies
  // the search, and comes back here if it did not commit), or shrinks
  // (min_replicas). False: none of these, the job fails.
  bool giveUpWaitingLocked() {
    if (!awaited_pids_.empty()) {
      eventLocked(detail::concat(awaited_pids_.size(), " survivor(s) did not rejoin within ",
                                 rejoin_timeout_.count() / 1000,
                                 " s (fault_tolerance.rejoin_timeout): counted as lost"));
      for (int64_t pid : awaited_pids_) lost_pids_.insert(pid);
      awaited_pids_.clear();
    }
    maybePlaceLocked();
    if (placed_ || phase_ == Phase::ENDED) return true;
    if (replan_ && !regroup_searched_) {
      regroup_searched_ = true;
      if (startSearchLocked(/*growing=*/false)) return true;
    }
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
    replanned_.reset();  // a re-plan whose workers never came: the shrink decides now
    const int r = shrunkReplicas(roster_.active(), stages_, replicas_, min_replicas_,
                                 job_.training.global_batch, job_.training.micro_batch);
    if (r == 0) return false;
    const int old_replicas = replicas_;
    setReplicasLocked(r);
    eventsLocked(roster_.keepForShrink(world_, stages_));
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
    for (auto& s : roster_.slots()) s.steps_done = false;
  }

  void finalFailureLocked(int rank, const std::string& message, const std::string& type) {
    if (abort_) return;
    failure_ = Failure{message, type, rank, true, Clock::now(), 0, {}};
    abort_ = true;
    abort_reason_ = message;
    phase_ = Phase::ENDED;
    eventLocked("job failed: " + message);
    cv_.notify_all();
  }

  void monitorLoop() {
    Locked lock(events_);
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
        const bool all_finished =
            roster_.everyPlaced([](const Slot& s) { return s.info.finished; });
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
      eventsLocked(roster_.dropSilentSpares(now, heartbeat_timeout_));
      if (search_ && search_->done.load()) applySearchLocked();
      // Workers of a site tend to join together: a re-plan for growth waits
      // until no spare has joined for kGrowSettle, so that it prices them
      // all (a plan committed for the first would be kept, within the
      // margin, when the rest arrive).
      if (grow_due_ && replan_ && !search_ && now - last_spare_joined_ >= kGrowSettle) {
        grow_due_ = false;
        if (growPossibleLocked()) startSearchLocked(/*growing=*/true);
      }
      if (phase_ == Phase::REGROUPING) {
        maybePlaceLocked();  // waits for commits that were in flight
        if (!placed_ && now - regroup_since_ > rejoin_timeout_ && commits_in_flight_ == 0 &&
            !search_ && !giveUpWaitingLocked()) {
          const Failure& f = regroup_failure_;
          finalFailureLocked(f.rank,
                             recoveryGaveUp(f, roster_.active(), world_, rejoin_timeout_,
                                            min_replicas_, replicas_),
                             f.type);
        }
      }
      lock.unlock();
      events_.deliver();
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
  std::optional<transport::ConnectionGate> gate_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  // --relay: the relay, the site it is priced in, and each relayed rank's
  // pending dial-backs (its RelayDials).
  std::unique_ptr<transport::Relay> relay_;
  int relay_site_ = -1;
  struct DialQueue {
    uint64_t serial = 0;  // which RelayDials call owns it
    std::deque<std::string> ids;
  };
  std::map<int, DialQueue> dial_queues_;
  uint64_t dial_serial_ = 0;
  std::string address_;
  std::thread monitor_;

  mutable std::mutex mu_;
  std::mutex flush_mu_;
  // Events for on_event, delivered outside mu_ (Locked).
  EventQueue events_{mu_, [this](const std::string& line) { event(line); },
                     "the coordinator's event sink"};
  std::condition_variable cv_;
  bool shutting_down_ = false;
  Roster roster_;
  runtime::Placement placement_;
  // Where the job is: JOINING until the first placement, RUNNING while a
  // generation trains, REGROUPING from the end of a generation (a failure,
  // a grow back) until the next placement, ENDED (complete, failed or
  // stopped before it ran) for good.
  enum class Phase { JOINING, RUNNING, REGROUPING, ENDED };
  // A re-plan search: its inputs, where the job was, and its answer.
  struct ReplanSearch {
    // Where the job was.
    int64_t generation = 0;
    Phase phase = Phase::REGROUPING;
    bool growing = false;
    // The inputs: slot id -> device, the idle spares priced, the devices
    // lost, the live devices, the running plan.
    std::vector<std::pair<size_t, int>> device_of_slot;
    std::vector<size_t> spares;
    std::set<int> lost;
    std::vector<int> live;
    scheduler::CurrentPlan current;
    scheduler::ReplanOptions options;
    JobSpec priced;
    // The answer (set by the search thread before `done`).
    std::optional<scheduler::ReplanResult> result;
    std::string error;
    std::atomic<bool> done{false};
  };
  Phase phase_ = Phase::JOINING;
  // The current generation has a placement (ranks, addresses): from
  // RUNNING on, kept when the job ends while running.
  bool placed_ = false;
  int addresses_ = 0;
  bool train_started_ = false;
  Clock::time_point start_at_;
  std::optional<StepLedger> ledger_;  // set in the constructor
  CheckpointCollector checkpoints_{job_};
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
  // Workers blamed for a failure, once per failure: one that lives on may
  // register again that often without counting against the cap.
  std::multiset<int64_t> blamed_alive_;
  std::set<int64_t> awaited_pids_;  // survivors of the ended generation not yet rejoined

  // Elastic re-planning (fault_tolerance.replan).
  bool replan_ = false;
  // The next generation's placement, chosen by a re-plan (placeLocked uses
  // it once every device it names has a worker).
  std::optional<runtime::Placement> replanned_;
  // Devices whose workers were lost: a worker without a device of its own
  // is never given one of these.
  std::set<int> lost_devices_;
  // Where each worker of an ended generation ran, by pid (deviceOfLocked).
  std::map<int64_t, int> device_of_pid_;
  int replans_ = 0;        // re-plans committed
  bool grow_due_ = false;  // a checkpoint was committed: price a re-plan with the spares
  // The idle spares (slot ids) the last re-plan for growth priced without
  // committing: the same spares are not priced again at every commit.
  std::vector<size_t> grow_priced_spares_;
  // The re-plan search in flight or finished and not yet applied (the
  // monitor applies it), and its thread.
  std::shared_ptr<ReplanSearch> search_;
  std::thread search_thread_;
  // This wait for workers (regroup_since_) has started its search.
  bool regroup_searched_ = false;
  // When the newest idle spare joined (the growth re-plan's settle).
  Clock::time_point last_spare_joined_{};
};

Coordinator::Coordinator(CoordinatorOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}
Coordinator::~Coordinator() = default;
std::string Coordinator::listeningAddress() const {
  return impl_->listeningAddress();
}
std::optional<int> Coordinator::relayPort() const {
  return impl_->relayPort();
}
std::optional<transport::RelayStats> Coordinator::relayStats() const {
  return impl_->relayStats();
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
