// SentencePiece models (tokenizer.model of the Llama family) through Debian's
// libsentencepiece, which is loaded as a plugin: see sentencepiece_loader.cc
// for why. Nothing here includes the library's headers.
#pragma once

#include <memory>
#include <string>

#include "src/tokenizer/tokenizer.h"

namespace geopipe::tokenizer {

// The SentencePiece model in file `model_path` (kind "sentencepiece").
// encode() is the library's Encode (its normalizer, then BPE or unigram;
// control tokens such as <s> are never matched in the text). Bytes that are
// not valid UTF-8 are what the library makes of them: its normalizer turns
// each into U+FFFD, so decode(encode(x)) == x holds for valid UTF-8 only.
// decode() is the library's Decode, except that byte pieces (<0xNN>, byte
// fallback) ending the ids inside a UTF-8 character come out as those raw
// bytes rather than U+FFFD, so text decoded while generating grows by bytes.
// The model is immutable once loaded; encode and decode are safe to call
// from several threads. IoError naming the file when it cannot be read or is
// not a model, or when the SentencePiece plugin cannot be loaded.
std::unique_ptr<Tokenizer> loadSentencePiece(const std::string& model_path);

}  // namespace geopipe::tokenizer
