// Hard placement instances for the search benchmark and tests: heterogeneous
// topologies with per-device links where no structured seed is near the best.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "geopipe/job_spec.h"

namespace geopipe::scheduler {

// Two families, both with per-device links (every device is its own site of
// the TopologySpec, so each directed device pair has its own link) and the
// devices listed in a shuffled order, so in-order, round-robin and
// site-spread seeds see no structure:
//  * clusters: hidden clusters of very different sizes (1 to 8 devices) at
//    random places on the globe; fast links (10–40 Gbps, 0.2–2 ms) inside a
//    cluster, slow ones between (0.1–1.5 Gbps log-uniform per device pair,
//    latency from distance plus jitter); a quarter of the pairs asymmetric
//    (the reverse direction drawn again). Every device is used. This is the
//    issue's reference instance at 32 devices.
//  * sites: sites of very different sizes (from 1 device to a quarter of
//    all), each device with its own NIC cap (link = min of the site pair's
//    link and both NICs), 1 in 8 devices a straggler (NIC at 0.05–0.2 Gbps,
//    a third of the speed), mixed GPUs (65–990 TFLOPS, 16–80 GiB), a
//    quarter of the pairs asymmetric; D_pp·D_dp < N so idle devices must be
//    chosen.
enum class HardFamily { CLUSTERS, SITES };

std::string hardFamilyName(HardFamily family);

// The topology of `family` at `devices` devices; a pure function of its
// arguments (std::mt19937_64 and integer/real draws only).
TopologySpec hardTopology(HardFamily family, int devices, uint64_t seed);

// One benchmark instance: a job (topology, shape, cost model) to plan.
struct HardInstance {
  std::string name;  // "<family>-<devices>[-geopipe]"
  JobSpec job;
};

// The paper's GPT-3 XL job (dtfm with its payloads c_grad = 0.65 GB,
// c_act = 0.471249 GB unless cost_model is geopipe) on hardTopology, with
// the shape of the family and size: clusters N = D_pp x D_dp (8: 4x2,
// 12: 4x3, 16: 4x4, 32: 8x4, 64: 8x8, 256: 8x32, 1024: 8x128); sites about
// N/8 devices idle (8: 3x2, 12: 3x3, 16: 4x3, 32: 8x3, 64: 8x7, 256: 8x28,
// 1024: 8x112).
HardInstance hardInstance(HardFamily family, int devices, uint64_t seed,
                          const std::string& cost_model = "dtfm");

// Both families at every size in `sizes`, and for sizes <= 12 also under
// the geopipe cost model (small enough for exhaustive search to be exact).
std::vector<HardInstance> hardInstances(const std::vector<int>& sizes, uint64_t seed);

}  // namespace geopipe::scheduler
