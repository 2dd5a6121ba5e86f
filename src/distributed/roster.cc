// Roster: the coordinator's workers, their ranks, spares and shrink order.
#include "src/distributed/roster.h"

#include <algorithm>
#include <map>

#include "geopipe/error.h"

namespace geopipe::distributed {
namespace {

double secondsSince(Roster::Clock::time_point then, Roster::Clock::time_point now) {
  return std::chrono::duration<double>(now - then).count();
}

}  // namespace

size_t Roster::add(Slot slot) {
  slot.ticket = ++last_ticket_;
  slots_.push_back(std::move(slot));
  return slots_.size() - 1;
}

size_t Roster::findSpare(uint64_t ticket, int64_t pid) const {
  size_t id = slots_.size();
  for (size_t i = 0; i < slots_.size(); ++i)
    if (slots_[i].ticket == ticket && slots_[i].info.pid == pid && !slots_[i].gone) id = i;
  return id;
}

int Roster::active() const {
  int n = 0;
  for (const auto& s : slots_) n += s.gone || s.spare ? 0 : 1;
  return n;
}

int Roster::idleSpares() const {
  int n = 0;
  for (const auto& s : slots_) n += !s.gone && s.spare ? 1 : 0;
  return n;
}

int Roster::liveSpares(Clock::time_point now, Clock::duration recent) const {
  int n = 0;
  for (const auto& s : slots_)
    n += !s.gone && s.spare && (s.waiting || now - s.last_seen <= recent) ? 1 : 0;
  return n;
}

std::vector<DeviceClaim> Roster::deviceClaims() const {
  std::vector<DeviceClaim> taken;
  for (const auto& s : slots_)
    if (!s.gone && s.device >= 0) taken.push_back({s.device, s.info.hostname, s.info.pid});
  return taken;
}

std::vector<std::string> Roster::promoteSpares(int awaited, int world, bool for_new_replica) {
  std::vector<std::string> events;
  int n = sparesToPromote(active(), awaited, world, idleSpares());
  for (auto& s : slots_) {
    if (n == 0) break;
    if (s.gone || !s.spare) continue;
    s.spare = false;
    s.previous_rank = -1;
    --n;
    events.push_back(detail::concat(
        "spare ", s.info.hostname, " pid ", s.info.pid,
        for_new_replica ? " takes a place of a new replica (" : " takes a lost tasklet's place (",
        active(), "/", world, ")"));
  }
  return events;
}

std::vector<std::string> Roster::keepForShrink(int world, int stages) {
  std::vector<size_t> order;
  std::map<int, int> survivors_of_replica;
  for (size_t i = 0; i < slots_.size(); ++i) {
    if (slots_[i].gone || slots_[i].spare) continue;
    order.push_back(i);
    if (slots_[i].previous_rank >= 0) ++survivors_of_replica[slots_[i].previous_rank / stages];
  }
  auto key = [&](size_t i) {
    const int prev = slots_[i].previous_rank;
    if (prev < 0) return std::make_pair(2, 0);
    return std::make_pair(survivors_of_replica[prev / stages] == stages ? 0 : 1, prev);
  };
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return key(a) < key(b); });
  std::vector<std::string> events;
  for (size_t k = static_cast<size_t>(world); k < order.size(); ++k) {
    Slot& s = slots_[order[k]];
    s.spare = true;
    s.previous_rank = -1;
    events.push_back(detail::concat("worker ", s.info.hostname, " pid ", s.info.pid,
                                    " waits as an idle spare: the job continues with fewer "
                                    "replicas"));
  }
  return events;
}

std::vector<std::string> Roster::dropSilentSpares(Clock::time_point now,
                                                  std::chrono::milliseconds timeout) {
  std::vector<std::string> events;
  for (auto& s : slots_) {
    if (s.gone || s.waiting || s.info.rank >= 0) continue;
    const double silent = secondsSince(s.last_seen, now);
    if (silent * 1000 > timeout.count()) {
      s.gone = true;
      events.push_back(detail::concat("spare ", s.info.hostname, " pid ", s.info.pid,
                                      " is silent for ", static_cast<int>(silent),
                                      " s and no longer a spare"));
    }
  }
  return events;
}

