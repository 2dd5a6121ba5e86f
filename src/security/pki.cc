// PEM checks and certificate issuing with the OpenSSL C API.
#include "src/security/pki.h"

#include <arpa/inet.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>

#include "geopipe/error.h"

namespace geopipe::security {

void keepOpenSslUntilExit() {
  static const bool kept = OPENSSL_init_crypto(OPENSSL_INIT_NO_ATEXIT, nullptr) == 1;
  (void)kept;
}

namespace {

// Before main, so before anything in the process initialises OpenSSL.
const bool kOpenSslKeptUntilExit = (keepOpenSslUntilExit(), true);

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct StoreFree {
  void operator()(X509_STORE* s) const { X509_STORE_free(s); }
};
struct StoreCtxFree {
  void operator()(X509_STORE_CTX* c) const { X509_STORE_CTX_free(c); }
};
struct StackFree {
  void operator()(STACK_OF(X509) * s) const { sk_X509_free(s); }
};
struct BnFree {
  void operator()(BIGNUM* b) const { BN_free(b); }
};
using Bio = std::unique_ptr<BIO, BioFree>;
using Cert = std::unique_ptr<X509, X509Free>;
using Key = std::unique_ptr<EVP_PKEY, KeyFree>;

// The oldest queued OpenSSL error as text, and the queue cleared.
std::string opensslError() {
  const unsigned long code = ERR_get_error();
  ERR_clear_error();
  if (code == 0) return "unknown OpenSSL error";
  char buf[256];
  ERR_error_string_n(code, buf, sizeof(buf));
  return buf;
}

// The file's text, or a problem.
bool readFile(const std::string& path, std::string* text, std::string* problem) {
  if (path.empty()) {
    *problem = "is not set";
    return false;
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    *problem = errno == ENOENT ? detail::concat("no such file '", path,
                                                "'; paths are relative to the job file's directory")
                               : detail::concat("cannot read '", path, "': ", std::strerror(errno));
    return false;
  }
  if (!S_ISREG(st.st_mode)) {
    *problem = detail::concat("'", path, "' is not a regular file");
    return false;
  }
  if (st.st_size > (off_t{1} << 20)) {
    *problem = detail::concat("'", path, "' has ", st.st_size,
                              " bytes; a PEM certificate or key is a few KB");
    return false;
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *problem = detail::concat("cannot read '", path, "': ", std::strerror(errno));
    return false;
  }
  std::ostringstream os;
  os << in.rdbuf();
  *text = os.str();
  return true;
}

Bio memoryBio(const std::string& text) {
  return Bio(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
}

// Every certificate in a PEM text (a chain or a CA bundle).
std::vector<Cert> parseCertificates(const std::string& pem) {
  std::vector<Cert> out;
  Bio bio = memoryBio(pem);
  while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) out.emplace_back(x);
  ERR_clear_error();  // the read that ended the loop
  return out;
}

// Refuses to prompt for a passphrase: encrypted keys are not supported.
int noPassphrase(char*, int, int, void*) {
  return -1;
}

Key parseKey(const std::string& pem) {
  Bio bio = memoryBio(pem);
  Key key(PEM_read_bio_PrivateKey(bio.get(), nullptr, noPassphrase, nullptr));
  ERR_clear_error();
  return key;
}

std::string pemOf(X509* x) {
  Bio bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509(bio.get(), x);
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

std::string pemOf(EVP_PKEY* k) {
  Bio bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_PrivateKey(bio.get(), k, nullptr, nullptr, 0, nullptr, nullptr);
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

// Verifies `leaf` (with `chain` as intermediates) against `roots` for one
// TLS purpose; returns the OpenSSL verify error (X509_V_OK when it passes).
int verifyFor(const std::vector<Cert>& roots, X509* leaf, const std::vector<Cert>& chain,
              int purpose) {
  std::unique_ptr<X509_STORE, StoreFree> store(X509_STORE_new());
  for (const auto& r : roots) X509_STORE_add_cert(store.get(), r.get());
  std::unique_ptr<STACK_OF(X509), StackFree> untrusted(sk_X509_new_null());
  for (size_t i = 1; i < chain.size(); ++i) sk_X509_push(untrusted.get(), chain[i].get());
  std::unique_ptr<X509_STORE_CTX, StoreCtxFree> ctx(X509_STORE_CTX_new());
  X509_STORE_CTX_init(ctx.get(), store.get(), leaf, untrusted.get());
  X509_STORE_CTX_set_purpose(ctx.get(), purpose);
  const int ok = X509_verify_cert(ctx.get());
  const int err = ok == 1 ? X509_V_OK : X509_STORE_CTX_get_error(ctx.get());
  ERR_clear_error();
  return err;
}

bool isIpAddress(const std::string& s) {
  unsigned char buf[16];
  return ::inet_pton(AF_INET, s.c_str(), buf) == 1 || ::inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

bool isHostName(const std::string& s) {
  if (s.empty() || s.size() > 253 || s.front() == '-' || s.front() == '.') return false;
  for (char c : s) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '.';
    if (!ok) return false;
  }
  return true;
}

void addExtension(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
  if (!ext)
    GEOPIPE_THROW(Error, "cannot build certificate extension ", value, ": ", opensslError());
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

Key newKey() {
  Key key(EVP_EC_gen("P-256"));
  if (!key) GEOPIPE_THROW(Error, "cannot generate an EC P-256 key: ", opensslError());
  return key;
}

// A certificate for `key` named `common_name`, valid from an hour ago (for
// clocks slightly apart) for `days`, with a random 127-bit serial.
Cert newCertificate(EVP_PKEY* key, const std::string& common_name, int days) {
  Cert x(X509_new());
  X509_set_version(x.get(), 2);
  std::unique_ptr<BIGNUM, BnFree> serial(BN_new());
  BN_rand(serial.get(), 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY);
  BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(x.get()));
  X509_gmtime_adj(X509_getm_notBefore(x.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x.get()), static_cast<long>(days) * 86400L);
  X509_set_pubkey(x.get(), key);
  X509_NAME* name = X509_get_subject_name(x.get());
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("geopipe"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(common_name.c_str()), -1, -1,
                             0);
  return x;
}

void sign(X509* x, EVP_PKEY* key) {
  if (X509_sign(x, key, EVP_sha256()) <= 0) {
    GEOPIPE_THROW(Error, "cannot sign a certificate: ", opensslError());
  }
}

}  // namespace

std::vector<TlsProblem> checkTlsFiles(const TlsFiles& f) {
  std::vector<TlsProblem> problems;
  auto problem = [&](const std::string& field, const std::string& message) {
    problems.push_back({field, message});
  };
  std::string ca_text, cert_text, key_text, why;
  std::vector<Cert> roots, chain;
  Key key;
  if (!readFile(f.ca, &ca_text, &why)) {
    problem(f.ca_field, why);
  } else if ((roots = parseCertificates(ca_text)).empty()) {
    problem(f.ca_field, detail::concat("'", f.ca,
                                       "' holds no PEM certificate (expected a "
                                       "'-----BEGIN CERTIFICATE-----' block)"));
  }
  if (!readFile(f.cert, &cert_text, &why)) {
    problem(f.cert_field, why);
  } else if ((chain = parseCertificates(cert_text)).empty()) {
    problem(f.cert_field, detail::concat("'", f.cert,
                                         "' holds no PEM certificate (expected a "
                                         "'-----BEGIN CERTIFICATE-----' block)"));
  }
  if (!readFile(f.key, &key_text, &why)) {
    problem(f.key_field, why);
  } else {
    struct stat st {};
    if (::stat(f.key.c_str(), &st) == 0 && (st.st_mode & 0077) != 0) {
      problem(f.key_field,
              detail::concat("'", f.key, "' can be read or written by other users (mode ", std::oct,
                             (st.st_mode & 0777), std::dec,
                             "); a private key is a secret: chmod 600 '", f.key, "'"));
    }
    key = parseKey(key_text);
    if (!key) {
      const bool encrypted = key_text.find("ENCRYPTED") != std::string::npos;
      problem(f.key_field,
              encrypted ? detail::concat("'", f.key,
                                         "' is an encrypted private key; geopipe cannot prompt "
                                         "for a passphrase: decrypt it (openssl pkey -in KEY "
                                         "-out KEY.plain) and keep it mode 600")
                        : detail::concat("'", f.key,
                                         "' holds no PEM private key (expected a "
                                         "'-----BEGIN PRIVATE KEY-----' block)"));
    }
  }
  bool reported_validity = false;
  for (const auto& c : chain) {
    reported_validity = true;
    if (X509_cmp_current_time(X509_get0_notAfter(c.get())) < 0) {
      problem(f.cert_field, detail::concat("the certificate in '", f.cert,
                                           "' has expired: issue a new one (geopipe certs DIR "
                                           "--host NAME with the same CA)"));
      break;
    }
    if (X509_cmp_current_time(X509_get0_notBefore(c.get())) > 0) {
      problem(f.cert_field, detail::concat("the certificate in '", f.cert,
                                           "' is not valid yet (is this host's clock right?)"));
      break;
    }
    reported_validity = false;
  }
  if (!chain.empty() && key && X509_check_private_key(chain.front().get(), key.get()) != 1) {
    ERR_clear_error();
    problem(f.key_field,
            detail::concat("the key in '", f.key, "' does not belong to the certificate in '",
                           f.cert, "' (", f.cert_field,
                           "): give the key file written together with that "
                           "certificate"));
  }
  if (!roots.empty() && !chain.empty()) {
    const int err = verifyFor(roots, chain.front().get(), chain, X509_PURPOSE_SSL_SERVER);
    if (err == X509_V_ERR_INVALID_PURPOSE) {
      problem(f.cert_field,
              detail::concat("the certificate in '", f.cert,
                             "' cannot be used by a TLS server (its extendedKeyUsage lacks "
                             "serverAuth): every host serves and connects, so it needs both "
                             "serverAuth and clientAuth; issue it with geopipe certs"));
    } else if ((err == X509_V_ERR_CERT_HAS_EXPIRED || err == X509_V_ERR_CERT_NOT_YET_VALID) &&
               reported_validity) {
      // Reported above.
    } else if (err != X509_V_OK) {
      problem(f.cert_field,
              detail::concat("the certificate in '", f.cert, "' is not trusted by the CA in '",
                             f.ca, "' (", f.ca_field, "): ", X509_verify_cert_error_string(err),
                             "; issue it from that CA (geopipe certs DIR --host "
                             "NAME) or name the CA that signed it"));
    } else if (verifyFor(roots, chain.front().get(), chain, X509_PURPOSE_SSL_CLIENT) ==
               X509_V_ERR_INVALID_PURPOSE) {
      problem(f.cert_field,
              detail::concat("the certificate in '", f.cert,
                             "' cannot be used by a TLS client (its extendedKeyUsage lacks "
                             "clientAuth): every host serves and connects, so it needs both "
                             "serverAuth and clientAuth; issue it with geopipe certs"));
    }
  }
  return problems;
}

TlsIdentity loadTlsIdentity(const TlsFiles& files) {
  const std::vector<TlsProblem> problems = checkTlsFiles(files);
  if (!problems.empty()) {
    std::string msg;
    for (const auto& p : problems) {
      msg += (msg.empty() ? "" : "\n") + p.field + ": " + p.message;
    }
    throw ConfigError(msg, __FILE__);
  }
  TlsIdentity id;
  std::string why;
  readFile(files.ca, &id.ca_pem, &why);
  readFile(files.cert, &id.cert_pem, &why);
  readFile(files.key, &id.key_pem, &why);
  id.origin = detail::concat(files.cert_field, " '", files.cert, "'");
  return id;
}

CertificateAuthority createCertificateAuthority(const std::string& common_name, int days) {
  Key key = newKey();
  Cert x = newCertificate(key.get(), common_name, days);
  X509_set_issuer_name(x.get(), X509_get_subject_name(x.get()));
  addExtension(x.get(), x.get(), NID_basic_constraints, "critical,CA:TRUE,pathlen:0");
  addExtension(x.get(), x.get(), NID_key_usage, "critical,keyCertSign,cRLSign");
  addExtension(x.get(), x.get(), NID_subject_key_identifier, "hash");
  sign(x.get(), key.get());
  return CertificateAuthority{pemOf(x.get()), pemOf(key.get())};
}

CertificateAuthority loadCertificateAuthority(const std::string& cert_path,
                                              const std::string& key_path) {
  std::string cert_text, key_text, why;
  if (!readFile(cert_path, &cert_text, &why)) GEOPIPE_THROW(ConfigError, "CA certificate: ", why);
  if (!readFile(key_path, &key_text, &why)) GEOPIPE_THROW(ConfigError, "CA key: ", why);
  std::vector<Cert> certs = parseCertificates(cert_text);
  Key key = parseKey(key_text);
  if (certs.empty()) GEOPIPE_THROW(ConfigError, "'", cert_path, "' holds no PEM certificate");
  if (!key) GEOPIPE_THROW(ConfigError, "'", key_path, "' holds no (unencrypted) PEM private key");
  if (X509_check_private_key(certs.front().get(), key.get()) != 1) {
    ERR_clear_error();
    GEOPIPE_THROW(ConfigError, "the CA key '", key_path,
                  "' does not belong to the CA certificate '", cert_path,
                  "'; restore the pair or start a new directory");
  }
  return CertificateAuthority{cert_text, key_text};
}

HostCertificate issueHostCertificate(const CertificateAuthority& ca,
                                     const std::vector<std::string>& names, int days) {
  GEOPIPE_CHECK(!names.empty(), ConfigError,
                "a host certificate needs at least one host name or IP address");
  std::string san;
  for (const auto& n : names) {
    std::string entry;
    if (isIpAddress(n)) {
      entry = "IP:" + n;
    } else if (isHostName(n)) {
      entry = "DNS:" + n;
    } else {
      GEOPIPE_THROW(ConfigError, "'", n,
                    "' is neither a host name (letters, digits, '-' and '.') nor an IP address");
    }
    san += (san.empty() ? "" : ",") + entry;
  }
  std::vector<Cert> ca_certs = parseCertificates(ca.cert_pem);
  Key ca_key = parseKey(ca.key_pem);
  GEOPIPE_CHECK(!ca_certs.empty() && ca_key, ConfigError, "the CA is not PEM");
  Key key = newKey();
  Cert x = newCertificate(key.get(), names.front(), days);
  X509* issuer = ca_certs.front().get();
  X509_set_issuer_name(x.get(), X509_get_subject_name(issuer));
  addExtension(x.get(), issuer, NID_basic_constraints, "critical,CA:FALSE");
  addExtension(x.get(), issuer, NID_key_usage, "critical,digitalSignature");
  addExtension(x.get(), issuer, NID_ext_key_usage, "serverAuth,clientAuth");
  addExtension(x.get(), issuer, NID_subject_alt_name, san);
  addExtension(x.get(), issuer, NID_subject_key_identifier, "hash");
  addExtension(x.get(), issuer, NID_authority_key_identifier, "keyid:always");
  sign(x.get(), ca_key.get());
  return HostCertificate{pemOf(x.get()), pemOf(key.get())};
}

}  // namespace geopipe::security
