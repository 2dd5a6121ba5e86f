// Reads topology YAML (sites, devices, links) into a TopologySpec, checking
// every field and that every pair of sites is connected.
#pragma once

#include <yaml-cpp/yaml.h>

#include <string>

#include "geopipe/topology.h"
#include "src/config/yaml_fields.h"

namespace geopipe::config {

// The physical range of a link (and of an emulated link after the job's
// transport scales): beyond it a number is a typo that would reach the cost
// model as a 300-digit step time, or the link emulator as a send that never
// ends. One-way latency: at most 10 minutes. Bandwidth: 1 kbit/s to 1 Pbit/s.
inline constexpr double kMaxLatencyMs = 600000.0;
inline constexpr double kMinBandwidthGbps = 1e-6;
inline constexpr double kMaxBandwidthGbps = 1e6;
// The scheduler keeps devices x devices matrices: `plan` of 4096 devices
// takes about 0.7 GB and 3 s, of 16384 8.5 GB and 90 s, and of 65536 ended
// in bad_alloc (exit 70). scheduler/network.cc checks the same limit.
inline constexpr int kMaxDevices = 4096;

// The topology a job without `topology:` runs on (docs/job-spec.md,
// "Without a topology"): one site, `local`, of one device per tasklet
// (local/0 .. local/N-1), for `train` and `launch` on one machine. Its link
// means "the same machine": no latency and 100 Gbps, the figures the
// topologies in examples/ give the inside of one machine
// (dtfm-datacenter.yaml, dtfm-spot.yaml); emulated, it costs a 1 MB
// activation 80 us. Each device is a CPU as in local-4.yaml (0.05 TFLOPS,
// which only `plan`'s predicted times use) with 16 GiB: generous on purpose,
// since the tasklets share the machine's memory and a guess that refuses a
// job is worse than none (write a topology to have memory checked).
inline constexpr char kAssumedTopologySource[] = "none given: assumed local";
inline constexpr LinkSpec kSameMachineLink{0.0, 100.0};
inline constexpr double kAssumedDeviceTflops = 0.05;
inline constexpr double kAssumedDeviceMemoryGb = 16.0;
TopologySpec assumedLocalTopology(int devices);

// Whether `t` is assumedLocalTopology's (the job named none).
bool isAssumedTopology(const TopologySpec& t);

// Reads a topology file. Throws SpecError listing every problem, or IoError
// when the file cannot be read.
TopologySpec loadTopologyFile(const std::string& path);

// Reads a topology from YAML text; `source` names it in messages.
TopologySpec parseTopologyString(const std::string& yaml,
                                 const std::string& source);

// Reads the topology mapping `node` (a whole file or a job's inline
// `topology:`), recording problems in ctx.diagnostics instead of throwing.
TopologySpec readTopology(const YAML::Node& node, const std::string& path,
                          const ReadContext& ctx);

// Parses a YAML document, turning a syntax error into a positioned
// diagnostic. Returns an undefined node on failure.
YAML::Node parseYamlDocument(const std::string& text, const ReadContext& ctx);

// Reads a whole file; throws IoError naming the path and the OS reason.
std::string readTextFile(const std::string& path, const std::string& what);

}  // namespace geopipe::config