std::set<int> Roster::namedDevices() const {
  std::set<int> named;
  for (const auto& s : slots_)
    if (!s.gone && !s.spare && s.device >= 0) named.insert(s.device);
  return named;
}

std::vector<RankClaim> Roster::claims() const {
  std::vector<RankClaim> claims;
  for (const auto& s : slots_)
    if (!s.gone && !s.spare) claims.push_back({s.device, s.previous_rank});
  return claims;
}

void Roster::assign(const std::vector<int>& worker_of_rank, const Layout& layout,
                    Clock::time_point now) {
  std::vector<size_t> active;
  for (size_t i = 0; i < slots_.size(); ++i)
    if (!slots_[i].gone && !slots_[i].spare) active.push_back(i);
  const int world = static_cast<int>(worker_of_rank.size());
  slot_of_rank_.assign(static_cast<size_t>(world), -1);
  for (int r = 0; r < world; ++r)
    slot_of_rank_[static_cast<size_t>(r)] =
        static_cast<int>(active[static_cast<size_t>(worker_of_rank[static_cast<size_t>(r)])]);
  const TopologySpec& topology = *layout.topology;
  for (int r = 0; r < world; ++r) {
    Slot& s = slots_[static_cast<size_t>(slot_of_rank_[static_cast<size_t>(r)])];
    GEOPIPE_CHECK(s.info.rank < 0, Error, "rank assigned twice");
    s.generation = layout.generation;
    s.info.rank = r;
    s.info.stage = r % layout.stages;
    s.info.replica = r / layout.stages;
    s.info.device = layout.device_of_rank[static_cast<size_t>(r)];
    s.info.device_name = topology.numDevices() > 0
                             ? topology.devices[static_cast<size_t>(s.info.device)].name
                             : std::to_string(s.info.device);
    s.last_seen = now;
    s.last_step = layout.first_step - 1;
    s.synchronous = false;
  }
}

void Roster::endGeneration() {
  for (auto& s : slots_)
    if (!s.spare) s.gone = true;
  slot_of_rank_.clear();
}

Roster::Slot* Roster::ofRank(int rank) {
  if (rank < 0 || rank >= ranks()) return nullptr;
  return &slots_[static_cast<size_t>(slot_of_rank_[static_cast<size_t>(rank)])];
}

const Roster::Slot* Roster::ofRank(int rank) const {
  return const_cast<Roster*>(this)->ofRank(rank);
}

std::string Roster::describe(int rank) const {
  const Slot* s = ofRank(rank);
  if (!s) return detail::concat("tasklet ", rank);
  return detail::concat("tasklet rank ", rank, " (stage ", s->info.stage, ", replica ",
                        s->info.replica, ", device '", s->info.device_name, "', host ",
                        s->info.hostname, " pid ", s->info.pid, ")");
}

std::vector<TaskletInfo> Roster::tasklets() const {
  std::vector<TaskletInfo> out;
  for (int s : slot_of_rank_) out.push_back(slots_[static_cast<size_t>(s)].info);
  return out;
}

int Roster::placedOn(const std::string& hostname) const {
  int n = 0;
  for (int s : slot_of_rank_) n += slots_[static_cast<size_t>(s)].info.hostname == hostname;
  return n;
}

std::vector<int64_t> Roster::placedPids() const {
  std::vector<int64_t> pids;
  for (int s : slot_of_rank_) pids.push_back(slots_[static_cast<size_t>(s)].info.pid);
  return pids;
}

std::pair<int, double> Roster::mostSilent(int except, Clock::time_point now) const {
  int suspect = -1;
  double longest = 0;
  for (int r = 0; r < ranks(); ++r) {
    const Slot& s = *ofRank(r);
    if (s.info.finished || r == except) continue;
    const double silent = secondsSince(s.last_seen, now);
    if (silent > longest) {
      longest = silent;
      suspect = r;
    }
  }
  return {suspect, longest};
}

}  // namespace geopipe::distributed
