// Join tokens: the shared secret a worker presents to join a job (and that
// peers present on every stream), read from a file or the environment,
// compared in constant time, and never printed. Also the loopback test that
// decides where plaintext is allowed. No OpenSSL, no gRPC.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace geopipe::security {

// The environment variable a token may come from when no file is named.
constexpr const char* kTokenEnvVar = "GEOPIPE_JOB_TOKEN";
// Bounds on a token's length (after trailing whitespace is dropped).
constexpr size_t kMinTokenChars = 16;
constexpr size_t kMaxTokenChars = 1024;

// A secret and where it came from. `origin` is for messages ("security.
// token_file '/x/token'", "GEOPIPE_JOB_TOKEN"); the secret itself must never
// reach a log, an error message or a command line.
struct JoinToken {
  std::string secret;  // empty: no token
  std::string origin;  // where it was read from; empty when there is none
  bool empty() const { return secret.empty(); }
};

// a == b in time that depends only on the lengths, not on where the first
// difference is (so a refused client learns nothing from the reply time).
bool constantTimeEquals(std::string_view a, std::string_view b);

// `bytes` random bytes from the kernel (getrandom), as lowercase hex.
std::string randomToken(size_t bytes = 32);

// Why `secret` cannot be a join token (empty, too short, too long, not
// printable ASCII), or "" when it can. Never quotes the secret.
std::string tokenProblem(const std::string& secret);

// Reads a token file: its content minus trailing whitespace. Problems
// (missing, unreadable, readable by other users, not a valid token) are a
// ConfigError naming `field` and the fix.
JoinToken readTokenFile(const std::string& path, const std::string& field);
// The same problems as readTokenFile, as a message ("" when the file is fine).
std::string tokenFileProblem(const std::string& path);

// GEOPIPE_JOB_TOKEN, or an empty token when it is unset or empty. Throws
// ConfigError when it is set but not a valid token.
JoinToken tokenFromEnvironment();

// Writes `content` to `path` readable by its owner only (0600), replacing
// the file. IoError naming the path on failure.
void writePrivateFile(const std::string& path, const std::string& content);
// Writes a public file (0644). IoError naming the path on failure.
void writePublicFile(const std::string& path, const std::string& content);

// "host" of "host:port" ("[::1]:5" -> "[::1]"); the whole string when it has
// no port.
std::string hostOfAddress(const std::string& address);
// True for 127.0.0.0/8, ::1 and "localhost" (with or without brackets).
bool isLoopbackHost(const std::string& host);
// isLoopbackHost of the host part of "host:port".
bool isLoopbackAddress(const std::string& address);

}  // namespace geopipe::security
