// The Hugging Face Llama architecture through the model API: RMSNorm,
// rotary position embeddings (HF's rotate-half convention), SwiGLU MLP and
// grouped-query attention; head tied or untied. Parameter names below each
// layer are HF's (docs/models.md).
#include "geopipe/error.h"
#include "geopipe/model.h"
#include "src/model/layers.h"

namespace geopipe {
namespace {

using model::IncrementalLayer;
using model::LayerKv;
using model::LmHead;
using model::RmsNorm;

torch::nn::Linear linear(int64_t in, int64_t out) {
  torch::nn::Linear l(torch::nn::LinearOptions(in, out).bias(false));
  torch::nn::init::normal_(l->weight, 0.0, 0.02);
  return l;
}

struct LlamaEmbeddingImpl : torch::nn::Module, IncrementalLayer {
  LlamaEmbeddingImpl(const ModelSpec& s)
      : embed_tokens(register_module("embed_tokens", torch::nn::Embedding(s.vocab, s.hidden))) {
    torch::nn::init::normal_(embed_tokens->weight, 0.0, 0.02);
  }
  torch::Tensor forward(const torch::Tensor& ids) { return embed_tokens->forward(ids); }
  torch::Tensor forwardAt(const torch::Tensor& ids, int64_t, LayerKv&) override {
    return forward(ids);
  }
  torch::nn::Embedding embed_tokens;
};
TORCH_MODULE(LlamaEmbedding);

// x [B, H, T, hd] rotated by the angles of positions [offset, offset + T):
// x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1], angles
// position * theta^(-2i/hd) duplicated over both halves (HF's convention).
torch::Tensor applyRope(const torch::Tensor& x, int64_t offset, double theta) {
  const int64_t t = x.size(2), hd = x.size(3);
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(x.device());
  auto exponents = torch::arange(0, hd, 2, f32.dtype(torch::kLong)).to(torch::kFloat32) / hd;
  auto inv_freq = 1.0 / torch::pow(theta, exponents);
  auto positions = torch::arange(offset, offset + t, f32.dtype(torch::kLong)).to(torch::kFloat32);
  auto freqs = torch::outer(positions, inv_freq);
  auto angles = torch::cat({freqs, freqs}, -1);
  auto cos = angles.cos().to(x.scalar_type()), sin = angles.sin().to(x.scalar_type());
  auto halves = x.chunk(2, -1);
  auto rotated = torch::cat({-halves[1], halves[0]}, -1);
  return x * cos + rotated * sin;
}

struct LlamaAttentionImpl : torch::nn::Module {
  LlamaAttentionImpl(const ModelSpec& s)
      : heads(s.heads),
        kv_heads(s.kvHeads()),
        head_dim(s.hidden / s.heads),
        theta(s.rope_theta),
        q_proj(register_module("q_proj", linear(s.hidden, s.hidden))),
        k_proj(register_module("k_proj",
                               linear(s.hidden, int64_t{s.kvHeads()} * (s.hidden / s.heads)))),
        v_proj(register_module("v_proj",
                               linear(s.hidden, int64_t{s.kvHeads()} * (s.hidden / s.heads)))),
        o_proj(register_module("o_proj", linear(s.hidden, s.hidden))),
        attn_drop(register_module("attn_dropout", torch::nn::Dropout(s.dropout))) {}

