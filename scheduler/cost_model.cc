// dtfm and geopipe cost models.
#include "scheduler/cost_model.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "src/common/strings.h"
#include "geopipe/error.h"

namespace geopipe::scheduler {

namespace {
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// Even split of L layers into p stages, the remainder to the first stages.
std::vector<std::pair<int, int>> evenLayers(int layers, int p) {
  std::vector<std::pair<int, int>> out;
  int first = 0;
  for (int s = 0; s < p; ++s) {
    const int n = layers / p + (s < layers % p ? 1 : 0);
    out.emplace_back(first, first + n);
    first += n;
  }
  return out;
}
// A lower bound of the bottleneck matching of f between two disjoint
// groups given by one device per site (f set by the two sites):
// max(max_i min_j f(i, j), max_j min_i f(i, j)). Every replica's device of
// one group is paired with one of the other, so some pair costs at least
// this; it is what the pairing costs when each device's partner is its
// cheapest, as the scheduler's matchings of nearby replicas make it.
template <typename F>
double pairedBound(const std::vector<int>& a, const std::vector<int>& b, F f) {
  double lb = 0;
  for (int i : a) {
    double m = kInf;
    for (int j : b) m = std::min(m, f(i, j));
    lb = std::max(lb, m);
  }
  for (int j : b) {
    double m = kInf;
    for (int i : a) m = std::min(m, f(i, j));
    lb = std::max(lb, m);
  }
  return lb;
}
}  // namespace

CostModel::CostModel(std::shared_ptr<const Network> network,
                     ModelProfile profile, int d_pp, int d_dp)
    : network_(std::move(network)),
      profile_(std::move(profile)),
      d_pp_(d_pp),
      d_dp_(d_dp) {
  GEOPIPE_CHECK(d_pp_ >= 1 && d_dp_ >= 1, ConfigError,
                "pipeline_stages and data_parallel must be >= 1, got ", d_pp_,
                " x ", d_dp_);
}

double CostModel::pairCost(const std::vector<int>& a,
                           const std::vector<int>& b) const {
  return pairCost(a, b, -1.0);
}

double CostModel::pairCost(const std::vector<int>& a, const std::vector<int>& b,
                           double hint) const {
  return pairBottleneck(a, b, hint).bottleneck;
}

BottleneckMatching CostModel::pairBottleneck(const std::vector<int>& a,
                                             const std::vector<int>& b,
                                             double hint) const {
  Eigen::MatrixXd c(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i)
    for (size_t j = 0; j < b.size(); ++j) c(i, j) = edge_(a[i], b[j]);
  return bottleneckValueAndDeficiency(c, hint);
}

double CostModel::pairLowerBound(const std::vector<int>& a,
                                 const std::vector<int>& b) const {
  // max(max_i min_j e_ij, max_j min_i e_ij) without building the matrix.
  double lb = 0;
  for (int i : a) {
    double m = std::numeric_limits<double>::infinity();
    for (int j : b) m = std::min(m, edge_(i, j));
    lb = std::max(lb, m);
  }
  for (int j : b) {
    double m = std::numeric_limits<double>::infinity();
    for (int i : a) m = std::min(m, edge_(i, j));
    lb = std::max(lb, m);
  }
  return lb;
}

BottleneckMatching CostModel::pairMatching(const std::vector<int>& a,
                                           const std::vector<int>& b) const {
  Eigen::MatrixXd c(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i)
    for (size_t j = 0; j < b.size(); ++j) c(i, j) = edge_(a[i], b[j]);
  return bottleneckMatching(c);
}

PathEval CostModel::evaluateAllocation(const Allocation& allocation) const {
  const int p = static_cast<int>(allocation.stages.size());
  std::vector<GroupStats> stats;
  std::vector<double> edges;
  for (int s = 0; s < p; ++s) {
    std::vector<int> devs = allocation.stages[s];
    std::sort(devs.begin(), devs.end());
    stats.push_back(groupStats(devs));
    if (s + 1 < p) {
      double e = 0;
      for (size_t r = 0; r < allocation.stages[s].size(); ++r)
        e = std::max(e, edge_(allocation.stages[s][r],
                              allocation.stages[s + 1][r]));
      edges.push_back(e);
    }
  }
  return evaluatePath(stats, edges);
}

// ---------------------------------------------------------------- dtfm ----

DtfmCostModel::DtfmCostModel(std::shared_ptr<const Network> network,
                             ModelProfile profile, int d_pp, int d_dp,
                             double c_grad_gb, double c_act_gb)
    : CostModel(std::move(network), std::move(profile), d_pp, d_dp),
      c_grad_gb_(c_grad_gb),
      c_act_gb_(c_act_gb) {
  GEOPIPE_CHECK(c_grad_gb_ >= 0 && c_act_gb_ >= 0, ConfigError,
                "scheduler payloads must be >= 0 GB, got c_grad = ", c_grad_gb_,
                ", c_act = ", c_act_gb_);
  const int n = network_->size();
  edge_.setZero(n, n);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j)
      if (i != j) edge_(i, j) = network_->transferS(i, j, c_act_gb_);
}

