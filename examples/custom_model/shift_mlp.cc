// The custom-model example's model (shift_mlp.h) and the plugin entry point
// that registers it when geopipe loads libgeopipe_example_model.so
// (model.plugin in a job, or --plugin).
#include "examples/custom_model/shift_mlp.h"

#include <geopipe/error.h>
#include <geopipe/plugin.h>

#include <sstream>
#include <string>
#include <vector>

namespace {

// Token embedding: int64 [B, T] -> [B, T, H].
struct TokensImpl : torch::nn::Module {
  TokensImpl(int vocab, int hidden)
      : emb(register_module("emb", torch::nn::Embedding(vocab, hidden))) {}
  torch::Tensor forward(const torch::Tensor& ids) { return emb->forward(ids); }
  torch::nn::Embedding emb;
};
TORCH_MODULE(Tokens);

// x + MLP([x_t, x_{t-1}]): causal, because position t sees only t and t-1.
struct ShiftMlpImpl : torch::nn::Module {
  ShiftMlpImpl(int hidden, int expansion)
      : norm(register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({hidden})))),
        up(register_module("up", torch::nn::Linear(2 * hidden, expansion * hidden))),
        down(register_module("down", torch::nn::Linear(expansion * hidden, hidden))) {}
  torch::Tensor forward(const torch::Tensor& x) {
    auto h = norm->forward(x);
    auto prev = torch::nn::functional::pad(h, torch::nn::functional::PadFuncOptions({0, 0, 1, 0}))
                    .slice(1, 0, h.size(1));
    return x + down->forward(torch::gelu(up->forward(torch::cat({h, prev}, -1))));
  }
  torch::nn::LayerNorm norm;
  torch::nn::Linear up, down;
};
TORCH_MODULE(ShiftMlp);

// [B, T, H] -> logits [B, T, V].
struct ReadoutImpl : torch::nn::Module {
  ReadoutImpl(int hidden, int vocab)
      : out(register_module("out", torch::nn::Linear(hidden, vocab))) {}
  torch::Tensor forward(const torch::Tensor& x) { return out->forward(x); }
  torch::nn::Linear out;
};
TORCH_MODULE(Readout);

// model.options.expansions: one MLP expansion per block, default 4 each.
std::vector<int> blockExpansions(const geopipe::ModelSpec& spec) {
  std::vector<int> out(spec.layers, 4);
  auto it = spec.options.find("expansions");
  if (it == spec.options.end()) return out;
  std::vector<int> given;
  std::stringstream in(it->second);
  for (std::string item; std::getline(in, item, ',');) {
    size_t used = 0;
    int e = 0;
    try {
      e = std::stoi(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || e < 1 || e > 64) {
      GEOPIPE_THROW(geopipe::ConfigError, "shift-mlp: model.options.expansions '", it->second,
                    "': expected integers in [1, 64] separated by commas");
    }
    given.push_back(e);
  }
  if (static_cast<int>(given.size()) != spec.layers) {
    GEOPIPE_THROW(geopipe::ConfigError, "shift-mlp: model.options.expansions gives ", given.size(),
                  " blocks but model.layers is ", spec.layers);
  }
  return given;
}

}  // namespace

namespace example {

// The model definition geopipe needs: how to build layer i, what shape it
// returns, and the loss. model.layers in the job is the number of blocks.
geopipe::ModelDef makeShiftMlp(const geopipe::ModelSpec& spec) {
  geopipe::ModelDef m;
  m.name = "shift-mlp";
  m.num_layers = spec.layers + 2;
  m.prologue_layers = 1;  // the embedding rides with the first stage
  m.epilogue_layers = 1;  // the readout with the last
  const std::vector<int> expansions = blockExpansions(spec);
  m.make_layer = [spec, expansions](int i) -> torch::nn::AnyModule {
    if (i == 0) return torch::nn::AnyModule(Tokens(spec.vocab, spec.hidden));
    if (i == spec.layers + 1) return torch::nn::AnyModule(Readout(spec.hidden, spec.vocab));
    return torch::nn::AnyModule(ShiftMlp(spec.hidden, expansions[i - 1]));
  };
  m.output_shape = [spec](int i, int64_t batch, int64_t seq) -> std::vector<int64_t> {
    if (i == spec.layers + 1) return {batch, seq, spec.vocab};
    return {batch, seq, spec.hidden};
  };
  m.loss = [](const torch::Tensor& logits, const torch::Tensor& targets) {
    return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}),
                                                targets.reshape({-1}));
  };
  // The scheduler's price of each layer, per sample of seq_len tokens: 2
  // FLOPs per weight per token; activations kept for backward in fp32.
  const double h = spec.hidden, v = spec.vocab, s = spec.seq_len;
  m.cost.push_back({v * h, 0, 4 * s * h});
  for (int e : expansions) {
    const double weights = 2 * h * e * h + e * h * h;
    m.cost.push_back({weights + e * h + 3 * h, 2 * s * weights, 4 * s * (4 * h + 3 * e * h)});
  }
  m.cost.push_back({h * v + v, 2 * s * h * v, 4 * s * v});
  return m;
}

}  // namespace example

namespace {

void registerExampleModels() {
  geopipe::registerModel("shift-mlp", example::makeShiftMlp);
}

}  // namespace

// libgeopipe_example_model.so's entry points (geopipe_plugin_register and
// the ABI version): `model: {kind: custom, name: shift-mlp, plugin: PATH}`.
GEOPIPE_MODEL_PLUGIN(registerExampleModels)
