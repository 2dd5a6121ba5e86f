// The safetensors reader and writer (src/formats/safetensors.h): fp16/bf16
// conversions over every bit pattern, round trips, files written by an
// independent Python reference (tests/formats/make_reference_safetensors.py),
// what a read faults into memory, lazily opened shards, and every malformed
// input the reader refuses (each message must name the file and the tensor).
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "compression/half.h"
#include "geopipe/error.h"
#include "src/common/strings.h"
#include "src/formats/safetensors.h"

namespace geopipe::formats {
namespace {

namespace fs = std::filesystem;
using compression::bfloat16ToFloat;
using compression::floatToBFloat16;
using compression::floatToHalf;
using compression::halfToFloat;

// ------------------------------------------------------------------ helpers

struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "geopipe-formats-test-XXXXXX").string();
    path = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

uint32_t bitsOf(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
float floatOf(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

// Same bits, or both NaN with the same sign (conversions may quiet a NaN or
// change its payload; torch writes its own canonical NaNs).
bool sameFloat(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) {
    return std::isnan(a) && std::isnan(b) && std::signbit(a) == std::signbit(b);
  }
  return bitsOf(a) == bitsOf(b);
}

std::string readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

void writeFile(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  std::memcpy(s.data(), &n, 8);
  return s;
}

// A file: the header length, the header text, the data section.
std::string fileBytes(const std::string& header, const std::string& data = "") {
  return le64(header.size()) + header + data;
}

// One header entry.
std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  uint64_t begin, uint64_t end) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
         ",\"data_offsets\":[" + std::to_string(begin) + "," + std::to_string(end) + "]}";
}

// The message of the E that fn throws; a marker that fails every
// expectation on the message when it throws nothing or something else.
template <typename E>
std::string errorOf(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("<threw another type: ") + e.what() + ">";
  }
  return "<threw nothing>";
}

// Every part occurs in the message.
void expectMentions(const std::string& msg, const std::vector<std::string>& parts) {
  for (const std::string& p : parts) {
    EXPECT_NE(msg.find(p), std::string::npos) << "missing '" << p << "' in: " << msg;
  }
}

std::vector<float> randomFloats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0, 1);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Floats whose conversions are easy to get wrong: signed zeros, infinities,
// NaNs with payloads (quiet and signalling), float subnormals, the largest
// float, fp16's largest value and overflow edge, fp16 subnormals.
std::vector<float> specialFloats() {
  return {0.0f,
          -0.0f,
          1.0f,
          -1.0f,
          INFINITY,
          -INFINITY,
          floatOf(0x7FC00000),
          floatOf(0x7F800001),
          floatOf(0xFF812345),
          floatOf(0x7FFFFFFF),
          floatOf(0x00000001),
          floatOf(0x807FFFFF),
          std::numeric_limits<float>::max(),
          65504.0f,
          65520.0f,
          65519.0f,
          5.9604645e-8f,
          2.9802322e-8f,
          1e-6f,
          -3.0e38f};
}

// ---------------------------------------------------- fp16 / bf16 conversions

// The value of fp16 bit pattern h, from the definition (not from half.cc).
double halfValue(uint16_t h) {
  const int e = (h >> 10) & 31;
  const int m = h & 1023;
  const double mag = e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25);
  return (h & 0x8000) ? -mag : mag;
}

// The value of bf16 bit pattern b, from the definition.
double bf16Value(uint16_t b) {
  const int e = (b >> 7) & 255;
  const int m = b & 127;
  const double mag = e == 0 ? std::ldexp(m, -133) : std::ldexp(128 + m, e - 134);
  return (b & 0x8000) ? -mag : mag;
}

// Checks widen(b) against value(b) for all 65536 patterns, scalar and span.
void checkWidening(float (*widen)(uint16_t), void (*widenSpan)(const uint16_t*, float*, size_t),
                   double (*value)(uint16_t), int exp_shift, uint32_t exp_mask) {
  std::vector<uint16_t> all(65536);
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<uint16_t>(i);
  std::vector<float> span(all.size());
  widenSpan(all.data(), span.data(), all.size());
  for (uint32_t h = 0; h < 65536; ++h) {
    const float got = widen(static_cast<uint16_t>(h));
    const bool special = ((h >> exp_shift) & exp_mask) == exp_mask;
    const bool nan = special && (h & ((1u << exp_shift) - 1));
    if (nan) {
      ASSERT_TRUE(std::isnan(got)) << std::hex << h;
      ASSERT_EQ(std::signbit(got), (h & 0x8000) != 0) << std::hex << h;
    } else if (special) {
      ASSERT_EQ(got, (h & 0x8000) ? -INFINITY : INFINITY) << std::hex << h;
    } else {
      ASSERT_EQ(bitsOf(got), bitsOf(static_cast<float>(value(static_cast<uint16_t>(h)))))
          << std::hex << h;
    }
    ASSERT_TRUE(sameFloat(span[h], got)) << std::hex << h;
  }
}

TEST(HalfConversion, WideningIsExactForEveryBitPattern) {
  checkWidening(halfToFloat, halfToFloat, halfValue, 10, 31);
}

TEST(BFloat16Conversion, WideningIsExactForEveryBitPattern) {
  checkWidening(bfloat16ToFloat, bfloat16ToFloat, bf16Value, 7, 255);
}

// For every finite pattern h >= 0 and its successor (the next value up, inf
// after the largest finite): narrowing h's value gives h, the midpoint goes
// to the even one of the two, one float ulp either side of it to the nearer
// one; the same for negative values. Scalar and span.
void checkNarrowingTies(uint16_t (*narrow)(float),
                        void (*narrowSpan)(const float*, uint16_t*, size_t),
                        float (*widen)(uint16_t), uint16_t inf) {
  std::vector<float> in;
  std::vector<uint16_t> want;
  for (uint32_t h = 0; h < inf; ++h) {
    const double lo = widen(static_cast<uint16_t>(h));
    // The successor of the largest finite value lies one ulp above it.
    const double hi = h + 1 < inf ? widen(static_cast<uint16_t>(h + 1))
                                  : lo + (lo - widen(static_cast<uint16_t>(h - 1)));
    const float mid = static_cast<float>((lo + hi) / 2);
    ASSERT_EQ(static_cast<double>(mid), (lo + hi) / 2) << "midpoint not exact in float";
    const uint16_t even = (h & 1) ? static_cast<uint16_t>(h + 1) : static_cast<uint16_t>(h);
    for (auto [x, w] : {std::pair<float, uint32_t>{static_cast<float>(lo), h},
                        {mid, even},
                        {std::nextafter(mid, 0.0f), h},
                        {std::nextafter(mid, INFINITY), h + 1}}) {
      in.push_back(x);
      want.push_back(static_cast<uint16_t>(w));
      in.push_back(-x);
      want.push_back(static_cast<uint16_t>(w | 0x8000u));
    }
  }
  std::vector<uint16_t> span(in.size());
  narrowSpan(in.data(), span.data(), in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    ASSERT_EQ(narrow(in[i]), want[i])
        << "x = " << in[i] << " (0x" << std::hex << bitsOf(in[i]) << ")";
    ASSERT_EQ(span[i], want[i]) << "span, x = " << in[i];
  }
}

