// The coordinator's refusals and the job bundle, over a real gRPC channel.
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>

#include "geopipe/error.h"
#include "proto/coordinator.grpc.pb.h"
#include "src/cli/commands.h"
#include "src/config/diagnostics.h"
#include "src/distributed/coordinator.h"
#include "src/distributed/job_bundle.h"
#include "src/distributed/rpc_status.h"
#include "src/distributed/security.h"
#include "src/distributed/step_report.h"
#include "src/distributed/worker.h"
#include "src/runtime/checkpoint.h"
#include "src/security/pki.h"
#include "src/security/token.h"
#include "src/transport/grpc/credentials.h"
#include "tests/distributed/test_jobs.h"
#include "tests/support/raw_tcp.h"
#include "tests/support/test_identity.h"

namespace geopipe::distributed {
namespace {

namespace pb = geopipe::v1;
using testing::TempDir;
using testing::tinyJobYaml;
using testing::writeJob;

constexpr const char* kToken = "the-right-join-token-0123456789";

// A loopback identity (127.0.0.1 certificate) signed by `signer`, trusting `ca`.
std::shared_ptr<const security::TlsIdentity> identityFrom(
    const security::CertificateAuthority& ca, const security::CertificateAuthority& signer) {
  return geopipe::testing::testIdentity(ca, signer);
}

const security::CertificateAuthority& testCa() {
  static const security::CertificateAuthority ca =
      security::createCertificateAuthority("test CA", 1);
  return ca;
}

JobSecurity tlsSecurity(const std::string& token = kToken) {
  JobSecurity s;
  s.link.tls = identityFrom(testCa(), testCa());
  s.token = security::JoinToken{token, "test token"};
  return s;
}

// A coordinator of `yaml` (by default the tiny 2 x 2 job on real links)
// on a free loopback port over mutual TLS with the join token kToken.
CoordinatorOptions tlsCoordinatorOptions(
    const TempDir& dir,
    const std::string& yaml = tinyJobYaml(5, "transport: {emulate_links: false}\n")) {
  CoordinatorOptions opt;
  opt.job_path = writeJob(dir, "job.yaml", yaml);
  opt.listen_address = "127.0.0.1:0";
  opt.security = tlsSecurity();
  return opt;
}

// A coordinator of the tiny 2 x 2 job over mutual TLS with the join token
// kToken, and a raw TLS client of its service.
struct Fixture {
  TempDir dir;
  std::vector<std::string> events;
  std::mutex events_mu;
  std::unique_ptr<Coordinator> coordinator;
  std::unique_ptr<pb::Coordinator::Stub> stub;
  explicit Fixture(int spare_registrations = -1) {
    CoordinatorOptions opt = tlsCoordinatorOptions(dir);
    opt.spare_registrations = spare_registrations;
    opt.on_event = [this](const std::string& line) {
      std::lock_guard<std::mutex> lock(events_mu);
      events.push_back(line);
    };
    coordinator = std::make_unique<Coordinator>(opt);
    stub = pb::Coordinator::NewStub(grpc::CreateChannel(
        coordinator->listeningAddress(), transport::channelCredentials(tlsSecurity().link)));
  }
  int eventsContaining(const std::string& part) {
    std::lock_guard<std::mutex> lock(events_mu);
    int n = 0;
    for (const auto& e : events) n += e.find(part) != std::string::npos ? 1 : 0;
    return n;
  }
  std::string allEvents() {
    std::lock_guard<std::mutex> lock(events_mu);
    std::string all;
    for (const auto& e : events) all += e + "\n";
    return all;
  }
  grpc::Status registerAs(uint32_t version, const std::string& device,
                          const std::string& token = kToken, int deadline_ms = 500) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(deadline_ms));
    pb::RegisterRequest req;
    req.set_protocol_version(version);
    req.set_device(device);
    req.set_join_token(token);
    req.set_hostname("test");
    req.set_pid(42);
    pb::Assignment out;
    return stub->Register(&ctx, req, &out);
  }
};

// Registers one worker per entry of `hosts` at once (pid 1000 + i, or
// `pids[i]`; previous rank `previous[i]` when >= 0), as concurrent Register
// calls on `stub`; returns the assignments (rank -1: refused).
std::vector<pb::Assignment> registerWorkers(pb::Coordinator::Stub& stub,
                                            const std::vector<std::string>& hosts,
                                            const std::vector<int64_t>& pids = {},
                                            const std::vector<int>& previous = {}) {
  std::vector<pb::Assignment> out(hosts.size());
  std::vector<std::thread> workers;
  for (size_t w = 0; w < hosts.size(); ++w) {
    workers.emplace_back([&, w] {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
      pb::RegisterRequest req;
      req.set_protocol_version(pb::COORDINATOR_PROTOCOL_CURRENT);
      req.set_device("any");
      req.set_join_token(kToken);
      req.set_hostname(hosts[w]);
      req.set_pid(pids.empty() ? 1000 + static_cast<int64_t>(w) : pids[w]);
      if (!previous.empty() && previous[w] >= 0) req.set_previous_rank(previous[w]);
      if (!stub.Register(&ctx, req, &out[w]).ok()) out[w].set_rank(-1);
    });
  }
  for (auto& t : workers) t.join();
  return out;
}

// The sorted ranks of `assigned`.
std::vector<int> sortedRanks(const std::vector<pb::Assignment>& assigned) {
  std::vector<int> ranks;
  for (const auto& a : assigned) ranks.push_back(a.rank());
  std::sort(ranks.begin(), ranks.end());
  return ranks;
}

const std::vector<std::string> kFourHosts = {"worker-0", "worker-1", "worker-2", "worker-3"};

