// gRPC credentials and the plaintext policy.
#include "src/transport/grpc/credentials.h"

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>

#include "geopipe/error.h"
#include "src/security/pki.h"
#include "src/security/token.h"

namespace geopipe::transport {

std::string LinkSecurity::describe() const {
  return plaintext() ? "plaintext" : "mutual TLS";
}

std::shared_ptr<grpc::ServerCredentials> serverCredentials(const LinkSecurity& security) {
  if (security.plaintext()) return grpc::InsecureServerCredentials();
  security::keepOpenSslUntilExit();
  grpc::SslServerCredentialsOptions options(
      GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_root_certs = security.tls->ca_pem;
  options.pem_key_cert_pairs.push_back({security.tls->key_pem, security.tls->cert_pem});
  return grpc::SslServerCredentials(options);
}

std::shared_ptr<grpc::ChannelCredentials> channelCredentials(const LinkSecurity& security) {
  if (security.plaintext()) return grpc::InsecureChannelCredentials();
  security::keepOpenSslUntilExit();
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = security.tls->ca_pem;
  options.pem_private_key = security.tls->key_pem;
  options.pem_cert_chain = security.tls->cert_pem;
  return grpc::SslCredentials(options);
}

void checkPlaintextAllowed(const LinkSecurity& security, const std::string& address,
                           const std::string& what) {
  if (!security.plaintext() || security.allow_insecure_remote) return;
  if (security::isLoopbackAddress(address)) return;
  GEOPIPE_THROW(ConfigError,
                "plaintext gRPC (security.insecure: true) is allowed on loopback "
                "addresses only, but ",
                what, " '", address,
                "' is not one: use TLS (a security section with ca, cert and key; "
                "`geopipe certs DIR --host NAME` makes them), a 127.0.0.1 address, or "
                "insecure: force (--allow-insecure-remote) to send plaintext across the network "
                "anyway");
}

namespace {

bool contains(const std::string& haystack, const char* needle) {
  return haystack.find(needle) != std::string::npos;
}

}  // namespace

std::string explainHandshakeFailure(const std::string& message, const LinkSecurity& security,
                                    const std::string& peer) {
  const bool refused =
      contains(message, "Connection refused") || contains(message, "connection refused") ||
      contains(message, "DNS resolution failed") || contains(message, "No route to host") ||
      contains(message, "Network is unreachable") || contains(message, "Deadline Exceeded");
  if (refused) return "";
  if (security.plaintext()) {
    // A TLS server hangs up on the plaintext HTTP/2 preface.
    if (contains(message, "Socket closed") || contains(message, "Connection reset") ||
        contains(message, "EOF") || contains(message, "connection closed") ||
        contains(message, "Broken pipe")) {
      return detail::concat(peer,
                            " closed the connection during set-up: it most likely expects TLS "
                            "while this side speaks plaintext (security.insecure); give this "
                            "side the job's TLS files (--ca, --cert, --key)");
    }
    return "";
  }
  // gRPC: "Peer name 127.0.0.1 is not in peer certificate".
  const std::string kNameMissing = "Peer name ";
  if (const auto at = message.find(kNameMissing); at != std::string::npos) {
    const auto from = at + kNameMissing.size();
    const auto end = message.find(" is not in peer certificate", from);
    if (end != std::string::npos) {
      const std::string dialled = message.substr(from, end - from);
      return detail::concat(peer, "'s certificate does not name '", dialled,
                            "', the address dialled, in its subjectAltName: reissue it with "
                            "`geopipe certs DIR --host NAME,",
                            dialled, "`, or have that host advertise a name its certificate has");
    }
  }
  if (contains(message, "WRONG_VERSION_NUMBER") || contains(message, "wrong version number") ||
      contains(message, "packet length too long") || contains(message, "record layer failure")) {
    return detail::concat(peer,
                          " does not speak TLS (it runs plaintext, security.insecure: true); "
                          "run both sides with TLS, or both plaintext on loopback");
  }
  if (contains(message, "CERTIFICATE_VERIFY_FAILED") ||
      contains(message, "certificate verify failed") || contains(message, "unknown ca") ||
      contains(message, "UNKNOWN_CA") || contains(message, "bad certificate") ||
      contains(message, "BAD_CERTIFICATE") || contains(message, "certificate required") ||
      contains(message, "CERTIFICATE_REQUIRED") || contains(message, "Handshake failed") ||
      contains(message, "handshake failed") || contains(message, "Peer name") ||
      contains(message, "SSL_ERROR") || contains(message, "ssl")) {
    return detail::concat(
        "the TLS handshake with ", peer,
        " failed: the two sides do not trust each other's certificate (each must be "
        "signed by the CA the other has, and the server's must name the host dialled in its "
        "subjectAltName; `geopipe certs DIR --host NAME,IP` issues such certificates)");
  }
  return "";
}

}  // namespace geopipe::transport
