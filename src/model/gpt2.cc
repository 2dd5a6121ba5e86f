// The Hugging Face GPT-2 architecture through the model API: learned
// positions, pre-LayerNorm blocks with biases, tanh-approximated GELU, and
// an LM head tied to the token embedding. Parameter names below each layer
// are HF's (docs/models.md), so imported tensors map one to one.
#include <cmath>

#include "geopipe/error.h"
#include "geopipe/model.h"
#include "src/model/layers.h"

namespace geopipe {
namespace {

using model::Conv1D;
using model::IncrementalLayer;
using model::LayerKv;
using model::LmHead;

torch::nn::LayerNorm layerNorm(int64_t hidden, double eps) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({hidden}).eps(eps));
}

// wte + wpe: int64 [B, T] -> float [B, T, d].
struct Gpt2EmbeddingImpl : torch::nn::Module, IncrementalLayer {
  Gpt2EmbeddingImpl(const ModelSpec& s)
      : wte(register_module("wte", torch::nn::Embedding(s.vocab, s.hidden))),
        wpe(register_module("wpe", torch::nn::Embedding(s.maxPositions(), s.hidden))),
        drop(register_module("drop", torch::nn::Dropout(s.dropout))) {
    torch::nn::init::normal_(wte->weight, 0.0, 0.02);
    torch::nn::init::normal_(wpe->weight, 0.0, 0.02);
  }
  torch::Tensor forward(const torch::Tensor& ids) {
    LayerKv none;
    return forwardAt(ids, 0, none);
  }
  torch::Tensor forwardAt(const torch::Tensor& ids, int64_t offset, LayerKv&) override {
    const int64_t end = offset + ids.size(1);
    GEOPIPE_CHECK(end <= wpe->weight.size(0), ConfigError, "gpt2: position ", end - 1,
                  " is beyond the model's ", wpe->weight.size(0), " positions (n_positions)");
    auto positions = torch::arange(offset, end, ids.options().dtype(torch::kLong));
    return drop->forward(wte->forward(ids) + wpe->forward(positions).unsqueeze(0));
  }
  torch::nn::Embedding wte, wpe;
  torch::nn::Dropout drop;
};
TORCH_MODULE(Gpt2Embedding);

struct Gpt2AttentionImpl : torch::nn::Module {
  Gpt2AttentionImpl(const ModelSpec& s)
      : heads(s.heads),
        c_attn(register_module("c_attn", Conv1D(s.hidden, 3 * s.hidden))),
        c_proj(register_module("c_proj", Conv1D(s.hidden, s.hidden))),
        attn_drop(register_module("attn_dropout", torch::nn::Dropout(s.dropout))),
        resid_drop(register_module("resid_dropout", torch::nn::Dropout(s.dropout))) {}
  torch::Tensor forwardAt(const torch::Tensor& x, int64_t offset, LayerKv& kv) {
    const int64_t b = x.size(0), t = x.size(1), h = x.size(2), d = h / heads;
    auto qkv = c_attn->forward(x).view({b, t, 3, heads, d}).permute({2, 0, 3, 1, 4});
    model::appendKv(kv, qkv[1], qkv[2]);
    auto y = model::causalAttention(qkv[0], kv.k, kv.v, offset, attn_drop);
    return resid_drop->forward(c_proj->forward(y.transpose(1, 2).reshape({b, t, h})));
  }
  int64_t heads;
  Conv1D c_attn, c_proj;
  torch::nn::Dropout attn_drop, resid_drop;
};
TORCH_MODULE(Gpt2Attention);

struct Gpt2MlpImpl : torch::nn::Module {
  Gpt2MlpImpl(const ModelSpec& s)
      : c_fc(register_module("c_fc", Conv1D(s.hidden, s.ffnWidth()))),
        c_proj(register_module("c_proj", Conv1D(s.ffnWidth(), s.hidden))),
        drop(register_module("dropout", torch::nn::Dropout(s.dropout))) {}
  torch::Tensor forward(const torch::Tensor& x) {
    return drop->forward(c_proj->forward(torch::gelu(c_fc->forward(x), "tanh")));
  }
  Conv1D c_fc, c_proj;
  torch::nn::Dropout drop;
};
TORCH_MODULE(Gpt2Mlp);

struct Gpt2BlockImpl : torch::nn::Module, IncrementalLayer {
  Gpt2BlockImpl(const ModelSpec& s)
      : ln_1(register_module("ln_1", layerNorm(s.hidden, s.normEps()))),
        attn(register_module("attn", Gpt2Attention(s))),
        ln_2(register_module("ln_2", layerNorm(s.hidden, s.normEps()))),
        mlp(register_module("mlp", Gpt2Mlp(s))) {
    // GPT-2's initialisation: residual projections N(0, 0.02 / sqrt(2 * layers)).
    const double residual_std = 0.02 / std::sqrt(2.0 * s.layers);
    torch::nn::init::normal_(attn->c_proj->weight, 0.0, residual_std);
    torch::nn::init::normal_(mlp->c_proj->weight, 0.0, residual_std);
  }
  torch::Tensor forward(const torch::Tensor& x) {
    LayerKv kv;
    return forwardAt(x, 0, kv);
  }
  torch::Tensor forwardAt(const torch::Tensor& x, int64_t offset, LayerKv& kv) override {
    auto x1 = x + attn->forwardAt(ln_1->forward(x), offset, kv);
    return x1 + mlp->forward(ln_2->forward(x1));
  }
  torch::nn::LayerNorm ln_1;
  Gpt2Attention attn;
  torch::nn::LayerNorm ln_2;
  Gpt2Mlp mlp;
};
TORCH_MODULE(Gpt2Block);

// ln_f + lm_head: [B, T, d] -> logits [B, T, V].
struct Gpt2HeadImpl : torch::nn::Module, IncrementalLayer {
  Gpt2HeadImpl(const ModelSpec& s)
      : ln_f(register_module("ln_f", layerNorm(s.hidden, s.normEps()))),
        lm_head(register_module("lm_head", LmHead(s.hidden, s.vocab))) {}
  torch::Tensor forward(const torch::Tensor& x) { return lm_head->forward(ln_f->forward(x)); }
  torch::Tensor forwardAt(const torch::Tensor& x, int64_t, LayerKv&) override { return forward(x); }
  torch::nn::LayerNorm ln_f;
  LmHead lm_head;
};
TORCH_MODULE(Gpt2Head);

}  // namespace

ModelDef makeGpt2(const ModelSpec& spec) {
  return model::makeFamily(spec, "gpt2", "wte.weight", [spec](model::FamilyLayer l) {
    if (l == model::FamilyLayer::EMBEDDING) return torch::nn::AnyModule(Gpt2Embedding(spec));
    if (l == model::FamilyLayer::HEAD) return torch::nn::AnyModule(Gpt2Head(spec));
    return torch::nn::AnyModule(Gpt2Block(spec));
  });
}

}  // namespace geopipe
