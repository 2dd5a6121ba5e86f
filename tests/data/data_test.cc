// Datasets (text, token files, fortunes, synthetic) and the sampler.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <set>

#include "geopipe/error.h"
#include "src/data/dataset.h"
#include "src/data/permutation.h"
#include "src/data/sampler.h"
#include "src/tokenizer/tokenizer.h"
#include "tests/support/memory_limit.h"

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

// Every id of the dataset's stream.
std::vector<int32_t> allTokens(const TokenDataset& ds) {
  std::vector<int32_t> out(static_cast<size_t>(ds.stream().size()));
  ds.stream().copy(0, ds.stream().size(), out.data());
  return out;
}

std::string uint16File(const std::string& name, const std::vector<uint16_t>& ids) {
  return writeTemp(name, std::string(reinterpret_cast<const char*>(ids.data()), 2 * ids.size()));
}

// A sparse file of `bytes` zero bytes: no disk, no time.
std::string sparseFile(const std::string& name, int64_t bytes) {
  const std::string path = ::testing::TempDir() + name;
  EXPECT_TRUE(test_support::makeSparseFile(path, bytes)) << path;
  return path;
}

using test_support::underDataLimit;

// Text is mapped, never read into memory: a 4 GiB text file loads and
// samples in a process that may allocate 64 MiB (issue 18: a 40 GB text
// file was read whole and ended in exit 70).
TEST(Dataset, HugeTextLoadsInBoundedMemory) {
#ifdef GEOPIPE_ASAN
  GTEST_SKIP() << "ASan's shadow memory counts against RLIMIT_DATA";
#endif
  DataSpec d;
  d.kind = "text";
  d.path = sparseFile("huge.txt", int64_t{4} << 30);
  const int status = underDataLimit(int64_t{64} << 20, [&] {
    const TokenDataset ds = loadDataset(d, model(8, 256), 1);
    int32_t in[8], tgt[8];
    ds.sample(ds.numSamples() - 1, in, tgt);
    return ds.numSamples() == ((int64_t{4} << 30) - 1) / 8 && in[0] == 0 && tgt[7] == 0;
  });
  EXPECT_EQ(status, 0);
  std::remove(d.path.c_str());
}

// Tokenized text is held as ids: over kMaxTokenizedTextBytes it is refused
// before a byte is read, naming data.path and `geopipe tokenize`.
TEST(Dataset, TokenizedTextOverTheCapIsRefusedNamingTheFix) {
#ifdef GEOPIPE_ASAN
  GTEST_SKIP() << "ASan's shadow memory counts against RLIMIT_DATA";
#endif
  DataSpec d;
  d.kind = "text";
  d.tokenizer = "assets/tokenizers/gpt2";
  d.path = sparseFile("big-tokenized.txt", kMaxTokenizedTextBytes + 1);
  EXPECT_NE(tokenizedTextProblem(d).find("geopipe tokenize"), std::string::npos);
  const int status = underDataLimit(int64_t{64} << 20, [&] {
    try {
      loadDataset(d, model(8, 50257), 1);
    } catch (const ConfigError& e) {
      const std::string m = e.what();
      return m.find("data.path '" + d.path + "' has 268435457 bytes") != std::string::npos &&
             m.find("geopipe tokenize") != std::string::npos &&
             m.find("kind: tokens") != std::string::npos;
    }
    return false;
  });
  EXPECT_EQ(status, 0);
  d.kind = "tokens";  // only tokenized text has the cap
  EXPECT_EQ(tokenizedTextProblem(d), "");
  std::remove(d.path.c_str());
}

