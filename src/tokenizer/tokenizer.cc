// The tokenizer folder loader and what every tokenizer shares.
#include "src/tokenizer/tokenizer.h"

#include <filesystem>

#include "geopipe/error.h"
#include "src/common/text.h"
#include "src/tokenizer/byte_level_bpe.h"
#include "src/tokenizer/sentencepiece_tokenizer.h"

namespace geopipe::tokenizer {
namespace {

namespace fs = std::filesystem;

enum class Format { TOKENIZER_JSON, VOCAB_MERGES, SENTENCEPIECE };

// Which files of a folder make its tokenizer (loadTokenizer's order).
struct Choice {
  Format format;
  std::vector<std::string> files;
  TokenizerJson json;  // read when format is TOKENIZER_JSON
};

bool isFile(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

Choice choose(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    GEOPIPE_THROW(IoError, "tokenizer folder '", common::printable(dir), "' ",
                  fs::exists(dir, ec) ? "is not a folder" : "does not exist",
                  ": give the folder that holds tokenizer.json, vocab.json + merges.txt, or "
                  "tokenizer.model (e.g. assets/tokenizers/gpt2)");
  }
  const fs::path d(dir);
  const fs::path json = d / "tokenizer.json", vocab = d / "vocab.json", merges = d / "merges.txt",
                 model = d / "tokenizer.model";
  std::string skipped;  // why tokenizer.json was not used
  if (isFile(json)) {
    TokenizerJson t = readTokenizerJson(json.string());
    if (t.unsupported.empty()) return {Format::TOKENIZER_JSON, {json.string()}, std::move(t)};
    skipped = t.unsupported;
  }
  if (isFile(vocab) && isFile(merges)) {
    return {Format::VOCAB_MERGES, {vocab.string(), merges.string()}, {}};
  }
  if (isFile(model)) return {Format::SENTENCEPIECE, {model.string()}, {}};
  if (!skipped.empty()) {
    GEOPIPE_THROW(ConfigError, "tokenizer '", common::printable(json.string()),
                  "' is not supported: ", skipped,
                  ". geopipe implements GPT-2's byte-level BPE (tokenizer.json, or vocab.json + "
                  "merges.txt) and SentencePiece (tokenizer.model): add the model's "
                  "tokenizer.model to '",
                  common::printable(dir), "' if it has one");
  }
  std::string half;
  if (isFile(vocab) != isFile(merges)) {
    half = std::string(" (it has ") +
           (isFile(vocab) ? "vocab.json but no merges.txt" : "merges.txt but no vocab.json") + ")";
  }
  GEOPIPE_THROW(IoError, "no tokenizer in '", dir,
                "': looked for tokenizer.json, vocab.json + merges.txt and tokenizer.model", half,
                "; copy the tokenizer files of the model there (GPT-2's ship in "
                "assets/tokenizers/gpt2)");
}

}  // namespace

std::vector<int32_t> Tokenizer::encodeDocument(std::string_view text) const {
  const std::optional<int32_t> bos = bosId(), eos = eosId();
  if (!eos) {
    GEOPIPE_THROW(ConfigError, "this ", kind(),
                  " tokenizer has no end-of-text token to end "
                  "documents with (GPT-2: <|endoftext|>, SentencePiece: </s>)");
  }
  std::vector<int32_t> body = encode(text);
  std::vector<int32_t> ids;
  ids.reserve(body.size() + 2);
  if (bos) ids.push_back(*bos);
  ids.insert(ids.end(), body.begin(), body.end());
  ids.push_back(*eos);
  return ids;
}

std::unique_ptr<Tokenizer> loadTokenizer(const std::string& dir) {
  Choice c = choose(dir);
  switch (c.format) {
    case Format::TOKENIZER_JSON:
      return std::make_unique<ByteLevelBpe>(c.json.vocabulary);
    case Format::VOCAB_MERGES:
      return std::make_unique<ByteLevelBpe>(readVocabAndMerges(c.files[0], c.files[1]));
    case Format::SENTENCEPIECE:
      return loadSentencePiece(c.files[0]);
  }
  GEOPIPE_THROW(Error, "unknown tokenizer format");
}

std::vector<std::string> tokenizerFiles(const std::string& dir) {
  return choose(dir).files;
}

}  // namespace geopipe::tokenizer
