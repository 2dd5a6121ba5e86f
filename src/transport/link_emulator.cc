// LinkEmulatingTransport: per-link FIFO serialization and propagation delay
// on top of any transport, driven by one delivery thread per rank.
#include "src/transport/link_emulator.h"

#include <algorithm>
#include <cmath>

#include "geopipe/error.h"
#include "src/transport/completion.h"

namespace geopipe::transport {

// Something the delivery thread must do at `time`: complete a send (its
// serialization ended) or hand a message to the inner transport (it
// arrived). `seq` orders events with equal times by send order.
struct LinkEmulatingTransport::Event {
  enum class Kind : uint8_t { SEND_DONE, ARRIVE };
  Clock::time_point time;
  uint64_t seq = 0;
  Kind kind = Kind::ARRIVE;
  int dst = 0;
  Tag tag;
  Bytes payload;                      // ARRIVE
  std::shared_ptr<PendingWork> work;  // SEND_DONE
};

bool LinkEmulatingTransport::EventLater::operator()(const std::shared_ptr<Event>& a,
                                                    const std::shared_ptr<Event>& b) const {
  if (a->time != b->time) return a->time > b->time;
  return a->seq > b->seq;
}

LinkFunction linksFromTopology(const TopologySpec& topology, std::vector<int> rank_to_device) {
  auto topo = std::make_shared<const TopologySpec>(topology);
  for (size_t r = 0; r < rank_to_device.size(); ++r) {
    const int d = rank_to_device[r];
    GEOPIPE_CHECK(d >= 0 && d < topo->numDevices(), ConfigError, "link emulator: rank ", r,
                  " is placed on device ", d, " but topology '", topo->name, "' has ",
                  topo->numDevices(), " devices");
  }
  return [topo, map = std::move(rank_to_device)](int src, int dst) -> LinkSpec {
    auto device = [&](int rank) {
      const int d = map.empty() ? rank : (rank < static_cast<int>(map.size()) ? map[rank] : -1);
      GEOPIPE_CHECK(d >= 0 && d < topo->numDevices(), ConfigError, "link emulator: rank ", rank,
                    " has no device in topology '", topo->name, "' (", topo->numDevices(),
                    " devices, ", map.size(), " ranks placed)");
      return d;
    };
    return topo->link(device(src), device(dst));
  };
}

LinkEmulatingTransport::LinkEmulatingTransport(std::shared_ptr<Transport> inner, LinkFunction links,
                                               LinkEmulatorOptions options)
    : inner_(std::move(inner)), options_(options), sent_(inner_ ? inner_->worldSize() : 0) {
  GEOPIPE_CHECK(inner_ != nullptr, Error, "link emulator: inner transport is null");
  GEOPIPE_CHECK(links != nullptr, Error, "link emulator: link function is empty");
  GEOPIPE_CHECK(options_.bandwidth_scale > 0 && std::isfinite(options_.bandwidth_scale),
                ConfigError, "link emulator: bandwidth_scale must be > 0, got ",
                options_.bandwidth_scale);
  GEOPIPE_CHECK(options_.latency_scale >= 0 && std::isfinite(options_.latency_scale), ConfigError,
                "link emulator: latency_scale must be >= 0, got ", options_.latency_scale);
  GEOPIPE_CHECK(options_.nic_gbps >= 0, ConfigError, "link emulator: nic_gbps must be >= 0, got ",
                options_.nic_gbps);
  const int me = inner_->rank();
  const int n = inner_->worldSize();
  links_.resize(static_cast<size_t>(n));
  for (int dst = 0; dst < n; ++dst) {
    if (dst == me) continue;
    const LinkSpec spec = links(me, dst);
    GEOPIPE_CHECK(spec.bandwidth_gbps > 0 && std::isfinite(spec.bandwidth_gbps), ConfigError,
                  "link emulator: link ", me, " -> ", dst, " has bandwidth ", spec.bandwidth_gbps,
                  " Gbps; it must be a positive number");
    GEOPIPE_CHECK(spec.latency_ms >= 0 && std::isfinite(spec.latency_ms), ConfigError,
                  "link emulator: link ", me, " -> ", dst, " has latency ", spec.latency_ms,
                  " ms; it must be >= 0");
    GEOPIPE_CHECK(spec.duplex_bandwidth_gbps >= 0 && std::isfinite(spec.duplex_bandwidth_gbps),
                  ConfigError, "link emulator: link ", me, " -> ", dst, " has duplex bandwidth ",
                  spec.duplex_bandwidth_gbps,
                  " Gbps; it must be a positive number, or 0 for the link's bandwidth");
    links_[dst].bandwidth_gbps = spec.bandwidth_gbps * options_.bandwidth_scale;
    links_[dst].duplex_bandwidth_gbps = spec.duplex_bandwidth_gbps * options_.bandwidth_scale;
    links_[dst].latency_ms = spec.latency_ms * options_.latency_scale;
  }
  const auto now = Clock::now();
  link_free_.assign(static_cast<size_t>(n), now);
  nic_free_ = now;
  thread_ = std::thread([this] { deliveryLoop(); });
}

LinkEmulatingTransport::~LinkEmulatingTransport() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

LinkSpec LinkEmulatingTransport::link(int dst) const {
  GEOPIPE_CHECK(dst >= 0 && dst < worldSize() && dst != rank(), Error,
                "link emulator: no link from rank ", rank(), " to rank ", dst);
  return links_[dst];
}

double LinkEmulatingTransport::serializationSeconds(int dst, const Tag& tag, uint64_t bytes) const {
  const LinkSpec& l = link(dst);
  double gbps = tag.channel == Channel::GRADIENT ? l.exchangeGbps() : l.bandwidth_gbps;
  if (options_.shared_nic && options_.nic_gbps > 0) {
    gbps = std::min(gbps, options_.nic_gbps * options_.bandwidth_scale);
  }
  return static_cast<double>(bytes) * 8.0 / (gbps * 1e9);
}

std::shared_ptr<Work> LinkEmulatingTransport::send(int peer, const Tag& tag, Bytes payload) {
  const int me = rank();
  GEOPIPE_CHECK(peer >= 0 && peer < worldSize(), Error, "emulated: send from rank ", me,
                " to rank ", peer, " (tag ", tag.str(), "): peer is outside the world [0, ",
                worldSize(), ")");
  const uint64_t size = payload.size();
  if (peer == me) {
    sent_.count(peer, size);
    return inner_->send(peer, tag, std::move(payload));
  }
  const double seconds = serializationSeconds(peer, tag, size);
  const auto serialization =
      std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  const auto latency = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double, std::milli>(links_[peer].latency_ms));
  auto work = std::make_shared<PendingWork>(
      detail::concat("emulated: send from rank ", me, " to rank ", peer, ", tag ", tag.str(), " (",
                     size, " bytes, ", seconds * 1e3, " ms on the link)"));
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto broken = broken_.find(peer);
    if (broken != broken_.end()) std::rethrow_exception(broken->second);
    GEOPIPE_CHECK(!stopping_, Error, "emulated: send from rank ", me,
                  " after the transport began closing");
    Clock::time_point& free = options_.shared_nic ? nic_free_ : link_free_[peer];
    const Clock::time_point start = std::max(Clock::now(), free);
    const Clock::time_point end = start + serialization;
    free = end;
    if (options_.shared_nic) link_free_[peer] = end;

