// Dense device-to-device network of a topology: one-way latency α (seconds)
// and inverse bandwidth 1/β (seconds per gigabit) for every directed pair.
#pragma once

#include <Eigen/Dense>

#include "geopipe/topology.h"

namespace geopipe::scheduler {

// Network is built once per plan from a TopologySpec and then read by every
// cost model from any thread (it is immutable). Devices are numbered by their
// index in TopologySpec::devices. The constructor validates the topology:
// malformed structure is a ConfigError; two sites with devices joined by a
// link of zero (or negative) bandwidth are "disconnected" and raise
// InfeasibleError, since no plan can use both.
class Network {
 public:
  explicit Network(const TopologySpec& topology);

  int size() const { return n_; }
  const TopologySpec& topology() const { return topology_; }
  int site(int device) const { return topology_.devices[device].site; }
  double tflops(int device) const { return topology_.devices[device].tflops; }
  double memoryGb(int device) const {
    return topology_.devices[device].memory_gb;
  }

  // α_ij in seconds (the paper's α is in ms; we store α/1000).
  double latencyS(int i, int j) const { return latency_s_(i, j); }
  // β_ij in Gbit/s.
  double bandwidthGbps(int i, int j) const { return 1.0 / inv_bw_(i, j); }

  // Seconds to move `gb` gigabytes (10^9 bytes) over the directed link
  // i -> j: α_ij + 8·gb/β_ij (the paper's edge cost).
  double transferS(int i, int j, double gb) const {
    return latency_s_(i, j) + 8.0 * gb * inv_bw_(i, j);
  }
  // The same for a data-parallel exchange, where j sends to i at the same
  // time: the link's duplex_bandwidth_gbps (its bandwidth when not given).
  double exchangeTransferS(int i, int j, double gb) const {
    return latency_s_(i, j) + 8.0 * gb * inv_exchange_bw_(i, j);
  }

 private:
  TopologySpec topology_;
  int n_ = 0;
  Eigen::MatrixXd latency_s_;  // n x n, seconds, zero diagonal
  Eigen::MatrixXd inv_bw_;     // n x n, seconds per Gbit, zero diagonal
  Eigen::MatrixXd inv_exchange_bw_;  // the same at LinkSpec::exchangeGbps()
};

}  // namespace geopipe::scheduler
