// Training data as one token stream cut into fixed-length samples: byte-level
// text, pre-tokenized binary files (uint16/uint32), Debian's fortunes, or a
// generated synthetic corpus. Torch-free; the runtime turns batches into
// tensors.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "geopipe/job_spec.h"

namespace geopipe::data {

// A token stream and how it is cut: sample i is tokens
// [i * seq_len, i * seq_len + seq_len + 1) (inputs and next-token targets
// overlap by one). Sample ids are these indices: stable across runs, so
// AC-SGD's per-sample buffers can be keyed by them.
class TokenDataset {
 public:
  TokenDataset(std::vector<int32_t> tokens, int seq_len, int vocab, std::string source);

  int64_t numSamples() const { return num_samples_; }
  int seqLen() const { return seq_len_; }
  int vocab() const { return vocab_; }
  const std::string& source() const { return source_; }
  const std::vector<int32_t>& tokens() const { return tokens_; }

  // Copies sample `id`'s seq_len inputs and seq_len targets.
  void sample(int64_t id, int32_t* inputs, int32_t* targets) const;

 private:
  std::vector<int32_t> tokens_;
  int seq_len_;
  int vocab_;
  int64_t num_samples_;
  std::string source_;
};

// Loads the dataset a job names (data.kind / path / tokenizer / token_dtype /
// num_samples) for the model's seq_len and vocab. Text with a tokenizer is
// one document: the tokenizer's encodeDocument of the whole file. Throws
// ConfigError or IoError naming the file and the fix: empty file, token >=
// vocab (with its offset), a tokenizer with more ids than vocab, fewer tokens
// than one sample, byte-level text data with vocab < 256.
TokenDataset loadDataset(const DataSpec& data, const ModelSpec& model, uint64_t seed);

// A job's training data and, when it has one, its validation set.
struct JobData {
  TokenDataset train;
  std::optional<TokenDataset> val;
};

// loadDataset, plus the validation set: data.val_path read like data.path
// (the same kind and token dtype), or with data.val_fraction f the last
// max(1, floor(f x samples)) whole samples held out (after num_samples) so
// training sees only the samples before them. ConfigError when nothing
// would be left to train on.
JobData loadJobData(const DataSpec& data, const ModelSpec& model, uint64_t seed);

// How many training samples loadJobData would give, counted without
// loading the tokens: the synthetic default or data.num_samples, a text
// file's bytes, a token file's size / token_dtype, the fortunes texts; capped
// at data.num_samples, less the data.val_fraction hold-out. With
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

// The English texts of Debian's fortunes packages as one byte stream, from
// `dir` (default /usr/share/games/fortunes); IoError if none are installed.
std::string readFortunes(const std::string& dir = "/usr/share/games/fortunes");

// A learnable synthetic corpus: `num_tokens` tokens from a fixed random
// first-order Markov chain over `vocab` symbols (so loss falls well below
// log(vocab) as a model learns it).
std::vector<int32_t> syntheticTokens(int64_t num_tokens, int vocab, uint64_t seed);

}  // namespace geopipe::data
