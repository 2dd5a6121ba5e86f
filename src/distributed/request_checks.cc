// Checks of the coordinator's requests: pure functions of the request and
// the job (see request_checks.h).
#include "src/distributed/request_checks.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

#include "geopipe/error.h"
#include "src/common/strings.h"
#include "src/common/text.h"

namespace geopipe::distributed {
namespace {

namespace pb = geopipe::v1;

constexpr uint32_t kProtocol = pb::COORDINATOR_PROTOCOL_CURRENT;

grpc::Status invalid(const std::string& message) {
  return {grpc::StatusCode::INVALID_ARGUMENT, message};
}

// A value for a message: at most 40 bytes, control bytes as '?', so that a
// hostile field can neither flood the log nor forge lines in it.
std::string shown(const std::string& value) {
  std::string out;
  const size_t n = std::min<size_t>(value.size(), 40);
  for (size_t i = 0; i < n; ++i) {
    const auto c = static_cast<unsigned char>(value[i]);
    out += c < 0x20 || c == 0x7f ? '?' : static_cast<char>(c);
  }
  if (value.size() > n) out += detail::concat("... (", value.size(), " bytes)");
  return out;
}

bool hasControlByte(const std::string& s) {
  return std::any_of(s.begin(), s.end(), [](char ch) {
    const auto c = static_cast<unsigned char>(ch);
    return c < 0x20 || c == 0x7f;
  });
}

// A short printable text field: at most `max` bytes, no control bytes.
grpc::Status checkText(const char* field, const std::string& value, size_t max) {
  if (value.size() > max) {
    return invalid(detail::concat(field, " has ", value.size(), " bytes, at most ", max,
                                  " are allowed ('", shown(value), "')"));
  }
  if (hasControlByte(value)) {
    return invalid(detail::concat(field, " '", shown(value),
                                  "' contains a control character (newline, NUL, ...)"));
  }
  return grpc::Status::OK;
}

grpc::Status checkRank(const char* what, int32_t rank, const RequestBounds& b) {
  if (rank < 0 || rank >= b.world_size) {
    return invalid(detail::concat(what, ": rank ", rank, " is outside the job's ranks [0, ",
                                  b.world_size, ")"));
  }
  return grpc::Status::OK;
}

grpc::Status checkSeconds(const char* field, double v) {
  if (!std::isfinite(v) || v < 0) {
    return invalid(
        detail::concat("StepReport.", field, " is ", v, "; a duration must be finite and >= 0"));
  }
  return grpc::Status::OK;
}

}  // namespace

bool isPlainFileName(const std::string& name) {
  return !name.empty() && name.size() <= 255 && name != "." && name != ".." &&
         name.find('/') == std::string::npos && !hasControlByte(name);
}

grpc::Status checkRegisterRequest(const pb::RegisterRequest& req) {
  if (req.protocol_version() != kProtocol) {
    return {grpc::StatusCode::FAILED_PRECONDITION,
            detail::concat("worker ", shown(req.hostname()), ":", req.pid(),
                           " speaks coordinator protocol version ", req.protocol_version(),
                           " but this coordinator speaks version ", kProtocol,
                           " (geopipe.v1); run the same geopipe release on every host")};
  }
  if (auto st = checkText("RegisterRequest.hostname", req.hostname(), kMaxNameBytes); !st.ok())
    return st;
  if (auto st = checkText("RegisterRequest.device", req.device(), kMaxNameBytes); !st.ok())
    return st;
  if (auto st = checkText("RegisterRequest.listen_host", req.listen_host(), kMaxNameBytes);
      !st.ok())
    return st;
  if (req.pid() < 0) {
    return invalid(detail::concat("RegisterRequest.pid is ", req.pid(), "; a process id is >= 0"));
  }
  if (req.has_device_spec()) {
    const pb::DeviceDescription& d = req.device_spec();
    if (auto st = checkText("RegisterRequest.device_spec.gpu", d.gpu(), kMaxGpuNameBytes); !st.ok())
      return st;
    for (const auto& [field, v] : {std::pair<const char*, double>{"tflops", d.tflops()},
                                   std::pair<const char*, double>{"memory_gb", d.memory_gb()}}) {
      if (!(v >= 0 && v <= kMaxDeviceRate)) {
        return invalid(detail::concat("RegisterRequest.device_spec.", field, " is ", v,
                                      "; expected 0 (the topology's) or up to 1e6"));
      }
    }
    if (req.device().empty() || req.device() == "any") {
      return invalid(
          "RegisterRequest.device_spec needs a named device (worker --device NAME): the links of "
          "a device come from the topology file");
    }
  }
  return grpc::Status::OK;
}

pb::DeviceDescription parseDeviceSpec(const std::string& spec) {
  pb::DeviceDescription d;
  auto bad = [&](const std::string& part, const std::string& why) {
    GEOPIPE_THROW(ConfigError, "--device-spec '", common::printable(spec), "': '",
                  common::printable(part), "' ", why,
                  "; expected gpu=NAME,tflops=T,memory_gb=G (each optional, T and G in (0, 1e6])");
  };
  size_t at = 0;
  bool any = false;
  while (at <= spec.size()) {
    const size_t comma = std::min(spec.find(',', at), spec.size());
    const std::string part = spec.substr(at, comma - at);
    at = comma + 1;
    const size_t eq = part.find('=');
    if (eq == std::string::npos) bad(part, "is not key=value");
    const std::string key = part.substr(0, eq), value = part.substr(eq + 1);
    if (key == "gpu") {
      if (value.empty() || value.size() > kMaxGpuNameBytes || hasControlByte(value) ||
          !common::utf8Problem(value).empty())
        bad(part, "names no GPU (1 to 64 bytes of UTF-8 text)");
      d.set_gpu(value);
    } else if (key == "tflops" || key == "memory_gb") {
      char* end = nullptr;
      const double v = std::strtod(value.c_str(), &end);
      if (value.empty() || *end != '\0' || !(v > 0 && v <= kMaxDeviceRate))
        bad(part, "is not a number in (0, 1e6]");
      key == "tflops" ? d.set_tflops(v) : d.set_memory_gb(v);
    } else {
      bad(part, "has an unknown key (gpu, tflops, memory_gb)");
    }
    any = true;
  }
  if (!any) bad(spec, "is empty");
  return d;
}

std::string describeDeviceSpec(const pb::DeviceDescription& d) {
  std::vector<std::string> parts;
  if (!d.gpu().empty()) parts.push_back(common::printable(d.gpu()));
  if (d.tflops() > 0) parts.push_back(detail::concat(d.tflops(), " TFLOPS"));
  if (d.memory_gb() > 0) parts.push_back(detail::concat(d.memory_gb(), " GB"));
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : ", ") + p;
  return out;
}

