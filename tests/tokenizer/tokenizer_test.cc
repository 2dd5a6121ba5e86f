// Tokenizers against their references: GPT-2 byte-level BPE against tiktoken's
// ids (tests/tokenizer/fixtures/gpt2_cases.json), SentencePiece against the
// Python module's (spm_cases.json); round trips, the loader's choices and
// refusals, invalid bytes, long words, threads.
#include <gtest/gtest.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <thread>

#include "geopipe/error.h"
#include "src/tokenizer/byte_level_bpe.h"
#include "src/tokenizer/gpt2_pretokenizer.h"
#include "src/tokenizer/token_file.h"
#include "src/tokenizer/tokenizer.h"
#include "tests/support/memory_limit.h"

using namespace geopipe;
using namespace geopipe::tokenizer;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

// Tests run from the source tree (tests/CMakeLists.txt).
constexpr const char* kGpt2Dir = "assets/tokenizers/gpt2";
constexpr const char* kSpmDir = "tests/tokenizer/fixtures/spm";

std::string readAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

void writeFile(const fs::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

struct Case {
  std::string name, text;
  std::vector<int32_t> ids;
};

std::vector<Case> loadCases(const std::string& path) {
  const json j = json::parse(readAll(path));
  std::vector<Case> cases;
  for (const auto& c : j.at("cases")) {
    cases.push_back({c.at("name"), c.at("text"), c.at("ids").get<std::vector<int32_t>>()});
  }
  return cases;
}

// A fresh folder under the test temp dir, removed at the end.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = ::testing::TempDir() + "tokenizer-XXXXXX";
    path = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string str() const { return path.string(); }
};

const Tokenizer& gpt2() {
  static const std::unique_ptr<Tokenizer> t = loadTokenizer(kGpt2Dir);
  return *t;
}

const Tokenizer& spm() {
  static const std::unique_ptr<Tokenizer> t = loadTokenizer(kSpmDir);
  return *t;
}

// GPT-2's vocab.json + merges.txt written as a Hugging Face tokenizer.json,
// merges in the "a b" form or the newer ["a", "b"] form.
json gpt2TokenizerJson(bool pair_merges) {
  json root;
  root["version"] = "1.0";
  root["truncation"] = nullptr;
  root["padding"] = nullptr;
  root["added_tokens"] = json::array({{{"id", 50256},
                                       {"content", "<|endoftext|>"},
                                       {"single_word", false},
                                       {"lstrip", false},
                                       {"rstrip", false},
                                       {"normalized", true},
                                       {"special", true}}});
  root["normalizer"] = nullptr;
  root["pre_tokenizer"] = {{"type", "ByteLevel"},
                           {"add_prefix_space", false},
                           {"trim_offsets", true},
                           {"use_regex", true}};
  root["post_processor"] = {{"type", "ByteLevel"},
                            {"add_prefix_space", true},
                            {"trim_offsets", false},
                            {"use_regex", true}};
  root["decoder"] = {{"type", "ByteLevel"},
                     {"add_prefix_space", true},
                     {"trim_offsets", true},
                     {"use_regex", true}};
  json model;
  model["type"] = "BPE";
  model["dropout"] = nullptr;
  model["unk_token"] = nullptr;
  model["continuing_subword_prefix"] = "";
  model["end_of_word_suffix"] = "";
  model["fuse_unk"] = false;
  model["byte_fallback"] = false;
  model["vocab"] = json::parse(readAll(std::string(kGpt2Dir) + "/vocab.json"));
  json merges = json::array();
  std::istringstream lines(readAll(std::string(kGpt2Dir) + "/merges.txt"));
  std::string line;
  std::getline(lines, line);  // #version
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    const size_t sp = line.find(' ');
    if (pair_merges) {
      merges.push_back(json::array({line.substr(0, sp), line.substr(sp + 1)}));
    } else {
      merges.push_back(line);
    }
  }
  model["merges"] = merges;
  root["model"] = model;
  return root;
}

// ---------------------------------------------------------------------------
// GPT-2 against tiktoken, from each file form.

enum class Gpt2Source { VOCAB_MERGES, TOKENIZER_JSON_STRINGS, TOKENIZER_JSON_PAIRS };

class Gpt2Reference : public ::testing::TestWithParam<Gpt2Source> {};

