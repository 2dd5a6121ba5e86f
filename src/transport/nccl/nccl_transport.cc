// NCCL transport: per-ordered-pair communicators, sender and receiver threads,
// the transport Mailbox for tag matching, and NCCL all-reduce on device memory.
#include "src/transport/nccl/nccl_transport.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include <spdlog/spdlog.h>

#include "geopipe/error.h"
#include "src/transport/completion.h"
#include "src/transport/factory.h"
#include "src/transport/mailbox.h"
#include "src/transport/nccl/announcement.h"

namespace geopipe::transport {
namespace {

constexpr int64_t kPairBootstrapStep = -1;
constexpr int64_t kGroupBootstrapStep = -2;
constexpr int64_t kAnnounceStep = -3;

// The inner transport's tag for rank `sender`'s announcements (FIFO).
Tag announceTag(int sender) { return Tag{Channel::CONTROL, kAnnounceStep, sender, 0}; }
// Mailbox budget: bytes of messages that arrived before their receive.
constexpr uint64_t kMaxBufferedBytes = uint64_t{1} << 30;

void cudaCheck(cudaError_t e, const std::string& what) {
  if (e != cudaSuccess) {
    GEOPIPE_THROW(IoError, "nccl transport: CUDA error in ", what, ": ", cudaGetErrorName(e), " (",
                  cudaGetErrorString(e), ")");
  }
}

void ncclCheck(ncclResult_t r, const std::string& what) {
  if (r != ncclSuccess && r != ncclInProgress) {
    GEOPIPE_THROW(IoError, "nccl transport: ", what, " failed: ", ncclGetErrorString(r),
                  " (NCCL_DEBUG=WARN shows NCCL's reason)");
  }
}

Bytes idBytes(const ncclUniqueId& id) {
  Bytes b(sizeof(id));
  std::memcpy(b.data(), &id, sizeof(id));
  return b;
}

ncclUniqueId idOf(const Bytes& b, const std::string& from) {
  GEOPIPE_CHECK(b.size() == sizeof(ncclUniqueId), ProtocolError, "nccl transport: bootstrap from ",
                from, " carried ", b.size(), " bytes, expected a ", sizeof(ncclUniqueId),
                "-byte NCCL unique id");
  ncclUniqueId id;
  std::memcpy(&id, b.data(), sizeof(id));
  return id;
}

// Device staging, grown on demand with the stream-ordered allocator: plain
// cudaMalloc/cudaFree synchronise the whole device, which would wait for a
// peer's NCCL kernel that in turn waits for this process.
struct Staging {
  void* dev = nullptr;
  size_t bytes = 0;
  cudaStream_t stream = nullptr;
  void reserve(size_t n) {
    if (n <= bytes) return;
    release();
    const size_t cap = std::max<size_t>(n, 1 << 20);
    cudaCheck(cudaMallocAsync(&dev, cap, stream), "cudaMallocAsync of the staging buffer");
    bytes = cap;
  }
  void release() {
    if (dev) cudaFreeAsync(dev, stream);
    dev = nullptr;
    bytes = 0;
  }
};

struct Item {
  Tag tag;
  Bytes payload;
  std::shared_ptr<PendingWork> work;
};

struct Link {
  int peer = -1;
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  std::thread thread;
  Staging staging;
  // Sender side only.
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Item> queue;
  std::exception_ptr broken;
};

}  // namespace

struct NcclTransport::Impl {
  std::shared_ptr<Transport> inner;
  NcclTransportOptions opt;
  int rank = 0, world = 0, device = 0;
  std::shared_ptr<Mailbox> mailbox;
  std::map<int, std::unique_ptr<Link>> out, in;
  std::mutex group_mu;
  std::map<std::vector<int>, ncclComm_t> groups;
  std::atomic<bool> stopping{false};
  std::unique_ptr<SendTally> sent;  // NCCL sends; the inner transport counts its own

  bool sameSite(int a, int b) const {
    if (opt.site_of_rank.empty()) return true;
    return opt.site_of_rank[static_cast<size_t>(a)] == opt.site_of_rank[static_cast<size_t>(b)];
  }

