// Progress lines and JSON-lines metrics for multi-process runs.
#include "src/cli/progress_display.h"

#include "src/cli/tensorboard_writer.h"
#include "src/common/metrics_server.h"
#include "src/common/svg_plot.h"
#include "src/runtime/checkpoint.h"

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <iomanip>
#include <nlohmann/json.hpp>

#include "geopipe/error.h"
#include "src/common/text.h"

namespace geopipe::cli {

std::string humanBytesDecimal(double b) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (b >= 1000 && u < 4) b /= 1000, ++u;
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f %s", b, units[u]);
  return buf;
}

ProgressDisplay::ProgressDisplay(const JobSpec& job, std::ostream& out, bool append)
    : job_(job), out_(out) {
  if (!job.logging.metrics_file.empty()) {
    metrics_.open(job.logging.metrics_file, append ? std::ios::app : std::ios::trunc);
    if (!metrics_) {
      GEOPIPE_THROW(IoError, "cannot write metrics file '", job.logging.metrics_file,
                    "' (logging.metrics_file)");
    }
  }
  if (!job.logging.tensorboard_dir.empty()) {
    tensorboard_ = std::make_unique<TensorBoardWriter>(job.logging.tensorboard_dir);
  }
  if (job.logging.metrics_port != 0) {
    server_ = std::make_unique<common::MetricsServer>(
        job.logging.metrics_host, job.logging.metrics_port, "logging.metrics_port");
    publish(nullptr);
    out_ << "metrics endpoint: http://" << job.logging.metrics_host << ":" << server_->port()
         << "/metrics\n";
  }
}

ProgressDisplay::~ProgressDisplay() = default;

void refuseTensorBoardDir(const JobSpec& job, const std::string& verb) {
  GEOPIPE_CHECK(job.logging.tensorboard_dir.empty(), ConfigError,
                "logging.tensorboard_dir is set ('", common::printable(job.logging.tensorboard_dir),
                "') but ", verb,
                " does not write TensorBoard files (train, launch and coordinator do): remove it "
                "from the job for ",
                verb);
  GEOPIPE_CHECK(job.logging.trace_dir.empty(), ConfigError, "logging.trace_dir is set ('",
                common::printable(job.logging.trace_dir), "') but ", verb,
                " writes no timeline traces (train, launch and worker do): remove it from the "
                "job for ",
                verb);
  GEOPIPE_CHECK(job.logging.metrics_port == 0, ConfigError, "logging.metrics_port is set (",
                job.logging.metrics_port, ") but ", verb,
                " serves no metrics endpoint (train, launch and coordinator do): remove it from "
                "the job for ",
                verb);
}

namespace {

// "1:02:03": hours unpadded, minutes and seconds two digits.
std::string hms(double seconds) {
  const int64_t s = seconds > 0 ? static_cast<int64_t>(seconds + 0.5) : 0;
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  return buf;
}

// "2026-12-06T19:31:27.123Z".
std::string isoUtc(std::chrono::system_clock::time_point t) {
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
  const std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[96];  // room for any int in every field (no truncation warning)
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>(ms % 1000));
  return buf;
}

}  // namespace

std::string progressLine(const StepMetrics& m, int steps, double elapsed, double eta) {
  const int64_t done = m.step + 1;
  const int width = static_cast<int>(std::to_string(steps).size());
  // The busiest tasklet's time blocked on the network, as a share of the step.
  const double net = m.seconds > 0 ? std::min(1.0, m.comm_wait_seconds / m.seconds) : 0;
  char buf[256];
  int n = std::snprintf(buf, sizeof(buf), "step %*lld/%d  loss %.4f  ", width,
                        static_cast<long long>(done), steps, m.loss);
  if (m.hasValLoss()) n += std::snprintf(buf + n, sizeof(buf) - n, "val %.4f  ", m.valLoss());
  std::string rss = humanBytesDecimal(double(m.peak_rss_bytes));
  rss.erase(std::remove(rss.begin(), rss.end(), ' '), rss.end());
  std::snprintf(buf + n, sizeof(buf) - n,
                "lr %.1e  gnorm %.3g  %.0f tok/s  net %.0f%%  rss %s  %s eta %s", m.lr, m.grad_norm,
                m.tokens_per_second, 100 * net, rss.c_str(), hms(elapsed).c_str(),
                hms(eta).c_str());
  return buf;
}

