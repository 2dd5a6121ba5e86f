// How a gRPC link is secured: mutual TLS from a host's TLS identity (the
// default everywhere), or plaintext, which is allowed on loopback addresses
// only unless forced. The one place that builds grpc credentials and sets the
// message-size limits of the coordinator and peer links. Torch-free; gRPC
// types are only forward-declared.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "src/security/pki.h"

namespace grpc {
class ChannelCredentials;
class ServerCredentials;
}  // namespace grpc

namespace geopipe::transport {

// Largest coordinator request a worker may send (register, step and
// checkpoint reports are a few KB; a checkpoint's file list a few more).
constexpr int kMaxCoordinatorRequestBytes = 4 << 20;
// Largest coordinator reply (the assignment carries the job's YAML with its
// topology inlined: a 1024-device topology is well under this).
constexpr int kMaxCoordinatorReplyBytes = 64 << 20;
// A connection that has not finished its TCP + TLS + HTTP/2 set-up in this
// long is closed by the coordinator and peer servers (gRPC's default is
// 120 s, which let idle connections before authentication pile up until
// the process ran out of file descriptors).
constexpr int kServerHandshakeTimeoutMs = 10000;

// A link's security. Copyable; the identity is shared.
struct LinkSecurity {
  // This host's CA, certificate and key; nullptr: plaintext.
  std::shared_ptr<const security::TlsIdentity> tls;
  // Plaintext is refused on an address that is not loopback unless this is
  // set (`insecure: force`, --allow-insecure-remote).
  bool allow_insecure_remote = false;

  bool plaintext() const { return tls == nullptr; }
  // "mutual TLS" or "plaintext", for messages.
  std::string describe() const;
};

// Server credentials: mutual TLS that requires and verifies a client
// certificate signed by the CA, or plaintext.
std::shared_ptr<grpc::ServerCredentials> serverCredentials(const LinkSecurity& security);
// Channel credentials: TLS trusting only the CA (the server's certificate must
// name the host dialled) and presenting this host's certificate, or plaintext.
std::shared_ptr<grpc::ChannelCredentials> channelCredentials(const LinkSecurity& security);

// Throws ConfigError when `security` is plaintext, `address` ("host:port")
// is not a loopback address and plaintext on any address was not forced.
// `what` names the address in the message ("the coordinator's --listen
// address").
void checkPlaintextAllowed(const LinkSecurity& security, const std::string& address,
                           const std::string& what);

// Advice for a connection that failed with gRPC's `message` when the failure
// is about TLS (a certificate the other side does not trust, one side
// speaking plaintext to the other); "" otherwise (e.g. nothing listening
// yet). `peer` names the other side ("the coordinator at h:p").
std::string explainHandshakeFailure(const std::string& message, const LinkSecurity& security,
                                    const std::string& peer);

}  // namespace geopipe::transport