TEST(Coordinator, RefusesAnotherProtocolVersionNamingBoth) {
  Fixture f;
  // A worker of the release before the receipts speaks version 4: as stage
  // s it would never wait for stage s-1's receipt, as stage s-1 never send
  // one (its neighbour would time out).
  grpc::Status st = f.registerAs(4, "any");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(st.error_message().find("version 4"), std::string::npos) << st.error_message();
  EXPECT_NE(st.error_message().find("version 5"), std::string::npos) << st.error_message();
  EXPECT_THROW(throwIfFailed(st, "coordinator", "Register"), ProtocolError);
}

TEST(Coordinator, UnknownDeviceIsAConfigErrorListingTheTopology) {
  Fixture f;
  grpc::Status st = f.registerAs(pb::COORDINATOR_PROTOCOL_CURRENT, "local/9");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("not in topology 'four'"), std::string::npos)
      << st.error_message();
  st = f.registerAs(pb::COORDINATOR_PROTOCOL_CURRENT, "17");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  try {
    throwIfFailed(st, "coordinator at x", "Register");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("Register to coordinator at x"), std::string::npos);
  }
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

TEST(Coordinator, RefusesAWrongTokenAndLogsItOnceWithoutTheToken) {
  Fixture f;
  const std::string wrong = "a-wrong-join-token-9876543210";
  for (int i = 0; i < 3; ++i) {
    grpc::Status st = f.registerAs(pb::COORDINATOR_PROTOCOL_CURRENT, "any", wrong);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
    EXPECT_EQ(st.error_message(), "wrong join token");
  }
  grpc::Status st = f.registerAs(pb::COORDINATOR_PROTOCOL_CURRENT, "any", "");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(contains(st.error_message(), "no join token")) << st.error_message();
  const std::string log = f.allEvents();
  EXPECT_EQ(f.eventsContaining("refused a worker from ipv4:127.0.0.1:"), 1) << log;
  EXPECT_TRUE(contains(log, "(host 'test', pid 42): wrong join token")) << log;
  EXPECT_FALSE(contains(log, wrong)) << log;
  EXPECT_FALSE(contains(log, kToken)) << log;
  EXPECT_TRUE(f.coordinator->tasklets().empty());
}

TEST(Coordinator, ThrottlesAHostThatKeepsSendingWrongTokens) {
  Fixture f;
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(
        f.registerAs(pb::COORDINATOR_PROTOCOL_CURRENT, "any", "x-wrong-token-0123456").error_code(),
        grpc::StatusCode::PERMISSION_DENIED);
  }
  // Refused from now on, even with the right token, and logged once.
  for (int i = 0; i < 3; ++i) {
    grpc::Status st = f.registerAs(pb::COORDINATOR_PROTOCOL_CURRENT, "any");
    EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_TRUE(contains(st.error_message(), "too many wrong join tokens from 127.0.0.1"))
        << st.error_message();
  }
  EXPECT_EQ(f.eventsContaining("throttling 127.0.0.1"), 1) << f.allEvents();
}

TEST(Coordinator, CapsRegistrations) {
  Fixture f(/*spare_registrations=*/0);
  // Four workers join and leave before placement (their calls time out)...
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(f.registerAs(pb::COORDINATOR_PROTOCOL_CURRENT, "any", kToken, 100).error_code(),
              grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  // ... and the job's 4 tasklets + 0 spares are used up.
  grpc::Status st = f.registerAs(pb::COORDINATOR_PROTOCOL_CURRENT, "any");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(contains(st.error_message(), "accepted 4 registrations already"))
      << st.error_message();
}

// runWorker against the fixture's coordinator with `security`; the message
// of what it threw.
std::string joinWith(Fixture& f, const JobSecurity& security, const std::string& listen) {
  WorkerOptions w;
  w.coordinator = f.coordinator->listeningAddress();
  w.listen = listen;
  w.security = security;
  w.join_timeout = std::chrono::seconds(20);
  try {
    runWorker(w);
  } catch (const ConfigError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("not a ConfigError: ") + e.what();
  }
  return "joined";
}

TEST(Coordinator, WorkerWithAWrongTokenExitsSayingSo) {
  Fixture f;
  const std::string what = joinWith(f, tlsSecurity("the-wrong-join-token-000000"), "127.0.0.1:0");
  EXPECT_TRUE(contains(what, "the coordinator at 127.0.0.1:")) << what;
  EXPECT_TRUE(contains(what, "refused this worker: wrong join token (test token)")) << what;
  EXPECT_FALSE(contains(what, "the-wrong-join-token")) << what;
}

// A proxy in the environment (http_proxy for package downloads, say) is not
// the way to the coordinator: a worker that followed it would never reach
// the coordinator here, whose refusal proves the worker dialled it directly.
// Sets environment variables for a scope and restores what was there.
class ScopedEnv {
 public:
  void set(const char* name, const char* value) {
    const char* old = std::getenv(name);
    saved_.emplace_back(name, old ? std::optional<std::string>(old) : std::nullopt);
    if (value) {
      ::setenv(name, value, 1);
    } else {
      ::unsetenv(name);
    }
  }
  ~ScopedEnv() {
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) {
      if (it->second) {
        ::setenv(it->first.c_str(), it->second->c_str(), 1);
      } else {
        ::unsetenv(it->first.c_str());
      }
    }
  }

 private:
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

TEST(Coordinator, WorkersDoNotFollowProxiesInTheirEnvironment) {
  Fixture f;
  ScopedEnv env;
  for (const char* var : {"grpc_proxy", "https_proxy", "http_proxy"}) {
    env.set(var, "http://127.0.0.1:9");  // nothing listens there
  }
  // No exemption for loopback, which would let a worker that follows
  // proxies pass.
  for (const char* var : {"no_grpc_proxy", "no_proxy", "NO_PROXY"}) env.set(var, nullptr);
  const std::string what = joinWith(f, tlsSecurity("the-wrong-join-token-000000"), "127.0.0.1:0");
  EXPECT_TRUE(contains(what, "refused this worker: wrong join token (test token)")) << what;
}

TEST(Coordinator, WorkerWithACertificateOfAnotherCaIsRefused) {
  Fixture f;
  // The worker trusts the coordinator's CA but its own certificate was
  // signed by another one: the coordinator refuses the handshake.
  JobSecurity s = tlsSecurity();
  s.link.tls = identityFrom(testCa(), security::createCertificateAuthority("rogue CA", 1));
  const auto start = std::chrono::steady_clock::now();
  const std::string what = joinWith(f, s, "127.0.0.1:0");
  EXPECT_TRUE(contains(what, "cannot join:")) << what;
  EXPECT_TRUE(contains(what, "trust")) << what;
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(15));
  EXPECT_TRUE(f.coordinator->tasklets().empty());
}