// A data path a message echoes is escaped (issue 18, common::printable):
// a control character or a byte that is not UTF-8 cannot drive the
// terminal or forge a log line.
TEST(Dataset, PathsInMessagesAreEscaped) {
  const std::string hostile = ::testing::TempDir() + "no\n\x1b[2Jsuch\xff";
  const std::string shown = ::testing::TempDir() + "no\\n\\x1b[2Jsuch\\xff";
  for (const char* kind : {"text", "tokens"}) {
    DataSpec d;
    d.kind = kind;
    d.path = hostile;
    try {
      loadDataset(d, model(8, 256), 1);
      ADD_FAILURE() << "loaded a missing file";
    } catch (const IoError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("'" + shown + "'"), std::string::npos) << kind << ": " << msg;
      for (char c : msg) EXPECT_TRUE(static_cast<unsigned char>(c) >= 0x20) << kind << ": " << msg;
    }
  }
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
  EXPECT_EQ(allTokens(ds), gpt2->encodeDocument(text));
  EXPECT_EQ(allTokens(ds).front(), 15496);  // "Hello"
  EXPECT_EQ(allTokens(ds).back(), 50256);   // <|endoftext|> ends the document
  EXPECT_EQ(ds.numSamples(), static_cast<int64_t>((allTokens(ds).size() - 1) / 4));
  int32_t in[4], tgt[4];
  ds.sample(0, in, tgt);
  EXPECT_EQ(in[1], tgt[0]);
  // A vocabulary the model cannot embed, and too few tokens for a sample.
  EXPECT_THROW(loadDataset(d, model(4, 256), 1), ConfigError);
  EXPECT_THROW(loadDataset(d, model(64, 50257), 1), ConfigError);

  d.tokenizer = "tests/tokenizer/fixtures/spm";  // Llama's convention: <s> text </s>
  ds = loadDataset(d, model(4, 1000), 1);
  EXPECT_EQ(allTokens(ds).front(), 1);
  EXPECT_EQ(allTokens(ds).back(), 2);
  EXPECT_EQ(allTokens(ds), tokenizer::loadTokenizer(d.tokenizer)->encodeDocument(text));
}

TEST(Dataset, TokenFilesBothWidthsAreMappedNotCopied) {
  std::string u16("\x01\x00\x02\x00\xff\x00\x03\x00", 8);
  DataSpec d;
  d.kind = "tokens";
  d.path = writeTemp("t16.bin", u16);
  TokenDataset ds = loadDataset(d, model(2, 256), 1);
  EXPECT_TRUE(ds.stream().mapped());
  EXPECT_EQ(allTokens(ds), (std::vector<int32_t>{1, 2, 255, 3}));
  int32_t in[2], tgt[2];
  ds.sample(0, in, tgt);
  EXPECT_EQ(std::vector<int32_t>(in, in + 2), (std::vector<int32_t>{1, 2}));
  EXPECT_EQ(std::vector<int32_t>(tgt, tgt + 2), (std::vector<int32_t>{2, 255}));
  std::string u32("\x05\x00\x01\x00\x06\x00\x00\x00\x07\x00\x00\x00", 12);
  d.path = writeTemp("t32.bin", u32);
  d.token_dtype = "uint32";
  ds = loadDataset(d, model(2, 70000), 1);
  EXPECT_TRUE(ds.stream().mapped());
  EXPECT_EQ(allTokens(ds), (std::vector<int32_t>{65541, 6, 7}));
  d.kind = "text";  // byte-level text is mapped too, one id per byte
  EXPECT_TRUE(loadDataset(d, model(2, 256), 1).stream().mapped());
}

// The vocabulary check scans blocks of 4096 ids: a bad id in the middle of
// a later block, and one in the last, partial block, are both found.
TEST(Dataset, VocabCheckFindsTheFirstBadIdAnywhere) {
  std::vector<uint16_t> ids(3 * 4096 + 100, 7);
  ids[4096 + 1234] = 300;
  ids[3 * 4096 + 50] = 400;
  DataSpec d;
  d.kind = "tokens";
  d.path = uint16File("vocab-scan.bin", ids);
  try {
    loadDataset(d, model(8, 256), 1);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("token 300 at index 5330"), std::string::npos) << e.what();
  }
  EXPECT_EQ(TokenFile(d.path, "uint16").firstAtOrAbove(301), 3 * 4096 + 50);
  EXPECT_EQ(TokenFile(d.path, "uint16").firstAtOrAbove(401), -1);
  EXPECT_NO_THROW(loadDataset(d, model(8, 401), 1));
}

