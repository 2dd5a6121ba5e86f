// Link probing: every rank of a transport measures the one-way latency and
// the bandwidth of its links to every other rank, one pair at a time, and
// rank 0 writes what it found as a topology the scheduler can plan with
// (`geopipe probe`). Bounded in bytes and time. No LibTorch, no gRPC: it
// runs over any Transport (tests use the link emulator with known links).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "src/transport/transport.h"

namespace geopipe::transport {

struct ProbeOptions {
  // Round trips of a small message per pair; the latency is half the
  // median round trip.
  int pings = 20;
  // Bytes sent each way per pair to time the bandwidth, in one message, twice
  // (the better counts); the bandwidth is bytes / (time until the receiver's
  // acknowledgement - the fastest ping's round trip). Then both ends of the
  // pair send that many bytes at once, twice, each timing the bulk it
  // receives: the duplex bandwidth is both rounds' bytes over their time. The probe sends at most
  // pairs x 8 x bulk_bytes in all.
  uint64_t bulk_bytes = uint64_t{4} << 20;
  // Each wait of the probe (a ping, a bulk transfer, a result) gives up
  // after this: TimeoutError naming the pair.
  Duration timeout = std::chrono::seconds(60);
};

// One direction of one link as measured.
struct LinkMeasurement {
  int from = 0;
  int to = 0;
  double latency_ms = 0;      // one way (half the median round trip)
  double bandwidth_gbps = 0;  // 10^9 bit/s, the topology's unit
  // This direction while the reverse one sends too (a data-parallel
  // exchange's pattern); the topology's duplex_bandwidth_gbps.
  double duplex_bandwidth_gbps = 0;
};

// Collective: every rank of `t` calls it with the same options. Pairs are
// measured one after another (so no two probes share a link or a host's
// uplink), in a fixed order every rank knows. Returns every ordered pair's
// measurement on rank 0 (from < to first), nothing on the others.
std::vector<LinkMeasurement> probeLinks(Transport& t, const ProbeOptions& options);

// A topology YAML (docs/job-spec.md "Topology") with one site per rank,
// named `names[r]`, one device each, and a directed link for every
// measured pair (latency rounded to 0.01 ms, bandwidths to 3 significant
// digits; duplex_bandwidth_gbps where measured, at most bandwidth_gbps). `comment` becomes the
// file's first lines.
std::string topologyYamlFromProbe(const std::string& name, const std::vector<std::string>& names,
                                  const std::vector<LinkMeasurement>& links,
                                  const std::string& comment);

}  // namespace geopipe::transport