GroupStats DtfmCostModel::groupStats(const std::vector<int>& devices) const {
  // max_{i∈P_k} Σ_{j∈P_k, j≠i} 2·(α_ij + 8·c_grad/(β_ij·D_dp))
  GroupStats g;
  const double per_peer_gb = c_grad_gb_ / d_dp_;
  for (int i : devices) {
    double sum = 0;
    for (int j : devices)
      if (j != i) sum += 2.0 * network_->transferS(i, j, per_peer_gb);
    if (sum > g.dp_s || g.worst_device < 0) {
      g.dp_s = std::max(g.dp_s, sum);
      g.worst_device = i;
    }
  }
  g.min_tflops = kInf;
  g.min_memory_gb = kInf;
  for (int i : devices) {
    g.min_tflops = std::min(g.min_tflops, network_->tflops(i));
    g.min_memory_gb = std::min(g.min_memory_gb, network_->memoryGb(i));
  }
  return g;
}

PathEval DtfmCostModel::evaluatePath(const std::vector<GroupStats>& stats,
                                     const std::vector<double>& edges) const {
  PathEval e;
  double dp = 0, pp = 0;
  for (const GroupStats& g : stats) dp = std::max(dp, g.dp_s);
  for (double c : edges) pp += c;
  e.breakdown.dp_comm_s = dp;
  e.breakdown.pipeline_comm_s = 2.0 * pp;
  e.total_s = e.breakdown.total();
  e.layers = evenLayers(profile_.numLayers(), static_cast<int>(stats.size()));
  return e;
}

// ------------------------------------------------------------- geopipe ----

GeopipeCostModel::GeopipeCostModel(std::shared_ptr<const Network> network,
                                   ModelProfile profile, int d_pp, int d_dp,
                                   std::string schedule)
    : CostModel(std::move(network), std::move(profile), d_pp, d_dp),
      schedule_(std::move(schedule)) {
  GEOPIPE_CHECK(schedule_ == "gpipe" || schedule_ == "1f1b", ConfigError,
                "parallelism.schedule '", schedule_,
                "' is not one of gpipe, 1f1b");
  const int per_step = d_dp_ * profile_.micro_batch;
  GEOPIPE_CHECK(profile_.global_batch >= per_step &&
                    profile_.global_batch % per_step == 0,
                ConfigError, "training.global_batch = ", profile_.global_batch,
                " is not a positive multiple of data_parallel (", d_dp_,
                ") x micro_batch (", profile_.micro_batch,
                "); change global_batch or micro_batch");
  micro_batches_ = profile_.global_batch / per_step;
  for (const LayerProfile& l : profile_.layers) {
    uniform_layers_ = uniform_layers_ && l.fwd_flops == profile_.layers[0].fwd_flops &&
                      l.bwd_flops == profile_.layers[0].bwd_flops;
  }
  const int n = network_->size();
  const double mb = profile_.micro_batch;
  const double fwd_gb = mb * profile_.act_fwd_wire_bytes / 1e9;
  const double bwd_gb = mb * profile_.act_bwd_wire_bytes / 1e9;
  edge_.setZero(n, n);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j)
      if (i != j)
        edge_(i, j) = network_->transferS(i, j, fwd_gb) +
                      network_->transferS(j, i, bwd_gb);
}