// A held-out validation set is a window of the same stream: nothing is
// copied, and the two windows overlap by the one id a sample shares with
// the next.
TEST(Dataset, ValidationFractionSharesTheStream) {
  std::vector<uint16_t> ids(41);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<uint16_t>(i);
  DataSpec d;
  d.kind = "tokens";
  d.path = uint16File("val-split.bin", ids);
  d.val_fraction = 0.2;
  JobData j = loadJobData(d, model(4, 256), 1);  // 10 samples: 8 train, 2 validation
  ASSERT_TRUE(j.val.has_value());
  EXPECT_EQ(j.train.numSamples(), 8);
  EXPECT_EQ(j.val->numSamples(), 2);
  EXPECT_EQ(&j.train.stream(), &j.val->stream());
  int32_t in[4], tgt[4];
  j.val->sample(0, in, tgt);
  EXPECT_EQ(in[0], 32);
  EXPECT_EQ(tgt[3], 36);
  j.train.sample(7, in, tgt);
  EXPECT_EQ(tgt[3], 32);
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
  d.path = writeTemp("odd.bin", "abc");  // not a whole number of uint16 ids: a malformed file
  EXPECT_THROW(loadDataset(d, model(1, 256), 1), IoError);
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

// data.pack: false. Documents end at model.eos_token_id (9 here): samples
// never cross one, the last of each is padded (input 0, target -100), and a
// document of the end id alone gives none.
TEST(Dataset, UnpackedSamplesStopAtDocumentEnds) {
  //                  doc 0: 4 ids   doc 1  doc 2  doc 3: 7 ids
  const std::vector<uint16_t> ids = {1, 2, 3, 9, 4, 9, 9, 5, 6, 7, 8, 1, 2, 9, 3, 4};
  DataSpec d;
  d.kind = "tokens";
  d.path = uint16File("docs.bin", ids);
  d.pack = false;
  ModelSpec m = model(3, 16);
  EXPECT_NE(unpackedDataProblem(d, m).find("kind gpt"), std::string::npos);
  m.kind = "gpt2";
  try {
    loadDataset(d, m, 1);
    FAIL() << "the document ends are unknown without model.eos_token_id";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("model.eos_token_id"), std::string::npos) << e.what();
  }
  m.eos_token_ids = {9};
  const TokenDataset ds = loadDataset(d, m, 1);
  // doc [1 2 3 9]: one sample of 3 targets; [4 9]: 1 target; [9]: none;
  // [5 6 7 8 1 2 9]: 3 + 3 targets; the trailing [3 4] (no end id, the
  // file ends): 1 target.
  ASSERT_EQ(ds.numSamples(), 5);
  EXPECT_EQ(countTrainSamples(d, m).samples, 5);  // validate's count, without the index
  EXPECT_TRUE(ds.padded());
  const std::vector<int> want_targets = {3, 1, 3, 3, 1};
  const std::vector<std::vector<int32_t>> want_in = {
      {1, 2, 3}, {4, 0, 0}, {5, 6, 7}, {8, 1, 2}, {3, 0, 0}};
  const std::vector<std::vector<int32_t>> want_tgt = {
      {2, 3, 9}, {9, -100, -100}, {6, 7, 8}, {1, 2, 9}, {4, -100, -100}};
  for (int64_t i = 0; i < ds.numSamples(); ++i) {
    EXPECT_EQ(ds.targetsOf(i), want_targets[static_cast<size_t>(i)]) << i;
    int32_t in[3], tgt[3];
    ds.sample(i, in, tgt);
    EXPECT_EQ(std::vector<int32_t>(in, in + 3), want_in[static_cast<size_t>(i)]) << i;
    EXPECT_EQ(std::vector<int32_t>(tgt, tgt + 3), want_tgt[static_cast<size_t>(i)]) << i;
  }
  // Packed, the same file is 5 samples of 3 that cross the ends.
  d.pack = true;
  const TokenDataset packed = loadDataset(d, m, 1);
  EXPECT_FALSE(packed.padded());
  EXPECT_EQ(packed.numSamples(), 5);
  EXPECT_EQ(packed.targetsOf(1), 3);
  // num_samples keeps the first samples, and val_fraction holds out the
  // last whole ones, sharing the index.
  d.pack = false;
  d.num_samples = 4;
  d.val_fraction = 0.25;
  const JobData j = loadJobData(d, m, 1);
  EXPECT_EQ(j.train.numSamples(), 3);
  EXPECT_EQ(countTrainSamples(d, m).samples, 3);
  ASSERT_TRUE(j.val.has_value());
  EXPECT_EQ(j.val->numSamples(), 1);
  EXPECT_EQ(j.val->startOf(0), ds.startOf(3));
  EXPECT_FALSE(j.val->padded());  // its one sample is whole
  EXPECT_TRUE(j.train.padded());
}

