// Fuzz target: the gradient bundle decoder (src/runtime/gradient_bundle.h),
// what a data-parallel peer's all-gather contribution is split with. Input:
// a byte for the number of messages the stage expects (0..3), then the
// bundle. A bundle it accepts must encode back to the same bytes and each
// message's header is then decoded as the runtime does; anything else must
// throw a geopipe::Error, never crash.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "compression/wire_format.h"
#include "fuzz/fuzz_input.h"
#include "geopipe/error.h"
#include "src/runtime/gradient_bundle.h"

namespace geopipe::runtime {
namespace {

void run(fuzz::FuzzInput& in) {
  const size_t expected = in.byte() % 4;
  const std::string rest = in.rest();
  const transport::Bytes bundle(rest.begin(), rest.end());
  const auto msgs = decodeGradientBundle(bundle, expected);
  if (msgs.size() != expected || encodeGradientBundle(msgs) != bundle) std::abort();
  for (const auto& m : msgs) {
    try {
      const compression::WireHeader h = compression::decodeHeader(m.header.data(), m.header.size());
      compression::checkPayload(h, m.payload.data(), m.payload.size());
    } catch (const Error&) {
    }
  }
}

}  // namespace
}  // namespace geopipe::runtime

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return geopipe::fuzz::runRefusingErrors(data, size, geopipe::runtime::run);
}