TEST(Coordinator, PlaintextWorkerAgainstATlsCoordinatorIsRefused) {
  Fixture f;
  JobSecurity plain;
  plain.token = security::JoinToken{kToken, "test token"};
  const std::string what = joinWith(f, plain, "127.0.0.1:0");
  EXPECT_TRUE(contains(what, "cannot join:")) << what;
  EXPECT_TRUE(contains(what, "expects TLS")) << what;
}

TEST(Coordinator, PlaintextOnlyOnLoopback) {
  TempDir dir;
  CoordinatorOptions opt;
  opt.job_path = writeJob(dir, "job.yaml", tinyJobYaml(5, "security: {insecure: true}\n"));
  opt.listen_address = "0.0.0.0:0";
  try {
    Coordinator c(opt);
    FAIL() << "plaintext on 0.0.0.0 was accepted";
  } catch (const ConfigError& e) {
    EXPECT_TRUE(contains(e.what(), "the coordinator's --listen address '0.0.0.0:0'")) << e.what();
    EXPECT_TRUE(contains(e.what(), "loopback addresses only")) << e.what();
  }
  opt.listen_address = "127.0.0.1:0";
  EXPECT_NO_THROW(Coordinator{opt});
  opt.listen_address = "0.0.0.0:0";
  opt.allow_insecure_remote = true;
  EXPECT_NO_THROW(Coordinator{opt});
  // A worker too: plaintext towards a remote coordinator is refused before
  // it connects.
  WorkerOptions w;
  w.coordinator = "10.1.2.3:7420";
  w.listen = "127.0.0.1:0";
  EXPECT_THROW(runWorker(w), ConfigError);
}

TEST(Coordinator, AJobWithoutASecuritySectionMustChoose) {
  TempDir dir;
  CoordinatorOptions opt;
  opt.job_path = writeJob(dir, "job.yaml", tinyJobYaml(5));
  opt.listen_address = "127.0.0.1:0";
  try {
    Coordinator c(opt);
    FAIL() << "a job without a security section was accepted";
  } catch (const ConfigError& e) {
    EXPECT_TRUE(contains(e.what(), "no security section")) << e.what();
    EXPECT_TRUE(contains(e.what(), "geopipe certs")) << e.what();
  }
}

TEST(Coordinator, ATlsJobNeedsAJoinToken) {
  TempDir dir;
  const auto ca = security::createCertificateAuthority("test CA", 1);
  const auto host = security::issueHostCertificate(ca, {"localhost", "127.0.0.1"}, 1);
  security::writePublicFile(dir.file("ca.pem"), ca.cert_pem);
  security::writePublicFile(dir.file("host.pem"), host.cert_pem);
  security::writePrivateFile(dir.file("host-key.pem"), host.key_pem);
  CoordinatorOptions opt;
  opt.job_path =
      writeJob(dir, "job.yaml",
               tinyJobYaml(5, "security: {ca: ca.pem, cert: host.pem, key: host-key.pem}\n"));
  opt.listen_address = "127.0.0.1:0";
  ::unsetenv(security::kTokenEnvVar);
  EXPECT_THROW(Coordinator{opt}, ConfigError);
  ::setenv(security::kTokenEnvVar, kToken, 1);
  EXPECT_NO_THROW(Coordinator{opt});
  ::unsetenv(security::kTokenEnvVar);
}

TEST(Coordinator, NamedDeviceCannotBeTakenTwice) {
  Fixture f;
  // The first registration blocks until the job is full (it times out
  // after 500 ms); while it waits, device 1 is taken.
  std::thread first([&] { f.registerAs(pb::COORDINATOR_PROTOCOL_CURRENT, "1"); });
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  grpc::Status st = f.registerAs(pb::COORDINATOR_PROTOCOL_CURRENT, "local/1");
  first.join();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("already taken"), std::string::npos) << st.error_message();
  EXPECT_TRUE(f.coordinator->tasklets().empty());
}

