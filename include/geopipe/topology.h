// Typed topology: sites of devices and the links between them, as read from
// a topology YAML file (see docs/job-spec.md). Plain structs, no YAML here.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace geopipe {

// One direction of a network link. Latency is one-way, in milliseconds;
// bandwidth in gigabits per second (10^9 bit/s), as the DT-FM paper states it.
struct LinkSpec {
  double latency_ms = 0.0;
  double bandwidth_gbps = 1.0;
  // This direction's bandwidth while the reverse direction is busy too, as
  // in a data-parallel exchange where both ends send at once (`geopipe
  // probe` measures it; over TCP with a shallow shaped queue it can be well
  // below bandwidth_gbps). 0: the same as bandwidth_gbps.
  double duplex_bandwidth_gbps = 0.0;

  // The rate a data-parallel exchange gets over this link.
  double exchangeGbps() const {
    return duplex_bandwidth_gbps > 0 ? duplex_bandwidth_gbps : bandwidth_gbps;
  }
};

// One accelerator. Devices are numbered globally in the order the topology
// file lists them (site by site, device by device): that index is the
// `device` of every plan.
struct DeviceSpec {
  std::string name;         // "<site>/<index>" unless the file names it
  std::string gpu = "V100"; // marketing name, informational
  double tflops = 125.0;    // sustained dense TFLOPS in model.dtype (V100 fp16)
  // A rate per compute dtype ("fp32", "fp16", "bf16"), when the topology
  // gives `tflops` as a mapping; empty when it gives one rate. Reading a job
  // sets `tflops` from it for the job's model.dtype (a dtype it lacks is a
  // ConfigError).
  std::map<std::string, double> tflops_by_dtype;
  double memory_gb = 32.0;  // device memory in GiB available to geopipe
  int site = 0;             // index into TopologySpec::sites
};

// A group of devices that share one intra-site link (a machine, a data
// center, a region).
struct SiteSpec {
  std::string name;
  LinkSpec intra;            // between two devices of this site
  std::vector<int> devices;  // global device indices, in listing order
};

// A whole topology with every directed site-to-site link resolved.
struct TopologySpec {
  std::string name;
  std::string description;
  std::string source;  // file it was read from ("<inline>" in a job file)
  std::vector<SiteSpec> sites;
  std::vector<DeviceSpec> devices;
  // site_links[a][b]: the link from site a to site b (a != b); the diagonal
  // repeats the site's intra link so that link() needs no branch.
  std::vector<std::vector<LinkSpec>> site_links;

  int numDevices() const { return static_cast<int>(devices.size()); }
  int numSites() const { return static_cast<int>(sites.size()); }

  // The directed link a -> b between two devices (a != b).
  const LinkSpec& link(int a, int b) const {
    return site_links[devices[a].site][devices[b].site];
  }
};

}  // namespace geopipe
