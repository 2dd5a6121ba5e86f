// The NCCL transport's announcement (src/transport/nccl/announcement.h),
// without a GPU: the 64-byte layout peers rely on, round trips, and every
// malformed announcement refused with a ProtocolError that says what.
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "geopipe/error.h"
#include "src/transport/nccl/announcement.h"

namespace geopipe::transport {
namespace {

std::string errorOf(const Bytes& b, uint64_t max_bytes = 1 << 20) {
  try {
    decodeNcclAnnouncement(b, "rank 3", max_bytes);
  } catch (const ProtocolError& e) {
    return e.what();
  }
  return "(accepted)";
}

NcclAnnouncement example() {
  return NcclAnnouncement{Tag{Channel::GRADIENT, -3, 7, 2}, 4096};
}

TEST(NcclAnnouncement, LayoutIsTheSixtyFourByteHeader) {
  const Bytes b = encodeNcclAnnouncement(example());
  ASSERT_EQ(b.size(), 64u);
  Bytes want(64, 0);
  const uint8_t head[] = {'N',  'C',  'C',  'L',  3,    0,    0,    0,     // magic, channel
                          0xFD, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,  // step -3
                          7,    0,    0,    0,    2,    0,    0,    0,     // micro-batch, index
                          0,    0x10, 0,    0,    0,    0,    0,    0};    // size 4096
  std::memcpy(want.data(), head, sizeof(head));
  EXPECT_EQ(b, want);
}

TEST(NcclAnnouncement, RoundTrips) {
  const NcclAnnouncement a =
      decodeNcclAnnouncement(encodeNcclAnnouncement(example()), "rank 3", 4096);
  EXPECT_EQ(a.tag, example().tag);
  EXPECT_EQ(a.size, 4096u);
}

TEST(NcclAnnouncement, MalformedAnnouncementsAreRefused) {
  const Bytes good = encodeNcclAnnouncement(example());
  EXPECT_NE(errorOf(Bytes(good.begin(), good.begin() + 63))
                .find("rank 3 announced a message with a 63-byte header"),
            std::string::npos);
  Bytes longer = good;
  longer.push_back(0);
  EXPECT_NE(errorOf(longer).find("65-byte header, expected 64"), std::string::npos);
  Bytes magic = good;
  magic[0] = 'X';
  EXPECT_NE(errorOf(magic).find("without the NCCL header magic"), std::string::npos);
  for (uint8_t channel : {0, 5, 255}) {
    Bytes b = good;
    b[4] = channel;
    EXPECT_NE(errorOf(b).find("unknown channel " + std::to_string(channel)), std::string::npos);
  }
  EXPECT_NE(errorOf(good, 4095).find("announced a 4096-byte message, over the 4095-byte limit"),
            std::string::npos)
      << errorOf(good, 4095);
}

}  // namespace
}  // namespace geopipe::transport
