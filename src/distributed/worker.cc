// The worker: join, build the tasklet over gRPC, train, report.
#include "src/distributed/worker.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "geopipe/error.h"
#include "geopipe/model.h"
#include "proto/coordinator.grpc.pb.h"
#include "src/common/blas_check.h"
#include "src/common/logging.h"
#include "src/common/text.h"
#include "src/config/buffer_check.h"
#include "src/data/dataset.h"
#include "src/data/sampler.h"
#include "src/distributed/job_bundle.h"
#include "src/distributed/recovery.h"
#include "src/distributed/request_checks.h"
#include "src/distributed/rpc_status.h"
#include "src/distributed/step_report.h"
#include "src/runtime/checkpoint.h"
#include "src/runtime/placement.h"
#include "src/runtime/tasklet.h"
#include "src/transport/factory.h"
#include "src/transport/grpc/credentials.h"
#include "src/transport/grpc/grpc_log.h"
#include "src/transport/grpc/grpc_transport.h"
#include "src/transport/grpc/relay.h"

namespace geopipe::distributed {
namespace {

namespace pb = geopipe::v1;
using Clock = std::chrono::steady_clock;

std::string hostName() {
  char buf[256] = {0};
  if (::gethostname(buf, sizeof(buf) - 1) != 0) return "unknown-host";
  return buf;
}

std::string hostPart(const std::string& address) {
  const auto colon = address.rfind(':');
  return colon == std::string::npos ? address : address.substr(0, colon);
}

// A worker that cannot reach its coordinator says why after this long, and
// again this often, while it keeps trying.
constexpr auto kFirstUnreachableWarning = std::chrono::seconds(5);
constexpr auto kUnreachableWarningEvery = std::chrono::seconds(15);

// What a failed connection attempt to the coordinator most likely means.
std::string whyUnreachable(const std::string& grpc_message) {
  const auto has = [&](const char* s) { return grpc_message.find(s) != std::string::npos; };
  if (has("onnection refused")) {
    return "connection refused: nothing listens on that port yet (the coordinator is not started, "
           "or the host or port is wrong)";
  }
  if (has("DNS resolution failed")) return "the host name does not resolve (check --coordinator)";
  if (has("No route to host") || has("Network is unreachable")) {
    return "no route to that host (a wrong address, or a firewall that rejects)";
  }
  if (has("Deadline Exceeded") || has("imed out") || has("Timeout")) {
    return "no answer: a firewall drops the packets, or the host is down";
  }
  return "the connection failed";
}

std::string portPart(const std::string& address) {
  const auto colon = address.rfind(':');
  return colon == std::string::npos ? "" : address.substr(colon + 1);
}

// The worker's side of the Coordinator service: one channel, every call
// with a deadline, every failure converted once.
class CoordinatorClient {
 public:
  CoordinatorClient(const std::string& address, std::chrono::milliseconds timeout,
                    const JobSecurity& security)
      : address_(address),
        peer_("coordinator at " + address),
        timeout_(timeout),
        security_(security) {
    transport::checkPlaintextAllowed(security.link, address, "the --coordinator address");
    transport::installGrpcLogging();
    connect();
  }

  // A new channel to the coordinator (and a new connection when used).
  void connect() {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
    // A coordinator that starts after this worker is found within 2 s.
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
    // Straight to the coordinator, never through a proxy named by
    // grpc_proxy/https_proxy/http_proxy in the environment (set for package
    // downloads, say), as the peer links (a worker behind NAT uses --relay).
    args.SetInt(GRPC_ARG_ENABLE_HTTP_PROXY, 0);
    args.SetMaxSendMessageSize(transport::kMaxCoordinatorRequestBytes);
    args.SetMaxReceiveMessageSize(transport::kMaxCoordinatorReplyBytes);
    channel_ =
        grpc::CreateCustomChannel(address_, transport::channelCredentials(security_.link), args);
    stub_ = pb::Coordinator::NewStub(channel_);
  }