grpc::Status checkAddressRequest(const pb::AddressRequest& req, const RequestBounds& bounds) {
  if (auto st = checkRank("AddressRequest", req.rank(), bounds); !st.ok()) return st;
  const std::string& a = req.address();
  if (auto st = checkText("AddressRequest.address", a, kMaxAddressBytes); !st.ok()) return st;
  // "host:port" (IPv6 as "[::1]:port"): a non-empty host and a port 1..65535.
  const auto colon = a.rfind(':');
  const std::string port = colon == std::string::npos ? "" : a.substr(colon + 1);
  const bool digits =
      !port.empty() && port.size() <= 5 &&
      std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (colon == std::string::npos || colon == 0 || !digits || std::stoi(port) < 1 ||
      std::stoi(port) > 65535 || a.find(' ') != std::string::npos) {
    return invalid(detail::concat("AddressRequest.address '", shown(a),
                                  "' is not host:port with a port in 1..65535"));
  }
  return grpc::Status::OK;
}

grpc::Status checkStepReport(const pb::StepReport& req, const RequestBounds& bounds) {
  if (auto st = checkRank("StepReport", req.rank(), bounds); !st.ok()) return st;
  if (req.step() < 0 || req.step() >= bounds.steps) {
    return invalid(detail::concat("StepReport.step ", req.step(), " of rank ", req.rank(),
                                  " is outside the job's steps [0, ", bounds.steps, ")"));
  }
  // The loss may be NaN or infinite: a diverging model reports it as it is.
  if (!std::isfinite(req.lr())) {
    return invalid(detail::concat("StepReport.lr is ", req.lr(), "; it must be finite"));
  }
  if (auto st = checkSeconds("seconds", req.seconds()); !st.ok()) return st;
  if (auto st = checkSeconds("compute_seconds", req.compute_seconds()); !st.ok()) return st;
  if (auto st = checkSeconds("comm_wait_seconds", req.comm_wait_seconds()); !st.ok()) return st;
  // Per-link bytes: to a rank of the job, at most one entry per peer, and
  // summing to sent_bytes (the metrics show both).
  if (req.link_sent_bytes_size() > bounds.world_size) {
    return invalid(detail::concat("StepReport.link_sent_bytes of rank ", req.rank(), " has ",
                                  req.link_sent_bytes_size(), " entries for ", bounds.world_size,
                                  " ranks"));
  }
  uint64_t link_sum = 0;
  std::vector<bool> seen(static_cast<size_t>(std::max(bounds.world_size, 0)), false);
  for (const pb::LinkBytes& l : req.link_sent_bytes()) {
    if (l.to() < 0 || l.to() >= bounds.world_size || seen[static_cast<size_t>(l.to())]) {
      return invalid(
          detail::concat("StepReport.link_sent_bytes of rank ", req.rank(), " names rank ", l.to(),
                         " twice or outside the job's ranks [0, ", bounds.world_size, ")"));
    }
    seen[static_cast<size_t>(l.to())] = true;
    if (l.bytes() > req.sent_bytes() - link_sum) {
      return invalid(detail::concat("StepReport.link_sent_bytes of rank ", req.rank(),
                                    " sum to more than its sent_bytes ", req.sent_bytes()));
    }
    link_sum += l.bytes();
  }
  if (req.link_sent_bytes_size() > 0 && link_sum != req.sent_bytes()) {
    return invalid(detail::concat("StepReport.link_sent_bytes of rank ", req.rank(), " sum to ",
                                  link_sum, ", not its sent_bytes ", req.sent_bytes()));
  }
  return grpc::Status::OK;
}

