// Cost models that price a partition of devices into pipeline stage groups:
// `dtfm` (the DT-FM paper's formulas, exactly) and `geopipe` (the default).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <Eigen/Dense>

#include "geopipe/job_spec.h"
#include "scheduler/allocation.h"
#include "scheduler/matching.h"
#include "scheduler/model_profile.h"
#include "scheduler/network.h"

namespace geopipe::scheduler {

// What a cost model needs to remember about one stage group (the D_dp
// devices that hold the same stage). Computed once per distinct group and
// cached by the Evaluator.
struct GroupStats {
  double dp_s = 0;          // dtfm: the group's DataPCost term
  double dp_lat_s = 0;      // geopipe: the job's exchange, latency part
  double dp_s_per_gb = 0;   // geopipe: the job's exchange, seconds per GB
  // geopipe: the two collectives a data-parallel exchange can use (see
  // GradExchange). Ring all-reduce of G bytes: ring_lat_s + G·ring_s_per_gb;
  // direct all-gather of a G-byte blob from every member:
  // gather_lat_s + G·gather_s_per_gb (the slowest ordered pair's α and 8/β).
  double ring_lat_s = 0, ring_s_per_gb = 0;
  double gather_lat_s = 0, gather_s_per_gb = 0;
  // geopipe: one device of each site the group uses. Links are set by the
  // two sites, so pairs of these give every link between two groups.
  std::vector<int> site_devices;
  double min_tflops = 0;    // slowest device of the group
  double min_memory_gb = 0; // smallest device memory of the group (GiB)
  // The device that sets the group's data-parallel cost (dtfm: the i of the
  // max in DataPCost; geopipe: an end of the slowest ring hop); -1 if none.
  // Local search moves it first (a targeted move on the bottleneck group).
  int worst_device = -1;
  // The scalar the search compares groups by: dp_s + dp_lat_s + dp_s_per_gb.
  double dpKey() const { return dp_s + dp_lat_s + dp_s_per_gb; }
};

// The price of one pipeline: a fixed order of groups and their pairing.
struct PathEval {
  Breakdown breakdown;
  double total_s = 0;  // breakdown.total(), or +inf when infeasible
  std::vector<std::pair<int, int>> layers;  // [first, last) per stage
  bool feasible = true;
  std::string infeasible_reason;  // why, when !feasible (memory)
  // geopipe: bytes each device of stage s must hold (weights, optimizer
  // state, in-flight activations, AC-SGD buffers in memory); empty for dtfm.
  std::vector<double> stage_memory_bytes;
  // geopipe, DiLoCo: one outer exchange (every stage group's at once), in
  // seconds; breakdown.dp_comm_s holds its exposed share per step.
  double outer_exchange_s = 0;
};

// A CostModel prices candidates for one shape (D_pp groups of D_dp devices).
// It is immutable after construction and safe to call from several search
// threads at once. The Evaluator drives it: groupStats() per group,
// pairCost() per ordered pair of groups (w(a,b), a bottleneck matching over
// edge()), pathWeights() turns those into TSP weights, and evaluatePath()
// prices the chosen order. evaluateAllocation() prices a fixed allocation
// (used for the in-order baseline, whose order and pairing are not
// optimised).
class CostModel {
 public:
  CostModel(std::shared_ptr<const Network> network, ModelProfile profile,
            int d_pp, int d_dp);
  virtual ~CostModel() = default;

  virtual std::string name() const = 0;
  int dPp() const { return d_pp_; }
  int dDp() const { return d_dp_; }
  const Network& network() const { return *network_; }
  const ModelProfile& profile() const { return profile_; }

  // Directed pipeline edge cost of device i feeding device j, seconds.
  double edge(int i, int j) const { return edge_(i, j); }

  virtual GroupStats groupStats(const std::vector<int>& devices) const = 0;

  // w(a -> b): bottleneck perfect matching of edge() between the groups.
  double pairCost(const std::vector<int>& a, const std::vector<int>& b) const;
  // The same, warm-started from `hint` (the pair's value before a move; see
  // bottleneckValue). Exact for any hint.
  double pairCost(const std::vector<int>& a, const std::vector<int>& b,
                  double hint) const;
  // Value and deficiency (BottleneckMatching::deficiency), no assignment.
  BottleneckMatching pairBottleneck(const std::vector<int>& a,
                                    const std::vector<int>& b,
                                    double hint = -1.0) const;
  // O(D_dp^2) lower bound of pairCost (bottleneckLowerBound).
  double pairLowerBound(const std::vector<int>& a,
                        const std::vector<int>& b) const;
  BottleneckMatching pairMatching(const std::vector<int>& a,
                                  const std::vector<int>& b) const;

  // Weights of the open TSP over groups; default w itself.
  virtual Eigen::MatrixXd pathWeights(const std::vector<GroupStats>& stats,
                                      const Eigen::MatrixXd& w) const {
    return w;
  }

  // True when evaluatePath's total is a max of group terms plus the sum of
  // pathWeights along the order, so the TSP optimum is the best order.
  virtual bool pathIsAdditive() const { return true; }

  // Prices a pipeline: stats[s] of the group at stage s, edges[s] the
  // bottleneck edge between stages s and s+1.
  virtual PathEval evaluatePath(const std::vector<GroupStats>& stats,
                                const std::vector<double>& edges) const = 0;

  // Prices a fixed allocation with its own order and replica pairing.
  PathEval evaluateAllocation(const Allocation& allocation) const;

