// InprocHub mailboxes and the InprocTransport endpoint.
#include "src/transport/inproc/inproc_transport.h"

#include <algorithm>

#include "geopipe/error.h"
#include "src/transport/completion.h"

namespace geopipe::transport {

InprocHub::InprocHub(int world_size)
    : world_size_(world_size),
      failed_(new std::atomic<bool>[static_cast<size_t>(std::max(world_size, 0))]) {
  GEOPIPE_CHECK(world_size >= 1, Error, "InprocHub: world size must be >= 1, got ", world_size);
  for (int r = 0; r < world_size; ++r) {
    failed_[r] = false;
    Mailbox::Options options;
    options.transport = "inproc";
    options.rank = r;
    options.world_size = world_size;
    mailboxes_.push_back(std::make_shared<Mailbox>(std::move(options)));
    sent_.push_back(std::make_unique<SendTally>(world_size));
  }
}

InprocHub::~InprocHub() {
  for (auto& mailbox : mailboxes_) mailbox->close("the hub was destroyed");
}

void InprocHub::checkRank(int rank, const char* what) const {
  GEOPIPE_CHECK(rank >= 0 && rank < world_size_, Error, "inproc: ", what, " rank ", rank,
                " is outside the world [0, ", world_size_, ")");
}

bool InprocHub::isFailed(int rank) const {
  checkRank(rank, "isFailed:");
  return failed_[rank].load();
}

void InprocHub::markFailed(int rank, const std::string& reason) {
  checkRank(rank, "markFailed:");
  std::lock_guard<std::mutex> lock(failure_mu_);
  if (failed_[rank].load()) return;
  failed_[rank] = true;
  // Receives from the dead rank, on every rank (itself included) ...
  const std::string peer_failed = detail::concat("peer rank ", rank, " has failed (", reason, ")");
  for (auto& mailbox : mailboxes_) mailbox->failSource(rank, ErrorKind::IO, peer_failed);
  // ... and its own receives from the living; a dead source keeps its reason.
  const std::string self_failed =
      detail::concat("this rank ", rank, " is marked failed (", reason, ")");
  for (int src = 0; src < world_size_; ++src) {
    if (!failed_[src].load()) mailboxes_[rank]->failSource(src, ErrorKind::IO, self_failed);
  }
}

void InprocHub::shutdown(const std::string& reason) {
  std::lock_guard<std::mutex> lock(failure_mu_);
  if (shut_down_.exchange(true)) return;
  const std::string why = detail::concat("the hub was shut down (", reason, ")");
  for (auto& mailbox : mailboxes_) mailbox->close(why);
}

void InprocHub::deliver(int src, int dst, const Tag& tag, Bytes payload) {
  checkRank(src, "send from");
  checkRank(dst, "send to");
  // Count before delivering, so that a receiver woken by this message
  // already sees it in the sender's stats.
  sent_[src]->count(dst, payload.size());
  mailboxes_[dst]->deliver(src, tag, std::move(payload));
}

std::shared_ptr<RecvWork> InprocHub::post(int dst, int src, const Tag& tag) {
  checkRank(dst, "recv on");
  checkRank(src, "recv from");
  return mailboxes_[dst]->post(src, tag);
}

TransportStats InprocHub::stats(int rank) const {
  checkRank(rank, "stats of");
  TransportStats s;
  sent_[rank]->addTo(s);
  s.messages_received = mailboxes_[rank]->messagesReceived();
  s.bytes_received = mailboxes_[rank]->bytesReceived();
  return s;
}

InprocTransport::InprocTransport(std::shared_ptr<InprocHub> hub, int rank)
    : hub_(std::move(hub)), rank_(rank) {
  GEOPIPE_CHECK(hub_ != nullptr, Error, "InprocTransport: hub is null");
  GEOPIPE_CHECK(rank >= 0 && rank < hub_->worldSize(), Error, "InprocTransport: rank ", rank,
                " is outside the hub's world [0, ", hub_->worldSize(), ")");
}

std::shared_ptr<Work> InprocTransport::send(int peer, const Tag& tag, Bytes payload) {
  GEOPIPE_CHECK(peer >= 0 && peer < worldSize(), Error, "inproc: send from rank ", rank_,
                " to rank ", peer, " (tag ", tag.str(), "): peer is outside the world [0, ",
                worldSize(), ")");
  auto failed = [&](const std::string& why) {
    return std::make_shared<FinishedWork>(GEOPIPE_ERROR_PTR(IoError, "inproc: send from rank ",
                                                            rank_, " to rank ", peer, ", tag ",
                                                            tag.str(), " failed: ", why));
  };
  if (hub_->isShutDown()) return failed("the hub was shut down");
  if (hub_->isFailed(peer)) return failed(detail::concat("peer rank ", peer, " has failed"));
  if (hub_->isFailed(rank_))
    return failed(detail::concat("this rank ", rank_, " is marked failed"));
  hub_->deliver(rank_, peer, tag, std::move(payload));
  return std::make_shared<FinishedWork>();
}

std::shared_ptr<RecvWork> InprocTransport::recv(int peer, const Tag& tag) {
  GEOPIPE_CHECK(peer >= 0 && peer < worldSize(), Error, "inproc: recv on rank ", rank_,
                " from rank ", peer, " (tag ", tag.str(), "): peer is outside the world [0, ",
                worldSize(), ")");
  return hub_->post(rank_, peer, tag);
}

std::vector<std::shared_ptr<Transport>> makeInprocWorld(int world_size,
                                                        std::shared_ptr<InprocHub>* hub_out) {
  auto hub = std::make_shared<InprocHub>(world_size);
  std::vector<std::shared_ptr<Transport>> world;
  world.reserve(static_cast<size_t>(world_size));
  for (int r = 0; r < world_size; ++r) world.push_back(std::make_shared<InprocTransport>(hub, r));
  if (hub_out) *hub_out = hub;
  return world;
}

}  // namespace geopipe::transport
