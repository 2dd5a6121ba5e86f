// The worker: join, build the tasklet over gRPC, train, report.
#include "src/distributed/worker.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "geopipe/error.h"
#include "src/common/blas_check.h"
#include "geopipe/model.h"
#include "proto/coordinator.grpc.pb.h"
#include "src/data/dataset.h"
#include "src/data/sampler.h"
#include "src/distributed/job_bundle.h"
#include "src/distributed/rpc_status.h"
#include "src/runtime/checkpoint.h"
#include "src/runtime/placement.h"
#include "src/runtime/tasklet.h"
#include "src/transport/grpc/grpc_transport.h"

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

std::string portPart(const std::string& address) {
  const auto colon = address.rfind(':');
  return colon == std::string::npos ? "" : address.substr(colon + 1);
}

std::string errorTypeName(const std::exception& e) {
  if (dynamic_cast<const ConfigError*>(&e)) return "ConfigError";
  if (dynamic_cast<const TimeoutError*>(&e)) return "TimeoutError";
  if (dynamic_cast<const ProtocolError*>(&e)) return "ProtocolError";
  if (dynamic_cast<const IoError*>(&e)) return "IoError";
  if (dynamic_cast<const InfeasibleError*>(&e)) return "InfeasibleError";
  if (dynamic_cast<const Error*>(&e)) return "Error";
  return "InternalError";
}

// The worker's side of the Coordinator service: one channel, every call
// with a deadline, every failure converted once.
class CoordinatorClient {
 public:
  CoordinatorClient(const std::string& address, std::chrono::milliseconds timeout)
      : peer_("coordinator at " + address), timeout_(timeout) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
    channel_ = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
    stub_ = pb::Coordinator::NewStub(channel_);
  }

  pb::Assignment registerWorker(const pb::RegisterRequest& req, std::chrono::milliseconds wait) {
    grpc::ClientContext ctx;
    // Wait for the coordinator to come up (it may start after us), and for
    // every other worker to join.
    ctx.set_wait_for_ready(true);
    ctx.set_deadline(std::chrono::system_clock::now() +
                     (wait.count() > 0 ? wait : std::chrono::hours(24 * 365)));
    pb::Assignment out;
    throwIfFailed(stub_->Register(&ctx, req, &out), peer_, "Register");
    return out;
  }

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
                              const Req& req, const char* what) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + timeout_);
    pb::Directive out;
    throwIfFailed(((*stub_).*method)(&ctx, req, &out), peer_, what);
    return out;
  }

  void finish(const pb::FinishRequest& req) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    pb::FinishReply out;
    throwIfFailed(stub_->Finish(&ctx, req, &out), peer_, "Finish");
  }

  const std::string& peer() const { return peer_; }

 private:
  std::string peer_;
  std::chrono::milliseconds timeout_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<pb::Coordinator::Stub> stub_;
};

// Sends heartbeats from its own thread and watches the directive for an
// abort; on abort (or a coordinator that stopped answering) it closes the
// transport so a tasklet blocked on a peer fails at once.
class HeartbeatThread {
 public:
  HeartbeatThread(CoordinatorClient& client, int rank, const WorkerOptions& opt,
                  transport::GrpcTransport& transport, std::atomic<int64_t>& last_step)
      : client_(client), rank_(rank), opt_(opt), transport_(transport), last_step_(last_step) {
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
  // Why the worker must stop now; empty while all is well.
  std::string abortReason() {
    std::lock_guard<std::mutex> lock(mu_);
    return abort_reason_;
  }

 private:
  void loop() {
    auto last_ok = Clock::now();
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      cv_.wait_for(lock, opt_.heartbeat_interval);
      if (stop_) break;
      lock.unlock();
      std::string reason;
      try {
        pb::Heartbeat hb;
        hb.set_rank(rank_);
        hb.set_step(last_step_.load());
        pb::Directive d =
            client_.directiveCall(&pb::Coordinator::Stub::SendHeartbeat, hb, "SendHeartbeat");
        last_ok = Clock::now();
        if (d.abort()) reason = "aborted by the coordinator: " + d.abort_reason();
      } catch (const Error& e) {
        if (Clock::now() - last_ok > opt_.coordinator_timeout) {
          reason = std::string("lost the coordinator: ") + e.what();
        }
      }
      lock.lock();
      if (!reason.empty() && abort_reason_.empty()) {
        abort_reason_ = reason;
        spdlog::warn("{}", reason);
        lock.unlock();
        transport_.close();
        lock.lock();
      }
    }
  }

