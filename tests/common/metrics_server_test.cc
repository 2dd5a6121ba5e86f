// The live endpoint's pieces (src/common/metrics_server.h): Prometheus text
// with label values escaped per the format, sample values as the format
// spells them, and a port already listened on refused naming the field.
// (tests/cli/metrics_endpoint_test.py fetches it with another HTTP client.)
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <limits>
#include <string>

#include "geopipe/error.h"
#include "src/common/metrics_server.h"

namespace geopipe::common {
namespace {

TEST(PrometheusText, LabelValuesEscapeBackslashQuoteAndLineFeed) {
  EXPECT_EQ(escapeLabelValue("plain"), "plain");
  EXPECT_EQ(escapeLabelValue("a\\b"), "a\\\\b");
  EXPECT_EQ(escapeLabelValue("say \"hi\""), "say \\\"hi\\\"");
  EXPECT_EQ(escapeLabelValue("two\nlines"), "two\\nlines");
  EXPECT_EQ(escapeLabelValue("\\\"\n"), "\\\\\\\"\\n");
}

TEST(PrometheusText, FamiliesHaveHelpAndTypeBeforeTheirSamples) {
  PrometheusText t;
  t.family("geopipe_loss", "gauge", "Mean loss\nof a \\ step");
  t.sample(2.5);
  t.family("geopipe_bytes_total", "counter", "Bytes");
  t.sample({{"rank", "0"}, {"job", "a\"b\\c\nd"}}, 1024);
  t.sample({{"rank", "1"}}, 0);
  EXPECT_EQ(t.text(),
            "# HELP geopipe_loss Mean loss\\nof a \\\\ step\n"
            "# TYPE geopipe_loss gauge\n"
            "geopipe_loss 2.5\n"
            "# HELP geopipe_bytes_total Bytes\n"
            "# TYPE geopipe_bytes_total counter\n"
            "geopipe_bytes_total{rank=\"0\",job=\"a\\\"b\\\\c\\nd\"} 1024\n"
            "geopipe_bytes_total{rank=\"1\"} 0\n");
}

TEST(PrometheusText, ValuesRoundTripAndSpellNaNAndInf) {
  EXPECT_EQ(formatSampleValue(0.1), "0.1");
  EXPECT_EQ(formatSampleValue(123456789012.0), "123456789012");
  EXPECT_EQ(std::stod(formatSampleValue(1.0 / 3)), 1.0 / 3);
  EXPECT_EQ(formatSampleValue(std::numeric_limits<double>::quiet_NaN()), "NaN");
  EXPECT_EQ(formatSampleValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(formatSampleValue(-std::numeric_limits<double>::infinity()), "-Inf");
}

// A port another socket listens on is refused, naming the field; so is a
// port another MetricsServer holds (cpp-httplib's default SO_REUSEPORT would
// let both bind and split the scrapes between them).
TEST(MetricsServer, APortInUseIsRefusedNamingTheField) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(fd, 1), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const int taken = ntohs(addr.sin_port);
  try {
    MetricsServer server("127.0.0.1", taken, "logging.metrics_port");
    ADD_FAILURE() << "bound port " << taken << " that another socket listens on";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("logging.metrics_port: cannot serve the metrics "
                                         "endpoint on 127.0.0.1:" +
                                         std::to_string(taken)),
              std::string::npos)
        << e.what();
  }
  ::close(fd);

  MetricsServer first("127.0.0.1", 0, "logging.metrics_port");
  ASSERT_GT(first.port(), 0);
  EXPECT_THROW(MetricsServer("127.0.0.1", first.port(), "logging.metrics_port"), ConfigError);
}

}  // namespace
}  // namespace geopipe::common
