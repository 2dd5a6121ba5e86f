// Token files: a corpus tokenized into raw little-endian ids, what
// `geopipe tokenize` writes and `data.kind: tokens` reads (docs/data.md,
// "Token files"). Torch-free.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "src/tokenizer/tokenizer.h"

namespace geopipe::tokenizer {

struct TokenizeOptions {
  // Bytes per id in the file, little-endian: "uint16" (ids < 65536; refused
  // for a larger vocabulary) or "uint32".
  std::string dtype = "uint16";
  // In [0, 1): the last ceil(val_fraction x documents) whole documents go to
  // `out + ".val"` instead of `out`; 0 writes no .val file.
  double val_fraction = 0.0;
};

// Where a run stands; given to the progress callback after each document,
// and within a text file over 1 MiB after each part encoded.
struct TokenizeProgress {
  int64_t input_bytes_done = 0;   // bytes of input files read so far
  int64_t input_bytes_total = 0;  // bytes of all input files
  int64_t documents = 0;          // documents tokenized so far
  int64_t tokens = 0;             // ids written so far (train and val)
  double seconds = 0;             // since the run started
};

struct TokenizeResult {
  int64_t documents = 0;      // all documents (train + val)
  int64_t tokens = 0;         // all ids (train + val)
  int64_t text_bytes = 0;     // bytes of document text tokenized
  int64_t input_bytes = 0;    // bytes of the input files
  int64_t val_documents = 0;  // documents in out.val
  int64_t val_tokens = 0;     // ids in out.val
  double seconds = 0;         // wall time of the whole run
  std::string val_path;       // out + ".val" when written, else empty
};

// Tokenizes `inputs` in order into the token file `out`. A `.jsonl` input
// holds one document per line (a JSON object with a string field "text";
// blank lines are skipped); any other file is one document, read and
// encoded a part at a time in bounded memory (parts end at the tokenizer's
// cut points, so the ids are those of encoding it whole; text with none in
// 1 MiB, as SentencePiece has none, is cut there at a character boundary). Each document
// becomes tok.encodeDocument(text): GPT-2 text + <|endoftext|>, the last
// document's included (as nanoGPT); SentencePiece <s> text </s>.
// `out` (and out.val) are written under a temporary name and renamed at the
// end, so a failure leaves neither a half file nor the temporary.
// Checked before any work, throwing ConfigError: dtype, val_fraction in
// [0, 1), uint16 with a vocabulary over 65536 ids; IoError: an input that is
// missing or not a regular file, an `out` that cannot be written. During the
// run: IoError naming file:line for a .jsonl line that is not a JSON object
// with a string "text"; ConfigError when no documents were found or
// val_fraction would leave no training document.
TokenizeResult tokenizeFiles(const Tokenizer& tok, const std::vector<std::string>& inputs,
                             const std::string& out, const TokenizeOptions& options,
                             const std::function<void(const TokenizeProgress&)>& progress = {});

}  // namespace geopipe::tokenizer
