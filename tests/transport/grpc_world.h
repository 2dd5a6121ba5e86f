// Test harness for gRPC transport tests: a world of GrpcTransport ranks on
// free 127.0.0.1 ports, with options small enough to exercise multi-chunk
// messages and quick failure detection.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "src/transport/grpc/grpc_transport.h"
#include "tests/transport/world.h"

namespace geopipe::transport::testing {

inline GrpcTransportOptions grpcTestOptions() {
  GrpcTransportOptions o;
  o.chunk_bytes = 64 << 10;
  o.connect_timeout = std::chrono::seconds(2);
  o.close_timeout = std::chrono::seconds(2);
  return o;
}

// n ranks, each listening on a free port; the address tables are filled in
// after every server is up. `tokens[r]` overrides rank r's job token.
inline std::vector<std::shared_ptr<GrpcTransport>> makeGrpcWorld(
    int n, GrpcTransportOptions base = grpcTestOptions(), std::vector<std::string> tokens = {}) {
  std::vector<std::shared_ptr<GrpcTransport>> ranks;
  for (int r = 0; r < n; ++r) {
    GrpcTransportOptions o = base;
    o.rank = r;
    o.addresses.assign(static_cast<size_t>(n), "");
    o.listen_address = "127.0.0.1:0";
    o.job_token = r < static_cast<int>(tokens.size()) ? tokens[r] : "test-job";
    ranks.push_back(std::make_shared<GrpcTransport>(o));
  }
  for (int r = 0; r < n; ++r) {
    for (int p = 0; p < n; ++p) {
      if (p != r) ranks[r]->setPeerAddress(p, ranks[p]->listeningAddress());
    }
  }
  return ranks;
}

// One rank per entry of `security` (its links secured by it), each on a
// free 127.0.0.1 port, no peer address known yet.
inline std::vector<std::shared_ptr<GrpcTransport>> unconnectedRanks(
    const std::vector<LinkSecurity>& security, GrpcTransportOptions base = grpcTestOptions(),
    const std::string& job_token = "test-job") {
  std::vector<std::shared_ptr<GrpcTransport>> ranks;
  for (size_t r = 0; r < security.size(); ++r) {
    GrpcTransportOptions o = base;
    o.rank = static_cast<int>(r);
    o.addresses.assign(security.size(), "");
    o.listen_address = "127.0.0.1:0";
    o.job_token = job_token;
    o.security = security[r];
    ranks.push_back(std::make_shared<GrpcTransport>(o));
  }
  return ranks;
}

inline World asWorld(const std::vector<std::shared_ptr<GrpcTransport>>& ranks) {
  World world;
  for (auto& r : ranks) world.ranks.push_back(r);
  return world;
}

}  // namespace geopipe::transport::testing
