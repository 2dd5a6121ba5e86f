// A listening socket of geopipe's own in front of a gRPC server, so that
// connections that have not finished their TCP + TLS + HTTP/2 set-up are
// bounded in total and per source address before gRPC ever sees them.
// gRPC 1.51 has no such cap; it accepts everything and holds each idle
// connection until the handshake timeout, so one host could exhaust the
// coordinator's file descriptors before anyone authenticated. The gate
// accepts, counts, closes what is over the limits at once, and hands the rest
// to the server through gRPC's external-connection acceptor, which runs the
// same TLS handshake with the same credentials as a listening port would.
//
// A connection counts as "in set-up" from its accept until the server's
// first call from it arrives (an interceptor reports it), it is closed, or
// the handshake timeout passes (after which gRPC has closed it unless the
// set-up finished). Torch-free; gRPC types are only forward-declared.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "src/transport/grpc/credentials.h"

namespace grpc {
class ServerBuilder;
class ServerCredentials;
}  // namespace grpc

namespace geopipe::transport {

struct ConnectionLimits {
  // Connections in set-up at once, from every address together.
  int max_pending = 512;
  // Connections in set-up at once from one source address.
  int max_pending_per_address = 64;
  // A set-up that takes longer is closed by the server (and the gate stops
  // counting it).
  std::chrono::milliseconds handshake_timeout{kServerHandshakeTimeoutMs};
};

struct ConnectionGateStats {
  uint64_t admitted = 0;             // handed to the server
  uint64_t refused_total = 0;        // closed at once: max_pending were in set-up
  uint64_t refused_per_address = 0;  // closed at once: the address had its limit
  int pending = 0;                   // in set-up now (as of the last count)
};

class ConnectionGate {
 public:
  // Receives each admitted connection; owns `fd` from then on.
  using Handoff = std::function<void(int listener_fd, int fd)>;

  // Binds and listens on `address` ("host:port"; port 0 picks a free port;
  // a wildcard host listens on every address, IPv4 and IPv6). `what` names
  // the server in messages and logs ("the coordinator"). Throws IoError
  // naming the address and the system's reason, or ConfigError for limits
  // below 1.
  ConnectionGate(const std::string& address, ConnectionLimits limits, std::string what);
  ~ConnectionGate();
  ConnectionGate(const ConnectionGate&) = delete;
  ConnectionGate& operator=(const ConnectionGate&) = delete;

  // The port listened on.
  int port() const;

  // Makes `builder`'s server take its connections from this gate: adds an
  // external connection acceptor with `credentials`, an interceptor that
  // reports each call's peer to setUp(), and the handshake timeout. Call
  // before BuildAndStart, start() after it and stop() before the server's
  // Shutdown (gRPC drops a connection handed to a server not running). The
  // interceptor holds the gate's shared state, so either may be destroyed
  // first.
  void serve(grpc::ServerBuilder& builder, std::shared_ptr<grpc::ServerCredentials> credentials);

  // Starts accepting; each admitted connection goes to `handoff`, or to the
  // server given to serve() when `handoff` is empty.
  void start(Handoff handoff = {});
  // Stops accepting and closes the listening sockets; connections already
  // handed over are the server's. Idempotent; the destructor calls it.
  void stop();

  // Hands `fd`, a connection this process made or got some other way (a
  // relayed connection, relay.h), to the server as if it had been
  // accepted: counted and limited the same way. Owns `fd` from then on.
  // Only after start().
  void adopt(int fd);

  // The server saw a call from `peer` (gRPC's peer string, such as
  // "ipv4:127.0.0.1:5678" or "ipv6:[::1]:5678"): its connection is set up.
  void setUp(const std::string& peer);

  ConnectionGateStats stats() const;

  struct Shared;

 private:
  std::shared_ptr<Shared> shared_;
};

// True for a host that means every address of this machine: "", "0.0.0.0",
// "::", "[::]" or "*" (the gate listens dual-stack on it).
bool isWildcardHost(const std::string& host);

// "host|port" for gRPC's peer string or an accepted socket's address: an
// IPv4-mapped IPv6 address is written as IPv4, brackets and their
// percent-encodings are dropped. "" for anything else (unix sockets).
std::string connectionKey(const std::string& grpc_peer);

}  // namespace geopipe::transport