TEST(Dataset, UnpackedIsRefusedWhereDocumentEndsAreUnknown) {
  DataSpec d;
  d.pack = false;
  ModelSpec m = model(4, 256);
  d.kind = "synthetic";
  EXPECT_NE(unpackedDataProblem(d, m), "");
  EXPECT_THROW(loadDataset(d, m, 1), ConfigError);
  d.kind = "fortunes";
  EXPECT_NE(unpackedDataProblem(d, m).find("geopipe tokenize"), std::string::npos);
  EXPECT_THROW(loadDataset(d, m, 1), ConfigError);
  // Text is one document: its last sample is padded instead of dropped.
  d.kind = "text";
  d.path = writeTemp("one-doc.txt", "abcdefghij");  // 10 bytes: 9 targets
  EXPECT_EQ(unpackedDataProblem(d, m), "");
  const TokenDataset ds = loadDataset(d, m, 1);
  ASSERT_EQ(ds.numSamples(), 3);
  EXPECT_EQ(countTrainSamples(d, m).samples, 3);
  EXPECT_EQ(ds.targetsOf(2), 1);
  int32_t in[4], tgt[4];
  ds.sample(2, in, tgt);
  EXPECT_EQ(in[0], 'i');
  EXPECT_EQ(tgt[0], 'j');
  EXPECT_EQ(tgt[1], kIgnoreTarget);
}

TEST(Permutation, IsABijectionWithItsInverse) {
  for (uint64_t n : {1u, 2u, 3u, 5u, 16u, 17u, 1000u, 4097u}) {
    for (uint64_t key : {0u, 1u, 99u}) {
      const Permutation p(n, key);
      std::vector<bool> hit(n, false);
      for (uint64_t i = 0; i < n; ++i) {
        const uint64_t v = p.at(i);
        ASSERT_LT(v, n);
        EXPECT_FALSE(hit[v]) << n << " " << key << " " << i;
        hit[v] = true;
        EXPECT_EQ(p.indexOf(v), i);
      }
    }
  }
  // Another key, another order; not the identity.
  const Permutation a(1000, 1), b(1000, 2);
  int same = 0, fixed = 0;
  for (uint64_t i = 0; i < 1000; ++i) {
    same += a.at(i) == b.at(i);
    fixed += a.at(i) == i;
  }
  EXPECT_LT(same, 20);
  EXPECT_LT(fixed, 20);
}

