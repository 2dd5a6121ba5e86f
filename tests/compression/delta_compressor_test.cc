// AC-SGD tests: the sender/receiver bit-identical invariant over many epochs
// of random samples and shapes, buffer stores (memory, mmap, budget,
// save/load, corruption) and the receiver's failure paths.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>

#include "compression/delta_compressor.h"
#include "geopipe/error.h"

namespace geopipe::compression {
namespace {

std::string tmpPath(const std::string& name) {
  return ::testing::TempDir() + "/geopipe_comp_" + name + "_" + std::to_string(::getpid());
}

BufferStoreOptions storeOptions(StoreKind kind, const std::string& name, uint64_t budget = 64 << 20) {
  BufferStoreOptions o;
  o.kind = kind;
  o.path = tmpPath(name);
  o.budget_bytes = budget;
  return o;
}

struct InvariantCase {
  StoreKind kind;
  BufferFormat format;
  int bits;
  Granularity granularity;
  Rounding rounding;
  int buffer_bits = 6;  // QUANTIZED buffers
};

class DeltaInvariant : public ::testing::TestWithParam<InvariantCase> {};

// Many epochs over a fixed dataset whose samples drift slowly (as activations
// do in training), random micro-batches, a shape change for some samples: the
// receiver's output and both stores must be bit-identical after every message.
TEST_P(DeltaInvariant, SenderAndReceiverBuffersStayBitIdentical) {
  const auto c = GetParam();
  DeltaCompressorOptions opt;
  opt.quantizer.bits = c.bits;
  opt.quantizer.granularity = c.granularity;
  opt.quantizer.group_size = 24;
  opt.quantizer.rounding = c.rounding;
  opt.quantizer.seed = 7;
  opt.buffer_format = c.format;
  opt.buffer_bits = c.buffer_bits;
  DeltaSender tx(opt, makeBufferStore(storeOptions(c.kind, "tx")));
  DeltaReceiver rx(opt, makeBufferStore(storeOptions(c.kind, "rx")));

  std::mt19937 rng(c.bits * 31 + static_cast<int>(c.kind));
  std::normal_distribution<float> nd(0, 1);
  const int num_samples = 24;
  std::vector<std::vector<float>> base(num_samples);
  std::vector<int64_t> seq(num_samples);
  const int64_t hidden = 16 + static_cast<int64_t>(rng() % 9);
  for (int i = 0; i < num_samples; ++i) {
    seq[i] = 1 + rng() % 7;
    base[i].resize(seq[i] * hidden);
    for (auto& v : base[i]) v = nd(rng) * 2;
  }
  uint64_t counter = 0;
  double first_err = 0, last_err = 0;
  for (int epoch = 0; epoch < 30; ++epoch) {
    if (epoch == 15) {  // a few samples change sequence length: must resend fp16
      for (int i = 0; i < 3; ++i) {
        seq[i] += 1;
        base[i].resize(seq[i] * hidden);
        for (auto& v : base[i]) v = nd(rng);
      }
    }
    std::vector<int> order(num_samples);
    for (int i = 0; i < num_samples; ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), rng);
    double err = 0;
    for (int start = 0; start < num_samples;) {
      // Micro-batch of samples sharing one sequence length.
      const int64_t len = seq[order[start]];
      std::vector<int64_t> ids;
      std::vector<float> acts;
      while (start < num_samples && seq[order[start]] == len && ids.size() < 4) {
        const int id = order[start++];
        for (auto& v : base[id]) v += 0.05f * nd(rng);  // the model moves a little
        ids.push_back(id);
        acts.insert(acts.end(), base[id].begin(), base[id].end());
      }
      const std::vector<int64_t> shape = {static_cast<int64_t>(ids.size()), len, hidden};
      auto msg = tx.encode(ids.data(), acts.data(), shape, counter++);
      std::vector<float> got;
      auto h = rx.decode(ids.data(), ids.size(), msg, got);
      ASSERT_EQ(h.shape, shape);
      ASSERT_EQ(got.size(), acts.size());
      const std::vector<int64_t> sample_shape = {len, hidden};
      for (size_t s = 0; s < ids.size(); ++s) {
        std::vector<float> mt, mr;
        ASSERT_TRUE(readBuffer(opt, tx.store(), ids[s], sample_shape, mt));
        ASSERT_TRUE(readBuffer(opt, rx.store(), ids[s], sample_shape, mr));
        ASSERT_EQ(std::memcmp(mt.data(), mr.data(), 4 * mt.size()), 0)
            << "m(xi) differs: epoch " << epoch << " sample " << ids[s];
        ASSERT_EQ(std::memcmp(mr.data(), got.data() + s * mr.size(), 4 * mr.size()), 0);
        const auto et = tx.store().find(ids[s]), er = rx.store().find(ids[s]);
        ASSERT_EQ(et.size, er.size);
        ASSERT_EQ(std::memcmp(et.data, er.data, et.size), 0) << "stored bytes differ";
      }
      for (size_t i = 0; i < acts.size(); ++i) err = std::max(err, double(std::fabs(got[i] - acts[i])));
    }
    if (epoch == 1) first_err = err;
    last_err = err;
  }
  // The receiver tracks the activations: the error stays bounded and small.
  // Not for 1 bit: Q(delta) = +-s per channel does not contract |a - m| (the
  // residual can be as large as s itself), so 1-bit AC-SGD is not stable.
  if (c.bits >= 2) {
    EXPECT_LT(last_err, 1.0) << "first-delta-epoch error " << first_err;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, DeltaInvariant,
    ::testing::Values(InvariantCase{StoreKind::MEMORY, BufferFormat::FP16, 2, Granularity::CHANNEL,
                                    Rounding::NEAREST},
                      InvariantCase{StoreKind::MEMORY, BufferFormat::FP16, 3, Granularity::TENSOR,
                                    Rounding::STOCHASTIC},
                      InvariantCase{StoreKind::MEMORY, BufferFormat::QUANTIZED, 4,
                                    Granularity::GROUP, Rounding::NEAREST},
                      InvariantCase{StoreKind::MMAP, BufferFormat::FP16, 1, Granularity::CHANNEL,
                                    Rounding::STOCHASTIC},
                      InvariantCase{StoreKind::MMAP, BufferFormat::QUANTIZED, 8,
                                    Granularity::CHANNEL, Rounding::NEAREST},
                      // The buffer widths a job can choose (compression.activations.buffer_bits).
                      InvariantCase{StoreKind::MEMORY, BufferFormat::QUANTIZED, 4,
                                    Granularity::CHANNEL, Rounding::STOCHASTIC, 8},
                      InvariantCase{StoreKind::MMAP, BufferFormat::QUANTIZED, 2,
                                    Granularity::CHANNEL, Rounding::NEAREST, 4}));

TEST(DeltaCompressor, FirstVisitIsFp16ThenDeltasAreSmall) {
  DeltaCompressorOptions opt;
  opt.quantizer.bits = 2;
  DeltaSender tx(opt, makeBufferStore({}));
  const int64_t id = 5;
  std::vector<float> a(64 * 32, 0.5f);
  auto m1 = tx.encode(&id, a.data(), {1, 64, 32});
  EXPECT_EQ(m1.payload[0], static_cast<uint8_t>(SampleKind::FULL_FP16));
  EXPECT_EQ(m1.payload.size(), 1 + 2 * a.size());
  auto m2 = tx.encode(&id, a.data(), {1, 64, 32});
  EXPECT_EQ(m2.payload[0], static_cast<uint8_t>(SampleKind::DELTA));
  EXPECT_EQ(m2.payload.size(), 1 + 4 * 32 + a.size() * 2 / 8);
}

TEST(DeltaCompressor, ReceiverRejectsBadMessages) {
  DeltaCompressorOptions opt;
  opt.quantizer.bits = 3;
  DeltaSender tx(opt, makeBufferStore({}));
  DeltaReceiver rx(opt, makeBufferStore({}));
  std::vector<int64_t> ids = {1, 2};
  std::vector<float> a(2 * 4 * 8, 1.0f);
  std::vector<float> out;
  auto first = tx.encode(ids.data(), a.data(), {2, 4, 8});
  // Wrong number of ids.
  EXPECT_THROW(rx.decode(ids.data(), 1, first, out), ProtocolError);
  rx.decode(ids.data(), 2, first, out);
  auto second = tx.encode(ids.data(), a.data(), {2, 4, 8});
  // Truncated / corrupt payload.
  auto bad = second;
  bad.payload.pop_back();
  EXPECT_THROW(rx.decode(ids.data(), 2, bad, out), ProtocolError);
  bad = second;
  bad.payload[5] ^= 1;
  EXPECT_THROW(rx.decode(ids.data(), 2, bad, out), ProtocolError);
  // A delta for a sample the receiver never saw (lost first message).
  std::vector<int64_t> other = {7, 8};
  EXPECT_THROW(rx.decode(other.data(), 2, second, out), ProtocolError);
  // Receiver configured with other bits.
  DeltaCompressorOptions opt4 = opt;
  opt4.quantizer.bits = 4;
  DeltaReceiver rx4(opt4, makeBufferStore({}));
  EXPECT_THROW(rx4.decode(ids.data(), 2, second, out), ProtocolError);
  // A plain quantized tensor is not an AC-SGD message.
  TensorCodecOptions tc;
  EXPECT_THROW(rx.decode(ids.data(), 2, encodeTensor(tc, a.data(), {2, 4, 8}), out), ProtocolError);
  // Random bytes.
  std::mt19937 rng(1);
  for (int t = 0; t < 2000; ++t) {
    CompressedMessage m = second;
    m.payload[rng() % m.payload.size()] = static_cast<uint8_t>(rng());
    m.payload.resize(rng() % (m.payload.size() + 4));
    EXPECT_THROW(rx.decode(ids.data(), 2, m, out), ProtocolError);
  }
  // The legitimate message still decodes after all that.
  EXPECT_NO_THROW(rx.decode(ids.data(), 2, second, out));
}

TEST(BufferStore, BudgetExceededIsClear) {
  for (StoreKind k : {StoreKind::MEMORY, StoreKind::MMAP}) {
    auto store = makeBufferStore(storeOptions(k, "budget", 4096));
    store->allocate(1, 2000);
    try {
      store->allocate(2, 3000);
      FAIL() << "no InfeasibleError";
    } catch (const InfeasibleError& e) {
      EXPECT_NE(std::string(e.what()).find("budget exceeded"), std::string::npos);
      EXPECT_NE(std::string(e.what()).find("buffer_budget_gb"), std::string::npos);
    }
    // Via the sender too.
    DeltaCompressorOptions opt;
    DeltaSender tx(opt, makeBufferStore(storeOptions(k, "budget2", 1024)));
    std::vector<float> a(16 * 64, 1.0f);
    const int64_t id = 3;
    EXPECT_THROW(tx.encode(&id, a.data(), {1, 16, 64}), InfeasibleError);
  }
}

// bufferEntryBytes x storeChargedBytes is what checks made before a run
// (config::acsgdBufferMemory) charge; a store filled by the real sender and
// receiver with the same samples must hold exactly that, for both kinds and
// formats, odd shapes and bit widths whose codes end mid-byte.
TEST(BufferStore, ChargedBytesMatchAStoreFilledBySenderAndReceiver) {
  struct Case {
    StoreKind kind;
    BufferFormat format;
    int buffer_bits;
    int64_t seq, hidden;
  };
  const Case cases[] = {{StoreKind::MEMORY, BufferFormat::FP16, 8, 16, 64},
                        {StoreKind::MMAP, BufferFormat::FP16, 8, 5, 13},
                        {StoreKind::MEMORY, BufferFormat::QUANTIZED, 8, 16, 64},
                        {StoreKind::MMAP, BufferFormat::QUANTIZED, 4, 7, 24},
                        {StoreKind::MEMORY, BufferFormat::QUANTIZED, 3, 5, 13},
                        {StoreKind::MMAP, BufferFormat::QUANTIZED, 1, 9, 11}};
  std::mt19937 rng(11);
  std::normal_distribution<float> nd;
  for (const Case& c : cases) {
    DeltaCompressorOptions opt;
    opt.quantizer.bits = 4;
    opt.buffer_format = c.format;
    opt.buffer_bits = c.buffer_bits;
    DeltaSender tx(opt, makeBufferStore(storeOptions(c.kind, "charge_tx")));
    DeltaReceiver rx(opt, makeBufferStore(storeOptions(c.kind, "charge_rx")));
    const int64_t samples = 37, mb = 4;
    std::vector<float> a(static_cast<size_t>(mb * c.seq * c.hidden)), out;
    for (int epoch = 0; epoch < 2; ++epoch) {  // first visits, then deltas in place
      for (int64_t first = 0; first < samples; first += mb) {
        std::vector<int64_t> ids;
        for (int64_t i = first; i < std::min(samples, first + mb); ++i) ids.push_back(i);
        for (auto& v : a) v = nd(rng);
        const std::vector<int64_t> shape = {static_cast<int64_t>(ids.size()), c.seq, c.hidden};
        rx.decode(ids.data(), ids.size(), tx.encode(ids.data(), a.data(), shape), out);
      }
    }
    const size_t entry = bufferEntryBytes(opt, {c.seq, c.hidden});
    EXPECT_EQ(tx.store().find(5).size, entry);
    const uint64_t want = storeChargedBytes(c.kind, entry, samples);
    EXPECT_EQ(tx.store().bytesUsed(), want) << "kind " << int(c.kind) << " bits " << c.buffer_bits;
    EXPECT_EQ(rx.store().bytesUsed(), want) << "kind " << int(c.kind) << " bits " << c.buffer_bits;
    // The documented layout: 8-byte header + 8 per dim + data.
    const int64_t n = c.seq * c.hidden;
    const int64_t data =
        c.format == BufferFormat::FP16 ? 2 * n : 4 * c.hidden + (n * c.buffer_bits + 7) / 8;
    EXPECT_EQ(entry, static_cast<size_t>(8 + 16 + data));
  }
  EXPECT_EQ(storeChargedBytes(StoreKind::MMAP, 100, 0), 0u);
  EXPECT_EQ(storeChargedBytes(StoreKind::MMAP, 100, 3), 128u * 2 + 100);
  EXPECT_EQ(storeChargedBytes(StoreKind::MEMORY, 100, 3), 300u);
}

TEST(BufferStore, SaveLoadRoundTripAcrossKindsResumesAcsgd) {
  DeltaCompressorOptions opt;
  opt.quantizer.bits = 2;
  DeltaSender tx(opt, makeBufferStore(storeOptions(StoreKind::MMAP, "sl_tx")));
  DeltaReceiver rx(opt, makeBufferStore({}));
  std::mt19937 rng(4);
  std::normal_distribution<float> nd;
  std::vector<int64_t> ids = {10, 11, 12};
  std::vector<float> a(3 * 8 * 16), out;
  for (auto& v : a) v = nd(rng);
  for (int k = 0; k < 3; ++k) rx.decode(ids.data(), 3, tx.encode(ids.data(), a.data(), {3, 8, 16}), out);
  const std::string ftx = tmpPath("tx.gpab"), frx = tmpPath("rx.gpab");
  tx.store().save(ftx);
  rx.store().save(frx);
  // Resume: fresh stores of the other kinds, loaded from the files.
  DeltaSender tx2(opt, makeBufferStore({}));
  DeltaReceiver rx2(opt, makeBufferStore(storeOptions(StoreKind::MMAP, "sl_rx")));
  tx2.store().load(ftx);
  rx2.store().load(frx);
  EXPECT_EQ(tx2.store().ids(), ids);
  auto msg = tx2.encode(ids.data(), a.data(), {3, 8, 16});
  EXPECT_EQ(msg.payload[0], static_cast<uint8_t>(SampleKind::DELTA)) << "state was kept";
  std::vector<float> out2;
  rx2.decode(ids.data(), 3, msg, out2);
  std::vector<float> mt;
  ASSERT_TRUE(readBuffer(opt, tx2.store(), 11, {8, 16}, mt));
  EXPECT_EQ(std::memcmp(mt.data(), out2.data() + 128, 4 * 128), 0);
  std::remove(ftx.c_str());
  std::remove(frx.c_str());
}

TEST(BufferStore, CorruptTruncatedOrMissingFileOnLoad) {
  auto store = makeBufferStore({});
  std::memset(store->allocate(1, 100), 0x11, 100);
  std::memset(store->allocate(2, 50), 0x22, 50);
  const std::string f = tmpPath("corrupt.gpab");
  store->save(f);
  std::ifstream in(f, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), {});
  auto writeFile = [&](const std::vector<char>& b) {
    std::ofstream o(f, std::ios::binary | std::ios::trunc);
    o.write(b.data(), static_cast<std::streamsize>(b.size()));
  };
  auto expectIo = [&](const std::string& what) {
    auto s = makeBufferStore({});
    try {
      s->load(f);
      FAIL() << "no IoError for " << what;
    } catch (const IoError& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
    EXPECT_EQ(s->entryCount(), 0u);
  };
  auto b = bytes;
  b[60] ^= 0x01;
  writeFile(b);
  expectIo("corrupt");
  b = bytes;
  b.resize(b.size() - 30);
  writeFile(b);
  expectIo("truncated");
  b = bytes;
  b[0] = 'X';
  writeFile(b);
  expectIo("bad magic");
  b = bytes;
  b[4] = 9;
  writeFile(b);
  expectIo("version");
  b = bytes;
  b.push_back(0);
  writeFile(b);
  expectIo("trailing");
  std::remove(f.c_str());
  expectIo("cannot open");
  // Random files.
  std::mt19937 rng(5);
  for (int t = 0; t < 300; ++t) {
    std::vector<char> r(rng() % 200);
    for (auto& c : r) c = static_cast<char>(rng());
    if (r.size() >= 8 && t % 2) {
      std::memcpy(r.data(), "GPAB\x01\0\0\0", 8);
    }
    writeFile(r);
    auto s = makeBufferStore(storeOptions(StoreKind::MEMORY, "", 1 << 20));
    EXPECT_THROW(s->load(f), Error);
  }
  std::remove(f.c_str());
}

TEST(BufferStore, MmapReusesSlotsAndClears) {
  auto s = makeBufferStore(storeOptions(StoreKind::MMAP, "reuse", 1 << 20));
  uint8_t* p = s->allocate(1, 1000);
  std::memset(p, 7, 1000);
  const auto used = s->bytesUsed();
  s->allocate(1, 1000);
  EXPECT_EQ(s->bytesUsed(), used);
  EXPECT_EQ(s->find(1).data[999], 7);
  EXPECT_EQ(s->find(2).data, nullptr);
  s->clear();
  EXPECT_EQ(s->entryCount(), 0u);
  EXPECT_EQ(s->bytesUsed(), 0u);
  BufferStoreOptions bad;
  bad.kind = StoreKind::MMAP;
  bad.path = "/nonexistent-dir/x";
  EXPECT_THROW(makeBufferStore(bad), IoError);
}

}  // namespace
}  // namespace geopipe::compression
