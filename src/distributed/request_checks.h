// Checks of the coordinator's incoming requests that need nothing but the
// request and the job: protocol version, field sizes and ranges, checkpoint
// file names, device names. Pure functions (no server, no LibTorch), so that
// fuzz/coordinator_requests_fuzzer.cc runs them on random bytes and tests
// need no live coordinator; coordinator.cc calls them first in each handler.
#pragma once

#include <grpcpp/support/status.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "geopipe/topology.h"
#include "proto/coordinator.pb.h"

namespace geopipe::distributed {

// Bounds on what a request may carry. Generous for real workers (host names
// are at most 253 bytes, a tasklet writes a handful of checkpoint files), and
// small enough that a hostile client cannot make the coordinator hold or log
// megabytes per call.
constexpr size_t kMaxNameBytes = 255;        // hostname, device, listen_host
constexpr size_t kMaxAddressBytes = 300;     // "host:port"
constexpr size_t kMaxErrorBytes = 64 << 10;  // FinishRequest.error (what())
constexpr size_t kMaxErrorTypeBytes = 64;    // FinishRequest.error_type
constexpr int kMaxCheckpointFiles = 1024;    // files of one tasklet per checkpoint
constexpr size_t kMaxGpuNameBytes = 64;      // DeviceDescription.gpu
constexpr double kMaxDeviceRate = 1e6;       // DeviceDescription tflops, memory_gb

// What the checks know of the job the coordinator runs.
struct RequestBounds {
  int world_size = 0;  // ranks are in [0, world_size)
  int64_t steps = 0;   // training.steps (after overrides): steps are in [0, steps)
};

// A device some worker already claimed (for resolveDevice's message).
struct DeviceClaim {
  int device = -1;
  std::string hostname;
  int64_t pid = 0;
};

// Each returns OK or the status the handler must answer with:
// FAILED_PRECONDITION for another protocol version, INVALID_ARGUMENT for
// anything else, with a message naming the field, the value (shortened) and
// what is allowed.
grpc::Status checkRegisterRequest(const geopipe::v1::RegisterRequest& req);
grpc::Status checkAddressRequest(const geopipe::v1::AddressRequest& req,
                                 const RequestBounds& bounds);
grpc::Status checkStepReport(const geopipe::v1::StepReport& req, const RequestBounds& bounds);
grpc::Status checkCheckpointReport(const geopipe::v1::CheckpointReport& req,
                                   const RequestBounds& bounds);
grpc::Status checkHeartbeat(const geopipe::v1::Heartbeat& req, const RequestBounds& bounds);
grpc::Status checkFinishRequest(const geopipe::v1::FinishRequest& req, const RequestBounds& bounds);

// `worker --device-spec` "gpu=A100,tflops=312,memory_gb=80" (each key
// optional, at least one): ConfigError naming the flag, the bad part and
// the ranges (tflops and memory_gb in (0, 1e6], gpu printable, at most 64
// bytes).
geopipe::v1::DeviceDescription parseDeviceSpec(const std::string& spec);
// What a DeviceDescription of a Register call says, as a line for the log
// ("A100, 312 TFLOPS, 80 GB").
std::string describeDeviceSpec(const geopipe::v1::DeviceDescription& d);

// A RegisterRequest's device: "" or "any" (*device = -1), a topology device
// index ("3") or name ("virginia/0"). INVALID_ARGUMENT when it is not in the
// topology (listing the range and the closest name) or already in `taken`.
grpc::Status resolveDevice(const std::string& name, const TopologySpec& topology,
                           const std::vector<DeviceClaim>& taken, int* device);

// True for a plain file name inside a checkpoint's step directory: not
// empty, at most 255 bytes, no '/', no NUL or other control character, not
// "." or "..".
bool isPlainFileName(const std::string& name);

}  // namespace geopipe::distributed