GroupStats GeopipeCostModel::groupStats(const std::vector<int>& devices) const {
  // Ring all-reduce over the group in listing order (devices of one site are
  // adjacent, so the ring crosses each site boundary once): 2(D−1) steps,
  // each moving G/D bytes over every ring hop at once, so each step costs the
  // slowest hop: 2(D−1)·(α_max + 8·(G/D)/β_min). Every member sends and
  // receives at once, so β is each link's duplex bandwidth (the rate it
  // keeps while the reverse direction is busy; its bandwidth when not
  // given), as for the all-gather. Exact in pattern for D = 2, where the
  // two members send to each other; for D ≥ 3 the reverse of a hop carries
  // no data, but each host's uplink still carries its data and the
  // acknowledgements of what it receives, which is what slows TCP there
  // (measured only at D = 2).
  // Direct all-gather (allGatherBytes): every member sends its blob to every
  // other at once, each on its own link (as the topology and the link
  // emulator model links: per directed pair), so it lasts as long as the
  // slowest ordered pair: α_max + 8·G/β_min over all pairs.
  GroupStats g;
  const int d = static_cast<int>(devices.size());
  // Links are set by the two sites, so the group's pairs are priced from
  // one device of each site plus a second one of each site holding two or
  // more (their intra-site link): O(sites^2) instead of O(D^2).
  std::vector<int> reps;
  for (int i : devices) {
    int same = 0;
    for (int j : reps) same += network_->site(j) == network_->site(i) ? 1 : 0;
    if (same == 0) g.site_devices.push_back(i);
    if (same < 2) reps.push_back(i);
  }
  g.min_tflops = kInf;
  g.min_memory_gb = kInf;
  for (int i : devices) {
    g.min_tflops = std::min(g.min_tflops, network_->tflops(i));
    g.min_memory_gb = std::min(g.min_memory_gb, network_->memoryGb(i));
  }
  if (d < 2) return g;
  double lat = 0, per_gb = 0, worst_hop = -1;
  for (int k = 0; k < d; ++k) {
    const int i = devices[k], j = devices[(k + 1) % d];
    const double hop = network_->exchangeTransferS(i, j, 1.0);
    lat = std::max(lat, network_->latencyS(i, j));
    per_gb = std::max(per_gb, hop - network_->latencyS(i, j));
    if (hop > worst_hop) {
      worst_hop = hop;
      g.worst_device = (k & 1) ? i : j;  // either end; alternate
    }
  }
  g.ring_lat_s = 2.0 * (d - 1) * lat;
  g.ring_s_per_gb = 2.0 * (d - 1) / d * per_gb;
  for (int i : reps)
    for (int j : reps)
      if (i != j) {
        g.gather_lat_s = std::max(g.gather_lat_s, network_->latencyS(i, j));
        g.gather_s_per_gb = std::max(
            g.gather_s_per_gb, network_->exchangeTransferS(i, j, 1.0) - network_->latencyS(i, j));
      }
  switch (profile_.grad_exchange) {
    case GradExchange::RING_ALL_REDUCE:
      g.dp_lat_s = g.ring_lat_s;
      g.dp_s_per_gb = g.ring_s_per_gb;
      break;
    case GradExchange::ALL_GATHER:
      g.dp_lat_s = g.gather_lat_s;
      g.dp_s_per_gb = g.gather_s_per_gb;
      break;
    case GradExchange::POWERSGD:
      g.dp_lat_s = g.ring_lat_s + 2 * g.gather_lat_s;
      g.dp_s_per_gb = g.gather_s_per_gb;
      break;
  }
  return g;
}

