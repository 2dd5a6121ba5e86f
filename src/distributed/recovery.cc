// Failure-handling rules: recoverable failures, heartbeat period, ranks.
#include "src/distributed/recovery.h"

#include <algorithm>

#include "geopipe/error.h"

namespace geopipe::distributed {

bool isRecoverableFailure(const std::string& error_type) {
  if (error_type == kProcessKilled) return true;
  ErrorKind kind;
  return kindFromName(error_type, &kind) && isLinkFailure(kind);
}

FailureDecision decideFailure(const Failure& f, const JobState& job) {
  if (f.rank >= 0 && f.generation != job.generation) {
    // Its generation ended meanwhile (a grow back): the rank names another
    // worker now, and whoever is gone is missed at the rejoin.
    return {FailureAction::NOTE,
            detail::concat("after generation ", f.generation, " ended: ", f.message)};
  }
  if (job.complete) {
    // Every step is done and committed; the others may have left already.
    return {FailureAction::NOTE_FINISHED, "after the job completed: " + f.message};
  }
  if (!isRecoverableFailure(f.type) || (!job.placed && !job.regrouping))
    return {FailureAction::END_JOB, f.message};
  if (!job.placed) {
    // A worker died while the others rejoin: rejoin_timeout bounds the wait
    // for its replacement.
    return {FailureAction::NOTE, detail::concat("while regrouping: ", f.message)};
  }
  if (job.restarts >= job.max_restarts) {
    return {FailureAction::END_JOB,
            job.max_restarts == 0
                ? f.message
                : detail::concat(f.message, "; no restart left (", job.max_restarts,
                                 " done, fault_tolerance.max_restarts)")};
  }
  if (!f.cause.empty() && f.cause == job.last_cause && job.no_step_yet) {
    return {FailureAction::END_JOB,
            detail::concat(f.message, "; generation ", job.generation - 1,
                           " ended with the same error before this generation completed a step: "
                           "it would end every restart the same way, so the job is not recovered "
                           "again")};
  }
  return {FailureAction::REGROUP, ""};
}

std::string recoveryGaveUp(const Failure& f, int rejoined, int world,
                           std::chrono::milliseconds rejoin_timeout, int min_replicas,
                           int replicas) {
  return detail::concat(
      f.message, "; recovery gave up: ", rejoined, " of ", world, " workers rejoined within ",
      rejoin_timeout.count() / 1000, " s (fault_tolerance.rejoin_timeout)",
      min_replicas < replicas ? detail::concat(", too few for ", min_replicas,
                                               " replica(s) (fault_tolerance.min_replicas)")
                              : std::string(),
      ". Start a worker for the lost tasklet sooner, ", min_replicas < replicas ? "lower" : "set",
      " fault_tolerance.min_replicas, or restart the job with --resume");
}

std::chrono::milliseconds heartbeatInterval(std::chrono::milliseconds timeout) {
  return std::clamp(timeout / 5, std::chrono::milliseconds(100), std::chrono::milliseconds(1000));
}

std::vector<int> assignRanks(const std::vector<int>& device_of_rank,
                             const std::vector<RankClaim>& claims) {
  const int world = static_cast<int>(device_of_rank.size());
  GEOPIPE_CHECK(static_cast<int>(claims.size()) == world, Error, "assignRanks: ", claims.size(),
                " workers for ", world, " ranks");
  std::vector<int> worker_of_rank(static_cast<size_t>(world), -1);
  std::vector<bool> placed(claims.size(), false);
  // Named devices first: their rank is fixed by the placement.
  for (size_t i = 0; i < claims.size(); ++i) {
    if (claims[i].device < 0) continue;
    const auto it = std::find(device_of_rank.begin(), device_of_rank.end(), claims[i].device);
    GEOPIPE_CHECK(it != device_of_rank.end(), Error, "device ", claims[i].device,
                  " is not in the placement");
    const size_t r = static_cast<size_t>(it - device_of_rank.begin());
    GEOPIPE_CHECK(worker_of_rank[r] < 0, Error, "device ", claims[i].device, " claimed twice");
    worker_of_rank[r] = static_cast<int>(i);
    placed[i] = true;
  }
  // Survivors keep their rank when it is free.
  for (size_t i = 0; i < claims.size(); ++i) {
    const int prev = claims[i].previous_rank;
    if (placed[i] || prev < 0 || prev >= world) continue;
    if (worker_of_rank[static_cast<size_t>(prev)] >= 0) continue;
    worker_of_rank[static_cast<size_t>(prev)] = static_cast<int>(i);
    placed[i] = true;
  }
  size_t next = 0;
  for (size_t i = 0; i < claims.size(); ++i) {
    if (placed[i]) continue;
    while (worker_of_rank[next] >= 0) ++next;
    worker_of_rank[next] = static_cast<int>(i);
  }
  return worker_of_rank;
}

bool joinsAsSpare(bool placed, int active, int awaited, int world, bool is_awaited_survivor) {
  if (is_awaited_survivor) return false;
  return placed || active + awaited >= world;
}

int sparesToPromote(int active, int awaited, int world, int idle_spares) {
  return std::clamp(world - active - awaited, 0, std::max(idle_spares, 0));
}

namespace {

// The most replicas in [lo, hi] whose share of the global batch is a whole
// number of micro-batches; 0 when none.
int mostReplicasSplittingTheBatch(int hi, int lo, int global_batch, int micro_batch) {
  lo = std::max(lo, 1);
  for (int r = hi; r >= lo; --r)
    if (global_batch % (r * micro_batch) == 0) return r;
  return 0;
}

}  // namespace

int shrunkReplicas(int workers, int stages, int replicas, int min_replicas, int global_batch,
                   int micro_batch) {
  if (stages < 1 || micro_batch < 1) return 0;
  return mostReplicasSplittingTheBatch(std::min(replicas - 1, workers / stages), min_replicas,
                                       global_batch, micro_batch);
}

int grownReplicas(int spares, int stages, int replicas, int max_replicas, int global_batch,
                  int micro_batch) {
  if (stages < 1 || micro_batch < 1) return 0;
  return mostReplicasSplittingTheBatch(
      std::min(max_replicas, replicas + std::max(spares, 0) / stages), replicas + 1, global_batch,
      micro_batch);
}

}  // namespace geopipe::distributed
