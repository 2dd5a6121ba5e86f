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
  r.set_grad_sq_sum(part.grad_sq_sum);
  r.set_peak_rss_bytes(part.peak_rss_bytes);
  // A tasklet's share has one entry, at its rank (the report's rank field).
  uint64_t sent = 0, received = 0;
  for (uint64_t b : part.sent_bytes_by_rank) sent += b;
  for (uint64_t b : part.received_bytes_by_rank) received += b;
  r.set_sent_bytes(sent);
  r.set_received_bytes(received);
  for (const auto& [link, bytes] : part.link_sent_bytes) {
    geopipe::v1::LinkBytes* l = r.add_link_sent_bytes();
    l->set_to(link.second);
    l->set_bytes(bytes);
  }
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
  m.grad_sq_sum = report.grad_sq_sum();
  m.peak_rss_bytes = report.peak_rss_bytes();
  if (report.rank() >= 0) {
    const size_t n = static_cast<size_t>(report.rank()) + 1;
    m.sent_bytes_by_rank.assign(n, 0);
    m.received_bytes_by_rank.assign(n, 0);
    m.sent_bytes_by_rank.back() = report.sent_bytes();
    m.received_bytes_by_rank.back() = report.received_bytes();
    m.compute_seconds_by_rank.assign(n, 0);
    m.comm_wait_seconds_by_rank.assign(n, 0);
    m.seconds_by_rank.assign(n, 0);
    m.compute_seconds_by_rank.back() = report.compute_seconds();
    m.comm_wait_seconds_by_rank.back() = report.comm_wait_seconds();
    m.seconds_by_rank.back() = report.seconds();
    for (const geopipe::v1::LinkBytes& l : report.link_sent_bytes())
      m.link_sent_bytes[{report.rank(), l.to()}] += l.bytes();
  }
  return m;
}

}  // namespace geopipe::distributed