std::pair<double, double> GeopipeCostModel::stageParams(int s, int p, int first, int last) const {
  double params = profile_.params(first, last);
  double vectors = profile_.vectorParams(first, last);
  if (s == 0) params += profile_.embed_params;
  if (s == p - 1) {
    params += profile_.head_params;
    vectors += profile_.head_vector_params;
    // One stage: a tied head is the embedding's tensor, not a copy.
    if (p == 1) params -= profile_.tied_params;
  }
  return {params, vectors};
}

double GeopipeCostModel::tiedSeconds(const GroupStats& first, const GroupStats& last, int p) const {
  if (p < 2 || profile_.tied_params <= 0) return 0;
  // allReduceSum over the two members {owner, user}: each sends half of the
  // fp32 gradient (G/2), then the other half summed, as soon as the peer's
  // first half arrives (1 MB chunks). Direction i -> j ends when i has
  // serialised all G bytes or, later, when j's first half has reached i and
  // i's second half follows it; then α_ij to arrive. Each replica pairs its
  // own two devices; the model takes pairedBound over the groups. Both
  // directions are busy at once: duplex bandwidths.
  const double gb = 4 * profile_.tied_params / 1e9;
  auto way = [&](int a, int b) {
    return network_->latencyS(a, b) +
           std::max(network_->exchangeTransferS(a, b, gb) - network_->latencyS(a, b),
                    network_->exchangeTransferS(b, a, gb / 2));
  };
  return pairedBound(first.site_devices, last.site_devices,
                     [&](int i, int j) { return std::max(way(i, j), way(j, i)); });
}

std::vector<double> GeopipeCostModel::latencyToFirst(const std::vector<GroupStats>& stats) const {
  std::vector<double> lat(stats.size(), 0.0);
  for (size_t s = 1; s < stats.size(); ++s) {
    lat[s] = pairedBound(stats[s].site_devices, stats[0].site_devices, [&](int i, int j) {
      return std::max(network_->latencyS(i, j), network_->latencyS(j, i));
    });
  }
  return lat;
}

std::vector<double> GeopipeCostModel::receiptLatency(const std::vector<GroupStats>& stats) const {
  std::vector<double> lat(stats.size(), 0.0);
  for (size_t s = 1; s < stats.size(); ++s) {
    lat[s] = pairedBound(stats[s - 1].site_devices, stats[s].site_devices,
                         [&](int i, int j) { return network_->latencyS(i, j); });
  }
  return lat;
}

GeopipeCostModel::StepBytes GeopipeCostModel::stepBytes(
    const std::vector<std::pair<int, int>>& layers) const {
  StepBytes b;
  const int p = static_cast<int>(layers.size());
  const double samples = static_cast<double>(micro_batches_) * profile_.micro_batch;
  b.boundary_fwd = samples * profile_.act_fwd_wire_bytes;
  b.boundary_bwd = samples * profile_.act_bwd_wire_bytes;
  for (int s = 0; s < p; ++s) {
    const auto [params, vectors] = stageParams(s, p, layers[s].first, layers[s].second);
    b.dp.push_back(profile_.dpBytes(params, vectors));
  }
  if (p > 1) b.tied = 4 * profile_.tied_params;
  return b;
}

