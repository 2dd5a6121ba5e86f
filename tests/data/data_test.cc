// Datasets (text, token files, fortunes, synthetic) and the sampler.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <set>

#include "geopipe/error.h"
#include "src/data/dataset.h"
#include "src/data/sampler.h"
#include "src/tokenizer/tokenizer.h"

using namespace geopipe;
using namespace geopipe::data;

namespace {

std::string writeTemp(const std::string& name, const std::string& bytes) {
  std::string path = ::testing::TempDir() + name;
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

ModelSpec model(int seq_len, int vocab) {
  ModelSpec m;
  m.seq_len = seq_len;
  m.vocab = vocab;
  return m;
}

TEST(Dataset, TextIsBytesCutIntoOverlappingSamples) {
  DataSpec d;
  d.kind = "text";
  d.path = writeTemp("t.txt", "abcdefghij");
  TokenDataset ds = loadDataset(d, model(3, 256), 1);
  EXPECT_EQ(ds.numSamples(), 3);  // (10 - 1) / 3
  int32_t in[3], tgt[3];
  ds.sample(1, in, tgt);
  EXPECT_EQ(in[0], 'd');
  EXPECT_EQ(tgt[2], 'g');
  EXPECT_THROW(ds.sample(3, in, tgt), ConfigError);
}

TEST(Dataset, TextWithATokenizerIsOneDocumentOfItsIds) {
  const std::string text = "Hello world. The quick brown fox jumps over the lazy dog.";
  DataSpec d;
  d.kind = "text";
  d.path = writeTemp("tokenized.txt", text);
  d.tokenizer = "assets/tokenizers/gpt2";  // tests run from the source tree
  TokenDataset ds = loadDataset(d, model(4, 50257), 1);
  const auto gpt2 = tokenizer::loadTokenizer(d.tokenizer);
  EXPECT_EQ(ds.tokens(), gpt2->encodeDocument(text));
  EXPECT_EQ(ds.tokens().front(), 15496);  // "Hello"
  EXPECT_EQ(ds.tokens().back(), 50256);   // <|endoftext|> ends the document
  EXPECT_EQ(ds.numSamples(), static_cast<int64_t>((ds.tokens().size() - 1) / 4));
  int32_t in[4], tgt[4];
  ds.sample(0, in, tgt);
  EXPECT_EQ(in[1], tgt[0]);
  // A vocabulary the model cannot embed, and too few tokens for a sample.
  EXPECT_THROW(loadDataset(d, model(4, 256), 1), ConfigError);
  EXPECT_THROW(loadDataset(d, model(64, 50257), 1), ConfigError);

  d.tokenizer = "tests/tokenizer/fixtures/spm";  // Llama's convention: <s> text </s>
  ds = loadDataset(d, model(4, 1000), 1);
  EXPECT_EQ(ds.tokens().front(), 1);
  EXPECT_EQ(ds.tokens().back(), 2);
  EXPECT_EQ(ds.tokens(), tokenizer::loadTokenizer(d.tokenizer)->encodeDocument(text));
}

TEST(Dataset, TokenFilesBothWidths) {
  std::string u16("\x01\x00\x02\x00\xff\x00\x03\x00", 8);
  DataSpec d;
  d.kind = "tokens";
  d.path = writeTemp("t16.bin", u16);
  TokenDataset ds = loadDataset(d, model(2, 256), 1);
  EXPECT_EQ(ds.tokens(), (std::vector<int32_t>{1, 2, 255, 3}));
  std::string u32("\x05\x00\x01\x00\x06\x00\x00\x00\x07\x00\x00\x00", 12);
  d.path = writeTemp("t32.bin", u32);
  d.token_dtype = "uint32";
  ds = loadDataset(d, model(2, 70000), 1);
  EXPECT_EQ(ds.tokens(), (std::vector<int32_t>{65541, 6, 7}));
}

TEST(Dataset, TokenAtOrAboveVocabNamesItsIndex) {
  DataSpec d;
  d.kind = "tokens";
  d.path = writeTemp("big.bin", std::string("\x01\x00\x00\x01\x02\x00", 6));
  try {
    loadDataset(d, model(1, 200), 1);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("token 256 at index 1"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("model.vocab (200)"), std::string::npos);
  }
}

TEST(Dataset, BadFilesGetClearErrors) {
  DataSpec d;
  d.kind = "text";
  d.path = writeTemp("empty.txt", "");
  EXPECT_THROW(loadDataset(d, model(4, 256), 1), ConfigError);
  d.path = writeTemp("short.txt", "abc");
  try {
    loadDataset(d, model(4, 256), 1);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("fewer than one sample"), std::string::npos);
  }
  d.path = "/nonexistent/file.txt";
  EXPECT_THROW(loadDataset(d, model(4, 256), 1), IoError);
  d.path = writeTemp("ok.txt", "abcdefgh");
  EXPECT_THROW(loadDataset(d, model(4, 100), 1), ConfigError);  // bytes need vocab 256
  d.kind = "tokens";
  d.path = writeTemp("odd.bin", "abc");
  EXPECT_THROW(loadDataset(d, model(1, 256), 1), ConfigError);
}

TEST(Dataset, FortunesFromTheDebianPackage) {
  DataSpec d;
  d.kind = "fortunes";
  TokenDataset ds = loadDataset(d, model(64, 256), 1);
  EXPECT_GT(ds.numSamples(), 1000);
  EXPECT_THROW(readFortunes("/nonexistent"), IoError);
}

TEST(Dataset, SyntheticIsDeterministicAndLowEntropy) {
  auto a = syntheticTokens(5000, 256, 7), b = syntheticTokens(5000, 256, 7);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, syntheticTokens(5000, 256, 8));
  // Given the previous token, at most 4 successors appear.
  std::map<int, std::set<int>> next;
  for (size_t i = 1; i < a.size(); ++i) next[a[i - 1]].insert(a[i]);
  for (const auto& [ctx, succ] : next) EXPECT_LE(succ.size(), 4u);
}

