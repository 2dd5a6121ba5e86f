// Building blocks shared by the Hugging Face model families (gpt2, llama):
// the tieable LM head, GPT-2's Conv1D, RMSNorm, causal attention over a KV
// cache, and the interface generation uses to run layers incrementally.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <string>

#include "geopipe/model.h"

namespace geopipe::model {

// Keys and values of one attention layer for the positions seen so far,
// [batch, kv_heads, positions, head_dim]; undefined before the first call.
struct LayerKv {
  torch::Tensor k, v;
};

// A layer that can run on new positions [offset, offset + T) given the
// cached keys and values of the earlier ones (generation with a KV cache).
// forwardAt(x, 0, empty kv) equals forward(x). Layers without attention
// ignore kv; the embedding uses offset for its positions.
class IncrementalLayer {
 public:
  virtual ~IncrementalLayer() = default;
  virtual torch::Tensor forwardAt(const torch::Tensor& x, int64_t offset, LayerKv& kv) = 0;
};

// Vocabulary projection [.., d] -> [.., V] without bias, whose weight may be
// bound to the token embedding (tied heads).
struct LmHeadImpl : torch::nn::Module {
  LmHeadImpl(int64_t hidden, int64_t vocab);
  torch::Tensor forward(const torch::Tensor& x) { return torch::nn::functional::linear(x, weight); }
  // Makes `w` this head's weight (the same tensor, not a copy).
  void tieTo(const torch::Tensor& w);
  torch::Tensor weight;
};
TORCH_MODULE(LmHead);

// GPT-2's Conv1D: a linear layer whose weight is stored [in, out], computed
// as HF does (addmm of the flattened input).
struct Conv1DImpl : torch::nn::Module {
  Conv1DImpl(int64_t in, int64_t out);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight, bias;
};
TORCH_MODULE(Conv1D);

// Llama's RMSNorm, in fp32 whatever the input dtype: x * rsqrt(mean(x^2) +
// eps), cast back, times the weight.
struct RmsNormImpl : torch::nn::Module {
  RmsNormImpl(int64_t hidden, double eps);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;
  double eps;
};
TORCH_MODULE(RmsNorm);

// Causal scaled dot-product attention of queries for positions
// [offset, offset + T) against keys/values of positions [0, offset + T):
// q [B, H, T, hd], k and v [B, H, offset + T, hd] (heads already repeated
// for grouped-query attention). Softmax in fp32 when q is 16-bit.
torch::Tensor causalAttention(const torch::Tensor& q, const torch::Tensor& k,
                              const torch::Tensor& v, int64_t offset, torch::nn::Dropout& dropout);

// Appends new keys/values along the position axis; returns the whole.
void appendKv(LayerKv& kv, const torch::Tensor& k, const torch::Tensor& v);

// Which of a family's layers to build.
enum class FamilyLayer { EMBEDDING, BLOCK, HEAD };

// The ModelDef of a Hugging Face family (model.cc): layer 0 the embedding,
// spec.layers blocks, the head; the next-token loss; the head tied to
// `embedding_param` when spec ties them; spec.from's weights when set.
ModelDef makeFamily(const ModelSpec& spec, const std::string& name,
                    const std::string& embedding_param,
                    std::function<torch::nn::AnyModule(FamilyLayer)> make);

// The LM head inside a family's last layer (its child "lm_head"); nullptr
// when the module has none.
LmHeadImpl* lmHeadOf(torch::nn::Module& layer);

}  // namespace geopipe::model