Eigen::MatrixXd GeopipeCostModel::pathWeights(
    const std::vector<GroupStats>& stats, const Eigen::MatrixXd& w) const {
  // The step time is not additive over edges because of its (M−1)·max term.
  // We price each edge by c + (M−1)·max(0, c − t_bal), where t_bal is the
  // per-micro-batch stage time of a perfectly balanced pipeline
  // (total FLOPs / Σ group speed): an edge slower than compute stalls every
  // micro-batch. evaluatePath then prices the chosen order exactly.
  double speed = 0;
  for (const GroupStats& g : stats) speed += g.min_tflops * 1e12;
  const double flops =
      profile_.micro_batch *
      (profile_.flopsPerSample(0, profile_.numLayers()) + profile_.head_flops);
  const double t_bal = flops / speed;
  Eigen::MatrixXd out = w;
  for (int a = 0; a < out.rows(); ++a)
    for (int b = 0; b < out.cols(); ++b)
      out(a, b) += (micro_batches_ - 1) * std::max(0.0, w(a, b) - t_bal);
  return out;
}

// A bound T on every stage's compute is reachable when each stage in turn
// takes as many blocks as fit under T (leaving one for each later stage) and
// the last stage's rest fits too; bisection on T finds the smallest, and
// the split that reaches it. O(p log L) per try.
std::vector<int> GeopipeCostModel::contiguousSplit(const std::vector<GroupStats>& stats) const {
  const int p = static_cast<int>(stats.size());
  const int L = profile_.numLayers();
  const double mb = profile_.micro_batch;
  std::vector<double> prefix(static_cast<size_t>(L) + 1, 0.0);
  for (int l = 0; l < L; ++l) prefix[l + 1] = prefix[l] + profile_.flopsPerSample(l, l + 1);
  auto time = [&](int s, int from, int to) {
    double f = prefix[to] - prefix[from];
    if (s == p - 1) f += profile_.head_flops;
    return mb * f / (stats[s].min_tflops * 1e12);
  };
  std::vector<int> count(p, 1);
  auto fits = [&](double bound) {
    int from = 0;
    for (int s = 0; s < p - 1; ++s) {
      if (time(s, from, from + 1) > bound) return false;
      // The last `to` in [from + 1, L - (p - 1 - s)] with time(s, from, to) <= bound.
      const double most = prefix[from] + bound * stats[s].min_tflops * 1e12 / mb;
      const auto end = prefix.begin() + (L - (p - 1 - s)) + 1;
      const int to = static_cast<int>(std::upper_bound(prefix.begin() + from + 1, end, most) -
                                      prefix.begin()) -
                     1;
      count[s] = std::max(to, from + 1) - from;
      from += count[s];
    }
    count[p - 1] = L - from;
    return time(p - 1, from, L) <= bound;
  };
  double lo = 0, hi = 0;
  for (int s = 0; s < p; ++s) hi = std::max(hi, time(s, 0, L));  // any split fits under it
  for (int i = 0; i < 64; ++i) {
    const double mid = 0.5 * (lo + hi);
    (fits(mid) ? hi : lo) = mid;
  }
  fits(hi);
  return count;
}

