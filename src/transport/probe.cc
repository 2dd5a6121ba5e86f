// probeLinks: pairwise ping-pong and bulk transfers over a Transport, one
// pair at a time; topologyYamlFromProbe: the result as a topology file.
#include "src/transport/probe.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "geopipe/error.h"
#include "src/common/strings.h"

namespace geopipe::transport {
namespace {

// Probe messages are CONTROL messages (the duplex bulks GRADIENT ones) with
// negative steps, which training never uses: step -(1 + pair) for a pair's
// exchanges, kResultsStep for the results sent to rank 0. micro_batch tells
// the phase, index the round.
constexpr int64_t kResultsStep = -(int64_t{1} << 40);
enum Phase : int32_t {
  PING = 0,
  PONG = 1,
  BULK = 2,
  BULK_ACK = 3,
  RESULTS = 4,
  DUPLEX_GO = 5,
  DUPLEX_BULK = 6,
  DUPLEX_RATE = 7
};

Tag probeTag(int64_t pair, Phase phase, int32_t index, Channel channel = Channel::CONTROL) {
  Tag t;
  t.channel = channel;
  t.step = pair < 0 ? kResultsStep : -(1 + pair);
  t.micro_batch = phase;
  t.index = index;
  return t;
}

double secondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

Bytes waitRecv(Transport& t, int peer, const Tag& tag, Duration timeout) {
  auto work = t.recv(peer, tag);
  work->wait(timeout);
  return work->takePayload();
}

// This rank (`self`) times `peer`: the median round trip of `pings` small
// messages (after one untimed, which may pay for a connection), then the
// best of two bulk transfers (the second runs on a warm connection).
// `min_rtt` gets the fastest round trip.
LinkMeasurement timeLink(Transport& t, int64_t pair, int peer, const ProbeOptions& o,
                         double& min_rtt_out) {
  std::vector<double> rtt;
  for (int k = 0; k <= o.pings; ++k) {
    const auto t0 = Clock::now();
    t.send(peer, probeTag(pair, PING, k), Bytes(8, 0))->wait(o.timeout);
    waitRecv(t, peer, probeTag(pair, PONG, k), o.timeout);
    if (k > 0) rtt.push_back(secondsSince(t0));
  }
  std::sort(rtt.begin(), rtt.end());
  const double median_rtt = rtt.empty() ? 0 : rtt[rtt.size() / 2];
  // The bulk's round trip is taken off with the fastest ping's: a ping
  // slowed by scheduling noise would take too much off and overstate the
  // bandwidth.
  const double min_rtt = rtt.empty() ? 0 : rtt.front();
  min_rtt_out = min_rtt;
  double best = 0;
  for (int round = 0; round < 2; ++round) {
    const auto t0 = Clock::now();
    t.send(peer, probeTag(pair, BULK, round), Bytes(o.bulk_bytes, 0x5a))->wait(o.timeout);
    waitRecv(t, peer, probeTag(pair, BULK_ACK, round), o.timeout);
    const double transfer = std::max(secondsSince(t0) - min_rtt, 1e-9);
    best = std::max(best, 8.0 * static_cast<double>(o.bulk_bytes) / transfer / 1e9);
  }
  LinkMeasurement m;
  m.from = t.rank();
  m.to = peer;
  m.latency_ms = median_rtt / 2 * 1000;
  m.bandwidth_gbps = best;
  return m;
}

// The other side of timeLink: echoes the pings, acknowledges the bulks.
void answerLink(Transport& t, int64_t pair, int peer, const ProbeOptions& o) {
  for (int k = 0; k <= o.pings; ++k) {
    Bytes ping = waitRecv(t, peer, probeTag(pair, PING, k), o.timeout);
    t.send(peer, probeTag(pair, PONG, k), std::move(ping))->wait(o.timeout);
  }
  for (int round = 0; round < 2; ++round) {
    waitRecv(t, peer, probeTag(pair, BULK, round), o.timeout);
    t.send(peer, probeTag(pair, BULK_ACK, round), Bytes(1, 1))->wait(o.timeout);
  }
}

double rateOf(const Bytes& b) {
  double v = 0;
  GEOPIPE_CHECK(b.size() == sizeof v, ProtocolError, "probe: a duplex rate of ", b.size(),
                " bytes, not ", sizeof v);
  std::memcpy(&v, b.data(), sizeof v);
  GEOPIPE_CHECK(std::isfinite(v) && v > 0, ProtocolError, "probe: a duplex rate of ", v);
  return v;
}

// Both ends of the pair send `bulk_bytes` at once on the data-parallel
// exchange's channel (GRADIENT; the link emulator serializes it at the
// topology's duplex bandwidth), twice, on connections the one-way probe has
// warmed; each end times the bulk it receives and tells the sender.
// Returns this rank's outgoing rate in Gbps while the reverse direction is
// busy: both rounds' bytes over both rounds' time, not the better round,
// because under some TCPs (bbr behind a shallow queue) this rate varies
// widely and an exchange that runs every step gets its mean.
//
// The initiator sends GO and its bulk right behind it; the responder
// starts its clock when GO arrives, so its time is the transfer's. The
// initiator's clock started one way earlier and the reverse bulk's last
// byte needs one way back: it takes off `min_rtt`.
double timeDuplex(Transport& t, int64_t pair, int peer, bool initiator, double min_rtt,
                  const ProbeOptions& o) {
  double seconds_per_gbit = 0;  // summed over the rounds
  for (int round = 0; round < 2; ++round) {
    std::shared_ptr<Work> go;
    if (initiator) {
      go = t.send(peer, probeTag(pair, DUPLEX_GO, round), Bytes(1, 1));
    } else {
      waitRecv(t, peer, probeTag(pair, DUPLEX_GO, round), o.timeout);
    }
    const auto t0 = Clock::now();
    const Tag bulk = probeTag(pair, DUPLEX_BULK, round, Channel::GRADIENT);
    auto sent = t.send(peer, bulk, Bytes(o.bulk_bytes, 0xa5));
    waitRecv(t, peer, bulk, o.timeout);
    const double transfer = std::max(secondsSince(t0) - (initiator ? min_rtt : 0.0), 1e-9);
    const double incoming = 8.0 * static_cast<double>(o.bulk_bytes) / transfer / 1e9;
    if (go) go->wait(o.timeout);
    sent->wait(o.timeout);
    Bytes rate(sizeof incoming);
    std::memcpy(rate.data(), &incoming, sizeof incoming);
    t.send(peer, probeTag(pair, DUPLEX_RATE, round), std::move(rate))->wait(o.timeout);
    seconds_per_gbit +=
        1.0 / rateOf(waitRecv(t, peer, probeTag(pair, DUPLEX_RATE, round), o.timeout));
  }
  return 2.0 / seconds_per_gbit;
}

Bytes encode(const std::vector<LinkMeasurement>& ms) {
  Bytes out(ms.size() * sizeof(LinkMeasurement));
  if (!ms.empty()) std::memcpy(out.data(), ms.data(), out.size());
  return out;
}

std::vector<LinkMeasurement> decode(const Bytes& b, int world, int sender) {
  GEOPIPE_CHECK(b.size() % sizeof(LinkMeasurement) == 0, ProtocolError, "probe: rank ", sender,
                " sent ", b.size(), " bytes of results, not a whole number of measurements");
  std::vector<LinkMeasurement> ms(b.size() / sizeof(LinkMeasurement));
  if (!ms.empty()) std::memcpy(ms.data(), b.data(), b.size());
  for (const auto& m : ms) {
    GEOPIPE_CHECK(m.from == sender && m.to >= 0 && m.to < world && m.to != sender &&
                      std::isfinite(m.latency_ms) && std::isfinite(m.bandwidth_gbps) &&
                      std::isfinite(m.duplex_bandwidth_gbps),
                  ProtocolError, "probe: rank ", sender, " sent a malformed measurement");
  }
  return ms;
}

std::string rounded(double v, int digits) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.*g", digits, v);
  return buf;
}

}  // namespace