// A live coordinator port, attacked below gRPC (raw TCP garbage, a
// truncated HTTP/2 preface, lying frame headers) and with oversized
// requests: it refuses each and then serves a whole job's workers.
TEST(Coordinator, LivePortSurvivesGarbageAndOversizedRequests) {
  Fixture f;
  geopipe::testing::sendEveryKindOfGarbage(f.coordinator->listeningAddress());
  auto registerWith = [&](const std::string& hostname) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    pb::RegisterRequest req;
    req.set_protocol_version(pb::COORDINATOR_PROTOCOL_CURRENT);
    req.set_device("any");
    req.set_hostname(hostname);
    pb::Assignment out;
    return f.stub->Register(&ctx, req, &out);
  };
  // Over gRPC's 4 MB receive limit: refused before the handler runs.
  grpc::Status st = registerWith(std::string(size_t{8} << 20, 'h'));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  // Under it, but no host name is 1 MB: refused by the request checks.
  st = registerWith(std::string(size_t{1} << 20, 'h'));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_NE(st.error_message().find("at most 255"), std::string::npos) << st.error_message();
  // A step report for a step far outside the job: refused, not stored.
  {
    grpc::ClientContext ctx;
    pb::StepReport rep;
    rep.set_rank(0);
    rep.set_step(int64_t{1} << 50);
    pb::Directive d;
    st = f.stub->ReportStep(&ctx, rep, &d);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  }
  EXPECT_TRUE(f.coordinator->tasklets().empty());

  // Four well-formed workers still join and are placed.
  EXPECT_EQ(sortedRanks(registerWorkers(*f.stub, kFourHosts)), (std::vector<int>{0, 1, 2, 3}));
  f.coordinator->requestStop(false);
}

TEST(Coordinator, StopBeforeAnyWorkerEndsTheJob) {
  Fixture f;
  f.coordinator->requestStop(true);
  auto r = f.coordinator->waitFor(std::chrono::seconds(5));
  ASSERT_TRUE(r.has_value());
  EXPECT_FALSE(r->ok);
  EXPECT_TRUE(r->interrupted);
}

TEST(Coordinator, AnEventSinkMayCallBackIn) {
  // Events reach on_event outside the coordinator's lock: a sink that asks
  // the coordinator something (here on the event of the stop that ends the
  // job) gets its answer instead of deadlocking every call.
  TempDir dir;
  CoordinatorOptions opt = tlsCoordinatorOptions(dir);
  std::atomic<Coordinator*> self{nullptr};
  std::atomic<int> answers{0};
  opt.on_event = [&](const std::string&) {
    if (Coordinator* c = self.load()) {
      answers += c->generation() >= 0 ? 1 : 0;
      c->requestStop(false);  // again: ignored, but it takes the lock
    }
  };
  // Leaked if the sink deadlocks (its destructor would wait forever).
  auto* coordinator = new Coordinator(opt);
  self = coordinator;
  std::packaged_task<bool()> stop([&] {
    coordinator->requestStop(false);
    return coordinator->waitFor(std::chrono::seconds(5)).has_value();
  });
  auto ended = stop.get_future();
  std::thread(std::move(stop)).detach();
  ASSERT_EQ(ended.wait_for(std::chrono::seconds(10)), std::future_status::ready)
      << "the event sink deadlocked the coordinator";
  EXPECT_TRUE(ended.get());
  EXPECT_GE(answers.load(), 1);
  self = nullptr;
  delete coordinator;
}

TEST(StepReport, EveryFieldOfATaskletsStepSurvivesTheWire) {
  // Distinct values in every field, so a field dropped or swapped in
  // either direction shows.
  StepMetrics part;
  part.lr = 1.5e-3;
  part.seconds = 0.25;
  part.compute_seconds = 0.125;
  part.comm_wait_seconds = 0.0625;
  part.activation_raw_bytes = 1001;
  part.activation_wire_bytes = 1002;
  part.gradient_raw_bytes = 1003;
  part.gradient_wire_bytes = 1004;
  part.dp_raw_bytes = 1005;
  part.dp_wire_bytes = 1006;
  part.val_loss_sum = 7.75;
  part.val_tokens = 1007;
  part.grad_sq_sum = 3.125;
  part.peak_rss_bytes = 1008;
  part.sent_bytes_by_rank = {0, 0, 1009};  // a tasklet's share: its rank's entry
  part.received_bytes_by_rank = {0, 0, 1010};
  part.link_sent_bytes = {{{2, 0}, 9}, {{2, 3}, 1000}};
  pb::StepReport sent = stepReportOf(part, true, 2.5);
  sent.set_rank(2);
  EXPECT_TRUE(sent.has_loss());
  EXPECT_EQ(sent.loss(), 2.5);
  pb::StepReport got;
  ASSERT_TRUE(got.ParseFromString(sent.SerializeAsString()));
  const StepMetrics back = stepMetricsOf(got);
  EXPECT_EQ(back.lr, part.lr);
  EXPECT_EQ(back.seconds, part.seconds);
  EXPECT_EQ(back.compute_seconds, part.compute_seconds);
  EXPECT_EQ(back.comm_wait_seconds, part.comm_wait_seconds);
  EXPECT_EQ(back.activation_raw_bytes, part.activation_raw_bytes);
  EXPECT_EQ(back.activation_wire_bytes, part.activation_wire_bytes);
  EXPECT_EQ(back.gradient_raw_bytes, part.gradient_raw_bytes);
  EXPECT_EQ(back.gradient_wire_bytes, part.gradient_wire_bytes);
  EXPECT_EQ(back.dp_raw_bytes, part.dp_raw_bytes);
  EXPECT_EQ(back.dp_wire_bytes, part.dp_wire_bytes);
  EXPECT_EQ(back.val_loss_sum, part.val_loss_sum);
  EXPECT_EQ(back.val_tokens, part.val_tokens);
  EXPECT_EQ(back.grad_sq_sum, part.grad_sq_sum);
  EXPECT_EQ(back.peak_rss_bytes, part.peak_rss_bytes);
  EXPECT_EQ(back.sent_bytes_by_rank, part.sent_bytes_by_rank);
  EXPECT_EQ(back.received_bytes_by_rank, part.received_bytes_by_rank);
  EXPECT_EQ(back.link_sent_bytes, part.link_sent_bytes);
  EXPECT_FALSE(stepReportOf(part, false, 2.5).has_loss());
}

