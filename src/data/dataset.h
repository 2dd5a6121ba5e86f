// Training data as one token stream cut into fixed-length samples: byte-level
// text, pre-tokenized binary files (uint16/uint32, memory-mapped), Debian's
// fortunes, or a generated synthetic corpus. Torch-free; the runtime turns
// batches into tensors.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "geopipe/job_spec.h"
#include "src/data/token_file.h"

namespace geopipe::data {

// The target id of a padded position: PyTorch's cross_entropy ignore_index
// (and Hugging Face's label for "no loss"), so every built-in loss leaves it
// out of its mean.
constexpr int32_t kIgnoreTarget = -100;

// The ids a dataset is cut from: a token file or byte-level text mapped
// read-only (never copied or widened: its pages belong to the page cache, not
// to the process's anonymous memory), or ids held in memory once (tokenized
// text, fortunes, synthetic; small corpora). A job's training and validation sets share one stream.
// Immutable, thread-safe.
class TokenStream {
 public:
  explicit TokenStream(TokenFile file);
  explicit TokenStream(std::vector<int32_t> ids);

  int64_t size() const { return file_ ? file_->size() : static_cast<int64_t>(ids_.size()); }
  int64_t at(int64_t i) const { return file_ ? file_->at(i) : ids_[static_cast<size_t>(i)]; }
  // Ids [first, first + n) into out (only these are widened).
  void copy(int64_t first, int64_t n, int32_t* out) const;
  // The first position whose id is >= vocab, or -1; one streaming pass.
  int64_t firstAtOrAbove(int64_t vocab) const;
  bool mapped() const { return file_.has_value(); }

 private:
  std::optional<TokenFile> file_;
  std::vector<int32_t> ids_;
};

// Where each sample of an unpacked dataset starts in the stream and how many
// of its seq_len targets are real (data.pack: false); 12 bytes per sample.
struct SampleIndex {
  std::vector<int64_t> start;
  std::vector<int32_t> targets;
};

// Cuts [first, first + count) of `stream` into samples that stop at document
// ends: a document is the ids up to and including one of `end_ids` (or the
// window's end), cut into ceil((length - 1) / seq_len) samples of seq_len + 1
// ids, the last one shorter. A document of one id (an empty one) predicts
// nothing and has no sample. One streaming pass.
SampleIndex indexDocuments(const TokenStream& stream, int64_t first, int64_t count, int seq_len,
                           const std::vector<int64_t>& end_ids);

// How many samples indexDocuments would make of the whole stream, without
// keeping the index: the count `geopipe validate` sizes AC-SGD buffers by.
int64_t countDocumentSamples(const TokenStream& stream, int seq_len,
                             const std::vector<int64_t>& end_ids);

// A token stream and how it is cut into samples; sample ids are 0..n-1,
// stable across runs, so AC-SGD's per-sample buffers can be keyed by them.
// Packed (data.pack: true): sample i is ids [first + i * seq_len, first +
// i * seq_len + seq_len + 1) of the stream (inputs and next-token targets
// overlap by one). Unpacked: sample i is where the SampleIndex says, and its
// positions past the real targets are padding (input 0, target
// kIgnoreTarget). Cheap to copy: the stream and the index are shared.
class TokenDataset {
 public:
  // Packed: `samples` samples from stream position `first`.
  TokenDataset(std::shared_ptr<const TokenStream> stream, int64_t first, int64_t samples,
               int seq_len, int vocab, std::string source);
  // Unpacked: samples [first_sample, first_sample + samples) of `index`.
  TokenDataset(std::shared_ptr<const TokenStream> stream, std::shared_ptr<const SampleIndex> index,
               int64_t first_sample, int64_t samples, int seq_len, int vocab, std::string source);

  int64_t numSamples() const { return num_samples_; }
  int seqLen() const { return seq_len_; }
  int vocab() const { return vocab_; }
  const std::string& source() const { return source_; }
  const TokenStream& stream() const { return *stream_; }
  // True when some sample has padding (only ever with data.pack: false).
  bool padded() const { return padded_; }
  // The real targets of sample `id`: seq_len, fewer at a document's end.
  int targetsOf(int64_t id) const;
  // The stream position of sample `id`'s first input id.
  int64_t startOf(int64_t id) const;

  // Copies sample `id`'s seq_len inputs and seq_len targets (padding:
  // input 0, target kIgnoreTarget).
  void sample(int64_t id, int32_t* inputs, int32_t* targets) const;
  // Samples [first, first + samples) as a dataset of their own (ids from
  // 0), sharing the stream: a validation set held out of the data.
  TokenDataset slice(int64_t first, int64_t samples, std::string source) const;

