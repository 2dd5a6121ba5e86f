// Shape selection, search and baselines for one job.
#include "scheduler/planner.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "geopipe/error.h"

namespace geopipe::scheduler {

namespace {
using Clock = std::chrono::steady_clock;
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr int kMaxAutoStages = 16;
constexpr int kShapesSearched = 3;
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
}  // namespace

JobSpec effectiveNetworkJob(const JobSpec& job) {
  JobSpec out = job;
  if (!job.transport.emulate_links) return out;
  for (auto& row : out.topology.site_links) {
    for (auto& link : row) {
      link.bandwidth_gbps *= job.transport.bandwidth_scale;
      link.duplex_bandwidth_gbps *= job.transport.bandwidth_scale;
      link.latency_ms *= job.transport.latency_scale;
    }
  }
  for (auto& site : out.topology.sites) {
    site.intra.bandwidth_gbps *= job.transport.bandwidth_scale;
    site.intra.duplex_bandwidth_gbps *= job.transport.bandwidth_scale;
    site.intra.latency_ms *= job.transport.latency_scale;
  }
  out.transport.bandwidth_scale = 1.0;
  out.transport.latency_scale = 1.0;
  return out;
}

SearchOptions searchOptionsFromJob(const JobSpec& job) {
  SearchOptions o;
  o.algorithm = job.scheduler.algorithm;
  o.budget_evaluations = job.scheduler.budget_evaluations;
  o.budget_seconds = job.scheduler.budget_seconds;
  o.seed = job.scheduler.seed;
  o.threads = job.scheduler.threads;
  return o;
}

PlanResult plan(const JobSpec& job, const SearchOptions& options, bool with_baselines,
                const AcsgdStoresFn& acsgd_stores) {
  const auto t0 = Clock::now();
  auto network = std::make_shared<const Network>(job.topology);
  const ModelProfile profile = ModelProfile::fromJob(job);
  const int n = network->size();
  const int layers = profile.numLayers();
  const std::string& cm = job.scheduler.cost_model;
  const int pp = job.parallelism.pipeline_stages;
  GEOPIPE_CHECK(pp >= 1, ConfigError, "parallelism.pipeline_stages = ", pp,
                "; expected >= 1");
  GEOPIPE_CHECK(job.parallelism.data_parallel >= 0, ConfigError,
                "parallelism.data_parallel = ", job.parallelism.data_parallel,
                "; expected >= 1 or auto");
  GEOPIPE_CHECK(pp <= layers, InfeasibleError, "parallelism.pipeline_stages = ",
                pp, " exceeds model.layers = ", layers,
                "; each stage needs at least one layer");
  if (job.parallelism.data_parallel > 0 || cm != "geopipe") {
    const int dp = job.parallelism.data_parallel > 0
                       ? job.parallelism.data_parallel
                       : std::max(1, n / pp);
    GEOPIPE_CHECK(pp * dp <= n, InfeasibleError, "the job needs ", pp, " x ",
                  dp, " = ", pp * dp, " devices but topology '",
                  job.topology.name, "' has ", n,
                  "; lower parallelism.pipeline_stages or data_parallel");
  }

  // Candidate shapes.
  std::vector<std::pair<int, int>> shapes;
  if (job.parallelism.data_parallel > 0) {
    shapes.emplace_back(pp, job.parallelism.data_parallel);
  } else if (cm != "geopipe") {
    shapes.emplace_back(pp, std::max(1, n / pp));
  } else {
    const int gb = job.training.global_batch, mb = job.training.micro_batch;
    for (int p = 1; p <= std::min({layers, n, kMaxAutoStages}); ++p) {
      const int max_dp = n / p;
      for (int d = max_dp; d >= 1; --d) {
        const bool pow2 = (d & (d - 1)) == 0;
        if (d != max_dp && !pow2) continue;
        if (gb % (d * mb) != 0 || gb < d * mb) continue;
        shapes.emplace_back(p, d);
      }
    }
    // Warm-started shapes are always tried (re-planning's running shape may
    // have a replica count that is neither a power of two nor N / D_pp).
    for (const SearchOptions::WarmStart& w : options.warm_starts) {
      const bool fits = w.d_pp >= 1 && w.d_pp <= layers && w.d_dp >= 1 && w.d_pp * w.d_dp <= n &&
                        gb % (w.d_dp * mb) == 0;
      if (fits &&
          std::find(shapes.begin(), shapes.end(), std::make_pair(w.d_pp, w.d_dp)) == shapes.end())
        shapes.emplace_back(w.d_pp, w.d_dp);
    }
    GEOPIPE_CHECK(!shapes.empty(), InfeasibleError,
                  "no (pipeline_stages, data_parallel) shape divides "
                  "training.global_batch = ", gb, " by data_parallel x "
                  "micro_batch = ", mb, " on ", n, " devices");
  }

  // AC-SGD stores per shape: a shape whose stores break the budget is not
  // tried (the stores do not depend on the placement).
  std::string budget_reason;
  bool buffers_charged = false;  // some shape charged in-memory stores
  auto profileFor = [&](int p, int d) {
    ModelProfile shaped = profile;
    if (acsgd_stores && p >= 2) shaped.acsgd = acsgd_stores(d);
    buffers_charged |= shaped.acsgd.in_memory && shaped.acsgd.store_bytes > 0;
    return shaped;
  };
  auto overBudget = [&](int p, int d) {
    if (!acsgd_stores || p < 2) return false;
    const AcsgdStores a = acsgd_stores(d);
    if (a.budget_bytes <= 0 || a.store_bytes <= a.budget_bytes) return false;
    if (budget_reason.empty()) {
      budget_reason = detail::concat(
          "with ", d, " replicas each AC-SGD buffer store holds ", a.store_bytes / kGiB,
          " GiB, over compression.activations.buffer_budget_gb (", a.budget_bytes / kGiB, " GiB)");
    }
    return true;
  };
  shapes.erase(
      std::remove_if(shapes.begin(), shapes.end(),
                     [&](const std::pair<int, int>& s) { return overBudget(s.first, s.second); }),
      shapes.end());
  if (shapes.empty()) {
    GEOPIPE_THROW(InfeasibleError, "no shape of job '", job.name, "' fits: ", budget_reason,
                  "; store the buffers quantized (buffer_format: quantized), train on fewer "
                  "samples (data.num_samples) or raise buffer_budget_gb");
  }

  PlanResult out;
  out.cost_model = cm;
  out.algorithm = options.algorithm;
  struct Scored {
    int p, d;
    double cost;
    std::shared_ptr<const CostModel> model;
  };
  std::vector<Scored> scored;
  int64_t screen_evals = 0;
  if (shapes.size() > 1) {
    // Screen every shape with in-order and a few random candidates.
    SearchOptions screen = options;
    screen.algorithm = "random";
    screen.budget_evaluations = 8;
    screen.budget_seconds =
        options.budget_seconds > 0
            ? 0.2 * options.budget_seconds / static_cast<double>(shapes.size())
            : 0;
    for (const auto& [p, d] : shapes) {
      std::shared_ptr<const CostModel> model =
          makeCostModel(cm, network, profileFor(p, d), job, p, d);
      const SearchResult io = inOrderPlacement(*model);
      const SearchResult rs = randomSearch(*model, screen);
      screen_evals += io.evaluations + rs.evaluations;
      scored.push_back({p, d, std::min(io.best.cost, rs.best.cost), model});
      out.shapes.push_back({p, d, scored.back().cost});
    }
    std::stable_sort(scored.begin(), scored.end(),
                     [](const Scored& a, const Scored& b) { return a.cost < b.cost; });
    // The best few, and every warm-started shape: its search starts from a
    // placement the screening did not see.
    auto warm = [&](const Scored& s) {
      return std::any_of(
          options.warm_starts.begin(), options.warm_starts.end(),
          [&](const SearchOptions::WarmStart& w) { return w.d_pp == s.p && w.d_dp == s.d; });
    };
    std::vector<Scored> searched;
    for (size_t i = 0; i < scored.size(); ++i)
      if (i < kShapesSearched || warm(scored[i])) searched.push_back(scored[i]);
    scored = std::move(searched);
  } else {
    scored.push_back({shapes[0].first, shapes[0].second, 0,
                      makeCostModel(cm, network, profileFor(shapes[0].first, shapes[0].second), job,
                                    shapes[0].first, shapes[0].second)});
  }

  SearchOptions per_shape = options;
  if (scored.size() > 1) {
    const double left_s =
        options.budget_seconds > 0
            ? std::max(0.05, options.budget_seconds -
                                 std::chrono::duration<double>(Clock::now() - t0)
                                     .count())
            : 0;
    per_shape.budget_seconds = left_s / scored.size();
    if (options.budget_evaluations > 0)
      per_shape.budget_evaluations = std::max<int64_t>(
          1, (options.budget_evaluations - screen_evals) /
                 static_cast<int64_t>(scored.size()));
  }
  double best = kInf;
  std::string reason;
  out.evaluations = screen_evals;
  for (const Scored& s : scored) {
    SearchResult r = runSearch(*s.model, per_shape);
    out.evaluations += r.evaluations;
    if (!r.best.eval.feasible && reason.empty())
      reason = r.best.eval.infeasible_reason;
    for (auto& st : out.shapes)
      if (st.d_pp == s.p && st.d_dp == s.d) st.best_s = std::min(st.best_s, r.best.cost);
    if (shapes.size() == 1) out.shapes.push_back({s.p, s.d, r.best.cost});
    if (r.best.cost < best || out.model == nullptr) {
      best = r.best.cost;
      out.ours = std::move(r);
      out.model = s.model;
      out.d_pp = s.p;
      out.d_dp = s.d;
    }
  }
  out.search_seconds =
      std::chrono::duration<double>(Clock::now() - t0).count();
  if (!std::isfinite(best)) {
    GEOPIPE_THROW(InfeasibleError, "no placement of job '", job.name,
                  "' fits: ", reason.empty() ? "every candidate is infeasible" : reason,
                  "; use devices with more memory, more pipeline stages, a "
                  "smaller micro_batch or the 1f1b schedule",
                  buffers_charged ? ", or keep fewer AC-SGD buffers in memory (buffer_store: mmap, "
                                    "buffer_format: quantized, fewer data.num_samples)"
                                  : "");
  }
  if (with_baselines) {
    out.in_order = inOrderPlacement(*out.model);
    SearchOptions ro = options;
    ro.algorithm = "random";
    ro.budget_evaluations = std::max<int64_t>(1, out.ours.evaluations);
    ro.budget_seconds = options.budget_seconds > 0
                            ? std::max(options.budget_seconds,
                                       out.ours.seconds)
                            : 0;
    out.random = randomSearch(*out.model, ro);
    out.has_baselines = true;
  }
  return out;
}

}  // namespace geopipe::scheduler