TEST(JoinGate, ThrottlesAHostForItsWindowAndNeverEchoesATokenOnAClock) {
  security::JoinToken token;
  token.secret = kToken;
  JoinGate gate(token);
  using S = std::chrono::seconds;
  const JoinGate::Clock::time_point t0{};
  EXPECT_EQ(gate.check("10.0.0.1", "a", kToken, t0).verdict, JoinGate::Verdict::ADMIT);
  std::vector<std::string> events;
  for (int k = 1; k <= JoinGate::kMaxBadTokens; ++k) {
    const auto o =
        gate.check("10.0.0.2", "b", k == 1 ? "" : "wrong-token-" + std::to_string(k), t0 + S(k));
    EXPECT_EQ(o.verdict, JoinGate::Verdict::WRONG_TOKEN) << k;
    events.insert(events.end(), o.events.begin(), o.events.end());
  }
  ASSERT_EQ(events.size(), 2u);  // the first refusal and the throttle, not every try
  EXPECT_NE(events[0].find("no join token"), std::string::npos) << events[0];
  EXPECT_NE(events[1].find("throttling 10.0.0.2"), std::string::npos) << events[1];
  for (const auto& e : events) EXPECT_EQ(e.find("wrong-token"), std::string::npos) << e;
  // Throttled for the window since the first wrong token, even with the
  // right one; other hosts are not.
  EXPECT_EQ(gate.check("10.0.0.2", "b", kToken, t0 + S(30)).verdict, JoinGate::Verdict::THROTTLED);
  EXPECT_EQ(gate.check("10.0.0.3", "c", kToken, t0 + S(30)).verdict, JoinGate::Verdict::ADMIT);
  EXPECT_EQ(
      gate.check("10.0.0.2", "b", kToken, t0 + S(1) + JoinGate::kBadTokenWindow + S(1)).verdict,
      JoinGate::Verdict::ADMIT);
  // A job without a token admits everyone.
  JoinGate open{security::JoinToken{}};
  EXPECT_EQ(open.check("10.0.0.4", "d", "anything", t0).verdict, JoinGate::Verdict::ADMIT);
}

// Registers four workers (hostnames `hosts`) with a coordinator of the
// tiny 2x2 job `yaml`; returns their assignments and the coordinator's
// events.
std::pair<std::vector<pb::Assignment>, std::vector<std::string>> joinFour(
    const std::string& yaml, bool emulate_links_by_default, const std::vector<std::string>& hosts) {
  TempDir dir;
  CoordinatorOptions opt = tlsCoordinatorOptions(dir, yaml);
  opt.emulate_links_by_default = emulate_links_by_default;
  std::mutex mu;
  std::vector<std::string> events;
  opt.on_event = [&](const std::string& line) {
    std::lock_guard<std::mutex> lock(mu);
    events.push_back(line);
  };
  Coordinator coordinator(opt);
  auto stub = pb::Coordinator::NewStub(grpc::CreateChannel(
      coordinator.listeningAddress(), transport::channelCredentials(tlsSecurity().link)));
  const std::vector<pb::Assignment> out = registerWorkers(*stub, hosts);
  EXPECT_EQ(sortedRanks(out), (std::vector<int>{0, 1, 2, 3}));
  coordinator.requestStop(false);
  std::lock_guard<std::mutex> lock(mu);
  return {out, events};
}

bool anyContains(const std::vector<std::string>& lines, const std::string& part) {
  for (const auto& l : lines)
    if (l.find(part) != std::string::npos) return true;
  return false;
}

TEST(Coordinator, WorkersLearnTheirShareOfTheHostAndWhetherLinksAreEmulated) {
  // Across hosts a job that does not set transport.emulate_links runs on
  // real links, and the workers are told so (their own parse would say
  // true); three tasklets on host "a" share its cores.
  {
    const auto [assigned, events] = joinFour(tinyJobYaml(5), false, {"a", "b", "a", "a"});
    for (size_t w = 0; w < 4; ++w) {
      EXPECT_FALSE(assigned[w].emulate_links()) << w;
      EXPECT_EQ(assigned[w].workers_on_host(), w == 1 ? 1 : 3) << w;
    }
    EXPECT_TRUE(anyContains(events, "links are real, not emulated"));
  }
  // Under launch (one machine) the same job emulates its links.
  {
    const auto [assigned, events] = joinFour(tinyJobYaml(5), true, {"h", "h", "h", "h"});
    for (size_t w = 0; w < 4; ++w) {
      EXPECT_TRUE(assigned[w].emulate_links()) << w;
      EXPECT_EQ(assigned[w].workers_on_host(), 4) << w;
    }
  }
  // A job that asks for emulation across hosts gets it, and a loud warning.
  {
    const auto [assigned, events] =
        joinFour(tinyJobYaml(5, "transport: {emulate_links: true}\n"), false, {"a", "b", "c", "d"});
    EXPECT_TRUE(assigned[0].emulate_links());
    EXPECT_TRUE(anyContains(events, "links are EMULATED"));
  }
}

