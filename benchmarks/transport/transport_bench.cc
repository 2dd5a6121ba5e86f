// transport_bench: one-way throughput of single 1/16/64 MB messages from
// rank 0 to rank 1 over GrpcTransport on 127.0.0.1 (plaintext, and mutual TLS
// as every multi-process job now runs it), with InprocTransport and
// a plain memcpy of the same bytes measured in the same run as references.
// Each case first verifies one message byte for byte, then times `reps`
// messages (send() until the receive completes) and prints min / median /
// max MB/s (MB = 10^6 bytes) and the gRPC median as a share of memcpy.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "src/security/pki.h"
#include "src/transport/grpc/grpc_transport.h"
#include "src/transport/inproc/inproc_transport.h"

namespace gt = geopipe::transport;
using Seconds = std::chrono::duration<double>;

namespace {

gt::Bytes pattern(size_t n) {
  gt::Bytes b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(i * 131 + (i >> 12));
  return b;
}

struct Summary {
  double min_mbps, median_mbps, max_mbps;
};

Summary summarize(std::vector<double> seconds, size_t bytes) {
  std::sort(seconds.begin(), seconds.end());
  auto mbps = [&](double s) { return static_cast<double>(bytes) / 1e6 / s; };
  return Summary{mbps(seconds.back()), mbps(seconds[seconds.size() / 2]), mbps(seconds.front())};
}

// Times one message from `from` to `to` per rep; verifies the first.
Summary timeTransport(gt::Transport& from, gt::Transport& to, size_t bytes, int reps) {
  const gt::Bytes reference = pattern(bytes);
  gt::Tag tag;
  tag.channel = gt::Channel::ACTIVATION;
  {
    auto r = to.recv(from.rank(), tag);
    from.send(to.rank(), tag, reference)->wait(gt::kWaitForever);
    r->wait(std::chrono::seconds(60));
    if (r->takePayload() != reference) {
      std::fprintf(stderr, "verification failed for %zu bytes over %s\n", bytes,
                   from.name().c_str());
      std::exit(1);
    }
  }
  std::vector<double> times;
  for (int i = 0; i < reps; ++i) {
    gt::Bytes payload = reference;  // allocated and filled outside the timing
    tag.step = i + 1;
    auto r = to.recv(from.rank(), tag);
    const auto start = gt::Clock::now();
    auto s = from.send(to.rank(), tag, std::move(payload));
    r->wait(std::chrono::seconds(60));
    times.push_back(Seconds(gt::Clock::now() - start).count());
    s->wait(std::chrono::seconds(60));
  }
  return summarize(times, bytes);
}

Summary timeMemcpy(size_t bytes, int reps) {
  const gt::Bytes src = pattern(bytes);
  gt::Bytes dst(bytes);
  std::vector<double> times;
  for (int i = 0; i < reps; ++i) {
    const auto start = gt::Clock::now();
    std::memcpy(dst.data(), src.data(), bytes);
    times.push_back(Seconds(gt::Clock::now() - start).count());
  }
  if (dst != src) std::exit(1);
  return summarize(times, bytes);
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::max(3, std::atoi(argv[1])) : 7;
  // Two gRPC ranks on free loopback ports, default options (1 MiB chunks).
  // The same pair again over mutual TLS (a CA and a 127.0.0.1 certificate).
  const auto ca = geopipe::security::createCertificateAuthority("bench CA", 1);
  const auto host = geopipe::security::issueHostCertificate(ca, {"localhost", "127.0.0.1"}, 1);
  auto identity = std::make_shared<geopipe::security::TlsIdentity>();
  identity->ca_pem = ca.cert_pem;
  identity->cert_pem = host.cert_pem;
  identity->key_pem = host.key_pem;
  auto makePair = [](std::shared_ptr<const geopipe::security::TlsIdentity> tls) {
    std::vector<std::shared_ptr<gt::GrpcTransport>> pair;
    for (int r = 0; r < 2; ++r) {
      gt::GrpcTransportOptions o;
      o.rank = r;
      o.addresses = {"", ""};
      o.listen_address = "127.0.0.1:0";
      o.job_token = "transport-bench-token-0123456789";
      o.security.tls = tls;
      pair.push_back(std::make_shared<gt::GrpcTransport>(o));
    }
    pair[0]->setPeerAddress(1, pair[1]->listeningAddress());
    pair[1]->setPeerAddress(0, pair[0]->listeningAddress());
    return pair;
  };
  auto grpc = makePair(nullptr);
  auto tls = makePair(identity);
  auto inproc = gt::makeInprocWorld(2);

  std::printf(
      "one-way throughput of single messages, rank 0 -> rank 1, %d reps (MB/s, MB = 1e6 B)\n",
      reps);
  std::printf("%-8s | %-30s | %-30s | %-30s | %-30s | %-11s | %s\n", "size",
              "grpc (loopback) min/med/max", "grpc mutual TLS min/med/max", "inproc min/med/max",
              "memcpy min/med/max", "grpc/memcpy", "TLS/plain");
  for (size_t mb : {1, 16, 64}) {
    const size_t bytes = mb << 20;
    const Summary g = timeTransport(*grpc[0], *grpc[1], bytes, reps);
    const Summary t = timeTransport(*tls[0], *tls[1], bytes, reps);
    const Summary i = timeTransport(*inproc[0], *inproc[1], bytes, reps);
    const Summary m = timeMemcpy(bytes, reps);
    auto cell = [](const Summary& s) {
      char buf[64];
      std::snprintf(buf, sizeof(buf), "%.0f / %.0f / %.0f", s.min_mbps, s.median_mbps, s.max_mbps);
      return std::string(buf);
    };
    std::printf("%3zu MiB  | %-30s | %-30s | %-30s | %-30s | %-11.3f | %.2f\n", mb, cell(g).c_str(),
                cell(t).c_str(), cell(i).c_str(), cell(m).c_str(), g.median_mbps / m.median_mbps,
                t.median_mbps / g.median_mbps);
  }
  std::printf(
      "(inproc moves the payload's buffer, so its figure is per-message overhead, not a"
      " copy rate)\n");
  return 0;
}
