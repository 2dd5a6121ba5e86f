// The Chrome-trace writer: the file parses as JSON (nlohmann) at every
// flush, with or without close, its events are well-formed complete events
// with named rows, and overlapping sends are spread over rows that never
// overlap.
#include "src/common/trace_writer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "geopipe/error.h"

using namespace geopipe;
using common::TraceArgs;
using common::TraceClock;
using common::TraceLane;
using common::TraceWriter;
using nlohmann::json;

namespace {

namespace fs = std::filesystem;

class TraceWriterTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        fs::temp_directory_path() / ("geopipe-trace-" + std::to_string(::getpid()) + "-" +
                                     testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  common::TraceWriterOptions options(const std::string& name) const {
    common::TraceWriterOptions o;
    o.path = (dir_ / name).string();
    o.pid = 3;
    o.process_name = "rank 3: stage 1, replica 1";
    return o;
  }
  // The file parsed; fails the test (and returns null) when it is not JSON.
  static json read(const std::string& path) {
    std::ifstream in(path);
    const std::string text((std::istreambuf_iterator<char>(in)), {});
    json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(j.is_discarded()) << path << ":\n" << text;
    return j;
  }
  static std::vector<json> spans(const json& trace) {
    std::vector<json> out;
    for (const json& e : trace["traceEvents"])
      if (e["ph"] == "X") out.push_back(e);
    return out;
  }
  // The span named `name` (with micro-batch `m` when m >= 0).
  static json find(const std::vector<json>& spans, const std::string& name, int m = -1) {
    for (const json& e : spans) {
      if (e["name"] == name && (m < 0 || e["args"]["micro_batch"] == m)) return e;
    }
    ADD_FAILURE() << "no span " << name << " " << m;
    return json::object();
  }
  // tid -> thread_name of the metadata events.
  static std::map<int, std::string> rowNames(const json& trace) {
    std::map<int, std::string> out;
    for (const json& e : trace["traceEvents"])
      if (e["ph"] == "M" && e["name"] == "thread_name") out[e["tid"]] = e["args"]["name"];
    return out;
  }

  fs::path dir_;
};

TEST_F(TraceWriterTest, WritesCompleteEventsWithNamedRowsAndArgs) {
  const auto o = options("t.json");
  const auto t0 = TraceClock::now();
  {
    TraceWriter w(o);
    w.span(TraceLane::COMPUTE, "forward", t0, t0 + std::chrono::microseconds(250), {4, 2});
    w.span(TraceLane::SEND, "send activation", t0 + std::chrono::microseconds(250),
           t0 + std::chrono::milliseconds(3), {4, 2, 7, 4096});
    w.span(TraceLane::SYNC, "data-parallel exchange", t0 + std::chrono::milliseconds(3),
           t0 + std::chrono::milliseconds(5), {4, -1, -1, 100});
    // An end before the start (clocks read on two threads) is drawn as 0.
    w.span(TraceLane::CHECKPOINT, "save \"x\"", t0, t0 - std::chrono::milliseconds(1));
    EXPECT_EQ(w.spans(), 4u);
  }
  const json j = read(o.path);
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j["displayTimeUnit"], "ms");
  const auto s = spans(j);
  ASSERT_EQ(s.size(), 4u);
  for (const json& e : s) {
    EXPECT_EQ(e["pid"], 3);
    EXPECT_TRUE(e["ts"].is_number_integer()) << e;
    EXPECT_TRUE(e["dur"].is_number_integer()) << e;
    EXPECT_GE(e["dur"].get<int64_t>(), 0) << e;
    EXPECT_TRUE(e["args"].is_object()) << e;
  }
  const json fwd = find(s, "forward"), send = find(s, "send activation"),
             sync = find(s, "data-parallel exchange"), save = find(s, "save \"x\"");
  EXPECT_EQ(fwd["cat"], "compute");
  EXPECT_EQ(fwd["dur"], 250);
  EXPECT_EQ(fwd["args"], json({{"step", 4}, {"micro_batch", 2}}));
  EXPECT_EQ(send["args"], json({{"step", 4}, {"micro_batch", 2}, {"peer", 7}, {"bytes", 4096}}));
  EXPECT_EQ(send["ts"].get<int64_t>(), fwd["ts"].get<int64_t>() + 250);
  EXPECT_EQ(sync["args"], json({{"step", 4}, {"bytes", 100}}));
  EXPECT_EQ(save["dur"], 0);
  // In order of their start; the metadata first.
  for (size_t i = 1; i < s.size(); ++i) EXPECT_LE(s[i - 1]["ts"], s[i]["ts"]);
  EXPECT_EQ(j["traceEvents"][0]["ph"], "M");
  // ts counts from the Unix epoch.
  const int64_t now_us = std::chrono::duration_cast<std::chrono::microseconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count();
  EXPECT_NEAR(double(fwd["ts"].get<int64_t>()), double(now_us), 60e6);
  // The process and every row used are named.
  bool process_named = false;
  for (const json& e : j["traceEvents"]) {
    if (e["ph"] == "M" && e["name"] == "process_name") {
      process_named = e["args"]["name"] == "rank 3: stage 1, replica 1" && e["pid"] == 3;
    }
  }
  EXPECT_TRUE(process_named) << j.dump(1);
  const auto names = rowNames(j);
  for (const json& e : s) {
    ASSERT_TRUE(names.count(e["tid"].get<int>())) << e;
  }
  EXPECT_EQ(names.at(fwd["tid"].get<int>()), "compute");
  EXPECT_EQ(names.at(send["tid"].get<int>()), "send");
  EXPECT_EQ(names.at(sync["tid"].get<int>()), "data-parallel sync");
  EXPECT_EQ(names.at(save["tid"].get<int>()), "checkpoint");
}

