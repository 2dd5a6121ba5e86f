// transport_bench: one-way throughput of single 1/16/64 MB messages from
// rank 0 to rank 1 over GrpcTransport on 127.0.0.1, with InprocTransport and
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
  std::vector<std::shared_ptr<gt::GrpcTransport>> grpc;
  for (int r = 0; r < 2; ++r) {
    gt::GrpcTransportOptions o;
    o.rank = r;
    o.addresses = {"", ""};
    o.listen_address = "127.0.0.1:0";
    o.job_token = "transport-bench";
    grpc.push_back(std::make_shared<gt::GrpcTransport>(o));
  }
  grpc[0]->setPeerAddress(1, grpc[1]->listeningAddress());
  grpc[1]->setPeerAddress(0, grpc[0]->listeningAddress());
  auto inproc = gt::makeInprocWorld(2);

  std::printf(
      "one-way throughput of single messages, rank 0 -> rank 1, %d reps (MB/s, MB = 1e6 B)\n",
      reps);
  std::printf("%-8s | %-30s | %-30s | %-30s | %s\n", "size", "grpc (loopback) min/med/max",
              "inproc min/med/max", "memcpy min/med/max", "grpc/memcpy");
  for (size_t mb : {1, 16, 64}) {
    const size_t bytes = mb << 20;
    const Summary g = timeTransport(*grpc[0], *grpc[1], bytes, reps);
    const Summary i = timeTransport(*inproc[0], *inproc[1], bytes, reps);
    const Summary m = timeMemcpy(bytes, reps);
    auto cell = [](const Summary& s) {
      char buf[64];
      std::snprintf(buf, sizeof(buf), "%.0f / %.0f / %.0f", s.min_mbps, s.median_mbps, s.max_mbps);
      return std::string(buf);
    };
    std::printf("%3zu MiB  | %-30s | %-30s | %-30s | %.3f\n", mb, cell(g).c_str(), cell(i).c_str(),
                cell(m).c_str(), g.median_mbps / m.median_mbps);
  }
  std::printf(
      "(inproc moves the payload's buffer, so its figure is per-message overhead, not a"
      " copy rate)\n");
  return 0;
}
