// Gradient bundles: the byte layout other replicas rely on, round trips,
// and every truncation, size lie and trailing byte refused with a
// ProtocolError that names the field and the offset.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "geopipe/error.h"
#include "src/runtime/gradient_bundle.h"

namespace geopipe::runtime {
namespace {

using compression::CompressedMessage;

std::vector<CompressedMessage> twoMessages() {
  std::vector<CompressedMessage> msgs(2);
  msgs[0].header = {1, 2, 3};
  msgs[0].payload = {4, 5};
  msgs[1].header = {6};
  msgs[1].payload = {};
  return msgs;
}

std::string errorOf(const transport::Bytes& b, size_t expected) {
  try {
    decodeGradientBundle(b, expected);
  } catch (const ProtocolError& e) {
    return e.what();
  }
  return "(accepted)";
}

TEST(GradientBundle, LayoutIsCountThenSizedMessages) {
  const transport::Bytes want = {2, 0, 0, 0,                          // count
                                 3, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0,  // sizes
                                 1, 2, 3, 4, 5,                       // header, payload
                                 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  // sizes
                                 6};
  EXPECT_EQ(encodeGradientBundle(twoMessages()), want);
}

TEST(GradientBundle, RoundTrips) {
  const auto msgs = twoMessages();
  const auto back = decodeGradientBundle(encodeGradientBundle(msgs), 2);
  ASSERT_EQ(back.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(back[i].header, msgs[i].header);
    EXPECT_EQ(back[i].payload, msgs[i].payload);
  }
  EXPECT_TRUE(decodeGradientBundle(encodeGradientBundle({}), 0).empty());
}

TEST(GradientBundle, TruncationNamesFieldAndOffset) {
  const transport::Bytes full = encodeGradientBundle(twoMessages());
  EXPECT_NE(errorOf(transport::Bytes(full.begin(), full.begin() + 2), 2)
                .find("gradient bundle truncated reading count at offset 0"),
            std::string::npos);
  EXPECT_NE(errorOf(transport::Bytes(full.begin(), full.begin() + 10), 2)
                .find("truncated reading payload size at offset 8"),
            std::string::npos);
  EXPECT_NE(errorOf(transport::Bytes(full.begin(), full.begin() + 18), 2)
                .find("truncated reading compressed-tensor header at offset 16"),
            std::string::npos);
  EXPECT_NE(errorOf(transport::Bytes(full.begin(), full.begin() + 20), 2)
                .find("truncated reading payload at offset 19"),
            std::string::npos);
  for (size_t n = 0; n < full.size(); ++n) {
    EXPECT_NE(errorOf(transport::Bytes(full.begin(), full.begin() + n), 2).find("truncated"),
              std::string::npos)
        << n;
  }
}

TEST(GradientBundle, LiesAndLeftoversAreRefused) {
  const transport::Bytes full = encodeGradientBundle(twoMessages());
  EXPECT_NE(errorOf(full, 3).find("holds 2 tensors, this stage has 3"), std::string::npos);
  transport::Bytes huge = full;
  const uint64_t lie = ~uint64_t{0};
  std::memcpy(huge.data() + 8, &lie, 8);  // first payload size
  EXPECT_NE(errorOf(huge, 2).find("truncated reading payload at offset 19"), std::string::npos)
      << errorOf(huge, 2);
  transport::Bytes longer = full;
  longer.push_back(0);
  EXPECT_NE(errorOf(longer, 2).find("gradient bundle has 1 trailing bytes at offset 34"),
            std::string::npos)
      << errorOf(longer, 2);
}

}  // namespace
}  // namespace geopipe::runtime
