// The Chrome-trace writer: events as JSON text, appended before a tail that
// every flush writes again, so the file stays valid JSON.
#include "src/common/trace_writer.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include "geopipe/error.h"

namespace geopipe::common {
namespace {

// What follows the events; written again after them by every flush.
constexpr char kTail[] = "\n]}\n";
// The sort key of metadata events: before every span.
constexpr int64_t kMetadataTs = std::numeric_limits<int64_t>::min();
constexpr size_t kLanes = 6;

// Row ids ("tid") and the order the viewers show the rows in: compute on
// top, then receives, sends, collectives and checkpoints, with the codec
// lane right under compute. A packed lane's
// k-th row is base + k (at most kMaxRows rows; the last takes the rest).
constexpr int kTidBase[kLanes] = {1, 100, 200, 300, 400, 50};
constexpr int kMaxRows = 99;

// `s` as a JSON string. The names are the runtime's own ASCII; any other
// byte is replaced rather than risk invalid UTF-8 in the file.
std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (u < 0x20 || u >= 0x7f) {
      out += '?';
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string metadata(int pid, int tid, const char* name, const std::string& arg) {
  return "{\"name\":\"" + std::string(name) + "\",\"ph\":\"M\",\"pid\":" + std::to_string(pid) +
         ",\"tid\":" + std::to_string(tid) + ",\"args\":{" + arg + "}}";
}

}  // namespace

const char* traceLaneName(TraceLane lane) {
  switch (lane) {
    case TraceLane::COMPUTE:
      return "compute";
    case TraceLane::RECV:
      return "recv";
    case TraceLane::SEND:
      return "send";
    case TraceLane::SYNC:
      return "data-parallel sync";
    case TraceLane::CHECKPOINT:
      return "checkpoint";
    case TraceLane::CODEC:
      return "codec";
  }
  return "unknown";
}

TraceWriter::TraceWriter(TraceWriterOptions options)
    : options_(std::move(options)),
      origin_(TraceClock::now()),
      origin_unix_us_(std::chrono::duration_cast<std::chrono::microseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count()),
      rows_(kLanes) {
  fd_ = ::open(options_.path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    GEOPIPE_THROW(IoError, "cannot write the trace file '", options_.path,
                  "': ", std::strerror(errno));
  }
  // The header, then the process's name: a file with no spans yet is a
  // valid, empty timeline.
  std::lock_guard<std::mutex> lock(mu_);
  appendLocked(
      kMetadataTs, 0,
      metadata(options_.pid, 0, "process_name", "\"name\":" + quoted(options_.process_name)));
  appendLocked(kMetadataTs, 0,
               metadata(options_.pid, 0, "process_sort_index",
                        "\"sort_index\":" + std::to_string(options_.pid)));
  writeLocked(
      "{\"displayTimeUnit\":\"ms\",\"otherData\":{\"writer\":\"geopipe\",\"clock\":"
      "\"microseconds since the Unix epoch\"},\"traceEvents\":[");
  if (failed_) {
    ::close(fd_);
    fd_ = -1;
    GEOPIPE_THROW(IoError, "cannot write the trace file '", options_.path, "': ", write_error_);
  }
}

TraceWriter::~TraceWriter() {
  close();
}

int64_t TraceWriter::unixMicros(TraceClock::time_point t) const {
  return origin_unix_us_ + std::chrono::floor<std::chrono::microseconds>(t - origin_).count();
}

uint64_t TraceWriter::spans() const {
  std::lock_guard<std::mutex> lock(mu_);
  return spans_;
}

void TraceWriter::addRowLocked(int tid, const std::string& name) {
  appendLocked(kMetadataTs, 0,
               metadata(options_.pid, tid, "thread_name", "\"name\":" + quoted(name)));
  appendLocked(
      kMetadataTs, 0,
      metadata(options_.pid, tid, "thread_sort_index", "\"sort_index\":" + std::to_string(tid)));
}

// The row of a span starting at start_us: one row for most lanes; for the
// packed ones the first row whose spans all ended by then (greedy interval
// colouring: with spans recorded in order of their starts, as one recording
// thread does, it uses the fewest rows; out of order it may use more, never
// overlapping ones).
int TraceWriter::tidLocked(TraceLane lane, int64_t start_us) {
  const auto index = static_cast<size_t>(lane);
  std::vector<Row>& rows = rows_[index];
  const bool packed = lane == TraceLane::SEND || lane == TraceLane::RECV;
  for (Row& row : rows) {
    if (!packed || row.busy_until <= start_us) return row.tid;
  }
  if (static_cast<int>(rows.size()) >= kMaxRows) return rows.back().tid;
  const int k = static_cast<int>(rows.size());
  rows.push_back({kTidBase[index] + k, 0});
  std::string name = traceLaneName(lane);
  if (k > 0) name += " " + std::to_string(k + 1);
  addRowLocked(rows.back().tid, name);
  return rows.back().tid;
}

void TraceWriter::span(TraceLane lane, const std::string& name, TraceClock::time_point start,
                       TraceClock::time_point end, const TraceArgs& args) {
  const int64_t ts = unixMicros(start);
  const int64_t dur = std::max<int64_t>(0, unixMicros(end) - ts);
  std::lock_guard<std::mutex> lock(mu_);
  if (fd_ < 0 || failed_) return;
  const int tid = tidLocked(lane, ts);
  for (Row& row : rows_[static_cast<size_t>(lane)]) {
    if (row.tid == tid) row.busy_until = std::max(row.busy_until, ts + dur);
  }
  std::string e = "{\"name\":" + quoted(name) + ",\"cat\":\"" + traceLaneName(lane) +
                  "\",\"ph\":\"X\",\"ts\":" + std::to_string(ts) +
                  ",\"dur\":" + std::to_string(dur) + ",\"pid\":" + std::to_string(options_.pid) +
                  ",\"tid\":" + std::to_string(tid) + ",\"args\":{";
  bool first = true;
  auto arg = [&](const char* key, int64_t value) {
    if (value < 0) return;
    e += (first ? "\"" : ",\"") + std::string(key) + "\":" + std::to_string(value);
    first = false;
  };
  arg("step", args.step);
  arg("micro_batch", args.micro_batch);
  arg("peer", args.peer);
  arg("bytes", args.bytes);
  e += "}}";
  appendLocked(ts, dur, std::move(e));
  ++spans_;
  if (pending_bytes_ >= options_.buffer_bytes) writeLocked();
}

void TraceWriter::appendLocked(int64_t ts, int64_t dur, std::string event) {
  pending_bytes_ += event.size() + 2;
  pending_.push_back({ts, dur, std::move(event)});
}

// One pwrite of `head`, the buffered events and the tail, at the old tail's
// place: the file grows by the events and ends in the tail again. The
// events go in order of their start, a span before those it encloses (the
// longer first at equal starts): spans are recorded when they end, so an
// inner one is recorded first, and a viewer that nests spans of equal
// start in file order would draw it around its parent.
void TraceWriter::writeLocked(const std::string& head) {
  if (fd_ < 0 || failed_) return;
  std::stable_sort(pending_.begin(), pending_.end(), [](const Pending& a, const Pending& b) {
    return a.ts != b.ts ? a.ts < b.ts : a.dur > b.dur;
  });
  std::string chunk = head;
  chunk.reserve(head.size() + pending_bytes_ + sizeof(kTail));
  for (const Pending& p : pending_) {
    chunk += first_event_ ? "\n" : ",\n";
    chunk += p.json;
    first_event_ = false;
  }
  const size_t events_end = chunk.size();
  chunk += kTail;
  size_t done = 0;
  while (done < chunk.size()) {
    const ssize_t n =
        ::pwrite(fd_, chunk.data() + done, chunk.size() - done, static_cast<off_t>(offset_ + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      failed_ = true;
      write_error_ = n < 0 ? std::strerror(errno) : "nothing written";
      spdlog::warn("trace '{}': write failed ({}); the timeline stops here", options_.path,
                   write_error_);
      return;
    }
    done += static_cast<size_t>(n);
  }
  offset_ += events_end;
  pending_.clear();
  pending_bytes_ = 0;
}

void TraceWriter::flush() {
  std::lock_guard<std::mutex> lock(mu_);
  writeLocked();
}

void TraceWriter::close() {
  std::lock_guard<std::mutex> lock(mu_);
  if (fd_ < 0) return;
  writeLocked();
  ::close(fd_);
  fd_ = -1;
}

}  // namespace geopipe::common
