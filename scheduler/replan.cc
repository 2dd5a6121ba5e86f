// Elastic re-planning: the degraded plan's price, then plan() over every
// shape on the live devices, warm-started from the degraded placement.
#include "scheduler/replan.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>

#include "geopipe/error.h"

namespace geopipe::scheduler {

namespace {
using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::string stepText(double s) {
  return std::isfinite(s) ? detail::concat(s, " s") : std::string("infeasible");
}

// The degraded plan on the sub-topology of the live devices (local indices):
// the current plan's replicas whose every device is live, in their order.
struct Degraded {
  Allocation allocation;  // d_dp = 0 when no replica is left
  double step_s = std::numeric_limits<double>::infinity();
};

Degraded priceDegraded(const JobSpec& sub, const std::shared_ptr<const Network>& network,
                       const std::vector<int>& local, const CurrentPlan& current,
                       const AcsgdStoresFn& stores) {
  Degraded out;
  Allocation& a = out.allocation;
  a.d_pp = current.stages;
  a.stages.assign(static_cast<size_t>(current.stages), {});
  for (int r = 0; r < current.replicas; ++r) {
    bool alive = true;
    for (int s = 0; s < current.stages; ++s)
      alive &= local[static_cast<size_t>(
                   current.device_of_rank[static_cast<size_t>(r * current.stages + s)])] >= 0;
    if (!alive) continue;
    ++a.d_dp;
    for (int s = 0; s < current.stages; ++s)
      a.stages[static_cast<size_t>(s)].push_back(local[static_cast<size_t>(
          current.device_of_rank[static_cast<size_t>(r * current.stages + s)])]);
  }
  const int gb = sub.training.global_batch, mb = sub.training.micro_batch;
  if (a.d_dp == 0 || gb % (a.d_dp * mb) != 0) return out;
  ModelProfile profile = ModelProfile::fromJob(sub);
  if (stores && a.d_pp >= 2) profile.acsgd = stores(a.d_dp);
  const std::unique_ptr<CostModel> model =
      makeCostModel(sub.scheduler.cost_model, network, profile, sub, a.d_pp, a.d_dp);
  const PathEval e = model->evaluateAllocation(a);
  if (e.feasible) out.step_s = e.total_s;
  return out;
}

}  // namespace

TopologySpec subTopology(const TopologySpec& t, const std::vector<int>& keep) {
  TopologySpec s;
  s.name = t.name;
  s.description = t.description;
  s.source = t.source;
  std::vector<int> new_site(static_cast<size_t>(t.numSites()), -1);
  std::vector<int> old_site;
  for (int d : keep) {
    const int site = t.devices[static_cast<size_t>(d)].site;
    if (new_site[static_cast<size_t>(site)] < 0) {
      new_site[static_cast<size_t>(site)] = static_cast<int>(old_site.size());
      old_site.push_back(site);
      SiteSpec ss = t.sites[static_cast<size_t>(site)];
      ss.devices.clear();
      s.sites.push_back(ss);
    }
  }
  for (size_t k = 0; k < keep.size(); ++k) {
    DeviceSpec dev = t.devices[static_cast<size_t>(keep[k])];
    dev.site = new_site[static_cast<size_t>(dev.site)];
    s.sites[static_cast<size_t>(dev.site)].devices.push_back(static_cast<int>(k));
    s.devices.push_back(dev);
  }
  s.site_links.assign(old_site.size(), std::vector<LinkSpec>(old_site.size()));
  for (size_t a = 0; a < old_site.size(); ++a)
    for (size_t b = 0; b < old_site.size(); ++b)
      s.site_links[a][b] =
          t.site_links[static_cast<size_t>(old_site[a])][static_cast<size_t>(old_site[b])];
  return s;
}

CurrentPlan globalPlan(const Allocation& allocation, const std::vector<int>& devices) {
  CurrentPlan c;
  c.stages = allocation.d_pp;
  c.replicas = allocation.d_dp;
  c.device_of_rank.assign(static_cast<size_t>(c.stages * c.replicas), -1);
  for (int s = 0; s < c.stages; ++s)
    for (int r = 0; r < c.replicas; ++r)
      c.device_of_rank[static_cast<size_t>(r * c.stages + s)] = devices[static_cast<size_t>(
          allocation.stages[static_cast<size_t>(s)][static_cast<size_t>(r)])];
  for (const auto& [first, last] : allocation.layers) c.body_per_stage.push_back(last - first);
  return c;
}

ReplanResult replan(const JobSpec& job, const std::vector<int>& live, const CurrentPlan& current,
                    const ReplanOptions& options, const AcsgdStoresFn& stores) {
  const auto t0 = Clock::now();
  const int n = job.topology.numDevices();
  GEOPIPE_CHECK(!live.empty(), ConfigError, "re-planning needs at least one live device");
  for (size_t k = 0; k < live.size(); ++k)
    GEOPIPE_CHECK(live[k] >= 0 && live[k] < n && (k == 0 || live[k - 1] < live[k]), ConfigError,
                  "live devices must be sorted, unique global indices below ", n, "; got ", live[k],
                  " at position ", k);
  GEOPIPE_CHECK(current.stages >= 1 && current.replicas >= 1 &&
                    current.device_of_rank.size() ==
                        static_cast<size_t>(current.stages) * static_cast<size_t>(current.replicas),
                ConfigError, "the current plan has ", current.stages, " stages x ",
                current.replicas, " replicas but ", current.device_of_rank.size(), " ranks");
  for (int d : current.device_of_rank)
    GEOPIPE_CHECK(d >= 0 && d < n, ConfigError, "the current plan names device ", d,
                  " outside the topology's ", n);

  std::vector<int> local(static_cast<size_t>(n), -1);  // global -> live index
  for (size_t k = 0; k < live.size(); ++k)
    local[static_cast<size_t>(live[k])] = static_cast<int>(k);
  JobSpec sub = job;
  sub.topology = subTopology(job.topology, live);
  // Every shape (geopipe); dtfm plans N / D_pp replicas of the running stages.
  sub.parallelism.data_parallel = 0;
  sub.parallelism.pipeline_stages = sub.scheduler.cost_model == "geopipe" ? 1 : current.stages;
  auto network = std::make_shared<const Network>(sub.topology);

  ReplanResult out;
  const Degraded degraded = priceDegraded(sub, network, local, current, stores);
  out.degraded_replicas = degraded.allocation.d_dp;
  out.degraded_s = degraded.step_s;
  out.degraded_device_of_rank.resize(static_cast<size_t>(degraded.allocation.d_pp) *
                                     static_cast<size_t>(out.degraded_replicas));
  for (int s = 0; s < degraded.allocation.d_pp; ++s)
    for (int r = 0; r < out.degraded_replicas; ++r)
      out.degraded_device_of_rank[static_cast<size_t>(r * degraded.allocation.d_pp + s)] =
          live[static_cast<size_t>(
              degraded.allocation.stages[static_cast<size_t>(s)][static_cast<size_t>(r)])];

  SearchOptions search = searchOptionsFromJob(sub);
  search.algorithm = "evolutionary";
  search.seed = options.seed;
  search.budget_evaluations = options.budget_evaluations;
  // The searches end on their budget after the move in progress, and plan()
  // splits the time per shape: keep 5% in reserve for those overruns.
  search.budget_seconds =
      options.budget_seconds > 0 ? std::max(0.01, 0.95 * options.budget_seconds - since(t0)) : 0;
  if (std::isfinite(out.degraded_s)) {
    // The degraded placement as its shape's first candidate: group s holds
    // stage s's devices (the search re-derives the order and the pairing,
    // which can only lower the price), the rest idle.
    SearchOptions::WarmStart w;
    w.d_pp = degraded.allocation.d_pp;
    w.d_dp = degraded.allocation.d_dp;
    w.label.assign(live.size(), w.d_pp);
    for (int s = 0; s < w.d_pp; ++s)
      for (int d : degraded.allocation.stages[static_cast<size_t>(s)])
        w.label[static_cast<size_t>(d)] = s;
    search.warm_starts.push_back(std::move(w));
  }

  PlanResult planned;
  try {
    planned = plan(sub, search, /*with_baselines=*/false, stores);
  } catch (const InfeasibleError& e) {
    rethrowWithContext(
        e, detail::concat("re-planning job '", job.name, "' on ", live.size(),
                          " live devices (degraded plan: ", stepText(out.degraded_s), "): "));
  }
  CurrentPlan found = globalPlan(planned.ours.allocation, live);
  out.stages = found.stages;
  out.replicas = found.replicas;
  out.device_of_rank = std::move(found.device_of_rank);
  out.body_per_stage = std::move(found.body_per_stage);
  out.predicted_s = planned.ours.best.cost;
  out.commit =
      std::isfinite(out.predicted_s) &&
      (!std::isfinite(out.degraded_s) || out.predicted_s < (1.0 - options.margin) * out.degraded_s);
  out.evaluations = planned.evaluations + 1;  // + the degraded plan's pricing
  out.shapes = planned.shapes;
  out.seconds = since(t0);
  out.summary = detail::concat(
      "degraded ", current.stages, "x", out.degraded_replicas, " (of ", current.replicas,
      " replicas): ", stepText(out.degraded_s), "; re-plan ", out.stages, "x", out.replicas, " on ",
      live.size(), " devices: ", stepText(out.predicted_s), "; ",
      out.commit ? "commit" : "keep the degraded plan", " (margin ", 100 * options.margin, "%); ",
      out.seconds, " s, ", out.evaluations, " evaluations");
  return out;
}

}  // namespace geopipe::scheduler
