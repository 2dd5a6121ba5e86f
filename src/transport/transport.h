// The transport interface: tagged, asynchronous point-to-point messages
// between the ranks (tasklets) of a job. Implementations live one per folder
// (inproc/, grpc/, nccl/); the link emulator (link_emulator.h) is a
// decorator that wraps any of them. No LibTorch here: payloads are bytes, encoded by the engine.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace geopipe::transport {

using Bytes = std::vector<uint8_t>;
using Clock = std::chrono::steady_clock;
using Duration = std::chrono::milliseconds;

// Pass to Work::wait() to wait without a deadline.
inline constexpr Duration kWaitForever = Duration::max();

// The deadline `timeout` from now, saturating instead of overflowing (so
// kWaitForever works with condition_variable::wait_until).
inline Clock::time_point deadlineAfter(Duration timeout) {
  const auto now = Clock::now();
  if (timeout >= std::chrono::duration_cast<Duration>(Clock::time_point::max() - now)) {
    return Clock::time_point::max();
  }
  return now + timeout;
}

// What a message is, for matching and for accounting; part of the tag.
enum class Channel : uint8_t {
  ACTIVATION = 1,       // forward, stage s -> s+1
  ACTIVATION_GRAD = 2,  // backward, stage s+1 -> s
  GRADIENT = 3,         // data-parallel gradient exchange
  CONTROL = 4,          // barriers, the executor's receipts (metrics go to the coordinator)
};

// "ACTIVATION", "GRADIENT", ...
const char* channelName(Channel channel);

// A message tag: a receive matches the send with the same (peer, tag).
// Messages with the same (peer, tag) are delivered in send order.
struct Tag {
  Channel channel = Channel::CONTROL;
  int64_t step = 0;
  int32_t micro_batch = 0;  // collectives use it as the collective's id
  int32_t index = 0;        // free for the caller (bucket, chunk, round)
  bool operator==(const Tag& o) const {
    return channel == o.channel && step == o.step && micro_batch == o.micro_batch &&
           index == o.index;
  }
  bool operator!=(const Tag& o) const { return !(*this == o); }
  // Lexicographic on (channel, step, micro_batch, index); for ordered maps.
  bool operator<(const Tag& o) const;
  // "GRADIENT/step=3/mb=0/idx=2", for error messages and logs.
  std::string str() const;
};

// A pending operation (c10d's Work). wait() blocks the calling thread until
// the operation completes and rethrows the failure it stored: TimeoutError
// when `timeout` passes first, IoError when the peer failed or the
// transport was shut down, ProtocolError for malformed traffic. The message
// names the ranks, the tag and the operation. done() never blocks and is
// true once the operation has finished, successfully or not.
//
// Timeouts: a receive whose wait() times out is withdrawn (a later message
// with that tag goes to the next receive posted for it) and every further
// wait() rethrows the same TimeoutError. A send that times out is not
// withdrawn: its bytes are already committed to the link; wait() may be
// called again.
//
// Thread-safety: wait() and done() may be called from any thread, but the
// intended use is one waiter per handle.
class Work {
 public:
  virtual ~Work() = default;
  // Blocks until done; throws TimeoutError after `timeout`.
  virtual void wait(Duration timeout) = 0;
  virtual bool done() const = 0;
  // When the operation finished (succeeded or failed), on Clock: a send when
  // the transport handed its bytes off (see Transport), a receive when its
  // message was matched to it. Clock::time_point{} while not done(). The
  // timeline trace (logging.trace_dir) draws a send or receive from its post
  // to this instant, which a waiter's own clock cannot tell: the waiter may
  // look long after.
  virtual Clock::time_point finishedAt() const = 0;
};

// A pending receive; after a successful wait(), takePayload() moves the
// bytes out (once: a second call throws).
class RecvWork : public Work {
 public:
  virtual Bytes takePayload() = 0;
};

// Per-transport traffic counters (bytes as handed to send(), i.e. after
// compression: the bytes on the wire). Sent counts at send(); received
// counts when a message is matched to a receive.
struct TransportStats {
  uint64_t messages_sent = 0;
  uint64_t bytes_sent = 0;
  // bytes_sent by destination rank (worldSize() entries; a send to oneself
  // at this rank's own entry): the bytes of each outgoing link.
  std::vector<uint64_t> bytes_sent_to;
  uint64_t messages_received = 0;
  uint64_t bytes_received = 0;
  // gRPC: 100 ms waits for a peer's connection past the first one (a peer
  // not up yet, unreachable, or a broken link reconnecting).
  uint64_t connect_retries = 0;
  // Sends that failed (a broken or refused link, a transport closing).
  uint64_t sends_failed = 0;
  // gRPC with a link grace: broken streams resumed, and the messages
  // written again on them (docs/transport.md "Resumable links").
  uint64_t links_resumed = 0;
  uint64_t messages_resent = 0;
  // gRPC: messages sent over the same-host path (Unix sockets), of messages_sent.
  uint64_t same_host_messages = 0;
};

// The send side of TransportStats, counted once for every transport (and
// the link emulator): messages and bytes in all and by destination rank.
// Lock-free; count() may be called from any thread.
class SendTally {
 public:
  explicit SendTally(int world_size);
  // One message of `bytes` to `peer` (in [0, world_size)).
  void count(int peer, uint64_t bytes);
  // Adds the counts to `into` (bytes_sent_to grown to world_size entries).
  void addTo(TransportStats& into) const;

 private:
  const int world_size_;
  std::atomic<uint64_t> messages_{0};
  // By destination rank; bytes_sent is their sum, so the two always agree.
  std::unique_ptr<std::atomic<uint64_t>[]> bytes_to_;
};

// One rank's view of the job's network. All methods are thread-safe: the
// executor sends from a background thread while posting receives from
// another. send() takes the payload and returns at once; the send completes
// when the transport has handed the bytes off (inproc: delivered; emulated:
// when the link has finished serializing them, i.e. the sender's NIC is
// free again). recv() posts a receive and returns at once; its payload
// arrives through the returned handle. A receive may be posted before or
// after the matching send. Sending to oneself is allowed. A transport that
// lacks a capability throws "X does not support Y"; errors in arguments
// (a peer outside [0, worldSize())) throw geopipe::Error at the call.
//
// Ownership: the caller owns the transport (usually through a shared_ptr,
// so decorators can wrap it); handles may outlive the call but not the
// transport's backing resources (the inproc hub, the emulator's thread).
class Transport {
 public:
  virtual ~Transport() = default;
  virtual int rank() const = 0;
  virtual int worldSize() const = 0;
  virtual std::shared_ptr<Work> send(int peer, const Tag& tag, Bytes payload) = 0;
  virtual std::shared_ptr<RecvWork> recv(int peer, const Tag& tag) = 0;
  virtual TransportStats stats() const = 0;
  // "inproc", "emulated(inproc)", ...
  virtual std::string name() const = 0;
};

// An optional capability of a transport (the NCCL one): an in-place sum
// all-reduce of float32 device memory with the library's own collective.
// The data-parallel gradient exchange uses it, when every member of the
// group is reachable, for uncompressed gradients that live on a GPU.
class DeviceAllReduce {
 public:
  virtual ~DeviceAllReduce() = default;
  // True when every rank of `group` can take part.
  virtual bool canAllReduceDevice(const std::vector<int>& group) const = 0;
  // Collective over `group` (same order on every member); `stream` is a
  // cudaStream_t (nullptr: the legacy default stream). Returns when done.
  virtual void allReduceSumDevice(float* data, size_t n, const std::vector<int>& group,
                                  void* stream) = 0;
};

}  // namespace geopipe::transport
