// The coordinator's roster of workers: every worker that joined (placed,
// waiting for placement, or an idle spare), and which one runs each rank of
// the current generation. Torch-free; not thread-safe (the coordinator holds
// its lock). Calls that change what an operator wants to hear about return
// the event lines, in order, for the caller to queue.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "geopipe/topology.h"
#include "src/distributed/coordinator.h"
#include "src/distributed/recovery.h"
#include "src/distributed/request_checks.h"

namespace geopipe::distributed {

class Roster {
 public:
  using Clock = std::chrono::steady_clock;

  // One worker that joined. A slot is never removed: one that leaves, or
  // whose generation ends, is marked gone (a worker that rejoins gets a new
  // slot), so a slot's index is a stable id.
  struct Slot {
    TaskletInfo info;
    int device = -1;          // requested device, -1 = any
    std::string listen_host;  // what peers use to reach it
    Clock::time_point last_seen;
    int64_t last_step = -1;
    bool synchronous = false;  // reports synchronously (phase 1 of a stop)
    bool gone = false;         // left before placement, or its generation ended
    int previous_rank = -1;    // its rank in the previous generation, if any
    int64_t generation = 0;    // the generation it was placed in
    bool steps_done = false;   // ran its last step and reported its checkpoint
    bool spare = false;        // an idle spare: not placed until promoted
    bool waiting = false;      // inside its Register call (alive while it lasts)
    uint64_t ticket = 0;       // a spare's proof of identity when it calls again
    bool relayed = false;      // accepts no connections: peers reach it via the relay
  };

  // Every slot, in the order the workers joined.
  std::vector<Slot>& slots() { return slots_; }
  const std::vector<Slot>& slots() const { return slots_; }
  size_t size() const { return slots_.size(); }
  Slot& operator[](size_t id) { return slots_[id]; }

  // Adds a new worker with a fresh spare ticket; returns its slot's id.
  size_t add(Slot slot);
  // The slot of the idle spare (not gone) calling again with `ticket` from
  // `pid`; size() when there is none.
  size_t findSpare(uint64_t ticket, int64_t pid) const;

  // Workers the next placement uses: joined, not gone, not spares.
  int active() const;
  int idleSpares() const;
  // Idle spares heard from within `recent` of `now` or inside a call (a dead
  // one is dropped only after heartbeat_timeout; a grow should not count it).
  int liveSpares(Clock::time_point now, Clock::duration recent) const;
  // The devices of the workers not gone (for resolveDevice's message).
  std::vector<DeviceClaim> deviceClaims() const;

  // While the job waits for placement: idle spares, the longest waiting
  // first, take the places neither a joined worker nor one of `awaited`
  // survivors fills (sparesToPromote) in a job of `world` tasklets: as
  // places of a new replica (a grow back) or of lost tasklets.
  std::vector<std::string> promoteSpares(int awaited, int world, bool for_new_replica);
  // A shrink to `world` tasklets of `stages` stages: keeps the survivors of
  // whole replicas first (in rank order), then the others by previous rank,
  // newcomers last; the rest become idle spares.
  std::vector<std::string> keepForShrink(int world, int stages);
  // Drops the idle spares (and spares promoted for a place that did not call
  // again) silent for longer than `timeout`.
  std::vector<std::string> dropSilentSpares(Clock::time_point now,
                                            std::chrono::milliseconds timeout);

  // What the active workers asked for: the devices they named, and their
  // claims in join order (for assignRanks).
  std::set<int> namedDevices() const;
  std::vector<RankClaim> claims() const;

  // Where the ranks of a new generation run.
  struct Layout {
    int64_t generation = 0;
    int stages = 1;                     // rank r runs stage r % stages of replica r / stages
    std::vector<int> device_of_rank;    // the placement's
    const TopologySpec* topology = {};  // names the devices (indices when it lists none)
    int64_t first_step = 0;             // the generation's first step
  };
  // Gives rank r to the active worker worker_of_rank[r] (an index into
  // claims()), as `layout` says; `now` is when each was last heard of.
  void assign(const std::vector<int>& worker_of_rank, const Layout& layout, Clock::time_point now);
  // The current generation ended: its placed workers are gone (each rejoins
  // with a new slot), no rank has a worker. Idle spares stay.
  void endGeneration();

  // Ranks with a worker (the world of the current generation; 0 while none
  // is placed).
  int ranks() const { return static_cast<int>(slot_of_rank_.size()); }
  // The worker of `rank`; nullptr when no worker has that rank.
  Slot* ofRank(int rank);
  const Slot* ofRank(int rank) const;
  // "tasklet rank 3 (stage 1, replica 1, device 'a/1', host h pid 42)";
  // "tasklet 3" when no worker has that rank.
  std::string describe(int rank) const;
  // Whether `pred` holds for the worker of every rank.
  template <typename Pred>
  bool everyPlaced(Pred pred) const {
    for (int s : slot_of_rank_)
      if (!pred(slots_[static_cast<size_t>(s)])) return false;
    return true;
  }
  std::vector<TaskletInfo> tasklets() const;
  // Placed workers on host `hostname`.
  int placedOn(const std::string& hostname) const;
  // Process ids of the placed workers, by rank.
  std::vector<int64_t> placedPids() const;
  // The placed worker silent the longest at `now` (not finished, not rank
  // `except`): (rank, seconds); (-1, 0) when none.
  std::pair<int, double> mostSilent(int except, Clock::time_point now) const;

 private:
  std::vector<Slot> slots_;
  std::vector<int> slot_of_rank_;  // rank -> index into slots_
  uint64_t last_ticket_ = 0;       // spare tickets handed out
};

}  // namespace geopipe::distributed
