// Fuzz target: the NCCL transport's announcement decoder
// (src/transport/nccl/announcement.h), the bytes a peer sends over the
// inner transport before a payload. Input: a byte for the receiver's
// message limit (2^0 .. 2^63 bytes), then the announcement. One it accepts
// must encode back to the same bytes, reserved bytes aside; anything else
// must throw a geopipe::Error, never crash.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "fuzz/fuzz_input.h"
#include "geopipe/error.h"
#include "src/transport/nccl/announcement.h"

namespace geopipe::transport {
namespace {

void run(fuzz::FuzzInput& in) {
  const uint64_t max_bytes = uint64_t{1} << (in.byte() % 64);
  const std::string rest = in.rest();
  Bytes bytes(rest.begin(), rest.end());
  const NcclAnnouncement a = decodeNcclAnnouncement(bytes, "rank 1", max_bytes);
  if (a.size > max_bytes) std::abort();
  // Reserved bytes (5..7, 32..63) are written as zeros and not checked.
  for (size_t i : {5, 6, 7}) bytes[i] = 0;
  for (size_t i = 32; i < kNcclAnnouncementBytes; ++i) bytes[i] = 0;
  if (encodeNcclAnnouncement(a) != bytes) std::abort();
}

}  // namespace
}  // namespace geopipe::transport

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return geopipe::fuzz::runRefusingErrors(data, size, geopipe::transport::run);
}