  // Waits for `stream` while watching for shutdown and NCCL's async errors.
  void waitStream(cudaStream_t stream, ncclComm_t comm, const std::string& what) {
    int spins = 0;
    for (;;) {
      const cudaError_t e = cudaStreamQuery(stream);
      if (e == cudaSuccess) return;
      if (e != cudaErrorNotReady) cudaCheck(e, what);
      if (stopping.load()) GEOPIPE_THROW(IoError, "nccl transport: shut down during ", what);
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm, &async);
      ncclCheck(async, what);
      if (++spins < 2000) std::this_thread::yield();
      else std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  Bytes bootstrapRecv(int peer, const Tag& tag) {
    auto work = inner->recv(peer, tag);
    work->wait(opt.init_timeout);
    return work->takePayload();
  }

  ncclComm_t initComm(int nranks, const ncclUniqueId& id, int r, const std::string& what) {
    ncclComm_t comm = nullptr;
    ncclCheck(ncclCommInitRank(&comm, nranks, id, r), "ncclCommInitRank (" + what + ")");
    return comm;
  }

  void makeChannels() {
    // One global order of the ordered pairs: the smallest pending pair always
    // has both ranks ready, so the blocking inits cannot deadlock.
    for (int i = 0; i < world; ++i) {
      for (int j = 0; j < world; ++j) {
        if (i == j || (rank != i && rank != j) || !sameSite(i, j)) continue;
        const Tag tag{Channel::CONTROL, kPairBootstrapStep, i, j};
        auto ch = std::make_unique<Link>();
        if (rank == i) {
          ncclUniqueId id;
          ncclCheck(ncclGetUniqueId(&id), "ncclGetUniqueId");
          inner->send(j, tag, idBytes(id))->wait(opt.init_timeout);
          ch->peer = j;
          ch->comm = initComm(2, id, 0, "link to rank " + std::to_string(j));
        } else {
          const ncclUniqueId id = idOf(bootstrapRecv(i, tag), "rank " + std::to_string(i));
          ch->peer = i;
          ch->comm = initComm(2, id, 1, "link from rank " + std::to_string(i));
        }
        cudaCheck(cudaStreamCreateWithFlags(&ch->stream, cudaStreamNonBlocking), "stream create");
        ch->staging.stream = ch->stream;
        (rank == i ? out : in)[ch->peer] = std::move(ch);
      }
    }
    for (auto& [peer, ch] : out) {
      Link* c = ch.get();
      c->thread = std::thread([this, c] { senderLoop(*c); });
    }
    for (auto& [peer, ch] : in) {
      Link* c = ch.get();
      c->thread = std::thread([this, c] { receiverLoop(*c); });
    }
  }

  void senderLoop(Link& c) {
    cudaSetDevice(device);
    for (;;) {
      Item item;
      {
        std::unique_lock<std::mutex> lock(c.mu);
        c.cv.wait(lock, [&] { return !c.queue.empty() || stopping.load(); });
        if (c.queue.empty()) return;
        item = std::move(c.queue.front());
        c.queue.pop_front();
        if (c.broken) {
          item.work->completion().fail(c.broken);
          continue;
        }
      }
      try {
        // The announcement (tag, size) over the inner transport, then the
        // payload over NCCL: the peer posts its receive only for a message
        // that is on its way, so no NCCL kernel waits idle on the GPU.
        const NcclAnnouncement h{item.tag, item.payload.size()};
        auto control = inner->send(c.peer, announceTag(rank), encodeNcclAnnouncement(h));
        if (h.size) {
          c.staging.reserve(h.size);
          cudaCheck(cudaMemcpyAsync(c.staging.dev, item.payload.data(), h.size,
                                    cudaMemcpyHostToDevice, c.stream),
                    "upload");
          ncclCheck(ncclSend(c.staging.dev, h.size, ncclUint8, 1, c.comm, c.stream), "ncclSend");
          waitStream(c.stream, c.comm, "send to rank " + std::to_string(c.peer));
        }
        control->wait(kWaitForever);
        item.work->completion().succeed();
      } catch (...) {
        std::lock_guard<std::mutex> lock(c.mu);
        c.broken = std::current_exception();
        item.work->completion().fail(c.broken);
      }
    }
  }

  void receiverLoop(Link& c) {
    cudaSetDevice(device);
    const std::string from = "rank " + std::to_string(c.peer);
    mailbox->clearSource(c.peer);
    try {
      for (;;) {
        Bytes announce;
        for (;;) {  // wait for the next announcement, watching for shutdown
          if (stopping.load()) return;
          auto work = inner->recv(c.peer, announceTag(c.peer));
          try {
            work->wait(std::chrono::milliseconds(200));
          } catch (const TimeoutError&) {
            continue;  // withdrawn; post again
          }
          announce = work->takePayload();
          break;
        }
        const NcclAnnouncement h = decodeNcclAnnouncement(announce, from, opt.max_message_bytes);
        const Tag tag = h.tag;
        if (!mailbox->admit(c.peer, tag, h.size, [this] { return stopping.load(); })) return;
        Bytes payload(h.size);
        if (h.size) {
          c.staging.reserve(h.size);
          ncclCheck(ncclRecv(c.staging.dev, h.size, ncclUint8, 0, c.comm, c.stream), "ncclRecv");
          cudaCheck(cudaMemcpyAsync(payload.data(), c.staging.dev, h.size, cudaMemcpyDeviceToHost,
                                    c.stream),
                    "download");
          waitStream(c.stream, c.comm, "receive from " + from);
        }
        mailbox->deliver(c.peer, tag, std::move(payload), /*admitted=*/true);
      }
    } catch (const ProtocolError& e) {
      mailbox->failSource(c.peer, ErrorKind::PROTOCOL, e.what());
    } catch (const std::exception& e) {
      if (!stopping.load()) mailbox->failSource(c.peer, ErrorKind::IO, e.what());
    }
  }
};

NcclTransport::NcclTransport(std::shared_ptr<Transport> inner, NcclTransportOptions options)
    : impl_(std::make_unique<Impl>()) {
  GEOPIPE_CHECK(inner != nullptr, ConfigError, "NcclTransport needs an inner transport");
  Impl& m = *impl_;
  m.inner = std::move(inner);
  m.opt = std::move(options);
  m.rank = m.inner->rank();
  m.world = m.inner->worldSize();
  m.sent = std::make_unique<SendTally>(m.world);
  GEOPIPE_CHECK(m.opt.site_of_rank.empty() ||
                    m.opt.site_of_rank.size() == static_cast<size_t>(m.world),
                ConfigError, "nccl transport: site_of_rank has ", m.opt.site_of_rank.size(),
                " entries for ", m.world, " ranks");
  int devices = 0;
  const cudaError_t e = cudaGetDeviceCount(&devices);
  if (e != cudaSuccess || devices == 0) {
    cudaGetLastError();
    GEOPIPE_THROW(InfeasibleError, "transport nccl needs a CUDA device and none is usable here (",
                  e != cudaSuccess ? cudaGetErrorString(e) : "no device visible",
                  "); use transport.kind: grpc or inproc on machines without GPUs");
  }
  m.device = m.opt.cuda_device >= 0 ? m.opt.cuda_device : m.rank % devices;
  // More ranks of this site than GPUs: processes share a device, which NCCL
  // refuses within one host. A distinct NCCL_HOSTID per rank makes NCCL
  // treat them as hosts of their own (its socket transport, over loopback).
  int site_ranks = 0;
  for (int r = 0; r < m.world; ++r) site_ranks += m.sameSite(r, m.rank) ? 1 : 0;
  if (site_ranks > devices && std::getenv("NCCL_HOSTID") == nullptr) {
    char host[256] = {0};
    ::gethostname(host, sizeof(host) - 1);
    const std::string id = std::string(host) + "-geopipe-rank-" + std::to_string(m.rank);
    ::setenv("NCCL_HOSTID", id.c_str(), 1);
    spdlog::warn("nccl transport: {} ranks of this site share {} GPU(s); NCCL_HOSTID={} makes "
                 "NCCL move their data through its socket transport",
                 site_ranks, devices, id);
  }
  GEOPIPE_CHECK(m.device < devices, ConfigError, "nccl transport: CUDA device ", m.device,
                " requested, ", devices, " visible");
  cudaCheck(cudaSetDevice(m.device), "cudaSetDevice");
  Mailbox::Options mailbox;
  mailbox.transport = "nccl";
  mailbox.rank = m.rank;
  mailbox.world_size = m.world;
  mailbox.max_buffered_bytes = kMaxBufferedBytes;
  m.mailbox = std::make_shared<Mailbox>(std::move(mailbox));
  m.makeChannels();
  spdlog::debug("nccl transport: rank {} on cuda:{}, {} NCCL links out, {} in", m.rank, m.device,
                m.out.size(), m.in.size());
}

NcclTransport::~NcclTransport() {
  Impl& m = *impl_;
  m.stopping = true;
  for (auto& [peer, ch] : m.out) {
    std::lock_guard<std::mutex> lock(ch->mu);
    ch->cv.notify_all();
  }
  m.mailbox->close("the transport was closed (nccl transport shut down)");
  for (auto* side : {&m.out, &m.in}) {
    for (auto& [peer, ch] : *side) {
      if (ch->thread.joinable()) ch->thread.join();
    }
  }
  cudaSetDevice(m.device);
  for (auto* side : {&m.out, &m.in}) {
    for (auto& [peer, ch] : *side) {
      if (ch->comm) ncclCommAbort(ch->comm);
      ch->staging.release();
      if (ch->stream) cudaStreamDestroy(ch->stream);
    }
  }
  for (auto& [group, comm] : m.groups) ncclCommDestroy(comm);
}

int NcclTransport::rank() const { return impl_->rank; }
int NcclTransport::worldSize() const { return impl_->world; }
int NcclTransport::cudaDevice() const { return impl_->device; }

bool NcclTransport::ncclPeer(int peer) const {
  return peer != impl_->rank && impl_->out.count(peer) > 0;
}

std::shared_ptr<Work> NcclTransport::send(int peer, const Tag& tag, Bytes payload) {
  Impl& m = *impl_;
  GEOPIPE_CHECK(peer >= 0 && peer < m.world, Error, "nccl transport: send to rank ", peer,
                " outside [0, ", m.world, ")");
  if (!ncclPeer(peer)) return m.inner->send(peer, tag, std::move(payload));
  Link& c = *m.out.at(peer);
  auto work = std::make_shared<PendingWork>(detail::concat(
      "nccl: send from rank ", m.rank, " to rank ", peer, ", tag ", tag.str()));
  m.sent->count(peer, payload.size());
  {
    std::lock_guard<std::mutex> lock(c.mu);
    if (m.stopping.load()) {
      work->completion().fail(GEOPIPE_ERROR_PTR(IoError, "nccl transport is shut down"));
      return work;
    }
    c.queue.push_back(Item{tag, std::move(payload), work});
  }
  c.cv.notify_one();
  return work;
}

std::shared_ptr<RecvWork> NcclTransport::recv(int peer, const Tag& tag) {
  Impl& m = *impl_;
  GEOPIPE_CHECK(peer >= 0 && peer < m.world, Error, "nccl transport: recv from rank ", peer,
                " outside [0, ", m.world, ")");
  if (peer == m.rank || m.in.count(peer) == 0) return m.inner->recv(peer, tag);
  return m.mailbox->post(peer, tag);
}

TransportStats NcclTransport::stats() const {
  TransportStats s = impl_->inner->stats();
  impl_->sent->addTo(s);
  s.messages_received += impl_->mailbox->messagesReceived();
  s.bytes_received += impl_->mailbox->bytesReceived();
  return s;
}

std::string NcclTransport::name() const { return "nccl+" + impl_->inner->name(); }

bool NcclTransport::canAllReduceDevice(const std::vector<int>& group) const {
  bool me = false;
  for (int r : group) {
    if (r == impl_->rank) me = true;
    else if (!ncclPeer(r)) return false;
  }
  return me;
}

void NcclTransport::allReduceSumDevice(float* data, size_t n, const std::vector<int>& group,
                                       void* stream) {
  Impl& m = *impl_;
  const auto me = std::find(group.begin(), group.end(), m.rank);
  GEOPIPE_CHECK(me != group.end(), Error, "nccl all-reduce: rank ", m.rank, " is not in its group");
  for (int r : group) {
    GEOPIPE_CHECK(r == m.rank || ncclPeer(r), InfeasibleError, "nccl all-reduce: rank ", r,
                  " is not in rank ", m.rank, "'s site; NCCL collectives stay inside a site");
  }
  const int pos = static_cast<int>(me - group.begin());
  ncclComm_t comm = nullptr;
  {
    std::lock_guard<std::mutex> lock(m.group_mu);
    auto it = m.groups.find(group);
    if (it != m.groups.end()) {
      comm = it->second;
    } else {
      uint32_t h = 2166136261u;  // FNV-1a of the members: the same tag on each
      for (int r : group) h = (h ^ static_cast<uint32_t>(r)) * 16777619u;
      const Tag tag{Channel::CONTROL, kGroupBootstrapStep, group.front(),
                    static_cast<int32_t>(h & 0x7FFFFFFFu)};
      ncclUniqueId id;
      if (pos == 0) {
        ncclCheck(ncclGetUniqueId(&id), "ncclGetUniqueId");
        for (size_t k = 1; k < group.size(); ++k) {
          m.inner->send(group[k], tag, idBytes(id))->wait(m.opt.init_timeout);
        }
      } else {
        id = idOf(m.bootstrapRecv(group.front(), tag), "rank " + std::to_string(group.front()));
      }
      comm = m.initComm(static_cast<int>(group.size()), id, pos, "data-parallel group");
      m.groups[group] = comm;
    }
  }
  auto s = static_cast<cudaStream_t>(stream);
  ncclCheck(ncclAllReduce(data, data, n, ncclFloat, ncclSum, comm, s), "ncclAllReduce");
  m.waitStream(s, comm, "data-parallel all-reduce");
}

void registerNcclTransport() {
  registerTransportWrapper("nccl", [](std::shared_ptr<Transport> inner, const TransportOptions& o) {
    NcclTransportOptions n;
    n.cuda_device = o.cuda_device;
    n.site_of_rank = o.site_of_rank;
    return std::make_shared<NcclTransport>(std::move(inner), std::move(n));
  });
  registerTransportKind("nccl", [](const TransportOptions& o) -> std::shared_ptr<Transport> {
    auto inner = makeTransport(o.addresses.empty() ? "inproc" : "grpc", o);
    NcclTransportOptions n;
    n.cuda_device = o.cuda_device;
    n.site_of_rank = o.site_of_rank;
    return std::make_shared<NcclTransport>(std::move(inner), std::move(n));
  });
}

}  // namespace geopipe::transport
