#include "src/distributed/step_report.h"

namespace geopipe::distributed {

geopipe::v1::StepReport stepReportOf(const StepMetrics& part, bool has_loss, double loss) {
  geopipe::v1::StepReport r;
  r.set_has_loss(has_loss);
  r.set_loss(has_loss ? loss : 0);
  r.set_lr(part.lr);
  r.set_seconds(part.seconds);
  r.set_compute_seconds(part.compute_seconds);
  r.set_comm_wait_seconds(part.comm_wait_seconds);
  r.set_activation_raw_bytes(part.activation_raw_bytes);
  r.set_activation_wire_bytes(part.activation_wire_bytes);
  r.set_gradient_raw_bytes(part.gradient_raw_bytes);
  r.set_gradient_wire_bytes(part.gradient_wire_bytes);
  r.set_dp_raw_bytes(part.dp_raw_bytes);
  r.set_dp_wire_bytes(part.dp_wire_bytes);
  r.set_val_loss_sum(part.val_loss_sum);
  r.set_val_tokens(part.val_tokens);
  return r;
}

StepMetrics stepMetricsOf(const geopipe::v1::StepReport& report) {
  StepMetrics m;
  m.lr = report.lr();
  m.seconds = report.seconds();
  m.compute_seconds = report.compute_seconds();
  m.comm_wait_seconds = report.comm_wait_seconds();
  m.activation_raw_bytes = report.activation_raw_bytes();
  m.activation_wire_bytes = report.activation_wire_bytes();
  m.gradient_raw_bytes = report.gradient_raw_bytes();
  m.gradient_wire_bytes = report.gradient_wire_bytes();
  m.dp_raw_bytes = report.dp_raw_bytes();
  m.dp_wire_bytes = report.dp_wire_bytes();
  m.val_loss_sum = report.val_loss_sum();
  m.val_tokens = report.val_tokens();
  return m;
}

}  // namespace geopipe::distributed
