// GPT-2's pre-tokenizer: the regex that cuts text into the words BPE merges
// within. The only file that includes PCRE2.
#pragma once

#include <cstddef>
#include <string_view>

namespace geopipe::tokenizer {

// Splits text with GPT-2's pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// (PCRE2, UTF + UCP, JIT-compiled once per process; \s is Unicode's
// White_Space, as in tiktoken and Python's `regex`). Every valid UTF-8
// character is matched by some alternative, so the pieces tile the text.
// Bytes that are not valid UTF-8 match nothing (PCRE2_MATCH_INVALID_UTF);
// each maximal run of them becomes a piece of its own, so the pieces still
// tile the input and byte-level BPE round-trips any bytes.
// Thread-safe: the compiled pattern is shared, match state is per thread.
class Gpt2PreTokenizer {
 public:
  // The end of the piece of `text` that starts at byte `pos` (< text.size()).
  static size_t pieceEnd(std::string_view text, size_t pos);

  // Calls fn(piece) for each piece of `text` in order (views into text);
  // streaming, so a document of any size needs no list of its pieces.
  template <typename Fn>
  static void forEachPiece(std::string_view text, Fn&& fn) {
    for (size_t pos = 0; pos < text.size();) {
      const size_t end = pieceEnd(text, pos);
      fn(text.substr(pos, end - pos));
      pos = end;
    }
  }
};

}  // namespace geopipe::tokenizer
