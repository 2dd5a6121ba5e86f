// Paper scenarios from DESIGN.md's tables and a synthetic world generator.
#include "scheduler/scenarios.h"

#include <cmath>
#include <map>
#include <random>

#include "geopipe/error.h"

namespace geopipe::scheduler {

namespace {

// Sites of `per_site` devices each, all links `inter`, intra `intra`.
TopologySpec uniformSites(const std::vector<std::string>& names, int per_site,
                          LinkSpec intra, LinkSpec inter) {
  TopologySpec t;
  for (const auto& name : names) {
    SiteSpec s;
    s.name = name;
    s.intra = intra;
    for (int j = 0; j < per_site; ++j) {
      DeviceSpec d;
      d.name = name + "/" + std::to_string(j);
      d.site = t.numSites();
      s.devices.push_back(t.numDevices());
      t.devices.push_back(d);
    }
    t.sites.push_back(s);
  }
  const int n = t.numSites();
  t.site_links.assign(n, std::vector<LinkSpec>(n, inter));
  for (int a = 0; a < n; ++a) t.site_links[a][a] = t.sites[a].intra;
  return t;
}

void setLink(TopologySpec& t, int a, int b, double ms, double gbps) {
  t.site_links[a][b] = t.site_links[b][a] = LinkSpec{ms, gbps};
}

}  // namespace

std::string paperScenarioName(int k) {
  static const char* kNames[] = {"dc-ondemand", "dc-spot", "multi-university",
                                 "regional", "world-wide"};
  GEOPIPE_CHECK(k >= 1 && k <= kNumPaperScenarios, ConfigError,
                "paper scenario ", k, " does not exist; expected 1..5");
  return kNames[k - 1];
}

TopologySpec paperScenario(int k) {
  TopologySpec t;
  switch (k) {
    case 1: {
      std::vector<std::string> names;
      for (int i = 0; i < 8; ++i) names.push_back("machine" + std::to_string(i));
      t = uniformSites(names, 8, {0, 100}, {0, 3.125});
      break;
    }
    case 2: {
      std::vector<std::string> names;
      for (int i = 0; i < 8; ++i) names.push_back("machine" + std::to_string(i));
      t = uniformSites(names, 4, {0, 100}, {0, 1.25});
      TopologySpec singles;
      std::vector<std::string> snames;
      for (int i = 0; i < 32; ++i) snames.push_back("single" + std::to_string(i));
      singles = uniformSites(snames, 1, {0, 100}, {0, 1.25});
      for (auto s : singles.sites) {
        for (int& d : s.devices) {
          DeviceSpec dev = singles.devices[d];
          dev.site = t.numSites();
          d = t.numDevices();
          t.devices.push_back(dev);
        }
        t.sites.push_back(s);
      }
      const int n = t.numSites();
      t.site_links.assign(n, std::vector<LinkSpec>(n, LinkSpec{0, 1.25}));
      for (int a = 0; a < n; ++a) t.site_links[a][a] = t.sites[a].intra;
      break;
    }
    case 3:
      t = uniformSites({"ohio", "virginia"}, 32, {1, 5}, {11, 1.12});
      break;
    case 4: {
      t = uniformSites({"virginia", "oregon", "california", "ohio"}, 16, {5, 2},
                       {0, 1});
      enum { VIR, ORE, CAL, OHI };
      setLink(t, VIR, ORE, 67, 1.15);
      setLink(t, VIR, CAL, 59, 1.05);
      setLink(t, VIR, OHI, 11, 1.12);
      setLink(t, ORE, CAL, 12, 1.25);
      setLink(t, ORE, OHI, 49, 1.10);
      setLink(t, CAL, OHI, 52, 1.02);
      break;
    }
    case 5: {
      t = uniformSites({"oregon", "virginia", "ohio", "tokyo", "seoul", "london",
                        "frankfurt", "ireland"},
                       8, {5, 2}, {0, 1});
      enum { ORE, VIR, OHI, TOK, SEO, LON, FRA, IRE };
      setLink(t, ORE, VIR, 67, 0.79);
      setLink(t, ORE, OHI, 49, 1.10);
      setLink(t, ORE, TOK, 96, 0.523);
      setLink(t, ORE, SEO, 124, 0.46);
      setLink(t, ORE, LON, 136, 0.42);
      setLink(t, ORE, FRA, 143, 0.404);
      setLink(t, ORE, IRE, 124, 0.482);
      setLink(t, VIR, OHI, 11, 1.12);
      setLink(t, VIR, TOK, 143, 0.524);
      setLink(t, VIR, SEO, 172, 0.500);
      setLink(t, VIR, LON, 76, 1.16);
      setLink(t, VIR, FRA, 90, 1.02);
      setLink(t, VIR, IRE, 67, 1.05);
      setLink(t, OHI, TOK, 130, 0.694);
      setLink(t, OHI, SEO, 159, 0.529);
      setLink(t, OHI, LON, 86, 1.05);
      setLink(t, OHI, FRA, 99, 0.799);
      setLink(t, OHI, IRE, 77, 1.14);
      setLink(t, TOK, SEO, 34, 1.10);
      setLink(t, TOK, LON, 210, 0.366);
      setLink(t, TOK, FRA, 223, 0.36);
      setLink(t, TOK, IRE, 199, 0.465);
      setLink(t, SEO, LON, 238, 0.342);
      setLink(t, SEO, FRA, 235, 0.358);
      setLink(t, SEO, IRE, 228, 0.335);
      setLink(t, LON, FRA, 14, 1.14);
      setLink(t, LON, IRE, 12, 1.09);
      setLink(t, FRA, IRE, 24, 1.08);
      break;
    }
    default:
      GEOPIPE_THROW(ConfigError, "paper scenario ", k,
                    " does not exist; expected 1..5");
  }
  t.name = paperScenarioName(k);
  t.description = "DT-FM paper scenario " + std::to_string(k);
  t.source = "<scheduler/scenarios.cc>";
  return t;
}

JobSpec paperJob(int k) {
  JobSpec job;
  job.name = "dtfm-" + paperScenarioName(k);
  job.source = "<scheduler/scenarios.cc>";
  job.model.preset = "gpt3-xl";
  job.model.layers = 24;
  job.model.hidden = 2048;
  job.model.heads = 16;
  job.model.seq_len = 2048;
  job.model.vocab = 50257;
  job.model.dtype = "fp16";
  job.training.global_batch = 64 * 8;
  job.training.micro_batch = 1;
  job.parallelism.pipeline_stages = 8;
  job.parallelism.data_parallel = 8;
  job.scheduler.cost_model = "dtfm";
  job.scheduler.grad_payload_gb = 0.65;
  job.scheduler.act_payload_gb = 0.471249;
  job.topology = paperScenario(k);
  return job;
}

TopologySpec syntheticWorldwide(int devices, uint64_t seed) {
  GEOPIPE_CHECK(devices >= 1, ConfigError, "synthetic topology needs devices");
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0, 1);
  constexpr int kPerSite = 8;
  const int sites = (devices + kPerSite - 1) / kPerSite;
  TopologySpec t;
  t.name = "synthetic-world-" + std::to_string(devices);
  t.description = "synthetic world-wide topology";
  t.source = "<syntheticWorldwide>";
  std::vector<double> lat(sites), lon(sites), tflops(sites);
  static const double kGpuTflops[] = {125, 125, 312, 65};  // V100, A100, T4-ish
  for (int s = 0; s < sites; ++s) {
    lat[s] = std::asin(2 * u(rng) - 1);  // uniform on the sphere
    lon[s] = 2 * M_PI * u(rng);
    tflops[s] = kGpuTflops[rng() % 4];
    SiteSpec site;
    site.name = "site" + std::to_string(s);
    site.intra = {5, 2};
    t.sites.push_back(site);
  }
  for (int d = 0; d < devices; ++d) {
    const int s = d / kPerSite;
    DeviceSpec dev;
    dev.name = t.sites[s].name + "/" + std::to_string(d % kPerSite);
    dev.site = s;
    dev.tflops = tflops[s];
    t.sites[s].devices.push_back(d);
    t.devices.push_back(dev);
  }
  t.site_links.assign(sites, std::vector<LinkSpec>(sites));
  for (int a = 0; a < sites; ++a) {
    t.site_links[a][a] = t.sites[a].intra;
    for (int b = a + 1; b < sites; ++b) {
      const double c = std::sin(lat[a]) * std::sin(lat[b]) +
                       std::cos(lat[a]) * std::cos(lat[b]) * std::cos(lon[a] - lon[b]);
      const double km = 6371.0 * std::acos(std::max(-1.0, std::min(1.0, c)));
      const double ms = 2.0 + km / 200.0;  // 200 km per ms in fibre
      const double gbps = 0.3 + 0.9 * (1.0 - km / 20016.0) * (0.5 + 0.5 * u(rng));
      t.site_links[a][b] = {ms, gbps};
      t.site_links[b][a] = {ms, gbps * (0.8 + 0.4 * u(rng))};  // asymmetric
    }
  }
  return t;
}

}  // namespace geopipe::scheduler
