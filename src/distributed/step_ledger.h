// The coordinator's step ledger: every tasklet's report of every step, the
// steps they finish, handed on in order, and what a recovery rewinds. Its
// rows are runtime::StepTally, the Trainer's step board's rows, so a
// launched job reports the numbers the in-process Trainer does. Not
// thread-safe: the coordinator holds its lock.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <utility>
#include <vector>

#include "geopipe/trainer.h"
#include "src/runtime/tasklet.h"

namespace geopipe::distributed {

class StepLedger {
 public:
  using Clock = std::chrono::steady_clock;

  // `job` must outlive the ledger; steps are numbered from `first_step`.
  StepLedger(const JobSpec& job, int64_t first_step);

  // Rank `rank`'s share of `step`, in a generation of `world` tasklets. A
  // repeated report counts once. True when the step is then complete.
  bool add(int rank, int world, int64_t step, const StepMetrics& part, bool has_loss, double loss,
           Clock::time_point now);

  // The oldest incomplete step, if its first report is older than
  // `deadline`: (step, the lowest rank that has not reported it).
  std::optional<std::pair<int64_t, int>> overdue(Clock::time_point now,
                                                 std::chrono::milliseconds deadline) const;

  // Complete steps in order from the next one not yet taken, each recorded
  // into `result` (runtime::recordStep); returns those not handed on before
  // (a step recomputed after a recovery is handed on once, the first time).
  std::vector<StepMetrics> takeFinished(TrainResult& result);

  // A generation ended: the reports of `step` and later are dropped (those
  // steps will be recomputed).
  void dropFrom(int64_t step);
  // The next generation starts at `step`: taking starts again there (if
  // past it), and `result` is cut back to the steps before it (losses,
  // validation losses and bytes), so recomputed steps count once.
  void restartAt(int64_t step, TrainResult& result);

  // When the last step was taken (nullopt before any).
  std::optional<Clock::time_point> lastTaken() const { return last_taken_; }

 private:
  struct Row {
    runtime::StepTally tally;
    int expected = 0;  // tasklets of the generation that ran the step
    std::vector<bool> seen;
    Clock::time_point first_at;
  };
  const JobSpec& job_;
  const int64_t initial_first_step_;
  std::map<int64_t, Row> rows_;
  int64_t next_take_;
  int64_t handed_on_upto_;  // steps before this went to the caller
  std::optional<Clock::time_point> last_taken_;
  // Bytes recorded per taken step (wire, raw), to take back on a restart.
  std::map<int64_t, std::pair<uint64_t, uint64_t>> bytes_of_step_;
};

}  // namespace geopipe::distributed