TEST(HalfConversion, NarrowingRoundsToNearestEvenAtEveryTie) {
  checkNarrowingTies(floatToHalf, floatToHalf, halfToFloat, 0x7C00);
}

TEST(BFloat16Conversion, NarrowingRoundsToNearestEvenAtEveryTie) {
  checkNarrowingTies(floatToBFloat16, floatToBFloat16, bfloat16ToFloat, 0x7F80);
}

// Random floats against the nearest value found by search over every
// finite pattern (ties to the even pattern; past the largest finite value's
// rounding edge, inf).
void checkNarrowingByValue(uint16_t (*narrow)(float), float (*widen)(uint16_t), uint16_t inf,
                           float lo_scale, float hi_scale) {
  std::vector<double> values(inf);
  for (uint32_t h = 0; h < inf; ++h) values[h] = widen(static_cast<uint16_t>(h));
  const double edge = values[inf - 1] + (values[inf - 1] - values[inf - 2]) / 2;
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> mant(1.0, 2.0);
  std::uniform_real_distribution<double> expo(std::log2(lo_scale), std::log2(hi_scale));
  for (int i = 0; i < 200000; ++i) {
    const float x = static_cast<float>(mant(rng) * std::exp2(expo(rng)));
    uint16_t want;
    if (x >= edge) {
      want = inf;
    } else {
      const size_t up = std::lower_bound(values.begin(), values.end(), x) - values.begin();
      if (up == values.size()) {
        want = static_cast<uint16_t>(inf - 1);  // above the largest, below the edge
      } else if (values[up] == x) {
        want = static_cast<uint16_t>(up);
      } else {
        const double dlo = x - values[up - 1], dhi = values[up] - x;
        want = static_cast<uint16_t>(dlo < dhi ? up - 1 : dhi < dlo ? up : (up & 1 ? up - 1 : up));
      }
    }
    ASSERT_EQ(narrow(x), want) << "x = " << x;
    ASSERT_EQ(narrow(-x), want | 0x8000) << "x = " << -x;
  }
}

TEST(HalfConversion, NarrowingPicksTheNearestValue) {
  checkNarrowingByValue(floatToHalf, halfToFloat, 0x7C00, 1e-9f, 1e6f);
}

TEST(BFloat16Conversion, NarrowingPicksTheNearestValue) {
  checkNarrowingByValue(floatToBFloat16, bfloat16ToFloat, 0x7F80, 1e-40f, 3.4e38f);
}

TEST(BFloat16Conversion, NaNStaysNaNAndOverflowIsInfinity) {
  // Signalling NaNs whose payload sits in the low 16 bits would turn into
  // inf under plain rounding.
  for (uint32_t bits : {0x7F800001u, 0xFF800001u, 0x7FC00000u, 0x7FFFFFFFu, 0x7F80FFFFu}) {
    const uint16_t b = floatToBFloat16(floatOf(bits));
    EXPECT_TRUE(std::isnan(bfloat16ToFloat(b))) << std::hex << bits << " -> " << b;
    EXPECT_EQ(b >> 15, bits >> 31);
    uint16_t s;
    const float x = floatOf(bits);
    floatToBFloat16(&x, &s, 1);
    EXPECT_EQ(s, b);
  }
  EXPECT_EQ(floatToBFloat16(std::numeric_limits<float>::max()), 0x7F80);
  EXPECT_EQ(floatToBFloat16(-std::numeric_limits<float>::max()), 0xFF80);
  EXPECT_EQ(floatToBFloat16(INFINITY), 0x7F80);
  EXPECT_EQ(floatToHalf(floatOf(0x7F800001)) & 0x7C00, 0x7C00);
  EXPECT_TRUE(std::isnan(halfToFloat(floatToHalf(floatOf(0x7F800001)))));
}

// ------------------------------------------------------------- round trips

