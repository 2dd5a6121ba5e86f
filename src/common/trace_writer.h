// A timeline of one tasklet in the Chrome Trace Event Format (the JSON that
// chrome://tracing and Perfetto open): complete events on named lanes,
// streamed to a file that is valid JSON after every flush. Torch-free.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace geopipe::common {

// The clock spans are measured on: the transports' (transport::Clock).
using TraceClock = std::chrono::steady_clock;

// A lane is a row of the timeline ("tid" in the file). SEND and RECV hold
// operations that overlap one another (a send is posted while the previous
// one is on the wire; a step posts all its receives at once), which one row
// cannot draw: the writer spreads them over rows "send", "send 2", ... so
// that no two spans of a row overlap. The other lanes are one row each;
// their spans must nest or follow one another (one thread records them).
enum class TraceLane : uint8_t {
  COMPUTE,     // forward, backward, decodes, optimizer step, waits of the compute thread
  RECV,        // a receive, from its post to the message's arrival
  SEND,        // a send, from its post to the transport handing its bytes off
  SYNC,        // collectives: data-parallel exchange, grad-norm and tied-weight all-reduces
  CHECKPOINT,  // saving and loading checkpoints
  CODEC,       // boundary encodes on the executor's codec lane (executor.h, Outgoing)
};

// "compute", "recv", "send", "data-parallel sync", "checkpoint", "codec".
const char* traceLaneName(TraceLane lane);

// What an event carries in "args"; a field left at -1 is left out.
struct TraceArgs {
  int64_t step = -1;         // the training step (0-based, as the tags)
  int64_t micro_batch = -1;  // the micro-batch of the step
  int64_t peer = -1;         // the other rank of a send or receive
  int64_t bytes = -1;        // bytes on the wire (after compression)
};

struct TraceWriterOptions {
  std::string path;          // the file, created or truncated; its directory must exist
  int pid = 0;               // "pid" of every event: the tasklet's rank
  std::string process_name;  // the name the viewers show for pid
  // Buffered events are written out when they reach this many bytes, even
  // between flush() calls, so memory stays bounded however long a step.
  size_t buffer_bytes = size_t{1} << 20;
};

// Writes one tasklet's timeline. Timestamps ("ts", "dur") are whole
// microseconds; "ts" counts from the Unix epoch (the steady clock mapped to
// the wall clock once, when the writer is made), so the files of several
// processes, even of several hosts with synchronised clocks, line up when
// merged into one trace.
//
// The file always ends in "]}": events are appended before that tail, which
// each flush() writes again after them in one write. So the file is valid
// JSON after every flush; a process killed between two flushes leaves the
// events up to the last one. Memory: the events since the last flush, at
// most options.buffer_bytes. Each flush writes its events in order of their
// start (an enclosing span before the spans inside it).
//
// Thread-safe (one mutex). A failed write is logged once as a warning and
// ends the trace (training goes on); the constructor throws IoError when the
// file cannot be created.
class TraceWriter {
 public:
  explicit TraceWriter(TraceWriterOptions options);
  ~TraceWriter();
  TraceWriter(const TraceWriter&) = delete;
  TraceWriter& operator=(const TraceWriter&) = delete;

  // One complete event ("ph": "X") named `name` on `lane` from `start` to
  // `end` (an end before the start is drawn with duration 0).
  void span(TraceLane lane, const std::string& name, TraceClock::time_point start,
            TraceClock::time_point end, const TraceArgs& args = {});
  // Writes the buffered events; the file is valid JSON afterwards.
  void flush();
  // Flushes and closes the file; later spans are dropped. Idempotent.
  void close();

  // `t` as the file's "ts": microseconds since the Unix epoch.
  int64_t unixMicros(TraceClock::time_point t) const;
  const std::string& path() const { return options_.path; }
  // Complete events recorded so far (metadata events not counted).
  uint64_t spans() const;

 private:
  struct Row {
    int tid = 0;
    int64_t busy_until = 0;  // end (µs) of the row's latest span
  };
  struct Pending {
    int64_t ts, dur;  // the sort key
    std::string json;
  };
  int tidLocked(TraceLane lane, int64_t start_us);
  void addRowLocked(int tid, const std::string& name);
  void appendLocked(int64_t ts, int64_t dur, std::string event);
  void writeLocked(const std::string& head = "");

  const TraceWriterOptions options_;
  const TraceClock::time_point origin_;
  const int64_t origin_unix_us_;
  mutable std::mutex mu_;
  int fd_ = -1;
  uint64_t offset_ = 0;           // where the tail starts in the file
  std::vector<Pending> pending_;  // events not yet written
  size_t pending_bytes_ = 0;
  bool first_event_ = true;
  bool failed_ = false;
  std::string write_error_;  // why the first failed write failed
  uint64_t spans_ = 0;
  std::vector<std::vector<Row>> rows_;  // by lane: its rows so far
};

// Records a span on `trace` from construction to destruction; nothing when
// `trace` is null. args() may be filled in before the end (bytes known only
// then).
class TraceSpan {
 public:
  TraceSpan(TraceWriter* trace, TraceLane lane, const char* name, TraceArgs args = {})
      : trace_(trace), lane_(lane), name_(name), args_(args) {
    if (trace_) start_ = TraceClock::now();
  }
  ~TraceSpan() {
    if (trace_) trace_->span(lane_, name_, start_, TraceClock::now(), args_);
  }
  TraceSpan(const TraceSpan&) = delete;
  TraceSpan& operator=(const TraceSpan&) = delete;
  TraceArgs& args() { return args_; }

 private:
  TraceWriter* trace_;
  TraceLane lane_;
  const char* name_;
  TraceArgs args_;
  TraceClock::time_point start_{};
};

}  // namespace geopipe::common