nlohmann::json metricsRecord(const StepMetrics& m, std::chrono::system_clock::time_point now) {
  nlohmann::json j = {{"step", m.step + 1},
                      {"time", isoUtc(now)},
                      {"unix_time", std::chrono::duration<double>(now.time_since_epoch()).count()},
                      {"loss", m.loss},
                      {"lr", m.lr},
                      {"grad_norm", m.grad_norm},
                      {"seconds", m.seconds},
                      {"tokens_per_second", m.tokens_per_second},
                      {"activation_raw_bytes", m.activation_raw_bytes},
                      {"activation_wire_bytes", m.activation_wire_bytes},
                      {"gradient_raw_bytes", m.gradient_raw_bytes},
                      {"gradient_wire_bytes", m.gradient_wire_bytes},
                      {"dp_raw_bytes", m.dp_raw_bytes},
                      {"dp_wire_bytes", m.dp_wire_bytes},
                      {"sent_bytes_by_rank", m.sent_bytes_by_rank},
                      {"received_bytes_by_rank", m.received_bytes_by_rank},
                      {"compute_seconds", m.compute_seconds},
                      {"comm_wait_seconds", m.comm_wait_seconds},
                      {"peak_rss_bytes", m.peak_rss_bytes}};
  nlohmann::json links = nlohmann::json::array();
  for (const auto& [link, bytes] : m.link_sent_bytes)
    links.push_back({{"from", link.first}, {"to", link.second}, {"bytes", bytes}});
  j["link_bytes"] = links;
  if (m.hasValLoss()) j["val_loss"] = m.valLoss();
  return j;
}

std::vector<StepBreakdown> stepBreakdownByRank(const StepMetrics& m, const JobSpec& job) {
  const size_t stages = static_cast<size_t>(std::max(0, job.parallelism.pipeline_stages));
  const size_t world = m.compute_seconds_by_rank.size();
  if (stages == 0 || world == 0) return {};
  const int replicas = static_cast<int>((world + stages - 1) / stages);
  const int micro_batches = std::max(1, job.microBatchesPerReplica(std::max(1, replicas)));
  const auto at = [](const std::vector<double>& v, size_t i) { return i < v.size() ? v[i] : 0.0; };
  std::vector<StepBreakdown> out(world);
  for (size_t rank = 0; rank < world; ++rank) {
    const size_t first = rank / stages * stages;  // stage 0 of this replica
    // Fill and drain: before its first micro-batch and after its last, a
    // stage waits for one micro-batch's compute of every other stage.
    double others = 0;
    for (size_t r = first; r < first + stages && r < world; ++r) {
      if (r != rank) others += at(m.compute_seconds_by_rank, r);
    }
    const double waited = at(m.comm_wait_seconds_by_rank, rank);
    StepBreakdown& b = out[rank];
    b.compute = at(m.compute_seconds_by_rank, rank);
    b.bubble = std::min(waited, others / micro_batches);
    b.wait = waited - b.bubble;
  }
  return out;
}

