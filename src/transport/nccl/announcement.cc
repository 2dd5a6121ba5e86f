// Encoding and bounds-checked decoding of the NCCL transport's announcements.
#include "src/transport/nccl/announcement.h"

#include "geopipe/error.h"
#include "src/common/byte_io.h"

namespace geopipe::transport {
namespace {

constexpr uint32_t kMagic = 0x4C43434Eu;  // "NCCL" little-endian

}  // namespace

Bytes encodeNcclAnnouncement(const NcclAnnouncement& a) {
  common::ByteWriter w(kNcclAnnouncementBytes);
  w.write<uint32_t>(kMagic);
  w.write<uint8_t>(static_cast<uint8_t>(a.tag.channel));
  w.writeZeros(3);
  w.write<int64_t>(a.tag.step);
  w.write<int32_t>(a.tag.micro_batch);
  w.write<int32_t>(a.tag.index);
  w.write<uint64_t>(a.size);
  w.writeZeros(32);
  return w.take();
}

NcclAnnouncement decodeNcclAnnouncement(const Bytes& bytes, const std::string& from,
                                        uint64_t max_message_bytes) {
  GEOPIPE_CHECK(bytes.size() == kNcclAnnouncementBytes, ProtocolError, "nccl transport: ", from,
                " announced a message with a ", bytes.size(), "-byte header, expected ",
                kNcclAnnouncementBytes);
  common::ByteReader r(bytes, "nccl transport: announcement from " + from);
  GEOPIPE_CHECK(r.read<uint32_t>("magic") == kMagic, ProtocolError, "nccl transport: ", from,
                " sent an announcement without the NCCL header magic");
  const uint8_t channel = r.read<uint8_t>("channel");
  GEOPIPE_CHECK(channel >= 1 && channel <= 4, ProtocolError, "nccl transport: ", from,
                " sent unknown channel ", int(channel));
  r.skip(3, "reserved");
  NcclAnnouncement a;
  a.tag.channel = static_cast<Channel>(channel);
  a.tag.step = r.read<int64_t>("step");
  a.tag.micro_batch = r.read<int32_t>("micro_batch");
  a.tag.index = r.read<int32_t>("index");
  a.size = r.read<uint64_t>("size");
  r.skip(32, "reserved");
  r.expectEnd();
  GEOPIPE_CHECK(a.size <= max_message_bytes, ProtocolError, "nccl transport: ", from,
                " announced a ", a.size, "-byte message, over the ", max_message_bytes,
                "-byte limit");
  return a;
}

}  // namespace geopipe::transport