TEST(SafetensorsRoundTrip, F32IsBitExactAndTheFileIsLaidOutAsHuggingFaceDoes) {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  const std::vector<float> special = specialFloats();
  const std::vector<float> w = randomFloats(3 * 7, 1);
  const float scalar = -1.25f;
  writeSafetensors(path,
                   {{"z.special", {static_cast<int64_t>(special.size())}, special.data()},
                    {"a.w", {3, 7}, w.data()},
                    {"scalar", {}, &scalar},
                    {"empty", {0, 4}, nullptr}},
                   DType::F32, {{"format", "pt"}});
  SafetensorsFile f(path);
  EXPECT_EQ(f.path(), path);
  EXPECT_EQ(f.metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  // Given order is file order.
  std::vector<std::string> names;
  for (const TensorInfo& t : f.tensors()) names.push_back(t.name);
  EXPECT_EQ(names, (std::vector<std::string>{"z.special", "a.w", "scalar", "empty"}));
  EXPECT_EQ(f.at("a.w").shape, (std::vector<int64_t>{3, 7}));
  EXPECT_EQ(f.at("scalar").numel(), 1);
  EXPECT_EQ(f.at("empty").numel(), 0);
  EXPECT_EQ(f.at("a.w").dtype_name, "F32");
  // The header: padded with spaces to a multiple of 8.
  const std::string bytes = readFile(path);
  EXPECT_EQ(f.dataOffset() % 8, 0u);
  EXPECT_EQ(bytes.size(), f.fileSize());
  EXPECT_EQ(bytes.substr(8, 31), "{\"__metadata__\":{\"format\":\"pt\"}");
  EXPECT_EQ(bytes[f.dataOffset() - 1] == ' ' || bytes[f.dataOffset() - 1] == '}', true);

  std::vector<float> got(special.size());
  f.readFloat("z.special", got.data(), got.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(bitsOf(got[i]), bitsOf(special[i])) << i;
  std::vector<float> got_w(w.size());
  f.readFloat("a.w", got_w.data(), got_w.size());
  EXPECT_EQ(std::memcmp(got_w.data(), w.data(), 4 * w.size()), 0);
  float s = 0;
  f.readFloat("scalar", &s, 1);
  EXPECT_EQ(s, scalar);
  f.readFloat("empty", nullptr, 0);
  EXPECT_EQ(f.bytesRead(), 4 * (special.size() + w.size() + 1));
}

TEST(SafetensorsRoundTrip, F16AndBF16ReadBackAsTheConversionOfTheWrittenFloats) {
  TempDir dir;
  std::vector<float> x = specialFloats();
  const std::vector<float> r = randomFloats(5000, 2);
  x.insert(x.end(), r.begin(), r.end());
  for (DType dt : {DType::F16, DType::BF16}) {
    const std::string path = dir.file(std::string(toString(dt)) + ".safetensors");
    writeSafetensors(path, {{"x", {static_cast<int64_t>(x.size())}, x.data()}}, dt);
    SafetensorsFile f(path);
    EXPECT_EQ(f.at("x").dtype, dt);
    EXPECT_EQ(f.at("x").byteSize(), 2 * x.size());
    std::vector<uint16_t> raw(x.size());
    f.readRaw("x", raw.data(), 2 * raw.size());
    std::vector<float> got(x.size());
    f.readFloat("x", got.data(), got.size());
    for (size_t i = 0; i < x.size(); ++i) {
      const uint16_t want = dt == DType::F16 ? floatToHalf(x[i]) : floatToBFloat16(x[i]);
      ASSERT_EQ(raw[i], want) << i;
      ASSERT_TRUE(sameFloat(got[i], dt == DType::F16 ? halfToFloat(want) : bfloat16ToFloat(want)));
      if (std::isnan(x[i])) {
        ASSERT_TRUE(std::isnan(got[i])) << "NaN must stay NaN";
      }
    }
    EXPECT_EQ(f.bytesRead(), 4 * x.size());
  }
}

TEST(SafetensorsRoundTrip, RawCopiesRewriteAByteIdenticalFile) {
  TempDir dir;
  const std::vector<float> w = randomFloats(10, 3);
  const int64_t ids[3] = {1, -2, 1LL << 40};
  const uint16_t bf[4] = {0x3F80, 0x7FC1, 0xFF80, 0x0001};
  const std::string a = dir.file("a.safetensors");
  const auto i64 = TensorToWrite::rawBytes(
      "ids", {3}, "I64", {ByteView{reinterpret_cast<const uint8_t*>(ids), sizeof(ids)}});
  const auto b16 = TensorToWrite::rawBytes(
      "bf", {2, 2}, "BF16", {ByteView{reinterpret_cast<const uint8_t*>(bf), sizeof(bf)}});
  writeSafetensors(a, {i64, {"w", {10}, w.data()}, b16}, DType::F32, {{"format", "pt"}});

  SafetensorsFile f(a);
  std::vector<TensorToWrite> copy;
  for (const TensorInfo& t : f.tensors()) {
    copy.push_back(TensorToWrite::rawBytes(t.name, t.shape, t.dtype_name, f.rawView(t.name)));
  }
  EXPECT_EQ(f.bytesRead(), 0u) << "a view copies nothing";
  const std::string b = dir.file("b.safetensors");
  writeSafetensors(b, copy, DType::F32, f.metadata());
  EXPECT_EQ(readFile(a), readFile(b));
  int64_t got[3];
  SafetensorsFile(b).readRaw("ids", got, sizeof(got));
  EXPECT_EQ(std::memcmp(got, ids, sizeof(ids)), 0);
}

TEST(SafetensorsRoundTrip, FromBytesParsesLikeTheFile) {
  TempDir dir;
  const std::vector<float> w = randomFloats(6, 4);
  const std::string path = dir.file("m.safetensors");
  writeSafetensors(path, {{"w", {2, 3}, w.data()}}, DType::BF16);
  SafetensorsFile mem = SafetensorsFile::fromBytes(readFile(path), "in-memory copy");
  SafetensorsFile file(path);
  std::vector<float> a(6), b(6);
  mem.readFloat("w", a.data(), 6);
  file.readFloat("w", b.data(), 6);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), sizeof(float) * 6), 0);
  EXPECT_EQ(mem.path(), "in-memory copy");
  // Moving keeps the mapping alive in the new owner.
  SafetensorsFile moved = std::move(file);
  moved.readFloat("w", b.data(), 6);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), sizeof(float) * 6), 0);
}

TEST(SafetensorsWriter, ReplacesTheFileAtomicallyAndLeavesNoTemporary) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  const float one = 1.0f, two = 2.0f;
  writeSafetensors(path, {{"x", {}, &one}}, DType::F32);
  SafetensorsFile before(path);  // keeps the old contents mapped
  writeSafetensors(path, {{"x", {}, &two}}, DType::F32);
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  float got = 0;
  SafetensorsFile(path).readFloat("x", &got, 1);
  EXPECT_EQ(got, 2.0f);
  before.readFloat("x", &got, 1);
  EXPECT_EQ(got, 1.0f) << "a reader of the replaced file still sees the old one";

  // A write that fails leaves the old file and no temporary.
  fs::create_directory(path + ".tmp");  // the temporary cannot be created
  expectMentions(errorOf<IoError>([&] {
                   writeSafetensors(path, {{"x", {}, &one}}, DType::F32);
                 }),
                 {path});
  fs::remove(path + ".tmp");
  SafetensorsFile(path).readFloat("x", &got, 1);
  EXPECT_EQ(got, 2.0f);
  const std::string nowhere = dir.file("no/such/dir/m.safetensors");
  expectMentions(errorOf<IoError>([&] {
                   writeSafetensors(nowhere, {{"x", {}, &one}}, DType::F32);
                 }),
                 {nowhere, "No such file"});
}

TEST(SafetensorsWriter, RefusesBadTensorsNamingTheFileAndTheTensor) {
  TempDir dir;
  const std::string path = dir.file("bad.safetensors");
  const float v[4] = {1, 2, 3, 4};
  auto refuse = [&](const std::vector<TensorToWrite>& t, DType dt,
                    const std::vector<std::string>& parts) {
    expectMentions(errorOf<IoError>([&] { writeSafetensors(path, t, dt); }), parts);
    EXPECT_FALSE(fs::exists(path));
    EXPECT_FALSE(fs::exists(path + ".tmp"));
  };
  refuse({{"a", {2}, v}, {"a", {2}, v}}, DType::F32, {path, "\"a\"", "given twice"});
  refuse({{"__metadata__", {2}, v}}, DType::F32, {"\"__metadata__\"", "reserved"});
  refuse({{"neg", {2, -1}, v}}, DType::F32, {"\"neg\"", "negative"});
  refuse({{"null", {2}, nullptr}}, DType::F16, {"\"null\"", "data is null"});
  refuse({{"other", {2}, v}}, DType::OTHER, {"\"other\"", "not OTHER"});
  const auto* bytes = reinterpret_cast<const uint8_t*>(v);
  refuse({TensorToWrite::rawBytes("raw", {3}, "I32", {bytes, 8})}, DType::F32,
         {"\"raw\"", "needs 12 bytes", "8 raw bytes"});
  refuse({TensorToWrite::rawBytes("raw", {3}, "INT4", {bytes, 12})}, DType::F32,
         {"\"raw\"", "\"INT4\"", "not a safetensors dtype"});
  TensorToWrite both("both", {2}, v);
  both.raw = v;
  both.raw_size = 8;
  both.raw_dtype = "F32";
  refuse({both}, DType::F32, {"\"both\"", "either data or raw bytes"});
  refuse({{"bad\xff utf8", {1}, v}}, DType::F32, {path, "UTF-8"});
}

// ------------------------------------------ the independent Python reference

