// Hard instance generator: per-device links, hidden clusters, stragglers.
#include "scheduler/hard_instances.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "geopipe/error.h"
#include "scheduler/scenarios.h"

namespace geopipe::scheduler {

namespace {

constexpr double kPi = 3.14159265358979323846;

struct Place {
  double lat = 0, lon = 0;  // radians
};

Place randomPlace(std::mt19937_64& rng) {
  std::uniform_real_distribution<double> u(0, 1);
  return {std::asin(2 * u(rng) - 1), 2 * kPi * u(rng)};
}

// One-way latency over fibre (2/3 c) along the great circle, plus 2 ms.
double latencyMs(const Place& a, const Place& b) {
  const double c = std::sin(a.lat) * std::sin(b.lat) +
                   std::cos(a.lat) * std::cos(b.lat) * std::cos(a.lon - b.lon);
  const double km = 6371.0 * std::acos(std::clamp(c, -1.0, 1.0));
  return 2.0 + km / 200.0;
}

double logUniform(std::mt19937_64& rng, double lo, double hi) {
  std::uniform_real_distribution<double> u(std::log(lo), std::log(hi));
  return std::exp(u(rng));
}

// Sizes summing to n, each drawn from `choices` (the last one cut to fit).
std::vector<int> drawSizes(int n, const std::vector<int>& choices, std::mt19937_64& rng) {
  std::vector<int> sizes;
  int left = n;
  while (left > 0) {
    const int s = choices[std::uniform_int_distribution<size_t>(0, choices.size() - 1)(rng)];
    sizes.push_back(std::min(s, left));
    left -= sizes.back();
  }
  return sizes;
}

struct DeviceDraw {
  int cluster = 0;
  double nic_gbps = 1e9;  // cap on every link of the device
  double tflops = 125;
  double memory_gb = 32;
};

}  // namespace

std::string hardFamilyName(HardFamily family) {
  return family == HardFamily::CLUSTERS ? "clusters" : "sites";
}

TopologySpec hardTopology(HardFamily family, int devices, uint64_t seed) {
  GEOPIPE_CHECK(devices >= 2, ConfigError, "a hard instance needs at least 2 devices, got ",
                devices);
  std::mt19937_64 rng(seed * 0x9e3779b97f4a7c15ULL + devices * 2 +
                      (family == HardFamily::SITES ? 1 : 0));
  std::uniform_real_distribution<double> u(0, 1);
  const int n = devices;
  const bool sites = family == HardFamily::SITES;

  // Clusters (sites) of very different sizes.
  std::vector<int> sizes;
  if (sites) {
    std::vector<int> choices = {1, 1, 2, 4, 8};
    for (int s = 16; s <= n / 4; s *= 2) choices.push_back(s);
    sizes = drawSizes(n, choices, rng);
  } else {
    sizes = drawSizes(n, {1, 2, 3, 4, 6, 8}, rng);
  }
  std::vector<DeviceDraw> dev;
  for (size_t c = 0; c < sizes.size(); ++c)
    for (int k = 0; k < sizes[c]; ++k) dev.push_back({static_cast<int>(c)});
  const int clusters = static_cast<int>(sizes.size());
  std::vector<Place> place(clusters);
  for (auto& p : place) p = randomPlace(rng);
  // Site-pair links for the sites family (per-device caps come below).
  std::vector<std::vector<double>> site_bw(clusters, std::vector<double>(clusters));
  for (auto& row : site_bw)
    for (double& b : row) b = logUniform(rng, 0.3, 2.0);

  static const double kTflops[] = {65, 125, 312, 990};
  static const double kMemory[] = {16, 24, 40, 80};
  for (DeviceDraw& d : dev) {
    const int gpu = std::uniform_int_distribution<int>(0, 3)(rng);
    d.tflops = kTflops[gpu];
    d.memory_gb = kMemory[std::uniform_int_distribution<int>(0, 3)(rng)];
    if (sites) {
      d.nic_gbps = logUniform(rng, 1.0, 10.0);
      if (u(rng) < 0.125) {  // straggler: slow NIC, a third of the speed
        d.nic_gbps = logUniform(rng, 0.05, 0.2);
        d.tflops /= 3;
      }
    }
  }

  // Hide the structure: list the devices in a random order.
  std::vector<int> perm(n);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);

