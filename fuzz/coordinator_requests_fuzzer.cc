// Fuzz target: the coordinator's request checks (src/distributed/
// request_checks.h) on random bytes parsed as each request proto. Input: a
// selector byte (which request), then the serialized request. A check must
// answer OK or a status with a message, and anything it lets through must
// be within the bounds the coordinator's handlers rely on.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include <google/protobuf/stubs/logging.h>
#include <vector>

#include "src/distributed/request_checks.h"

namespace geopipe::distributed {
namespace {

namespace pb = geopipe::v1;

constexpr int kWorld = 4;
constexpr int64_t kSteps = 100;

void require(bool ok) {
  if (!ok) std::abort();  // a check let through what the handler cannot take
}

const TopologySpec& topology() {
  static const TopologySpec t = [] {
    TopologySpec t;
    t.name = "fuzz";
    for (int s = 0; s < 2; ++s) {
      SiteSpec site;
      site.name = s == 0 ? "ohio" : "virginia";
      for (int k = 0; k < 2; ++k) {
        DeviceSpec d;
        d.name = site.name + "/" + std::to_string(k);
        d.site = s;
        site.devices.push_back(static_cast<int>(t.devices.size()));
        t.devices.push_back(d);
      }
      t.sites.push_back(site);
    }
    t.site_links.assign(2, std::vector<LinkSpec>(2));
    return t;
  }();
  return t;
}

void run(uint8_t which, const std::string& bytes) {
  const RequestBounds bounds{kWorld, kSteps};
  switch (which % 6) {
    case 0: {
      pb::RegisterRequest req;
      if (!req.ParseFromString(bytes)) return;
      if (!checkRegisterRequest(req).ok()) return;
      require(req.device().size() <= kMaxNameBytes && req.hostname().size() <= kMaxNameBytes);
      int device = -2;
      const std::vector<DeviceClaim> taken = {{1, "host-a", 7}};
      const grpc::Status st = resolveDevice(req.device(), topology(), taken, &device);
      require(!st.ok() || (device >= -1 && device < topology().numDevices() && device != 1));
      break;
    }
    case 1: {
      pb::AddressRequest req;
      if (!req.ParseFromString(bytes)) return;
      if (checkAddressRequest(req, bounds).ok()) {
        require(req.rank() >= 0 && req.rank() < kWorld && req.address().size() <= kMaxAddressBytes);
      }
      break;
    }
    case 2: {
      pb::StepReport req;
      if (!req.ParseFromString(bytes)) return;
      if (checkStepReport(req, bounds).ok()) {
        require(req.rank() >= 0 && req.rank() < kWorld && req.step() >= 0 && req.step() < kSteps);
      }
      break;
    }
    case 3: {
      pb::CheckpointReport req;
      if (!req.ParseFromString(bytes)) return;
      if (checkCheckpointReport(req, bounds).ok()) {
        require(req.rank() >= 0 && req.rank() < kWorld && req.files_size() <= kMaxCheckpointFiles);
        for (const auto& f : req.files()) require(f.find('/') == std::string::npos && f != "..");
      }
      break;
    }
    case 4: {
      pb::Heartbeat req;
      if (!req.ParseFromString(bytes)) return;
      if (checkHeartbeat(req, bounds).ok()) require(req.rank() >= 0 && req.rank() < kWorld);
      break;
    }
    case 5: {
      pb::FinishRequest req;
      if (!req.ParseFromString(bytes)) return;
      if (checkFinishRequest(req, bounds).ok()) {
        require(req.rank() >= 0 && req.rank() < kWorld && req.error().size() <= kMaxErrorBytes);
      }
      break;
    }
  }
}

}  // namespace
}  // namespace geopipe::distributed

// Protobuf logs every string field that is not UTF-8 (the parse then
// fails, as it does in the server); at fuzzing rates that is noise.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  geopipe::distributed::run(data[0],
                            std::string(reinterpret_cast<const char*>(data + 1), size - 1));
  return 0;
}