// Runs make_reference_safetensors.py once into a temporary folder with the
// first interpreter that imports torch: GEOPIPE_PYTHON alone when it is set,
// else Debian's /usr/bin/python3 (python3-torch), then python3 on PATH.
struct Reference {
  TempDir dir;
  std::string skip;   // why the tests skip (no python3 + torch)
  std::string error;  // the script failed: the tests fail
  Reference() {
    std::vector<std::string> pythons = {"/usr/bin/python3", "python3"};
    if (const char* env = std::getenv("GEOPIPE_PYTHON")) pythons = {env};
    std::string python;
    for (const std::string& p : pythons) {
      if (std::system(("'" + p + "' -c 'import torch, numpy' >/dev/null 2>&1").c_str()) == 0) {
        python = p;
        break;
      }
    }
    if (python.empty()) {
      skip = "no python3 that imports torch and numpy among " + common::join(pythons, ", ") +
             " (set GEOPIPE_PYTHON, or install python3-torch)";
      return;
    }
    const std::string script =
        std::string(GEOPIPE_SOURCE_DIR) + "/tests/formats/make_reference_safetensors.py";
    const std::string cmd = "'" + python + "' '" + script + "' '" + dir.path.string() + "' 2>&1";
    if (std::system(cmd.c_str()) != 0) error = "failed: " + cmd;
  }
  std::string file(const std::string& name) const { return dir.file(name); }
};

const Reference& reference() {
  static const Reference r;
  return r;
}

#define REQUIRE_REFERENCE()             \
  do {                                  \
    if (!reference().skip.empty()) {    \
      GTEST_SKIP() << reference().skip; \
    }                                   \
    ASSERT_EQ(reference().error, "");   \
  } while (0)

// One line of a .expected file.
struct Expected {
  std::string name, dtype;
  std::vector<int64_t> shape;
  std::vector<uint32_t> bits;  // float32 values; empty unless F32/F16/BF16
};

std::vector<Expected> readExpected(const std::string& path) {
  std::vector<Expected> out;
  std::istringstream lines(readFile(path));
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    std::vector<std::string> fields;
    std::istringstream in(line);
    for (std::string f; std::getline(in, f, '\t');) fields.push_back(f);
    fields.resize(4);
    Expected e{fields[0], fields[1], {}, {}};
    std::istringstream shape(fields[2]);
    for (std::string d; std::getline(shape, d, ',');) e.shape.push_back(std::stoll(d));
    std::istringstream values(fields[3]);
    for (std::string v; values >> v;) e.bits.push_back(static_cast<uint32_t>(std::stoul(v, 0, 16)));
    out.push_back(e);
  }
  return out;
}

// Reads every expected tensor through `lookup`/`readFloat` and compares.
template <typename Source>
void checkAgainstExpected(const Source& src, const std::string& origin,
                          const std::vector<Expected>& expected) {
  ASSERT_FALSE(expected.empty());
  for (const Expected& e : expected) {
    SCOPED_TRACE(e.name);
    const TensorInfo t = src.info(e.name);
    EXPECT_EQ(t.dtype_name, e.dtype);
    EXPECT_EQ(t.shape, e.shape);
    std::vector<float> got(t.numel());
    if (e.dtype == "F32" || e.dtype == "F16" || e.dtype == "BF16") {
      ASSERT_EQ(e.bits.size(), got.size());
      src.readFloat(e.name, got.data(), t.numel());
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_TRUE(sameFloat(got[i], floatOf(e.bits[i])))
            << i << ": " << std::hex << bitsOf(got[i]) << " vs " << e.bits[i];
      }
    } else {
      EXPECT_EQ(t.dtype, DType::OTHER);
      expectMentions(
          errorOf<IoError>([&] { src.readFloat(e.name, got.data(), t.numel()); }),
          {origin, "\"" + e.name + "\"", "dtype " + e.dtype, "cannot be read as float32"});
      std::vector<uint8_t> raw(t.byteSize());
      src.readRaw(e.name, raw.data(), raw.size());
    }
  }
}

// SafetensorsFile with the folder's info() spelling, for checkAgainstExpected.
struct FileSource {
  const SafetensorsFile& f;
  TensorInfo info(const std::string& name) const { return f.at(name); }
  void readFloat(const std::string& n, float* out, int64_t c) const { f.readFloat(n, out, c); }
  void readRaw(const std::string& n, void* out, uint64_t s) const { f.readRaw(n, out, s); }
};

