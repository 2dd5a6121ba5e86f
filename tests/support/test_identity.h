// A host's TLS identity for tests: a certificate for some names, signed by
// one CA, trusting another (the same one, or not: a rogue certificate).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "src/security/pki.h"

namespace geopipe::testing {

inline std::shared_ptr<const security::TlsIdentity> testIdentity(
    const security::CertificateAuthority& trusted, const security::CertificateAuthority& signer,
    const std::vector<std::string>& names = {"localhost", "127.0.0.1"}) {
  const security::HostCertificate host = security::issueHostCertificate(signer, names, 1);
  auto id = std::make_shared<security::TlsIdentity>();
  id->ca_pem = trusted.cert_pem;
  id->cert_pem = host.cert_pem;
  id->key_pem = host.key_pem;
  id->origin = "test certificate";
  return id;
}

}  // namespace geopipe::testing
