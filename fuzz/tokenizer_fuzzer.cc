// Fuzz target: the tokenizers on arbitrary bytes. Input: one selector byte,
// then the payload. Even: GPT-2's BPE encodes the payload, which must decode
// back to the same bytes (any bytes, invalid UTF-8 included). Odd: the test
// SentencePiece model encodes it and decodes the ids, and both tokenizers
// decode the payload read as little-endian ids, where an id outside the
// vocabulary may only throw ConfigError. Anything else (a crash, a sanitizer
// report, another exception, a failed round trip) is a bug.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "geopipe/error.h"
#include "src/tokenizer/tokenizer.h"

namespace {

const geopipe::tokenizer::Tokenizer& gpt2() {
  static const auto t =
      geopipe::tokenizer::loadTokenizer(GEOPIPE_SOURCE_DIR "/assets/tokenizers/gpt2");
  return *t;
}

const geopipe::tokenizer::Tokenizer& sentencePiece() {
  static const auto t =
      geopipe::tokenizer::loadTokenizer(GEOPIPE_SOURCE_DIR "/tests/tokenizer/fixtures/spm");
  return *t;
}

void decodeAsIds(const geopipe::tokenizer::Tokenizer& t, const std::string& payload) {
  std::vector<int32_t> ids;
  for (size_t i = 0; i + 2 <= payload.size(); i += 2) {
    ids.push_back(static_cast<unsigned char>(payload[i]) |
                  (static_cast<unsigned char>(payload[i + 1]) << 8));
  }
  try {
    t.decode(ids);
  } catch (const geopipe::ConfigError&) {
    // An id outside the vocabulary: the expected refusal.
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string payload(reinterpret_cast<const char*>(data + 1), size - 1);
  if (data[0] % 2 == 0) {
    if (gpt2().decode(gpt2().encode(payload)) != payload) std::abort();
  } else {
    const auto& spm = sentencePiece();
    spm.decode(spm.encode(payload));
    decodeAsIds(spm, payload);
    decodeAsIds(gpt2(), payload);
  }
  return 0;
}
