// Fuzz target: the relay's request parser (src/transport/grpc/relay.h,
// parseRelayRequest), the first bytes anyone who connects to the
// coordinator's --relay port sends. Input: the header as read. What it
// accepts must be what the relay can act on: a CONNECT names a rank in
// [0, 100000) and a target with a port, a dial-back an id without spaces
// or line ends.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "fuzz/fuzz_input.h"
#include "src/transport/grpc/relay.h"

namespace geopipe::transport {
namespace {

void run(fuzz::FuzzInput& in) {
  const std::string header = in.rest();
  const RelayRequest r = parseRelayRequest(header);
  switch (r.kind) {
    case RelayRequest::Kind::CONNECT:
      if (r.rank < 0 || r.rank >= 100000 || r.target.empty() ||
          r.target.find(':') == std::string::npos || header.rfind("CONNECT ", 0) != 0)
        std::abort();
      break;
    case RelayRequest::Kind::DIAL_BACK:
      if (r.id.empty() || r.id.find_first_of(" \r\n") != std::string::npos) std::abort();
      break;
    case RelayRequest::Kind::INVALID:
      if (r.rank != -1 || !r.target.empty() || !r.id.empty()) std::abort();
      break;
  }
}

}  // namespace
}  // namespace geopipe::transport

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return geopipe::fuzz::runRefusingErrors(data, size, geopipe::transport::run);
}
