#include "src/distributed/step_ledger.h"

namespace geopipe::distributed {

StepLedger::StepLedger(const JobSpec& job, int64_t first_step)
    : job_(job),
      initial_first_step_(first_step),
      next_take_(first_step),
      handed_on_upto_(first_step) {}

bool StepLedger::add(int rank, int world, int64_t step, const StepMetrics& part, bool has_loss,
                     double loss, Clock::time_point now) {
  Row& row = rows_[step];
  if (row.tally.arrived == 0 && row.seen.empty()) {
    row.first_at = now;
    row.expected = world;
    row.seen.assign(static_cast<size_t>(world), false);
  }
  if (rank >= 0 && rank < static_cast<int>(row.seen.size()) &&
      !row.seen[static_cast<size_t>(rank)]) {
    row.seen[static_cast<size_t>(rank)] = true;
    row.tally.add(part, has_loss, loss);
  }
  return row.tally.arrived == row.expected;
}

std::optional<std::pair<int64_t, int>> StepLedger::overdue(
    Clock::time_point now, std::chrono::milliseconds deadline) const {
  for (const auto& [step, row] : rows_) {
    if (row.tally.arrived == row.expected) continue;
    if (now - row.first_at <= deadline) return std::nullopt;
    for (int r = 0; r < static_cast<int>(row.seen.size()); ++r)
      if (!row.seen[static_cast<size_t>(r)]) return std::make_pair(step, r);
    return std::nullopt;
  }
  return std::nullopt;
}

std::vector<StepMetrics> StepLedger::takeFinished(TrainResult& result) {
  std::vector<StepMetrics> ready;
  while (true) {
    auto it = rows_.find(next_take_);
    if (it == rows_.end() || it->second.tally.arrived < it->second.expected) break;
    const StepMetrics m = it->second.tally.finished(next_take_, job_);
    runtime::recordStep(result, m);
    bytes_of_step_[m.step] = {m.activation_wire_bytes + m.gradient_wire_bytes + m.dp_wire_bytes,
                              m.activation_raw_bytes + m.gradient_raw_bytes + m.dp_raw_bytes};
    last_taken_ = Clock::now();
    rows_.erase(it);
    ++next_take_;
    if (m.step < handed_on_upto_) continue;
    handed_on_upto_ = m.step + 1;
    ready.push_back(m);
  }
  return ready;
}

void StepLedger::dropFrom(int64_t step) {
  rows_.erase(rows_.lower_bound(step), rows_.end());
}

void StepLedger::restartAt(int64_t step, TrainResult& result) {
  if (next_take_ > step) {
    next_take_ = step;
    result.losses.resize(static_cast<size_t>(step - initial_first_step_));
    while (!result.val_losses.empty() && result.val_losses.back().first >= step)
      result.val_losses.pop_back();
    for (auto it = bytes_of_step_.lower_bound(step); it != bytes_of_step_.end();) {
      result.wire_bytes -= it->second.first;
      result.raw_bytes -= it->second.second;
      it = bytes_of_step_.erase(it);
    }
  }
}

}  // namespace geopipe::distributed
