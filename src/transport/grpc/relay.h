// The relay: how a worker that cannot accept connections (behind NAT with no
// port forward, or a firewall that lets nothing in) still receives its
// peers' streams. Torch-free; gRPC types are only used inside.
//
// A peer dials a relayed worker through an HTTP CONNECT proxy, which gRPC
// clients speak (the channel argument "grpc.http_proxy"): it connects to the
// relay and asks for "NAME:ID", where NAME is the worker's name in its
// certificate and ID = rank + 1. The relay asks that worker, over the
// worker's own outbound link to the coordinator, to dial the relay back with
// a one-time random id; the worker connects out, says the id, and hands the
// connection to its peer service as if it had accepted it. The relay answers
// the CONNECT with 200 and from then on only copies bytes both ways, so TLS
// (and the peer protocol's checks) stay end to end: the relay never holds a
// key and cannot read or change the traffic.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "src/transport/grpc/connection_gate.h"

namespace geopipe::transport {

struct RelayOptions {
  // Connections before their first line (CONNECT or a dial-back), per
  // address and in total, as for the coordinator's port.
  ConnectionLimits limits;
  // How long a CONNECT waits for its worker to dial back (then 504), and
  // how long a connection may take to send its first line.
  std::chrono::milliseconds dial_timeout{10000};
  // Relayed connections open at once (each holds one thread); more are
  // answered 503.
  int max_connections = 256;
};

struct RelayStats {
  uint64_t connected = 0;        // CONNECTs answered 200 and spliced
  uint64_t refused = 0;          // not a relay request, unknown rank, no worker waiting
  uint64_t timed_out = 0;        // the worker did not dial back in time
  uint64_t bytes_forwarded = 0;  // both directions, all connections
  int open = 0;                  // spliced pairs open now
};

// The coordinator's relay. Listens on its own port through a ConnectionGate.
// Thread-safety: every method may be called from any thread; `dial` is
// called from the relay's threads, never with a relay lock held.
class Relay {
 public:
  // Asks the worker of `rank` to dial back with `id`; false when no worker
  // of that rank waits for dial requests (the CONNECT is answered 503 and
  // gRPC's reconnect tries again).
  using DialRequest = std::function<bool(int rank, const std::string& id)>;

  // Binds `address` ("host:port"; port 0 picks one). Throws IoError as the
  // gate does.
  Relay(const std::string& address, DialRequest dial, RelayOptions options = {});
  ~Relay();
  Relay(const Relay&) = delete;
  Relay& operator=(const Relay&) = delete;

  int port() const;
  // Stops accepting, closes every relayed connection and joins the threads.
  // Idempotent; the destructor calls it.
  void stop();
  RelayStats stats() const;

  struct State;

 private:
  std::shared_ptr<State> state_;
  ConnectionGate gate_;
};

// The worker's side of a dial request: connects to the relay at
// `relay_address` ("host:port"), says `id`, and returns the connected,
// non-blocking socket, which the caller hands to its peer service
// (GrpcTransport::adoptConnection). Throws IoError naming the relay and
// the reason after `timeout`.
int dialRelay(const std::string& relay_address, const std::string& id,
              std::chrono::milliseconds timeout);

// What a connection to the relay asked for, from its first header (the
// relay reads at most 8 KiB, up to "\r\n\r\n", or up to "\n" after
// "GEOPIPE-RELAY "): an HTTP CONNECT for "NAME:ID" (rank = ID - 1, ID in
// [1, 100000]), or a relayed worker's dial-back with the id it was given.
// Anything else is INVALID (answered 400). Bytes from the network: no
// input may crash it (fuzz/relay_request_fuzzer.cc).
struct RelayRequest {
  enum class Kind { INVALID, CONNECT, DIAL_BACK };
  Kind kind = Kind::INVALID;
  int rank = -1;       // CONNECT
  std::string target;  // CONNECT: "NAME:ID"
  std::string id;      // DIAL_BACK
};
RelayRequest parseRelayRequest(const std::string& header);

// A peer address as GrpcTransport takes it: "HOST:PORT" dialled directly, or
// "NAME:ID via RELAYHOST:RELAYPORT" through the relay.
struct PeerRoute {
  std::string target;  // what the channel dials (and TLS checks the name of)
  std::string relay;   // empty: direct
};
PeerRoute parsePeerRoute(const std::string& address);
// "NAME:<rank + 1>": what peers ask the relay for to reach the relayed
// worker of `rank` (an IPv6 literal NAME gets brackets).
std::string relayTarget(const std::string& name, int rank);
// "TARGET via RELAY".
std::string viaRelay(const std::string& target, const std::string& relay);
// viaRelay(relayTarget(name, rank), relay).
std::string relayedAddress(const std::string& name, int rank, const std::string& relay);

}  // namespace geopipe::transport
