// Which devices a generation of the job is planned over: the previous plan
// again, the whole topology, or the devices the workers named (fewer than
// the topology's after a shrink). Torch-free; the coordinator hands the
// answer to runtime::choosePlacement.
#pragma once

#include <cstdint>
#include <set>
#include <vector>

namespace geopipe::distributed {

struct DevicePlan {
  // Keep the previous generation's plan: every named device is one it used,
  // so the recovered run computes exactly what the uninterrupted one would.
  bool reuse = false;
  // Otherwise plan over these devices (global indices, sorted; see
  // scheduler::subTopology); empty: over the whole topology.
  std::vector<int> devices;
};

// The plan of a generation of `world` tasklets whose workers named the
// devices `named` (the others said "any") in a topology of `n_devices`.
// `previous`: the previous generation's rank -> device, nullptr for the
// first generation. The whole topology when nobody named a device (or the
// topology lists none); else the named devices, topped up with the lowest
// unnamed ones to `world`.
DevicePlan planDevices(const std::set<int>& named, int n_devices, int world,
                       const std::vector<int>* previous);

}  // namespace geopipe::distributed