  // Joins the job: waits for the coordinator to come up (it may start after
  // us; `first` only: a worker rejoining after a failure fails at once if it
  // is gone) and for every other worker to join. A coordinator that is up
  // but refuses the connection (TLS) or this worker (token) ends the wait
  // with a ConfigError saying which and what to change.
  // A worker the job does not need now is held as an idle spare: it calls
  // again about once per heartbeat interval (its wait starts over each
  // time, so an idle spare never times out) until it gets a tasklet or the
  // job ends (Assignment.job_over).
  pb::Assignment registerWorker(const pb::RegisterRequest& request, std::chrono::milliseconds wait,
                                bool first = true) {
    pb::RegisterRequest req = request;
    const auto wait_for = wait.count() > 0 ? wait : std::chrono::hours(24 * 365);
    auto deadline = std::chrono::system_clock::now() + wait_for;
    int closed_in_setup = 0;  // connections the coordinator closed during set-up
    bool said_spare = false;
    const auto started = std::chrono::steady_clock::now();
    auto next_warning = started + kFirstUnreachableWarning;
    auto last_connect = started;
    while (true) {
      grpc::ClientContext ctx;
      ctx.set_deadline(deadline);
      pb::Assignment out;
      const grpc::Status st = stub_->Register(&ctx, req, &out);
      if (st.ok() && out.spare() && !out.job_over()) {
        if (!said_spare) spdlog::info("held as an idle spare by the {}", peer_);
        said_spare = true;
        req.set_spare_ticket(out.spare_ticket());
        deadline = std::chrono::system_clock::now() + wait_for;
        continue;
      }
      if (st.ok()) return out;
      const std::string& msg = st.error_message();
      if (st.error_code() == grpc::StatusCode::PERMISSION_DENIED) {
        GEOPIPE_THROW(ConfigError, "the ", peer_, " refused this worker: ", msg, " (",
                      security_.token.empty() ? "this worker has none: give --token-file FILE "
                                                "or export GEOPIPE_JOB_TOKEN"
                                              : security_.token.origin,
                      "); the token must equal the coordinator's security.token_file");
      }
      if (st.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
        GEOPIPE_THROW(ConfigError, "the ", peer_, " refused this worker: ", msg);
      }
      if (st.error_code() != grpc::StatusCode::UNAVAILABLE || !first ||
          std::chrono::system_clock::now() >= deadline) {
        throwIfFailed(st, peer_, "Register");
      }
      // UNAVAILABLE: not up yet (retry), or up but the connection fails.
      std::string advice = transport::explainHandshakeFailure(msg, security_.link, peer_);
      // With TLS 1.3 a server that rejects the client's certificate says so
      // after the client's side of the handshake is done: the client only
      // sees the connection close, every time.
      const bool closed = msg.find("Socket closed") != std::string::npos ||
                          msg.find("Connection reset") != std::string::npos;
      closed_in_setup = closed ? closed_in_setup + 1 : 0;
      if (advice.empty() && closed_in_setup >= 3 && !security_.link.plaintext()) {
        advice = detail::concat(
            "the ", peer_,
            " closes every connection during set-up: it most likely does not trust this "
            "worker's certificate (",
            security_.link.tls->origin,
            " must be signed by the CA of the job's security.ca), or it speaks plaintext");
      }
      if (!advice.empty()) {
        GEOPIPE_THROW(ConfigError, "cannot join: ", advice, " [gRPC: ", msg, "]");
      }
      const auto now = std::chrono::steady_clock::now();
      // A fresh channel every 2 s while the coordinator is away: a channel
      // whose first attempts were refused stalled in the TLS handshake once
      // the coordinator came up, until gRPC's 20 s connect deadline (a
      // worker started before its coordinator joined ~20 s late; the e2e
      // test Coordinator.WorkersStartedBeforeTheirCoordinator... needs it
      // to join within 5 s).
      if (now - last_connect > std::chrono::seconds(2)) {
        connect();
        last_connect = now;
      }
      if (now >= next_warning) {
        spdlog::warn("still cannot reach the {} after {} s: {}; retrying [gRPC: {}]", peer_,
                     std::chrono::duration_cast<std::chrono::seconds>(now - started).count(),
                     whyUnreachable(msg), msg);
        next_warning = now + kUnreachableWarningEvery;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  }

  // A relayed worker's stream of dial requests (RelayDials), open until the
  // coordinator ends it or `ctx` is cancelled.
  std::unique_ptr<grpc::ClientReader<pb::RelayDial>> relayDials(grpc::ClientContext* ctx,
                                                                const pb::RelayDialRequest& req) {
    return stub_->RelayDials(ctx, req);
  }
  // The coordinator's host as this worker dials it ("[::1]" keeps its
  // brackets), for the relay's address.
  std::string host() const { return hostPart(address_); }

  pb::AddressTable reportAddress(const pb::AddressRequest& req) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(10));
    pb::AddressTable out;
    throwIfFailed(stub_->ReportAddress(&ctx, req, &out), peer_, "ReportAddress");
    return out;
  }

  template <typename Req>
  pb::Directive directiveCall(grpc::Status (pb::Coordinator::Stub::*method)(grpc::ClientContext*,
                                                                            const Req&,
                                                                            pb::Directive*),
                              const Req& req, const char* what,
                              std::chrono::milliseconds deadline = {}) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     (deadline.count() > 0 ? deadline : timeout_));
    pb::Directive out;
    throwIfFailed(((*stub_).*method)(&ctx, req, &out), peer_, what);
    return out;
  }

  // Starts ReportStep without waiting: `done` runs on a gRPC thread with
  // the answer, or with the error the synchronous call would have thrown.
  // `ctx`, `req` and `out` must live until then.
  void reportStepAsync(grpc::ClientContext* ctx, const pb::StepReport* req, pb::Directive* out,
                       std::function<void(std::exception_ptr)> done) {
    ctx->set_deadline(std::chrono::system_clock::now() + timeout_);
    stub_->async()->ReportStep(ctx, req, out, [this, done = std::move(done)](grpc::Status st) {
      std::exception_ptr error;
      try {
        throwIfFailed(st, peer_, "ReportStep");
      } catch (...) {
        error = std::current_exception();
      }
      done(error);
    });
  }

