// The gradient bundle: every compressed gradient message of one stage in
// one blob, so a data-parallel step needs one all-gather. Torch-free (the
// fuzz build decodes bundles from random bytes).
#pragma once

#include <cstddef>
#include <vector>

#include "compression/wire_format.h"
#include "src/transport/transport.h"

namespace geopipe::runtime {

// Layout (little-endian): u32 message count, then per message u32 header
// bytes, u64 payload bytes, the header, the payload. Nothing follows the
// last message.
transport::Bytes encodeGradientBundle(const std::vector<compression::CompressedMessage>& msgs);
// Splits a bundle into its messages (their content is checked by the
// compression library's decoders). ProtocolError if it holds another number
// of messages than `expected`, is truncated (naming the field and offset)
// or has trailing bytes.
std::vector<compression::CompressedMessage> decodeGradientBundle(const transport::Bytes& bundle,
                                                                 size_t expected);

}  // namespace geopipe::runtime