TEST(Coordinator, IdleConnectionsBeforeAuthenticationAreBoundedAndWorkersStillJoin) {
  // One host opens 200 connections and never starts TLS. The coordinator
  // holds 64 of them (its per-address limit of connections in set-up) and
  // closes the rest at once; the 64 are closed at the handshake timeout
  // (gRPC's default held them 120 s, until the coordinator ran out of file
  // descriptors). Meanwhile workers from another address join.
  TempDir dir;
  CoordinatorOptions opt = tlsCoordinatorOptions(dir);
  opt.connections.handshake_timeout = std::chrono::milliseconds(3000);
  opt.connections.max_pending_per_address = 64;
  Coordinator coordinator(opt);
  const std::string address = coordinator.listeningAddress();
  const int port = std::stoi(address.substr(address.rfind(':') + 1));
  std::vector<int> idle;
  for (int k = 0; k < 200; ++k) {
    const int fd = geopipe::testing::idleConnectionFrom("127.0.0.2", port);
    ASSERT_GE(fd, 0) << k;
    idle.push_back(fd);
  }
  int closed_at_once = 0;
  for (int fd : idle)
    closed_at_once += geopipe::testing::closedByServer(fd, std::chrono::milliseconds(5)) ? 1 : 0;
  for (int k = 0; k < 100 && closed_at_once < 136; ++k) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    closed_at_once = 0;
    for (int fd : idle)
      closed_at_once += geopipe::testing::closedByServer(fd, std::chrono::milliseconds(0)) ? 1 : 0;
  }
  EXPECT_EQ(closed_at_once, 136) << "the per-address limit of 64 connections in set-up";
  auto stub = pb::Coordinator::NewStub(
      grpc::CreateChannel(address, transport::channelCredentials(tlsSecurity().link)));
  EXPECT_EQ(sortedRanks(registerWorkers(*stub, kFourHosts)), (std::vector<int>{0, 1, 2, 3}));
  int closed = 0;
  for (int fd : idle) {
    closed += geopipe::testing::closedByServer(fd, std::chrono::milliseconds(5000)) ? 1 : 0;
    ::close(fd);
  }
  EXPECT_EQ(closed, 200) << "idle connections outlived the 3 s handshake timeout";
  coordinator.requestStop(false);
}

