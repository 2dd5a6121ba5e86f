// The model API: a model is an ordered list of layers, each a LibTorch module
// from one tensor to one tensor, built on demand by index so that any
// contiguous slice can be built as a pipeline stage on any worker.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include "geopipe/job_spec.h"

namespace geopipe {

// A weight used by two layers: the parameter `user_param` of layer
// `user_layer` is the same weight as `owner_param` of layer `owner_layer`
// (an LM head reusing the token embedding). Within one stage `bind` makes
// the user layer hold the owner's tensor itself, so autograd sums both
// gradients into it and the optimizer steps it once. When the two layers sit
// on different stages each stage keeps a copy, initialised alike, and the
// runtime sums the two gradients every step (as Megatron does), so the
// copies stay bit-identical.
struct TiedWeight {
  int owner_layer = 0;
  std::string owner_param;  // dotted name inside the owner layer ("wte.weight")
  int user_layer = 0;
  std::string user_param;   // dotted name inside the user layer ("lm_head.weight")
  // Makes `user` (the module of user_layer) use `weight` for user_param.
  std::function<void(torch::nn::Module& user, const torch::Tensor& weight)> bind;
};

// A model geopipe can cut into stages.
//
// Layer 0 takes the micro-batch's token ids (int64 [batch, seq]); layer i
// takes layer i-1's output; `loss` maps the last layer's output and the target
// token ids (int64 [batch, seq]) to a scalar mean loss. Any seq from 1 to
// max_positions is valid (training uses model.seq_len; evaluation and
// generation other lengths). The first `prologue_layers` and the last
// `epilogue_layers` (a GPT's embedding and its LM head) always travel with
// the first and the last stage; the scheduler balances the layers between
// them (model.layers in the job).
//
// make_layer(i) is called with LibTorch's RNG seeded from (seed, i), so a
// layer gets the same initial weights whichever process builds it and
// whatever slice it is part of: a staged model starts exactly like the whole.
struct ModelDef {
  std::string name;
  int num_layers = 0;       // all layers, prologue and epilogue included
  int prologue_layers = 0;  // pinned to the first stage
  int epilogue_layers = 0;  // pinned to the last stage
  int max_positions = 0;    // longest sequence the layers accept; 0 = no limit
  std::function<torch::nn::AnyModule(int index)> make_layer;
  // Declared output shape of layer `index` for `batch` samples of `seq`
  // tokens; the runtime checks every output against it and every received
  // tensor on the wire.
  std::function<std::vector<int64_t>(int index, int64_t batch, int64_t seq)> output_shape;
  std::function<torch::Tensor(const torch::Tensor& output, const torch::Tensor& targets)> loss;
  std::vector<TiedWeight> tied;  // weights shared by two layers (may be empty)
  // Fills the parameters of the slice [first, last) from pretrained weights
  // (model.from); buildSlice calls it after the seeded initialisation.
  // Empty: the seeded initialisation stands.
  std::function<void(torch::nn::Sequential& slice, int first, int last)> load_weights;
  // The scheduler's price of each layer (num_layers entries, prologue and
  // epilogue included): parameters, forward FLOPs and activation bytes per
  // sample. Empty: the model is priced as a GPT of the job's model fields.
  std::vector<LayerCost> cost;

  // Layers the scheduler balances across stages.
  int bodyLayers() const { return num_layers - prologue_layers - epilogue_layers; }
};

// Builds layer `index` of `model` with the deterministic per-layer seed.
torch::nn::AnyModule buildLayer(const ModelDef& model, int index, uint64_t seed);

// The layers [first, last) of `model` as one module, in order. Tied weights
// with both layers inside the slice are bound (one tensor); a user layer
// whose owner lies outside starts from a copy of the owner's initial weight
// (built with the owner's seed), so every stage starts like the whole model.
// Then model.load_weights, when set, loads pretrained weights.
torch::nn::Sequential buildSlice(const ModelDef& model, int first, int last, uint64_t seed);

// Binds again every tied weight of the slice [first, last): loading a
// LibTorch archive gives each parameter its own storage, so call this after
// Module::load.
void bindTiedWeights(const ModelDef& model, torch::nn::Sequential& slice, int first, int last);

// The parameter `dotted` ("attn.c_attn.weight") of `module`; ConfigError
// naming the model, layer and the parameters it has when absent.
torch::Tensor layerParameter(torch::nn::Module& module, const std::string& dotted,
                             const std::string& model_name, int layer);

// The slice's trainable parameters, each once (a bound tied weight appears
// under two names but is one tensor), in the order of named_parameters.
std::vector<torch::Tensor> uniqueParameters(torch::nn::Module& module);

// model.cost in the form the scheduler reads (ModelSpec::cost): the body
// layers one by one, the prologue and the epilogue layers summed. Empty when
// the model gives no cost; ConfigError when it gives one of another length
// than num_layers, or a negative or non-finite entry.
ModelCost modelCost(const ModelDef& model);

// Registers a model factory under `name`, so jobs can say
// `model: {kind: custom, name: NAME}`. Thread-safe; a later registration of
// the same name replaces the earlier one.
void registerModel(const std::string& name,
                   std::function<ModelDef(const ModelSpec&)> factory);

// The model a job's ModelSpec names: the built-in GPT (kind gpt), the
// Hugging Face families (gpt2, llama; random init from the seed, or the
// weights of model.from when the runtime loads them), or a registered custom
// model. ConfigError naming the registered ones otherwise.
ModelDef makeModel(const ModelSpec& spec);

// The built-in GPT: token + position embedding (layer 0), `spec.layers`
// pre-LayerNorm transformer blocks, final LayerNorm + LM head (last layer).
ModelDef makeGpt(const ModelSpec& spec);

// Hugging Face GPT-2 (learned positions, pre-LayerNorm, tanh GELU, biases,
// head tied to the token embedding unless tie_embeddings is false) and Llama
// (RMSNorm, rotary positions, SwiGLU, grouped-query attention): layer 0 the
// embedding, then `spec.layers` blocks, then final norm + LM head.
ModelDef makeGpt2(const ModelSpec& spec);
ModelDef makeLlama(const ModelSpec& spec);

}  // namespace geopipe
