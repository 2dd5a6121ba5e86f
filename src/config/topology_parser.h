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