  torch::Tensor forwardAt(const torch::Tensor& x, int64_t offset, LayerKv& kv) {
    const int64_t b = x.size(0), t = x.size(1);
    auto q = q_proj->forward(x).view({b, t, heads, head_dim}).transpose(1, 2);
    auto k = k_proj->forward(x).view({b, t, kv_heads, head_dim}).transpose(1, 2);
    auto v = v_proj->forward(x).view({b, t, kv_heads, head_dim}).transpose(1, 2);
    q = applyRope(q, offset, theta);
    k = applyRope(k, offset, theta);
    model::appendKv(kv, k, v);
    // Key/value head j serves query heads j*g .. j*g + g - 1.
    const int64_t g = heads / kv_heads;
    auto keys = g == 1 ? kv.k : kv.k.repeat_interleave(g, 1);
    auto values = g == 1 ? kv.v : kv.v.repeat_interleave(g, 1);
    auto y = model::causalAttention(q, keys, values, offset, attn_drop);
    return o_proj->forward(y.transpose(1, 2).reshape({b, t, heads * head_dim}));
  }
  int64_t heads, kv_heads, head_dim;
  double theta;
  torch::nn::Linear q_proj, k_proj, v_proj, o_proj;
  torch::nn::Dropout attn_drop;
};
TORCH_MODULE(LlamaAttention);

struct LlamaMlpImpl : torch::nn::Module {
  LlamaMlpImpl(const ModelSpec& s)
      : gate_proj(register_module("gate_proj", linear(s.hidden, s.ffnWidth()))),
        up_proj(register_module("up_proj", linear(s.hidden, s.ffnWidth()))),
        down_proj(register_module("down_proj", linear(s.ffnWidth(), s.hidden))) {}
  torch::Tensor forward(const torch::Tensor& x) {
    return down_proj->forward(torch::silu(gate_proj->forward(x)) * up_proj->forward(x));
  }
  torch::nn::Linear gate_proj, up_proj, down_proj;
};
TORCH_MODULE(LlamaMlp);

struct LlamaBlockImpl : torch::nn::Module, IncrementalLayer {
  LlamaBlockImpl(const ModelSpec& s)
      : input_layernorm(register_module("input_layernorm", RmsNorm(s.hidden, s.normEps()))),
        self_attn(register_module("self_attn", LlamaAttention(s))),
        post_attention_layernorm(
            register_module("post_attention_layernorm", RmsNorm(s.hidden, s.normEps()))),
        mlp(register_module("mlp", LlamaMlp(s))) {}
  torch::Tensor forward(const torch::Tensor& x) {
    LayerKv kv;
    return forwardAt(x, 0, kv);
  }
  torch::Tensor forwardAt(const torch::Tensor& x, int64_t offset, LayerKv& kv) override {
    auto x1 = x + self_attn->forwardAt(input_layernorm->forward(x), offset, kv);
    return x1 + mlp->forward(post_attention_layernorm->forward(x1));
  }
  RmsNorm input_layernorm;
  LlamaAttention self_attn;
  RmsNorm post_attention_layernorm;
  LlamaMlp mlp;
};
TORCH_MODULE(LlamaBlock);

struct LlamaHeadImpl : torch::nn::Module, IncrementalLayer {
  LlamaHeadImpl(const ModelSpec& s)
      : norm(register_module("norm", RmsNorm(s.hidden, s.normEps()))),
        lm_head(register_module("lm_head", LmHead(s.hidden, s.vocab))) {}
  torch::Tensor forward(const torch::Tensor& x) { return lm_head->forward(norm->forward(x)); }
  torch::Tensor forwardAt(const torch::Tensor& x, int64_t, LayerKv&) override { return forward(x); }
  RmsNorm norm;
  LmHead lm_head;
};
TORCH_MODULE(LlamaHead);

}  // namespace

ModelDef makeLlama(const ModelSpec& spec) {
  GEOPIPE_CHECK(spec.hidden % spec.heads == 0 && spec.heads % spec.kvHeads() == 0, ConfigError,
                "model.heads (", spec.heads, ") must divide model.hidden (", spec.hidden,
                ") and be a multiple of model.num_key_value_heads (", spec.kvHeads(), ")");
  GEOPIPE_CHECK((spec.hidden / spec.heads) % 2 == 0, ConfigError,
                "llama: the head dimension hidden / heads = ", spec.hidden / spec.heads,
                " must be even for rotary embeddings");
  return model::makeFamily(spec, "llama", "embed_tokens.weight", [spec](model::FamilyLayer l) {
    if (l == model::FamilyLayer::EMBEDDING) return torch::nn::AnyModule(LlamaEmbedding(spec));
    if (l == model::FamilyLayer::HEAD) return torch::nn::AnyModule(LlamaHead(spec));
    return torch::nn::AnyModule(LlamaBlock(spec));
  });
}

}  // namespace geopipe