void ProgressDisplay::onStep(const StepMetrics& m) {
  const auto now = std::chrono::system_clock::now();
  step_seconds_ += m.seconds;
  const uint64_t step_raw = m.activation_raw_bytes + m.gradient_raw_bytes + m.dp_raw_bytes;
  const uint64_t step_wire = m.activation_wire_bytes + m.gradient_wire_bytes + m.dp_wire_bytes;
  raw_ += step_raw;
  wire_ += step_wire;
  const uint64_t raws[3] = {m.activation_raw_bytes, m.gradient_raw_bytes, m.dp_raw_bytes};
  const uint64_t wires[3] = {m.activation_wire_bytes, m.gradient_wire_bytes, m.dp_wire_bytes};
  for (int k = 0; k < 3; ++k) raw_by_kind_[k] += raws[k], wire_by_kind_[k] += wires[k];
  const auto addTo = [](std::vector<uint64_t>& into, const std::vector<uint64_t>& part) {
    if (into.size() < part.size()) into.resize(part.size(), 0);
    for (size_t i = 0; i < part.size(); ++i) into[i] += part[i];
  };
  addTo(sent_total_, m.sent_bytes_by_rank);
  addTo(received_total_, m.received_bytes_by_rank);
  for (const auto& [link, bytes] : m.link_sent_bytes) link_sent_total_[link] += bytes;
  if (m.hasValLoss()) val_loss_ = m.valLoss();
  // The plot: the loss, and the busiest tasklet's step split.
  const double x = double(m.step + 1);
  loss_points_.emplace_back(x, m.loss);
  if (m.hasValLoss()) val_points_.emplace_back(x, m.valLoss());
  const std::vector<StepBreakdown> split = stepBreakdownByRank(m, job_);
  StepBreakdown busiest{m.compute_seconds, 0, m.comm_wait_seconds};
  for (const StepBreakdown& b : split) {
    if (b.compute >= busiest.compute) busiest = b;
  }
  compute_points_.emplace_back(x, busiest.compute);
  bubble_points_.emplace_back(x, busiest.bubble);
  wait_points_.emplace_back(x, busiest.wait);
  step_points_.emplace_back(x, m.seconds);
  if (server_) publish(&m);
  if (metrics_) metrics_ << metricsRecord(m, now).dump() << "\n" << std::flush;
  if (tensorboard_) {
    std::vector<std::pair<std::string, double>> scalars = {
        {"loss", m.loss},
        {"lr", m.lr},
        {"grad_norm", m.grad_norm},
        {"tokens_per_second", m.tokens_per_second},
        {"step_seconds", m.seconds}};
    if (m.hasValLoss()) scalars.emplace_back("val_loss", m.valLoss());
    tensorboard_->scalars(m.step + 1, scalars);  // 1-based, as the metrics file
  }
  const int steps = job_.training.steps;
  const int64_t done = m.step + 1;
  if (first_step_ < 0) first_step_ = m.step;
  if (done % job_.logging.every_steps == 0 || done == steps || m.hasValLoss()) {
    const double eta = step_seconds_ / double(done - first_step_) * double(steps - done);
    const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
    out_ << progressLine(m, steps, elapsed, eta) << "\n" << std::flush;
  }
}

void ProgressDisplay::publish(const StepMetrics* m) {
  server_->publish(exposition(m));
}

