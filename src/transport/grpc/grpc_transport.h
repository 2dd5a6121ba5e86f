// The gRPC transport: ranks in different processes (or threads) exchange
// tagged messages over one long-lived gRPC stream per (sender, receiver)
// pair, chunked and flow-controlled. The wire schema is proto/peer.proto.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "src/transport/grpc/credentials.h"
#include "src/transport/transport.h"

namespace geopipe::transport {

// Everything a GrpcTransport is configured with. Only `addresses` is
// required; the limits have defaults sized for activations of a few
// hundred MB on networks of 100 Mbps and up.
struct GrpcTransportOptions {
  // The rank of this endpoint, in [0, addresses.size()).
  int rank = 0;
  // Every rank's peer-service address ("host:port", or "NAME:ID via
  // RELAYHOST:PORT" for a rank reached through a relay, relay.h), indexed
  // by rank; its
  // size is the world size. An entry may be empty when the peer's address
  // is learned later (setPeerAddress) — sending to it before then fails.
  std::vector<std::string> addresses;
  // Where this rank's peer service listens; empty: addresses[rank]. Port 0
  // binds a free port (listeningAddress() tells which).
  std::string listen_address;
  // The job's token, a secret the coordinator hands only to workers that
  // presented the join token. Every chunk carries it and the receiver
  // compares it in constant time, refusing a stream whose token differs (a
  // client that is not a worker of this job, or one of another job on the
  // same hosts). It never appears in a message.
  std::string job_token;
  // Mutual TLS (the identity's CA, certificate and key) for the peer service
  // and every link, or plaintext, which is refused unless every address is
  // loopback or plaintext is forced (ConfigError from the constructor and
  // setPeerAddress).
  LinkSecurity security;
  // Messages are cut into chunks of at most this many bytes, in (0, 16 MiB]
  // (gRPC refuses single messages over 4 MB by default; chunks keep far
  // below it and let the receiver apply backpressure mid-message).
  size_t chunk_bytes = size_t{1} << 20;
  // Bytes this rank buffers for messages that no receive has claimed yet,
  // summed over all senders. When a new message would go over it, the
  // peer service stops reading that sender's stream until the application
  // receives enough (HTTP/2 flow control then stalls the sender). A message
  // is always admitted when nothing is buffered or a receive is already
  // waiting for it, so one message larger than the bound still passes.
  uint64_t max_buffered_bytes = uint64_t{256} << 20;
  // Largest single message accepted from a peer; a chunk announcing a larger
  // total is refused (ProtocolError on both sides) before anything is
  // allocated. Also the largest message send() accepts.
  uint64_t max_message_bytes = uint64_t{4} << 30;
  // How long the first send to a peer waits for the peer's server to accept
  // a connection (peers start at different times); IoError naming the peer
  // after it.
  Duration connect_timeout = std::chrono::seconds(30);
  // close() (and the destructor) wait this long for queued sends to be
  // written and read by their receivers, then cancel the streams and fail
  // what is left with IoError. Bounds the destructor.
  Duration close_timeout = std::chrono::seconds(10);
  // HTTP/2 keepalive ping interval on idle connections, so a peer whose host
  // vanished (no FIN/RST) is detected; zero disables.
  Duration keepalive = std::chrono::seconds(10);
  // How long a broken link may take to come back. Zero (the default here;
  // jobs use fault_tolerance.link_grace, 30 s): a stream that breaks fails
  // the sends and receives of that link at once. Positive: the sender
  // keeps every message until the receiver acknowledges it, reconnects
  // (attempts at most 1 s apart) and resumes the stream, writing the
  // unacknowledged messages again, so a blip shorter than this loses and
  // reorders nothing; the receiver's receives from that sender wait
  // meanwhile. Past it, both sides fail the link as with zero. A peer that
  // restarted (a new transport) is never resumed.
  Duration link_grace{0};
  // Peers whose peer service runs in this host's network namespace get
  // their messages over a Unix socket instead of a gRPC stream
  // (same_host.h): no TLS, HTTP/2, TCP or chunks. Found by the port of the
  // peer's address and checked (same user, job token, rank), so any other
  // peer, and one behind a relay or an --advertise port of its own, uses
  // gRPC. Such a link is not resumed (link_grace): it breaks only with a
  // process. Off here (the gRPC path's own tests); jobs set it with
  // transport.same_host (`unix`, the default).
  bool same_host_sockets = false;
};

// One rank's endpoint of the gRPC transport. The constructor starts this
// rank's peer service (a gRPC server with its own threads) on the listen
// address; the first send to a peer connects to it (waiting up to
// connect_timeout) and opens one stream that every later send to that
// peer reuses. A writer thread per peer writes that peer's messages in
// send order, in chunks of chunk_bytes. send() returns at once; its Work
// completes when the last chunk has been written to the stream (handed to
// gRPC within the HTTP/2 flow-control window), not when the receiver has it.
// Received chunks are reassembled and delivered to the rank's Mailbox
// (mailbox.h: per-(source, tag) FIFO, the matching inproc uses); see
// GrpcTransportOptions::max_buffered_bytes for the backpressure.
//
// Errors: a stream that breaks (peer died, refused a chunk, shut down)
// fails the send being written and every later send to that peer, unless
// link_grace allows it to resume (then messages are resent in order, so
// per-tag FIFO order can never silently skip a message); receives waiting
// on a sender whose stream ended (for good) fail, as do later ones that
// find no queued message. Failures are IoError (connection,
// peer gone) or ProtocolError (refused traffic) naming both ranks, the
// peer's address, the operation, the tag and the gRPC status code.
//
// Thread-safety: every method may be called from any thread. Ownership: the
// caller owns the transport; close() (or the destructor, which calls it)
// stops the threads; handles outlive it and report IoError.
class GrpcTransport : public Transport {
 public:
  explicit GrpcTransport(GrpcTransportOptions options);
  ~GrpcTransport() override;
  GrpcTransport(const GrpcTransport&) = delete;
  GrpcTransport& operator=(const GrpcTransport&) = delete;

  int rank() const override;
  int worldSize() const override;
  std::shared_ptr<Work> send(int peer, const Tag& tag, Bytes payload) override;
  std::shared_ptr<RecvWork> recv(int peer, const Tag& tag) override;
  TransportStats stats() const override;
  std::string name() const override { return "grpc"; }

  // "host:port" the peer service is bound to (the chosen port when the
  // listen address had port 0).
  std::string listeningAddress() const;
  // Sets peer's address (a launcher that learns ports after binding). Only
  // before the first send to `peer`; throws Error afterwards.
  void setPeerAddress(int peer, const std::string& address);
  // Hands `fd`, a connection to this rank's peer service that this process
  // dialled out (a relayed peer's, see relay.h), to the peer service as if
  // it had accepted it. Takes ownership; closes it when the transport is
  // closed.
  void adoptConnection(int fd);
  // Bytes held for messages no receive has claimed yet (for tests and
  // metrics); see max_buffered_bytes.
  uint64_t bufferedBytes() const;

  // Drains queued sends (up to close_timeout), then stops the peer service
  // and fails every pending and later operation with IoError. Idempotent;
  // the destructor calls it. Blocks at most about close_timeout + 1 s.
  void close();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

// Registers "grpc" with makeTransport (done automatically by a static
// initializer in every binary linking geopipe_transport_grpc; calling it
// again is harmless).
void registerGrpcTransport();

}  // namespace geopipe::transport
