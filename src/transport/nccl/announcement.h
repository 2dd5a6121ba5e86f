// The NCCL transport's announcement: the 64 bytes a sender puts on the inner
// transport before the payload follows over NCCL. CUDA-free, so the CPU
// build tests it and the fuzz build decodes it from random bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "src/transport/transport.h"

namespace geopipe::transport {

// Layout (little-endian, 64 bytes): u32 magic "NCCL", u8 channel (1..4),
// 3 reserved bytes, i64 step, i32 micro-batch, i32 index, u64 payload
// bytes, 32 reserved bytes (written 0, not checked).
constexpr size_t kNcclAnnouncementBytes = 64;

struct NcclAnnouncement {
  Tag tag;
  uint64_t size = 0;  // payload bytes that follow over NCCL
};

Bytes encodeNcclAnnouncement(const NcclAnnouncement& a);
// `from` names the sender in errors ("rank 3"). ProtocolError when the
// bytes are not an announcement (size, magic, channel) or announce more
// than max_message_bytes.
NcclAnnouncement decodeNcclAnnouncement(const Bytes& bytes, const std::string& from,
                                        uint64_t max_message_bytes);

}  // namespace geopipe::transport
