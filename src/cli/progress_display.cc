// Progress lines and JSON-lines metrics for multi-process runs.
#include "src/cli/progress_display.h"

#include "src/cli/tensorboard_writer.h"
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
}

ProgressDisplay::~ProgressDisplay() = default;

void refuseTensorBoardDir(const JobSpec& job, const std::string& verb) {
  GEOPIPE_CHECK(job.logging.tensorboard_dir.empty(), ConfigError,
                "logging.tensorboard_dir is set ('", common::printable(job.logging.tensorboard_dir),
                "') but ", verb,
                " does not write TensorBoard files (train, launch and coordinator do): remove it "
                "from the job for ",
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
  char buf[40];
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
  if (m.hasValLoss()) j["val_loss"] = m.valLoss();
  return j;
}

void ProgressDisplay::onStep(const StepMetrics& m) {
  const auto now = std::chrono::system_clock::now();
  step_seconds_ += m.seconds;
  const uint64_t step_raw = m.activation_raw_bytes + m.gradient_raw_bytes + m.dp_raw_bytes;
  const uint64_t step_wire = m.activation_wire_bytes + m.gradient_wire_bytes + m.dp_wire_bytes;
  raw_ += step_raw;
  wire_ += step_wire;
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
