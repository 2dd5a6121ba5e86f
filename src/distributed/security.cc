// A distributed job's credentials on one host.
#include "src/distributed/security.h"

#include <filesystem>
#include <memory>

#include "geopipe/error.h"
#include "src/common/text.h"
#include "src/security/pki.h"

namespace geopipe::distributed {
namespace fs = std::filesystem;

namespace {

// The token from `file` (naming `field`), else from GEOPIPE_JOB_TOKEN.
security::JoinToken readToken(const std::string& file, const std::string& field) {
  if (!file.empty()) return security::readTokenFile(file, field);
  return security::tokenFromEnvironment();
}

}  // namespace

JobSecurity jobSecurity(const JobSpec& job, bool allow_insecure_remote) {
  const SecuritySpec& s = job.security;
  if (!s.configured) {
    GEOPIPE_THROW(ConfigError, job.source,
                  ": the job has no security section, and a multi-host job must say how its "
                  "links are secured: run `geopipe certs DIR --host NAME,IP ...` and add "
                  "security: {ca: DIR/ca.pem, cert: DIR/NAME.pem, key: DIR/NAME-key.pem, "
                  "token_file: DIR/token}, or security: {insecure: true} for plaintext on "
                  "127.0.0.1 (docs/operations.md#security-model). `geopipe launch` needs "
                  "none: it makes its own");
  }
  JobSecurity out;
  out.link.allow_insecure_remote = s.insecure_remote || allow_insecure_remote;
  out.token = readToken(s.token_file, "security.token_file");
  if (s.insecure) return out;
  security::TlsFiles files;
  files.ca = s.ca;
  files.cert = s.cert;
  files.key = s.key;
  out.link.tls = std::make_shared<security::TlsIdentity>(security::loadTlsIdentity(files));
  if (out.token.empty()) {
    GEOPIPE_THROW(ConfigError, job.source,
                  ": security: no join token: set security.token_file (the `token` file "
                  "`geopipe certs` writes, mode 600) or export ",
                  security::kTokenEnvVar, "; workers must present the same token");
  }
  return out;
}

JobSecurity workerSecurity(const WorkerSecurityArgs& a) {
  JobSecurity out;
  out.link.allow_insecure_remote = a.allow_insecure_remote;
  out.token = readToken(a.token_file, "--token-file");
  const bool any_file = !a.ca.empty() || !a.cert.empty() || !a.key.empty();
  // --allow-insecure-remote implies --insecure.
  if (a.insecure || a.allow_insecure_remote) {
    GEOPIPE_CHECK(!any_file, ConfigError,
                  "--insecure (plaintext) and --ca/--cert/--key (TLS) exclude each other: drop "
                  "one");
    return out;
  }
  if (a.ca.empty() || a.cert.empty() || a.key.empty()) {
    GEOPIPE_THROW(ConfigError,
                  "this worker has no TLS files: give --ca CA.pem --cert HOST.pem --key "
                  "HOST-key.pem (the files `geopipe certs DIR --host HOST` wrote for this host), "
                  "or --insecure when the coordinator's job says insecure: true");
  }
  security::TlsFiles files;
  files.ca = a.ca;
  files.cert = a.cert;
  files.key = a.key;
  files.ca_field = "--ca";
  files.cert_field = "--cert";
  files.key_field = "--key";
  out.link.tls = std::make_shared<security::TlsIdentity>(security::loadTlsIdentity(files));
  if (out.token.empty()) {
    GEOPIPE_THROW(ConfigError,
                  "this worker has no join token: give --token-file FILE (the "
                  "job's security.token_file) or export ",
                  security::kTokenEnvVar,
                  " (a token on the command line would show in "
                  "process listings)");
  }
  return out;
}

EphemeralSecurity makeEphemeralSecurity(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) GEOPIPE_THROW(IoError, "cannot create '", common::printable(dir), "': ", ec.message());
  fs::permissions(dir, fs::perms::owner_all, ec);
  const security::CertificateAuthority ca =
      security::createCertificateAuthority("geopipe launch CA (ephemeral)", 7);
  const security::HostCertificate host =
      security::issueHostCertificate(ca, {"localhost", "127.0.0.1", "::1"}, 7);
  EphemeralSecurity out;
  WorkerSecurityArgs& w = out.worker_args;
  w.ca = (fs::path(dir) / "ca.pem").string();
  w.cert = (fs::path(dir) / "localhost.pem").string();
  w.key = (fs::path(dir) / "localhost-key.pem").string();
  w.token_file = (fs::path(dir) / "token").string();
  security::writePublicFile(w.ca, ca.cert_pem);
  security::writePublicFile(w.cert, host.cert_pem);
  security::writePrivateFile(w.key, host.key_pem);
  const std::string token = security::randomToken();
  security::writePrivateFile(w.token_file, token + "\n");
  auto id = std::make_shared<security::TlsIdentity>();
  id->ca_pem = ca.cert_pem;
  id->cert_pem = host.cert_pem;
  id->key_pem = host.key_pem;
  id->origin = "ephemeral launch certificate '" + w.cert + "'";
  out.security.link.tls = id;
  out.security.token = security::JoinToken{token, "the launch's token file '" + w.token_file + "'"};
  return out;
}

JoinGate::Outcome JoinGate::check(const std::string& host, const std::string& who,
                                  const std::string& token, Clock::time_point now) {
  Outcome out;
  if (token_.empty()) return out;
  auto it = bad_tokens_.find(host);
  if (it != bad_tokens_.end() && now - it->second.window_start > kBadTokenWindow) {
    bad_tokens_.erase(it);
    it = bad_tokens_.end();
  }
  if (it != bad_tokens_.end() && it->second.count >= kMaxBadTokens) {
    out.verdict = Verdict::THROTTLED;
    out.message =
        detail::concat("too many wrong join tokens from ", host,
                       "; this host is refused for up to ", kBadTokenWindow.count(), " s");
    return out;
  }
  if (security::constantTimeEquals(token, token_.secret)) return out;
  if (it == bad_tokens_.end()) {
    if (bad_tokens_.size() >= kMaxTrackedHosts) bad_tokens_.clear();
    it = bad_tokens_.emplace(host, BadTokens{0, now}).first;
    out.events.push_back(detail::concat("refused a worker from ", who, ": ",
                                        token.empty() ? "no join token" : "wrong join token"));
  }
  if (++it->second.count == kMaxBadTokens) {
    out.events.push_back(detail::concat("throttling ", host, ": ", kMaxBadTokens,
                                        " wrong join tokens within ", kBadTokenWindow.count(),
                                        " s; its registrations are refused for the rest of that "
                                        "time"));
  }
  out.verdict = Verdict::WRONG_TOKEN;
  out.message = token.empty() ? "no join token: this coordinator requires one" : "wrong join token";
  return out;
}

}  // namespace geopipe::distributed
