// Pretrained weights from a Hugging Face model folder into a model slice.
#include "src/model/hf_import.h"

#include "geopipe/error.h"
#include "geopipe/model.h"
#include "src/config/hf_config.h"
#include "src/formats/safetensors.h"

namespace geopipe::model {

uint64_t loadHfWeights(const ModelSpec& spec, torch::nn::Sequential& slice, int first, int last) {
  const formats::SafetensorsFolder folder(spec.from);
  const std::vector<config::HfImportItem> items = config::planHfImport(spec, folder, first, last);
  torch::NoGradGuard guard;
  for (const config::HfImportItem& item : items) {
    const config::HfTensor& t = item.tensor;
    torch::Tensor param = layerParameter(*slice->ptr(t.layer - first), t.param, spec.kind, t.layer);
    if (param.device().is_cpu() && param.is_contiguous() &&
        param.scalar_type() == torch::kFloat32) {
      folder.readFloat(item.file_name, param.data_ptr<float>(), param.numel());
    } else {
      torch::Tensor host = torch::empty(param.sizes(), torch::kFloat32);
      folder.readFloat(item.file_name, host.data_ptr<float>(), host.numel());
      param.copy_(host);
    }
  }
  // A tied head's stored copy (some files keep lm_head.weight although the
  // config ties it) is skipped, but only when it is the embedding.
  const int head = spec.layers + 1;
  if (spec.tiedEmbeddings() && folder.has("lm_head.weight") && first <= head && head < last) {
    const formats::TensorInfo info = folder.info("lm_head.weight");
    torch::Tensor stored = torch::empty({info.numel()}, torch::kFloat32);
    folder.readFloat("lm_head.weight", stored.data_ptr<float>(), stored.numel());
    torch::Tensor used =
        layerParameter(*slice->ptr(head - first), "lm_head.weight", spec.kind, head)
            .to(torch::kCPU);
    GEOPIPE_CHECK(stored.numel() == used.numel() && torch::equal(stored, used.reshape({-1})),
                  ConfigError, "model folder '", spec.from,
                  "': lm_head.weight differs from the token embedding, but config.json ties "
                  "them (tie_word_embeddings); set \"tie_word_embeddings\": false in config.json "
                  "if the head is its own weight");
  }
  return folder.bytesRead();
}

}  // namespace geopipe::model
