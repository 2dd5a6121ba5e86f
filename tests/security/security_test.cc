// Join tokens (constant-time comparison, files, environment), the TLS file
// checks behind the job's security section, and certificates issued for
// `geopipe certs` and launch.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "geopipe/error.h"
#include "src/config/diagnostics.h"
#include "src/config/job_parser.h"
#include "src/security/pki.h"
#include "src/security/token.h"

namespace geopipe::security {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "geopipe-security-test-XXXXXX").string();
    path = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

std::string messageOf(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// A CA and a loopback host certificate written as ca.pem, host.pem and
// host-key.pem (600) under `dir`; `prefix` names the files apart.
void writeIdentity(const TempDir& dir, const CertificateAuthority& ca, const std::string& prefix,
                   int days = 2) {
  const HostCertificate host = issueHostCertificate(ca, {"localhost", "127.0.0.1"}, days);
  writePublicFile(dir.file(prefix + "ca.pem"), ca.cert_pem);
  writePublicFile(dir.file(prefix + "host.pem"), host.cert_pem);
  writePrivateFile(dir.file(prefix + "host-key.pem"), host.key_pem);
}

TlsFiles filesIn(const TempDir& dir, const std::string& ca, const std::string& cert,
                 const std::string& key) {
  TlsFiles f;
  f.ca = dir.file(ca);
  f.cert = dir.file(cert);
  f.key = dir.file(key);
  return f;
}

std::string problemsOf(const TlsFiles& f) {
  std::string all;
  for (const auto& p : checkTlsFiles(f)) all += p.field + ": " + p.message + "\n";
  return all;
}

TEST(Token, ConstantTimeEqualsComparesWholeStrings) {
  EXPECT_TRUE(constantTimeEquals("", ""));
  EXPECT_TRUE(constantTimeEquals("abcdef", "abcdef"));
  EXPECT_FALSE(constantTimeEquals("abcdef", "abcdeg"));
  EXPECT_FALSE(constantTimeEquals("abcdef", "xbcdef"));
  EXPECT_FALSE(constantTimeEquals("abc", "abcdef"));
  EXPECT_FALSE(constantTimeEquals("abcdef", "abc"));
  EXPECT_FALSE(constantTimeEquals("", "a"));
  // A shorter string padded with NULs is still different.
  EXPECT_FALSE(constantTimeEquals(std::string("ab\0", 3), "ab"));
}

TEST(Token, RandomTokensAreHexAndDistinct) {
  const std::string a = randomToken(), b = randomToken();
  EXPECT_EQ(a.size(), 64u);
  EXPECT_NE(a, b);
  EXPECT_EQ(a.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_EQ(tokenProblem(a), "");
}

TEST(Token, ProblemsNeverQuoteTheSecret) {
  EXPECT_TRUE(contains(tokenProblem(""), "empty"));
  EXPECT_TRUE(contains(tokenProblem("short-secret"), "too short"));
  EXPECT_FALSE(contains(tokenProblem("short-secret"), "short-secret"));
  EXPECT_TRUE(contains(tokenProblem("a token with spaces inside"), "printable ASCII"));
  EXPECT_TRUE(contains(tokenProblem(std::string(kMaxTokenChars + 1, 'x')), "too long"));
}

TEST(Token, FileMustBePrivateAndValid) {
  TempDir dir;
  const std::string secret = "0123456789abcdef0123";
  writePrivateFile(dir.file("token"), secret + "\n");
  JoinToken t = readTokenFile(dir.file("token"), "security.token_file");
  EXPECT_EQ(t.secret, secret);  // the trailing newline is not part of it
  EXPECT_TRUE(contains(t.origin, "security.token_file"));
  EXPECT_FALSE(contains(t.origin, secret));

  ::chmod(dir.file("token").c_str(), 0644);
  std::string what = messageOf([&] { readTokenFile(dir.file("token"), "security.token_file"); });
  EXPECT_TRUE(contains(what, "security.token_file")) << what;
  EXPECT_TRUE(contains(what, "chmod 600")) << what;
  EXPECT_FALSE(contains(what, secret)) << what;

  writePrivateFile(dir.file("short"), "tiny\n");
  what = messageOf([&] { readTokenFile(dir.file("short"), "--token-file"); });
  EXPECT_TRUE(contains(what, "--token-file")) << what;
  EXPECT_TRUE(contains(what, "too short")) << what;
  EXPECT_FALSE(contains(what, "tiny")) << what;

  what = messageOf([&] { readTokenFile(dir.file("absent"), "--token-file"); });
  EXPECT_TRUE(contains(what, "no such file")) << what;
}

TEST(Token, FromTheEnvironment) {
  ::setenv(kTokenEnvVar, "env-secret-0123456789", 1);
  JoinToken t = tokenFromEnvironment();
  EXPECT_EQ(t.secret, "env-secret-0123456789");
  EXPECT_EQ(t.origin, kTokenEnvVar);
  ::setenv(kTokenEnvVar, "short", 1);
  const std::string what = messageOf([] { tokenFromEnvironment(); });
  EXPECT_TRUE(contains(what, kTokenEnvVar)) << what;
  EXPECT_FALSE(contains(what, "short'")) << what;
  ::unsetenv(kTokenEnvVar);
  EXPECT_TRUE(tokenFromEnvironment().empty());
}

TEST(Loopback, AddressesThatStayOnThisHost) {
  EXPECT_TRUE(isLoopbackAddress("127.0.0.1:7420"));
  EXPECT_TRUE(isLoopbackAddress("127.3.2.1:0"));
  EXPECT_TRUE(isLoopbackAddress("localhost:80"));
  EXPECT_TRUE(isLoopbackAddress("[::1]:5000"));
  EXPECT_TRUE(isLoopbackHost("::1"));
  EXPECT_FALSE(isLoopbackAddress("0.0.0.0:7420"));
  EXPECT_FALSE(isLoopbackAddress("[::]:7420"));
  EXPECT_FALSE(isLoopbackAddress("10.0.0.1:7420"));
  EXPECT_FALSE(isLoopbackAddress("127.0.0.1.evil.com:80"));
  EXPECT_FALSE(isLoopbackAddress("node1:7420"));
}

TEST(Pki, IssuedCertificatesPassTheChecks) {
  TempDir dir;
  writeIdentity(dir, createCertificateAuthority("test CA", 2), "");
  const TlsFiles f = filesIn(dir, "ca.pem", "host.pem", "host-key.pem");
  EXPECT_EQ(problemsOf(f), "");
  const TlsIdentity id = loadTlsIdentity(f);
  EXPECT_TRUE(contains(id.cert_pem, "BEGIN CERTIFICATE"));
  EXPECT_TRUE(contains(id.key_pem, "PRIVATE KEY"));
  EXPECT_TRUE(contains(id.origin, "security.cert"));
}

TEST(Pki, EveryBadFileIsNamedWithItsFix) {
  TempDir dir;
  const CertificateAuthority ca = createCertificateAuthority("test CA", 2);
  writeIdentity(dir, ca, "");
  writeIdentity(dir, createCertificateAuthority("other CA", 2), "other-");
  writePublicFile(dir.file("text.pem"), "hello\n");

  std::string p = problemsOf(filesIn(dir, "absent.pem", "host.pem", "host-key.pem"));
  EXPECT_TRUE(contains(p, "security.ca: no such file")) << p;

  p = problemsOf(filesIn(dir, "ca.pem", "text.pem", "host-key.pem"));
  EXPECT_TRUE(contains(p, "security.cert: '")) << p;
  EXPECT_TRUE(contains(p, "holds no PEM certificate")) << p;

  p = problemsOf(filesIn(dir, "ca.pem", "host.pem", "text.pem"));
  EXPECT_TRUE(contains(p, "security.key")) << p;
  EXPECT_TRUE(contains(p, "holds no PEM private key")) << p;

  p = problemsOf(filesIn(dir, "ca.pem", "host.pem", "other-host-key.pem"));
  EXPECT_TRUE(contains(p, "security.key: the key in")) << p;
  EXPECT_TRUE(contains(p, "does not belong to the certificate")) << p;

  p = problemsOf(filesIn(dir, "ca.pem", "other-host.pem", "other-host-key.pem"));
  EXPECT_TRUE(contains(p, "security.cert")) << p;
  EXPECT_TRUE(contains(p, "is not trusted by the CA")) << p;

  ::chmod(dir.file("host-key.pem").c_str(), 0640);
  p = problemsOf(filesIn(dir, "ca.pem", "host.pem", "host-key.pem"));
  EXPECT_TRUE(contains(p, "chmod 600")) << p;

  // loadTlsIdentity throws one ConfigError naming every bad field.
  const std::string what =
      messageOf([&] { loadTlsIdentity(filesIn(dir, "ca.pem", "text.pem", "text.pem")); });
  EXPECT_TRUE(contains(what, "security.cert")) << what;
  EXPECT_TRUE(contains(what, "security.key")) << what;
}

// The subject-alt-names of a PEM certificate, read back with OpenSSL, as
// "DNS:name" and "IP:address" (inet_ntop's form), sorted.
std::vector<std::string> subjectAltNames(const std::string& cert_pem) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(
      BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size())), BIO_free);
  std::unique_ptr<X509, decltype(&X509_free)> cert(
      PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr), X509_free);
  if (!cert) return {"(not a PEM certificate)"};
  std::unique_ptr<GENERAL_NAMES, void (*)(GENERAL_NAMES*)> names(
      static_cast<GENERAL_NAMES*>(
          X509_get_ext_d2i(cert.get(), NID_subject_alt_name, nullptr, nullptr)),
      [](GENERAL_NAMES* n) { GENERAL_NAMES_free(n); });
  std::vector<std::string> out;
  for (int i = 0; names && i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* n = sk_GENERAL_NAME_value(names.get(), i);
    if (n->type == GEN_DNS) {
      const ASN1_IA5STRING* dns = n->d.dNSName;
      out.push_back("DNS:" + std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(dns)),
                                         static_cast<size_t>(ASN1_STRING_length(dns))));
    } else if (n->type == GEN_IPADD) {
      const int len = ASN1_STRING_length(n->d.iPAddress);
      char text[INET6_ADDRSTRLEN] = {};
      const int family = len == 4 ? AF_INET : len == 16 ? AF_INET6 : -1;
      if (family < 0 ||
          !inet_ntop(family, ASN1_STRING_get0_data(n->d.iPAddress), text, sizeof(text))) {
        out.push_back("IP:(" + std::to_string(len) + " bytes)");
      } else {
        out.push_back(std::string("IP:") + text);
      }
    } else {
      out.push_back("other:" + std::to_string(n->type));
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

// What a client checks the peer against: the certificate names exactly the
// hosts and addresses it was issued for, each with its type, and nothing else.
TEST(Pki, IssuedCertificatesNameExactlyTheHostsAskedFor) {
  const CertificateAuthority ca = createCertificateAuthority("test CA", 1);
  EXPECT_EQ(subjectAltNames(issueHostCertificate(ca, {"localhost", "127.0.0.1"}, 1).cert_pem),
            (std::vector<std::string>{"DNS:localhost", "IP:127.0.0.1"}));
  const HostCertificate mixed =
      issueHostCertificate(ca, {"node-1.example.org", "10.0.0.1", "::1", "fe80::1:2", "gpu-07"}, 1);
  EXPECT_EQ(subjectAltNames(mixed.cert_pem),
            (std::vector<std::string>{"DNS:gpu-07", "DNS:node-1.example.org", "IP:10.0.0.1",
                                      "IP:::1", "IP:fe80::1:2"}));
  EXPECT_EQ(subjectAltNames(issueHostCertificate(ca, {"10.1.2.3"}, 1).cert_pem),
            (std::vector<std::string>{"IP:10.1.2.3"}));
}

TEST(Pki, HostNamesAndAddressesAreValidated) {
  const CertificateAuthority ca = createCertificateAuthority("test CA", 1);
  EXPECT_NO_THROW(issueHostCertificate(ca, {"node-1.example.org", "10.0.0.1", "::1"}, 1));
  EXPECT_THROW(issueHostCertificate(ca, {"bad name"}, 1), ConfigError);
  EXPECT_THROW(issueHostCertificate(ca, {}, 1), ConfigError);
}

// --- the job's security section ------------------------------------------

std::string jobWith(const std::string& security) {
  return "topology:\n"
         "  sites: [{name: s, devices: 2, intra: {latency_ms: 0, bandwidth_gbps: 10}}]\n" +
         security;
}

std::string parseProblems(const TempDir& dir, const std::string& security) {
  try {
    config::parseJobString(jobWith(security), dir.file("job.yaml"), dir.path.string());
  } catch (const config::SpecError& e) {
    return e.what();
  }
  return "";
}

TEST(JobSecurity, PathsResolveAgainstTheJobFile) {
  TempDir dir;
  writeIdentity(dir, createCertificateAuthority("test CA", 2), "");
  writePrivateFile(dir.file("token"), randomToken() + "\n");
  const JobSpec job = config::parseJobString(
      jobWith("security: {ca: ca.pem, cert: host.pem, key: host-key.pem, token_file: token}\n"),
      dir.file("job.yaml"), dir.path.string());
  EXPECT_TRUE(job.security.configured);
  EXPECT_FALSE(job.security.insecure);
  EXPECT_EQ(job.security.cert, dir.file("host.pem"));
  EXPECT_EQ(job.security.token_file, dir.file("token"));
}

TEST(JobSecurity, InsecureForms) {
  TempDir dir;
  JobSpec job = config::parseJobString(jobWith("security: {insecure: true}\n"), "job.yaml", "");
  EXPECT_TRUE(job.security.insecure);
  EXPECT_FALSE(job.security.insecure_remote);
  job = config::parseJobString(jobWith("security: {insecure: force}\n"), "job.yaml", "");
  EXPECT_TRUE(job.security.insecure_remote);
  job = config::parseJobString(jobWith(""), "job.yaml", "");
  EXPECT_FALSE(job.security.configured);
}

TEST(JobSecurity, BadFilesAreDiagnosedWithLineAndField) {
  TempDir dir;
  writeIdentity(dir, createCertificateAuthority("test CA", 2), "");
  writeIdentity(dir, createCertificateAuthority("other CA", 2), "other-");
  writePrivateFile(dir.file("token"), "too-short\n");
  const std::string p = parseProblems(dir,
                                      "security:\n"
                                      "  ca: ca.pem\n"
                                      "  cert: other-host.pem\n"
                                      "  key: host-key.pem\n"
                                      "  token_file: token\n");
  EXPECT_TRUE(contains(p, "job.yaml:6:")) << p;
  EXPECT_TRUE(contains(p, "security.cert: the certificate in")) << p;
  EXPECT_TRUE(contains(p, "is not trusted by the CA")) << p;
  EXPECT_TRUE(contains(p, "security.key: the key in")) << p;
  EXPECT_TRUE(contains(p, "security.token_file:")) << p;
  EXPECT_TRUE(contains(p, "too short")) << p;
}

}  // namespace
}  // namespace geopipe::security