TEST_P(Gpt2Reference, EveryHardStringMatchesTiktokenAndRoundTrips) {
  TempDir dir;
  std::unique_ptr<Tokenizer> owned;
  const Tokenizer* t = &gpt2();
  if (GetParam() != Gpt2Source::VOCAB_MERGES) {
    const bool pairs = GetParam() == Gpt2Source::TOKENIZER_JSON_PAIRS;
    writeFile(dir.path / "tokenizer.json", gpt2TokenizerJson(pairs).dump());
    EXPECT_EQ(tokenizerFiles(dir.str()),
              std::vector<std::string>{(dir.path / "tokenizer.json").string()});
    owned = loadTokenizer(dir.str());
    t = owned.get();
  }
  const auto cases = loadCases("tests/tokenizer/fixtures/gpt2_cases.json");
  ASSERT_GE(cases.size(), 50u);
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    EXPECT_EQ(t->encode(c.text), c.ids);
    EXPECT_EQ(t->decode(c.ids), c.text);
  }
  EXPECT_EQ(t->kind(), "gpt2-bpe");
  EXPECT_EQ(t->vocabSize(), 50257);
  EXPECT_EQ(t->eosId(), std::optional<int32_t>(50256));
  EXPECT_EQ(t->bosId(), std::nullopt);
}

INSTANTIATE_TEST_SUITE_P(Files, Gpt2Reference,
                         ::testing::Values(Gpt2Source::VOCAB_MERGES,
                                           Gpt2Source::TOKENIZER_JSON_STRINGS,
                                           Gpt2Source::TOKENIZER_JSON_PAIRS),
                         [](const auto& info) {
                           switch (info.param) {
                             case Gpt2Source::VOCAB_MERGES:
                               return "VocabMerges";
                             case Gpt2Source::TOKENIZER_JSON_STRINGS:
                               return "JsonStrings";
                             default:
                               return "JsonPairs";
                           }
                         });

TEST(Gpt2, DocumentEndsWithEndOfTextAndLiteralEndOfTextIsPlainText) {
  const Tokenizer& t = gpt2();
  EXPECT_EQ(t.encodeDocument("Hello world"), (std::vector<int32_t>{15496, 995, 50256}));
  EXPECT_EQ(t.encodeDocument(""), std::vector<int32_t>{50256});
  const auto ids = t.encode("a<|endoftext|>b");
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 50256), 0);
  EXPECT_EQ(t.decode(ids), "a<|endoftext|>b");
  // The special token itself decodes to its text.
  EXPECT_EQ(t.decode({15496, 50256, 995}), "Hello<|endoftext|> world");
}