  TopologySpec t;
  t.name = "hard-" + hardFamilyName(family) + "-" + std::to_string(n);
  t.description =
      "generated hard instance (scheduler/hard_instances.h), seed " + std::to_string(seed);
  t.source = "<scheduler/hard_instances.cc>";
  for (int i = 0; i < n; ++i) {
    const DeviceDraw& d = dev[perm[i]];
    SiteSpec s;
    s.name = "c" + std::to_string(d.cluster) + "-d" + std::to_string(i);
    s.devices = {i};
    s.intra = {0.1, 100};
    t.sites.push_back(s);
    DeviceSpec spec;
    spec.name = s.name + "/0";
    spec.gpu = "mixed";
    spec.tflops = d.tflops;
    spec.memory_gb = d.memory_gb;
    spec.site = i;
    t.devices.push_back(spec);
  }
  t.site_links.assign(n, std::vector<LinkSpec>(n));
  for (int i = 0; i < n; ++i) t.site_links[i][i] = t.sites[i].intra;
  // Draw each unordered pair once; a quarter get an independent reverse.
  for (int i = 0; i < n; ++i) {
    for (int j = i + 1; j < n; ++j) {
      const DeviceDraw& a = dev[perm[i]];
      const DeviceDraw& b = dev[perm[j]];
      auto draw = [&]() -> LinkSpec {
        if (a.cluster == b.cluster) {
          LinkSpec l{0.2 + 1.8 * u(rng), logUniform(rng, 10.0, 40.0)};
          l.bandwidth_gbps = std::min({l.bandwidth_gbps, a.nic_gbps, b.nic_gbps});
          return l;
        }
        const double ms = latencyMs(place[a.cluster], place[b.cluster]) * (1.0 + 0.3 * u(rng));
        double gbps = sites ? site_bw[a.cluster][b.cluster] * (0.8 + 0.4 * u(rng))
                            : logUniform(rng, 0.1, 1.5);
        gbps = std::min({gbps, a.nic_gbps, b.nic_gbps});
        return {ms, gbps};
      };
      const LinkSpec fwd = draw();
      const LinkSpec back = u(rng) < 0.25 ? draw() : fwd;
      t.site_links[i][j] = fwd;
      t.site_links[j][i] = back;
    }
  }
  return t;
}

HardInstance hardInstance(HardFamily family, int devices, uint64_t seed,
                          const std::string& cost_model) {
  int d_pp = 8;
  int d_dp = 0;
  if (family == HardFamily::CLUSTERS) {
    if (devices <= 16) d_pp = 4;
    d_dp = devices / d_pp;
  } else {
    if (devices <= 12)
      d_pp = 3;
    else if (devices <= 16)
      d_pp = 4;
    d_dp = std::max(1, (devices - std::max(2, devices / 8)) / d_pp);
  }
  GEOPIPE_CHECK(d_dp >= 1, ConfigError, "hard instance of ", devices, " devices is too small for ",
                d_pp, " stages");
  HardInstance h;
  h.name = hardFamilyName(family) + "-" + std::to_string(devices) +
           (cost_model == "dtfm" ? "" : "-" + cost_model);
  h.job = paperJob(5);
  h.job.name = "hard-" + h.name;
  h.job.source = "<scheduler/hard_instances.cc>";
  h.job.topology = hardTopology(family, devices, seed);
  h.job.parallelism.pipeline_stages = d_pp;
  h.job.parallelism.data_parallel = d_dp;
  h.job.scheduler.cost_model = cost_model;
  if (cost_model != "dtfm") {
    // The geopipe model derives payloads from the profile; a batch that
    // splits evenly over the replicas.
    h.job.scheduler.grad_payload_gb.reset();
    h.job.scheduler.act_payload_gb.reset();
    h.job.training.global_batch = 16 * d_dp;
  }
  return h;
}

std::vector<HardInstance> hardInstances(const std::vector<int>& sizes, uint64_t seed) {
  std::vector<HardInstance> out;
  for (int n : sizes) {
    for (HardFamily f : {HardFamily::CLUSTERS, HardFamily::SITES}) {
      out.push_back(hardInstance(f, n, seed));
      if (n <= 12) out.push_back(hardInstance(f, n, seed, "geopipe"));
    }
  }
  return out;
}

}  // namespace geopipe::scheduler
