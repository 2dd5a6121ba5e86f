// The receiving side of one incoming peer stream, without the gRPC server:
// checks every PeerChunk (identity, sequence, sizes), reassembles messages
// and hands them to the rank's Mailbox. The peer service feeds it the chunks it
// reads; fuzz/peer_chunks_fuzzer.cc feeds it random ones.
#pragma once

#include <grpcpp/support/status.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "proto/peer.pb.h"
#include "src/transport/mailbox.h"
#include "src/transport/transport.h"

namespace geopipe::transport {

// A message's buffer is allocated as its bytes arrive, at most this much
// ahead of them: a chunk that announces a huge total_size costs the
// receiver what the sender really sends, not what it claims.
constexpr uint64_t kMaxPreallocatedBytes = uint64_t{64} << 20;

// One stream's state machine. The first chunk that passes the identity
// checks fixes the sender's rank; each message must arrive as contiguous
// chunks (offsets 0, c, 2c, ...) with sequence numbers 0, 1, 2, ... A chunk
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
  };
  // describe_peer(src) names a sender; cancelled() tells whether the call
  // was cancelled (admit() gives up waiting for buffer space then).
  PeerStreamAssembler(Config config, std::shared_ptr<Mailbox> mailbox,
                      std::function<std::string(int)> describe_peer,
                      std::function<bool()> cancelled);
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

  const Config config_;
  const std::shared_ptr<Mailbox> mailbox_;
  const std::function<std::string(int)> describe_peer_;
  const std::function<bool()> cancelled_;
  const std::string self_;     // "rank R (job 'J')"
  int src_ = -1;               // established by the first valid chunk
  uint64_t expected_seq_ = 0;  // sequence of the next message
  bool in_message_ = false;
  Tag tag_;
  uint64_t total_ = 0;
  Bytes buffer_;               // buffer_.size() bytes of the message received
  bool said_goodbye_ = false;  // the sender's end_of_stream frame arrived
  bool finished_ = false;      // a refusal or onEnd() ended the stream
};

}  // namespace geopipe::transport