TEST(Gpt2, InvalidUtf8BytesAreTheirOwnPiecesAndRoundTrip) {
  const Tokenizer& t = gpt2();
  // The byte tokens straight from vocab.json: byte 0xFF is 'ÿ', 0x80 is
  // U+0122 'Ģ' (GPT-2's byte-to-unicode table gives the 68 unprintable bytes
  // U+0100, U+0101, ... in order; 0x80 is the 35th).
  const json vocab = json::parse(readAll(std::string(kGpt2Dir) + "/vocab.json"));
  const int32_t ff = vocab.at("\xC3\xBF"), x80 = vocab.at("\xC4\xA2");
  auto cat = [](std::vector<int32_t> a, const std::vector<int32_t>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  EXPECT_EQ(t.encode("abc\xFF"
                     "def"),
            cat(cat(t.encode("abc"), {ff}), t.encode("def")));
  // A run of invalid bytes cuts the text as the ends of two documents would:
  // the whitespace before it is not split off as before a word.
  EXPECT_EQ(t.encode("x  \n\xFF y"), cat(cat(t.encode("x  \n"), {ff}), t.encode(" y")));
  EXPECT_EQ(t.encode("\x80"), std::vector<int32_t>{x80});
  for (const std::string& s :
       {std::string("abc\xFF\xFE"
                    "def"),
        std::string("\xE6\x97"),      // 日 cut short
        std::string("x \xC0\xAF y"),  // overlong '/'
        std::string("\xED\xA0\x80 surrogate"), std::string("\xF4\x90\x80\x80 > U+10FFFF"),
        std::string("ok \xE2\x82\xAC then \x80\x80\x80 bad")}) {
    SCOPED_TRACE(s);
    EXPECT_EQ(t.decode(t.encode(s)), s);
  }
  std::mt19937 rng(7);
  for (int k = 0; k < 300; ++k) {
    std::string s(rng() % 64, '\0');
    for (char& c : s) c = static_cast<char>(rng());
    ASSERT_EQ(t.decode(t.encode(s)), s) << "random bytes #" << k;
  }
}

TEST(Gpt2, PiecesTileTheInput) {
  std::string text =
      "I'm here  \t\n\xFF"
      "caf\xC3\xA9 123 !!";
  std::string joined;
  std::vector<std::string> pieces;
  Gpt2PreTokenizer::forEachPiece(text, [&](std::string_view p) {
    pieces.emplace_back(p);
    joined += p;
  });
  EXPECT_EQ(joined, text);
  EXPECT_EQ(pieces, (std::vector<std::string>{"I", "'m", " here", "  \t\n", "\xFF", "caf\xC3\xA9",
                                              " 123", " !!"}));
}

// Text of every kind GPT-2's pattern tells apart: words, contractions,
// numbers, punctuation, runs of spaces, tabs and newlines, non-ASCII letters
// and spaces (U+00A0, U+3000), invalid bytes; `bytes` long, from `seed`.
std::string mixedText(size_t bytes, uint32_t seed) {
  const std::vector<std::string> parts = {
      "the",   "quick", "brown",       "fox's",
      "I'm",   "we'll", "caf\xC3\xA9", "\xE4\xB8\xAD\xE6\x96\x87",
      "2026",  "3.14",  "!!",          "--",
      "\"q\"", "\xFF",  "\xC2\xA0",    "\xE3\x80\x80",
      "x"};
  const std::vector<std::string> gaps = {" ", " ", " ", "  ", "\n", "\n\n", "\t", " \n ", ""};
  std::mt19937 rng(seed);
  std::string text;
  while (text.size() < bytes) {
    text += parts[rng() % parts.size()];
    text += gaps[rng() % gaps.size()];
  }
  text.resize(bytes);
  return text;
}

// A cut point splits the encoding exactly: the parts encoded one after the
// other give the whole's ids, for prefixes of every length around it.
TEST(Gpt2, CutPointsSplitTheEncodingExactly) {
  const Tokenizer& t = gpt2();
  const std::string text = mixedText(20000, 7);
  const std::vector<int32_t> whole = t.encode(text);
  int cuts = 0;
  for (size_t window = 3; window < text.size(); window += 37) {
    const size_t n = t.cutPoint(std::string_view(text).substr(0, window));
    if (n == 0) continue;
    ASSERT_LT(n, window);
    ++cuts;
    std::vector<int32_t> parts = t.encode(std::string_view(text).substr(0, n));
    const std::vector<int32_t> rest = t.encode(std::string_view(text).substr(n));
    parts.insert(parts.end(), rest.begin(), rest.end());
    ASSERT_EQ(parts, whole) << "cut at " << n;
  }
  EXPECT_GT(cuts, 400);
  // No space between printable characters: no cut (a run of spaces, a
  // space before a newline or a non-ASCII letter).
  for (const char* none : {"a  b", "a \nb", "a \xC3\xA9", "\xC2\xA0 a", "ab", ""})
    EXPECT_EQ(t.cutPoint(none), 0u) << none;
  EXPECT_EQ(t.cutPoint("ab cd ef"), 5u);
  EXPECT_EQ(spm().cutPoint("ab cd ef"), 0u);  // SentencePiece: never
}

TEST(Gpt2, VeryLongWordsAndRunsEncodeAndRoundTrip) {
  const Tokenizer& t = gpt2();
  for (const std::string& s : {std::string(200000, 'a'), std::string(200000, ' '),
                               std::string(100000, '\n') + "x", std::string(50000, '9')}) {
    const auto ids = t.encode(s);
    // GPT-2 has no token for two spaces or two newlines; letters merge.
    if (s[0] == 'a') {
      EXPECT_LT(ids.size(), s.size() / 2);
    }
    EXPECT_LE(ids.size(), s.size());
    EXPECT_EQ(t.decode(ids), s);
  }
}

TEST(Gpt2, DecodeStopsInsideACharacterAsBytes) {
  const Tokenizer& t = gpt2();
  const std::string smile = "\xF0\x9F\x98\x80";  // U+1F600: several byte tokens
  auto ids = t.encode(smile);
  ASSERT_GE(ids.size(), 2u);
  ids.pop_back();
  const std::string partial = t.decode(ids);
  EXPECT_LT(partial.size(), smile.size());
  EXPECT_EQ(smile.compare(0, partial.size(), partial), 0);
}

TEST(Gpt2, DecodeRefusesAnIdOutsideTheVocabulary) {
  try {
    gpt2().decode({15496, 50257});
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("50257"), std::string::npos) << e.what();
  }
  EXPECT_THROW(gpt2().decode({-1}), ConfigError);
}

