// `geopipe tokenize` end to end: the built binary on temp files; the bytes
// it writes, the .val split at whole documents, exit codes and messages of
// its refusals; and a job training a step on text tokenized as it loads.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "src/tokenizer/tokenizer.h"
#include "tests/cli/cli_run.h"

namespace fs = std::filesystem;

namespace {

using namespace cli_test;

// Tests run from the source tree (tests/CMakeLists.txt).
const std::string kGpt2Dir = fs::absolute("assets/tokenizers/gpt2").string();

std::string uint16le(const std::vector<int32_t>& ids) {
  std::string bytes;
  for (int32_t id : ids) {
    bytes += static_cast<char>(id & 0xFF);
    bytes += static_cast<char>((id >> 8) & 0xFF);
  }
  return bytes;
}

const geopipe::tokenizer::Tokenizer& gpt2() {
  static const auto t = geopipe::tokenizer::loadTokenizer(kGpt2Dir);
  return *t;
}

std::vector<int32_t> documents(const std::vector<std::string>& texts) {
  std::vector<int32_t> ids;
  for (const auto& t : texts) {
    const auto d = gpt2().encodeDocument(t);
    ids.insert(ids.end(), d.begin(), d.end());
  }
  return ids;
}

std::vector<std::string> listing(const TempDir& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir.path)) names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

TEST(TokenizeCommand, WritesNanoGptLayoutAndReportsThroughput) {
  TempDir dir;
  writeFile(dir.file("a.txt"), "Hello world");
  writeFile(dir.file("b.jsonl"), "{\"text\": \"one <|endoftext|> two\"}\n{\"text\": \"three\"}\n");
  const CommandResult r = runGeopipe(dir, {"tokenize", "--tokenizer", kGpt2Dir, dir.file("a.txt"),
                                           dir.file("b.jsonl"), "--out", dir.file("train.bin")});
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string bytes = readAll(dir.file("train.bin"));
  EXPECT_EQ(bytes, uint16le(documents({"Hello world", "one <|endoftext|> two", "three"})));
  // "Hello world" + <|endoftext|> by hand: 15496 995 50256, little-endian.
  EXPECT_EQ(bytes.substr(0, 6), std::string("\x88\x3c\xe3\x03\x50\xc4", 6));
  EXPECT_TRUE(contains(r.out, "tokenized 3 document(s)")) << r.out;
  EXPECT_TRUE(contains(r.out, "MB/s")) << r.out;
  EXPECT_TRUE(contains(r.out, "wrote " + dir.file("train.bin"))) << r.out;
  EXPECT_TRUE(contains(r.err, "tokenize: ")) << r.err;  // progress on stderr
  EXPECT_FALSE(contains(r.out, "tokenize: ")) << r.out;
}

TEST(TokenizeCommand, ValFractionSplitsAtWholeDocuments) {
  TempDir dir;
  std::vector<std::string> texts;
  std::vector<std::string> args = {"tokenize", "--tokenizer", kGpt2Dir};
  for (int i = 0; i < 4; ++i) {
    texts.push_back("text of document " + std::to_string(i) + std::string(i * 3, 'x'));
    writeFile(dir.file("d" + std::to_string(i) + ".txt"), texts.back());
    args.push_back(dir.file("d" + std::to_string(i) + ".txt"));
  }
  args.insert(args.end(),
              {"--out", dir.file("o.bin"), "--val-fraction", "0.5", "--dtype", "uint32"});
  const CommandResult r = runGeopipe(dir, args);
  ASSERT_EQ(r.code, 0) << r.err;
  auto uint32le = [](const std::vector<int32_t>& ids) {
    std::string b;
    for (int32_t id : ids) {
      for (int k = 0; k < 4; ++k) b += static_cast<char>((id >> (8 * k)) & 0xFF);
    }
    return b;
  };
  EXPECT_EQ(readAll(dir.file("o.bin")), uint32le(documents({texts[0], texts[1]})));
  EXPECT_EQ(readAll(dir.file("o.bin.val")), uint32le(documents({texts[2], texts[3]})));
  EXPECT_TRUE(contains(r.out, "o.bin.val")) << r.out;
}

TEST(TokenizeCommand, RefusalsNameTheProblemAndLeaveNoFiles) {
  TempDir dir;
  writeFile(dir.file("a.txt"), "text");
  writeFile(dir.file("bad.jsonl"), "{\"text\": \"ok\"}\n{\"title\": \"no text\"}\n");
  // A byte-level BPE whose ids reach past 65536.
  fs::create_directory(dir.file("big"));
  nlohmann::json vocab = nlohmann::json::parse(readAll(kGpt2Dir + "/vocab.json"));
  vocab["<|big|>"] = 70000;
  writeFile(dir.file("big/vocab.json"), vocab.dump());
  fs::copy_file(kGpt2Dir + "/merges.txt", dir.file("big/merges.txt"));
  const std::vector<std::string> before = listing(dir);

  CommandResult r = runGeopipe(dir, {"tokenize", "--tokenizer", dir.file("big"), dir.file("a.txt"),
                                     "--out", dir.file("o.bin")});
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_TRUE(contains(r.err, "70001 ids: use --dtype uint32")) << r.err;

  r = runGeopipe(dir, {"tokenize", "--tokenizer", kGpt2Dir, dir.file("bad.jsonl"), "--out",
                       dir.file("o.bin")});
  EXPECT_EQ(r.code, 4) << r.err;
  EXPECT_TRUE(contains(r.err, dir.file("bad.jsonl") + ":2: no field \"text\"")) << r.err;

  r = runGeopipe(dir, {"tokenize", "--tokenizer", kGpt2Dir, dir.file("missing.txt"), "--out",
                       dir.file("o.bin")});
  EXPECT_EQ(r.code, 4) << r.err;
  EXPECT_TRUE(contains(r.err, "input '" + dir.file("missing.txt") + "' does not exist")) << r.err;

  r = runGeopipe(dir, {"tokenize", "--tokenizer", kGpt2Dir, dir.file("a.txt"), "--out",
                       dir.file("no/such/dir/o.bin")});
  EXPECT_EQ(r.code, 4) << r.err;
  EXPECT_TRUE(contains(r.err, "cannot write")) << r.err;

  r = runGeopipe(dir, {"tokenize", "--tokenizer", kGpt2Dir, dir.file("a.txt"), "--out",
                       dir.file("o.bin"), "--val-fraction", "1"});
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_TRUE(contains(r.err, "outside [0, 1)")) << r.err;

  r = runGeopipe(dir, {"tokenize", "--tokenizer", dir.file("a.txt"), dir.file("a.txt"), "--out",
                       dir.file("o.bin")});
  EXPECT_EQ(r.code, 4) << r.err;
  EXPECT_TRUE(contains(r.err, "is not a folder")) << r.err;

  r = runGeopipe(dir, {"tokenize", "--tokenizer", kGpt2Dir, dir.file("a.txt")});
  EXPECT_EQ(r.code, 2) << r.err;  // --out is required

  EXPECT_EQ(listing(dir), before);
}