std::string ProgressDisplay::exposition(const StepMetrics* m) const {
  common::PrometheusText t;
  const int stages = job_.parallelism.pipeline_stages;
  const auto place = [&](size_t rank) {
    return common::MetricLabels{{"rank", std::to_string(rank)},
                                {"stage", std::to_string(rank % stages)},
                                {"replica", std::to_string(rank / stages)}};
  };
  t.family("geopipe_info", "gauge", "The job this process runs (value 1)");
  t.sample({{"job", job_.name}, {"topology", job_.topology.name}}, 1);
  t.family("geopipe_step", "gauge", "Steps done (1-based number of the newest finished step)");
  t.sample(m ? double(m->step + 1) : 0.0);
  t.family("geopipe_steps", "gauge", "Steps the run trains to (training.steps)");
  t.sample(job_.training.steps);
  if (cluster_) {
    t.family("geopipe_workers_alive", "gauge", "Placed worker processes of the current generation");
    t.sample(cluster_->workers_alive);
    t.family("geopipe_recoveries_total", "counter", "Failures the job recovered from");
    t.sample(cluster_->recoveries);
  }
  if (m == nullptr) return t.text();
  t.family("geopipe_loss", "gauge", "Mean training loss of the newest step's global batch");
  t.sample(m->loss);
  if (val_loss_) {
    t.family("geopipe_val_loss", "gauge", "Validation loss of the newest evaluation");
    t.sample(*val_loss_);
  }
  t.family("geopipe_lr", "gauge", "Learning rate of the newest step");
  t.sample(m->lr);
  t.family("geopipe_grad_norm", "gauge", "Global gradient norm before clipping");
  t.sample(m->grad_norm);
  t.family("geopipe_step_seconds", "gauge", "Wall-clock of the newest step (slowest tasklet)");
  t.sample(m->seconds);
  t.family("geopipe_tokens_per_second", "gauge", "Tokens of the global batch per second");
  t.sample(m->tokens_per_second);
  t.family("geopipe_peak_rss_bytes", "gauge",
           "Peak resident set size of the process running the tasklets (largest worker)");
  t.sample(double(m->peak_rss_bytes));
  // Per stage: each share of the stage's step time, mean over its replicas.
  const std::vector<StepBreakdown> split = stepBreakdownByRank(*m, job_);
  if (!split.empty()) {
    std::vector<StepBreakdown> share(static_cast<size_t>(stages));
    std::vector<int> count(static_cast<size_t>(stages), 0);
    for (size_t rank = 0; rank < split.size(); ++rank) {
      const double secs = rank < m->seconds_by_rank.size() ? m->seconds_by_rank[rank] : 0;
      if (secs <= 0) continue;
      StepBreakdown& s = share[rank % stages];
      s.compute += split[rank].compute / secs;
      s.bubble += split[rank].bubble / secs;
      s.wait += split[rank].wait / secs;
      ++count[rank % stages];
    }
    const std::pair<const char*, double StepBreakdown::*> kinds[] = {
        {"busy", &StepBreakdown::compute},
        {"bubble", &StepBreakdown::bubble},
        {"wait", &StepBreakdown::wait}};
    const char* helps[] = {
        "Share of the stage's step spent computing (mean over replicas)",
        "Share of the stage's step in pipeline fill and drain: the other stages' compute of one "
        "micro-batch, at most the time it waited (mean over replicas)",
        "Share of the stage's step blocked on communication beyond the bubble: network wait "
        "(mean over replicas)"};
    for (int k = 0; k < 3; ++k) {
      t.family(std::string("geopipe_stage_") + kinds[k].first + "_share", "gauge", helps[k]);
      for (int s = 0; s < stages; ++s) {
        if (count[s] > 0)
          t.sample({{"stage", std::to_string(s)}}, share[s].*kinds[k].second / count[s]);
      }
    }
  }
  // Per tasklet: what its transport sent and received (compressed, on the
  // wire), and the newest step's send rate.
  t.family("geopipe_tasklet_sent_bytes_total", "counter",
           "Bytes the tasklet's transport sent since the run started (pipeline, data-parallel "
           "and control traffic, after compression)");
  for (size_t rank = 0; rank < sent_total_.size(); ++rank)
    t.sample(place(rank), double(sent_total_[rank]));
  t.family("geopipe_tasklet_received_bytes_total", "counter",
           "Bytes the tasklet's transport received since the run started");
  for (size_t rank = 0; rank < received_total_.size(); ++rank) {
    t.sample(place(rank), double(received_total_[rank]));
  }
  t.family("geopipe_tasklet_send_mbps", "gauge",
           "Effective send rate of the newest step: bytes sent x 8 / the tasklet's step time, "
           "Mbit/s");
  for (size_t rank = 0; rank < m->sent_bytes_by_rank.size(); ++rank) {
    const double secs = rank < m->seconds_by_rank.size() ? m->seconds_by_rank[rank] : m->seconds;
    t.sample(place(rank), secs > 0 ? double(m->sent_bytes_by_rank[rank]) * 8 / secs / 1e6 : 0);
  }
  // Per directed link (from rank, to rank): the same sent bytes by
  // destination, and the newest step's rate on the link.
  const auto link = [](const std::pair<int, int>& l) {
    return common::MetricLabels{{"from", std::to_string(l.first)},
                                {"to", std::to_string(l.second)}};
  };
  t.family("geopipe_link_sent_bytes_total", "counter",
           "Bytes sent from one tasklet (rank) to another since the run started, after "
           "compression; the links from a rank sum to its geopipe_tasklet_sent_bytes_total");
  for (const auto& [l, bytes] : link_sent_total_) t.sample(link(l), double(bytes));
  t.family("geopipe_link_send_mbps", "gauge",
           "Effective rate of the link in the newest step: bytes sent on it x 8 / the sending "
           "tasklet's step time, Mbit/s");
  for (const auto& [l, bytes] : m->link_sent_bytes) {
    const size_t from = static_cast<size_t>(l.first);
    const double secs = from < m->seconds_by_rank.size() ? m->seconds_by_rank[from] : m->seconds;
    t.sample(link(l), secs > 0 ? double(bytes) * 8 / secs / 1e6 : 0);
  }
  // Per kind of traffic: fp32 size, wire size and their ratio.
  const char* kinds[] = {"activations", "gradients", "data_parallel"};
  t.family("geopipe_raw_bytes_total", "counter",
           "fp32 size of the traffic sent since the run started, by kind");
  for (int k = 0; k < 3; ++k) t.sample({{"kind", kinds[k]}}, double(raw_by_kind_[k]));
  t.family("geopipe_wire_bytes_total", "counter",
           "Bytes sent for that traffic after compression, by kind");
  for (int k = 0; k < 3; ++k) t.sample({{"kind", kinds[k]}}, double(wire_by_kind_[k]));
  t.family("geopipe_compression_ratio", "gauge",
           "raw / wire bytes since the run started, by kind (1 when nothing was sent)");
  for (int k = 0; k < 3; ++k) {
    t.sample({{"kind", kinds[k]}},
             wire_by_kind_[k] ? double(raw_by_kind_[k]) / double(wire_by_kind_[k]) : 1.0);
  }
  return t.text();
}