grpc::Status checkCheckpointReport(const pb::CheckpointReport& req, const RequestBounds& bounds) {
  if (auto st = checkRank("CheckpointReport", req.rank(), bounds); !st.ok()) return st;
  if (req.next_step() < 1 || req.next_step() > bounds.steps) {
    return invalid(detail::concat("CheckpointReport.next_step ", req.next_step(), " of rank ",
                                  req.rank(), " is outside [1, ", bounds.steps, "]"));
  }
  if (req.files_size() > kMaxCheckpointFiles) {
    return invalid(detail::concat("CheckpointReport of rank ", req.rank(), " lists ",
                                  req.files_size(), " files, at most ", kMaxCheckpointFiles,
                                  " are allowed"));
  }
  for (const std::string& f : req.files()) {
    // The coordinator joins these to the step directory and checksums them:
    // a path could make it read (and list in the manifest) any file.
    if (!isPlainFileName(f)) {
      return invalid(detail::concat("CheckpointReport of rank ", req.rank(), " lists '", shown(f),
                                    "', which is not a plain file name in the step directory "
                                    "(no '/', '.', '..' or control characters)"));
    }
  }
  return grpc::Status::OK;
}

grpc::Status checkHeartbeat(const pb::Heartbeat& req, const RequestBounds& bounds) {
  if (auto st = checkRank("Heartbeat", req.rank(), bounds); !st.ok()) return st;
  if (req.step() < -1 || req.step() >= bounds.steps) {
    return invalid(detail::concat("Heartbeat.step ", req.step(), " of rank ", req.rank(),
                                  " is outside [-1, ", bounds.steps, ")"));
  }
  return grpc::Status::OK;
}

grpc::Status checkFinishRequest(const pb::FinishRequest& req, const RequestBounds& bounds) {
  if (auto st = checkRank("FinishRequest", req.rank(), bounds); !st.ok()) return st;
  if (req.error().size() > kMaxErrorBytes) {
    return invalid(detail::concat("FinishRequest.error of rank ", req.rank(), " has ",
                                  req.error().size(), " bytes, at most ", kMaxErrorBytes,
                                  " are allowed"));
  }
  return checkText("FinishRequest.error_type", req.error_type(), kMaxErrorTypeBytes);
}

grpc::Status resolveDevice(const std::string& name, const TopologySpec& t,
                           const std::vector<DeviceClaim>& taken, int* device) {
  *device = -1;
  if (name.empty() || name == "any") return grpc::Status::OK;
  std::vector<std::string> names;
  for (const auto& d : t.devices) names.push_back(d.name);
  const bool numeric =
      std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (numeric) {
    // More digits than any topology has devices: out of range, not an
    // overflow in stol.
    const long idx = name.size() <= 9 ? std::stol(name) : -1;
    if (idx >= 0 && idx < t.numDevices()) *device = static_cast<int>(idx);
  } else {
    for (int i = 0; i < t.numDevices(); ++i)
      if (names[static_cast<size_t>(i)] == name) *device = i;
  }
  if (*device < 0) {
    std::string hint =
        numeric || name.size() > kMaxNameBytes ? "" : common::closestMatch(name, names);
    return invalid(
        detail::concat("device '", shown(name), "' is not in topology '", common::printable(t.name),
                       "' (", t.numDevices(), " devices: indices 0..", t.numDevices() - 1,
                       names.empty() ? ""
                                     : ", names " + common::printable(names.front()) + " .. " +
                                           common::printable(names.back()),
                       ")", hint.empty() ? "" : "; did you mean '" + common::printable(hint) + "'?",
                       " Use --device any to let the coordinator choose."));
  }
  for (const auto& claim : taken) {
    if (claim.device == *device) {
      return invalid(detail::concat("device ", *device, " ('", names[static_cast<size_t>(*device)],
                                    "') is already taken by the worker on ", shown(claim.hostname),
                                    " pid ", claim.pid));
    }
  }
  return grpc::Status::OK;
}

}  // namespace geopipe::distributed
