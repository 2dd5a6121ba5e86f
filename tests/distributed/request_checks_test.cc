// The coordinator's request checks (src/distributed/request_checks.h) without
// a coordinator: what each refuses, with which code and message, and that a
// real worker's requests pass.
#include "src/distributed/request_checks.h"
#include "geopipe/error.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace geopipe::distributed {
namespace {

namespace pb = geopipe::v1;

const RequestBounds kBounds{4, 100};

bool mentions(const grpc::Status& st, const std::string& part) {
  return st.error_message().find(part) != std::string::npos;
}

TopologySpec fourDevices() {
  TopologySpec t;
  t.name = "four";
  SiteSpec site;
  site.name = "local";
  for (int k = 0; k < 4; ++k) {
    DeviceSpec d;
    d.name = "local/" + std::to_string(k);
    site.devices.push_back(k);
    t.devices.push_back(d);
  }
  t.sites.push_back(site);
  return t;
}

pb::RegisterRequest goodRegister() {
  pb::RegisterRequest r;
  r.set_protocol_version(pb::COORDINATOR_PROTOCOL_CURRENT);
  r.set_device("any");
  r.set_hostname("worker-1");
  r.set_pid(77);
  return r;
}

TEST(RequestChecks, RealWorkerRequestsPass) {
  EXPECT_TRUE(checkRegisterRequest(goodRegister()).ok());
  pb::AddressRequest a;
  a.set_rank(3);
  a.set_address("[::1]:7420");
  EXPECT_TRUE(checkAddressRequest(a, kBounds).ok());
  pb::StepReport s;
  s.set_rank(0);
  s.set_step(99);
  s.set_loss(std::numeric_limits<double>::quiet_NaN());  // a diverged model says so
  s.set_seconds(0.5);
  EXPECT_TRUE(checkStepReport(s, kBounds).ok());
  s.set_sent_bytes(300);
  for (const auto& [to, bytes] : {std::pair<int, uint64_t>{1, 200}, {0, 100}}) {
    pb::LinkBytes* l = s.add_link_sent_bytes();
    l->set_to(to);
    l->set_bytes(bytes);
  }
  EXPECT_TRUE(checkStepReport(s, kBounds).ok());
  pb::CheckpointReport c;
  c.set_rank(1);
  c.set_next_step(100);
  c.add_files("rank-1.pt");
  EXPECT_TRUE(checkCheckpointReport(c, kBounds).ok());
  pb::Heartbeat h;
  h.set_rank(2);
  h.set_step(-1);
  EXPECT_TRUE(checkHeartbeat(h, kBounds).ok());
  pb::FinishRequest f;
  f.set_rank(2);
  f.set_error_type("IoError");
  EXPECT_TRUE(checkFinishRequest(f, kBounds).ok());
}

TEST(RequestChecks, RegisterRefusesOtherVersionsAndOversizedOrControlFields) {
  pb::RegisterRequest r = goodRegister();
  r.set_protocol_version(4);  // a worker of the release before the receipts
  grpc::Status st = checkRegisterRequest(r);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(mentions(st, "version 5")) << st.error_message();
  EXPECT_TRUE(mentions(st, "version 4")) << st.error_message();

  r = goodRegister();
  r.set_hostname(std::string(4 << 20, 'h'));
  st = checkRegisterRequest(r);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(mentions(st, "RegisterRequest.hostname has 4194304 bytes, at most 255"))
      << st.error_message();
  EXPECT_LT(st.error_message().size(), 200u) << "the value is shortened in the message";

  r = goodRegister();
  r.set_device("gpu0\nFAKE LOG LINE");
  st = checkRegisterRequest(r);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(mentions(st, "'gpu0?FAKE LOG LINE' contains a control character"))
      << st.error_message();
}

TEST(RequestChecks, DeviceSpecsAreParsedCheckedAndNeedANamedDevice) {
  const pb::DeviceDescription d = parseDeviceSpec("gpu=A100,tflops=312,memory_gb=80");
  EXPECT_EQ(d.gpu(), "A100");
  EXPECT_EQ(d.tflops(), 312);
  EXPECT_EQ(d.memory_gb(), 80);
  EXPECT_EQ(describeDeviceSpec(d), "A100, 312 TFLOPS, 80 GB");
  EXPECT_EQ(parseDeviceSpec("tflops=0.5").tflops(), 0.5);
  for (const char* bad : {"", "tflops", "tflops=0", "tflops=-1", "tflops=1e7", "tflops=nan",
                          "memory_gb=12x", "speed=3", "gpu=", "tflops=1,"}) {
    try {
      parseDeviceSpec(bad);
      ADD_FAILURE() << "accepted --device-spec '" << bad << "'";
    } catch (const geopipe::ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("--device-spec"), std::string::npos) << e.what();
    }
  }
  pb::RegisterRequest req = goodRegister();
  *req.mutable_device_spec() = d;
  req.set_device("local/1");
  EXPECT_TRUE(checkRegisterRequest(req).ok());
  req.set_device("any");
  EXPECT_NE(checkRegisterRequest(req).error_message().find("needs a named device"),
            std::string::npos);
  req.set_device("local/1");
  req.mutable_device_spec()->set_tflops(-3);
  EXPECT_NE(checkRegisterRequest(req).error_message().find("device_spec.tflops is -3"),
            std::string::npos);
  req.mutable_device_spec()->set_tflops(1);
  req.mutable_device_spec()->set_gpu(std::string("A\n100"));
  EXPECT_EQ(checkRegisterRequest(req).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST(RequestChecks, ResolveDeviceByIndexOrNameAndNoOverflow) {
  const TopologySpec t = fourDevices();
  int device = -2;
  EXPECT_TRUE(resolveDevice("any", t, {}, &device).ok());
  EXPECT_EQ(device, -1);
  EXPECT_TRUE(resolveDevice("2", t, {}, &device).ok());
  EXPECT_EQ(device, 2);
  EXPECT_TRUE(resolveDevice("local/3", t, {}, &device).ok());
  EXPECT_EQ(device, 3);
  // Once an uncaught std::out_of_range from stol.
  grpc::Status st = resolveDevice("99999999999999999999999", t, {}, &device);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(mentions(st, "not in topology 'four'")) << st.error_message();
  st = resolveDevice("locl/1", t, {}, &device);
  EXPECT_TRUE(mentions(st, "did you mean 'local/1'?")) << st.error_message();
  st = resolveDevice("1", t, {{1, "host-b", 9}}, &device);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(mentions(st, "already taken by the worker on host-b pid 9")) << st.error_message();
}

TEST(RequestChecks, RanksStepsAndDurationsOutOfRange) {
  pb::StepReport s;
  s.set_rank(4);
  grpc::Status st = checkStepReport(s, kBounds);
  EXPECT_TRUE(mentions(st, "rank 4 is outside the job's ranks [0, 4)")) << st.error_message();
  s.set_rank(0);
  s.set_step(int64_t{1} << 40);  // would grow the coordinator's table of steps
  st = checkStepReport(s, kBounds);
  EXPECT_TRUE(mentions(st, "outside the job's steps [0, 100)")) << st.error_message();
  s.set_step(5);
  s.set_seconds(-1);
  st = checkStepReport(s, kBounds);
  EXPECT_TRUE(mentions(st, "StepReport.seconds is -1")) << st.error_message();
  s.set_seconds(1);
  s.set_lr(std::numeric_limits<double>::infinity());
  EXPECT_TRUE(mentions(checkStepReport(s, kBounds), "StepReport.lr")) << st.error_message();
  s.set_lr(0.1);

  // Per-link bytes: peers of the job, each once, summing to sent_bytes.
  s.set_sent_bytes(30);
  pb::LinkBytes* l = s.add_link_sent_bytes();
  l->set_to(4);
  l->set_bytes(30);
  st = checkStepReport(s, kBounds);
  EXPECT_TRUE(mentions(st,
                       "StepReport.link_sent_bytes of rank 0 names rank 4 twice or outside "
                       "the job's ranks [0, 4)"))
      << st.error_message();
  l->set_to(1);
  l->set_bytes(20);
  st = checkStepReport(s, kBounds);
  EXPECT_TRUE(mentions(st, "sum to 20, not its sent_bytes 30")) << st.error_message();
  l->set_bytes(uint64_t{1} << 63);
  st = checkStepReport(s, kBounds);
  EXPECT_TRUE(mentions(st, "sum to more than its sent_bytes 30")) << st.error_message();
  l->set_bytes(15);
  *s.add_link_sent_bytes() = *l;
  st = checkStepReport(s, kBounds);
  EXPECT_TRUE(mentions(st, "names rank 1 twice")) << st.error_message();
  s.mutable_link_sent_bytes(1)->set_to(2);
  EXPECT_TRUE(checkStepReport(s, kBounds).ok());

  pb::Heartbeat h;
  h.set_rank(-1);
  EXPECT_FALSE(checkHeartbeat(h, kBounds).ok());
  h.set_rank(0);
  h.set_step(-2);
  EXPECT_FALSE(checkHeartbeat(h, kBounds).ok());

  pb::AddressRequest a;
  a.set_rank(1);
  for (const char* bad : {"", "host", ":7420", "host:0", "host:65536", "host:12x", "a b:80"}) {
    a.set_address(bad);
    EXPECT_FALSE(checkAddressRequest(a, kBounds).ok()) << bad;
  }
}

TEST(RequestChecks, CheckpointFilesArePlainNames) {
  pb::CheckpointReport c;
  c.set_rank(0);
  c.set_next_step(10);
  for (const char* bad : {"../../etc/passwd", "/etc/shadow", "..", ".", "", "a/b"}) {
    c.clear_files();
    c.add_files(bad);
    const grpc::Status st = checkCheckpointReport(c, kBounds);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << bad;
    EXPECT_TRUE(mentions(st, "not a plain file name")) << st.error_message();
  }
  c.clear_files();
  for (int i = 0; i <= kMaxCheckpointFiles; ++i) c.add_files("f" + std::to_string(i));
  EXPECT_TRUE(mentions(checkCheckpointReport(c, kBounds), "1025 files, at most 1024"));
  c.clear_files();
  c.set_next_step(0);
  EXPECT_FALSE(checkCheckpointReport(c, kBounds).ok());
  c.set_next_step(101);
  EXPECT_FALSE(checkCheckpointReport(c, kBounds).ok());
}

TEST(RequestChecks, FinishBoundsTheErrorText) {
  pb::FinishRequest f;
  f.set_rank(1);
  f.set_error(std::string(kMaxErrorBytes + 1, 'e'));
  EXPECT_TRUE(mentions(checkFinishRequest(f, kBounds), "FinishRequest.error of rank 1 has"));
  f.set_error("fine");
  f.set_error_type("Io\nError");
  EXPECT_FALSE(checkFinishRequest(f, kBounds).ok());
}

}  // namespace
}  // namespace geopipe::distributed
