// GPT-2's byte-level BPE: the vocabulary files (vocab.json + merges.txt, or a
// Hugging Face tokenizer.json) and the encoder/decoder over them.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "src/tokenizer/tokenizer.h"

namespace geopipe::tokenizer {

// What a byte-level BPE's files say. Token text is in GPT-2's byte-to-unicode
// alphabet (each byte is one printable character; a space is "Ġ"), except
// special tokens, which are their own text.
struct BpeVocabulary {
  std::vector<std::pair<std::string, int32_t>> tokens;      // vocab: token -> id
  std::vector<std::pair<std::string, std::string>> merges;  // merge rules, rank order
  std::vector<std::pair<std::string, int32_t>> specials;    // tokenizer.json added_tokens
  std::string source;  // the file(s) it came from, for messages
};

// Byte-level BPE as GPT-2 does it: the text is cut by Gpt2PreTokenizer, each
// piece's bytes start as one symbol per byte, and adjacent symbols are merged
// lowest merge rank first (leftmost first within a rank) until no pair has a
// rule. Results of pieces up to kMaxCachedPiece bytes are kept in a word cache
// per thread and tokenizer (no lock on the hot path, so concurrent encode()
// calls neither race nor wait; a thread keeps the caches of its last
// kCachesPerThread tokenizers, each up to kMaxCacheEntries words, ~30 MB).
// Any bytes encode, including invalid UTF-8 (a run of such bytes is one
// piece), and decode(encode(x)) == x for every x.
class ByteLevelBpe final : public Tokenizer {
 public:
  static constexpr size_t kMaxCachedPiece = 64;        // longer pieces are rare
  static constexpr size_t kMaxCacheEntries = 1 << 18;  // then the cache starts over
  static constexpr size_t kCachesPerThread = 4;

  // IoError naming vocabulary.source when the files are inconsistent: a byte
  // without a token, an id used twice, a merge of or into a token not in the
  // vocabulary.
  explicit ByteLevelBpe(const BpeVocabulary& vocabulary);

  std::vector<int32_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  int64_t vocabSize() const override { return static_cast<int64_t>(id_bytes_.size()); }
  std::optional<int32_t> bosId() const override { return std::nullopt; }
  std::optional<int32_t> eosId() const override { return eos_; }
  std::string kind() const override { return "gpt2-bpe"; }
  // Before a space between two printable ASCII characters ("a| b"): no
  // piece of GPT-2's pattern crosses it (only runs of whitespace hold a
  // space past their start, and this one starts there), and the pattern
  // has no look-behind, so the rest is split into the same pieces.
  size_t cutPoint(std::string_view text) const override;

 private:
  // A merge rule in an open-addressing table keyed by the (left, right) ids;
  // rank < 0 marks an empty slot. Flat, because merging spends its time here.
  struct Merge {
    uint64_t pair;  // left id << 32 | right id
    int32_t rank;   // position in merges.txt: lower merges first
    int32_t id;     // the merged token
  };
  static uint64_t pairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }
  const Merge* findMerge(int32_t left, int32_t right) const;
  // BPE of one piece, without the cache.
  void mergePiece(std::string_view piece, std::vector<int32_t>& out) const;

  std::array<int32_t, 256> byte_ids_{};  // the token of each single byte
  std::vector<Merge> merges_;            // power-of-two size, at most half full
  std::vector<std::string> id_bytes_;    // id -> the bytes it decodes to
  std::vector<bool> id_known_;           // false for ids no token has
  std::optional<int32_t> eos_;           // <|endoftext|>, when present
  std::string source_;
  uint64_t serial_;  // names this tokenizer's word caches (never reused)
};

// GPT-2's table from bytes to printable characters (openai/gpt-2
// encoder.py bytes_to_unicode): the UTF-8 text of byte b's character.
const std::array<std::string, 256>& byteToUnicode();

// Reads vocab.json (token -> id) and merges.txt ("left right" per line, an
// optional "#version" first line). IoError naming the file (and line) when
// unreadable or malformed.
BpeVocabulary readVocabAndMerges(const std::string& vocab_json, const std::string& merges_txt);

// A Hugging Face tokenizer.json read for byte-level BPE. `unsupported` says
// why it is not a GPT-2-style byte-level BPE (then `vocabulary` is empty).
struct TokenizerJson {
  BpeVocabulary vocabulary;
  std::string unsupported;
};
// IoError when the file is unreadable or not JSON of tokenizer.json's shape.
TokenizerJson readTokenizerJson(const std::string& path);

}  // namespace geopipe::tokenizer
