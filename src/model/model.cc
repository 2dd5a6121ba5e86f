// The model API's machinery: building layers and slices deterministically,
// tied weights, and the registry of models jobs can name.
#include <cmath>
#include <map>
#include <mutex>
#include <unordered_set>

#include "geopipe/error.h"
#include "geopipe/model.h"
#include "src/common/strings.h"
#include "src/model/hf_import.h"
#include "src/model/layers.h"
#include "src/model/model_plugin.h"

namespace geopipe {
namespace {

std::mutex& registryMutex() {
  static std::mutex m;
  return m;
}

std::map<std::string, std::function<ModelDef(const ModelSpec&)>>& registry() {
  static std::map<std::string, std::function<ModelDef(const ModelSpec&)>> r;
  return r;
}

// Every registration's name in order (model_plugin.h: registrationLog).
std::vector<std::string>& registrations() {
  static std::vector<std::string> log;
  return log;
}

// LibTorch's default generator is process-global; layers are built under
// this lock so concurrent stage threads cannot interleave their seeding.
std::mutex& seedMutex() {
  static std::mutex m;
  return m;
}

}  // namespace

namespace model {

// A Hugging Face family's model: layer 0 the embedding, then spec.layers
// blocks, then final norm + LM head (built by `make`), the next-token
// cross-entropy, the head tied to the embedding's `embedding_param` when
// the spec ties them, and model.from's weights.
ModelDef makeFamily(const ModelSpec& spec, const std::string& name,
                    const std::string& embedding_param,
                    std::function<torch::nn::AnyModule(FamilyLayer)> make) {
  GEOPIPE_CHECK(spec.hidden % spec.heads == 0, ConfigError, "model.hidden (", spec.hidden,
                ") must be divisible by model.heads (", spec.heads, ")");
  ModelDef m;
  m.name = name;
  m.num_layers = spec.layers + 2;
  m.prologue_layers = 1;
  m.epilogue_layers = 1;
  m.max_positions = spec.maxPositions();
  const int head = spec.layers + 1;
  m.make_layer = [make, head](int i) {
    return make(i == 0      ? FamilyLayer::EMBEDDING
                : i == head ? FamilyLayer::HEAD
                            : FamilyLayer::BLOCK);
  };
  m.output_shape = [spec, head](int i, int64_t batch, int64_t seq) -> std::vector<int64_t> {
    return {batch, seq, i == head ? spec.vocab : spec.hidden};
  };
  if (!spec.from.empty()) {
    m.load_weights = [spec](torch::nn::Sequential& slice, int first, int last) {
      loadHfWeights(spec, slice, first, last);
    };
  }
  m.loss = [](const torch::Tensor& logits, const torch::Tensor& targets) {
    return torch::nn::functional::cross_entropy(
        logits.reshape({-1, logits.size(-1)}).to(torch::kFloat32), targets.reshape({-1}));
  };
  if (!spec.tiedEmbeddings()) return m;
  TiedWeight t;
  t.owner_layer = 0;
  t.owner_param = embedding_param;
  t.user_layer = head;
  t.user_param = "lm_head.weight";
  t.bind = [](torch::nn::Module& user, const torch::Tensor& weight) {
    LmHeadImpl* lm = lmHeadOf(user);
    GEOPIPE_CHECK(lm != nullptr, Error, "tied weight: the last layer has no lm_head");
    lm->tieTo(weight);
  };
  m.tied.push_back(std::move(t));
  return m;
}

}  // namespace model

torch::nn::AnyModule buildLayer(const ModelDef& model, int index, uint64_t seed) {
  GEOPIPE_CHECK(index >= 0 && index < model.num_layers, ConfigError, "layer ", index,
                " outside model '", model.name, "' of ", model.num_layers, " layers");
  std::lock_guard<std::mutex> lock(seedMutex());
  torch::manual_seed(seed * 1000003ull + static_cast<uint64_t>(index));
  return model.make_layer(index);
}

torch::Tensor layerParameter(torch::nn::Module& module, const std::string& dotted,
                             const std::string& model_name, int layer) {
  auto params = module.named_parameters();
  if (const torch::Tensor* t = params.find(dotted)) return *t;
  std::string known;
  for (const auto& p : params) known += (known.empty() ? "" : ", ") + p.key();
  GEOPIPE_THROW(ConfigError, "model '", model_name, "' layer ", layer, " has no parameter '",
                dotted, "' (it has: ", known, ")");
}

void bindTiedWeights(const ModelDef& model, torch::nn::Sequential& slice, int first, int last) {
  for (const TiedWeight& t : model.tied) {
    const bool owner_in = first <= t.owner_layer && t.owner_layer < last;
    const bool user_in = first <= t.user_layer && t.user_layer < last;
    if (!owner_in || !user_in) continue;
    torch::Tensor weight = layerParameter(*slice->ptr(t.owner_layer - first), t.owner_param,
                                          model.name, t.owner_layer);
    t.bind(*slice->ptr(t.user_layer - first), weight);
  }
}

torch::nn::Sequential buildSlice(const ModelDef& model, int first, int last, uint64_t seed) {
  GEOPIPE_CHECK(0 <= first && first < last && last <= model.num_layers, ConfigError,
                "layer slice [", first, ", ", last, ") outside model '", model.name, "' of ",
                model.num_layers, " layers");
  torch::nn::Sequential seq;
  for (int i = first; i < last; ++i) seq->push_back(buildLayer(model, i, seed));
  bindTiedWeights(model, seq, first, last);
  for (const TiedWeight& t : model.tied) {
    const bool owner_in = first <= t.owner_layer && t.owner_layer < last;
    const bool user_in = first <= t.user_layer && t.user_layer < last;
    if (owner_in || !user_in) continue;
    // The owner lives on another stage: start this copy from the owner's
    // initial weight, built with the owner's seed.
    torch::nn::AnyModule owner = buildLayer(model, t.owner_layer, seed);
    torch::Tensor src = layerParameter(*owner.ptr(), t.owner_param, model.name, t.owner_layer);
    torch::Tensor dst =
        layerParameter(*seq->ptr(t.user_layer - first), t.user_param, model.name, t.user_layer);
    torch::NoGradGuard guard;
    dst.copy_(src);
  }
  if (model.load_weights) model.load_weights(seq, first, last);
  return seq;
}

std::vector<torch::Tensor> uniqueParameters(torch::nn::Module& module) {
  std::vector<torch::Tensor> out;
  std::unordered_set<const void*> seen;
  for (const auto& p : module.named_parameters()) {
    if (seen.insert(p.value().unsafeGetTensorImpl()).second) out.push_back(p.value());
  }
  return out;
}

ModelCost modelCost(const ModelDef& model) {
  ModelCost out;
  if (model.cost.empty()) return out;
  if (static_cast<int>(model.cost.size()) != model.num_layers) {
    GEOPIPE_THROW(ConfigError, "model '", model.name, "' gives the cost of ", model.cost.size(),
                  " layers but has ", model.num_layers,
                  ": ModelDef::cost needs one entry per layer, prologue and epilogue included");
  }
  for (int i = 0; i < model.num_layers; ++i) {
    const LayerCost& c = model.cost[i];
    for (double v : {c.params, c.fwd_flops, c.act_bytes}) {
      if (!std::isfinite(v) || v < 0) {
        GEOPIPE_THROW(ConfigError, "model '", model.name, "' gives layer ", i,
                      " a cost that is negative or not finite (params ", c.params, ", fwd_flops ",
                      c.fwd_flops, ", act_bytes ", c.act_bytes, ")");
      }
    }
    LayerCost* into = i < model.prologue_layers                       ? &out.prologue
                      : i >= model.num_layers - model.epilogue_layers ? &out.epilogue
                                                                      : nullptr;
    if (into == nullptr) {
      out.body.push_back(c);
    } else {
      into->params += c.params;
      into->fwd_flops += c.fwd_flops;
      into->act_bytes += c.act_bytes;
    }
  }
  return out;
}

void registerModel(const std::string& name, std::function<ModelDef(const ModelSpec&)> factory) {
  std::lock_guard<std::mutex> lock(registryMutex());
  registry()[name] = std::move(factory);
  registrations().push_back(name);
}

namespace model {

std::vector<std::string> registeredModelNames() {
  std::lock_guard<std::mutex> lock(registryMutex());
  std::vector<std::string> names;
  for (const auto& [name, f] : registry()) names.push_back(name);
  return names;
}

std::vector<std::string> registrationLog() {
  std::lock_guard<std::mutex> lock(registryMutex());
  return registrations();
}

}  // namespace model

ModelDef makeModel(const ModelSpec& spec) {
  if (spec.kind != "custom" && (!spec.options.empty() || !spec.plugin.empty())) {
    GEOPIPE_THROW(ConfigError, "model.kind ", spec.kind,
                  " takes no model.options or model.plugin: they are for kind custom (a "
                  "registered or a plugin's model)");
  }
  if (spec.kind == "gpt") return makeGpt(spec);
  if (spec.kind == "gpt2") return makeGpt2(spec);
  if (spec.kind == "llama") return makeLlama(spec);
  std::vector<std::string> from_plugin;
  if (!spec.plugin.empty()) from_plugin = model::loadModelPlugin(spec.plugin);
  std::function<ModelDef(const ModelSpec&)> factory;
  {
    std::lock_guard<std::mutex> lock(registryMutex());
    if (auto it = registry().find(spec.name); it != registry().end()) factory = it->second;
  }
  if (!factory) {
    const std::vector<std::string> known = model::registeredModelNames();
    const std::string guess = common::closestMatch(spec.name, known);
    const std::string registered = known.empty() ? "none" : common::join(known, ", ");
    if (!spec.plugin.empty()) {
      GEOPIPE_THROW(ConfigError, "model.name '", spec.name, "' is not a model of the plugin '",
                    spec.plugin, "' (it registered: ", common::join(from_plugin, ", "),
                    "; registered in all: ", registered, ")",
                    guess.empty() ? "" : "; did you mean '" + guess + "'?");
    }
    GEOPIPE_THROW(ConfigError, "model.name '", spec.name,
                  "' is not a registered model (registered: ", registered, ")",
                  guess.empty() ? "" : "; did you mean '" + guess + "'?",
                  "; load a plugin with model.plugin or --plugin, or call "
                  "geopipe::registerModel before building the Trainer");
  }
  ModelDef def = factory(spec);
  GEOPIPE_CHECK(def.num_layers >= 1 && def.make_layer && def.output_shape && def.loss, ConfigError,
                "custom model '", spec.name,
                "' is incomplete: num_layers, make_layer, output_shape and loss are required");
  for (const TiedWeight& t : def.tied) {
    GEOPIPE_CHECK(t.bind && t.owner_layer >= 0 && t.owner_layer < def.num_layers &&
                      t.user_layer >= 0 && t.user_layer < def.num_layers &&
                      t.owner_layer != t.user_layer,
                  ConfigError, "custom model '", spec.name,
                  "' declares a tied weight with layers outside the model or without bind");
  }
  return def;
}

}  // namespace geopipe
