// ByteReader / ByteWriter: little-endian layout whatever the host, round
// trips of every width, and every short read refused with a ProtocolError
// that names the message, the field and the offset.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "geopipe/error.h"
#include "src/common/byte_io.h"

namespace geopipe::common {
namespace {

std::string errorOf(const std::function<void()>& f) {
  try {
    f();
  } catch (const ProtocolError& e) {
    return e.what();
  }
  return "(no ProtocolError)";
}

TEST(ByteWriter, WritesLittleEndian) {
  ByteWriter w;
  w.write<uint8_t>(0xAB);
  w.write<uint16_t>(0x0102);
  w.write<uint32_t>(0x03040506u);
  w.write<int64_t>(-2);
  w.write<float>(1.0f);  // 0x3F800000
  const std::vector<uint8_t> want = {0xAB, 0x02, 0x01, 0x06, 0x05, 0x04, 0x03, 0xFE, 0xFF, 0xFF,
                                     0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x80, 0x3F};
  EXPECT_EQ(w.bytes(), want);
}

TEST(ByteReader, RoundTripsEveryWidth) {
  ByteWriter w;
  w.write<uint8_t>(200);
  w.write<int8_t>(-100);
  w.write<uint16_t>(65000);
  w.write<int32_t>(std::numeric_limits<int32_t>::min());
  w.write<uint64_t>(0x0123456789ABCDEFull);
  w.write<double>(-0.1);
  const float fs[3] = {0.5f, -3.25f, 1e-30f};
  w.writeArray(fs, 3);
  const uint8_t raw[2] = {7, 8};
  w.writeBytes(raw, 2);
  w.writeZeros(3);
  const std::vector<uint8_t> bytes = w.take();
  ByteReader r(bytes, "test message");
  EXPECT_EQ(r.read<uint8_t>("a"), 200);
  EXPECT_EQ(r.read<int8_t>("b"), -100);
  EXPECT_EQ(r.read<uint16_t>("c"), 65000);
  EXPECT_EQ(r.read<int32_t>("d"), std::numeric_limits<int32_t>::min());
  EXPECT_EQ(r.read<uint64_t>("e"), 0x0123456789ABCDEFull);
  EXPECT_EQ(r.read<double>("f"), -0.1);
  EXPECT_EQ(r.readVector<float>(3, "g"), std::vector<float>(fs, fs + 3));
  EXPECT_EQ(r.copyBytes(2, "h"), std::vector<uint8_t>({7, 8}));
  EXPECT_EQ(r.offset(), bytes.size() - 3);
  r.skip(3, "padding");
  EXPECT_TRUE(r.atEnd());
  EXPECT_NO_THROW(r.expectEnd());
}

TEST(ByteReader, ReadsLittleEndian) {
  const std::vector<uint8_t> bytes = {0x01, 0x02, 0x03, 0x04, 0x00, 0x00, 0xC0, 0x7F};
  ByteReader r(bytes, "m");
  EXPECT_EQ(r.read<uint32_t>("x"), 0x04030201u);
  EXPECT_TRUE(std::isnan(r.read<float>("nan")));
}

TEST(ByteReader, TruncatedReadNamesMessageFieldAndOffset) {
  const std::vector<uint8_t> bytes(12, 0);
  ByteReader r(bytes, "pipeline frame");
  r.read<uint64_t>("magic");
  const std::string e = errorOf([&] { r.read<uint64_t>("step"); });
  EXPECT_EQ(
      e.rfind("pipeline frame truncated reading step at offset 8: needs 8 bytes, 4 left of 12", 0),
      0u)
      << e;
  // The failed read consumed nothing.
  EXPECT_EQ(r.offset(), 8u);
  EXPECT_EQ(r.read<uint32_t>("tail"), 0u);
  EXPECT_NE(errorOf([&] { r.read<uint8_t>("one more"); }).find("one more at offset 12"),
            std::string::npos);
}

TEST(ByteReader, EveryTruncationOfAMessageIsRefused) {
  ByteWriter w;
  w.write<uint32_t>(1);
  w.write<uint16_t>(2);
  w.write<int64_t>(3);
  const std::vector<uint8_t> full = w.take();
  for (size_t n = 0; n < full.size(); ++n) {
    std::vector<uint8_t> cut(full.begin(), full.begin() + n);
    ByteReader r(cut, "m");
    const std::string e = errorOf([&] {
      r.read<uint32_t>("a");
      r.read<uint16_t>("b");
      r.read<int64_t>("c");
    });
    const char* field = n < 4 ? "a at offset 0" : n < 6 ? "b at offset 4" : "c at offset 6";
    EXPECT_NE(e.find(std::string("m truncated reading ") + field), std::string::npos)
        << n << ": " << e;
  }
}

TEST(ByteReader, HugeCountsAreRefusedBeforeAllocating) {
  const std::vector<uint8_t> bytes(16, 0);
  ByteReader r(bytes, "bundle");
  const size_t huge = std::numeric_limits<size_t>::max() / 2;
  const std::string e = errorOf([&] { r.readVector<float>(huge, "values"); });
  EXPECT_NE(e.find("bundle truncated reading values at offset 0"), std::string::npos) << e;
  EXPECT_NE(errorOf([&] {
              r.bytes(std::numeric_limits<size_t>::max(), "span");
            }).find("truncated reading span at offset 0"),
            std::string::npos);
  EXPECT_EQ(r.remaining(), 16u);
}

TEST(ByteReader, ExpectEndNamesTrailingBytes) {
  const std::vector<uint8_t> bytes(5, 0);
  ByteReader r(bytes, "gradient bundle");
  r.read<uint32_t>("count");
  EXPECT_EQ(
      errorOf([&] { r.expectEnd(); }).rfind("gradient bundle has 1 trailing bytes at offset 4", 0),
      0u);
}

}  // namespace
}  // namespace geopipe::common
