// The one conversion between a tasklet's step (StepMetrics and its loss)
// and the StepReport message that carries it to the coordinator, so the
// worker's and the coordinator's numbers cannot drift apart field by field.
#pragma once

#include "geopipe/trainer.h"
#include "proto/coordinator.pb.h"

namespace geopipe::distributed {

// A report of `part` (one tasklet's share of a step); `loss` is set when
// `has_loss` (the last stage's replica mean). Rank, step and generation are
// the caller's.
geopipe::v1::StepReport stepReportOf(const StepMetrics& part, bool has_loss, double loss);

// The tasklet's share of the step that `report` carries (step and loss are
// not part of it: the coordinator sums losses per step itself).
StepMetrics stepMetricsOf(const geopipe::v1::StepReport& report);

}  // namespace geopipe::distributed
