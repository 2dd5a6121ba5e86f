// Ring all-reduce, direct all-gather, broadcast and barrier over Transport.
#include "src/transport/collectives.h"

#include <algorithm>
#include <cstring>
#include <set>
#include <string>

#include "geopipe/error.h"

namespace geopipe::transport {
namespace {

// Tag::index = kind << 24 | round, so that a log line names the collective.
enum class Kind : int32_t { ALL_REDUCE = 1, ALL_GATHER = 2, BROADCAST = 3, BARRIER = 4 };

Tag makeTag(Channel channel, const CollectiveOptions& options, Kind kind, int32_t round) {
  Tag tag;
  tag.channel = channel;
  tag.step = options.step;
  tag.micro_batch = options.id;
  tag.index = (static_cast<int32_t>(kind) << 24) | round;
  return tag;
}

// Checks the group and returns the calling rank's position in it.
int positionIn(const Transport& transport, const std::vector<int>& group, const char* op) {
  GEOPIPE_CHECK(!group.empty(), Error, op, ": the group is empty");
  std::set<int> seen;
  int position = -1;
  for (size_t i = 0; i < group.size(); ++i) {
    const int r = group[i];
    GEOPIPE_CHECK(r >= 0 && r < transport.worldSize(), Error, op, ": group member ", r,
                  " is outside the world [0, ", transport.worldSize(), ")");
    GEOPIPE_CHECK(seen.insert(r).second, Error, op, ": rank ", r, " appears twice in the group");
    if (r == transport.rank()) position = static_cast<int>(i);
  }
  GEOPIPE_CHECK(position >= 0, Error, op, ": rank ", transport.rank(),
                " is not a member of the group it was called on");
  return position;
}

std::string describeGroup(const std::vector<int>& group) {
  std::string s = "[";
  for (size_t i = 0; i < group.size(); ++i) s += (i ? "," : "") + std::to_string(group[i]);
  return s + "]";
}

// Runs body(); a geopipe error gets the collective's context prefixed and
// keeps its kind (rethrowWithContext), so callers can still catch
// TimeoutError or IoError.
template <typename Body>
void withContext(const Transport& transport, const std::vector<int>& group,
                 const CollectiveOptions& options, const char* op, Body&& body) {
  auto context = [&] {
    return detail::concat(op, "(step=", options.step, ", id=", options.id, ") on rank ",
                          transport.rank(), " in group ", describeGroup(group), ": ");
  };
  try {
    body();
  } catch (const Error& e) {
    rethrowWithContext(e, context());
  }
}

// Segment k of a buffer of `count` floats cut into n nearly equal parts.
struct Range {
  size_t begin = 0;
  size_t size = 0;
};
Range segment(size_t count, int n, int k) {
  const size_t base = count / static_cast<size_t>(n);
  const size_t extra = count % static_cast<size_t>(n);
  const size_t uk = static_cast<size_t>(k);
  return {uk * base + std::min(uk, extra), base + (uk < extra ? 1 : 0)};
}

// Chunk c of a segment, in floats; every segment has at least one chunk
// (possibly empty) so the message pattern does not depend on count.
size_t numChunks(size_t segment_size, size_t chunk_floats) {
  return std::max<size_t>(1, (segment_size + chunk_floats - 1) / chunk_floats);
}
Range chunk(const Range& seg, size_t chunk_floats, size_t c) {
  const size_t begin = std::min(seg.size, c * chunk_floats);
  return {seg.begin + begin, std::min(chunk_floats, seg.size - begin)};
}

Bytes toBytes(const float* data, size_t count) {
  Bytes bytes(count * sizeof(float));
  if (count) std::memcpy(bytes.data(), data, bytes.size());
  return bytes;
}

int mod(int a, int n) {
  return ((a % n) + n) % n;
}

}  // namespace

void allReduceSum(Transport& transport, const std::vector<int>& group, float* data, size_t count,
                  const CollectiveOptions& options) {
  const int me = positionIn(transport, group, "allReduceSum");
  const int n = static_cast<int>(group.size());
  if (n == 1) return;
  GEOPIPE_CHECK(count == 0 || data != nullptr, Error, "allReduceSum: data is null");
  withContext(transport, group, options, "allReduceSum", [&] {
    const int right = group[mod(me + 1, n)];
    const int left = group[mod(me - 1, n)];
    const size_t chunk_floats = std::max<size_t>(1, options.chunk_bytes / sizeof(float));
    // Round t < n-1 is reduce-scatter step t, round t >= n-1 all-gather step
    // t-(n-1). In round t this member receives segment (me - t - 1) from the
    // left and, one round later, forwards that same segment to the right:
    // after adding its own values (reduce-scatter) or as is (all-gather).
    // So every received chunk is sent on as soon as it is processed.
    const int rounds = 2 * (n - 1);
    auto segmentOfRound = [&](int t) { return segment(count, n, mod(me - t - 1, n)); };

    // Post every receive up front; FIFO per (peer, tag) keeps chunks in order.
    std::vector<std::vector<std::shared_ptr<RecvWork>>> recvs(static_cast<size_t>(rounds));
    for (int t = 0; t < rounds; ++t) {
      const size_t chunks = numChunks(segmentOfRound(t).size, chunk_floats);
      for (size_t c = 0; c < chunks; ++c) {
        recvs[t].push_back(
            transport.recv(left, makeTag(Channel::GRADIENT, options, Kind::ALL_REDUCE, t)));
      }
    }
    std::vector<std::shared_ptr<Work>> sends;
    auto sendChunk = [&](int t, const Range& part) {
      sends.push_back(transport.send(right,
                                     makeTag(Channel::GRADIENT, options, Kind::ALL_REDUCE, t),
                                     toBytes(data + part.begin, part.size)));
    };
    // Round 0: this member's own segment `me`, unreduced.
    {
      const Range seg = segment(count, n, me);
      for (size_t c = 0; c < numChunks(seg.size, chunk_floats); ++c) {
        sendChunk(0, chunk(seg, chunk_floats, c));
      }
    }
    std::vector<float> scratch;
    for (int t = 0; t < rounds; ++t) {
      const Range seg = segmentOfRound(t);
      const bool reduce = t < n - 1;
      for (size_t c = 0; c < recvs[t].size(); ++c) {
        const Range part = chunk(seg, chunk_floats, c);
        recvs[t][c]->wait(options.timeout);
        Bytes bytes = recvs[t][c]->takePayload();
        GEOPIPE_CHECK_EQ(bytes.size(), part.size * sizeof(float), ProtocolError,
                         "allReduceSum round ", t, " chunk ", c, " from rank ", left,
                         ": wrong chunk size (do all members pass the same count?)");
        if (reduce) {
          // x_partial + x_mine: the operands' order does not matter (IEEE
          // addition is commutative); the order of the terms is fixed by
          // the ring, see the header.
          scratch.resize(part.size);
          if (part.size) std::memcpy(scratch.data(), bytes.data(), bytes.size());
          float* out = data + part.begin;
          for (size_t i = 0; i < part.size; ++i) out[i] = scratch[i] + out[i];
        } else if (part.size) {
          std::memcpy(data + part.begin, bytes.data(), bytes.size());
        }
        if (t + 1 < rounds) sendChunk(t + 1, part);
        recvs[t][c].reset();
      }
    }
    for (auto& s : sends) s->wait(options.timeout);
  });
}

void allReduceAverage(Transport& transport, const std::vector<int>& group, float* data,
                      size_t count, const CollectiveOptions& options) {
  allReduceSum(transport, group, data, count, options);
  const float n = static_cast<float>(group.size());
  if (group.size() == 1) return;
  for (size_t i = 0; i < count; ++i) data[i] = data[i] / n;
}

std::vector<Bytes> allGatherBytes(Transport& transport, const std::vector<int>& group,
                                  const Bytes& mine, const CollectiveOptions& options) {
  const int me = positionIn(transport, group, "allGatherBytes");
  const int n = static_cast<int>(group.size());
  std::vector<Bytes> result(static_cast<size_t>(n));
  result[me] = mine;
  if (n == 1) return result;
  withContext(transport, group, options, "allGatherBytes", [&] {
    const Tag tag = makeTag(Channel::GRADIENT, options, Kind::ALL_GATHER, 0);
    std::vector<std::shared_ptr<RecvWork>> recvs(static_cast<size_t>(n));
    std::vector<std::shared_ptr<Work>> sends;
    for (int i = 0; i < n; ++i) {
      if (i != me) recvs[i] = transport.recv(group[i], tag);
    }
    // Start with the next member so that not everyone sends to member 0
    // first (spreads the load over the links).
    for (int k = 1; k < n; ++k) sends.push_back(transport.send(group[mod(me + k, n)], tag, mine));
    for (int i = 0; i < n; ++i) {
      if (i == me) continue;
      recvs[i]->wait(options.timeout);
      result[i] = recvs[i]->takePayload();
    }
    for (auto& s : sends) s->wait(options.timeout);
  });
  return result;
}

void broadcast(Transport& transport, const std::vector<int>& group, int root, Bytes& data,
               const CollectiveOptions& options) {
  const int me = positionIn(transport, group, "broadcast");
  const int n = static_cast<int>(group.size());
  const auto root_it = std::find(group.begin(), group.end(), root);
  GEOPIPE_CHECK(root_it != group.end(), Error, "broadcast: root rank ", root,
                " is not a member of the group ", describeGroup(group));
  if (n == 1) return;
  withContext(transport, group, options, "broadcast", [&] {
    const Tag tag = makeTag(Channel::GRADIENT, options, Kind::BROADCAST, 0);
    if (group[me] == root) {
      std::vector<std::shared_ptr<Work>> sends;
      for (int k = 1; k < n; ++k) {
        const int peer = group[mod(me + k, n)];
        sends.push_back(transport.send(peer, tag, data));
      }
      for (auto& s : sends) s->wait(options.timeout);
    } else {
      auto r = transport.recv(root, tag);
      r->wait(options.timeout);
      data = r->takePayload();
    }
  });
}

void barrier(Transport& transport, const std::vector<int>& group,
             const CollectiveOptions& options) {
  const int me = positionIn(transport, group, "barrier");
  const int n = static_cast<int>(group.size());
  if (n == 1) return;
  withContext(transport, group, options, "barrier", [&] {
    const Tag tag = makeTag(Channel::CONTROL, options, Kind::BARRIER, 0);
    std::vector<std::shared_ptr<RecvWork>> recvs;
    std::vector<std::shared_ptr<Work>> sends;
    for (int k = 1; k < n; ++k) recvs.push_back(transport.recv(group[mod(me - k, n)], tag));
    for (int k = 1; k < n; ++k)
      sends.push_back(transport.send(group[mod(me + k, n)], tag, Bytes()));
    for (auto& r : recvs) r->wait(options.timeout);
    for (auto& s : sends) s->wait(options.timeout);
  });
}

}  // namespace geopipe::transport