void ProgressDisplay::writePlot(const std::string& path) {
  if (loss_points_.empty()) return;
  std::vector<common::Series> losses = {{"loss", loss_points_}};
  if (!val_points_.empty()) losses.push_back({"validation loss", val_points_});
  const std::vector<common::Series> times = {{"step", step_points_},
                                             {"compute", compute_points_},
                                             {"bubble", bubble_points_},
                                             {"network wait", wait_points_}};
  common::writeTextFile(
      path, common::stackedSvg(
                {common::lineChartSvg(losses, {"Training loss: " + job_.name, "step", "loss"}),
                 common::lineChartSvg(times, {"Step time of the busiest tasklet: " + job_.name,
                                              "step", "seconds"})}));
  out_ << "plot (loss and step time): " << path << "\n";
}

void ProgressDisplay::summary(const TrainResult& r, bool interrupted) {
  out_ << (interrupted ? "interrupted" : "done") << " after " << r.losses.size() << " steps in "
       << std::fixed << std::setprecision(1) << r.seconds << " s: final loss "
       << std::setprecision(4) << (r.losses.empty() ? 0.0 : r.losses.back()) << ", "
       << std::setprecision(0) << r.tokens_per_second << " tokens/s, wire "
       << humanBytesDecimal(double(wire_)) << " of " << humanBytesDecimal(double(raw_)) << " raw ("
       << std::setprecision(1) << (wire_ ? double(raw_) / double(wire_) : 1.0)
       << "x less), placement " << r.placement_source << "\n";
  if (!r.val_losses.empty()) {
    out_ << "validation loss " << std::setprecision(4) << r.val_losses.front().second
         << " after step " << r.val_losses.front().first + 1 << ", " << r.val_losses.back().second
         << " after step " << r.val_losses.back().first + 1 << "\n";
  }
  out_.unsetf(std::ios::fixed);
  printFinalWeights(out_, job_, r.first_step + static_cast<int64_t>(r.losses.size()));
}

void claimCheckpointDir(std::ostream& out, const JobSpec& job, bool overwrite) {
  const int removed = runtime::prepareFreshCheckpointDir(job.checkpoint.dir, overwrite);
  if (removed > 0) {
    out << "--overwrite: removed " << removed << " checkpoint director"
        << (removed == 1 ? "y" : "ies") << " and LATEST from '" << job.checkpoint.dir << "'\n";
  }
}

void printFinalWeights(std::ostream& out, const JobSpec& job, int64_t last_step) {
  const std::string& dir = job.checkpoint.dir;
  if (dir.empty()) {
    out << "warning: the trained weights were not saved: the job has no checkpoint.dir "
           "(set it to keep them and export them with `geopipe export`)\n";
    return;
  }
  const auto latest = runtime::findLatestCheckpoint(dir);
  if (!latest) {
    out << "warning: no committed checkpoint in '" << dir << "': the trained weights were not "
        << "saved\n";
    return;
  }
  if (latest->next_step != last_step) {
    out << "warning: the run ended after step " << last_step
        << " but the newest committed checkpoint is of step " << latest->next_step << ": ";
  }
  out << "weights after step " << latest->next_step << ": "
      << runtime::stepDirectory(dir, latest->next_step);
  if (job.model.isFamily()) out << " (geopipe export " << dir << " --out MODEL_DIR)";
  out << "\n";
}

}  // namespace geopipe::cli
