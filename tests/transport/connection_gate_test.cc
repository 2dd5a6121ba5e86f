// The connection gate in front of the gRPC servers: connections still in
// their set-up are bounded per source address and in total, the rest are
// closed at once, and a slot frees when a connection is set up, closes or
// times out. Sources are distinct loopback addresses (127.0.0.2, ...), so an
// "attacker" and a "worker" differ as two hosts would.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "geopipe/error.h"
#include "src/transport/grpc/connection_gate.h"
#include "tests/support/raw_tcp.h"

namespace geopipe::transport {
namespace {

using std::chrono::milliseconds;
using testing::closedByServer;

// gRPC's peer string for the client socket `fd` as the server sees it.
std::string grpcPeerOf(int fd) {
  sockaddr_in a{};
  socklen_t length = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &length);
  char text[INET_ADDRSTRLEN];
  ::inet_ntop(AF_INET, &a.sin_addr, text, sizeof text);
  return std::string("ipv4:") + text + ":" + std::to_string(ntohs(a.sin_port));
}

// Keeps what the gate admits, as a server would, and can close it.
struct Sink {
  std::mutex mu;
  std::vector<int> fds;
  ConnectionGate::Handoff handoff() {
    return [this](int, int fd) {
      std::lock_guard<std::mutex> lock(mu);
      fds.push_back(fd);
    };
  }
  size_t count() {
    std::lock_guard<std::mutex> lock(mu);
    return fds.size();
  }
  // Waits until `n` connections were handed over (up to 5 s).
  bool waitFor(size_t n) {
    for (int k = 0; k < 500 && count() < n; ++k) std::this_thread::sleep_for(milliseconds(10));
    return count() >= n;
  }
  void closeAt(size_t i) {
    std::lock_guard<std::mutex> lock(mu);
    ::close(fds.at(i));
    fds[i] = -1;
  }
  ~Sink() {
    for (int fd : fds)
      if (fd >= 0) ::close(fd);
  }
};

struct Clients {
  std::vector<int> fds;
  int open(const char* source, int port) {
    const int fd = testing::idleConnectionFrom(source, port);
    if (fd >= 0) fds.push_back(fd);
    return fd;
  }
  ~Clients() {
    for (int fd : fds) ::close(fd);
  }
};

TEST(ConnectionGate, ClosesWhatIsOverTheLimitOfOneAddressAndAdmitsOtherAddresses) {
  ConnectionLimits limits;
  limits.max_pending = 100;
  limits.max_pending_per_address = 4;
  limits.handshake_timeout = milliseconds(20000);
  ConnectionGate gate("127.0.0.1:0", limits, "test server");
  Sink sink;
  gate.start(sink.handoff());
  Clients clients;
  std::vector<int> attacker;
  for (int k = 0; k < 6; ++k) {
    attacker.push_back(clients.open("127.0.0.2", gate.port()));
    ASSERT_GE(attacker.back(), 0) << k;
  }
  ASSERT_TRUE(sink.waitFor(4));
  // The fifth and sixth are closed at once, long before any timeout.
  EXPECT_TRUE(closedByServer(attacker[4], milliseconds(2000)));
  EXPECT_TRUE(closedByServer(attacker[5], milliseconds(2000)));
  EXPECT_FALSE(closedByServer(attacker[0], milliseconds(50)));
  // Another host still gets in.
  ASSERT_GE(clients.open("127.0.0.3", gate.port()), 0);
  ASSERT_TRUE(sink.waitFor(5));
  const ConnectionGateStats s = gate.stats();
  EXPECT_EQ(s.admitted, 5u);
  EXPECT_EQ(s.refused_per_address, 2u);
  EXPECT_EQ(s.refused_total, 0u);
  EXPECT_EQ(s.pending, 5);
}

TEST(ConnectionGate, ASlotFreesWhenAConnectionIsSetUpClosesOrTimesOut) {
  ConnectionLimits limits;
  limits.max_pending = 100;
  limits.max_pending_per_address = 2;
  limits.handshake_timeout = milliseconds(1500);
  ConnectionGate gate("127.0.0.1:0", limits, "test server");
  Sink sink;
  gate.start(sink.handoff());
  Clients clients;
  const int a = clients.open("127.0.0.2", gate.port());
  clients.open("127.0.0.2", gate.port());
  ASSERT_TRUE(sink.waitFor(2));
  EXPECT_TRUE(closedByServer(clients.open("127.0.0.2", gate.port()), milliseconds(2000)));
  // Set up (the server saw its first call): its slot is free.
  gate.setUp(grpcPeerOf(a));
  const int c = clients.open("127.0.0.2", gate.port());
  ASSERT_TRUE(sink.waitFor(3));
  EXPECT_FALSE(closedByServer(c, milliseconds(50)));
  // Closed by the server: its slot is free.
  sink.closeAt(2);
  clients.open("127.0.0.2", gate.port());
  ASSERT_TRUE(sink.waitFor(4));
  EXPECT_TRUE(closedByServer(clients.open("127.0.0.2", gate.port()), milliseconds(2000)));
  // Past the handshake timeout nothing is in set-up any more.
  std::this_thread::sleep_for(milliseconds(1600));
  EXPECT_EQ(gate.stats().pending, 0);
  clients.open("127.0.0.2", gate.port());
  clients.open("127.0.0.2", gate.port());
  EXPECT_TRUE(sink.waitFor(6));
  EXPECT_EQ(gate.stats().refused_per_address, 2u);
}

TEST(ConnectionGate, ClosesWhatIsOverTheTotalLimit) {
  ConnectionLimits limits;
  limits.max_pending = 3;
  limits.max_pending_per_address = 10;
  limits.handshake_timeout = milliseconds(20000);
  ConnectionGate gate("127.0.0.1:0", limits, "test server");
  Sink sink;
  gate.start(sink.handoff());
  Clients clients;
  for (const char* source : {"127.0.0.2", "127.0.0.3", "127.0.0.4"})
    ASSERT_GE(clients.open(source, gate.port()), 0);
  ASSERT_TRUE(sink.waitFor(3));
  EXPECT_TRUE(closedByServer(clients.open("127.0.0.5", gate.port()), milliseconds(2000)));
  EXPECT_EQ(gate.stats().refused_total, 1u);
  EXPECT_EQ(gate.stats().admitted, 3u);
}

TEST(ConnectionGate, NamesTheAddressItCannotListenOn) {
  ConnectionGate first("127.0.0.1:0", {}, "test server");
  const std::string taken = "127.0.0.1:" + std::to_string(first.port());
  try {
    ConnectionGate second(taken, {}, "the coordinator");
    FAIL() << "a second gate listened on " << taken;
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find(taken), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("in use"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ConnectionGate("127.0.0.1:http", {}, "x"), IoError);
  EXPECT_THROW(ConnectionGate("127.0.0.1:70000", {}, "x"), IoError);
  EXPECT_THROW(ConnectionGate("no-such-host.invalid:0", {}, "x"), IoError);
  ConnectionLimits zero;
  zero.max_pending_per_address = 0;
  EXPECT_THROW(ConnectionGate("127.0.0.1:0", zero, "x"), ConfigError);
}

TEST(ConnectionGate, ListensOnEveryAddressForAWildcardHost) {
  ConnectionGate gate("0.0.0.0:0", {}, "test server");
  Sink sink;
  gate.start(sink.handoff());
  Clients clients;
  ASSERT_GE(clients.open("127.0.0.2", gate.port()), 0);
  EXPECT_TRUE(sink.waitFor(1));
  // A host name: every address it resolves to, on one port.
  ConnectionGate named("localhost:0", {}, "test server");
  Sink named_sink;
  named.start(named_sink.handoff());
  ASSERT_GE(clients.open("127.0.0.1", named.port()), 0);
  EXPECT_TRUE(named_sink.waitFor(1));
}

TEST(ConnectionGate, KeysGrpcPeerStringsLikeAcceptedAddresses) {
  EXPECT_EQ(connectionKey("ipv4:127.0.0.1:5678"), "127.0.0.1|5678");
  EXPECT_EQ(connectionKey("ipv6:[::1]:80"), "::1|80");
  EXPECT_EQ(connectionKey("ipv6:%5B::1%5D:80"), "::1|80");
  EXPECT_EQ(connectionKey("ipv6:%5B::ffff:10.0.0.7%5D:9"), "10.0.0.7|9");
  EXPECT_EQ(connectionKey("unix:/tmp/socket"), "");
  EXPECT_EQ(connectionKey("garbage"), "");
}

}  // namespace
}  // namespace geopipe::transport