TEST(ReferenceFiles, ReadsEveryDtypeAsTorchDoes) {
  REQUIRE_REFERENCE();
  for (const char* name : {"reference.safetensors", "unaligned.safetensors"}) {
    SCOPED_TRACE(name);
    const std::string path = reference().file(name);
    SafetensorsFile f(path);
    checkAgainstExpected(FileSource{f}, path, readExpected(path + ".expected"));
    for (size_t i = 1; i < f.tensors().size(); ++i) {
      EXPECT_LE(f.tensors()[i - 1].end, f.tensors()[i].begin) << "file order";
    }
  }
  SafetensorsFile ref(reference().file("reference.safetensors"));
  EXPECT_EQ(ref.metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  EXPECT_EQ(ref.dataOffset() % 8, 0u);
  SafetensorsFile odd(reference().file("unaligned.safetensors"));
  EXPECT_TRUE(odd.metadata().empty());
  EXPECT_EQ((odd.dataOffset() + odd.at("a.f16").begin) % 2, 1u) << "meant to be unaligned";
}

TEST(ReferenceFiles, WriterRoundsF16AndBF16AsTorchDoes) {
  REQUIRE_REFERENCE();
  TempDir dir;
  SafetensorsFile ref(reference().file("reference.safetensors"));
  const TensorInfo& src = ref.at("src.f32");
  std::vector<float> x(src.numel());
  ref.readFloat("src.f32", x.data(), src.numel());
  for (auto [dt, torch_name] :
       {std::pair<DType, const char*>{DType::F16, "ref.f16"}, {DType::BF16, "ref.bf16"}}) {
    const std::string path = dir.file(std::string(torch_name) + ".safetensors");
    writeSafetensors(path, {{"x", src.shape, x.data()}}, dt);
    SafetensorsFile ours(path);
    std::vector<uint16_t> a(x.size()), b(x.size());
    ours.readRaw("x", a.data(), 2 * a.size());
    ref.readRaw(torch_name, b.data(), 2 * b.size());
    float (*widen)(uint16_t) = bfloat16ToFloat;
    if (dt == DType::F16) widen = halfToFloat;
    for (size_t i = 0; i < x.size(); ++i) {
      if (std::isnan(x[i])) {
        EXPECT_TRUE(std::isnan(widen(a[i])) && std::isnan(widen(b[i])));
      } else {
        ASSERT_EQ(a[i], b[i]) << torch_name << " [" << i << "] of " << x[i];
      }
    }
  }
}

TEST(ReferenceFiles, RawRewriteOfTheReferenceFileIsByteIdentical) {
  REQUIRE_REFERENCE();
  TempDir dir;
  const std::string path = reference().file("reference.safetensors");
  SafetensorsFile ref(path);
  std::vector<TensorToWrite> copy;
  for (const TensorInfo& t : ref.tensors()) {
    copy.push_back(TensorToWrite::rawBytes(t.name, t.shape, t.dtype_name, ref.rawView(t.name)));
  }
  const std::string out = dir.file("copy.safetensors");
  writeSafetensors(out, copy, DType::F32, ref.metadata());
  EXPECT_TRUE(readFile(out) == readFile(path)) << "the header or data differ from Python's";
}

TEST(ReferenceFiles, ShardedFolderReadsEveryShard) {
  REQUIRE_REFERENCE();
  const std::string dir = reference().file("sharded");
  SafetensorsFolder folder(dir);
  EXPECT_TRUE(folder.sharded());
  EXPECT_EQ(folder.names(), (std::vector<std::string>{"layer.0.weight", "layer.0.bias",
                                                      "layer.1.weight", "layer.1.bias"}));
  EXPECT_TRUE(folder.openedFiles().empty());
  checkAgainstExpected(folder, dir, readExpected(dir + "/expected"));
  EXPECT_EQ(folder.openedFiles().size(), 2u);
}

// ------------------------------------------------- what a read touches

// Resident bytes of this process's mappings of `path` (/proc/self/smaps Rss:
// pages mapped into this process, not the page cache that mincore sees).
uint64_t residentBytes(const std::string& path) {
  const std::string canonical = fs::canonical(path).string();
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool in_mapping = false;
  uint64_t kb = 0;
  while (std::getline(smaps, line)) {
    const size_t dash = line.find('-');
    const bool header =
        dash != std::string::npos && dash > 0 && line.find_first_not_of("0123456789abcdef") == dash;
    if (header) {
      in_mapping = line.size() >= canonical.size() &&
                   line.compare(line.size() - canonical.size(), canonical.size(), canonical) == 0;
    } else if (in_mapping && line.rfind("Rss:", 0) == 0) {
      kb += std::stoull(line.substr(4));
    }
  }
  return kb * 1024;
}

TEST(SafetensorsMmap, ReadingSomeTensorsFaultsInOnlyTheirPages) {
  TempDir dir;
  const std::string path = dir.file("big.safetensors");
  constexpr int kTensors = 32;
  constexpr int64_t kFloats = 512 * 1024;  // 2 MiB each, 64 MiB in all
  constexpr uint64_t kMiB = 1 << 20;
  {
    std::vector<std::vector<float>> data(kTensors, std::vector<float>(kFloats));
    std::vector<TensorToWrite> ts;
    for (int i = 0; i < kTensors; ++i) {
      for (int64_t j = 0; j < kFloats; ++j) data[i][j] = static_cast<float>(i * kFloats + j);
      ts.push_back({"t" + std::to_string(i), {kFloats}, data[i].data()});
    }
    writeSafetensors(path, ts, DType::F32);
  }
  SafetensorsFile f(path);
  ASSERT_GE(f.fileSize(), 64 * kMiB);
  const uint64_t after_open = residentBytes(path);
  EXPECT_LT(after_open, 256 * 1024) << "opening reads only the header";

  std::vector<float> out(kFloats);
  f.readFloat("t17", out.data(), kFloats);
  EXPECT_EQ(out[5], static_cast<float>(17 * kFloats + 5));
  const uint64_t after_one = residentBytes(path);
  // The tensor's 2 MiB, plus what the kernel maps around a fault (up to 64
  // KiB each side by default) and the header page.
  EXPECT_GE(after_one, 2 * kMiB);
  EXPECT_LT(after_one, 2 * kMiB + 512 * 1024) << "a read faulted in other tensors' pages";
  EXPECT_EQ(f.bytesRead(), 2 * kMiB);
  f.rawView("t3");  // a view touches nothing
  EXPECT_LT(residentBytes(path), 2 * kMiB + 512 * 1024);

  // The probe itself sees the whole mapping once everything is read.
  for (int i = 0; i < kTensors; ++i) f.readFloat("t" + std::to_string(i), out.data(), kFloats);
  EXPECT_GE(residentBytes(path), 63 * kMiB);
  EXPECT_EQ(f.bytesRead(), 2 * kMiB + 64 * kMiB);
}

// A two-shard folder written by our writer: a.* in shard 1, b.* in shard 2.
void writeShardedFolder(const TempDir& dir, std::vector<float>& data) {
  data = randomFloats(16, 9);
  writeSafetensors(dir.file("model-00001-of-00002.safetensors"),
                   {{"a.w", {2, 4}, data.data()}, {"a.b", {4}, data.data() + 8}}, DType::BF16);
  writeSafetensors(dir.file("model-00002-of-00002.safetensors"), {{"b.w", {4}, data.data() + 12}},
                   DType::F32);
  writeFile(dir.file("model.safetensors.index.json"),
            R"({"metadata": {"total_size": 40, "nested": [{"x": [1, 2, {"y": null}]}]},
                "weight_map": {"a.w": "model-00001-of-00002.safetensors",
                               "a.b": "model-00001-of-00002.safetensors",
                               "b.w": "model-00002-of-00002.safetensors"}})");
}

TEST(SafetensorsFolderTest, ReadingOneShardNeverOpensTheOther) {
  TempDir dir;
  std::vector<float> data;
  writeShardedFolder(dir, data);
  SafetensorsFolder folder(dir.path.string());
  EXPECT_TRUE(folder.sharded());
  EXPECT_EQ(folder.files().size(), 2u);
  EXPECT_EQ(folder.names(), (std::vector<std::string>{"a.w", "a.b", "b.w"}));
  EXPECT_TRUE(folder.has("b.w"));
  EXPECT_FALSE(folder.has("c"));
  EXPECT_TRUE(folder.openedFiles().empty()) << "has() and names() open nothing";

  EXPECT_EQ(folder.info("a.w").shape, (std::vector<int64_t>{2, 4}));
  std::vector<float> out(8);
  folder.readFloat("a.w", out.data(), 8);
  folder.readFloat("a.b", out.data(), 4);
  EXPECT_EQ(out[3], bfloat16ToFloat(floatToBFloat16(data[11])));
  const std::vector<std::string> first = {dir.file("model-00001-of-00002.safetensors")};
  EXPECT_EQ(folder.openedFiles(), first);
  EXPECT_EQ(folder.bytesRead(), 2u * 12);

  folder.readFloat("b.w", out.data(), 4);
  EXPECT_EQ(out[2], data[14]);
  EXPECT_EQ(folder.openedFiles().size(), 2u);
  EXPECT_EQ(folder.openedFiles()[1], dir.file("model-00002-of-00002.safetensors"));
  EXPECT_EQ(folder.bytesRead(), 2u * 12 + 4 * 4);
}