std::vector<LinkMeasurement> probeLinks(Transport& t, const ProbeOptions& o) {
  GEOPIPE_CHECK(o.pings >= 1 && o.bulk_bytes >= 1, Error,
                "probeLinks: pings and bulk_bytes must be at least 1");
  const int n = t.worldSize();
  const int self = t.rank();
  std::vector<LinkMeasurement> mine;
  // Pairs (a, b), a < b, in a fixed order; each is timed both ways, a
  // first, then both ways at once. Ranks not in a pair skip it: messages
  // are tagged by pair.
  int64_t pair = 0;
  for (int a = 0; a < n; ++a) {
    for (int b = a + 1; b < n; ++b, ++pair) {
      if (self != a && self != b) continue;
      const int peer = self == a ? b : a;
      double min_rtt = 0;
      LinkMeasurement m;
      if (self == a) {
        m = timeLink(t, 2 * pair, b, o, min_rtt);
        answerLink(t, 2 * pair + 1, b, o);
      } else {
        answerLink(t, 2 * pair, a, o);
        m = timeLink(t, 2 * pair + 1, a, o, min_rtt);
      }
      m.duplex_bandwidth_gbps = timeDuplex(t, 2 * pair, peer, self == a, min_rtt, o);
      mine.push_back(m);
    }
  }
  if (self != 0) {
    t.send(0, probeTag(-1, RESULTS, self), encode(mine))->wait(o.timeout);
    return {};
  }
  std::vector<LinkMeasurement> all = mine;
  for (int r = 1; r < n; ++r) {
    const auto theirs = decode(waitRecv(t, r, probeTag(-1, RESULTS, r), o.timeout), n, r);
    all.insert(all.end(), theirs.begin(), theirs.end());
  }
  std::sort(all.begin(), all.end(), [](const LinkMeasurement& x, const LinkMeasurement& y) {
    return std::make_pair(x.from, x.to) < std::make_pair(y.from, y.to);
  });
  return all;
}

