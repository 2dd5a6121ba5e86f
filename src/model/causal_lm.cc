// Evaluation and generation of a whole model in one process.
#include "src/model/causal_lm.h"

#include <cmath>
#include <random>

#include "geopipe/error.h"
#include "src/config/hf_config.h"

namespace geopipe::model {

CausalLm CausalLm::fromFolder(const std::string& dir) {
  ModelSpec spec = config::readHfConfig(dir).shape;
  spec.from = dir;
  return CausalLm(spec);
}

CausalLm::CausalLm(const ModelSpec& spec, uint64_t seed) : spec_(spec), def_(makeModel(spec)) {
  GEOPIPE_CHECK(spec.isFamily(), ConfigError, "model.kind '", spec.kind,
                "': evaluation and generation take gpt2 and llama models");
  layers_ = buildSlice(def_, 0, def_.num_layers, seed);
  layers_->eval();
}

torch::Tensor CausalLm::logits(const torch::Tensor& ids) {
  torch::NoGradGuard guard;
  return layers_->forward(ids);
}

torch::Tensor CausalLm::logitsAt(const torch::Tensor& ids, int64_t offset,
                                 std::vector<LayerKv>& cache) {
  torch::NoGradGuard guard;
  cache.resize(static_cast<size_t>(def_.num_layers));
  torch::Tensor h = ids;
  for (int i = 0; i < def_.num_layers; ++i) {
    auto* layer = dynamic_cast<IncrementalLayer*>(layers_->ptr(i).get());
    GEOPIPE_CHECK(layer != nullptr, Error, "layer ", i, " of '", def_.name,
                  "' cannot run incrementally");
    h = layer->forwardAt(h, offset, cache[static_cast<size_t>(i)]);
  }
  return h;
}

EvalResult evaluate(CausalLm& lm, const data::TokenFile& tokens, const EvalOptions& options) {
  const int64_t t = options.seq_len > 0 ? options.seq_len : lm.maxPositions();
  GEOPIPE_CHECK(t <= lm.maxPositions(), ConfigError, "--seq-len ", t,
                " exceeds the model's maximum positions (", lm.maxPositions(), ")");
  GEOPIPE_CHECK(options.batch >= 1, ConfigError, "--batch must be at least 1");
  const int64_t windows = (tokens.size() - 1) / t;
  GEOPIPE_CHECK(windows >= 1, ConfigError, "token file '", tokens.path(), "' holds ", tokens.size(),
                " tokens, fewer than one window of seq-len + 1 = ", t + 1);
  tokens.checkBelow(lm.spec().vocab);
  EvalResult r;
  r.windows = windows;
  double sum = 0;
  for (int64_t w0 = 0; w0 < windows; w0 += options.batch) {
    const int64_t n = std::min(options.batch, windows - w0);
    torch::Tensor window = torch::empty({n, t + 1}, torch::kLong);
    for (int64_t i = 0; i < n; ++i) {
      tokens.copy((w0 + i) * t, t + 1, window[i].data_ptr<int64_t>());
    }
    torch::Tensor out = lm.logits(window.slice(1, 0, t)).to(torch::kFloat32);
    torch::Tensor ce = torch::nn::functional::cross_entropy(
        out.reshape({-1, out.size(-1)}), window.slice(1, 1, t + 1).reshape({-1}),
        torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
    sum += ce.item<double>();
    r.tokens += n * t;
    if (options.progress) options.progress(w0 + n, windows);
  }
  r.loss = sum / static_cast<double>(r.tokens);
  r.perplexity = std::exp(r.loss);
  return r;
}

namespace {

// The lowest id among the largest logits.
int64_t argmaxLowest(const torch::Tensor& row) {
  const torch::Tensor f = row.to(torch::kFloat32).contiguous();
  const float* p = f.data_ptr<float>();
  int64_t best = 0;
  for (int64_t i = 1; i < f.numel(); ++i) {
    if (p[i] > p[best]) best = i;
  }
  return best;
}

int64_t sample(const torch::Tensor& row, const GenerateOptions& o, std::mt19937_64& rng) {
  const torch::Tensor f = row.to(torch::kDouble).contiguous();
  const double* p = f.data_ptr<double>();
  const int64_t v = f.numel();
  std::vector<int64_t> ids(static_cast<size_t>(v));
  for (int64_t i = 0; i < v; ++i) ids[static_cast<size_t>(i)] = i;
  // Highest first; equal logits by id, so the candidate set is deterministic.
  std::stable_sort(ids.begin(), ids.end(), [&](int64_t a, int64_t b) { return p[a] > p[b]; });
  const int64_t k = o.top_k > 0 ? std::min(o.top_k, v) : v;
  std::vector<double> w(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) w[i] = std::exp((p[ids[i]] - p[ids[0]]) / o.temperature);
  std::discrete_distribution<int64_t> pick(w.begin(), w.end());
  return ids[static_cast<size_t>(pick(rng))];
}

}  // namespace

std::vector<int64_t> generate(CausalLm& lm, const std::vector<int64_t>& prompt,
                              const GenerateOptions& o) {
  GEOPIPE_CHECK(!prompt.empty(), ConfigError, "the prompt is empty: give at least one token");
  GEOPIPE_CHECK(o.max_new_tokens >= 1, ConfigError, "--max-new-tokens must be at least 1");
  GEOPIPE_CHECK(o.greedy || o.temperature > 0, ConfigError, "--temperature must be above 0");
  const int64_t vocab = lm.spec().vocab;
  for (int64_t id : prompt) {
    GEOPIPE_CHECK(id >= 0 && id < vocab, ConfigError, "prompt token ", id,
                  " is outside the model's vocabulary of ", vocab);
  }
  const int64_t total = static_cast<int64_t>(prompt.size()) + o.max_new_tokens;
  GEOPIPE_CHECK(total <= lm.maxPositions(), ConfigError, "the prompt (", prompt.size(),
                " tokens) plus --max-new-tokens ", o.max_new_tokens, " is ", total,
                " positions, beyond the model's maximum of ", lm.maxPositions(),
                ": shorten the prompt or generate fewer tokens");
  std::vector<LayerKv> cache;
  std::mt19937_64 rng(o.seed);
  torch::Tensor input = torch::tensor(prompt, torch::kLong).unsqueeze(0);
  int64_t offset = 0;
  std::vector<int64_t> out;
  const auto& eos = lm.spec().eos_token_ids;
  while (static_cast<int64_t>(out.size()) < o.max_new_tokens) {
    torch::Tensor logits = lm.logitsAt(input, offset, cache);
    offset += input.size(1);
    torch::Tensor last = logits[0][logits.size(1) - 1];
    const int64_t next = o.greedy ? argmaxLowest(last) : sample(last, o, rng);
    out.push_back(next);
    if (std::find(eos.begin(), eos.end(), next) != eos.end()) break;
    input = torch::full({1, 1}, next, torch::kLong);
  }
  return out;
}

}  // namespace geopipe::model