  void finish(const pb::FinishRequest& req) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    pb::FinishReply out;
    throwIfFailed(stub_->Finish(&ctx, req, &out), peer_, "Finish");
  }

  const std::string& peer() const { return peer_; }
  // The coordinator's silence that ends the worker (from the Assignment).
  void setTimeout(std::chrono::milliseconds timeout) { timeout_ = timeout; }
  std::chrono::milliseconds timeout() const { return timeout_; }

 private:
  std::string address_;
  std::string peer_;
  std::chrono::milliseconds timeout_;
  const JobSecurity& security_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<pb::Coordinator::Stub> stub_;
};

// Sends the step reports off the critical path: each one leaves when its
// step ends, without waiting (at most kMaxInFlight at once), and the answers
// arrive in any order. directive() merges what they said (the coordinator's
// instructions only ever get stronger within a generation), and rethrows
// the first failed report. Once the coordinator asks for a stop, every
// report is synchronous: flush() waits for all answers, so the coordinator
// knows how far this worker can have got (phase 2 of a stop).
class StepReporter {
 public:
  explicit StepReporter(CoordinatorClient& client) : client_(client) {}
  // Cancels the reports still in flight (the worker leaves the generation).
  ~StepReporter() {
    std::vector<std::shared_ptr<Call>> calls;  // alive while cancelled
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& [ptr, call] : in_flight_) calls.push_back(call);
    }
    // Unlocked: a cancelled call may be answered on this thread.
    for (const auto& c : calls) c->ctx.TryCancel();
    calls.clear();
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return in_flight_.empty(); });
  }
  StepReporter(const StepReporter&) = delete;
  StepReporter& operator=(const StepReporter&) = delete;

  // Sends `report`; synchronous once a stop was requested (then it also
  // waits for the answer). Throws the error of an earlier report.
  void post(pb::StepReport report) {
    std::unique_lock<std::mutex> lock(mu_);
    rethrowLocked();
    cv_.wait(lock, [&] { return in_flight_.size() < kMaxInFlight || error_; });
    rethrowLocked();
    const bool sync = merged_.stop_requested();
    if (sync) {
      cv_.wait(lock, [&] { return in_flight_.empty(); });
      report.set_synchronous(true);
    }
    auto call = std::make_shared<Call>();
    call->req = std::move(report);
    Call* raw = call.get();
    in_flight_.emplace(raw, std::move(call));
    lock.unlock();
    client_.reportStepAsync(&raw->ctx, &raw->req, &raw->out,
                            [this, raw](std::exception_ptr error) { answered(raw, error); });
    if (sync) flush();
  }
  // Waits until every report sent is answered; throws the first error.
  void flush() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return in_flight_.empty(); });
    rethrowLocked();
  }
  // What the answers so far said. Throws the error of a failed report.
  pb::Directive directive() {
    std::lock_guard<std::mutex> lock(mu_);
    rethrowLocked();
    return merged_;
  }

 private:
  static constexpr size_t kMaxInFlight = 64;
  struct Call {
    grpc::ClientContext ctx;
    pb::StepReport req;
    pb::Directive out;
  };

  void answered(Call* call, std::exception_ptr error) {
    std::lock_guard<std::mutex> lock(mu_);
    if (error) {
      if (!error_) error_ = error;
    } else {
      merge(call->out);
    }
    in_flight_.erase(call);  // frees it unless the destructor holds it
    cv_.notify_all();
  }
  void merge(const pb::Directive& d) {
    merged_.set_stop_requested(merged_.stop_requested() || d.stop_requested());
    if (d.stop_after_step() >= 0) {
      merged_.set_stop_after_step(d.stop_after_step());
      merged_.set_checkpoint_at_stop(d.checkpoint_at_stop());
    }
    if ((d.abort() && !merged_.abort()) ||
        (d.regroup() && !merged_.regroup() && !merged_.abort())) {
      merged_.set_abort_reason(d.abort_reason());
    }
    merged_.set_abort(merged_.abort() || d.abort());
    merged_.set_regroup(merged_.regroup() || d.regroup());
  }
  void rethrowLocked() {
    if (error_) std::rethrow_exception(error_);
  }

  CoordinatorClient& client_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::unordered_map<Call*, std::shared_ptr<Call>> in_flight_;
  pb::Directive merged_ = [] {
    pb::Directive d;
    d.set_stop_after_step(-1);
    return d;
  }();
  std::exception_ptr error_;
};

// Sends heartbeats from its own thread and watches the directive. On an
// abort, a regroup (this generation ended) or a coordinator that stopped
// answering it closes the transport, so a tasklet blocked on a peer fails
// at once; the main thread then asks verdict() what happened. Once the
// tasklet has run its last step (steps_done) it polls fast until the
// coordinator says the job is complete.
class HeartbeatThread {
 public:
  enum class Verdict { NONE, COMPLETE, REGROUP, ABORT, LOST };

