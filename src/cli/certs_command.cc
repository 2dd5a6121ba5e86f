// `geopipe certs DIR --host NAME[,ALT...]...`: a quick-start PKI for a
// multi-host job: a CA (created once, reused by later calls to add hosts),
// one certificate per host usable as TLS server and client, and a random
// join token; prints the job's security section and each worker's flags.
#include <sys/stat.h>

#include <filesystem>
#include <set>

#include "geopipe/error.h"
#include "src/cli/commands.h"
#include "src/common/text.h"
#include "src/security/pki.h"
#include "src/security/token.h"

namespace geopipe::cli {
namespace fs = std::filesystem;

namespace {

constexpr int kCaDays = 3650;

std::vector<std::string> splitNames(const std::string& entry) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= entry.size()) {
    size_t comma = entry.find(',', start);
    if (comma == std::string::npos) comma = entry.size();
    if (comma > start) out.push_back(entry.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
}

bool fileExists(const fs::path& p) {
  std::error_code ec;
  return fs::exists(p, ec);
}

}  // namespace

void addCertsOptions(CLI::App& app, CertsArgs& args) {
  app.add_option("DIR", args.dir, "directory for ca.pem, ca-key.pem, token and host files")
      ->required();
  app.add_option("--host", args.hosts,
                 "NAME[,ALT...]: a certificate NAME.pem / NAME-key.pem whose subjectAltNames "
                 "are every name and IP address given (the addresses others dial it by); "
                 "repeat per host (default: localhost,127.0.0.1,::1)");
  app.add_option("--days", args.days, "validity of the host certificates in days")
      ->check(CLI::Range(1, 3650))
      ->capture_default_str();
  app.add_flag("--force", args.force, "replace host files that already exist");
}

int runCertsCommand(const CertsArgs& args, std::ostream& out) {
  // Everything that can refuse the command runs before the first file is
  // written (the directory included): a rejected --host used to leave a new
  // CA and token behind.
  const fs::path dir = args.dir;
  const fs::path ca_pem = dir / "ca.pem", ca_key = dir / "ca-key.pem", token = dir / "token";
  std::vector<std::vector<std::string>> hosts;
  std::set<std::string> first_names;
  for (const auto& h :
       args.hosts.empty() ? std::vector<std::string>{"localhost,127.0.0.1,::1"} : args.hosts) {
    hosts.push_back(splitNames(h));
    GEOPIPE_CHECK(!hosts.back().empty(), ConfigError, "--host '", common::printable(h),
                  "' names no host: give NAME[,ALT...]");
    GEOPIPE_CHECK(first_names.insert(hosts.back().front()).second, ConfigError, "--host '",
                  common::printable(h), "': two --host options name files '",
                  common::printable(hosts.back().front()),
                  ".pem': give each host its own first name");
  }
  for (const auto& names : hosts) {
    for (const char* suffix : {".pem", "-key.pem"}) {
      const fs::path p = dir / (names.front() + suffix);
      if (fileExists(p) && !args.force) {
        GEOPIPE_THROW(ConfigError, "'", p.string(),
                      "' exists already: pass --force to replace it, or choose another name");
      }
    }
  }
  if (fileExists(ca_pem) != fileExists(ca_key)) {
    GEOPIPE_THROW(ConfigError, "'", dir.string(), "' has ",
                  fileExists(ca_pem) ? "ca.pem but no ca-key.pem" : "ca-key.pem but no ca.pem",
                  ": restore the missing half, or use a new directory for a new CA");
  }
  const bool new_ca = !fileExists(ca_pem);
  const bool new_token = !fileExists(token);
  if (!new_token) {
    const std::string problem = security::tokenFileProblem(token.string());
    if (!problem.empty()) GEOPIPE_THROW(ConfigError, problem, " (or delete it for a new one)");
  }
  const security::CertificateAuthority ca =
      new_ca ? security::createCertificateAuthority("geopipe CA", kCaDays)
             : security::loadCertificateAuthority(ca_pem.string(), ca_key.string());
  // Issued in memory first: a name that is neither a host name nor an IP
  // address is refused here, with nothing written yet.
  std::vector<security::HostCertificate> issued;
  for (const auto& names : hosts) {
    try {
      issued.push_back(security::issueHostCertificate(ca, names, args.days));
    } catch (const ConfigError& e) {
      GEOPIPE_THROW(ConfigError, "--host: ", common::printable(e.what()), "; nothing was written");
    }
  }

  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) GEOPIPE_THROW(IoError, "cannot create '", dir.string(), "': ", ec.message());
  if (new_ca) {
    security::writePublicFile(ca_pem.string(), ca.cert_pem);
    security::writePrivateFile(ca_key.string(), ca.key_pem);
    out << "wrote " << ca_pem.string() << " (CA certificate: copy to every host)\n"
        << "wrote " << ca_key.string()
        << " (CA key, mode 600: keep it here, it can issue certificates)\n";
  } else {
    out << "using the CA in " << ca_pem.string() << "\n";
  }
  if (new_token) {
    security::writePrivateFile(token.string(), security::randomToken() + "\n");
    out << "wrote " << token.string() << " (join token, mode 600: copy to every host)\n";
  } else {
    out << "using the join token in " << token.string() << "\n";
  }
  for (size_t i = 0; i < hosts.size(); ++i) {
    const auto& names = hosts[i];
    const fs::path cert = dir / (names.front() + ".pem");
    const fs::path key = dir / (names.front() + "-key.pem");
    security::writePublicFile(cert.string(), issued[i].cert_pem);
    security::writePrivateFile(key.string(), issued[i].key_pem);
    out << "wrote " << cert.string() << " and " << key.string() << " (for";
    for (const auto& n : names) out << " " << n;
    out << ", " << args.days << " days)\n";
  }
  const std::string first = hosts.front().front();
  out << "\nIn the job file (paths relative to it), on the coordinator's host:\n"
      << "security:\n"
      << "  ca: " << ca_pem.string() << "\n"
      << "  cert: " << (dir / (first + ".pem")).string() << "\n"
      << "  key: " << (dir / (first + "-key.pem")).string() << "\n"
      << "  token_file: " << token.string() << "\n"
      << "Each worker host gets ca.pem, token and its own pair (never ca-key.pem):\n"
      << "  geopipe worker --coordinator COORDINATOR:7420 --ca " << ca_pem.string() << " --cert "
      << (dir / "HOST.pem").string() << " --key " << (dir / "HOST-key.pem").string()
      << " --token-file " << token.string() << "\n";
  return 0;
}

}  // namespace geopipe::cli
