// TLS certificates for the job's gRPC links: checking the PEM files a job
// names (so a bad file is a ConfigError naming its field, not a failed
// handshake later), and issuing a CA and per-host certificates for
// `geopipe certs` and for `geopipe launch`'s ephemeral run. The only file
// that includes OpenSSL. No gRPC.
#pragma once

#include <string>
#include <vector>

namespace geopipe::security {

// The three PEM files of one host and the names of the fields (or flags)
// that gave them, for messages.
struct TlsFiles {
  std::string ca;    // CA certificate(s) every host's certificate is signed by
  std::string cert;  // this host's certificate (chain), PEM
  std::string key;   // its private key, PEM, readable by the owner only
  std::string ca_field = "security.ca";
  std::string cert_field = "security.cert";
  std::string key_field = "security.key";
};

// PEM text of one host's identity: the CA it trusts and its own
// certificate and key. The key is a secret; `origin` says where it came
// from for messages.
struct TlsIdentity {
  std::string ca_pem;
  std::string cert_pem;
  std::string key_pem;
  std::string origin;  // e.g. "security.cert 'certs/node1.pem'"
};

// One problem with the files: the field it is about and what to do.
struct TlsProblem {
  std::string field;
  std::string message;
};

// Every problem with the files: missing or unreadable, not PEM of the
// expected kind, a key readable by other users, a certificate expired or
// not valid yet, a key that does not belong to the certificate, a
// certificate not signed by the CA, one that cannot serve as both TLS server
// and client (each host is both). Empty when the files are usable.
std::vector<TlsProblem> checkTlsFiles(const TlsFiles& files);

// Reads the files after checkTlsFiles; ConfigError listing every problem.
TlsIdentity loadTlsIdentity(const TlsFiles& files);

// A certificate authority's certificate and private key, PEM.
struct CertificateAuthority {
  std::string cert_pem;
  std::string key_pem;
};

// A host certificate and its private key, PEM.
struct HostCertificate {
  std::string cert_pem;
  std::string key_pem;
};

// A new self-signed CA (EC P-256, SHA-256) valid for `days`.
CertificateAuthority createCertificateAuthority(const std::string& common_name, int days);

// Reads a CA written by `geopipe certs` (or any PEM CA certificate and its
// key); ConfigError naming the files when they do not match or are not PEM.
CertificateAuthority loadCertificateAuthority(const std::string& cert_path,
                                              const std::string& key_path);

// A certificate signed by `ca` for `names` (the first is the common name;
// each is a DNS subjectAltName, or an IP one when it is an IPv4/IPv6
// address), usable as both TLS server and client, valid for `days`.
// ConfigError for an empty list or a name that is not a host name or IP.
HostCertificate issueHostCertificate(const CertificateAuthority& ca,
                                     const std::vector<std::string>& names, int days);

// Tells OpenSSL not to free its state in an atexit handler. gRPC's threads
// may still be finishing a TLS handshake when the process exits; after that
// handler ran, their per-thread OpenSSL state (error queue, random
// generators) was never freed (LeakSanitizer reported it in about 1 run in
// 100 of a refused handshake), and a handshake could touch freed state.
// The process's exit frees it all anyway. Only the first OpenSSL
// initialisation in a process decides this, so pki.cc calls it from a
// static initializer and the gRPC credentials call it before building TLS
// credentials; later calls do nothing.
void keepOpenSslUntilExit();

}  // namespace geopipe::security