TEST(Gpt2, ConcurrentEncodesAgree) {
  const auto cases = loadCases("tests/tokenizer/fixtures/gpt2_cases.json");
  // A tokenizer of its own, so every thread starts on an empty cache.
  const auto t = loadTokenizer(kGpt2Dir);
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  for (int w = 0; w < 4; ++w) {
    threads.emplace_back([&, w] {
      for (int round = 0; round < 5; ++round) {
        for (size_t i = 0; i < cases.size(); ++i) {
          const Case& c = cases[(i + w * 13) % cases.size()];
          if (t->encode(c.text) != c.ids) ++wrong;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0);
}

// ---------------------------------------------------------------------------
// SentencePiece against the Python module's ids.

TEST(SentencePiece, EveryHardStringMatchesTheLibrary) {
  const json j = json::parse(readAll("tests/tokenizer/fixtures/spm_cases.json"));
  const Tokenizer& t = spm();
  EXPECT_EQ(t.kind(), "sentencepiece");
  EXPECT_EQ(t.vocabSize(), j.at("vocab").get<int64_t>());
  EXPECT_EQ(t.bosId(), std::optional<int32_t>(j.at("bos").get<int32_t>()));
  EXPECT_EQ(t.eosId(), std::optional<int32_t>(j.at("eos").get<int32_t>()));
  for (const Case& c : loadCases("tests/tokenizer/fixtures/spm_cases.json")) {
    SCOPED_TRACE(c.name);
    EXPECT_EQ(t.encode(c.text), c.ids);
    EXPECT_EQ(t.decode(c.ids), c.text);
  }
}

TEST(SentencePiece, DocumentIsBosTextEosAndControlTextIsPlain) {
  const Tokenizer& t = spm();
  const auto body = t.encode("Hello world");
  std::vector<int32_t> want{1};
  want.insert(want.end(), body.begin(), body.end());
  want.push_back(2);
  EXPECT_EQ(t.encodeDocument("Hello world"), want);
  for (const char* s : {"<s>", "</s>", "a</s>b<s>"}) {
    const auto ids = t.encode(s);
    EXPECT_EQ(std::count(ids.begin(), ids.end(), 1), 0) << s;
    EXPECT_EQ(std::count(ids.begin(), ids.end(), 2), 0) << s;
    EXPECT_EQ(t.decode(ids), s);
  }
  EXPECT_EQ(t.decode(want), "Hello world");  // control tokens decode to nothing
}

TEST(SentencePiece, InvalidUtf8BecomesReplacementCharacter) {
  const Tokenizer& t = spm();
  EXPECT_EQ(t.encode("a\xFF"
                     "b"),
            t.encode("a\xEF\xBF\xBD"
                     "b"));
  EXPECT_EQ(t.decode(t.encode("a\xFF"
                              "b")),
            "a\xEF\xBF\xBD"
            "b");
}

TEST(SentencePiece, DecodeStopsInsideACharacterAsBytes) {
  const Tokenizer& t = spm();
  // Japanese is not in the docs the model learned from: byte fallback.
  const std::string text = "x\xE6\x97\xA5";  // x日
  auto ids = t.encode(text);
  ASSERT_GE(ids.size(), 3u);
  ids.pop_back();
  const std::string partial = t.decode(ids);
  EXPECT_EQ(partial, "x\xE6\x97");
  EXPECT_THROW(t.decode({1000}), ConfigError);
}

// ---------------------------------------------------------------------------
// The loader: which files, and refusals that say why.

std::string errorOf(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Loader, ListsTheFilesItReads) {
  EXPECT_EQ(tokenizerFiles(kGpt2Dir),
            (std::vector<std::string>{std::string(kGpt2Dir) + "/vocab.json",
                                      std::string(kGpt2Dir) + "/merges.txt"}));
  EXPECT_EQ(tokenizerFiles(kSpmDir),
            std::vector<std::string>{std::string(kSpmDir) + "/tokenizer.model"});
}

TEST(Loader, MissingOrEmptyFolderSaysWhatItLookedFor) {
  TempDir dir;
  const std::string missing = dir.str() + "/nope";
  std::string msg = errorOf([&] { loadTokenizer(missing); });
  EXPECT_NE(msg.find(missing), std::string::npos) << msg;
  EXPECT_NE(msg.find("does not exist"), std::string::npos) << msg;
  EXPECT_THROW(loadTokenizer(missing), IoError);

  msg = errorOf([&] { loadTokenizer(dir.str()); });
  EXPECT_NE(msg.find("tokenizer.json, vocab.json + merges.txt and tokenizer.model"),
            std::string::npos)
      << msg;
  fs::copy_file(std::string(kGpt2Dir) + "/vocab.json", dir.path / "vocab.json");
  msg = errorOf([&] { loadTokenizer(dir.str()); });
  EXPECT_NE(msg.find("vocab.json but no merges.txt"), std::string::npos) << msg;
}

TEST(Loader, MalformedFilesNameTheFileAndLine) {
  TempDir dir;
  writeFile(dir.path / "vocab.json", R"({"a": 0, "b": 1, "ab": 2})");
  writeFile(dir.path / "merges.txt", "#version: 0.2\na b\nthree tokens here\n");
  std::string msg = errorOf([&] { loadTokenizer(dir.str()); });
  EXPECT_NE(msg.find("merges.txt:3"), std::string::npos) << msg;

  writeFile(dir.path / "vocab.json", "{not json");
  msg = errorOf([&] { loadTokenizer(dir.str()); });
  EXPECT_NE(msg.find("not valid JSON"), std::string::npos) << msg;
  EXPECT_THROW(loadTokenizer(dir.str()), IoError);

  // A vocabulary without the 256 byte tokens is not byte-level.
  writeFile(dir.path / "vocab.json", R"({"a": 0, "b": 1, "ab": 2})");
  writeFile(dir.path / "merges.txt", "a b\n");
  msg = errorOf([&] { loadTokenizer(dir.str()); });
  EXPECT_NE(msg.find("not a byte-level BPE"), std::string::npos) << msg;
}

TEST(Loader, MergeOutsideTheVocabularyIsRefused) {
  TempDir dir;
  json vocab = json::parse(readAll(std::string(kGpt2Dir) + "/vocab.json"));
  writeFile(dir.path / "vocab.json", vocab.dump());
  writeFile(dir.path / "merges.txt", "#version: 0.2\nĠ t\nq z\n");  // "qz" is no token
  const std::string msg = errorOf([&] { loadTokenizer(dir.str()); });
  EXPECT_NE(msg.find("merge 2 ('q z')"), std::string::npos) << msg;
}

TEST(Loader, TokenizerJsonOfAnotherKindIsRefusedSayingWhy) {
  TempDir dir;
  json wordpiece = {{"model", {{"type", "WordPiece"}, {"vocab", {{"a", 0}}}}}};
  writeFile(dir.path / "tokenizer.json", wordpiece.dump());
  std::string msg = errorOf([&] { loadTokenizer(dir.str()); });
  EXPECT_NE(msg.find("WordPiece, not BPE"), std::string::npos) << msg;
  EXPECT_THROW(loadTokenizer(dir.str()), ConfigError);

  json llama3 = gpt2TokenizerJson(false);
  llama3["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", json::array()}};
  writeFile(dir.path / "tokenizer.json", llama3.dump());
  msg = errorOf([&] { loadTokenizer(dir.str()); });
  EXPECT_NE(msg.find("pre_tokenizer is Sequence"), std::string::npos) << msg;

  json prefix = gpt2TokenizerJson(false);
  prefix["pre_tokenizer"]["add_prefix_space"] = true;
  writeFile(dir.path / "tokenizer.json", prefix.dump());
  msg = errorOf([&] { loadTokenizer(dir.str()); });
  EXPECT_NE(msg.find("prefix space"), std::string::npos) << msg;

  json added = gpt2TokenizerJson(false);
  added["added_tokens"].push_back({{"id", 50257}, {"content", "<|im_start|>"}, {"special", false}});
  writeFile(dir.path / "tokenizer.json", added.dump());
  msg = errorOf([&] { loadTokenizer(dir.str()); });
  EXPECT_NE(msg.find("'<|im_start|>' is not special"), std::string::npos) << msg;

  // A Llama folder: tokenizer.json (SentencePiece-style BPE) beside
  // tokenizer.model: the model is used.
  json spm_json = gpt2TokenizerJson(false);
  spm_json["model"]["byte_fallback"] = true;
  writeFile(dir.path / "tokenizer.json", spm_json.dump());
  fs::copy_file(std::string(kSpmDir) + "/tokenizer.model", dir.path / "tokenizer.model");
  EXPECT_EQ(loadTokenizer(dir.str())->kind(), "sentencepiece");
  EXPECT_EQ(tokenizerFiles(dir.str()),
            std::vector<std::string>{(dir.path / "tokenizer.model").string()});
}

TEST(Loader, SpecialTokensOfTokenizerJsonExtendTheVocabulary) {
  TempDir dir;
  json j = gpt2TokenizerJson(true);
  j["added_tokens"].push_back({{"id", 50257}, {"content", "<|pad|>"}, {"special", true}});
  writeFile(dir.path / "tokenizer.json", j.dump());
  const auto t = loadTokenizer(dir.str());
  EXPECT_EQ(t->vocabSize(), 50258);
  EXPECT_EQ(t->decode({50257}), "<|pad|>");
  EXPECT_EQ(t->encode("<|pad|>"), gpt2().encode("<|pad|>"));  // plain text
}

TEST(Loader, CorruptSentencePieceModelNamesTheFile) {
  TempDir dir;
  writeFile(dir.path / "tokenizer.model", "not a protobuf");
  const std::string msg = errorOf([&] { loadTokenizer(dir.str()); });
  EXPECT_NE(msg.find((dir.path / "tokenizer.model").string()), std::string::npos) << msg;
  EXPECT_THROW(loadTokenizer(dir.str()), IoError);
}

// ---------------------------------------------------------------------------
// Token files.

namespace token_files {

std::vector<uint32_t> readIds(const fs::path& path, size_t width) {
  const std::string bytes = readAll(path.string());
  EXPECT_EQ(bytes.size() % width, 0u) << path;
  std::vector<uint32_t> ids(bytes.size() / width);
  for (size_t i = 0; i < ids.size(); ++i) {
    uint32_t v = 0;
    for (size_t k = 0; k < width; ++k) {
      v |= static_cast<uint32_t>(static_cast<unsigned char>(bytes[i * width + k])) << (8 * k);
    }
    ids[i] = v;
  }
  return ids;
}

std::vector<uint32_t> documents(const Tokenizer& t, const std::vector<std::string>& texts) {
  std::vector<uint32_t> ids;
  for (const auto& text : texts) {
    for (int32_t id : t.encodeDocument(text)) ids.push_back(static_cast<uint32_t>(id));
  }
  return ids;
}

// Files left in a folder (to see that a failure leaves no temporary).
std::vector<std::string> listing(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

TEST(TokenFile, TextFilesAndJsonLinesBecomeDocumentsEndedByEndOfText) {
  TempDir dir;
  writeFile(dir.path / "a.txt", "Hello world\n");
  writeFile(
      dir.path / "b.jsonl",
      "{\"text\": \"first <|endoftext|> doc\"}\n\n  \n{\"text\": \"caf\\u00e9\", \"id\": 7}\n");
  writeFile(dir.path / "c.md", "");
  const fs::path out = dir.path / "train.bin";
  std::vector<TokenizeProgress> seen;
  const TokenizeResult r =
      tokenizeFiles(gpt2(),
                    {(dir.path / "a.txt").string(), (dir.path / "b.jsonl").string(),
                     (dir.path / "c.md").string()},
                    out.string(), {}, [&](const TokenizeProgress& p) { seen.push_back(p); });
  const auto want =
      documents(gpt2(), {"Hello world\n", "first <|endoftext|> doc", "caf\xC3\xA9", ""});
  EXPECT_EQ(readIds(out, 2), want);
  EXPECT_EQ(want.back(), 50256u);  // the last document is ended too
  EXPECT_EQ(std::count(want.begin(), want.end(), 50256u), 4);
  EXPECT_EQ(r.documents, 4);
  EXPECT_EQ(r.tokens, static_cast<int64_t>(want.size()));
  EXPECT_EQ(r.val_documents, 0);
  EXPECT_TRUE(r.val_path.empty());
  ASSERT_EQ(seen.size(), 4u);
  EXPECT_EQ(seen.back().input_bytes_done, seen.back().input_bytes_total);
  EXPECT_EQ(listing(dir.path), (std::vector<std::string>{"a.txt", "b.jsonl", "c.md", "train.bin"}));
}

// A text file over a block is encoded a part at a time (progress is
// reported within it), with the ids of encoding it whole.
TEST(TokenFile, ALongTextFileIsEncodedInPartsWithTheIdsOfTheWhole) {
  TempDir dir;
  const std::string text = mixedText((size_t{7} << 20) / 2, 11);  // 3.5 MiB
  writeFile(dir.path / "long.txt", text);
  const fs::path out = dir.path / "long.bin";
  int within = 0;
  const TokenizeResult r = tokenizeFiles(gpt2(), {(dir.path / "long.txt").string()}, out.string(),
                                         {}, [&](const TokenizeProgress& p) {
                                           if (p.documents == 0) ++within;
                                         });
  EXPECT_GE(within, 3);
  EXPECT_EQ(readIds(out, 2), documents(gpt2(), {text}));
  EXPECT_EQ(r.documents, 1);
  EXPECT_EQ(r.text_bytes, static_cast<int64_t>(text.size()));
}

// A text file is never read whole: 128 MiB of zero bytes (one piece of
// GPT-2's pattern, so without a cut point: cut every 1 MiB, the most a part
// holds) tokenize in a process that may allocate 96 MiB, about 60 of them
// used (issue 18: a 40 GB file ended in exit 70).
TEST(TokenFile, AHugeTextFileTokenizesInBoundedMemory) {
#ifdef GEOPIPE_ASAN
  GTEST_SKIP() << "ASan's shadow memory counts against RLIMIT_DATA";
#endif
  TempDir dir;
  const int64_t bytes = int64_t{128} << 20;
  const std::string in = (dir.path / "huge.txt").string();
  ASSERT_TRUE(test_support::makeSparseFile(in, bytes));
  const fs::path out = dir.path / "huge.bin";
  const Tokenizer& t = gpt2();
  const int status = test_support::underDataLimit(int64_t{96} << 20, [&] {
    const TokenizeResult r = tokenizeFiles(t, {in}, out.string(), {});
    // GPT-2 merges no zero bytes: an id each, then <|endoftext|>.
    return r.tokens == bytes + 1 && r.text_bytes == bytes;
  });
  EXPECT_EQ(status, 0);
  EXPECT_EQ(static_cast<int64_t>(fs::file_size(out)), 2 * (bytes + 1));
}

TEST(TokenFile, ValFractionHoldsOutTheLastWholeDocuments) {
  TempDir dir;
  std::string jsonl;
  std::vector<std::string> texts;
  for (int i = 0; i < 10; ++i) {
    texts.push_back("document number " + std::to_string(i) + std::string(i, '!'));
    jsonl += json({{"text", texts.back()}}).dump() + "\n";
  }
  writeFile(dir.path / "docs.jsonl", jsonl);
  const fs::path out = dir.path / "out.bin";
  writeFile(dir.path / "out.bin.val", "stale");
  TokenizeOptions o;
  o.val_fraction = 0.25;  // ceil(2.5) = 3 documents
  const TokenizeResult r =
      tokenizeFiles(gpt2(), {(dir.path / "docs.jsonl").string()}, out.string(), o);
  EXPECT_EQ(r.val_documents, 3);
  EXPECT_EQ(r.val_path, out.string() + ".val");
  EXPECT_EQ(readIds(out, 2), documents(gpt2(), {texts.begin(), texts.begin() + 7}));
  EXPECT_EQ(readIds(out.string() + ".val", 2), documents(gpt2(), {texts.begin() + 7, texts.end()}));
  EXPECT_EQ(r.val_tokens, static_cast<int64_t>(readIds(out.string() + ".val", 2).size()));

  o.val_fraction = 0.001;  // rounds up: one document
  tokenizeFiles(gpt2(), {(dir.path / "docs.jsonl").string()}, out.string(), o);
  EXPECT_EQ(readIds(out.string() + ".val", 2), documents(gpt2(), {texts.back()}));

  // Without a split, a .val of an earlier run is removed: out and out.val
  // always come from one run.
  tokenizeFiles(gpt2(), {(dir.path / "docs.jsonl").string()}, out.string(), {});
  EXPECT_FALSE(fs::exists(out.string() + ".val"));
  EXPECT_EQ(readIds(out, 2), documents(gpt2(), texts));
}

TEST(TokenFile, ValFractionThatLeavesNoTrainingDocumentLeavesNoFiles) {
  TempDir dir;
  writeFile(dir.path / "one.txt", "only one document");
  TokenizeOptions o;
  o.val_fraction = 0.5;
  const std::string msg = errorOf([&] {
    tokenizeFiles(gpt2(), {(dir.path / "one.txt").string()}, (dir.path / "o.bin").string(), o);
  });
  EXPECT_NE(msg.find("holds out 1 of 1 document(s)"), std::string::npos) << msg;
  EXPECT_EQ(listing(dir.path), std::vector<std::string>{"one.txt"});
  for (double bad : {-0.1, 1.0, std::nan("")}) {
    o.val_fraction = bad;
    EXPECT_THROW(
        tokenizeFiles(gpt2(), {(dir.path / "one.txt").string()}, (dir.path / "o.bin").string(), o),
        ConfigError)
        << bad;
  }
  EXPECT_EQ(listing(dir.path), std::vector<std::string>{"one.txt"});
}

TEST(TokenFile, SentencePieceDocumentsAreBosTextEosInUint32) {
  TempDir dir;
  writeFile(dir.path / "a.txt", "Hello world");
  writeFile(dir.path / "b.txt", "second");
  TokenizeOptions o;
  o.dtype = "uint32";
  tokenizeFiles(spm(), {(dir.path / "a.txt").string(), (dir.path / "b.txt").string()},
                (dir.path / "o.bin").string(), o);
  const auto ids = readIds(dir.path / "o.bin", 4);
  EXPECT_EQ(ids, documents(spm(), {"Hello world", "second"}));
  EXPECT_EQ(ids.front(), 1u);
  EXPECT_EQ(ids.back(), 2u);
}

// A vocabulary too large for uint16, without loading one.
class BigVocabulary final : public Tokenizer {
 public:
  std::vector<int32_t> encode(std::string_view) const override { return {70000}; }
  std::string decode(const std::vector<int32_t>&) const override { return ""; }
  int64_t vocabSize() const override { return 70001; }
  std::optional<int32_t> bosId() const override { return std::nullopt; }
  std::optional<int32_t> eosId() const override { return 70000; }
  std::string kind() const override { return "gpt2-bpe"; }
};

TEST(TokenFile, Uint16IsRefusedForAVocabularyOver65536) {
  TempDir dir;
  writeFile(dir.path / "a.txt", "x");
  const std::string in = (dir.path / "a.txt").string(), out = (dir.path / "o.bin").string();
  const std::string msg = errorOf([&] { tokenizeFiles(BigVocabulary(), {in}, out, {}); });
  EXPECT_NE(msg.find("70001 ids: use --dtype uint32"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(out));
  TokenizeOptions o;
  o.dtype = "uint32";
  tokenizeFiles(BigVocabulary(), {in}, out, o);
  EXPECT_EQ(readIds(out, 4), (std::vector<uint32_t>{70000, 70000}));
  o.dtype = "int8";
  EXPECT_THROW(tokenizeFiles(BigVocabulary(), {in}, out, o), ConfigError);
}

TEST(TokenFile, BadJsonLinesNameFileAndLineAndLeaveNoFiles) {
  TempDir dir;
  const std::string out = (dir.path / "o.bin").string();
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"{\"text\": \"ok\"}\nnot json\n", "bad.jsonl:2: not JSON"},
      {"{\"text\": \"ok\"}\n{\"body\": \"x\"}\n", "bad.jsonl:2: no field \"text\""},
      {"\n{\"text\": 5}\n", "bad.jsonl:2: field \"text\" is not a string"},
      {"[\"text\"]\n", "bad.jsonl:1: not a JSON object"},
      {"{\"text\": \"\xFF\"}\n", "bad.jsonl:1: not JSON"},
  };
  for (const auto& [body, want] : bad) {
    writeFile(dir.path / "bad.jsonl", body);
    const std::string msg =
        errorOf([&] { tokenizeFiles(gpt2(), {(dir.path / "bad.jsonl").string()}, out, {}); });
    EXPECT_NE(msg.find(want), std::string::npos) << msg;
    EXPECT_EQ(listing(dir.path), std::vector<std::string>{"bad.jsonl"});
  }
  writeFile(dir.path / "bad.jsonl", "\n\n");
  EXPECT_THROW(tokenizeFiles(gpt2(), {(dir.path / "bad.jsonl").string()}, out, {}), ConfigError);
}

// A path a message echoes is escaped: a control character or a byte that is
// not UTF-8 in a tokenizer folder or an input path cannot drive the
// terminal or forge a line (issue 18, common::printable).
TEST(Loader, PathsInMessagesAreEscaped) {
  TempDir dir;
  const std::string hostile = dir.str() + "/no\n\x1b[2Jsuch\xff";
  std::string msg = errorOf([&] { loadTokenizer(hostile); });
  EXPECT_NE(msg.find(dir.str() + "/no\\n\\x1b[2Jsuch\\xff' does not exist"), std::string::npos)
      << msg;
  msg = errorOf([&] { tokenizeFiles(gpt2(), {hostile}, (dir.path / "o").string(), {}); });
  EXPECT_NE(msg.find("input '" + dir.str() + "/no\\n\\x1b[2Jsuch\\xff' does not exist"),
            std::string::npos)
      << msg;
  for (char c : msg) EXPECT_TRUE(static_cast<unsigned char>(c) >= 0x20 && c != 0x7f) << msg;
}

TEST(TokenFile, MissingInputOrUnwritableOutputIsAnIoErrorNamingIt) {
  TempDir dir;
  writeFile(dir.path / "a.txt", "x");
  const std::string missing = (dir.path / "missing.txt").string();
  std::string msg = errorOf([&] {
    tokenizeFiles(gpt2(), {(dir.path / "a.txt").string(), missing}, (dir.path / "o").string(), {});
  });
  EXPECT_NE(msg.find("input '" + missing + "' does not exist"), std::string::npos) << msg;
  EXPECT_THROW(tokenizeFiles(gpt2(), {dir.str()}, (dir.path / "o").string(), {}), IoError);
  const std::string unwritable = (dir.path / "no-such-folder" / "o.bin").string();
  msg = errorOf([&] { tokenizeFiles(gpt2(), {(dir.path / "a.txt").string()}, unwritable, {}); });
  EXPECT_NE(msg.find("cannot write '" + unwritable + "'"), std::string::npos) << msg;
  EXPECT_EQ(listing(dir.path), std::vector<std::string>{"a.txt"});
}

}  // namespace token_files

}  // namespace