  HeartbeatThread(CoordinatorClient& client, const pb::Assignment& a,
                  transport::GrpcTransport& transport, std::atomic<int64_t>& last_step)
      : client_(client),
        rank_(a.rank()),
        generation_(a.generation()),
        interval_(a.heartbeat_interval_ms()),
        timeout_(client.timeout()),
        transport_(transport),
        last_step_(last_step) {
    if (interval_.count() <= 0) interval_ = heartbeatInterval(timeout_);
    thread_ = std::thread([this] { loop(); });
  }
  ~HeartbeatThread() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  // What ended this generation (NONE while all is well); `reason` says why.
  Verdict verdict(std::string* reason = nullptr) {
    std::lock_guard<std::mutex> lock(mu_);
    if (reason) *reason = reason_;
    return verdict_;
  }
  // The tasklet ran its last step: say so and poll fast from now on.
  void stepsDone() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      steps_done_ = true;
    }
    cv_.notify_all();
  }
  // Blocks until there is a verdict (COMPLETE counts only after
  // stepsDone()). LOST at the latest after the coordinator timeout.
  Verdict waitForVerdict(std::string* reason) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return verdict_ != Verdict::NONE; });
    *reason = reason_;
    return verdict_;
  }

 private:
  void loop() {
    auto last_ok = Clock::now();
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      cv_.wait_for(lock, steps_done_ ? std::chrono::milliseconds(50) : interval_);
      if (stop_) break;
      const bool done = steps_done_;
      lock.unlock();
      Verdict v = Verdict::NONE;
      std::string reason;
      try {
        pb::Heartbeat hb;
        hb.set_rank(rank_);
        hb.set_step(last_step_.load());
        hb.set_generation(generation_);
        hb.set_steps_done(done);
        // A short deadline, so a coordinator that hangs is noticed as soon
        // as one that is gone.
        pb::Directive d = client_.directiveCall(&pb::Coordinator::Stub::SendHeartbeat, hb,
                                                "SendHeartbeat", std::max(interval_, timeout_ / 4));
        last_ok = Clock::now();
        if (d.abort()) {
          v = Verdict::ABORT;
          reason = "aborted by the coordinator: " + d.abort_reason();
        } else if (d.regroup()) {
          v = Verdict::REGROUP;
          reason = d.abort_reason();
        } else if (done && d.complete()) {
          v = Verdict::COMPLETE;
        }
      } catch (const Error& e) {
        if (Clock::now() - last_ok > timeout_) {
          v = Verdict::LOST;
          reason = detail::concat("lost the coordinator: no answer for ", timeout_.count() / 1000,
                                  " s (", e.what(), "); stopping this worker");
        }
      }
      lock.lock();
      if (v != Verdict::NONE && verdict_ == Verdict::NONE) {
        verdict_ = v;
        reason_ = reason;
        if (v != Verdict::COMPLETE) {
          spdlog::warn("{}", reason);
          lock.unlock();
          transport_.close();
          lock.lock();
        }
        cv_.notify_all();
      }
      if (verdict_ != Verdict::NONE) break;
    }
  }

  CoordinatorClient& client_;
  const int rank_;
  const int64_t generation_;
  std::chrono::milliseconds interval_;
  const std::chrono::milliseconds timeout_;
  transport::GrpcTransport& transport_;
  std::atomic<int64_t>& last_step_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool steps_done_ = false;
  Verdict verdict_ = Verdict::NONE;
  std::string reason_;
  std::thread thread_;
};

enum class GenerationEnd { DONE, REGROUP };

// `worker --relay`: answers the coordinator's dial requests for one
// generation. Each request is a peer waiting at the relay: connect to the
// relay, say the request's id and hand the connection to the peer service,
// which serves it as if it had accepted it.
class RelayDialer {
 public:
  RelayDialer(CoordinatorClient& client, int rank, int64_t generation, std::string relay,
              transport::GrpcTransport& transport)
      : client_(client), relay_(std::move(relay)), transport_(transport) {
    request_.set_rank(rank);
    request_.set_generation(generation);
    thread_ = std::thread([this] { run(); });
  }
  ~RelayDialer() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
      if (ctx_) ctx_->TryCancel();
    }
    cv_.notify_all();
    thread_.join();
  }
  RelayDialer(const RelayDialer&) = delete;
  RelayDialer& operator=(const RelayDialer&) = delete;

 private:
  void run() {
    for (;;) {
      auto ctx = std::make_shared<grpc::ClientContext>();
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stopping_) return;
        ctx_ = ctx;
      }
      auto reader = client_.relayDials(ctx.get(), request_);
      pb::RelayDial dial;
      while (reader->Read(&dial)) {
        try {
          transport_.adoptConnection(
              transport::dialRelay(relay_, dial.id(), std::chrono::seconds(10)));
        } catch (const std::exception& e) {
          spdlog::warn("tasklet rank {}: a peer waits at the relay, but {}", request_.rank(),
                       e.what());
        }
      }
      const grpc::Status st = reader->Finish();
      std::unique_lock<std::mutex> lock(mu_);
      ctx_.reset();
      // OK: the generation ended; FAILED_PRECONDITION: this rank is not (or
      // no longer) a relayed worker of the current generation.
      if (stopping_ || st.ok() || st.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
        if (!st.ok() && !stopping_)
          spdlog::warn("tasklet rank {}: the coordinator stopped relaying: {}", request_.rank(),
                       st.error_message());
        return;
      }
      // The link to the coordinator broke: ask again (the heartbeat decides
      // whether the coordinator is gone).
      cv_.wait_for(lock, std::chrono::seconds(1), [&] { return stopping_; });
    }
  }

  CoordinatorClient& client_;
  const std::string relay_;
  transport::GrpcTransport& transport_;
  pb::RelayDialRequest request_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::shared_ptr<grpc::ClientContext> ctx_;
  std::thread thread_;
};

