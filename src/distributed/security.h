// The credentials of a distributed job on one host: how its gRPC links are
// secured and the join token, from the job's `security:` section, from a
// worker's flags, or made up on the spot for `geopipe launch` (an ephemeral
// CA, one loopback certificate and a random token in the run directory).
// See docs/operations.md#security-model. Torch-free, gRPC-free header.
#pragma once

#include <chrono>
#include <cstddef>
#include <map>
#include <string>
#include <vector>

#include "geopipe/job_spec.h"
#include "src/security/token.h"
#include "src/transport/grpc/credentials.h"

namespace geopipe::distributed {

struct JobSecurity {
  transport::LinkSecurity link;  // mutual TLS, or plaintext
  security::JoinToken token;     // required with TLS; optional with plaintext
};

// The job's security section on this host: TLS files loaded and checked,
// the token read from security.token_file or GEOPIPE_JOB_TOKEN. ConfigError
// naming the field and the fix for a job without a security section (a
// multi-host job must choose), a TLS job without a token, or bad files.
// `allow_insecure_remote` (--allow-insecure-remote) forces plaintext off
// loopback as `insecure: force` does.
JobSecurity jobSecurity(const JobSpec& job, bool allow_insecure_remote);

// What a worker was given on its command line.
struct WorkerSecurityArgs {
  std::string ca, cert, key;           // PEM files (--ca, --cert, --key)
  std::string token_file;              // --token-file; empty: GEOPIPE_JOB_TOKEN
  bool insecure = false;               // --insecure: plaintext (loopback only)
  bool allow_insecure_remote = false;  // --allow-insecure-remote
};
// The worker's credentials; ConfigError naming the flag and the fix.
JobSecurity workerSecurity(const WorkerSecurityArgs& args);

// Credentials for a job run on this machine only (`geopipe launch` of a job
// without a security section): a new CA and one certificate for localhost /
// 127.0.0.1 / ::1, valid for 7 days, and a random token, written to `dir`
// (keys and token mode 600) so the worker processes can read them; their
// paths are in `worker_args`.
struct EphemeralSecurity {
  JobSecurity security;
  WorkerSecurityArgs worker_args;
};
EphemeralSecurity makeEphemeralSecurity(const std::string& dir);

// The coordinator's join gate: the join-token check, with a throttle. A
// host that sends kMaxBadTokens wrong (or missing) tokens within
// kBadTokenWindow is refused without a check for the rest of that window;
// at most kMaxTrackedHosts hosts are remembered (then the tally restarts).
// Without a token every registration is admitted. Not thread-safe: the
// coordinator asks under its lock.
class JoinGate {
 public:
  static constexpr int kMaxBadTokens = 5;
  static constexpr std::chrono::seconds kBadTokenWindow{60};
  static constexpr size_t kMaxTrackedHosts = 4096;
  using Clock = std::chrono::steady_clock;

  enum class Verdict { ADMIT, WRONG_TOKEN, THROTTLED };
  struct Outcome {
    Verdict verdict = Verdict::ADMIT;
    std::string message;              // for the refused caller (no secret in it)
    std::vector<std::string> events;  // one-line events for the operator
  };

  explicit JoinGate(security::JoinToken token) : token_(std::move(token)) {}

  // `host` the caller's address without port, `who` how events name the
  // caller (address, hostname, pid), `token` what it sent.
  Outcome check(const std::string& host, const std::string& who, const std::string& token,
                Clock::time_point now);

 private:
  struct BadTokens {
    int count = 0;
    Clock::time_point window_start;
  };
  security::JoinToken token_;
  std::map<std::string, BadTokens> bad_tokens_;  // by host
};

}  // namespace geopipe::distributed