    auto done = std::make_shared<Event>();
    done->time = end;
    done->seq = next_seq_++;
    done->kind = Event::Kind::SEND_DONE;
    done->dst = peer;
    done->tag = tag;
    done->work = work;
    auto arrive = std::make_shared<Event>();
    arrive->time = end + latency;
    arrive->seq = next_seq_++;
    arrive->kind = Event::Kind::ARRIVE;
    arrive->dst = peer;
    arrive->tag = tag;
    arrive->payload = std::move(payload);
    events_.push(std::move(done));
    events_.push(std::move(arrive));
    sent_.count(peer, size);
  }
  cv_.notify_all();
  return work;
}

std::shared_ptr<RecvWork> LinkEmulatingTransport::recv(int peer, const Tag& tag) {
  return inner_->recv(peer, tag);
}

TransportStats LinkEmulatingTransport::stats() const {
  // The inner transport's send counts are the same sends, counted when the
  // emulator hands them on; this one's count them when they were sent.
  TransportStats s = inner_->stats();
  s.messages_sent = 0;
  s.bytes_sent = 0;
  s.bytes_sent_to.clear();
  sent_.addTo(s);
  return s;
}

void LinkEmulatingTransport::fire(Event& event) {
  if (event.kind == Event::Kind::SEND_DONE) {
    event.work->completion().succeed();
    return;
  }
  std::exception_ptr error;
  std::shared_ptr<Work> inner_work;
  try {
    inner_work = inner_->send(event.dst, event.tag, std::move(event.payload));
    if (inner_work->done()) {
      inner_work->wait(Duration(0));
      inner_work.reset();
    }
  } catch (...) {
    error = std::current_exception();
    inner_work.reset();
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (error) broken_.emplace(event.dst, error);
  if (inner_work) inner_pending_.emplace_back(event.dst, std::move(inner_work));
  // Surface failures of inner sends that finished since the last look.
  for (auto it = inner_pending_.begin(); it != inner_pending_.end();) {
    if (!it->second->done()) {
      ++it;
      continue;
    }
    try {
      it->second->wait(Duration(0));
    } catch (...) {
      broken_.emplace(it->first, std::current_exception());
    }
    it = inner_pending_.erase(it);
  }
}

void LinkEmulatingTransport::deliveryLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    if (events_.empty()) {
      if (stopping_) break;
      cv_.wait(lock);
      continue;
    }
    if (stopping_ && !options_.drain_on_destroy) {
      while (!events_.empty()) {
        auto event = events_.top();
        events_.pop();
        if (event->work) {
          event->work->completion().fail(GEOPIPE_ERROR_PTR(
              IoError, "emulated: send from rank ", rank(), " to rank ", event->dst, ", tag ",
              event->tag.str(), " dropped: the transport was destroyed while it was on the link"));
        }
      }
      break;
    }
    const Clock::time_point due = events_.top()->time;
    const Clock::time_point now = Clock::now();
    if (due - now > options_.spin) {
      // Sleep; an earlier event pushed meanwhile, or stopping, wakes us.
      cv_.wait_until(lock, due - options_.spin);
      continue;
    }
    if (now < due) {
      lock.unlock();
      while (Clock::now() < due) std::this_thread::yield();
      lock.lock();
      continue;  // the top may have changed while unlocked
    }
    std::shared_ptr<Event> event = events_.top();
    events_.pop();
    lock.unlock();
    fire(*event);
    lock.lock();
  }
}

std::vector<std::shared_ptr<Transport>> emulateLinks(
    const std::vector<std::shared_ptr<Transport>>& world, const LinkFunction& links,
    const LinkEmulatorOptions& options) {
  std::vector<std::shared_ptr<Transport>> out;
  out.reserve(world.size());
  for (const auto& t : world)
    out.push_back(std::make_shared<LinkEmulatingTransport>(t, links, options));
  return out;
}

}  // namespace geopipe::transport