// One generation of this worker: build the tasklet the Assignment
// describes (restoring its checkpoint), train until the end, a stop, or
// the generation's end. Returns REGROUP when the coordinator regroups the
// job after a failure; throws (after telling the coordinator) when the job
// ends with a failure.
GenerationEnd runGeneration(CoordinatorClient& client, const WorkerOptions& opt,
                            const pb::Assignment& a, WorkerResult& result,
                            const std::function<void(const std::string&)>& event) {
  const int rank = a.rank();
  const int world = a.stages() * a.replicas();
  result.rank = rank;
  result.stage = rank % a.stages();
  result.replica = rank / a.stages();

  // From here on every failure is reported to the coordinator before it is
  // rethrown, so the launcher can name this tasklet and its cause.
  std::shared_ptr<transport::GrpcTransport> grpc_transport;
  std::unique_ptr<HeartbeatThread> heartbeat;
  std::unique_ptr<RelayDialer> dialer;  // --relay: declared after the transport it feeds
  std::atomic<int64_t> last_step{a.first_step() - 1};
  auto finish = [&](bool ok, const std::string& error, const std::string& type) {
    pb::FinishRequest f;
    f.set_rank(rank);
    f.set_ok(ok);
    f.set_error(error);
    f.set_error_type(type);
    f.set_generation(a.generation());
    try {
      client.finish(f);
    } catch (const Error& e) {
      spdlog::warn("could not tell the coordinator that tasklet {} finished: {}", rank, e.what());
    }
  };
  // Drops this generation: heartbeats, peer streams (the tasklet goes with
  // the scope that throws or returns).
  auto leave = [&](const std::string& reason) {
    heartbeat.reset();
    dialer.reset();
    if (grpc_transport) grpc_transport->close();
    event(detail::concat("tasklet rank ", rank, " leaves generation ", a.generation(), " (", reason,
                         "); rejoining"));
    return GenerationEnd::REGROUP;
  };
  try {
    JobSpec job = parseBundle({a.job_yaml(), a.job_source(), a.base_dir(), {}});
    job.transport.emulate_links = a.emulate_links();  // the coordinator's resolution
    common::applyJobLogLevel(job.logging.level);
    job.training.steps = static_cast<int>(a.steps());
    job.parallelism.pipeline_stages = a.stages();
    job.parallelism.data_parallel = a.replicas();
    if (!opt.plugin.empty()) job.model.plugin = opt.plugin;
    ModelDef model = makeModel(job.model);
    runtime::Placement placement;
    placement.device_of_rank.assign(a.device_of_rank().begin(), a.device_of_rank().end());
    for (int s = 0; s < a.first_layer_size(); ++s)
      placement.layers_of_stage.emplace_back(a.first_layer(s), a.last_layer(s));
    placement.source = a.placement_source();
    event(detail::concat(
        "tasklet rank ", rank, " (stage ", result.stage, ", replica ", result.replica,
        ") on device ", placement.device_of_rank[rank], ", layers [",
        placement.layers_of_stage[result.stage].first, ", ",
        placement.layers_of_stage[result.stage].second, ")",
        a.generation() > 1 ? detail::concat(", generation ", a.generation()) : std::string(),
        a.resume_dir().empty() ? std::string() : ", restoring " + a.resume_dir(),
        a.resume_replicas() > 0 && a.resume_replicas() != a.replicas()
            ? detail::concat(" (written by ", a.resume_replicas(), " replicas, resharded to ",
                             a.replicas(), ")")
            : std::string()));

    // The peer service: bind first, then tell the coordinator the port.
    transport::GrpcTransportOptions to;
    to.rank = rank;
    to.addresses.assign(static_cast<size_t>(world), "");
    to.job_token = a.job_token();
    to.security = opt.security.link;
    to.link_grace =
        std::chrono::milliseconds(static_cast<int64_t>(job.fault_tolerance.link_grace * 1000));
    to.same_host_sockets = job.transport.same_host == "unix";
    // The first free port of --listen's range; with --relay a loopback port
    // nobody is told about (peers come through the relay).
    const ListenPorts ports = parseListen(opt.relay ? std::string("127.0.0.1:0") : opt.listen);
    for (int port = ports.low; !grpc_transport; ++port) {
      to.listen_address = detail::concat(ports.host, ":", port);
      try {
        grpc_transport = std::make_shared<transport::GrpcTransport>(to);
      } catch (const IoError& e) {
        if (port >= ports.high) {
          GEOPIPE_THROW(IoError, "no free port in --listen ", opt.listen, ": ", e.what());
        }
      }
    }
    const auto [advertise_host, advertise_port] = parseAdvertise(opt.advertise);
    std::string advertised =
        detail::concat(a.listen_host(), ":",
                       advertise_port > 0 ? std::to_string(advertise_port)
                                          : portPart(grpc_transport->listeningAddress()));
    const std::string relay = detail::concat(client.host(), ":", a.relay_port());
    if (opt.relay) {
      GEOPIPE_CHECK(a.relay_port() > 0, ProtocolError, client.peer(),
                    " accepted a relayed worker but named no relay port");
      // Peers ask the relay for NAME:ID; TLS checks NAME against this
      // worker's certificate.
      advertised = transport::relayTarget(a.listen_host(), rank);
      dialer = std::make_unique<RelayDialer>(client, rank, a.generation(), relay, *grpc_transport);
      event(detail::concat("tasklet rank ", rank, " accepts no connections (--relay); peers reach ",
                           advertised, " through the relay at ", relay));
    } else {
      event(detail::concat("tasklet rank ", rank, " listens on ",
                           grpc_transport->listeningAddress(), "; peers dial ", advertised));
    }
    pb::AddressRequest ar;
    ar.set_rank(rank);
    ar.set_address(advertised);
    ar.set_generation(a.generation());
    const pb::AddressTable table = client.reportAddress(ar);
    if (table.regroup()) return leave("the generation ended before training started");
    for (int r = 0; r < world; ++r) {
      if (r == rank) continue;
      const bool relayed = r < table.relayed_size() && table.relayed(r);
      grpc_transport->setPeerAddress(
          r, relayed ? transport::viaRelay(table.addresses(r), relay) : table.addresses(r));
    }
    std::shared_ptr<transport::Transport> net = grpc_transport;
    if (job.transport.kind == "nccl") {
      // NCCL between the ranks of a site, this gRPC endpoint across sites.
      transport::TransportOptions no;
      no.rank = rank;
      for (int d : placement.device_of_rank) {
        no.site_of_rank.push_back(job.topology.devices.at(static_cast<size_t>(d)).site);
      }
      net = transport::wrapTransport("nccl", net, no);
    }
    if (job.transport.emulate_links && job.topology.numDevices() > 0) {
      net = runtime::emulateLinks(net, job, placement);
    }
    heartbeat = std::make_unique<HeartbeatThread>(client, a, *grpc_transport, last_step);

    // --threads 0: this host's cores shared by the tasklets placed on it.
    const common::WorkerThreads wt = common::workerThreads(
        opt.threads, a.workers_on_host(), static_cast<int>(std::thread::hardware_concurrency()));
    if (!wt.warning.empty()) spdlog::warn("{}", wt.warning);
    const int threads = wt.threads;
    torch::set_num_threads(threads);
    common::setBlasThreads(threads);  // OpenBLAS's own pool, see blas_check.h
    const data::JobData job_data = data::loadJobData(job.data, job.model, job.training.seed);
    const data::TokenDataset& dataset = job_data.train;
    config::checkBufferBudget(job, a.replicas(), dataset.numSamples());
    const data::Sampler sampler(dataset.numSamples(), job.training.global_batch, a.replicas(),
                                job.training.micro_batch, job.training.seed,
                                data::sampleOrderFor(job));
    // logging.trace_dir: this worker's timeline, on this host.
    auto trace = runtime::openTrace(job, rank, a.generation());
    if (trace)
      event(detail::concat("tasklet rank ", rank, " writes its timeline to ", trace->path()));
    runtime::Tasklet tasklet(model, job, placement, rank, *net, dataset, sampler,
                             std::chrono::milliseconds(int64_t{opt.timeout_seconds} * 1000),
                             job_data.val ? &*job_data.val : nullptr, trace);
    if (!a.resume_dir().empty()) {
      // The coordinator verified the checkpoint; its manifest says the
      // shape and the layers of each stage that wrote it.
      const runtime::CheckpointManifest m = runtime::readManifest(a.resume_dir());
      GEOPIPE_CHECK(m.replicas == a.resume_replicas(), ProtocolError, "checkpoint '",
                    common::printable(a.resume_dir()), "' was written by ", m.replicas,
                    " replicas, the coordinator said ", a.resume_replicas());
      tasklet.loadCheckpoint({a.resume_dir(), m.stages, m.replicas, m.layers_of_stage},
                             a.first_step());
    }

    const int64_t steps = a.steps();
    const std::string& ckpt_dir = job.checkpoint.dir;
    StepReporter reporter(client);
    for (int64_t step = a.first_step(); step < steps; ++step) {
      runtime::TaskletStep ts = tasklet.runStep(step);
      if (runtime::evaluationDue(job, step, steps)) tasklet.evaluate(step, ts.part);
      last_step = step;
      ++result.steps_done;
      pb::StepReport rep = stepReportOf(ts.part, ts.has_loss, ts.loss);
      rep.set_rank(rank);
      rep.set_step(step);
      rep.set_generation(a.generation());
      reporter.post(std::move(rep));
      const pb::Directive d = reporter.directive();
      if (d.abort()) GEOPIPE_THROW(IoError, "aborted by the coordinator: ", d.abort_reason());
      if (d.regroup()) return leave(d.abort_reason());
      const bool stop = d.stop_after_step() >= 0 && step >= d.stop_after_step();
      // Checkpoints: the job's schedule (the Trainer's rule: every
      // `every_steps` and after the last step), or where the coordinator
      // stops the job early.
      const bool scheduled = runtime::checkpointDue(job.checkpoint, step, steps);
      if (scheduled || (stop && d.checkpoint_at_stop() && !ckpt_dir.empty())) {
        // Every step report first: a commit means every tasklet's report
        // of every earlier step has arrived.
        reporter.flush();
        const auto files = tasklet.saveCheckpoint(runtime::stepDirectory(ckpt_dir, step + 1));
        pb::CheckpointReport cr;
        cr.set_rank(rank);
        cr.set_next_step(step + 1);
        cr.set_generation(a.generation());
        for (const auto& f : files) cr.add_files(f);
        const pb::Directive dc =
            client.directiveCall(&pb::Coordinator::Stub::ReportCheckpoint, cr, "ReportCheckpoint");
        if (dc.regroup() && !dc.abort()) return leave(dc.abort_reason());
      }
      if (stop) {
        result.stopped_early = step + 1 < steps;
        break;
      }
    }
    // Leave only once every tasklet is done: until then a failure of
    // another one may still need this worker in a new generation.
    reporter.flush();
    heartbeat->stepsDone();
    std::string reason;
    switch (heartbeat->waitForVerdict(&reason)) {
      case HeartbeatThread::Verdict::COMPLETE:
        break;
      case HeartbeatThread::Verdict::REGROUP:
        return leave(reason);
      default:
        GEOPIPE_THROW(IoError, reason);
    }
    heartbeat.reset();
    dialer.reset();
    const transport::TransportStats ts = grpc_transport->stats();
    event(detail::concat("tasklet rank ", rank, " transport: ", ts.messages_sent,
                         " messages sent, ", ts.messages_received, " received, ",
                         ts.connect_retries, " connect retries, ", ts.sends_failed,
                         " failed sends"));
    finish(true, "", "");
  } catch (const std::exception& e) {
    std::string reason;
    auto verdict = heartbeat ? heartbeat->verdict(&reason) : HeartbeatThread::Verdict::NONE;
    const std::string type = kindName(kindOf(e));
    if (verdict == HeartbeatThread::Verdict::NONE && heartbeat && a.recoverable() &&
        isRecoverableFailure(type)) {
      // Maybe a peer died: say what happened here and wait for the
      // coordinator's verdict (regroup, or the end of the job).
      spdlog::warn("tasklet rank {} step failed ({}); waiting for the coordinator", rank, e.what());
      pb::FailureReport fr;
      fr.set_rank(rank);
      fr.set_generation(a.generation());
      fr.set_error(e.what());
      fr.set_error_type(type);
      try {
        const pb::Directive d =
            client.directiveCall(&pb::Coordinator::Stub::ReportFailure, fr, "ReportFailure");
        if (d.regroup() && !d.abort()) return leave(d.abort_reason());
      } catch (const Error&) {
        // The heartbeat thread tells whether the coordinator is gone.
      }
      verdict = heartbeat->waitForVerdict(&reason);
    }
    if (verdict == HeartbeatThread::Verdict::REGROUP) return leave(reason);
    heartbeat.reset();
    dialer.reset();
    if (verdict == HeartbeatThread::Verdict::ABORT) {
      // Another tasklet failed; this one is collateral.
      finish(false, reason, "Aborted");
    } else if (verdict != HeartbeatThread::Verdict::LOST) {
      finish(false, e.what(), type);
    }
    if (grpc_transport) grpc_transport->close();
    if (verdict == HeartbeatThread::Verdict::ABORT || verdict == HeartbeatThread::Verdict::LOST) {
      GEOPIPE_THROW(IoError, reason);
    }
    throw;
  }
  return GenerationEnd::DONE;
}

}  // namespace

