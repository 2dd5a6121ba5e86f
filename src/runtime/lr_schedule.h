// The learning-rate schedule (warm-up, then constant, linear or cosine decay
// to min_lr): one function that every tasklet calls, in the Trainer's threads
// and in launched workers alike.
#pragma once

#include <cstdint>

#include "geopipe/job_spec.h"

namespace geopipe {

// Learning rate of `step` (0-based) under training's optimizer and schedule.
// Also part of the public API (include/geopipe/trainer.h declares it).
double learningRateAt(const TrainingSpec& training, int64_t step);

}  // namespace geopipe
