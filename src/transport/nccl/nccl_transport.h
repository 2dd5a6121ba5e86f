// The NCCL transport: messages between ranks of one site (GPUs of a machine
// or of a data center) go over NCCL; messages to other sites go over the
// inner transport (gRPC across the WAN), which also carries NCCL's bootstrap.
// The plan decides per link: two ranks use NCCL when site_of_rank says they
// share a site.
//
// Each ordered pair (i -> j) of NCCL ranks has its own two-rank communicator
// and CUDA stream: rank i's sender thread is its only user on i, rank j's
// receiver thread the only one on j, so no communicator is touched by two
// threads. A message is announced over the inner transport (tag, size: the
// control plane, FIFO per pair) and its payload follows over NCCL (the data
// plane), so a receiver posts ncclRecv only for a message on its way and no
// NCCL kernel spins idle on a GPU that other processes share. Payloads are
// the engine's bytes (compressed activations and gradients), staged through
// device memory from the stream-ordered allocator (cudaFree would
// synchronise the device and could wait on a peer's kernel). Communicators
// are created at construction, pair by pair in one global order, so the
// blocking ncclCommInitRank calls cannot deadlock; every rank of the job
// must construct its transport at about the same time.
//
// allReduceSumDevice() runs NCCL's own all-reduce on device memory for the
// uncompressed data-parallel gradient exchange.
//
// Two ranks on one GPU: NCCL refuses a communicator whose ranks share a
// device. Processes that share a GPU (tests, a one-GPU benchmark) set a
// distinct NCCL_HOSTID each, so NCCL treats them as separate hosts and
// moves the data through its socket transport over loopback.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "src/transport/transport.h"

namespace geopipe::transport {

struct NcclTransportOptions {
  // CUDA device of this rank; -1: rank % (number of visible devices).
  int cuda_device = -1;
  // Site of every rank (index = rank); ranks of the same site talk NCCL.
  // Empty: every rank is in one site.
  std::vector<int> site_of_rank;
  // Bound on creating the communicators (bootstrap messages included).
  std::chrono::milliseconds init_timeout{120000};
  // Largest message accepted from a peer (a corrupt header fails the link).
  uint64_t max_message_bytes = uint64_t{1} << 31;
};

class NcclTransport : public Transport, public DeviceAllReduce {
 public:
  // Creates the communicators with every NCCL peer (blocking). Throws
  // InfeasibleError when no CUDA device answers, IoError on NCCL errors.
  NcclTransport(std::shared_ptr<Transport> inner, NcclTransportOptions options);
  ~NcclTransport() override;

  int rank() const override;
  int worldSize() const override;
  std::shared_ptr<Work> send(int peer, const Tag& tag, Bytes payload) override;
  std::shared_ptr<RecvWork> recv(int peer, const Tag& tag) override;
  TransportStats stats() const override;
  std::string name() const override;

  // True when messages to `peer` go over NCCL (same site, not this rank).
  bool ncclPeer(int peer) const;
  int cudaDevice() const;

  // In-place sum of n floats of device memory over `group` (ranks, same
  // order on every member, all NCCL peers of each other), on `stream` (a
  // cudaStream_t; nullptr: the legacy default stream), waited for before it
  // returns. Collective: every member calls it with the same group and n.
  // The group's communicator is made on first use (bootstrap over the
  // inner transport, tag CONTROL / step -2).
  void allReduceSumDevice(float* data, size_t n, const std::vector<int>& group,
                          void* stream) override;
  bool canAllReduceDevice(const std::vector<int>& group) const override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Registers transport kind "nccl" with makeTransport: NCCL inside a site,
// gRPC (when TransportOptions::addresses is set) or inproc across sites.
void registerNcclTransport();

}  // namespace geopipe::transport
