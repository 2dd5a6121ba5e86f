// Text <-> token ids for language models: GPT-2's byte-level BPE and
// SentencePiece (Llama family) behind one interface, and the loader that
// picks one from a tokenizer folder. Torch-free (docs/data.md, "Tokenizers
// and token files").
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace geopipe::tokenizer {

// A loaded tokenizer. Immutable after loading: every method is const and may
// be called from several threads at once (the BPE word cache locks inside).
// encode() never adds special tokens and never matches special-token text:
// "<|endoftext|>" or "<s>" written in a document is encoded as the plain text
// it is, so data cannot forge a document boundary. encodeDocument() is the
// one place that adds them, the way a token file separates documents.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // The ids of `text` (any bytes; see each implementation for bytes that are
  // not valid UTF-8). No special tokens are added.
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  // The bytes `ids` stand for. Ids of special tokens decode to their text
  // (GPT-2) or to nothing (SentencePiece control tokens). The result may end
  // in part of a UTF-8 character when `ids` stops inside one (generation
  // decodes as it goes). ConfigError for an id outside [0, vocabSize()).
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  // One more than the largest id (embedding rows the model needs).
  virtual int64_t vocabSize() const = 0;
  // The begin-of-document token: SentencePiece's <s>; none for GPT-2.
  virtual std::optional<int32_t> bosId() const = 0;
  // The end-of-document token: GPT-2's <|endoftext|> (50256 in GPT-2's vocab),
  // SentencePiece's </s>.
  virtual std::optional<int32_t> eosId() const = 0;
  // "gpt2-bpe" | "sentencepiece".
  virtual std::string kind() const = 0;
  // Where a long text may be cut so that it can be encoded a part at a
  // time: the largest n in [1, text.size()) such that encode(text[0, n))
  // followed by encode(of the rest) gives encode's ids of the whole,
  // whatever follows `text`; 0 when there is none. The default never cuts.
  virtual size_t cutPoint(std::string_view text) const {
    (void)text;
    return 0;
  }

  // The ids one document becomes in a token file: bosId() when the tokenizer
  // has one, encode(text), then eosId() (GPT-2: text + <|endoftext|>, as
  // nanoGPT; SentencePiece: <s> text </s>, as Llama). ConfigError when the
  // tokenizer has no end token.
  std::vector<int32_t> encodeDocument(std::string_view text) const;
};

// Loads the tokenizer in folder `dir`, looking in this order for
//   1. tokenizer.json (Hugging Face) holding a GPT-2-style byte-level BPE;
//   2. vocab.json + merges.txt (GPT-2 byte-level BPE);
//   3. tokenizer.model (SentencePiece, e.g. Llama 1/2).
// A tokenizer.json of another kind (WordPiece, Unigram, a Llama-3 regex) is
// skipped when a later file is there (Llama folders ship both), else refused
// saying why. IoError when the folder or its files cannot be read or are
// malformed, ConfigError when they describe a tokenizer geopipe does not
// implement; each message names the folder, what was looked for and the fix.
std::unique_ptr<Tokenizer> loadTokenizer(const std::string& dir);

// The paths (dir/name) of the files loadTokenizer(dir) reads, i.e. what a
// copy of the tokenizer needs (export copies them next to a model). Same
// errors as loadTokenizer.
std::vector<std::string> tokenizerFiles(const std::string& dir);

}  // namespace geopipe::tokenizer
