// A whole gpt2 / llama model in one process, for evaluation (mean
// next-token cross-entropy of a token file) and generation with a KV cache:
// the engines behind `geopipe eval` and `geopipe generate`.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "geopipe/job_spec.h"
#include "geopipe/model.h"
#include "src/data/token_file.h"
#include "src/model/layers.h"

namespace geopipe::model {

class CausalLm {
 public:
  // The model of a Hugging Face folder (config.json + safetensors), as
  // exported by geopipe or made by transformers. ConfigError / IoError
  // naming the folder.
  static CausalLm fromFolder(const std::string& dir);
  // A model from a spec (spec.from set: its weights; else seeded init).
  explicit CausalLm(const ModelSpec& spec, uint64_t seed = 0);

  const ModelSpec& spec() const { return spec_; }
  int64_t maxPositions() const { return spec_.maxPositions(); }

  // Logits [B, T, V] of token ids [B, T] (T <= maxPositions()).
  torch::Tensor logits(const torch::Tensor& ids);
  // Logits of the new positions [offset, offset + T), given the cache of
  // the earlier ones (extended in place; one LayerKv per layer).
  torch::Tensor logitsAt(const torch::Tensor& ids, int64_t offset, std::vector<LayerKv>& cache);

 private:
  ModelSpec spec_;
  ModelDef def_;
  torch::nn::Sequential layers_;
};

struct EvalOptions {
  int64_t seq_len = 0;  // window: seq_len + 1 tokens; 0 = the model's max positions
  int64_t batch = 8;    // windows per forward
  // Called after each batch with (windows done, windows in all).
  std::function<void(int64_t, int64_t)> progress;
};

struct EvalResult {
  double loss = 0;        // mean cross-entropy in nats over every predicted token
  double perplexity = 0;  // exp(loss)
  int64_t tokens = 0;     // predicted tokens
  int64_t windows = 0;
};

// Cuts `tokens` as the `tokens` dataset cuts samples: window i is tokens
// [i*T, i*T + T + 1) (inputs and next-token targets overlap by one, so every
// token after the first is predicted exactly once); a last partial window
// is dropped. ConfigError when seq_len exceeds the model's positions or the
// file holds no whole window; IoError at a token >= vocab.
EvalResult evaluate(CausalLm& lm, const data::TokenFile& tokens, const EvalOptions& options);

struct GenerateOptions {
  int64_t max_new_tokens = 16;
  bool greedy = true;        // argmax, a tie to the lowest id
  double temperature = 1.0;  // sampling: softmax(logits / T)
  int64_t top_k = 0;         // sampling: the k most likely ids; 0 = all
  uint64_t seed = 0;         // sampling stream
};

// Continues `prompt` (ids) by up to max_new_tokens ids, stopping after an
// end-of-text id of the model (spec().eos_token_ids; included). ConfigError
// when the prompt is empty, an id is outside the vocabulary, or prompt +
// max_new_tokens exceeds the model's maximum positions.
std::vector<int64_t> generate(CausalLm& lm, const std::vector<int64_t>& prompt,
                              const GenerateOptions& options);

}  // namespace geopipe::model
