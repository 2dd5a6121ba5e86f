// Encoding and bounds-checked decoding of gradient bundles.
#include "src/runtime/gradient_bundle.h"

#include "geopipe/error.h"
#include "src/common/byte_io.h"

namespace geopipe::runtime {

transport::Bytes encodeGradientBundle(const std::vector<compression::CompressedMessage>& msgs) {
  size_t total = 4;
  for (const auto& m : msgs) total += 12 + m.wireBytes();
  common::ByteWriter w(total);
  w.write<uint32_t>(static_cast<uint32_t>(msgs.size()));
  for (const auto& m : msgs) {
    w.write<uint32_t>(static_cast<uint32_t>(m.header.size()));
    w.write<uint64_t>(m.payload.size());
    w.writeBytes(m.header);
    w.writeBytes(m.payload);
  }
  return w.take();
}

std::vector<compression::CompressedMessage> decodeGradientBundle(const transport::Bytes& bundle,
                                                                 size_t expected) {
  common::ByteReader r(bundle, "gradient bundle");
  const uint32_t count = r.read<uint32_t>("count");
  if (count != expected) {
    GEOPIPE_THROW(ProtocolError, "gradient bundle holds ", count, " tensors, this stage has ",
                  expected, ": do all replicas run the same model slice?");
  }
  std::vector<compression::CompressedMessage> out(count);
  for (auto& m : out) {
    const uint32_t header_bytes = r.read<uint32_t>("header size");
    const uint64_t payload_bytes = r.read<uint64_t>("payload size");
    m.header = r.copyBytes(header_bytes, "compressed-tensor header");
    m.payload = r.copyBytes(payload_bytes, "payload");
  }
  r.expectEnd();
  return out;
}

}  // namespace geopipe::runtime
