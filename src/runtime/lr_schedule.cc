// The learning-rate schedule of a job's training section.
#include "src/runtime/lr_schedule.h"

#include <algorithm>
#include <cmath>

namespace geopipe {

double learningRateAt(const TrainingSpec& t, int64_t step) {
  const double peak = t.optimizer.lr;
  const auto& s = t.lr_schedule;
  if (step < s.warmup_steps) return peak * static_cast<double>(step + 1) / s.warmup_steps;
  if (s.kind == "constant") return peak;
  const double span = std::max<int64_t>(1, t.steps - s.warmup_steps);
  const double progress = std::min(1.0, static_cast<double>(step - s.warmup_steps) / span);
  if (s.kind == "cosine") {
    return s.min_lr + 0.5 * (peak - s.min_lr) * (1.0 + std::cos(M_PI * progress));
  }
  return peak - (peak - s.min_lr) * progress;  // linear
}

}  // namespace geopipe
