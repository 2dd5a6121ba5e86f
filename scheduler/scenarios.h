// The DT-FM paper's five 64-GPU network scenarios and synthetic world-wide
// topologies, built in code (no YAML) for tests and benchmarks.
#pragma once

#include <cstdint>
#include <string>

#include "geopipe/job_spec.h"

namespace geopipe::scheduler {

constexpr int kNumPaperScenarios = 5;

// Scenario k in 1..5 (DESIGN.md "The paper's network scenarios"): devices in
// the paper's listing order, device 8·i + j is the j-th device of region i
// (scenario 2: devices 0–31 the eight 4-GPU machines, 32–63 single GPUs).
TopologySpec paperScenario(int k);

// Short names: dc-ondemand, dc-spot, multi-university, regional, world-wide.
std::string paperScenarioName(int k);

// The paper's job on scenario k: GPT-3 XL shape (24 layers, hidden 2048,
// 16 heads, seq 2048), D_pp = 8, D_dp = 8, cost_model dtfm with the paper's
// payloads c_grad = 0.65 GB and c_act = 0.471249 GB.
JobSpec paperJob(int k);

// A synthetic world-wide topology of `devices` devices: sites of 8 devices
// at random places on the globe; latency from great-circle distance
// (fibre at 2/3 c plus 2 ms), bandwidth 0.3–1.2 Gbps between sites (lower
// for longer paths), 5 ms / 2 Gbps inside a site. Deterministic in `seed`.
TopologySpec syntheticWorldwide(int devices, uint64_t seed = 7);

}  // namespace geopipe::scheduler