TEST(SafetensorsFolderTest, ThreadsOpeningShardsAtOnceOpenEachOnce) {
  TempDir dir;
  std::vector<float> data;
  writeShardedFolder(dir, data);
  SafetensorsFolder folder(dir.path.string());
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&folder, i] {
      std::vector<float> out(8);
      for (int k = 0; k < 50; ++k) {
        if ((i + k) % 2) {
          folder.readFloat("a.w", out.data(), 8);
        } else {
          folder.readFloat("b.w", out.data(), 4);
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(folder.openedFiles().size(), 2u);
  EXPECT_EQ(folder.bytesRead(), 8u * 25 * (16 + 16));
}

TEST(SafetensorsFolderTest, OneFileFolderAndModelSafetensorsWinsOverAnIndex) {
  TempDir dir;
  const std::vector<float> w = randomFloats(4, 5);
  writeSafetensors(dir.file("model.safetensors"), {{"w", {4}, w.data()}}, DType::F16);
  writeFile(dir.file("model.safetensors.index.json"), "not even json");
  SafetensorsFolder folder(dir.path.string());
  EXPECT_FALSE(folder.sharded());
  EXPECT_EQ(folder.names(), std::vector<std::string>{"w"});
  EXPECT_EQ(folder.info("w").dtype, DType::F16);
  expectMentions(errorOf<IoError>([&] { folder.info("ww"); }),
                 {dir.path.string(), "no tensor \"ww\"", "did you mean \"w\"?"});
}

// ---------------------------------------------------------- refusals

TEST(SafetensorsFolderTest, RefusesPickleOnlyFoldersSayingHowToConvert) {
  TempDir dir;
  writeFile(dir.file("pytorch_model.bin"), "PK\x03\x04 pickle");
  writeFile(dir.file("config.json"), "{}");
  expectMentions(errorOf<IoError>([&] { SafetensorsFolder f(dir.path.string()); }),
                 {dir.path.string(), "pytorch_model.bin", "only safetensors",
                  "save_pretrained(DIR, safe_serialization=True)"});
  TempDir sharded;
  writeFile(sharded.file("pytorch_model-00001-of-00002.bin"), "x");
  writeFile(sharded.file("pytorch_model-00002-of-00002.bin"), "x");
  writeFile(sharded.file("pytorch_model.bin.index.json"), "{}");
  expectMentions(errorOf<IoError>([&] { SafetensorsFolder f(sharded.path.string()); }),
                 {"pytorch_model-00001-of-00002.bin", "safe_serialization=True"});
  TempDir empty;
  writeFile(empty.file("adapter.safetensors"), "x");
  expectMentions(errorOf<IoError>([&] { SafetensorsFolder f(empty.path.string()); }),
                 {empty.path.string(), "no model.safetensors", "adapter.safetensors"});
  expectMentions(errorOf<IoError>([&] { SafetensorsFolder f(empty.file("missing")); }),
                 {empty.file("missing"), "No such file"});
  expectMentions(errorOf<IoError>([&] { SafetensorsFolder f(empty.file("adapter.safetensors")); }),
                 {"is not a folder"});
}

TEST(SafetensorsFolderTest, RefusesBadIndexesNamingTheIndexAndTheTensor) {
  TempDir dir;
  std::vector<float> data;
  writeShardedFolder(dir, data);
  const std::string index = dir.file("model.safetensors.index.json");
  auto refuse = [&](const std::string& text, const std::vector<std::string>& parts) {
    writeFile(index, text);
    std::vector<std::string> all = parts;
    all.push_back(index);
    expectMentions(errorOf<ProtocolError>([&] { SafetensorsFolder f(dir.path.string()); }), all);
  };
  refuse("{\"weight_map\": {", {"not valid JSON"});
  refuse(std::string("{\"weight_map\": {}}\0trailing", 28), {"not valid JSON", "NUL byte"});
  refuse("[]", {"must be a JSON object"});
  refuse("{\"metadata\": {}}", {"no \"weight_map\""});
  refuse("{\"weight_map\": []}", {"\"weight_map\" must be an object"});
  refuse("{\"weight_map\": {\"a.w\": 3}}", {"\"a.w\"", "shard file name"});
  refuse("{\"weight_map\": {\"a.w\": \"../model-00001-of-00002.safetensors\"}}",
         {"\"a.w\"", "not a file name"});
  refuse("{\"weight_map\": {\"a.w\": \"\"}}", {"\"a.w\"", "not a file name"});
  refuse(R"({"weight_map": {"a.w": "model-00001-of-00002.safetensors",
                            "a.w": "model-00002-of-00002.safetensors"}})",
         {"\"a.w\"", "twice"});
  refuse("{\"weight_map\": {}, \"weight_map\": {}}", {"two \"weight_map\""});
  refuse(
      "{\"metadata\": " + std::string(100, '[') + std::string(100, ']') + ", \"weight_map\": {}}",
      {"nests deeper"});

  // A shard that does not exist: named with the tensor, at construction.
  writeFile(index, R"({"weight_map": {"a.w": "model-00001-of-00002.safetensors",
                                      "c.w": "model-00003-of-00003.safetensors"}})");
  expectMentions(errorOf<IoError>([&] { SafetensorsFolder f(dir.path.string()); }),
                 {index, "\"c.w\"", "model-00003-of-00003.safetensors", "not a file"});
  // A tensor the index puts in a shard that lacks it: named when looked up.
  writeFile(index, R"({"weight_map": {"a.w": "model-00002-of-00002.safetensors"}})");
  SafetensorsFolder folder(dir.path.string());
  EXPECT_TRUE(folder.has("a.w"));
  expectMentions(errorOf<ProtocolError>([&] { folder.info("a.w"); }),
                 {index, "\"a.w\"", "model-00002-of-00002.safetensors", "has no tensor"});
}

// A file with `bytes` written to a temp dir; the message of the error its
// opening throws must name the file and each part.
class SafetensorsMalformed : public ::testing::Test {
 protected:
  TempDir dir_;
  std::string path_ = dir_.file("model.safetensors");

  template <typename E = ProtocolError>
  void refuse(const std::string& bytes, std::vector<std::string> parts) {
    writeFile(path_, bytes);
    parts.push_back(path_);
    expectMentions(errorOf<E>([&] { SafetensorsFile f(path_); }), parts);
    // The in-memory parser says the same, naming its origin.
    parts.back() = "memory";
    expectMentions(errorOf<E>([&] { SafetensorsFile::fromBytes(bytes, "memory"); }), parts);
  }
  // A header of these entries over `data_size` zero bytes.
  void refuseHeader(const std::string& header, uint64_t data_size,
                    const std::vector<std::string>& parts) {
    refuse(fileBytes(header, std::string(data_size, '\0')), parts);
  }
};

TEST_F(SafetensorsMalformed, FileShorterThanTheHeaderLength) {
  refuse("", {"0 bytes", "shorter than the 8-byte header length"});
  refuse(std::string("\x10\0\0\0\0\0\0", 7), {"7 bytes", "shorter than the 8-byte header length"});
}

TEST_F(SafetensorsMalformed, HeaderLengthPastTheEndOfTheFile) {
  refuse(le64(100) + "{}", {"header length 100", "past the end of the file (10 bytes)"});
  refuse(le64(~uint64_t{0}) + "{}", {"over the limit of 100000000 bytes"});
}

