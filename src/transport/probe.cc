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

// Probe messages are CONTROL messages with negative steps, which training
// never uses: step -(1 + pair) for a pair's exchanges, kResultsStep for the
// results sent to rank 0. micro_batch tells the phase, index the round.
constexpr int64_t kResultsStep = -(int64_t{1} << 40);
enum Phase : int32_t { PING = 0, PONG = 1, BULK = 2, BULK_ACK = 3, RESULTS = 4 };

Tag probeTag(int64_t pair, Phase phase, int32_t index) {
  Tag t;
  t.channel = Channel::CONTROL;
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
LinkMeasurement timeLink(Transport& t, int64_t pair, int peer, const ProbeOptions& o) {
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
                      std::isfinite(m.latency_ms) && std::isfinite(m.bandwidth_gbps),
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
  // first. Ranks not in a pair skip it: messages are tagged by pair.
  int64_t pair = 0;
  for (int a = 0; a < n; ++a) {
    for (int b = a + 1; b < n; ++b, ++pair) {
      if (self == a) {
        mine.push_back(timeLink(t, 2 * pair, b, o));
        answerLink(t, 2 * pair + 1, b, o);
      } else if (self == b) {
        answerLink(t, 2 * pair, a, o);
        mine.push_back(timeLink(t, 2 * pair + 1, a, o));
      }
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
    out << YAML::Key << "bandwidth_gbps" << YAML::Value
        << rounded(std::clamp(l.bandwidth_gbps, 1e-6, 1e6), 3);
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
