// The transport interface: tagged, asynchronous point-to-point messages
// between the ranks (tasklets) of a job. Implementations live one per folder
// (inproc/, grpc/, nccl/); decorators (link emulation, metrics) wrap any of
// them. No LibTorch here: payloads are bytes, encoded by the engine.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace geopipe::transport {

using Bytes = std::vector<uint8_t>;
using Clock = std::chrono::steady_clock;
using Duration = std::chrono::milliseconds;

// What a message is, for matching and for accounting; part of the tag.
enum class Channel : uint8_t {
  ACTIVATION = 1,       // forward, stage s -> s+1
  ACTIVATION_GRAD = 2,  // backward, stage s+1 -> s
  GRADIENT = 3,         // data-parallel gradient exchange
  CONTROL = 4,          // barriers, metrics
};

// A message tag: a receive matches the send with the same (peer, tag).
// Messages with the same (peer, tag) are delivered in send order.
struct Tag {
  Channel channel = Channel::CONTROL;
  int64_t step = 0;
  int32_t micro_batch = 0;
  int32_t index = 0;  // free for the caller (bucket, chunk, round)
  bool operator==(const Tag& o) const {
    return channel == o.channel && step == o.step && micro_batch == o.micro_batch &&
           index == o.index;
  }
  bool operator<(const Tag& o) const;
  std::string str() const;
};

// A pending operation. wait() blocks until it completes, rethrowing the
// failure it stored (TimeoutError when the timeout passes first, or the
// transport's ProtocolError/IoError). Safe to call wait() from one thread.
class Work {
 public:
  virtual ~Work() = default;
  // Blocks until done; throws TimeoutError after `timeout`.
  virtual void wait(Duration timeout) = 0;
  virtual bool done() const = 0;
};

// A pending receive; wait() then payload() gives the bytes (moved out once).
class RecvWork : public Work {
 public:
  virtual Bytes takePayload() = 0;
};

// Per-transport traffic counters (bytes as handed to send(), i.e. after
// compression: the bytes on the wire).
struct TransportStats {
  uint64_t messages_sent = 0;
  uint64_t bytes_sent = 0;
  uint64_t messages_received = 0;
  uint64_t bytes_received = 0;
};

// One rank's view of the job's network. All methods are thread-safe: the
// executor sends from a background thread while posting receives from
// another. send() copies or takes the payload and returns at once; the send
// completes when the transport has handed the bytes off (inproc: delivered;
// emulated: after the link's serialization and latency). recv() posts a
// receive; its payload arrives through the returned handle. A transport
// that lacks a capability throws "X does not support Y".
class Transport {
 public:
  virtual ~Transport() = default;
  virtual int rank() const = 0;
  virtual int worldSize() const = 0;
  virtual std::shared_ptr<Work> send(int peer, const Tag& tag, Bytes payload) = 0;
  virtual std::shared_ptr<RecvWork> recv(int peer, const Tag& tag) = 0;
  virtual TransportStats stats() const = 0;
  virtual std::string name() const = 0;
};

}  // namespace geopipe::transport