PathEval GeopipeCostModel::evaluatePath(const std::vector<GroupStats>& stats,
                                        const std::vector<double>& edges) const {
  PathEval e;
  const int p = static_cast<int>(stats.size());
  const int L = profile_.numLayers();
  const double mb = profile_.micro_batch;
  const int M = micro_batches_;
  GEOPIPE_CHECK(p <= L, InfeasibleError, "pipeline_stages = ", p,
                " exceeds model.layers = ", L,
                "; every stage needs at least one layer");
  // Uneven layers: start with one layer per stage, then give each further
  // layer to the stage whose time after taking it is smallest. Stage time is
  // convex in its layer count, so this greedy minimises max_s t_s.
  const double layer_flops = profile_.flopsPerSample(0, 1);  // uniform blocks
  std::vector<int> count(p, 1);
  auto stageTime = [&](int s, int layers) {
    double f = layers * layer_flops;
    if (s == p - 1) f += profile_.head_flops;
    return mb * f / (stats[s].min_tflops * 1e12);
  };
  if (uniform_layers_) {
    for (int l = p; l < L; ++l) {
      int best = 0;
      double best_t = kInf;
      for (int s = 0; s < p; ++s) {
        const double t = stageTime(s, count[s] + 1);
        if (t < best_t) {
          best_t = t;
          best = s;
        }
      }
      ++count[best];
    }
  } else {
    count = contiguousSplit(stats);
  }
  // A stage's time for the layers [first, first + n): the blocks' own
  // FLOPs when they differ (a model's own cost), n x one block's otherwise.
  auto stageTimeAt = [&](int s, int from, int n) {
    if (uniform_layers_) return stageTime(s, n);
    double f = profile_.flopsPerSample(from, from + n);
    if (s == p - 1) f += profile_.head_flops;
    return mb * f / (stats[s].min_tflops * 1e12);
  };
  int first = 0;
  double t_sum = 0, t_max = 0, c_sum = 0, c_max = 0, dp = 0;
  std::vector<double> dp_stage(p), t_stage(p), outer(p);
  for (int s = 0; s < p; ++s) {
    e.layers.emplace_back(first, first + count[s]);
    const double t = stageTimeAt(s, first, count[s]);
    t_sum += t;
    t_max = std::max(t_max, t);
    // Memory: weights + grads + optimizer state of the stage's parameters
    // (embedding on the first stage, head on the last), plus activations of
    // the micro-batches in flight: GPipe keeps all M, 1F1B at most p − s.
    const auto [params, vector_params] = stageParams(s, p, first, first + count[s]);
    // AC-SGD stores kept in memory (buffer_store: memory) add theirs.
    const int in_flight = schedule_ == "gpipe" ? M : std::min(M, p - s);
    const double state = params * profile_.state_bytes_per_param;
    double acts = in_flight * mb * profile_.actMemPerSample(first, first + count[s]);
    // 16-bit compute (model.dtype bf16/fp16): autocast casts the weights of
    // every matrix product (the blocks' and the LM head's, not the embedding
    // lookup) for each micro-batch's forward, and that micro-batch's graph
    // keeps the copies until its backward: in_flight copies of them.
    if (profile_.dtype_bytes < 4) {
      double cast =
          profile_.params(first, first + count[s]) - profile_.vectorParams(first, first + count[s]);
      if (s == p - 1) cast += profile_.head_params - profile_.head_vector_params;
      acts += in_flight * profile_.dtype_bytes * cast;
    }
    const int stores = profile_.acsgd.in_memory ? AcsgdStores::storesAt(s, p) : 0;
    const double buffers = stores * profile_.acsgd.store_bytes;
    const double mem = state + acts + buffers;
    e.stage_memory_bytes.push_back(mem);
    if (mem > stats[s].min_memory_gb * kGiB && e.feasible) {
      e.feasible = false;
      e.infeasible_reason = detail::concat(
          "stage ", s, " (layers ", first, "-", first + count[s] - 1,
          ") needs ", mem / kGiB, " GiB per device but its smallest device has ",
          stats[s].min_memory_gb, " GiB");
      if (buffers > 0) {
        e.infeasible_reason +=
            detail::concat(" (weights and optimizer state ", state / kGiB, " GiB, activations ",
                           acts / kGiB, " GiB, AC-SGD buffers ", buffers / kGiB, " GiB in ", stores,
                           " store", stores > 1 ? "s" : "", ")");
      }
    }
    // Data-parallel exchange of the stage's gradients as GradientSync runs
    // it (ring all-reduce, all-gather(s) or both), priced on the wire after
    // compression. It starts when the stage's last backward is done.
    const DpBytes bytes = profile_.dpBytes(params, vector_params);
    dp_stage[s] = 0;
    outer[s] = 0;
    if (bytes.ring_bytes > 0)
      dp_stage[s] += stats[s].ring_lat_s + bytes.ring_bytes / 1e9 * stats[s].ring_s_per_gb;
    if (bytes.gathers > 0)
      dp_stage[s] += bytes.gathers * stats[s].gather_lat_s +
                     bytes.gather_bytes / 1e9 * stats[s].gather_s_per_gb;
    // DiLoCo: the same exchange, but once a round after the optimizer step.
    if (profile_.outer_every > 0) std::swap(outer[s], dp_stage[s]);
    t_stage[s] = t;
    first += count[s];
  }
  for (double c : edges) {
    c_sum += c;
    c_max = std::max(c_max, c);
  }
  // Stage s finishes its last backward before stage 0 does, by the backward
  // drain below it: the gradient still has to cross boundaries s-1 .. 0
  // (half of each round trip c_b) and stages s-1 .. 0 still run their
  // backward (2/3 of t_k: backward is twice the forward). Its all-reduce
  // overlaps that drain, so only what sticks out past the end of stage 0's
  // backward adds to the step (checked against the emulator: a plain
  // max_s DP_s overpredicted world-wide placements by up to 50%).
  // Each stage's exchange ends done[s] after stage 0's backward. A tied
  // embedding's sum (first and last stage of each replica) starts when both
  // have exchanged and holds both up.
  // With an exchange every step, stage s >= 1 starts its exchange only when
  // stage s-1's receipt of its last gradient is back (the runtime's
  // ExecutorOptions::send_receipt: the gradient and the exchange would
  // otherwise share the sender's uplink), so it loses the last crossing
  // (half of c_{s-1}) and the receipt's latency from its drain.
  const bool receipts = d_dp_ > 1 && profile_.outer_every == 0;
  const std::vector<double> receipt =
      receipts ? receiptLatency(stats) : std::vector<double>(p, 0.0);
  // (fp16's flags below keep drained[] without the receipt: their shift is
  // added to every stage's exchange, which would charge the receipt twice.)
  double drain = 0;
  std::vector<double> done(p), drained(p);
  for (int s = 0; s < p; ++s) {
    const double held = s > 0 && receipts ? 0.5 * edges[s - 1] + receipt[s] : 0.0;
    drained[s] = drain;
    done[s] = dp_stage[s] - drain + held;
    if (s + 1 < p) drain += t_stage[s] * 2.0 / 3.0 + 0.5 * edges[s];
  }
  const double tied = tiedSeconds(stats.front(), stats.back(), p);
  if (tied > 0) done[0] = done[p - 1] = std::max(done[0], done[p - 1]) + tied;
  // Scalar all-reduces over a replica's stages (8 bytes to every other
  // stage): each stage sends its value when it gets there, so the one that
  // matters is stage 0's wait for the others' values, sent earlier by their
  // drain; the others' wait for stage 0's hides behind the next step's first
  // activations, which cross the same links after stage 0 has started it.
  const std::vector<double> lat0 = (profile_.norm_sync || profile_.overflow_sync)
                                       ? latencyToFirst(stats)
                                       : std::vector<double>(p, 0.0);
  double shift = 0;  // fp16's flags, before the exchanges
  if (profile_.overflow_sync) {
    for (int s = 1; s < p; ++s) shift = std::max(shift, lat0[s] - drained[s]);
    double replicas = 0;  // then over each stage's replicas, at once
    for (const GroupStats& g : stats) replicas = std::max(replicas, g.gather_lat_s);
    if (profile_.outer_every == 0) shift += replicas;  // DiLoCo: the replica alone
  }
  for (int s = 0; s < p; ++s) {
    dp = std::max(dp, shift + done[s]);
    if (profile_.norm_sync && s > 0) dp = std::max(dp, shift + done[s] + lat0[s]);
  }

  // After the first micro-batch, each further one follows at the pace of
  // the slowest resource (checked against the link emulator, see
  // docs/scheduler.md "Step time"):
  //  - the slowest stage's compute t_max;
  //  - the busiest link direction: links are full duplex, so activations
  //    (s -> s+1) and gradients (s+1 -> s) of different micro-batches cross
  //    at once; that direction carries the share rho of c_max's bytes;
  //  - the schedule's window: 1F1B keeps at most W = D_pp micro-batches in
  //    flight on stage 0, so micro-batch W + k cannot start before
  //    micro-batch k has made its round trip (t_sum + c_sum); past the first
  //    W, one round trip is spread over W micro-batches. GPipe: W = M.
  const double fwd = profile_.act_fwd_wire_bytes, bwd = profile_.act_bwd_wire_bytes;
  const double rho = fwd + bwd > 0 ? std::max(fwd, bwd) / (fwd + bwd) : 0.5;
  const int window = schedule_ == "gpipe" ? M : p;
  const double pace = std::max(t_max, rho * c_max);
  const double windowed = std::max(pace, (t_sum + c_sum) / std::max(1, window));
  const int first_wave = std::min(M, window);
  const double follow = (first_wave - 1) * pace + (M - first_wave) * windowed;
  // step = Σ t_s + Σ c_b (the first micro-batch's trip there and back)
  //      + follow + DP, split as:
  e.breakdown.compute_s = M * t_max;
  e.breakdown.bubble_s = t_sum - t_max;
  e.breakdown.pipeline_comm_s = c_sum + std::max(0.0, follow - (M - 1) * t_max);
  e.breakdown.dp_comm_s = dp;
  // DiLoCo: every stage group exchanges its pseudo-gradient at once after a
  // round's last step, so a round waits for the slowest group: that wait
  // spread over the round's H steps. With overlap the exchange runs behind
  // the next round, which hides it up to H steps of the rest.
  if (profile_.outer_every > 0) {
    const double round = *std::max_element(outer.begin(), outer.end());
    const double H = profile_.outer_every;
    const double hidden = profile_.outer_overlap ? H * e.breakdown.total() : 0.0;
    e.outer_exchange_s = round;
    e.breakdown.dp_comm_s += std::max(0.0, round - hidden) / H;
  }
  e.total_s = e.feasible ? e.breakdown.total() : kInf;
  return e;
}

