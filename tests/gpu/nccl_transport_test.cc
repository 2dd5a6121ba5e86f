// The NCCL transport between two processes sharing this machine's GPU(s):
// tagged messages of several sizes received out of order, both directions,
// a message to a rank of another site going over the inner (gRPC) transport,
// and NCCL's all-reduce on device memory. Each rank is a forked child that
// touches CUDA only after the fork, with its own NCCL_HOSTID (NCCL refuses
// two ranks of one communicator on one GPU of one host). Skipped, with the
// reason, where no CUDA device answers.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <vector>

#include "compression/cuda/gpu_quantizer.h"
#include "src/transport/factory.h"
#include "src/transport/nccl/nccl_transport.h"

namespace geopipe::transport {
namespace {

constexpr int kSkip = 77;

int freePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  const int port = ntohs(addr.sin_port);
  ::close(fd);
  return port;
}

Bytes pattern(size_t n, uint8_t seed) {
  Bytes b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(seed + 31 * i);
  return b;
}

// One rank's script; returns the process exit code.
int runRank(int rank, const std::vector<std::string>& addresses) {
  ::setenv("NCCL_HOSTID", ("geopipe-test-host-" + std::to_string(rank)).c_str(), 1);
  std::string why;
  if (!compression::gpu::available(&why)) {
    std::fprintf(stderr, "rank %d: %s\n", rank, why.c_str());
    return kSkip;
  }
  try {
    TransportOptions o;
    o.rank = rank;
    o.addresses = addresses;
    o.cuda_device = 0;
    o.site_of_rank = {0, 0, 1};  // ranks 0 and 1 share a site; rank 2 is elsewhere
    // Rank 2 exists only as an address: nothing is sent to it here.
    auto t = makeTransport("nccl", o);
    auto* nccl = dynamic_cast<NcclTransport*>(t.get());
    if (!nccl || !nccl->ncclPeer(1 - rank) || nccl->ncclPeer(2)) {
      std::fprintf(stderr, "rank %d: wrong NCCL peers\n", rank);
      return 1;
    }
    const int peer = 1 - rank;
    const std::vector<size_t> sizes{0, 1, 4099, size_t{5} << 20};
    std::vector<std::shared_ptr<Work>> sends;
    for (size_t k = 0; k < sizes.size(); ++k) {
      sends.push_back(t->send(peer, Tag{Channel::ACTIVATION, 7, static_cast<int32_t>(k), rank},
                              pattern(sizes[k], static_cast<uint8_t>(rank * 10 + k))));
    }
    // Receive in reverse order: matching is by tag, not arrival.
    for (size_t k = sizes.size(); k-- > 0;) {
      auto r = t->recv(peer, Tag{Channel::ACTIVATION, 7, static_cast<int32_t>(k), peer});
      r->wait(std::chrono::seconds(60));
      if (r->takePayload() != pattern(sizes[k], static_cast<uint8_t>(peer * 10 + k))) {
        std::fprintf(stderr, "rank %d: message %zu corrupted\n", rank, k);
        return 1;
      }
    }
    for (auto& s : sends) s->wait(std::chrono::seconds(60));

    // All-reduce of device memory: rank r contributes r + 1 everywhere.
    const size_t n = 1 << 20;
    std::vector<float> host(n, static_cast<float>(rank + 1));
    compression::gpu::DeviceBuffer d(4 * n);
    compression::gpu::copyToDevice(d.data(), host.data(), 4 * n);
    nccl->allReduceSumDevice(d.as<float>(), n, {0, 1}, nullptr);
    compression::gpu::copyToHost(host.data(), d.data(), 4 * n);
    for (float v : host) {
      if (v != 3.0f) {
        std::fprintf(stderr, "rank %d: all-reduce gave %g, expected 3\n", rank, v);
        return 1;
      }
    }
    const TransportStats st = t->stats();
    if (st.messages_sent < sizes.size() || st.messages_received < sizes.size()) {
      std::fprintf(stderr, "rank %d: stats do not count the messages\n", rank);
      return 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: %s\n", rank, e.what());
    return 1;
  }
  return 0;
}

TEST(NcclTransport, TwoProcessesExchangeTaggedMessagesAndAllReduce) {
  const std::vector<std::string> addresses{"127.0.0.1:" + std::to_string(freePort()),
                                           "127.0.0.1:" + std::to_string(freePort()),
                                           "127.0.0.1:" + std::to_string(freePort())};
  std::vector<pid_t> pids;
  for (int rank = 0; rank < 2; ++rank) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) ::_exit(runRank(rank, addresses));
    pids.push_back(pid);
  }
  std::vector<int> codes;
  for (pid_t pid : pids) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    codes.push_back(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
  }
  if (codes[0] == kSkip || codes[1] == kSkip) GTEST_SKIP() << "no CUDA device (see stderr)";
  EXPECT_EQ(codes[0], 0);
  EXPECT_EQ(codes[1], 0);
}

}  // namespace
}  // namespace geopipe::transport
