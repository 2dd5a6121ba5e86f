// SentencePiece through libsentencepiece: the only file that includes it.
// Built as the plugin libgeopipe_sentencepiece.so (sentencepiece_loader.cc
// loads it) whose one exported symbol is geopipe_sentencepiece_load().
#include <sentencepiece_processor.h>

#include <cstdlib>
#include <cstring>
#include <memory>

#include "geopipe/error.h"
#include "src/tokenizer/tokenizer.h"

namespace geopipe::tokenizer {
namespace {

// The byte a byte-fallback piece "<0xNN>" stands for.
unsigned char pieceByte(const std::string& piece) {
  return static_cast<unsigned char>(std::strtoul(piece.c_str() + 3, nullptr, 16));
}

// How many bytes at the end of `bytes` are the start of a UTF-8 character
// whose remaining bytes have not come yet (0 when the last character is
// whole or the bytes are not UTF-8 at all).
size_t incompleteUtf8Tail(const std::string& bytes) {
  const size_t n = bytes.size();
  for (size_t k = 1; k <= 3 && k <= n; ++k) {
    const auto c = static_cast<unsigned char>(bytes[n - k]);
    if ((c & 0xC0) == 0x80) continue;  // a continuation byte: look further back
    const size_t need = (c & 0xE0) == 0xC0   ? 2
                        : (c & 0xF0) == 0xE0 ? 3
                        : (c & 0xF8) == 0xF0 ? 4
                                             : 1;
    return need > k ? k : 0;
  }
  return 0;
}

class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& model_path);

  std::vector<int32_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  int64_t vocabSize() const override { return vocab_size_; }
  std::optional<int32_t> bosId() const override { return bos_; }
  std::optional<int32_t> eosId() const override { return eos_; }
  std::string kind() const override { return "sentencepiece"; }

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> processor_;
  std::string path_;
  int64_t vocab_size_ = 0;
  std::optional<int32_t> bos_, eos_;
};

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& model_path)
    : processor_(std::make_unique<sentencepiece::SentencePieceProcessor>()), path_(model_path) {
  const auto status = processor_->Load(model_path);
  if (!status.ok()) {
    GEOPIPE_THROW(IoError, "cannot load SentencePiece model '", model_path,
                  "': ", status.ToString(),
                  " (a tokenizer.model from the model's repository is needed)");
  }
  vocab_size_ = processor_->GetPieceSize();
  if (processor_->bos_id() >= 0) bos_ = processor_->bos_id();
  if (processor_->eos_id() >= 0) eos_ = processor_->eos_id();
}

std::vector<int32_t> SentencePieceTokenizer::encode(std::string_view text) const {
  std::vector<int> ids;
  const auto status = processor_->Encode(text, &ids);
  if (!status.ok()) {
    GEOPIPE_THROW(Error, "SentencePiece model '", path_, "' failed to encode ", text.size(),
                  " bytes: ", status.ToString());
  }
  return std::vector<int32_t>(ids.begin(), ids.end());
}

std::string SentencePieceTokenizer::decode(const std::vector<int32_t>& ids) const {
  for (size_t k = 0; k < ids.size(); ++k) {
    if (ids[k] < 0 || ids[k] >= vocab_size_) {
      GEOPIPE_THROW(ConfigError, "cannot decode id ", ids[k], " (position ", k,
                    "): SentencePiece model '", path_, "' has ", vocab_size_, " pieces");
    }
  }
  // Byte pieces at the end that stop inside a character are kept as bytes.
  size_t body = ids.size();
  std::string tail;
  while (body > 0 && ids.size() - body < 3 && processor_->IsByte(ids[body - 1])) --body;
  for (size_t k = body; k < ids.size(); ++k) tail += pieceByte(processor_->IdToPiece(ids[k]));
  const size_t keep = incompleteUtf8Tail(tail);
  body = ids.size() - keep;
  tail = tail.substr(tail.size() - keep);

  std::string text;
  const auto status = processor_->Decode(std::vector<int>(ids.begin(), ids.begin() + body), &text);
  if (!status.ok()) {
    GEOPIPE_THROW(Error, "SentencePiece model '", path_, "' failed to decode ", ids.size(),
                  " ids: ", status.ToString());
  }
  return text + tail;
}

}  // namespace
}  // namespace geopipe::tokenizer

// The plugin's entry point: a new tokenizer for the model at `path`, or
// nullptr with the reason in `error` (at most error_size bytes, NUL-ended).
extern "C" __attribute__((visibility("default"))) geopipe::tokenizer::Tokenizer*
geopipe_sentencepiece_load(const char* path, char* error, size_t error_size) {
  try {
    return new geopipe::tokenizer::SentencePieceTokenizer(path);
  } catch (const std::exception& e) {
    std::strncpy(error, e.what(), error_size - 1);
    error[error_size - 1] = '\0';
    return nullptr;
  }
}
