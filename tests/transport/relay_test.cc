// The relay (src/transport/grpc/relay.h): a rank that accepts no connection
// of its own receives its peers' streams through an HTTP CONNECT relay it
// dials back, with TLS end to end; and what the relay answers to requests it
// cannot serve.
#include "src/transport/grpc/relay.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include "src/security/pki.h"
#include "src/transport/grpc/grpc_transport.h"
#include "tests/support/raw_tcp.h"
#include "tests/support/test_identity.h"
#include "tests/transport/grpc_world.h"

namespace geopipe::transport::testing {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

Bytes pattern(size_t n, uint32_t seed) {
  Bytes b(n);
  uint32_t x = seed * 2654435761u + 1;
  for (auto& v : b) {
    x = x * 1664525u + 1013904223u;
    v = static_cast<uint8_t>(x >> 24);
  }
  return b;
}

// Every rank's identity: a certificate for loopback and for the name the
// relayed rank is dialled by.
LinkSecurity loopbackTls() {
  const auto ca = security::createCertificateAuthority("relay test CA", 1);
  LinkSecurity s;
  s.tls =
      geopipe::testing::testIdentity(ca, ca, {"localhost", "127.0.0.1", "rank0.geopipe.invalid"});
  return s;
}

// Dial requests answered by a thread each, as a relayed worker does.
struct DialBacks {
  std::mutex mu;
  std::vector<std::thread> threads;
  std::atomic<int> requests{0};
  ~DialBacks() {
    std::lock_guard<std::mutex> lock(mu);
    for (auto& t : threads) t.join();
  }
};

// Sends a request to the relay and returns the first line of its answer
// ("" when it closes without one).
std::string askRelay(int port, const std::string& request) {
  const std::string answer = geopipe::testing::exchangeRawTcp("127.0.0.1:" + std::to_string(port),
                                                              request, std::chrono::seconds(3));
  return answer.substr(0, answer.find('\r'));
}

// What a relayed exchange left behind.
struct RelayedRun {
  RelayStats during;  // before the ranks closed
  int dial_requests = 0;
  int open_after_stop = -1;
};

// Rank 1 sends six multi-chunk messages to rank 0 through a relay over TLS,
// rank 0 six small ones back directly. The relayed rank dials back after
// `dial_delay`, as a worker far from the relay does.
RelayedRun relayedExchange(std::chrono::milliseconds dial_delay) {
  const LinkSecurity tls = loopbackTls();
  GrpcTransportOptions o = grpcTestOptions();
  o.connect_timeout = seconds(10);
  o.link_grace = seconds(5);
  std::vector<std::shared_ptr<GrpcTransport>> ranks = unconnectedRanks({tls, tls}, o, "relay-test");
  DialBacks backs;
  std::shared_ptr<Relay> relay;
  relay = std::make_shared<Relay>("127.0.0.1:0", [&](int rank, const std::string& id) {
    if (rank != 0) return false;
    ++backs.requests;
    const std::string at = "127.0.0.1:" + std::to_string(relay->port());
    std::lock_guard<std::mutex> lock(backs.mu);
    backs.threads.emplace_back([&ranks, at, id, dial_delay] {
      std::this_thread::sleep_for(dial_delay);
      try {
        ranks[0]->adoptConnection(dialRelay(at, id, seconds(5)));
      } catch (const IoError&) {
        // The relay stopped first (a reconnect of rank 1 while it closed).
      }
    });
    return true;
  });
  const std::string via = "127.0.0.1:" + std::to_string(relay->port());
  // Rank 1 reaches rank 0 only through the relay (its own port is never
  // given out), by a name no resolver knows: only the relay's address is
  // resolved, and TLS checks the name. Rank 0 dials rank 1 directly.
  ranks[1]->setPeerAddress(0, relayedAddress("rank0.geopipe.invalid", 0, via));
  ranks[0]->setPeerAddress(1, ranks[1]->listeningAddress());
  constexpr int kMessages = 6;
  std::vector<std::shared_ptr<Work>> sends;
  for (int i = 0; i < kMessages; ++i) {
    // 200 KiB .. 1.2 MiB: several chunks each.
    sends.push_back(ranks[1]->send(0, tagOf(Channel::ACTIVATION, i), pattern(200000 * (i + 1), i)));
    sends.push_back(ranks[0]->send(1, tagOf(Channel::GRADIENT, i), pattern(1000 + i, 100 + i)));
  }
  uint64_t relayed = 0;
  for (int i = 0; i < kMessages; ++i) {
    auto in0 = ranks[0]->recv(1, tagOf(Channel::ACTIVATION, i));
    in0->wait(seconds(20));
    EXPECT_EQ(in0->takePayload(), pattern(200000 * (i + 1), i)) << "message " << i;
    relayed += 200000 * (i + 1);
    auto in1 = ranks[1]->recv(0, tagOf(Channel::GRADIENT, i));
    in1->wait(seconds(20));
    EXPECT_EQ(in1->takePayload(), pattern(1000 + i, 100 + i));
  }
  for (auto& w : sends) w->wait(seconds(10));
  RelayedRun run;
  run.during = relay->stats();
  run.dial_requests = backs.requests.load();
  // Everything rank 1 sent crossed the relay (plus TLS and HTTP/2 framing);
  // nothing rank 0 sent did.
  EXPECT_GE(run.during.bytes_forwarded + (uint64_t{1} << 20), relayed);
  EXPECT_LT(run.during.bytes_forwarded, relayed + relayed / 5);
  for (auto& r : ranks) r->close();
  relay->stop();
  run.open_after_stop = relay->stats().open;
  return run;
}

TEST(Relay, ARankThatAcceptsNothingReceivesThroughTheRelayOverTls) {
  const RelayedRun run = relayedExchange(milliseconds(0));
  EXPECT_EQ(run.dial_requests, 1);
  EXPECT_EQ(run.during.connected, 1u);
  EXPECT_EQ(run.during.open, 1);
  EXPECT_EQ(run.open_after_stop, 0);
}

// A connection whose set-up takes seconds (here the dial-back; on a WAN the
// round trips of TCP, TLS and HTTP/2) is waited for: one attempt, not a
// series abandoned after a fraction of a second each (gRPC gives an attempt
// no longer than its minimum reconnect backoff).
TEST(Relay, ASlowConnectionSetUpIsOneAttemptThatSucceeds) {
  const RelayedRun run = relayedExchange(milliseconds(1500));
  EXPECT_EQ(run.dial_requests, 1);
  EXPECT_EQ(run.during.connected, 1u);
  EXPECT_EQ(run.during.timed_out, 0u);
}

TEST(Relay, AnswersWhatItCannotServeAndNeverWaitsPastTheDialTimeout) {
  std::atomic<int> asked{0};
  RelayOptions o;
  o.dial_timeout = milliseconds(400);
  Relay relay(
      "127.0.0.1:0",
      [&](int rank, const std::string&) {
        ++asked;
        return rank == 4;  // rank 4 "waits" but never dials back
      },
      o);
  EXPECT_EQ(askRelay(relay.port(), "GET / HTTP/1.1\r\n\r\n"), "HTTP/1.1 400 Bad Request");
  EXPECT_EQ(askRelay(relay.port(), "CONNECT host:0 HTTP/1.1\r\n\r\n"), "HTTP/1.1 400 Bad Request");
  EXPECT_EQ(askRelay(relay.port(), "CONNECT host:3 HTTP/1.1\r\nHost: host:3\r\n\r\n"),
            "HTTP/1.1 503 Service Unavailable");
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(askRelay(relay.port(), "CONNECT host:5 HTTP/1.1\r\n\r\n"),
            "HTTP/1.1 504 Gateway Timeout");
  EXPECT_LT(std::chrono::steady_clock::now() - start, seconds(3));
  // A dial-back nobody asked for is closed.
  EXPECT_EQ(askRelay(relay.port(), "GEOPIPE-RELAY 00ff\n"), "");
  EXPECT_EQ(asked.load(), 2);
  const RelayStats s = relay.stats();
  EXPECT_EQ(s.connected, 0u);
  EXPECT_EQ(s.timed_out, 1u);
  EXPECT_EQ(s.refused, 4u);
}

TEST(Relay, PeerRoutesParseBothForms) {
  EXPECT_EQ(parsePeerRoute("10.0.0.1:29500").target, "10.0.0.1:29500");
  EXPECT_EQ(parsePeerRoute("10.0.0.1:29500").relay, "");
  const std::string a = relayedAddress("gpu7.example.org", 2, "hub:7421");
  EXPECT_EQ(a, "gpu7.example.org:3 via hub:7421");
  EXPECT_EQ(parsePeerRoute(a).target, "gpu7.example.org:3");
  EXPECT_EQ(parsePeerRoute(a).relay, "hub:7421");
  EXPECT_EQ(relayedAddress("::1", 0, "[::1]:7421"), "[::1]:1 via [::1]:7421");
}

}  // namespace
}  // namespace geopipe::transport::testing