TEST_F(SafetensorsMalformed, HeaderLengthOverTheLimitEvenWhenTheFileIsThatBig) {
  // A sparse file really is 100 MB + 16 bytes long.
  const std::string header = "{}";
  writeFile(path_, le64(kMaxHeaderBytes + 8) + header);
  ASSERT_EQ(::truncate(path_.c_str(), kMaxHeaderBytes + 16), 0);
  expectMentions(errorOf<ProtocolError>([&] { SafetensorsFile f(path_); }),
                 {path_, "header length 100000008", "over the limit of 100000000 bytes",
                  "not a safetensors file"});
  // A zip (what pytorch_model.bin is) read as safetensors.
  refuse(std::string("PK\x03\x04\x14\0\0\0\0\0", 10) + std::string(100, 'x'),
         {"header length", "not a safetensors file"});
}

TEST_F(SafetensorsMalformed, HeaderNotJson) {
  refuse(fileBytes("{\"a\": {"), {"not valid JSON", "at byte"});
  refuse(fileBytes("{\"a\" 1}"), {"not valid JSON"});
  refuse(fileBytes(""), {"not valid JSON"});
  // NUL is not padding (and nlohmann's lexer would stop reading at one).
  refuse(fileBytes(std::string("{}\0\0\0\0\0\0", 8)), {"not valid JSON", "NUL byte at byte 2"});
  refuse(fileBytes(std::string("{}\0{\"x\":", 8)), {"not valid JSON", "NUL byte"});
  refuse(fileBytes("{\"bad \xff\xfe utf8\": 1}"), {"not valid JSON"});
  refuse(fileBytes("{} {}"), {"not valid JSON"});
}

TEST_F(SafetensorsMalformed, HeaderNotAnObject) {
  refuse(fileBytes("[1, 2]"), {"must be a JSON object", "found an array"});
  refuse(fileBytes("\"model\""), {"must be a JSON object", "found the string \"model\""});
  refuse(fileBytes("3"), {"must be a JSON object", "found 3"});
  refuse(fileBytes("null"), {"must be a JSON object", "found null"});
}

TEST_F(SafetensorsMalformed, EntriesOfTheWrongTypes) {
  const std::string ok = ",\"data_offsets\":[0,4]}}";
  struct Case {
    std::string header;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {"{\"t\":5}", {"tensor \"t\"", "must be an object", "found 5"}},
      {"{\"t\":null}", {"tensor \"t\"", "must be an object", "found null"}},
      {"{\"t\":[]}", {"tensor \"t\"", "must be an object", "found an array"}},
      {"{\"t\":{\"dtype\":5,\"shape\":[1]" + ok, {"tensor \"t\"", "dtype must be a string"}},
      {"{\"t\":{\"dtype\":\"f32\",\"shape\":[1]" + ok,
       {"tensor \"t\"", "dtype \"f32\" is not a safetensors dtype name"}},
      {"{\"t\":{\"dtype\":\"\",\"shape\":[1]" + ok, {"tensor \"t\"", "dtype \"\""}},
      {"{\"t\":{\"dtype\":\"F32\",\"shape\":\"1\"" + ok,
       {"tensor \"t\"", "shape must be an array", "found the string \"1\""}},
      {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1.5]" + ok,
       {"tensor \"t\"", "shape has a dimension 1.5", "not an integer"}},
      {"{\"t\":{\"dtype\":\"F32\",\"shape\":[[1]]" + ok,
       {"tensor \"t\"", "shape must be an array of non-negative integers, found an array"}},
      {"{\"t\":{\"dtype\":\"F32\",\"shape\":[true]" + ok, {"tensor \"t\"", "found true"}},
      {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}",
       {"tensor \"t\"", "data_offsets has 1 values"}},
      {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}",
       {"tensor \"t\"", "more than two values"}},
      {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{\"begin\":0}}}",
       {"tensor \"t\"", "data_offsets must be [begin, end]", "found an object"}},
      {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,-4]}}",
       {"tensor \"t\"", "data_offsets has a negative value -4"}},
      {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,1e300]}}",
       {"tensor \"t\"", "data_offsets has a value 1e300"}},
      {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,18446744073709551616]}}",
       {"tensor \"t\"", "data_offsets has a value"}},
      {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1]}}", {"tensor \"t\"", "has no \"data_offsets\""}},
      {"{\"t\":{\"shape\":[1]" + ok, {"tensor \"t\"", "has no \"dtype\""}},
      {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"offsets\":[0,4]}}",
       {"tensor \"t\"", "unknown field \"offsets\""}},
      {"{\"t\":{\"dtype\":\"F32\",\"dtype\":\"F16\",\"shape\":[1]" + ok,
       {"tensor \"t\"", "two \"dtype\" fields"}},
      {"{\"__metadata__\":[],\"t\":{}}", {"\"__metadata__\" must be an object of strings"}},
      {"{\"__metadata__\":{\"format\":1}}",
       {"\"__metadata__\" value of \"format\" must be a string", "found 1"}},
      {"{\"__metadata__\":{\"a\":\"x\",\"a\":\"y\"}}",
       {"\"__metadata__\" has the key \"a\" twice"}},
      {"{\"__metadata__\":{},\"__metadata__\":{}}", {"two \"__metadata__\" entries"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.header);
    refuseHeader(c.header, 4, c.parts);
  }
}

TEST_F(SafetensorsMalformed, OtherDtypesAreListedButNotReadAsFloat) {
  const std::string header =
      "{" + entry("ids", "I64", "[2]", 0, 16) + "," + entry("w", "F32", "[2]", 16, 24) + "," +
      entry("q", "F8_E4M3", "[3]", 24, 27) + "," + entry("f4", "F4", "[4]", 27, 29) + "," +
      entry("new", "X9_FUTURE", "[5]", 29, 30) + "}";
  writeFile(path_, fileBytes(header, std::string(30, '\1')));
  SafetensorsFile f(path_);
  ASSERT_EQ(f.tensors().size(), 5u);
  EXPECT_EQ(f.at("ids").dtype, DType::OTHER);
  EXPECT_EQ(f.at("ids").dtype_name, "I64");
  EXPECT_EQ(f.at("new").dtype_name, "X9_FUTURE") << "an unknown dtype is listed, size unchecked";
  float out[5];
  for (const auto& [name, dtype] : std::vector<std::pair<std::string, std::string>>{
           {"ids", "I64"}, {"q", "F8_E4M3"}, {"f4", "F4"}, {"new", "X9_FUTURE"}}) {
    expectMentions(
        errorOf<IoError>([&, n = name] { f.readFloat(n, out, f.at(n).numel()); }),
        {path_, "tensor \"" + name + "\"", "dtype " + dtype, "cannot be read as float32"});
  }
  uint8_t raw[16];
  f.readRaw("ids", raw, 16);
  EXPECT_EQ(raw[0], 1);
  f.readFloat("w", out, 2);
  // A sub-byte dtype must fill whole bytes.
  refuseHeader("{" + entry("f4", "F4", "[3]", 0, 2) + "}", 2,
               {"tensor \"f4\"", "3 elements of F4", "whole bytes"});
}

