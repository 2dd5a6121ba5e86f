// The built-in GPT, expressed through the model API. Not HF GPT-2 (untied
// head, exact GELU, positions sized by seq_len); kept bit-identical.
#include <cmath>

#include "geopipe/error.h"
#include "geopipe/model.h"

namespace geopipe {
namespace {

// Token + learned position embedding: int64 [B, T] -> float [B, T, H].
struct EmbeddingImpl : torch::nn::Module {
  EmbeddingImpl(int vocab, int seq_len, int hidden)
      : tok(register_module("tok", torch::nn::Embedding(vocab, hidden))),
        pos(register_module("pos", torch::nn::Embedding(seq_len, hidden))) {
    torch::nn::init::normal_(tok->weight, 0.0, 0.02);
    torch::nn::init::normal_(pos->weight, 0.0, 0.02);
  }
  torch::Tensor forward(const torch::Tensor& ids) {
    auto positions = torch::arange(ids.size(1), ids.options().dtype(torch::kLong));
    return tok->forward(ids) + pos->forward(positions).unsqueeze(0);
  }
  torch::nn::Embedding tok, pos;
};
TORCH_MODULE(Embedding);

// Pre-LayerNorm block: x + attn(ln1(x)), then + mlp(ln2(x)). Causal
// multi-head attention written out (LibTorch 1.13 has no fused SDPA).
struct BlockImpl : torch::nn::Module {
  BlockImpl(int hidden, int heads, int ffn_mult, double dropout, int num_blocks)
      : heads_(heads),
        ln1(register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({hidden})))),
        qkv(register_module("qkv", torch::nn::Linear(hidden, 3 * hidden))),
        proj(register_module("proj", torch::nn::Linear(hidden, hidden))),
        ln2(register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({hidden})))),
        fc(register_module("fc", torch::nn::Linear(hidden, ffn_mult * hidden))),
        out(register_module("out", torch::nn::Linear(ffn_mult * hidden, hidden))),
        drop(register_module("drop", torch::nn::Dropout(dropout))) {
    // GPT-2 initialisation: N(0, 0.02), residual projections scaled by
    // 1/sqrt(2 * blocks), zero biases.
    for (auto* lin : {&qkv, &proj, &fc, &out}) {
      torch::nn::init::normal_((*lin)->weight, 0.0, 0.02);
      torch::nn::init::zeros_((*lin)->bias);
    }
    const double residual_std = 0.02 / std::sqrt(2.0 * num_blocks);
    torch::nn::init::normal_(proj->weight, 0.0, residual_std);
    torch::nn::init::normal_(out->weight, 0.0, residual_std);
  }

  torch::Tensor forward(const torch::Tensor& x) {
    const int64_t b = x.size(0), t = x.size(1), h = x.size(2), d = h / heads_;
    auto q_k_v = qkv->forward(ln1->forward(x)).view({b, t, 3, heads_, d}).permute({2, 0, 3, 1, 4});
    auto q = q_k_v[0], k = q_k_v[1], v = q_k_v[2];  // [B, heads, T, d]
    auto scores = torch::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(d));
    auto mask = torch::ones({t, t}, x.options().dtype(torch::kBool)).triu(1);
    scores = scores.masked_fill(mask, -std::numeric_limits<float>::infinity());
    // The softmax in fp32 also under 16-bit autocast (the same kernel for
    // fp32 scores, so fp32 runs are unchanged).
    auto attn = drop->forward(torch::softmax(scores, -1, torch::kFloat32).to(v.scalar_type()));
    auto y = torch::matmul(attn, v).transpose(1, 2).reshape({b, t, h});
    auto x1 = x + drop->forward(proj->forward(y));
    auto m = out->forward(torch::gelu(fc->forward(ln2->forward(x1))));
    return x1 + drop->forward(m);
  }

  int64_t heads_;
  torch::nn::LayerNorm ln1;
  torch::nn::Linear qkv, proj;
  torch::nn::LayerNorm ln2;
  torch::nn::Linear fc, out;
  torch::nn::Dropout drop;
};
TORCH_MODULE(Block);

// Final LayerNorm + LM head: float [B, T, H] -> logits [B, T, V].
struct HeadImpl : torch::nn::Module {
  HeadImpl(int hidden, int vocab)
      : ln(register_module("ln", torch::nn::LayerNorm(torch::nn::LayerNormOptions({hidden})))),
        lm(register_module("lm", torch::nn::Linear(torch::nn::LinearOptions(hidden, vocab).bias(false)))) {
    torch::nn::init::normal_(lm->weight, 0.0, 0.02);
  }
  torch::Tensor forward(const torch::Tensor& x) { return lm->forward(ln->forward(x)); }
  torch::nn::LayerNorm ln;
  torch::nn::Linear lm;
};
TORCH_MODULE(Head);

}  // namespace

ModelDef makeGpt(const ModelSpec& spec) {
  GEOPIPE_CHECK(spec.hidden % spec.heads == 0, ConfigError, "model.hidden (", spec.hidden,
                ") must be divisible by model.heads (", spec.heads, ")");
  ModelDef m;
  m.name = "gpt";
  m.num_layers = spec.layers + 2;
  m.prologue_layers = 1;
  m.epilogue_layers = 1;
  const int blocks = spec.layers;
  m.make_layer = [spec, blocks](int i) -> torch::nn::AnyModule {
    if (i == 0) return torch::nn::AnyModule(Embedding(spec.vocab, spec.seq_len, spec.hidden));
    if (i == blocks + 1) return torch::nn::AnyModule(Head(spec.hidden, spec.vocab));
    return torch::nn::AnyModule(Block(spec.hidden, spec.heads, spec.ffn_mult, spec.dropout, blocks));
  };
  m.max_positions = spec.seq_len;
  m.output_shape = [spec, blocks](int i, int64_t batch, int64_t seq) -> std::vector<int64_t> {
    if (i == blocks + 1) return {batch, seq, spec.vocab};
    return {batch, seq, spec.hidden};
  };
  m.loss = [](const torch::Tensor& logits, const torch::Tensor& targets) {
    return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}),
                                                targets.reshape({-1}));
  };
  return m;
}

}  // namespace geopipe