  CoordinatorClient& client_;
  int rank_;
  const WorkerOptions& opt_;
  transport::GrpcTransport& transport_;
  std::atomic<int64_t>& last_step_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::string abort_reason_;
  std::thread thread_;
};

}  // namespace

WorkerResult runWorker(const WorkerOptions& opt) {
  auto event = [&](const std::string& line) {
    spdlog::info("{}", line);
    if (opt.on_event) opt.on_event(line);
  };
  CoordinatorClient client(opt.coordinator, opt.coordinator_timeout);
  pb::RegisterRequest reg;
  reg.set_protocol_version(pb::COORDINATOR_PROTOCOL_CURRENT);
  reg.set_device(opt.device.empty() ? "any" : opt.device);
  reg.set_join_token(opt.join_token);
  reg.set_hostname(hostName());
  reg.set_pid(::getpid());
  reg.set_listen_host(hostPart(opt.listen));
  event("joining " + client.peer() + " as device " + reg.device());
  const pb::Assignment a = client.registerWorker(reg, opt.join_timeout);
  if (a.protocol_version() != pb::COORDINATOR_PROTOCOL_CURRENT) {
    GEOPIPE_THROW(ProtocolError, client.peer(), " speaks coordinator protocol version ",
                  a.protocol_version(), " but this worker speaks version ",
                  static_cast<int>(pb::COORDINATOR_PROTOCOL_CURRENT),
                  "; run the same geopipe release on every host");
  }
  WorkerResult result;
  result.rank = a.rank();
  result.stage = a.rank() % a.stages();
  result.replica = a.rank() / a.stages();
  result.first_step = a.first_step();
  const int rank = a.rank();
  const int world = a.stages() * a.replicas();

  // From here on every failure is reported to the coordinator before it is
  // rethrown, so the launcher can name this tasklet and its cause.
  std::shared_ptr<transport::GrpcTransport> grpc_transport;
  std::unique_ptr<HeartbeatThread> heartbeat;
  std::atomic<int64_t> last_step{a.first_step() - 1};
  auto finish = [&](bool ok, const std::string& error, const std::string& type) {
    pb::FinishRequest f;
    f.set_rank(rank);
    f.set_ok(ok);
    f.set_error(error);
    f.set_error_type(type);
    try {
      client.finish(f);
    } catch (const Error& e) {
      spdlog::warn("could not tell the coordinator that tasklet {} finished: {}", rank, e.what());
    }
  };
  try {
    JobSpec job = parseBundle({a.job_yaml(), a.job_source(), a.base_dir()});
    job.training.steps = static_cast<int>(a.steps());
    job.parallelism.pipeline_stages = a.stages();
    job.parallelism.data_parallel = a.replicas();
    ModelDef model = makeModel(job.model);
    runtime::Placement placement;
    placement.device_of_rank.assign(a.device_of_rank().begin(), a.device_of_rank().end());
    for (int s = 0; s < a.first_layer_size(); ++s)
      placement.layers_of_stage.emplace_back(a.first_layer(s), a.last_layer(s));
    placement.source = a.placement_source();
    event(detail::concat("tasklet rank ", rank, " (stage ", result.stage, ", replica ",
                         result.replica, ") on device ", placement.device_of_rank[rank],
                         ", layers [", placement.layers_of_stage[result.stage].first, ", ",
                         placement.layers_of_stage[result.stage].second, ")"));

    // The peer service: bind first, then tell the coordinator the port.
    transport::GrpcTransportOptions to;
    to.rank = rank;
    to.addresses.assign(static_cast<size_t>(world), "");
    to.listen_address = opt.listen;
    to.job_token = a.job_token();
    grpc_transport = std::make_shared<transport::GrpcTransport>(to);
    const std::string advertised =
        a.listen_host() + ":" + portPart(grpc_transport->listeningAddress());
    pb::AddressRequest ar;
    ar.set_rank(rank);
    ar.set_address(advertised);
    const pb::AddressTable table = client.reportAddress(ar);
    for (int r = 0; r < world; ++r)
      if (r != rank) grpc_transport->setPeerAddress(r, table.addresses(r));
    std::shared_ptr<transport::Transport> net = grpc_transport;
    if (job.transport.emulate_links && job.topology.numDevices() > 0) {
      net = runtime::emulateLinks(net, job, placement);
    }
    heartbeat = std::make_unique<HeartbeatThread>(client, rank, opt, *grpc_transport, last_step);

    const int threads = opt.threads > 0
                            ? opt.threads
                            : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
    torch::set_num_threads(threads);
    common::setBlasThreads(threads);  // OpenBLAS's own pool, see blas_check.h
    const data::TokenDataset dataset = data::loadDataset(job.data, job.model, job.training.seed);
    const data::Sampler sampler(dataset.numSamples(), job.training.global_batch, a.replicas(),
                                job.training.micro_batch, job.training.seed);
    runtime::Tasklet tasklet(model, job, placement, rank, *net, dataset, sampler,
                             std::chrono::milliseconds(int64_t{opt.timeout_seconds} * 1000));
    if (!a.resume_dir().empty()) tasklet.loadCheckpoint(a.resume_dir());

    const int64_t steps = a.steps();
    const std::string& ckpt_dir = job.checkpoint.dir;
    const int every = job.checkpoint.every_steps;
    for (int64_t step = a.first_step(); step < steps; ++step) {
      runtime::TaskletStep ts;
      try {
        ts = tasklet.runStep(step);
      } catch (const Error&) {
        const std::string reason = heartbeat->abortReason();
        if (!reason.empty()) GEOPIPE_THROW(IoError, reason);
        throw;
      }
      last_step = step;
      ++result.steps_done;
      pb::StepReport rep;
      rep.set_rank(rank);
      rep.set_step(step);
      rep.set_has_loss(ts.has_loss);
      rep.set_loss(ts.loss);
      rep.set_lr(ts.part.lr);
      rep.set_seconds(ts.part.seconds);
      rep.set_compute_seconds(ts.part.compute_seconds);
      rep.set_comm_wait_seconds(ts.part.comm_wait_seconds);
      rep.set_activation_raw_bytes(ts.part.activation_raw_bytes);
      rep.set_activation_wire_bytes(ts.part.activation_wire_bytes);
      rep.set_gradient_raw_bytes(ts.part.gradient_raw_bytes);
      rep.set_gradient_wire_bytes(ts.part.gradient_wire_bytes);
      rep.set_dp_raw_bytes(ts.part.dp_raw_bytes);
      rep.set_dp_wire_bytes(ts.part.dp_wire_bytes);
      const pb::Directive d =
          client.directiveCall(&pb::Coordinator::Stub::ReportStep, rep, "ReportStep");
      if (d.abort()) GEOPIPE_THROW(IoError, "aborted by the coordinator: ", d.abort_reason());
      const bool stop = d.stop_after_step() >= 0 && step >= d.stop_after_step();
      // Checkpoints: the job's schedule (the Trainer's rule: every
      // `every_steps` and after the last step), or where the coordinator
      // stops the job early.
      const bool scheduled =
          !ckpt_dir.empty() && every > 0 && ((step + 1) % every == 0 || step + 1 == steps);
      if (scheduled || (stop && d.checkpoint_at_stop() && !ckpt_dir.empty())) {
        const auto files = tasklet.saveCheckpoint(runtime::stepDirectory(ckpt_dir, step + 1));
        pb::CheckpointReport cr;
        cr.set_rank(rank);
        cr.set_next_step(step + 1);
        for (const auto& f : files) cr.add_files(f);
        client.directiveCall(&pb::Coordinator::Stub::ReportCheckpoint, cr, "ReportCheckpoint");
      }
      if (stop) {
        result.stopped_early = step + 1 < steps;
        break;
      }
    }
    heartbeat.reset();
    finish(true, "", "");
  } catch (const std::exception& e) {
    std::string reason = heartbeat ? heartbeat->abortReason() : "";
    heartbeat.reset();
    if (!reason.empty() && reason.rfind("aborted", 0) == 0) {
      // Another tasklet failed; this one is collateral.
      finish(false, reason, "Aborted");
    } else {
      finish(false, e.what(), errorTypeName(e));
    }
    if (grpc_transport) grpc_transport->close();
    throw;
  }
  const transport::TransportStats ts = grpc_transport->stats();
  event(detail::concat("tasklet rank ", rank, " done: ", result.steps_done, " steps",
                       result.stopped_early ? " (stopped early by the coordinator)" : "",
                       "; transport: ", ts.messages_sent, " messages sent, ", ts.messages_received,
                       " received, ", ts.connect_retries, " connect retries, ", ts.sends_failed,
                       " failed sends"));
  return result;
}

}  // namespace geopipe::distributed