 protected:
  std::shared_ptr<const Network> network_;
  ModelProfile profile_;
  int d_pp_;
  int d_dp_;
  Eigen::MatrixXd edge_;  // n x n, filled by the subclass constructor
};

// The DT-FM paper's cost model (symbols as in the paper; α in seconds here):
//   DataPCost = max_k max_{i∈P_k} Σ_{j∈P_k, j≠i} 2·(α_ij + 8·c_grad/(β_ij·D_dp))
//   w(a,b)    = min over perfect matchings of max edge α_ij + 8·c_act/β_ij
//   PipelinePCost = open TSP over groups under w
//   total     = DataPCost + 2·PipelinePCost
// Directed links i -> j are used throughout (the paper's links are
// symmetric). Compute, bubble and memory are ignored, as in the paper.
class DtfmCostModel : public CostModel {
 public:
  // c_grad_gb, c_act_gb: the paper's payloads in GB (10^9 bytes).
  DtfmCostModel(std::shared_ptr<const Network> network, ModelProfile profile,
                int d_pp, int d_dp, double c_grad_gb, double c_act_gb);
  std::string name() const override { return "dtfm"; }
  GroupStats groupStats(const std::vector<int>& devices) const override;
  PathEval evaluatePath(const std::vector<GroupStats>& stats,
                        const std::vector<double>& edges) const override;
  double cGradGb() const { return c_grad_gb_; }
  double cActGb() const { return c_act_gb_; }

 private:
  double c_grad_gb_;
  double c_act_gb_;
};

// geopipe's model (docs/scheduler.md derives every term). Per micro-batch:
// stage compute t_s = mb·FLOPs(layers_s)/TFLOPS_min(group); boundary cost
// c_b = bottleneck pair of (α_ij + fwd bytes/β_ij) + (α_ji + bwd bytes/β_ji);
// step = Σ t_s + Σ c_b + (min(M,W)−1)·pace + (M−W)⁺·max(pace, (Σ t_s + Σ c_b)/W)
//        + exposed DP, with pace = max(t_max, ρ·c_max), ρ the busier link
// direction's share of the boundary bytes and W the schedule's in-flight
// window (1F1B: D_pp, GPipe: M); each stage's gradient exchange (ring
// all-reduce, all-gather or PowerSGD's, as GradientSync runs it) overlaps
// the backward drain below it, a tied embedding's two-stage sum follows
// the first and last stage's exchanges, and the per-step scalar all-reduces
// (gradient norm, fp16's flags) add what their latency does not hide.
// Layers are split unevenly to balance the stages' speeds; memory per device
// (weights + optimizer state + in-flight activations of the schedule) must
// fit or the candidate is infeasible.
class GeopipeCostModel : public CostModel {
 public:
  GeopipeCostModel(std::shared_ptr<const Network> network, ModelProfile profile,
                   int d_pp, int d_dp, std::string schedule);
  std::string name() const override { return "geopipe"; }
  GroupStats groupStats(const std::vector<int>& devices) const override;
  Eigen::MatrixXd pathWeights(const std::vector<GroupStats>& stats,
                              const Eigen::MatrixXd& w) const override;
  bool pathIsAdditive() const override { return false; }
  PathEval evaluatePath(const std::vector<GroupStats>& stats,
                        const std::vector<double>& edges) const override;
  int microBatches() const { return micro_batches_; }

  // Bytes one training step puts on the wire as this model prices them, for
  // a layer split (PathEval::layers). Tests compare them with the bytes the
  // runtime's transport counts.
  struct StepBytes {
    double boundary_fwd = 0;  // activations over one boundary, one replica
    double boundary_bwd = 0;  // their gradients, the reverse direction
    std::vector<DpBytes> dp;  // per stage: one member's data-parallel exchange
    double tied = 0;          // tied weight, each way between stage 0 and the last, per replica
  };
  StepBytes stepBytes(const std::vector<std::pair<int, int>>& layers) const;

 private:
  // Parameters and 1-D parameters of stage s of p holding blocks [first, last).
  std::pair<double, double> stageParams(int s, int p, int first, int last) const;
  // Seconds of the tied-weight sum between the devices of the first and the
  // last stage (the slowest pair); 0 when untied or with one stage.
  double tiedSeconds(const GroupStats& first, const GroupStats& last, int p) const;
  // Latency between the devices of stage s and stage 0 of a replica
  // (pairedBound of max(α_ij, α_ji) over the two groups), per stage.
  std::vector<double> latencyToFirst(const std::vector<GroupStats>& stats) const;
  // Latency from the devices of stage s-1 to those of stage s (pairedBound
  // of α over the two groups), per stage s >= 1: a receipt's way back.
  std::vector<double> receiptLatency(const std::vector<GroupStats>& stats) const;

  // Body layers per stage, contiguous, minimising the slowest stage's
  // compute when the blocks differ in cost (a model's own, ModelDef::cost).
  std::vector<int> contiguousSplit(const std::vector<GroupStats>& stats) const;

  std::string schedule_;  // gpipe | 1f1b
  int micro_batches_;     // M per replica per step
  // Every block costs the same (any GPT): the split is by counts alone.
  bool uniform_layers_ = true;
};

// The cost model names accepted by makeCostModel.
std::vector<std::string> costModelNames();

// Builds the named model ("dtfm" or "geopipe") for shape d_pp x d_dp. dtfm's
// payloads come from job.scheduler.grad_payload_gb / act_payload_gb when set,
// else from the profile: c_grad = gradient wire bytes of one even stage,
// c_act = the mean of forward and backward wire bytes of one replica's
// samples per step. Throws ConfigError for an unknown name.
std::unique_ptr<CostModel> makeCostModel(
    const std::string& name, std::shared_ptr<const Network> network,
    const ModelProfile& profile, const JobSpec& job, int d_pp, int d_dp);

}  // namespace geopipe::scheduler
