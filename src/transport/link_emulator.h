// A decorator that makes any transport behave like the topology's network:
// each directed link gets its bandwidth and one-way latency (issue 5).
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <queue>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "geopipe/topology.h"
#include "src/transport/transport.h"

namespace geopipe::transport {

// The link from rank `src` to rank `dst` (src != dst).
using LinkFunction = std::function<LinkSpec(int src, int dst)>;

// Links of a topology for ranks placed on its devices: rank r runs on
// device rank_to_device[r] (empty: rank r on device r). Throws ConfigError
// when a rank maps outside the topology.
LinkFunction linksFromTopology(const TopologySpec& topology, std::vector<int> rank_to_device = {});

struct LinkEmulatorOptions {
  // Multiplies every link's bandwidth (and nic_gbps): < 1 slows the network
  // down so that a CPU-sized model sees the paper's compute/comm ratio.
  double bandwidth_scale = 1.0;
  // Multiplies every link's latency.
  double latency_scale = 1.0;
  // One NIC per rank: when true, all of this rank's outgoing links share a
  // single FIFO serialization queue (a message to b waits behind one to c),
  // instead of each link serializing independently.
  bool shared_nic = false;
  // With shared_nic, an extra cap on the NIC's rate in Gbps (before
  // bandwidth_scale): a message serializes at min(link, nic). 0 = no cap.
  double nic_gbps = 0.0;
  // The delivery thread sleeps until this long before an event is due, then
  // yields in a loop for the rest: the OS wakes sleepers late by tens to
  // hundreds of microseconds, and more on a loaded machine.
  std::chrono::microseconds spin = std::chrono::microseconds(500);
  // The destructor waits for the messages still on the wire to be handed to
  // the inner transport (as a closing socket lingers). false: they are
  // dropped and their sends fail with IoError.
  bool drain_on_destroy = true;
};

// LinkEmulatingTransport wraps one rank's transport (any implementation;
// inproc in tests and CPU runs) and delays its outgoing messages as the
// topology's links would. The model, per directed link src -> dst with
// bandwidth β (Gbps, times bandwidth_scale) and latency α (ms, times
// latency_scale):
//
//   - The link is a FIFO pipe. A message of B bytes sent at time t starts
//     serializing at  start = max(t, free)  where `free` is when the
//     previous message on the link finished serializing (with shared_nic:
//     on any of this rank's links), and occupies it for  B·8 / (β·10^9) s:
//       end = start + B·8 / (β·10^9);   free = end.
//   - The send's Work completes at `end` (the sender's NIC is free again).
//   - The message arrives at  end + α/1000 s  and is handed to the inner
//     transport then, so the receiver sees it at arrival. Arrivals on one
//     link are in send order; ties are broken by send order.
//
// A collective's message (Channel::GRADIENT: the data-parallel exchange,
// where both ends of a link send at once) serializes at the link's duplex
// bandwidth instead of β (LinkSpec::exchangeGbps(); β when not given), as
// the cost model prices the exchange.
//
// So n back-to-back messages of B bytes take  n·B·8/β + α  from the first
// send to the last arrival: throughput β, latency α. The schedule is
// computed from the send times, not from when the delivery thread woke up,
// so late wake-ups add jitter to single arrivals but never accumulate.
// Sends to oneself bypass the emulation. The receiver's ingress is not
// modelled (incast is not throttled).
//
// Threads: one delivery thread per instance sleeps (sleep_until on
// steady_clock, via a condition variable so an earlier event can preempt)
// until the next event, then yields in a loop for at most `spin`. send()
// and recv() never block and are thread-safe. recv() and stats' receive
// counters are the inner transport's.
//
// Failures: if the inner transport's send fails at delivery (a dead peer),
// the emulated send has already completed; the error is kept and thrown by
// the next send() to that peer, like a broken pipe on the next write.
//
// Ownership: shares the inner transport; the destructor stops the delivery
// thread after draining (see LinkEmulatorOptions::drain_on_destroy).
class LinkEmulatingTransport : public Transport {
 public:
  LinkEmulatingTransport(std::shared_ptr<Transport> inner, LinkFunction links,
                         LinkEmulatorOptions options = {});
  ~LinkEmulatingTransport() override;
  LinkEmulatingTransport(const LinkEmulatingTransport&) = delete;
  LinkEmulatingTransport& operator=(const LinkEmulatingTransport&) = delete;

  int rank() const override { return inner_->rank(); }
  int worldSize() const override { return inner_->worldSize(); }
  std::shared_ptr<Work> send(int peer, const Tag& tag, Bytes payload) override;
  std::shared_ptr<RecvWork> recv(int peer, const Tag& tag) override;
  TransportStats stats() const override;
  std::string name() const override { return "emulated(" + inner_->name() + ")"; }

  // The link this rank -> dst after scaling (bandwidth in Gbps, latency ms).
  LinkSpec link(int dst) const;
  // Seconds a message of `bytes` with `tag` occupies the link to dst (a
  // GRADIENT message at the link's duplex bandwidth, others at β).
  double serializationSeconds(int dst, const Tag& tag, uint64_t bytes) const;
  const std::shared_ptr<Transport>& inner() const { return inner_; }

 private:
  struct Event;
  struct EventLater {
    bool operator()(const std::shared_ptr<Event>& a, const std::shared_ptr<Event>& b) const;
  };

  void deliveryLoop();
  void fire(Event& event);

  std::shared_ptr<Transport> inner_;
  LinkEmulatorOptions options_;
  std::vector<LinkSpec> links_;  // per destination, scaled

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::priority_queue<std::shared_ptr<Event>, std::vector<std::shared_ptr<Event>>, EventLater>
      events_;
  uint64_t next_seq_ = 0;
  std::vector<Clock::time_point> link_free_;                          // per destination
  Clock::time_point nic_free_;                                        // shared_nic
  std::map<int, std::exception_ptr> broken_;                          // peer -> inner send failure
  std::vector<std::pair<int, std::shared_ptr<Work>>> inner_pending_;  // (peer, inner send) not done
  SendTally sent_;
  bool stopping_ = false;
  std::thread thread_;
};

// Wraps every transport of `world` in a LinkEmulatingTransport with the
// same links and options (tests, the single-process launcher).
std::vector<std::shared_ptr<Transport>> emulateLinks(
    const std::vector<std::shared_ptr<Transport>>& world, const LinkFunction& links,
    const LinkEmulatorOptions& options = {});

}  // namespace geopipe::transport