std::string topologyYamlFromProbe(const std::string& name, const std::vector<std::string>& names,
                                  const std::vector<LinkMeasurement>& links,
                                  const std::string& comment) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  out << YAML::Key << "name" << YAML::Value << name;
  out << YAML::Key << "description" << YAML::Value
      << detail::concat("links measured by geopipe probe between ", names.size(), " workers");
  out << YAML::Key << "sites" << YAML::Value << YAML::BeginSeq;
  for (const auto& site : names) {
    out << YAML::Flow << YAML::BeginMap << YAML::Key << "name" << YAML::Value << site << YAML::Key
        << "devices" << YAML::Value << 1 << YAML::EndMap;
  }
  out << YAML::EndSeq;
  out << YAML::Key << "links" << YAML::Value << YAML::BeginSeq;
  for (const auto& l : links) {
    out << YAML::Flow << YAML::BeginMap;
    out << YAML::Key << "from" << YAML::Value << names.at(static_cast<size_t>(l.from));
    out << YAML::Key << "to" << YAML::Value << names.at(static_cast<size_t>(l.to));
    char latency[32];
    std::snprintf(latency, sizeof latency, "%.2f", std::max(l.latency_ms, 0.0));
    out << YAML::Key << "latency_ms" << YAML::Value << latency;
    const double gbps = std::clamp(l.bandwidth_gbps, 1e-6, 1e6);
    out << YAML::Key << "bandwidth_gbps" << YAML::Value << rounded(gbps, 3);
    // At most the one-way rate (a topology refuses more): the one-way figure
    // is the better of two rounds, the duplex one their mean, and on a link
    // both ways do not slow the two are equal up to noise.
    if (l.duplex_bandwidth_gbps > 0) {
      out << YAML::Key << "duplex_bandwidth_gbps" << YAML::Value
          << rounded(std::clamp(l.duplex_bandwidth_gbps, 1e-6, gbps), 3);
    }
    out << YAML::EndMap;
  }
  out << YAML::EndSeq;
  out << YAML::EndMap;
  std::string text;
  size_t start = 0;
  while (start <= comment.size() && !comment.empty()) {
    const size_t end = comment.find('\n', start);
    text += "# " + comment.substr(start, end == std::string::npos ? end : end - start) + "\n";
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return text + out.c_str() + "\n";
}

}  // namespace geopipe::transport
