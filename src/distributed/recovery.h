// The pure rules of failure handling, apart from the coordinator's threads
// and RPCs so they can be unit-tested: which failures a job recovers from,
// what a final failure ends, how often workers send heartbeats, and how the
// workers of a new generation get their ranks. Torch-free, gRPC-free.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace geopipe::distributed {

// The failure type a launcher reports for a worker killed by a signal (an
// exit code gives "ProcessFailed").
inline constexpr const char* kProcessKilled = "ProcessKilled";

// Failures that a new generation can fix: a process killed or crashed by a
// signal (kProcessKilled), and the link failures of geopipe/error.h
// (isLinkFailure: a worker silent past its deadline "TimeoutError", broken
// or garbled links "IoError", "ProtocolError").
// Everything else (a bad job "ConfigError", "InfeasibleError", a worker
// that exited with an error code "ProcessFailed", an interrupt) would fail
// the same way again, so it ends the job.
bool isRecoverableFailure(const std::string& error_type);

// A failure the coordinator observed or a worker reported.
struct Failure {
  std::string message;  // what failed, naming the tasklet
  std::string type;     // the error type ("IoError", kProcessKilled, ...)
  int rank = -1;        // the tasklet `message` names, -1 if none
  // A root cause, not a broken link or timeout that may be the consequence
  // of another tasklet's death (held for failure_grace).
  bool primary = true;
  std::chrono::steady_clock::time_point at;  // when it was recorded
  int64_t generation = 0;  // when it was reported (its rank is of that generation)
  // The worker's own error ("Type: what"); empty for what the coordinator
  // observed (silence, a process death, a late step).
  std::string cause;
};

// What a final failure (one held past failure_grace, or a primary one)
// does.
enum class FailureAction {
  NOTE,           // logged only: its generation ended, or the job regroups already
  NOTE_FINISHED,  // logged, its tasklet counted as finished: the job had completed
  END_JOB,        // the job fails
  REGROUP,        // the generation ends and a new one recovers
};
struct FailureDecision {
  FailureAction action = FailureAction::END_JOB;
  std::string message;  // the event (NOTE*), the job's failure (END_JOB); REGROUP: none
};
// Where the job is when a failure is final.
struct JobState {
  int64_t generation = 1;    // the current generation
  bool complete = false;     // every step run, every checkpoint committed
  bool placed = false;       // the current generation has a placement
  bool regrouping = false;   // waiting for the workers of the next generation
  int64_t restarts = 0;      // generations started by failures so far
  int max_restarts = 0;      // fault_tolerance.max_restarts
  std::string last_cause;    // Failure::cause of what ended the previous generation
  bool no_step_yet = false;  // no tasklet of this generation has reported a step
};
// Ends the job when the failure is not recoverable, struck before the job
// was placed, has no restart left, or repeats the worker error that ended
// the previous generation before this one completed a step (deterministic:
// every restart would end the same way); otherwise the generation regroups.
FailureDecision decideFailure(const Failure& f, const JobState& job);

// The job's failure when `world` workers were not back within
// `rejoin_timeout` of the end of the generation `f` ended (only `rejoined`
// were) and too few for `min_replicas` of `replicas` replicas.
std::string recoveryGaveUp(const Failure& f, int rejoined, int world,
                           std::chrono::milliseconds rejoin_timeout, int min_replicas,
                           int replicas);

// Workers send a heartbeat five times per timeout, at most once a second
// and at least every 100 ms, so one late heartbeat is never a death.
std::chrono::milliseconds heartbeatInterval(std::chrono::milliseconds timeout);

// What a worker asked for when it joined a generation.
struct RankClaim {
  int device = -1;         // the topology device it named; -1: any
  int previous_rank = -1;  // its rank in the previous generation; -1: none
};

// Gives every worker of a generation a rank (returns rank -> index into
// `claims`; claims.size() == device_of_rank.size()). A worker that named a
// device gets the rank placed on that device; a worker that said "any"
// keeps its previous rank when that rank is still free (so survivors keep
// their tasklets when the plan is reused); the others take the free ranks
// in order. Throws Error if a named device is not in the placement.
std::vector<int> assignRanks(const std::vector<int>& device_of_rank,
                             const std::vector<RankClaim>& claims);

// Idle spares. `active`: workers that will be placed (joined and not
// spares), `awaited`: survivors of the ended generation that have not
// rejoined yet (their place is kept for them), `world`: tasklets.
//
// A worker joins as a spare when it is not an awaited survivor and the job
// is placed, or every tasklet already has a worker or an awaited survivor.
bool joinsAsSpare(bool placed, int active, int awaited, int world, bool is_awaited_survivor);

// How many idle spares to promote while the job waits for placement: the
// places neither a joined worker nor an awaited survivor fills (a lost
// tasklet's), at most `idle_spares`. A worker that comes back after a spare
// took its place joins as a spare itself.
int sparesToPromote(int active, int awaited, int world, int idle_spares);

// Recovery with fewer replicas. After rejoin_timeout, with `workers`
// workers at hand for `stages` x `replicas` tasklets: the most whole
// replicas they fill (fewer than `replicas`) whose share of the global
// batch is a whole number of micro-batches, when that is at least
// `min_replicas`; 0 when the job cannot go on with fewer.
int shrunkReplicas(int workers, int stages, int replicas, int min_replicas, int global_batch,
                   int micro_batch);

// Growing back after a shrink. With `spares` idle spares next to the
// `stages` x `replicas` tasklets of a job that started with `max_replicas`:
// the most replicas (more than `replicas`, at most `max_replicas`) the
// workers fill whose share of the global batch is a whole number of
// micro-batches; 0 when the spares do not make a whole replica more.
int grownReplicas(int spares, int stages, int replicas, int max_replicas, int global_batch,
                  int micro_batch);

}  // namespace geopipe::distributed
