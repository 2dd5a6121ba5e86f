// Data-parallel collectives over any Transport: all-reduce of floats (ring),
// all-gather of byte blobs, broadcast and barrier among a group of ranks.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "src/transport/transport.h"

namespace geopipe::transport {

// Tags and limits of one collective call.
struct CollectiveOptions {
  // Tag::step of every message: the training step the collective belongs to.
  int64_t step = 0;
  // Tag::micro_batch of every message: tells apart collectives that run
  // concurrently in one step over groups that share ranks (e.g. one per
  // gradient bucket, issued from different threads). Calls made one after
  // another in the same order on every rank may reuse an id.
  int32_t id = 0;
  // Longest wait for any single message; TimeoutError after it.
  Duration timeout = std::chrono::seconds(300);
  // All-reduce sends a ring segment in messages of at most this many bytes,
  // so the reduction of one chunk overlaps the transfer of the next.
  size_t chunk_bytes = size_t{1} << 20;
};

// Every function below is a collective over `group`: the same list of
// distinct ranks, in the same order, on every member, with the calling
// rank (transport.rank()) among them; each member must make the same calls
// in the same order (with the same options). They block the calling thread
// until this rank's part is done, and rethrow a peer's failure or a timeout
// as the transport's error type with the collective, step, id and rank
// prefixed. After a failure the group's message streams are out of step:
// treat it as fatal for the group. A group of one returns at once (no
// messages). Gradients travel on Channel::GRADIENT, barriers on CONTROL.

// In-place sum of data[0..count) over the group; all members end with
// bit-identical results. Ring all-reduce: the buffer is cut into one
// segment per member; reduce-scatter passes each segment once around the
// ring, each member adding its own values, so segment k is summed in the
// fixed order ((x_k + x_{k+1}) + x_{k+2}) + ... + x_{k-1} (group
// positions, mod n) by exactly one member, and the all-gather then copies
// those bits to everyone. The result therefore does not depend on timing,
// chunking or the transport, and is the same on every member; it may
// differ in the last bits from a left-to-right sum in rank order (it is
// equal whenever every partial sum is exact, e.g. small integers). Each
// member sends and receives 2·(n-1)/n·count floats.
void allReduceSum(Transport& transport, const std::vector<int>& group, float* data, size_t count,
                  const CollectiveOptions& options = {});

// allReduceSum followed by x / n on every element (a division, not a
// multiplication by 1/n, so averages of exact values stay exact where
// possible); bit-identical on all members.
void allReduceAverage(Transport& transport, const std::vector<int>& group, float* data,
                      size_t count, const CollectiveOptions& options = {});

// Every member's `mine`, indexed by group position (result[i] came from
// group[i]; result[own position] is a copy of `mine`). Direct exchange:
// each member sends its blob to every other member (one hop each, which
// on high-latency links beats a ring's n-1 hops). Blobs may differ in size
// (the compression library's contributions, combined in rank order).
std::vector<Bytes> allGatherBytes(Transport& transport, const std::vector<int>& group,
                                  const Bytes& mine, const CollectiveOptions& options = {});

// Copies `data` from `root` (a rank in group) to every member: on return
// every member's data equals root's. Direct: root sends to each member.
void broadcast(Transport& transport, const std::vector<int>& group, int root, Bytes& data,
               const CollectiveOptions& options = {});

// Returns on a member only after every member has entered the barrier.
void barrier(Transport& transport, const std::vector<int>& group,
             const CollectiveOptions& options = {});

}  // namespace geopipe::transport