// A re-plan's search runs beside the monitor. A growth re-plan (a checkpoint
// committed while an idle spare lives) takes 3 s (a sleep before the
// search stands for a search that takes its whole replan_budget); rank 0
// falls silent as the search begins, and is named after the 1 s heartbeat
// timeout, not after the search (the monitor used to wait for the search,
// blind to heartbeats and deadlines).
TEST(Coordinator, TheMonitorKeepsWatchingDuringAReplanSearch) {
  TempDir dir;
  const std::string yaml =
      "name: dist-tiny\n" + testing::tinyModelAndTraining(50) +
      "parallelism: {pipeline_stages: 2, data_parallel: 2}\n"
      "topology:\n"
      "  name: five\n"
      "  sites: [{name: local, devices: 5, intra: {latency_ms: 0, bandwidth_gbps: 100}}]\n"
      "transport: {emulate_links: false}\n"
      "checkpoint: {dir: " +
      dir.file("ckpt") +
      ", every_steps: 2}\n"
      "fault_tolerance: {heartbeat_timeout: 1, replan: true, replan_budget: 3}\n";
  CoordinatorOptions opt = tlsCoordinatorOptions(dir, yaml);
  opt.before_replan_search = [] { std::this_thread::sleep_for(std::chrono::seconds(3)); };
  using Clock = std::chrono::steady_clock;
  std::mutex mu;
  std::vector<std::pair<Clock::time_point, std::string>> events;
  opt.on_event = [&](const std::string& line) {
    std::lock_guard<std::mutex> lock(mu);
    events.emplace_back(Clock::now(), line);
  };
  // The time of the first event containing `part` (up to `wait`).
  auto when = [&](const std::string& part, std::chrono::milliseconds wait) {
    const auto until = Clock::now() + wait;
    while (Clock::now() < until) {
      {
        std::lock_guard<std::mutex> lock(mu);
        for (const auto& [t, line] : events)
          if (line.find(part) != std::string::npos) return std::optional<Clock::time_point>(t);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return std::optional<Clock::time_point>();
  };
  Coordinator coordinator(opt);
  auto stub = pb::Coordinator::NewStub(grpc::CreateChannel(
      coordinator.listeningAddress(), transport::channelCredentials(tlsSecurity().link)));
  const std::vector<pb::Assignment> assigned = registerWorkers(*stub, kFourHosts);
  ASSERT_EQ(sortedRanks(assigned), (std::vector<int>{0, 1, 2, 3}));
  const int64_t generation = assigned[0].generation();
  // Every rank heartbeats (rank 0 until `rank0_alive` is cleared); an idle
  // spare calls again whenever its call returns.
  std::atomic<bool> stop{false}, rank0_alive{true};
  std::thread heartbeats([&] {
    while (!stop) {
      for (int r = rank0_alive ? 0 : 1; r < 4; ++r) {
        grpc::ClientContext ctx;
        pb::Heartbeat hb;
        hb.set_rank(r);
        hb.set_step(-1);
        hb.set_generation(generation);
        pb::Directive d;
        stub->SendHeartbeat(&ctx, hb, &d);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
  std::thread spare([&] {
    uint64_t ticket = 0;
    while (!stop) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
      pb::RegisterRequest req;
      req.set_protocol_version(pb::COORDINATOR_PROTOCOL_CURRENT);
      req.set_device("any");
      req.set_join_token(kToken);
      req.set_hostname("spare");
      req.set_pid(2000);
      req.set_spare_ticket(ticket);
      pb::Assignment a;
      if (!stub->Register(&ctx, req, &a).ok() || !a.spare()) break;
      ticket = a.spare_ticket();
    }
  });
  ASSERT_TRUE(when("spare joined", std::chrono::milliseconds(5000)));
  // Past the growth re-plan's settle (3 s after the last spare joined), so
  // the search starts at the commit.
  std::this_thread::sleep_for(std::chrono::milliseconds(3300));
  // Every tasklet's checkpoint files for step 2: the commit prices a re-plan
  // with the spare.
  const std::string step_dir = runtime::stepDirectory(dir.file("ckpt"), 2);
  std::filesystem::create_directories(step_dir);
  for (int r = 0; r < 4; ++r) {
    const std::string name = "tasklet-" + std::to_string(r) + ".bin";
    std::ofstream(step_dir + "/" + name) << "weights of rank " << r;
    grpc::ClientContext ctx;
    pb::CheckpointReport req;
    req.set_rank(r);
    req.set_next_step(2);
    req.add_files(name);
    req.set_generation(generation);
    pb::Directive d;
    ASSERT_TRUE(stub->ReportCheckpoint(&ctx, req, &d).ok());
  }
  const auto committed = when("checkpoint committed", std::chrono::milliseconds(5000));
  rank0_alive = false;
  ASSERT_TRUE(committed);
  const auto named = when("no heartbeat", std::chrono::milliseconds(10000));
  stop = true;
  coordinator.requestStop(false);
  heartbeats.join();
  spare.join();
  std::string all;
  for (const auto& [t, line] : events) all += line + "\n";
  ASSERT_TRUE(named) << "rank 0 was never named; events:\n" << all;
  const double seconds = std::chrono::duration<double>(*named - *committed).count();
  EXPECT_LT(seconds, 2.5) << "rank 0 (silent from the commit, heartbeat_timeout 1 s) was named "
                          << seconds << " s after the commit: the monitor waited for the search";
}

// Registers the four workers `pids` (previous ranks when given) with the
// fixture's coordinator; returns the rank each got (-1: refused).
std::vector<int> registerFour(Fixture& f, const std::vector<int64_t>& pids,
                              const std::vector<int>& previous = {}) {
  std::vector<int> ranks;
  for (const auto& a : registerWorkers(*f.stub, kFourHosts, pids, previous))
    ranks.push_back(a.rank());
  return ranks;
}

// Rank `rank` of `generation` reports that its step failed with `error`.
void reportFailure(Fixture& f, int rank, int64_t generation, const std::string& error) {
  grpc::ClientContext ctx;
  pb::FailureReport req;
  req.set_rank(rank);
  req.set_generation(generation);
  req.set_error(error);
  req.set_error_type("ProtocolError");
  pb::Directive d;
  ASSERT_TRUE(f.stub->ReportFailure(&ctx, req, &d).ok());
}

TEST(Coordinator, TheSameErrorBeforeAnyStepOfTheNextGenerationIsNotRetried) {
  // A recoverable error that ends generation 1 and then generation 2 again
  // before any step of it: deterministic, so the job ends instead of
  // spending all of fault_tolerance.max_restarts on it.
  Fixture f;
  const std::vector<int64_t> pids = {1001, 1002, 1003, 1004};
  const std::vector<int> first = registerFour(f, pids);
  ASSERT_EQ(std::count(first.begin(), first.end(), -1), 0);
  const std::string error = "shard 7 of the data has a bad header";
  reportFailure(f, first[0], 1, error);
  for (int k = 0; k < 100 && f.coordinator->generation() < 2; ++k)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_EQ(f.coordinator->generation(), 2);
  // The failed worker's place goes to a new process; the others rejoin.
  std::vector<int64_t> again = pids;
  again[0] = 2001;
  const std::vector<int> second = registerFour(f, again, {-1, first[1], first[2], first[3]});
  ASSERT_EQ(std::count(second.begin(), second.end(), -1), 0) << f.allEvents();
  reportFailure(f, second[0], 2, error);
  auto r = f.coordinator->waitFor(std::chrono::seconds(10));
  ASSERT_TRUE(r.has_value()) << f.allEvents();
  EXPECT_FALSE(r->ok);
  EXPECT_NE(r->failure.find("would end every restart the same way"), std::string::npos)
      << r->failure;
  EXPECT_NE(r->failure.find(error), std::string::npos) << r->failure;
  EXPECT_EQ(f.coordinator->generation(), 2);
}

TEST(WorkerFlags, ListenTakesAPortOrARangeAndAdvertiseAHostWithAnOptionalPort) {
  const ListenPorts one = parseListen("0.0.0.0:0");
  EXPECT_EQ(one.host, "0.0.0.0");
  EXPECT_EQ(one.low, 0);
  EXPECT_EQ(one.high, 0);
  const ListenPorts range = parseListen("10.0.0.5:29500-29507");
  EXPECT_EQ(range.host, "10.0.0.5");
  EXPECT_EQ(range.low, 29500);
  EXPECT_EQ(range.high, 29507);
  for (const char* bad : {"29500", ":29500", "h:29507-29500", "h:0-5", "h:x", "h:70000", "h:1-"}) {
    try {
      parseListen(bad);
      ADD_FAILURE() << bad << " accepted";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("--listen"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(parseAdvertise(""), (std::pair<std::string, int>{"", 0}));
  EXPECT_EQ(parseAdvertise("gw.example.org"), (std::pair<std::string, int>{"gw.example.org", 0}));
  EXPECT_EQ(parseAdvertise("203.0.113.7:40000"),
            (std::pair<std::string, int>{"203.0.113.7", 40000}));
  EXPECT_EQ(parseAdvertise("[::1]"), (std::pair<std::string, int>{"[::1]", 0}));
  EXPECT_THROW(parseAdvertise("host:0"), ConfigError);
  EXPECT_THROW(parseAdvertise(":5"), ConfigError);
}

TEST(Certs, OutputValidatesAndCarriesATlsRegistration) {
  TempDir dir;
  std::ostringstream out;
  cli::CertsArgs args;
  args.dir = dir.file("certs");
  args.hosts = {"localhost,127.0.0.1"};
  ASSERT_EQ(cli::runCertsCommand(args, out), 0);
  EXPECT_TRUE(contains(out.str(), "token_file:")) << out.str();
  // Again with another host: the CA and token are reused, not replaced.
  args.hosts = {"node2,10.0.0.2"};
  std::ostringstream again;
  ASSERT_EQ(cli::runCertsCommand(args, again), 0);
  EXPECT_TRUE(contains(again.str(), "using the CA in")) << again.str();
  EXPECT_THROW(cli::runCertsCommand(args, again), ConfigError);  // node2 exists now

  const std::string job = writeJob(
      dir, "job.yaml",
      "name: one\n"
      "model: {preset: none, layers: 2, hidden: 16, heads: 2, seq_len: 8, vocab: 16}\n"
      "data: {kind: synthetic, num_samples: 16}\n"
      "training: {steps: 1, global_batch: 2, micro_batch: 1}\n"
      "topology: {name: one, sites: [{name: s, devices: 1, intra: {latency_ms: 0, "
      "bandwidth_gbps: 1}}]}\n"
      "security: {ca: certs/ca.pem, cert: certs/localhost.pem, key: certs/localhost-key.pem, "
      "token_file: certs/token}\n");
  CoordinatorOptions opt;
  opt.job_path = job;  // security from the job file
  opt.listen_address = "127.0.0.1:0";
  opt.on_event = [](const std::string&) {};
  Coordinator coordinator(opt);

  WorkerSecurityArgs w;
  w.ca = dir.file("certs/ca.pem");
  w.cert = dir.file("certs/localhost.pem");
  w.key = dir.file("certs/localhost-key.pem");
  w.token_file = dir.file("certs/token");
  const JobSecurity sec = workerSecurity(w);
  auto stub = pb::Coordinator::NewStub(
      grpc::CreateChannel(coordinator.listeningAddress(), transport::channelCredentials(sec.link)));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  pb::RegisterRequest req;
  req.set_protocol_version(pb::COORDINATOR_PROTOCOL_CURRENT);
  req.set_join_token(sec.token.secret);
  req.set_hostname("test");
  pb::Assignment a;
  const grpc::Status st = stub->Register(&ctx, req, &a);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(a.rank(), 0);
  EXPECT_EQ(a.job_token().size(), 64u);  // a random secret for the peers
  // The bundle sent to the worker carries no security section.
  EXPECT_FALSE(contains(a.job_yaml(), "security")) << a.job_yaml();
}

TEST(JobBundle, InlinesTheTopologyFile) {
  TempDir dir;
  writeJob(
      dir, "topo.yaml",
      "name: two\nsites: [{name: s, devices: 2, intra: {latency_ms: 1, bandwidth_gbps: 5}}]\n");
  std::string job = tinyJobYaml(3);
  job = job.substr(0, job.find("topology:")) + "topology: topo.yaml\n" +
        "parallelism: {pipeline_stages: 2, data_parallel: 1}\n";
  // parallelism appears twice otherwise: rebuild without the first one.
  std::string yaml;
  for (size_t pos = 0; pos < job.size();) {
    size_t end = job.find('\n', pos);
    std::string line = job.substr(pos, end - pos + 1);
    if (line.rfind("parallelism: {pipeline_stages: 2, data_parallel: 2}", 0) != 0) yaml += line;
    pos = end + 1;
  }
  const std::string path = writeJob(dir, "job.yaml", yaml);
  JobBundle b = bundleJobFile(path);
  EXPECT_EQ(b.yaml.find("topo.yaml"), std::string::npos) << b.yaml;
  std::filesystem::remove(dir.file("topo.yaml"));
  b.base_dir = "/nonexistent";  // the worker needs no topology file
  JobSpec spec = parseBundle(b);
  EXPECT_EQ(spec.topology.name, "two");
  EXPECT_EQ(spec.topology.numDevices(), 2);
  EXPECT_DOUBLE_EQ(spec.topology.link(0, 1).latency_ms, 1.0);
}

TEST(JobBundle, TokenizerTravelsLikeDataPath) {
  // data.tokenizer is resolved against the job's directory on every host,
  // as data.path is: the worker parses the bundle with the coordinator's
  // base_dir, so the folder must exist at that path on its host too.
  TempDir dir;
  writeJob(dir, "corpus.txt", "some text to train on");
  std::filesystem::create_directory(dir.file("tok"));
  for (const char* f : {"vocab.json", "merges.txt"}) {
    std::filesystem::copy_file(std::string("assets/tokenizers/gpt2/") + f,
                               dir.file(std::string("tok/") + f));
  }
  std::string job = tinyJobYaml(1);
  job.replace(job.find("model: {"), job.find('\n', job.find("model: {")) - job.find("model: {"),
              "model: {preset: none, layers: 4, hidden: 32, heads: 2, seq_len: 4, vocab: 50257}");
  job.replace(job.find("data: {"), job.find('\n', job.find("data: {")) - job.find("data: {"),
              "data: {kind: text, path: corpus.txt, tokenizer: tok}");
  JobBundle b = bundleJobFile(writeJob(dir, "job.yaml", job));
  EXPECT_NE(b.yaml.find("tokenizer: tok"), std::string::npos) << b.yaml;  // sent as written
  JobSpec spec = parseBundle(b);
  EXPECT_EQ(spec.data.tokenizer, dir.file("tok"));
  EXPECT_EQ(spec.data.path, dir.file("corpus.txt"));
  // A worker whose host lacks the folder refuses the job, naming it.
  std::filesystem::remove_all(dir.file("tok"));
  try {
    parseBundle(b);
    FAIL() << "expected a SpecError";
  } catch (const config::SpecError& e) {
    EXPECT_TRUE(contains(e.what(), "data.tokenizer")) << e.what();
    EXPECT_TRUE(contains(e.what(), dir.file("tok"))) << e.what();
  }
}

}  // namespace
}  // namespace geopipe::distributed
