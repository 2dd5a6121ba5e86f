// Pretrained weights from a Hugging Face model folder (model.from) into a
// slice of a gpt2 / llama model: each tasklet maps the folder's safetensors
// files and copies only the tensors of its own layers.
#pragma once

#include <torch/torch.h>

#include <cstdint>

#include "geopipe/job_spec.h"

namespace geopipe::model {

// Copies the tensors of layers [first, last) of spec.from into `slice` (the
// modules of those layers, in order), converting F16/BF16 to float32. A tied
// head whose embedding is on another slice reads the embedding's tensor. An
// lm_head.weight stored although the head is tied must equal the embedding
// (checked when the head is in the slice). ConfigError / IoError naming the
// folder and the tensors (config.h planHfImport). Returns the tensor bytes
// read from the files.
uint64_t loadHfWeights(const ModelSpec& spec, torch::nn::Sequential& slice, int first, int last);

}  // namespace geopipe::model