// Sends that overlap go to rows "send", "send 2", ...; a row is reused once
// its spans have ended, and no row ever holds two overlapping spans. Spans
// recorded inner first come out outer first.
TEST_F(TraceWriterTest, OverlappingSendsGetRowsThatNeverOverlap) {
  const auto o = options("rows.json");
  const auto t0 = TraceClock::now();
  auto at = [&](int ms) { return t0 + std::chrono::milliseconds(ms); };
  {
    TraceWriter w(o);
    w.span(TraceLane::SEND, "send activation", at(0), at(10), {0, 0});
    w.span(TraceLane::SEND, "send activation", at(2), at(12), {0, 1});
    w.span(TraceLane::SEND, "send activation", at(4), at(14), {0, 2});
    w.span(TraceLane::SEND, "send activation", at(11), at(20), {0, 3});  // row 1 is free again
    // Nested compute spans share the one compute row.
    w.span(TraceLane::COMPUTE, "decode activation", at(0), at(1), {0, 0});
    w.span(TraceLane::COMPUTE, "forward", at(0), at(3), {0, 0});
  }
  const json j = read(o.path);
  const auto s = spans(j);
  ASSERT_EQ(s.size(), 6u);
  const json s0 = find(s, "send activation", 0), s1 = find(s, "send activation", 1),
             s2 = find(s, "send activation", 2), s3 = find(s, "send activation", 3);
  EXPECT_EQ(s0["tid"], s3["tid"]);
  EXPECT_NE(s0["tid"], s1["tid"]);
  EXPECT_NE(s1["tid"], s2["tid"]);
  EXPECT_NE(s0["tid"], s2["tid"]);
  const auto names = rowNames(j);
  EXPECT_EQ(names.at(s0["tid"].get<int>()), "send");
  EXPECT_EQ(names.at(s1["tid"].get<int>()), "send 2");
  EXPECT_EQ(names.at(s2["tid"].get<int>()), "send 3");
  for (size_t a = 0; a < s.size(); ++a) {
    for (size_t b = a + 1; b < s.size(); ++b) {
      if (s[a]["tid"] != s[b]["tid"] || s[a]["cat"] != "send") continue;
      const int64_t a0 = s[a]["ts"], a1 = a0 + s[a]["dur"].get<int64_t>();
      const int64_t b0 = s[b]["ts"], b1 = b0 + s[b]["dur"].get<int64_t>();
      EXPECT_TRUE(a1 <= b0 || b1 <= a0) << s[a] << " overlaps " << s[b];
    }
  }
  const json fwd = find(s, "forward"), decode = find(s, "decode activation");
  EXPECT_EQ(fwd["tid"], decode["tid"]);
  EXPECT_EQ(fwd["ts"], decode["ts"]);
  size_t fwd_at = 0, decode_at = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i]["name"] == "forward") fwd_at = i;
    if (s[i]["name"] == "decode activation") decode_at = i;
  }
  EXPECT_LT(fwd_at, decode_at) << "the enclosing span must come first at an equal start";
}

// The file is valid JSON after every flush, without close: what a process
// killed mid-run leaves. Events after the last flush are lost, none before.
TEST_F(TraceWriterTest, FileIsValidAfterEveryFlushWithoutClose) {
  const auto o = options("early.json");
  TraceWriter w(o);
  // Made and not yet flushed: already a valid, empty timeline.
  EXPECT_TRUE(spans(read(o.path)).empty());
  const auto t0 = TraceClock::now();
  for (int step = 0; step < 3; ++step) {
    w.span(TraceLane::COMPUTE, "step", t0, t0 + std::chrono::milliseconds(1), {step});
    w.flush();
    EXPECT_EQ(spans(read(o.path)).size(), size_t(step + 1));
  }
  w.span(TraceLane::COMPUTE, "step", t0, t0, {3});  // buffered, not flushed
  EXPECT_EQ(spans(read(o.path)).size(), 3u);
  w.close();
  EXPECT_EQ(spans(read(o.path)).size(), 4u);
  w.span(TraceLane::COMPUTE, "after close", t0, t0);  // dropped
  w.close();
  EXPECT_EQ(spans(read(o.path)).size(), 4u);
}

// Memory stays bounded: past buffer_bytes the events go to the file without
// waiting for a flush, and the file is valid then too.
TEST_F(TraceWriterTest, LongRunsWriteOutPastTheBufferBound) {
  auto o = options("long.json");
  o.buffer_bytes = 4096;
  TraceWriter w(o);
  const auto t0 = TraceClock::now();
  for (int i = 0; i < 1000; ++i) {
    w.span(TraceLane::COMPUTE, "forward", t0 + std::chrono::microseconds(i),
           t0 + std::chrono::microseconds(i + 1), {0, i});
  }
  const size_t on_disk = spans(read(o.path)).size();
  EXPECT_GT(on_disk, 900u);
  EXPECT_LT(on_disk, 1000u + 1);
  w.close();
  EXPECT_EQ(spans(read(o.path)).size(), 1000u);
}

TEST_F(TraceWriterTest, UnwritableFileIsAnIoErrorNamingIt) {
  auto o = options("no-such-dir/t.json");
  try {
    TraceWriter w(o);
    FAIL() << "expected IoError";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find(o.path), std::string::npos) << e.what();
  }
}

}  // namespace