TEST(Sampler, MicroBatchesPartitionTheGlobalBatch) {
  for (SampleOrder order : {SampleOrder::GLOBAL, SampleOrder::BOUND}) {
    Sampler s(100, 12, 2, 3, 42, order);
    EXPECT_EQ(s.microBatchesPerReplica(), 2);
    EXPECT_EQ(s.stepsPerEpoch(), order == SampleOrder::GLOBAL ? 8 : 9);  // 100/12; 50/6 up
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

// BOUND (AC-SGD): replica r only ever meets the samples with id % R == r;
// every epoch visits every sample, the top-up of a short last step being
// the only second visits; a step never holds a sample twice; each epoch is
// another order.
TEST(Sampler, BoundShardsVisitEverySampleOfTheirReplicaEachEpoch) {
  struct Case {
    int64_t n;
    int batch, replicas, micro;
  };
  for (const Case c : {Case{48, 8, 2, 2}, Case{50, 12, 3, 2}, Case{37, 6, 2, 1}, Case{7, 6, 2, 3},
                       Case{101, 8, 4, 2}, Case{13, 4, 1, 4}}) {
    const Sampler s(c.n, c.batch, c.replicas, c.micro, 5, SampleOrder::BOUND);
    const int64_t spe = s.stepsPerEpoch();
    const int64_t largest = (c.n + c.replicas - 1) / c.replicas;
    EXPECT_EQ(s.samplesPerReplica(), largest);
    EXPECT_EQ(samplesPerReplica(c.n, c.replicas, SampleOrder::BOUND), largest);
    EXPECT_EQ(spe, (largest + c.batch / c.replicas - 1) / (c.batch / c.replicas));
    std::vector<int64_t> first_order;
    for (int64_t epoch = 0; epoch < 3; ++epoch) {
      std::map<int64_t, int> visits;
      std::vector<int64_t> order;
      for (int64_t step = epoch * spe; step < (epoch + 1) * spe; ++step) {
        std::set<int64_t> in_step;
        for (int r = 0; r < c.replicas; ++r)
          for (int m = 0; m < s.microBatchesPerReplica(); ++m)
            for (int64_t id : s.microBatch(step, r, m)) {
              ASSERT_GE(id, 0);
              ASSERT_LT(id, c.n);
              EXPECT_EQ(id % c.replicas, r) << "sample " << id << " left its replica";
              EXPECT_EQ(s.ownerOf(id), r);
              EXPECT_TRUE(in_step.insert(id).second)
                  << "sample " << id << " twice in step " << step;
              ++visits[id];
              order.push_back(id);
            }
      }
      EXPECT_EQ(static_cast<int64_t>(visits.size()), c.n) << "every sample, epoch " << epoch;
      int64_t second = 0;
      for (const auto& [id, k] : visits) {
        EXPECT_LE(k, 2);
        second += k - 1;
      }
      EXPECT_EQ(second, spe * c.batch - c.n);
      if (epoch == 0) first_order = order;
      if (epoch > 0 && c.n > 8) {
        EXPECT_NE(order, first_order) << "epoch " << epoch;
      }
    }
  }
  EXPECT_EQ(samplesPerReplica(101, 4, SampleOrder::GLOBAL), 101);
  EXPECT_EQ(Sampler(48, 8, 2, 2, 5, SampleOrder::GLOBAL).ownerOf(3), -1);
}

// lastReplicaOf agrees with a brute-force walk over every step's
// micro-batches (the newest visit wins), across epoch boundaries, for
// both orders.
TEST(Sampler, LastReplicaOfIsTheNewestVisit) {
  for (SampleOrder order : {SampleOrder::GLOBAL, SampleOrder::BOUND}) {
    // GLOBAL: 4 steps per epoch, 2 samples of each epoch skipped.
    Sampler s(50, 12, 3, 2, 7, order);
    for (int64_t next_step : {1, 3, 10}) {
      std::map<int64_t, int> newest;
      for (int64_t step = 0; step < next_step; ++step)
        for (int r = 0; r < 3; ++r)
          for (int m = 0; m < s.microBatchesPerReplica(); ++m)
            for (int64_t id : s.microBatch(step, r, m)) newest[id] = r;
      std::vector<int64_t> ids;
      for (int64_t id = 0; id < 50; ++id) ids.push_back(id);
      ids.push_back(7);    // a repeated id gets the same answer
      ids.push_back(500);  // not a sample of this data: nobody's
      const std::vector<int> got = s.lastReplicaOf(ids, next_step);
      ASSERT_EQ(got.size(), ids.size());
      for (size_t i = 0; i + 1 < ids.size(); ++i) {
        auto it = newest.find(ids[i]);
        EXPECT_EQ(got[i], it == newest.end() ? -1 : it->second)
            << "sample " << ids[i] << " next_step " << next_step;
      }
      EXPECT_EQ(got[got.size() - 2], got[7]);
      EXPECT_EQ(got.back(), -1);
    }
    EXPECT_EQ(s.lastReplicaOf({3}, 0), std::vector<int>{-1});  // nothing ran yet
  }
}

// A lookup costs what it returns, not the dataset: 2^40 samples (a table
// of them would take 8 TiB) answer at once, at any step.
TEST(Sampler, LookupsTakeConstantTimeAtAnySize) {
  const int64_t n = int64_t{1} << 40;
  for (SampleOrder order : {SampleOrder::GLOBAL, SampleOrder::BOUND}) {
    const Sampler s(n, 64, 4, 2, 9, order);
    for (int64_t step : {int64_t{0}, int64_t{123456789}, (int64_t{1} << 40)}) {
      const auto mb = s.microBatch(step, 3, 5);
      ASSERT_EQ(mb.size(), 2u);
      for (int64_t id : mb) {
        EXPECT_LT(id, n);
        if (order == SampleOrder::BOUND) {
          EXPECT_EQ(id % 4, 3);
        }
      }
      EXPECT_EQ(s.lastReplicaOf(mb, step + 1), (std::vector<int>{3, 3}));
    }
  }
}

// With one replica the bound order is the global one: a job with AC-SGD
// sees its samples in the order of the same job without it (the epoch's
// last, short step topped up instead of skipped).
TEST(Sampler, OneBoundShardIsTheGlobalOrder) {
  const Sampler global(48, 8, 1, 2, 3), bound(48, 8, 1, 2, 3, SampleOrder::BOUND);
  for (int64_t step : {0, 5, 6, 13}) EXPECT_EQ(global.globalBatch(step), bound.globalBatch(step));
}

TEST(Sampler, RejectsImpossibleBatches) {
  EXPECT_THROW(Sampler(100, 10, 3, 1, 1), ConfigError);
  EXPECT_THROW(Sampler(5, 8, 1, 1, 1), ConfigError);
  EXPECT_THROW(Sampler(5, 8, 1, 1, 1, SampleOrder::BOUND), ConfigError);
}

}  // namespace