// The count validate makes before loading agrees with what loads, for every
// kind of data, the num_samples cap and both kinds of validation set.
TEST(Dataset, CountTrainSamplesIsWhatLoadJobDataGives) {
  std::string text(10007, 'x');
  for (size_t i = 0; i < text.size(); ++i) text[i] = static_cast<char>('a' + i % 26);
  std::string u16(2 * 3000, '\0');  // token 0 throughout: always below vocab
  std::vector<DataSpec> specs;
  DataSpec d;
  specs.push_back(d);  // synthetic, default size
  d.num_samples = 300;
  specs.push_back(d);
  d.val_fraction = 0.1;
  specs.push_back(d);
  d = DataSpec{};
  d.kind = "text";
  d.path = writeTemp("count.txt", text);
  specs.push_back(d);
  d.num_samples = 40;
  specs.push_back(d);
  d.num_samples = 100000;  // more than the file holds: no cap
  specs.push_back(d);
  d.num_samples = 0;
  d.val_fraction = 0.25;
  specs.push_back(d);
  d.val_fraction = 0;
  d.val_path = writeTemp("count-val.txt", text.substr(0, 500));
  specs.push_back(d);
  d = DataSpec{};
  d.kind = "tokens";
  d.path = writeTemp("count16.bin", u16);
  specs.push_back(d);
  d.token_dtype = "uint32";
  specs.push_back(d);
  d = DataSpec{};
  d.kind = "fortunes";
  d.val_fraction = 0.05;
  specs.push_back(d);
  for (int seq : {7, 64}) {
    for (const DataSpec& spec : specs) {
      const SampleCount c = countTrainSamples(spec, model(seq, 256));
      ASSERT_TRUE(c.known) << spec.kind << ": " << c.how;
      EXPECT_TRUE(c.exact);
      EXPECT_EQ(c.samples, loadJobData(spec, model(seq, 256), 1).train.numSamples())
          << spec.kind << " " << spec.path << " num_samples " << spec.num_samples << " seq " << seq
          << " val_fraction " << spec.val_fraction << " (" << c.how << ")";
    }
  }
  // With a tokenizer the tokens exist only after tokenizing: unknown, or
  // bounded by num_samples.
  d = DataSpec{};
  d.kind = "text";
  d.path = writeTemp("count-tok.txt", text);
  d.tokenizer = "assets/tokenizers/gpt2";
  SampleCount c = countTrainSamples(d, model(8, 50257));
  EXPECT_FALSE(c.known);
  EXPECT_NE(c.how.find("data.num_samples"), std::string::npos) << c.how;
  d.num_samples = 50;
  c = countTrainSamples(d, model(8, 50257));
  EXPECT_TRUE(c.known);
  EXPECT_FALSE(c.exact);
  EXPECT_EQ(c.samples, 50);
  EXPECT_GE(c.samples, loadJobData(d, model(8, 50257), 1).train.numSamples());
  d = DataSpec{};
  d.kind = "text";
  d.path = "/nonexistent/count.txt";
  EXPECT_FALSE(countTrainSamples(d, model(8, 256)).known);
}

