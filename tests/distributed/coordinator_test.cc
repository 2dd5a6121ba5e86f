// The coordinator's refusals and the job bundle, over a real gRPC channel.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <thread>

#include "geopipe/error.h"
#include "proto/coordinator.grpc.pb.h"
#include "src/distributed/coordinator.h"
#include "src/distributed/job_bundle.h"
#include "src/distributed/rpc_status.h"
#include "tests/distributed/test_jobs.h"
#include "tests/support/raw_tcp.h"

namespace geopipe::distributed {
namespace {

namespace pb = geopipe::v1;
using testing::TempDir;
using testing::tinyJobYaml;
using testing::writeJob;

struct Fixture {
  TempDir dir;
  std::unique_ptr<Coordinator> coordinator;
  std::unique_ptr<pb::Coordinator::Stub> stub;
  explicit Fixture(const std::string& token = "") {
    CoordinatorOptions opt;
    opt.job_path = writeJob(dir, "job.yaml", tinyJobYaml(5, "transport: {emulate_links: false}\n"));
    opt.listen_address = "127.0.0.1:0";
    opt.join_token = token;
    coordinator = std::make_unique<Coordinator>(opt);
    stub = pb::Coordinator::NewStub(
        grpc::CreateChannel(coordinator->listeningAddress(), grpc::InsecureChannelCredentials()));
  }
  grpc::Status registerAs(uint32_t version, const std::string& device,
                          const std::string& token = "") {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
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

TEST(Coordinator, RefusesAnotherProtocolVersionNamingBoth) {
  Fixture f;
  grpc::Status st = f.registerAs(2, "any");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(st.error_message().find("version 2"), std::string::npos) << st.error_message();
  EXPECT_NE(st.error_message().find("version 1"), std::string::npos) << st.error_message();
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

TEST(Coordinator, RefusesAWrongToken) {
  Fixture f("s3cret");
  grpc::Status st = f.registerAs(pb::COORDINATOR_PROTOCOL_CURRENT, "any", "nope");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("token"), std::string::npos);
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
  std::vector<std::thread> workers;
  std::vector<int> ranks(4, -1);
  for (int w = 0; w < 4; ++w) {
    workers.emplace_back([&, w] {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
      pb::RegisterRequest req;
      req.set_protocol_version(pb::COORDINATOR_PROTOCOL_CURRENT);
      req.set_device("any");
      req.set_hostname("worker-" + std::to_string(w));
      req.set_pid(1000 + w);
      pb::Assignment out;
      if (f.stub->Register(&ctx, req, &out).ok()) ranks[static_cast<size_t>(w)] = out.rank();
    });
  }
  for (auto& t : workers) t.join();
  std::sort(ranks.begin(), ranks.end());
  EXPECT_EQ(ranks, (std::vector<int>{0, 1, 2, 3}));
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

}  // namespace
}  // namespace geopipe::distributed
