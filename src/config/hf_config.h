// Hugging Face model folders: config.json of a GPT-2 or Llama model read into
// a ModelSpec's shape, and written back from one (geopipe export). Torch-free,
// so `validate` checks a folder without LibTorch.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "geopipe/job_spec.h"

namespace geopipe::formats {
class SafetensorsFolder;
}

namespace geopipe::config {

// What a model folder's config.json says, in ModelSpec terms.
struct HfModelConfig {
  std::string path;         // the config.json read
  std::string model_type;   // "gpt2" | "llama"
  std::string torch_dtype;  // as stored ("float32", "bfloat16", ...); may be empty
  // kind, layers, hidden, heads, vocab, intermediate_size, max_positions,
  // norm_eps, tie_embeddings, bos/eos ids; for llama also
  // num_key_value_heads and rope_theta. seq_len = max_positions.
  ModelSpec shape;
};

// Reads DIR/config.json. ConfigError naming the file and the key when it
// is missing, malformed, of another architecture than `kind`, or uses a
// feature geopipe does not implement (rope_scaling, attention biases in
// llama, an activation other than the family's, cross-attention...).
HfModelConfig readHfConfig(const std::string& dir, const std::string& kind);
// The same from config.json's text; `origin` names it in messages.
HfModelConfig parseHfConfig(const std::string& text, const std::string& origin,
                            const std::string& kind);
// The same, taking the kind from config.json's model_type (gpt2 | llama);
// with model.from set to `dir`, for the commands that take a model folder.
HfModelConfig readHfConfig(const std::string& dir);

// config.json text for `model` (a gpt2 or llama ModelSpec) with the given
// torch_dtype ("float32" | "float16" | "bfloat16"), loadable by
// transformers' AutoConfig and read back by readHfConfig.
std::string hfConfigJson(const ModelSpec& model, const std::string& torch_dtype);

// One tensor of a model's Hugging Face layout and where it lives in ours:
// parameter `param` of layer `layer` (0 the embedding, 1..layers the
// blocks, layers + 1 final norm and head). Our layers name their parameters
// as HF does below the layer (GPT-2's Conv1D weights are kept [in, out], as
// HF stores them), so a tensor's bytes map one to one.
struct HfTensor {
  std::string name;            // HF name as geopipe writes it
  std::vector<int64_t> shape;  // HF shape
  int layer = 0;
  std::string param;
};

// Every tensor of `model`'s HF layout (GPT2LMHeadModel names with the
// `transformer.` prefix; LlamaForCausalLM names), in HF order; lm_head.weight
// only when the head is untied.
std::vector<HfTensor> hfTensors(const ModelSpec& model);

// What an HF tensor name found in a file is: its HfTensor (by the name
// geopipe writes; GPT-2 names without the `transformer.` prefix map too),
// std::nullopt for names the importer deliberately skips (GPT-2's
// attn.bias / attn.masked_bias mask buffers, rotary inv_freq buffers, an
// lm_head.weight of a tied model, which must then equal the embedding), or
// an HfTensor with layer -1 for a name the layout does not have.
std::optional<HfTensor> classifyHfName(const ModelSpec& model, const std::string& name);

// One tensor to import: where it lives in our layers, and the name it has
// in the folder's files (GPT-2 files may lack the `transformer.` prefix).
struct HfImportItem {
  HfTensor tensor;
  std::string file_name;
};

// The tensors of layers [first_layer, last_layer) to read from `folder`
// (a tied user layer whose owner is elsewhere reads the owner's tensor).
// Reads headers only. ConfigError naming the folder when a name in its files
// is not part of `model`'s layout (listing them: config.json does not
// describe these weights), when tensors of the layers asked are missing
// (listing every one), have another shape (both shapes) or a dtype other than
// F32, F16 and BF16.
std::vector<HfImportItem> planHfImport(const ModelSpec& model,
                                       const formats::SafetensorsFolder& folder,
                                       int first_layer, int last_layer);

// planHfImport over every layer: what `validate` checks of model.from.
void checkHfTensors(const ModelSpec& model);

// "float32" etc. for a safetensors dtype name of ours ("fp32", "fp16",
// "bf16"); ConfigError otherwise.
std::string torchDtypeName(const std::string& dtype);

}  // namespace geopipe::config