// ------------------------------------------------------------- factory ----

std::vector<std::string> costModelNames() { return {"geopipe", "dtfm"}; }

std::unique_ptr<CostModel> makeCostModel(
    const std::string& name, std::shared_ptr<const Network> network,
    const ModelProfile& profile, const JobSpec& job, int d_pp, int d_dp) {
  if (name == "dtfm") {
    GEOPIPE_CHECK(profile.outer_every == 0, ConfigError,
                  "scheduler.cost_model dtfm prices the DT-FM paper's every-step gradient "
                  "exchange, not parallelism.data_parallel_sync kind diloco: price it with "
                  "cost_model geopipe (--cost-model geopipe)");
    const double c_grad =
        job.scheduler.grad_payload_gb.value_or(
            profile.params(0, profile.numLayers()) / d_pp *
            profile.grad_wire_bytes_per_param / 1e9);
    const double samples =
        static_cast<double>(profile.global_batch) / std::max(1, d_dp);
    const double c_act = job.scheduler.act_payload_gb.value_or(
        samples * 0.5 * (profile.act_fwd_wire_bytes + profile.act_bwd_wire_bytes) /
        1e9);
    return std::make_unique<DtfmCostModel>(std::move(network), profile, d_pp,
                                           d_dp, c_grad, c_act);
  }
  if (name == "geopipe") {
    return std::make_unique<GeopipeCostModel>(std::move(network), profile, d_pp,
                                              d_dp, job.parallelism.schedule);
  }
  const std::string hint = common::closestMatch(name, costModelNames());
  GEOPIPE_THROW(ConfigError, "scheduler.cost_model '", name, "' is not one of ",
                common::joinOr(costModelNames()),
                hint.empty() ? std::string() : "; did you mean '" + hint + "'?");
}

}  // namespace geopipe::scheduler