 private:
  void checkId(int64_t id) const;

  std::shared_ptr<const TokenStream> stream_;
  std::shared_ptr<const SampleIndex> index_;  // null: packed
  int64_t first_ = 0;  // packed: stream position of sample 0; else its index entry
  int64_t num_samples_ = 0;
  int seq_len_;
  int vocab_;
  bool padded_ = false;
  std::string source_;
};

// Loads the dataset a job names (data.kind / path / tokenizer / token_dtype /
// num_samples / pack) for the model's seq_len and vocab. A token file is
// mapped, and its ids are checked against vocab in one streaming pass. Text
// with a tokenizer is one document: the tokenizer's encodeDocument of the
// whole file (byte-level text is one document too). With pack: false the
// documents of a token file end at model.eos_token_id (any of them).
// Throws ConfigError or IoError naming the file and the fix: empty file,
// token >= vocab (with its offset), a tokenizer with more ids than vocab,
// fewer tokens than one sample, byte-level text data with vocab < 256,
// pack: false where the document ends are unknown (fortunes, synthetic, a
// token file without model.eos_token_id).
TokenDataset loadDataset(const DataSpec& data, const ModelSpec& model, uint64_t seed);

// A job's training data and, when it has one, its validation set.
struct JobData {
  TokenDataset train;
  std::optional<TokenDataset> val;
};

// loadDataset, plus the validation set: data.val_path read like data.path
// (the same kind and token dtype), or with data.val_fraction f the last
// max(1, floor(f x samples)) whole samples held out (after num_samples) so
// training sees only the samples before them; both share the stream.
// ConfigError when nothing would be left to train on.
JobData loadJobData(const DataSpec& data, const ModelSpec& model, uint64_t seed);

// How many training samples loadJobData would give, counted without
// loading the tokens: the synthetic default or data.num_samples, a text
// file's bytes, a token file's size / token_dtype, the fortunes texts; capped
// at data.num_samples, less the data.val_fraction hold-out; with data.pack:
// false cut at document ends (a token file is scanned once). With
// data.tokenizer the tokens exist only after tokenizing: then `known` is
// false, unless data.num_samples is set, which bounds the count (`exact`
// false). A file that cannot be read is not known (its own check reports
// it). Torch-free and cheap: `geopipe validate` calls it.
struct SampleCount {
  int64_t samples = 0;  // training samples (an upper bound when !exact)
  bool known = true;    // false: not countable before the data loads
  bool exact = true;    // false: `samples` is an upper bound
  std::string how;      // where the number comes from, for messages
};
SampleCount countTrainSamples(const DataSpec& data, const ModelSpec& model);

// Why data.pack: false cannot be honored for this data ("" when it can):
// the document ends must be known. Used by validate and by loadDataset.
std::string unpackedDataProblem(const DataSpec& data, const ModelSpec& model);

// Text data (data.kind: text) is mapped, never read into memory: byte-level
// text is its own stream (one id per byte, read from the mapping), and a
// tokenizer encodes the mapped bytes as one document. Only the ids of
// tokenized text are held in memory (4 bytes each, one or more per few
// bytes), so a text file read through data.tokenizer may hold at most this
// many bytes; larger ones are tokenized once with `geopipe tokenize`.
constexpr int64_t kMaxTokenizedTextBytes = int64_t{256} << 20;

// Why data.path cannot be tokenized as it loads ("" when it can, or when it
// is no tokenized text or its size cannot be read): over
// kMaxTokenizedTextBytes ("'PATH' has N bytes, but ...: tokenize it once with
// `geopipe tokenize` ..."). Used by validate and by loadDataset.
std::string tokenizedTextProblem(const DataSpec& data);

// The fortune files of Debian's fortunes packages in `dir` (default
// /usr/share/games/fortunes): its regular files but the .dat indexes and
// .u8 copies, sorted by name. IoError if the folder cannot be read.
std::vector<std::string> fortuneFiles(const std::string& dir = "/usr/share/games/fortunes");

// The English texts of those files as one byte stream, each fortune's `%`
// separator line made empty; IoError if none are installed.
std::string readFortunes(const std::string& dir = "/usr/share/games/fortunes");

// A learnable synthetic corpus: `num_tokens` tokens from a fixed random
// first-order Markov chain over `vocab` symbols (so loss falls well below
// log(vocab) as a model learns it).
std::vector<int32_t> syntheticTokens(int64_t num_tokens, int vocab, uint64_t seed);

}  // namespace geopipe::data