namespace {

// A port number of `flag`'s value `text`, in [lowest, 65535].
int portNumber(const std::string& text, const char* flag, const std::string& value, int lowest) {
  size_t used = 0;
  int port = -1;
  try {
    port = std::stoi(text, &used);
  } catch (const std::exception&) {
  }
  if (used != text.size() || port < lowest || port > 65535) {
    GEOPIPE_THROW(ConfigError, flag, " '", value, "': '", text, "' is not a port number (", lowest,
                  "..65535)");
  }
  return port;
}

}  // namespace

ListenPorts parseListen(const std::string& listen) {
  ListenPorts p;
  p.host = hostPart(listen);
  if (p.host.empty() || p.host == listen) {
    GEOPIPE_THROW(ConfigError, "--listen '", listen,
                  "': give HOST:PORT, HOST:0 for a free port, or HOST:LOW-HIGH for a range");
  }
  const std::string ports = portPart(listen);
  const auto dash = ports.find('-');
  if (dash == std::string::npos) {
    p.low = p.high = portNumber(ports, "--listen", listen, 0);
    return p;
  }
  p.low = portNumber(ports.substr(0, dash), "--listen", listen, 1);
  p.high = portNumber(ports.substr(dash + 1), "--listen", listen, 1);
  if (p.low > p.high) {
    GEOPIPE_THROW(ConfigError, "--listen '", listen, "': the range ", p.low, "-", p.high,
                  " is empty; write LOW-HIGH with LOW <= HIGH");
  }
  return p;
}