TEST_F(SafetensorsMalformed, ShapeWithNegativeOrOverflowingDimensions) {
  refuseHeader("{" + entry("t", "F32", "[2,-3]", 0, 24) + "}", 24,
               {"tensor \"t\"", "shape [2]... has a negative dimension -3"});
  refuseHeader("{" + entry("t", "F32", "[4294967296,4294967296]", 0, 4) + "}", 4,
               {"tensor \"t\"", "[4294967296, 4294967296] has more than 2^63 - 1 elements"});
  refuseHeader("{" + entry("t", "F64", "[2305843009213693952]", 0, 4) + "}", 4,
               {"tensor \"t\"", "needs more than 2^64 bits"});
  refuseHeader("{" + entry("t", "F32", "[9223372036854775808]", 0, 4) + "}", 4,
               {"tensor \"t\"", "over 2^63 - 1"});
  std::string dims = "[1";
  for (int i = 0; i < 64; ++i) dims += ",1";
  refuseHeader("{" + entry("t", "F32", dims + "]", 0, 4) + "}", 4,
               {"tensor \"t\"", "more than 64 dimensions"});
}

TEST_F(SafetensorsMalformed, DataOffsetsNotBeginBeforeEnd) {
  refuseHeader("{" + entry("t", "F32", "[1]", 8, 4) + "}", 8,
               {"tensor \"t\"", "data_offsets [8, 4] are not [begin, end] with begin <= end"});
}

TEST_F(SafetensorsMalformed, TruncatedFileNamesTheTensorThatRunsOff) {
  TempDir dir;
  const std::vector<float> w = randomFloats(64, 6);
  const std::string whole = dir.file("whole.safetensors");
  writeSafetensors(whole, {{"a", {32}, w.data()}, {"b", {32}, w.data() + 32}}, DType::F32);
  std::string bytes = readFile(whole);
  bytes.resize(bytes.size() - 5);
  refuse(bytes, {"tensor \"b\"", "ends at byte 256", "has only 251 bytes", "truncated"});
}

TEST_F(SafetensorsMalformed, SizeThatDoesNotMatchTheShape) {
  refuseHeader("{" + entry("t", "F32", "[2,3]", 0, 20) + "}", 24,
               {"tensor \"t\"", "data_offsets [0, 20] hold 20 bytes",
                "shape [2, 3] of F32 needs 24 bytes", "6 elements x 32 bits"});
  refuseHeader("{" + entry("t", "BF16", "[]", 0, 4) + "}", 4,
               {"tensor \"t\"", "hold 4 bytes", "needs 2 bytes"});
}

TEST_F(SafetensorsMalformed, OverlappingTensors) {
  refuseHeader("{" + entry("a", "F32", "[4]", 0, 16) + "," + entry("b", "F32", "[2]", 12, 20) + "}",
               20, {"tensors \"a\" [0, 16) and \"b\" [12, 20) overlap"});
  // Out of header order, and nested inside a long one.
  refuseHeader("{" + entry("c", "U8", "[2]", 40, 42) + "," + entry("a", "U8", "[64]", 0, 64) + "," +
                   entry("b", "U8", "[8]", 8, 16) + "}",
               64, {"\"a\" [0, 64)", "\"b\" [8, 16)", "overlap"});
  // Empty tensors share no byte, wherever they sit.
  writeFile(path_,
            fileBytes("{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("e", "F32", "[0]", 4, 4) +
                          "," + entry("f", "F32", "[0,3]", 4, 4) + "}",
                      std::string(8, '\0')));
  EXPECT_EQ(SafetensorsFile(path_).tensors().size(), 3u);
}

TEST_F(SafetensorsMalformed, DuplicateTensorNames) {
  refuseHeader("{" + entry("w", "F32", "[1]", 0, 4) + "," + entry("w", "F32", "[1]", 4, 8) + "}", 8,
               {"names tensor \"w\" twice"});
}

TEST_F(SafetensorsMalformed, GapsPaddingAndTrailingBytesAreAccepted) {
  // The reference reader refuses gaps between tensors and bytes after the
  // last; nothing here depends on their absence, so this reader takes them.
  writeFile(path_, fileBytes("{" + entry("b", "F32", "[1]", 8, 12) + "," +
                                 entry("a", "F32", "[1]", 0, 4) + "}     ",
                             std::string(20, '\0')));
  SafetensorsFile f(path_);
  ASSERT_EQ(f.tensors().size(), 2u);
  EXPECT_EQ(f.tensors()[0].name, "a") << "file order is data order";
}

TEST_F(SafetensorsMalformed, NestingAndHugeNamesCostNeitherStackNorLongMessages) {
  // 10 MB of '[' fails at the second token, without building anything.
  const auto start = std::chrono::steady_clock::now();
  refuse(fileBytes(std::string(10'000'000, '[')), {"must be a JSON object", "found an array"});
  refuse(fileBytes("{\"t\":" + std::string(10'000'000, '[')), {"tensor \"t\"", "found an array"});
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  const std::string long_name(100000, 'n');
  writeFile(path_, fileBytes("{" + entry(long_name, "F32", "[1]", 0, 8) + "}", std::string(8, 0)));
  const std::string msg = errorOf<ProtocolError>([&] { SafetensorsFile f(path_); });
  expectMentions(msg, {"nnnn\"... (100000 bytes)", "hold 8 bytes"});
  EXPECT_LT(msg.size(), 1000u);
}

TEST_F(SafetensorsMalformed, MissingFilesFoldersAndPipesAreIoErrors) {
  const std::string missing = dir_.file("missing.safetensors");
  expectMentions(errorOf<IoError>([&] { SafetensorsFile f(missing); }), {missing, "No such file"});
  expectMentions(errorOf<IoError>([&] { SafetensorsFile f(dir_.path.string()); }),
                 {dir_.path.string(), "not a regular file"});
  // A FIFO with no writer: opening must not wait for one.
  const std::string fifo = dir_.file("fifo.safetensors");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  expectMentions(errorOf<IoError>([&] { SafetensorsFile f(fifo); }), {fifo, "not a regular file"});
}

TEST_F(SafetensorsMalformed, ReadsOfMissingTensorsOrWrongSizesNameBoth) {
  const std::vector<float> w = randomFloats(6, 8);
  writeSafetensors(path_, {{"model.embed.weight", {2, 3}, w.data()}}, DType::F32);
  SafetensorsFile f(path_);
  float out[6];
  expectMentions(
      errorOf<IoError>([&] { f.readFloat("model.embed.weigth", out, 6); }),
      {path_, "no tensor \"model.embed.weigth\"", "did you mean \"model.embed.weight\"?"});
  EXPECT_EQ(f.find("model.embed.weigth"), nullptr);
  expectMentions(
      errorOf<IoError>([&] { f.readFloat("model.embed.weight", out, 5); }),
      {path_, "\"model.embed.weight\"", "has 6 elements (shape [2, 3])", "buffer given holds 5"});
  expectMentions(errorOf<IoError>([&] { f.readRaw("model.embed.weight", out, 20); }),
                 {path_, "\"model.embed.weight\"", "has 24 bytes of F32", "holds 20"});
  EXPECT_EQ(f.bytesRead(), 0u) << "failed reads copy nothing";
}

}  // namespace
}  // namespace geopipe::formats