TEST(Sampler, AcsgdSamplesPerReplicaIsTheCeiling) {
  EXPECT_EQ(acsgdSamplesPerReplica(100, 1), 100);
  EXPECT_EQ(acsgdSamplesPerReplica(100, 3), 34);
  EXPECT_EQ(acsgdSamplesPerReplica(99, 3), 33);
  EXPECT_EQ(acsgdSamplesPerReplica(2, 4), 1);
  EXPECT_EQ(acsgdSamplesPerReplica(0, 4), 0);
  EXPECT_THROW(acsgdSamplesPerReplica(10, 0), ConfigError);
}

TEST(Sampler, MicroBatchesPartitionTheGlobalBatch) {
  Sampler s(100, 12, 2, 3, 42);
  EXPECT_EQ(s.microBatchesPerReplica(), 2);
  EXPECT_EQ(s.stepsPerEpoch(), 8);
  for (int step : {0, 5, 8, 17}) {
    std::vector<int64_t> joined;
    for (int r = 0; r < 2; ++r)
      for (int m = 0; m < 2; ++m) {
        auto mb = s.microBatch(step, r, m);
        ASSERT_EQ(mb.size(), 3u);
        joined.insert(joined.end(), mb.begin(), mb.end());
      }
    EXPECT_EQ(joined, s.globalBatch(step));
  }
}

TEST(Sampler, EpochVisitsEachSampleOnceAndOrdersDiffer) {
  Sampler s(48, 8, 1, 1, 3);
  std::set<int64_t> seen;
  for (int step = 0; step < 6; ++step) {
    for (int64_t id : s.globalBatch(step)) EXPECT_TRUE(seen.insert(id).second);
  }
  EXPECT_EQ(seen.size(), 48u);
  EXPECT_NE(s.globalBatch(0), s.globalBatch(6));           // next epoch reshuffles
  EXPECT_EQ(s.globalBatch(3), Sampler(48, 8, 1, 1, 3).globalBatch(3));  // deterministic
}

// lastReplicaOf agrees with a brute-force walk over every step's
// micro-batches (the newest visit wins), across epoch boundaries.
TEST(Sampler, LastReplicaOfIsTheNewestVisit) {
  Sampler s(50, 12, 3, 2, 7);  // 4 steps per epoch, 2 samples of each epoch skipped
  const int64_t next_step = 10;
  std::map<int64_t, int> newest;
  for (int64_t step = 0; step < next_step; ++step)
    for (int r = 0; r < 3; ++r)
      for (int m = 0; m < s.microBatchesPerReplica(); ++m)
        for (int64_t id : s.microBatch(step, r, m)) newest[id] = r;
  std::vector<int64_t> ids;
  for (int64_t id = 0; id < 50; ++id) ids.push_back(id);
  ids.push_back(7);  // a repeated id gets the same answer
  const std::vector<int> got = s.lastReplicaOf(ids, next_step);
  ASSERT_EQ(got.size(), ids.size());
  int unseen = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    auto it = newest.find(ids[i]);
    EXPECT_EQ(got[i], it == newest.end() ? -1 : it->second) << "sample " << ids[i];
    unseen += got[i] < 0;
  }
  EXPECT_EQ(got.back(), got[7]);
  EXPECT_EQ(s.lastReplicaOf({3}, 0), std::vector<int>{-1});  // nothing ran yet
  // 10 steps of 12 over 50 samples visit most but (with these seeds) not all.
  EXPECT_LT(unseen, 50);
}

TEST(Sampler, RejectsImpossibleBatches) {
  EXPECT_THROW(Sampler(100, 10, 3, 1, 1), ConfigError);
  EXPECT_THROW(Sampler(5, 8, 1, 1, 1), ConfigError);
}

}  // namespace
