// `geopipe probe` as three processes on loopback: rank 0 writes a topology
// of three sites with a link for every ordered pair, which validates.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <string>
#include <thread>
#include <vector>

#include "tests/cli/cli_run.h"

namespace {

using cli_test::CommandResult;
using cli_test::TempDir;

int freePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), len);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

TEST(ProbeCommand, ThreeHostsWriteATopologyThatValidates) {
  std::vector<TempDir> dirs(3);
  std::string peers;
  for (int r = 0; r < 3; ++r)
    peers += (r ? "," : "") + std::string("127.0.0.1:") + std::to_string(freePort());
  const std::string out = dirs[0].file("probed.yaml");
  std::vector<CommandResult> results(3);
  std::vector<std::thread> hosts;
  for (int r = 0; r < 3; ++r) {
    hosts.emplace_back([&, r] {
      results[static_cast<size_t>(r)] = cli_test::runGeopipe(
          dirs[static_cast<size_t>(r)],
          {"probe", "--rank", std::to_string(r), "--peers", peers, "--names", "a,b,c", "--insecure",
           "--megabytes", "1", "--pings", "3", "--timeout", "30", "--out", out});
    });
  }
  for (auto& h : hosts) h.join();
  for (int r = 0; r < 3; ++r) {
    const auto& res = results[static_cast<size_t>(r)];
    ASSERT_EQ(res.code, 0) << "rank " << r << ":\n" << res.out << res.err;
  }
  EXPECT_TRUE(contains(results[0].out, "topology written to " + out)) << results[0].out;
  EXPECT_TRUE(contains(results[0].out, "a              -> b")) << results[0].out;
  const std::string yaml = cli_test::readAll(out);
  for (const char* link : {"{from: a, to: b", "{from: b, to: a", "{from: c, to: b"})
    EXPECT_TRUE(contains(yaml, link)) << yaml;
  const auto v = cli_test::runGeopipe(dirs[0], {"validate", out});
  EXPECT_EQ(v.code, 0) << v.out << v.err << yaml;
  EXPECT_TRUE(contains(v.out, "3 devices")) << v.out;
}

TEST(ProbeCommand, ABadPeerListIsRefusedNamingTheFlag) {
  TempDir dir;
  auto r = cli_test::runGeopipe(dir, {"probe", "--rank", "0", "--peers", "127.0.0.1:1"});
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_TRUE(contains(r.err, "give at least two HOST:PORT")) << r.err;
  r = cli_test::runGeopipe(dir, {"probe", "--rank", "2", "--peers", "127.0.0.1:1,127.0.0.1:2"});
  EXPECT_TRUE(contains(r.err, "--rank 2 is not an index into --peers")) << r.err;
  r = cli_test::runGeopipe(dir, {"probe", "--rank", "0", "--peers", "127.0.0.1:1,nohost"});
  EXPECT_TRUE(contains(r.err, "--peers entry 'nohost' is not HOST:PORT")) << r.err;
}

}  // namespace
