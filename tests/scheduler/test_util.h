// Helpers shared by the scheduler tests: random small topologies.
#pragma once

#include <random>

#include "geopipe/job_spec.h"

namespace geopipe::scheduler::testing {

// Every device its own site with random asymmetric links, so small instances
// have rich, distinct costs (no ties from site structure).
inline TopologySpec randomTopology(int n, uint64_t seed, bool symmetric = true) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> ms(1, 150), gbps(0.2, 5), tf(50, 300);
  TopologySpec t;
  t.name = "random" + std::to_string(n);
  for (int d = 0; d < n; ++d) {
    SiteSpec s;
    s.name = "s" + std::to_string(d);
    s.devices = {d};
    t.sites.push_back(s);
    DeviceSpec dev;
    dev.name = s.name + "/0";
    dev.site = d;
    dev.tflops = tf(rng);
    t.devices.push_back(dev);
  }
  t.site_links.assign(n, std::vector<LinkSpec>(n));
  for (int a = 0; a < n; ++a)
    for (int b = 0; b < n; ++b) {
      if (b < a && symmetric) {
        t.site_links[a][b] = t.site_links[b][a];
      } else {
        t.site_links[a][b] = {ms(rng), gbps(rng)};
      }
    }
  return t;
}

// A small job on `topo`: 2 MB-ish payloads so costs are in seconds.
inline JobSpec smallJob(const TopologySpec& topo, int pp, int dp,
                        const std::string& cost_model = "dtfm") {
  JobSpec job;
  job.name = "test";
  job.model.layers = 12;
  job.model.hidden = 256;
  job.model.heads = 4;
  job.model.seq_len = 256;
  job.training.global_batch = 8 * dp;
  job.training.micro_batch = 1;
  job.parallelism.pipeline_stages = pp;
  job.parallelism.data_parallel = dp;
  job.scheduler.cost_model = cost_model;
  job.scheduler.grad_payload_gb = 0.05;
  job.scheduler.act_payload_gb = 0.03;
  job.topology = topo;
  return job;
}

}  // namespace geopipe::scheduler::testing
