// SentencePiece models (tokenizer.model of the Llama family) through Debian's
// libsentencepiece. The header keeps the library's types out of its users.
#pragma once

#include <memory>
#include <string>

#include "src/tokenizer/tokenizer.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace geopipe::tokenizer {

// A SentencePiece model. encode() is the library's Encode (its normalizer,
// then BPE or unigram; control tokens such as <s> are never matched in the
// text). Bytes that are not valid UTF-8 are what the library makes of them:
// its normalizer turns each into U+FFFD, so decode(encode(x)) == x holds for
// valid UTF-8 only. decode() is the library's Decode, except that byte
// pieces (<0xNN>, byte fallback) ending the ids in the middle of a UTF-8
// character come out as those raw bytes rather than U+FFFD, so text decoded
// while generating grows by bytes. The processor is immutable once loaded;
// the library's encode and decode are const and safe to call concurrently.
class SentencePieceTokenizer final : public Tokenizer {
 public:
  // IoError naming the file when it cannot be read or is not a model.
  explicit SentencePieceTokenizer(const std::string& model_path);
  ~SentencePieceTokenizer() override;

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

}  // namespace geopipe::tokenizer