std::pair<std::string, int> parseAdvertise(const std::string& advertise) {
  if (advertise.empty()) return {"", 0};
  const std::string host = hostPart(advertise);
  // "HOST" alone, or an IPv6 literal without a port ("[::1]").
  if (host == advertise || advertise.back() == ']') return {advertise, 0};
  if (host.empty()) {
    GEOPIPE_THROW(ConfigError, "--advertise '", advertise, "': give HOST or HOST:PORT");
  }
  return {host, portNumber(portPart(advertise), "--advertise", advertise, 1)};
}

WorkerResult runWorker(const WorkerOptions& opt) {
  auto event = [&](const std::string& line) {
    spdlog::info("{}", line);
    if (opt.on_event) opt.on_event(line);
  };
  // Plaintext peers must be on loopback too: refuse before joining.
  transport::checkPlaintextAllowed(opt.security.link, opt.listen, "this worker's --listen address");
  CoordinatorClient client(opt.coordinator, opt.coordinator_timeout, opt.security);
  pb::RegisterRequest reg;
  reg.set_protocol_version(pb::COORDINATOR_PROTOCOL_CURRENT);
  reg.set_device(opt.device.empty() ? "any" : opt.device);
  reg.set_join_token(opt.security.token.secret);
  reg.set_hostname(hostName());
  reg.set_pid(::getpid());
  const ListenPorts ports = parseListen(opt.listen);  // refuses a bad --listen before joining
  const auto [advertise_host, advertise_port] = parseAdvertise(opt.advertise);
  reg.set_listen_host(advertise_host.empty() ? ports.host : advertise_host);
  if (opt.relay) {
    GEOPIPE_CHECK(opt.listen == WorkerOptions{}.listen, ConfigError,
                  "--relay: this worker accepts "
                  "no connections, so --listen '",
                  opt.listen,
                  "' has no use; drop --listen, or "
                  "drop --relay when peers can reach that port");
    GEOPIPE_CHECK(advertise_port == 0, ConfigError, "--advertise '", opt.advertise,
                  "' with --relay: peers reach this worker through the relay, not at a port; "
                  "give only the name its certificate has (--advertise NAME)");
    GEOPIPE_CHECK(reg.device() != "any", ConfigError,
                  "--relay needs a named device (--device NAME or INDEX): the coordinator prices "
                  "its links through the relay");
    // The name peers check this worker's certificate for.
    reg.set_listen_host(advertise_host.empty() ? hostName() : advertise_host);
    reg.set_relayed(true);
  }
  if (!opt.device_spec.empty()) {
    GEOPIPE_CHECK(reg.device() != "any", ConfigError,
                  "--device-spec describes a device of the topology: name it with --device NAME "
                  "(its links come from the topology file)");
    *reg.mutable_device_spec() = parseDeviceSpec(opt.device_spec);
  }
  event("joining " + client.peer() + " as device " + common::printable(reg.device()));
  WorkerResult result;
  std::chrono::milliseconds rejoin_wait{0};
  for (int64_t attempt = 0;; ++attempt) {
    const pb::Assignment a = attempt == 0
                                 ? client.registerWorker(reg, opt.join_timeout)
                                 : client.registerWorker(reg, rejoin_wait, /*first=*/false);
    if (a.protocol_version() != pb::COORDINATOR_PROTOCOL_CURRENT) {
      GEOPIPE_THROW(ProtocolError, client.peer(), " speaks coordinator protocol version ",
                    a.protocol_version(), " but this worker speaks version ",
                    static_cast<int>(pb::COORDINATOR_PROTOCOL_CURRENT),
                    "; run the same geopipe release on every host");
    }
    if (a.job_over()) {
      event(result.steps_done > 0 ? "the job ended; this worker waited as a spare after it shrank"
                                  : "the job ended without needing this spare");
      result.spare_unused = result.steps_done == 0;
      return result;
    }
    if (attempt == 0) result.first_step = a.first_step();
    if (a.heartbeat_timeout_ms() > 0) {
      client.setTimeout(std::chrono::milliseconds(a.heartbeat_timeout_ms()));
    }
    // A rejoin waits for the other workers at most as long as the
    // coordinator does, plus its failure-detection time.
    rejoin_wait = std::chrono::milliseconds(a.rejoin_timeout_ms()) + client.timeout() +
                  std::chrono::seconds(5);
    if (runGeneration(client, opt, a, result, event) == GenerationEnd::DONE) break;
    ++result.recoveries;
    reg.set_previous_rank(a.rank());
  }
  event(detail::concat("tasklet rank ", result.rank, " done: ", result.steps_done, " steps",
                       result.recoveries > 0
                           ? detail::concat(" in ", result.recoveries + 1, " generations")
                           : std::string(),
                       result.stopped_early ? " (stopped early by the coordinator)" : ""));
  return result;
}

}  // namespace geopipe::distributed
