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

// A model geopipe can cut into stages.
//
// Layer 0 takes the micro-batch's token ids (int64 [batch, seq_len]); layer i
// takes layer i-1's output; `loss` maps the last layer's output and the target
// token ids (int64 [batch, seq_len]) to a scalar mean loss. The first
// `prologue_layers` and the last `epilogue_layers` (a GPT's embedding and its
// LM head) always travel with the first and the last stage; the scheduler
// balances the layers between them (model.layers in the job).
//
// make_layer(i) is called with LibTorch's RNG seeded from (seed, i), so a
// layer gets the same initial weights whichever process builds it and
// whatever slice it is part of: a staged model starts exactly like the whole.
struct ModelDef {
  std::string name;
  int num_layers = 0;       // all layers, prologue and epilogue included
  int prologue_layers = 0;  // pinned to the first stage
  int epilogue_layers = 0;  // pinned to the last stage
  std::function<torch::nn::AnyModule(int index)> make_layer;
  // Declared output shape of layer `index` for `batch` samples; the runtime
  // checks every output against it and every received tensor on the wire.
  std::function<std::vector<int64_t>(int index, int64_t batch)> output_shape;
  std::function<torch::Tensor(const torch::Tensor& output, const torch::Tensor& targets)> loss;

  // Layers the scheduler balances across stages.
  int bodyLayers() const { return num_layers - prologue_layers - epilogue_layers; }
};

// Builds layer `index` of `model` with the deterministic per-layer seed.
torch::nn::AnyModule buildLayer(const ModelDef& model, int index, uint64_t seed);

// The layers [first, last) of `model` as one module, in order.
torch::nn::Sequential buildSlice(const ModelDef& model, int first, int last, uint64_t seed);

// Registers a model factory under `name`, so jobs can say
// `model: {kind: custom, name: NAME}`. Thread-safe; a later registration of
// the same name replaces the earlier one.
void registerModel(const std::string& name,
                   std::function<ModelDef(const ModelSpec&)> factory);

// The model a job's ModelSpec names: the built-in GPT (kind gpt) or a
// registered custom model. ConfigError naming the registered ones otherwise.
ModelDef makeModel(const ModelSpec& spec);

// The built-in GPT: token + position embedding (layer 0), `spec.layers`
// pre-LayerNorm transformer blocks, final LayerNorm + LM head (last layer).
ModelDef makeGpt(const ModelSpec& spec);

}  // namespace geopipe
