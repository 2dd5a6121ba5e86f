// The receiving side of one incoming peer stream, without the gRPC server:
// checks every PeerChunk (identity, sequence, sizes), reassembles messages
// and hands them to the rank's Mailbox. The peer service feeds it the chunks it
// reads; fuzz/peer_chunks_fuzzer.cc feeds it random ones.
#pragma once

#include <grpcpp/support/status.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "proto/peer.pb.h"
#include "src/transport/mailbox.h"
#include "src/transport/transport.h"

namespace geopipe::transport {

// A message's buffer is allocated as its bytes arrive, at most this much
// ahead of them: a chunk that announces a huge total_size costs the
// receiver what the sender really sends, not what it claims.
constexpr uint64_t kMaxPreallocatedBytes = uint64_t{64} << 20;

// What a receiver keeps of each sender across its streams, so that a
// stream that broke can be resumed by the next one from the same sender
// transport (the same incarnation): the next message sequence it expects,
// which stream is current, and since when the sender has been away. A
// sender with incarnation 0 cannot resume; each of its streams starts
// afresh. Thread-safe; shared by every stream handler of one transport.
class PeerSessions {
 public:
  using Clock = std::chrono::steady_clock;
  explicit PeerSessions(int world_size);

  struct Attached {
    uint64_t epoch = 0;     // this stream's number; a newer one supersedes it
    uint64_t next_seq = 0;  // the first message sequence the stream carries
  };
  // A stream's first frame from `src` (identity checked). A resume frame
  // needs a session of the same incarnation (broken or still current: the
  // old connection may not have noticed yet) and supersedes its stream,
  // unless the sender still holds every message from sequence 0 (`oldest`;
  // nothing was acknowledged), which starts a new session. A first data
  // frame starts a new session; one of another incarnation is given up
  // (the sender came back as a new process, which is not resumed). False
  // with `why` when refused.
  bool attach(int src, uint64_t incarnation, bool resume, uint64_t oldest, Attached* out,
              std::string* why);
  // Whether `epoch` is still src's current stream.
  bool current(int src, uint64_t epoch) const;
  // Runs `deliver` and counts the message if `epoch` is still current,
  // atomically with respect to attach(); the next expected sequence goes to
  // *next_seq. False (nothing run): superseded.
  bool deliverIf(int src, uint64_t epoch, const std::function<void()>& deliver, uint64_t* next_seq);
  // The current stream of src ended. broken: without the sender's goodbye
  // and resumable (the session waits for a resume); otherwise it is
  // dropped. False when `epoch` was superseded (nothing changed).
  bool detach(int src, uint64_t epoch, bool broken, Clock::time_point now);
  // Sessions broken for longer than `grace` without a resume: dropped and
  // returned (their receives should fail now).
  std::vector<int> expire(Clock::time_point now, Clock::duration grace);

 private:
  struct Session {
    bool open = false;  // a session exists (a stream attached, not dropped)
    uint64_t incarnation = 0;
    uint64_t epoch = 0;
    uint64_t next_seq = 0;
    bool broken = false;  // its current stream broke; waiting for a resume
    Clock::time_point broken_at;
  };
  mutable std::mutex mu_;
  std::vector<Session> sessions_;  // by source rank
  uint64_t last_epoch_ = 0;
};

// One stream's state machine. The first chunk that passes the identity
// checks fixes the sender's rank and joins its session (PeerSessions); each
// message must arrive as contiguous chunks (offsets 0, c, 2c, ...) with
// sequence numbers n, n+1, ... from the session's next one (0 for a new
// session). A chunk
// that breaks a rule yields the status the stream must end with (and fails
// the sender's receives with ProtocolError once it is known). Not
// thread-safe: one per stream, called from the stream's handler thread.
class PeerStreamAssembler {
 public:
  struct Config {
    int rank = 0;                    // this rank
    int world_size = 0;              // valid source ranks: [0, world_size)
    std::string job_token;           // chunks must carry it
    uint64_t max_message_bytes = 0;  // largest total_size accepted
    // This receiving transport's identity, told to resumable senders.
    uint64_t incarnation = 0;
    // Whether a broken stream from a resumable sender waits for its
    // resume (the transport fails the sender's receives once its grace
    // expires) instead of failing them at once.
    bool resumable = false;
  };
  // describe_peer(src) names a sender; cancelled() tells whether the call
  // was cancelled (admit() gives up waiting for buffer space then);
  // ack(sequence, incarnation) sends a PeerAck to the sender (resumable
  // senders only; false when it could not be written).
  PeerStreamAssembler(Config config, std::shared_ptr<Mailbox> mailbox,
                      std::shared_ptr<PeerSessions> sessions,
                      std::function<std::string(int)> describe_peer,
                      std::function<bool()> cancelled,
                      std::function<void(const geopipe::v1::PeerAck&)> ack);
  ~PeerStreamAssembler();
  PeerStreamAssembler(const PeerStreamAssembler&) = delete;
  PeerStreamAssembler& operator=(const PeerStreamAssembler&) = delete;

  // Handles one chunk. OK: read the next one; anything else: end the
  // stream with that status (no further chunk may be passed).
  grpc::Status onChunk(const geopipe::v1::PeerChunk& chunk);
  // The stream ended (no more chunks): the status to end the call with. OK
  // after the sender's end_of_stream frame, DATA_LOSS otherwise.
  grpc::Status onEnd();

  // The sender's rank, -1 until a chunk established it.
  int source() const { return src_; }

 private:
  grpc::Status refuse(grpc::StatusCode code, const std::string& why);
  // The first frame that passed the identity checks: joins the sender's
  // session; a non-OK status refuses the stream.
  grpc::Status attach(const geopipe::v1::PeerChunk& chunk);
  // A newer stream from the same sender took over: this one ends quietly.
  grpc::Status superseded();
  void sendAck();
  bool abandoned() const;

  const Config config_;
  const std::shared_ptr<Mailbox> mailbox_;
  const std::shared_ptr<PeerSessions> sessions_;
  const std::function<std::string(int)> describe_peer_;
  const std::function<bool()> cancelled_;
  const std::function<void(const geopipe::v1::PeerAck&)> ack_;
  const std::string self_;     // "rank R (job 'J')"
  int src_ = -1;               // established by the first valid chunk
  uint64_t incarnation_ = 0;   // the sender's (0: not resumable)
  uint64_t epoch_ = 0;         // this stream's number in the sender's session
  uint64_t expected_seq_ = 0;  // sequence of the next message
  bool in_message_ = false;
  Tag tag_;
  uint64_t total_ = 0;
  Bytes buffer_;               // buffer_.size() bytes of the message received
  bool said_goodbye_ = false;  // the sender's end_of_stream frame arrived
  bool finished_ = false;      // a refusal or onEnd() ended the stream
};

}  // namespace geopipe::transport
