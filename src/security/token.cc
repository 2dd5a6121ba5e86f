// Join tokens and loopback addresses.
#include "src/security/token.h"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "geopipe/error.h"

namespace geopipe::security {

bool constantTimeEquals(std::string_view a, std::string_view b) {
  // Every byte of the longer string is visited whatever the contents, and
  // the differences are OR-ed together, so there is no early exit.
  const size_t n = a.size() > b.size() ? a.size() : b.size();
  volatile unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff = diff | static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

std::string randomToken(size_t bytes) {
  std::string raw(bytes, '\0');
  size_t got = 0;
  while (got < bytes) {
    const ssize_t n = ::getrandom(raw.data() + got, bytes - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      GEOPIPE_THROW(IoError,
                    "cannot read random bytes for a token (getrandom): ", std::strerror(errno));
    }
    got += static_cast<size_t>(n);
  }
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes * 2);
  for (unsigned char c : raw) {
    out += kHex[c >> 4];
    out += kHex[c & 15];
  }
  return out;
}

std::string tokenProblem(const std::string& secret) {
  if (secret.empty()) return "the token is empty";
  if (secret.size() < kMinTokenChars) {
    return detail::concat("the token is too short (", secret.size(), " characters; at least ",
                          kMinTokenChars,
                          "): use a random one, e.g. the token file `geopipe certs` writes");
  }
  if (secret.size() > kMaxTokenChars) {
    return detail::concat("the token is too long (", secret.size(), " characters; at most ",
                          kMaxTokenChars, ")");
  }
  for (char c : secret) {
    if (c < 0x21 || c > 0x7e) {
      return "the token has a character that is not printable ASCII (spaces and control "
             "characters are not allowed)";
    }
  }
  return "";
}

namespace {

std::string trimTrailingSpace(std::string s) {
  while (!s.empty() &&
         (s.back() == '\n' || s.back() == '\r' || s.back() == ' ' || s.back() == '\t')) {
    s.pop_back();
  }
  return s;
}

// The token in `path`, or a problem in *problem.
std::string readTokenText(const std::string& path, std::string* problem) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    *problem = errno == ENOENT ? detail::concat("no such file '", path,
                                                "'; paths are relative to the job file's directory")
                               : detail::concat("cannot read '", path, "': ", std::strerror(errno));
    return "";
  }
  if (!S_ISREG(st.st_mode)) {
    *problem = detail::concat("'", path, "' is not a regular file");
    return "";
  }
  if ((st.st_mode & 0077) != 0) {
    *problem = detail::concat("'", path, "' can be read or written by other users (mode ", std::oct,
                              (st.st_mode & 0777), std::dec,
                              "); a join token is a secret: chmod 600 '", path, "'");
    return "";
  }
  if (st.st_size > static_cast<off_t>(kMaxTokenChars + 64)) {
    *problem = detail::concat("'", path, "' has ", st.st_size,
                              " bytes; a token file holds one token of at most ", kMaxTokenChars,
                              " characters");
    return "";
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *problem = detail::concat("cannot read '", path, "': ", std::strerror(errno));
    return "";
  }
  std::ostringstream os;
  os << in.rdbuf();
  std::string secret = trimTrailingSpace(os.str());
  if (std::string p = tokenProblem(secret); !p.empty()) {
    *problem = detail::concat("'", path, "': ", p);
    return "";
  }
  return secret;
}

void writeFileWithMode(const std::string& path, const std::string& content, mode_t mode) {
  // Remove first so that an existing file's looser mode is not kept.
  ::unlink(path.c_str());
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) GEOPIPE_THROW(IoError, "cannot create '", path, "': ", std::strerror(errno));
  size_t done = 0;
  while (done < content.size()) {
    const ssize_t n = ::write(fd, content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      GEOPIPE_THROW(IoError, "cannot write '", path, "': ", std::strerror(err));
    }
    done += static_cast<size_t>(n);
  }
  // The umask may have narrowed `mode`; a public file must stay readable.
  ::fchmod(fd, mode);
  if (::close(fd) != 0) GEOPIPE_THROW(IoError, "cannot write '", path, "': ", std::strerror(errno));
}

}  // namespace

std::string tokenFileProblem(const std::string& path) {
  std::string problem;
  readTokenText(path, &problem);
  return problem;
}

JoinToken readTokenFile(const std::string& path, const std::string& field) {
  std::string problem;
  std::string secret = readTokenText(path, &problem);
  if (!problem.empty()) GEOPIPE_THROW(ConfigError, field, ": ", problem);
  return JoinToken{std::move(secret), detail::concat(field, " '", path, "'")};
}

JoinToken tokenFromEnvironment() {
  const char* v = std::getenv(kTokenEnvVar);
  if (!v || !*v) return {};
  std::string secret = trimTrailingSpace(v);
  if (std::string p = tokenProblem(secret); !p.empty()) {
    GEOPIPE_THROW(ConfigError, "environment variable ", kTokenEnvVar, ": ", p);
  }
  return JoinToken{std::move(secret), kTokenEnvVar};
}

void writePrivateFile(const std::string& path, const std::string& content) {
  writeFileWithMode(path, content, 0600);
}

void writePublicFile(const std::string& path, const std::string& content) {
  writeFileWithMode(path, content, 0644);
}

std::string hostOfAddress(const std::string& address) {
  if (!address.empty() && address.front() == '[') {
    const auto close = address.find(']');
    return close == std::string::npos ? address : address.substr(0, close + 1);
  }
  const auto first = address.find(':');
  if (first == std::string::npos) return address;
  // A bare IPv6 address without brackets has several colons and no port.
  if (address.find(':', first + 1) != std::string::npos) return address;
  return address.substr(0, first);
}

bool isLoopbackHost(const std::string& host) {
  std::string h = host;
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  if (h == "localhost" || h == "::1" || h == "0:0:0:0:0:0:0:1") return true;
  // 127.0.0.0/8, written as a dotted quad.
  if (h.rfind("127.", 0) != 0) return false;
  int parts = 0;
  size_t i = 0;
  while (i <= h.size()) {
    size_t j = h.find('.', i);
    if (j == std::string::npos) j = h.size();
    const std::string p = h.substr(i, j - i);
    if (p.empty() || p.size() > 3 || p.find_first_not_of("0123456789") != std::string::npos ||
        std::stoi(p) > 255) {
      return false;
    }
    ++parts;
    i = j + 1;
  }
  return parts == 4;
}

bool isLoopbackAddress(const std::string& address) {
  return isLoopbackHost(hostOfAddress(address));
}

}  // namespace geopipe::security