TEST(TokenizeCommand, SentencePieceRunsInTheProcessThatHasGrpcAndLibTorch) {
  // Debian's libsentencepiece exports a protobuf-lite of its own; linked
  // beside libprotobuf it crashed geopipe before main. The plugin keeps it
  // apart (src/tokenizer/sentencepiece_loader.cc).
  TempDir dir;
  writeFile(dir.file("a.txt"), "Hello world");
  const std::string spm = fs::absolute("tests/tokenizer/fixtures/spm").string();
  const CommandResult r = runGeopipe(
      dir, {"tokenize", "--tokenizer", spm, dir.file("a.txt"), "--out", dir.file("o.bin")});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto tok = geopipe::tokenizer::loadTokenizer(spm);
  EXPECT_EQ(readAll(dir.file("o.bin")), uint16le(tok->encodeDocument("Hello world")));
  EXPECT_TRUE(contains(r.out, "sentencepiece tokens")) << r.out;
}

TEST(TokenizeCommand, CtrlCStopsAfterTheCurrentDocumentAndLeavesNoFiles) {
  TempDir dir;
  {
    std::ofstream big(dir.file("big.jsonl"));
    for (int i = 0; i < 300000; ++i) {
      big << "{\"text\": \"line " << i << " of a corpus big enough to still be running\"}\n";
    }
  }
  const std::vector<std::string> before = listing(dir);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::freopen(dir.file("stderr").c_str(), "w", stderr);
    std::freopen("/dev/null", "w", stdout);
    ::execl(GEOPIPE_BINARY, GEOPIPE_BINARY, "tokenize", "--tokenizer", kGpt2Dir.c_str(),
            dir.file("big.jsonl").c_str(), "--out", dir.file("o.bin").c_str(), nullptr);
    ::_exit(127);
  }
  // The first progress line comes after the first document.
  for (int i = 0; i < 600 && !contains(readAll(dir.file("stderr")), "tokenize:"); ++i) {
    ::usleep(50 * 1000);
  }
  ::kill(pid, SIGINT);
  int status = 0;
  ::waitpid(pid, &status, 0);
  const std::string err = readAll(dir.file("stderr"));
  ASSERT_TRUE(WIFEXITED(status)) << err;
  EXPECT_EQ(WEXITSTATUS(status), 130) << err;
  EXPECT_TRUE(contains(err, "nothing written")) << err;
  fs::remove(dir.file("stderr"));
  EXPECT_EQ(listing(dir), before);
}

TEST(TokenizeCommand, TextDataWithATokenizerTrainsAStep) {
  TempDir dir;
  std::string text;
  for (int i = 0; i < 20; ++i) text += "The fox " + std::to_string(i) + " jumps over the dog. ";
  writeFile(dir.file("corpus.txt"), text);
  fs::create_directory(dir.file("tok"));
  for (const char* f : {"vocab.json", "merges.txt"}) {
    fs::copy_file(kGpt2Dir + "/" + f, dir.file(std::string("tok/") + f));
  }
  // Relative paths: the tokenizer travels with the job like data.path.
  writeFile(dir.file("job.yaml"),
            "model: {preset: none, layers: 1, hidden: 32, heads: 2, seq_len: 16, vocab: 50257}\n"
            "data: {kind: text, path: corpus.txt, tokenizer: tok}\n"
            "training: {steps: 1, global_batch: 2, micro_batch: 1}\n"
            "topology:\n"
            "  sites: [{name: local, devices: 1}]\n");
  CommandResult r = runGeopipe(dir, {"validate", dir.file("job.yaml")});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_TRUE(contains(r.out, "tokenizer " + dir.file("tok"))) << r.out;
  r = runGeopipe(dir, {"train", dir.file("job.yaml")});
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_TRUE(contains(r.out + r.err, "loss")) << r.out << r.err;

  // The same corpus through `geopipe tokenize` and data.kind tokens: the
  // same ids, so the two paths train on the same stream.
  r = runGeopipe(dir, {"tokenize", "--tokenizer", dir.file("tok"), dir.file("corpus.txt"), "--out",
                       dir.file("corpus.bin")});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(readAll(dir.file("corpus.bin")), uint16le(gpt2().encodeDocument(text)));
}

}  // namespace
