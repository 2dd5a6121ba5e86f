// model: the gpt2 / llama family fields, the fields each kind refuses, and
// import of a Hugging Face folder's config.json (`from:`), whose shape wins
// and is compared with every shape field the user wrote.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include "src/config/diagnostics.h"
#include "src/config/hf_config.h"
#include "src/config/job_parser.h"
#include "src/formats/safetensors.h"

using namespace geopipe;
namespace fs = std::filesystem;

namespace {

const char* kTopo = R"(
topology:
  sites: [{name: a, devices: 4, intra: {latency_ms: 0, bandwidth_gbps: 10}}]
)";

JobSpec parse(const std::string& model, const std::string& base = "") {
  return config::parseJobString(std::string(kTopo) + "model: " + model + "\n", "job.yaml", base);
}

// The whole message of the spec error `model` causes ("" when none).
std::string errorOf(const std::string& model, const std::string& base = "") {
  try {
    parse(model, base);
  } catch (const config::SpecError& e) {
    return e.what();
  }
  return "";
}

struct TempDir {
  TempDir() {
    char tmpl[] = "/tmp/geopipe-model-spec-XXXXXX";
    path = mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string write(const std::string& name, const std::string& text) const {
    const std::string p = path + "/" + name;
    fs::create_directories(fs::path(p).parent_path());
    std::ofstream(p) << text;
    return p;
  }
  std::string path;
};

// Zero weights of every tensor the folder's config.json describes, with
// `edit` applied to the list first (to drop, reshape or add tensors).
void writeWeights(const std::string& dir, const std::string& kind,
                  const std::function<void(std::vector<config::HfTensor>&)>& edit = {}) {
  ModelSpec m = config::readHfConfig(dir, kind).shape;
  std::vector<config::HfTensor> tensors = config::hfTensors(m);
  if (edit) edit(tensors);
  std::vector<std::vector<float>> data;
  std::vector<formats::TensorToWrite> out;
  for (const auto& t : tensors) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    data.emplace_back(static_cast<size_t>(n), 0.0f);
  }
  for (size_t i = 0; i < tensors.size(); ++i)
    out.emplace_back(tensors[i].name, tensors[i].shape, data[i].data());
  formats::writeSafetensors(dir + "/model.safetensors", out, formats::DType::BF16);
}

const char* kGpt2Config = R"({
  "model_type": "gpt2", "n_layer": 3, "n_embd": 48, "n_head": 4, "n_positions": 64,
  "vocab_size": 100, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
  "bos_token_id": 99, "eos_token_id": 99, "n_inner": null, "torch_dtype": "float32"
})";

const char* kLlamaConfig = R"({
  "model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64,
  "num_attention_heads": 8, "num_key_value_heads": 2, "intermediate_size": 96,
  "max_position_embeddings": 128, "vocab_size": 120, "rms_norm_eps": 1e-6,
  "rope_theta": 500000.0, "hidden_act": "silu", "tie_word_embeddings": false,
  "rope_scaling": null, "bos_token_id": 1, "eos_token_id": [2, 3]
})";

TEST(ModelSpec, FamilyFieldsAreRead) {
  JobSpec job = parse(
      "{kind: llama, layers: 2, hidden: 64, heads: 8, num_key_value_heads: 2, "
      "intermediate_size: 96, rope_theta: 1.0e5, norm_eps: 1.0e-5, tie_embeddings: true, "
      "max_positions: 256, seq_len: 32, vocab: 120, eos_token_id: [2, 3]}");
  const ModelSpec& m = job.model;
  EXPECT_EQ(m.kvHeads(), 2);
  EXPECT_EQ(m.ffnWidth(), 96);
  EXPECT_DOUBLE_EQ(m.rope_theta, 1e5);
  EXPECT_DOUBLE_EQ(m.normEps(), 1e-5);
  EXPECT_TRUE(m.tiedEmbeddings());
  EXPECT_EQ(m.maxPositions(), 256);
  EXPECT_EQ(m.eos_token_ids, (std::vector<int64_t>{2, 3}));
}

TEST(ModelSpec, FamilyDefaults) {
  JobSpec gpt2 = parse("{kind: gpt2}");
  EXPECT_TRUE(gpt2.model.tiedEmbeddings());
  EXPECT_DOUBLE_EQ(gpt2.model.normEps(), 1e-5);
  EXPECT_EQ(gpt2.model.maxPositions(), gpt2.model.seq_len);
  JobSpec llama = parse("{kind: llama}");
  EXPECT_FALSE(llama.model.tiedEmbeddings());
  EXPECT_DOUBLE_EQ(llama.model.normEps(), 1e-6);
  EXPECT_EQ(llama.model.kvHeads(), llama.model.heads);
}

TEST(ModelSpec, KindGptRefusesFamilyFields) {
  for (const char* field :
       {"num_key_value_heads: 2", "rope_theta: 100.0", "norm_eps: 1.0e-6", "intermediate_size: 64",
        "tie_embeddings: true", "max_positions: 256", "eos_token_id: 3"}) {
    const std::string err = errorOf(std::string("{kind: gpt, ") + field + "}");
    EXPECT_NE(err.find("model.kind gpt does not use this field"), std::string::npos)
        << field << ": " << err;
  }
}

TEST(ModelSpec, Gpt2RefusesLlamaOnlyFields) {
  EXPECT_NE(errorOf("{kind: gpt2, rope_theta: 100.0}").find("no rotary"), std::string::npos);
  EXPECT_NE(errorOf("{kind: gpt2, num_key_value_heads: 2}").find("grouped-query"),
            std::string::npos);
  EXPECT_NE(errorOf("{kind: llama, name: x}").find("takes no name"), std::string::npos);
}

// model.plugin is resolved like data.path; model.options keeps each
// scalar's text; both belong to kind custom only.
TEST(ModelSpec, PluginAndOptionsOfACustomModel) {
  const JobSpec job = parse(
      "{kind: custom, name: m, plugin: lib/libm.so, options: {width: 64, act: gelu, gated: true}}",
      "/jobs/here");
  EXPECT_EQ(job.model.plugin, "/jobs/here/lib/libm.so");
  const std::map<std::string, std::string> expected = {
      {"width", "64"}, {"act", "gelu"}, {"gated", "true"}};
  EXPECT_EQ(job.model.options, expected);
  EXPECT_EQ(parse("{kind: custom, name: m, plugin: /abs/libm.so}", "/jobs").model.plugin,
            "/abs/libm.so");
  EXPECT_NE(errorOf("{kind: custom, name: m, options: {widths: [1, 2]}}")
                .find("model.options.widths: expected a scalar"),
            std::string::npos);
  EXPECT_NE(errorOf("{kind: custom, name: m, options: [1, 2]}").find("expected a mapping"),
            std::string::npos);
  for (const char* kind : {"gpt", "gpt2", "llama"}) {
    EXPECT_NE(errorOf(std::string("{kind: ") + kind + ", options: {width: 3}}")
                  .find(std::string("model.kind ") + kind + " takes no options"),
              std::string::npos)
        << kind;
    EXPECT_NE(errorOf(std::string("{kind: ") + kind + ", plugin: libm.so}")
                  .find(std::string("model.kind ") + kind + " loads no plugin"),
              std::string::npos)
        << kind;
  }
}

TEST(ModelSpec, ShapeRulesOfTheFamilies) {
  EXPECT_NE(errorOf("{kind: llama, heads: 4, num_key_value_heads: 3}").find("multiple of"),
            std::string::npos);
  EXPECT_NE(errorOf("{kind: gpt2, seq_len: 300, max_positions: 256}")
                .find("exceeds the model's maximum positions (256)"),
            std::string::npos);
  EXPECT_NE(errorOf("{kind: gpt2, ffn_mult: 2, intermediate_size: 64}").find("not both"),
            std::string::npos);
  EXPECT_NE(errorOf("{kind: gpt2, vocab: 50, eos_token_id: 50}").find("outside the vocabulary"),
            std::string::npos);
}

TEST(ModelSpec, FromTakesTheShapeOfConfigJson) {
  TempDir d;
  d.write("m/config.json", kGpt2Config);
  writeWeights(d.path + "/m", "gpt2");
  JobSpec job = parse("{kind: gpt2, from: m, seq_len: 32, dtype: bf16}", d.path);
  const ModelSpec& m = job.model;
  EXPECT_EQ(m.from, d.path + "/m");
  EXPECT_EQ(m.layers, 3);
  EXPECT_EQ(m.hidden, 48);
  EXPECT_EQ(m.heads, 4);
  EXPECT_EQ(m.vocab, 100);
  EXPECT_EQ(m.maxPositions(), 64);
  EXPECT_EQ(m.ffnWidth(), 4 * 48);
  EXPECT_EQ(m.seq_len, 32);
  EXPECT_EQ(m.dtype, "bf16");
  EXPECT_TRUE(m.tiedEmbeddings());
  EXPECT_EQ(m.eos_token_ids, (std::vector<int64_t>{99}));
  // Without seq_len the model's maximum positions are used.
  EXPECT_EQ(parse("{kind: gpt2, from: m}", d.path).model.seq_len, 64);
}

TEST(ModelSpec, FromComparesOnlyTheFieldsTheUserWrote) {
  TempDir d;
  d.write("m/config.json", kLlamaConfig);
  writeWeights(d.path + "/m", "llama");
  JobSpec ok = parse("{kind: llama, from: m, layers: 2, num_key_value_heads: 2}", d.path);
  EXPECT_EQ(ok.model.kvHeads(), 2);
  EXPECT_EQ(ok.model.eos_token_ids, (std::vector<int64_t>{2, 3}));
  const std::string err = errorOf("{kind: llama, from: m, hidden: 32, layers: 2}", d.path);
  EXPECT_NE(err.find("model.hidden is 32 but"), std::string::npos) << err;
  EXPECT_NE(err.find("config.json says 64"), std::string::npos) << err;
  EXPECT_EQ(err.find("model.layers"), std::string::npos) << err;
  EXPECT_NE(errorOf("{kind: llama, from: m, preset: tiny}", d.path).find("remove model.preset"),
            std::string::npos);
  EXPECT_NE(errorOf("{kind: gpt2, from: m}", d.path).find("model_type is 'llama'"),
            std::string::npos);
  EXPECT_NE(errorOf("{kind: gpt, from: m}", d.path).find("set kind: gpt2 or kind: llama"),
            std::string::npos);
}

TEST(ModelSpec, FromRefusesWhatItCannotRead) {
  TempDir d;
  d.write("bin/config.json", kGpt2Config);
  d.write("bin/pytorch_model.bin", "pickle");
  const std::string pickle = errorOf("{kind: gpt2, from: bin}", d.path);
  EXPECT_NE(pickle.find("pytorch_model.bin"), std::string::npos) << pickle;
  EXPECT_NE(pickle.find("safe_serialization=True"), std::string::npos) << pickle;
  EXPECT_NE(errorOf("{kind: gpt2, from: nowhere}", d.path).find("not a directory"),
            std::string::npos);
  std::string scaled = kLlamaConfig;
  scaled.replace(scaled.find("\"rope_scaling\": null"), 20,
                 "\"rope_scaling\": {\"type\": \"linear\"}");
  d.write("scaled/config.json", scaled);
  EXPECT_NE(errorOf("{kind: llama, from: scaled}", d.path).find("rope_scaling"), std::string::npos);
  d.write("nolayers/config.json", R"({"model_type": "gpt2", "n_embd": 8})");
  const std::string err = errorOf("{kind: gpt2, from: nolayers}", d.path);
  EXPECT_NE(err.find("required key 'n_layer' is missing"), std::string::npos) << err;
  EXPECT_NE(err.find("nolayers/config.json"), std::string::npos) << err;
}

TEST(ModelSpec, FromChecksTheTensorsBeforeTheRun) {
  TempDir d;
  auto errorWith = [&](const std::string& name,
                       const std::function<void(std::vector<config::HfTensor>&)>& edit) {
    d.write(name + "/config.json", kGpt2Config);
    writeWeights(d.path + "/" + name, "gpt2", edit);
    return errorOf("{kind: gpt2, from: " + name + "}", d.path);
  };
  std::string err = errorWith("missing", [](auto& t) {
    t.erase(t.begin() + 3);  // transformer.h.0.ln_1.bias
    t.pop_back();            // transformer.ln_f.bias
  });
  EXPECT_NE(err.find("2 tensor(s) missing: transformer.h.0.ln_1.bias, transformer.ln_f.bias"),
            std::string::npos)
      << err;
  err = errorWith("shape", [](auto& t) { t[2].shape = {48, 100}; });
  EXPECT_NE(err.find("transformer.h.0.ln_1.weight has shape [48, 100] but the model needs [48]"),
            std::string::npos)
      << err;
  err = errorWith("extra", [](auto& t) {
    t.push_back({"transformer.h.7.mlp.c_fc.weight", {2}, 0, ""});
  });
  EXPECT_NE(err.find("does not have: transformer.h.7.mlp.c_fc.weight"), std::string::npos) << err;
  // Tensors stored as integers cannot be weights.
  d.write("ints/config.json", kGpt2Config);
  writeWeights(d.path + "/ints", "gpt2");
  {
    const formats::SafetensorsFile f(d.path + "/ints/model.safetensors");
    std::vector<formats::TensorToWrite> out;
    std::vector<int32_t> ints(48, 1);
    for (const auto& t : f.tensors()) {
      if (t.name == "transformer.ln_f.bias") {
        out.push_back(formats::TensorToWrite::rawBytes(t.name, t.shape, "I32",
                                                       {reinterpret_cast<const uint8_t*>(ints.data()), 48 * 4}));
      } else {
        out.push_back(formats::TensorToWrite::rawBytes(t.name, t.shape, t.dtype_name, f.rawView(t.name)));
      }
    }
    formats::writeSafetensors(d.path + "/ints/copy.safetensors", out, formats::DType::F32);
  }
  fs::rename(d.path + "/ints/copy.safetensors", d.path + "/ints/model.safetensors");
  err = errorOf("{kind: gpt2, from: ints}", d.path);
  EXPECT_NE(err.find("transformer.ln_f.bias is stored as I32"), std::string::npos) << err;
  d.write("noweights/config.json", kGpt2Config);
  err = errorOf("{kind: gpt2, from: noweights}", d.path);
  EXPECT_NE(err.find("model.safetensors"), std::string::npos) << err;
}

TEST(ModelSpec, ConfigJsonRoundTrips) {
  for (const char* yaml :
       {"{kind: gpt2, layers: 3, hidden: 48, heads: 4, vocab: 100, max_positions: 64, "
        "seq_len: 32, eos_token_id: 7}",
        "{kind: llama, layers: 2, hidden: 64, heads: 8, num_key_value_heads: 2, "
        "intermediate_size: 96, vocab: 120, rope_theta: 5.0e5, tie_embeddings: true, "
        "bos_token_id: 1, eos_token_id: [2, 3]}"}) {
    const ModelSpec m = parse(yaml).model;
    TempDir d;
    d.write("config.json", config::hfConfigJson(m, "bfloat16"));
    const config::HfModelConfig back = config::readHfConfig(d.path, m.kind);
    EXPECT_EQ(back.torch_dtype, "bfloat16");
    EXPECT_EQ(back.shape.layers, m.layers);
    EXPECT_EQ(back.shape.hidden, m.hidden);
    EXPECT_EQ(back.shape.heads, m.heads);
    EXPECT_EQ(back.shape.kvHeads(), m.kvHeads());
    EXPECT_EQ(back.shape.ffnWidth(), m.ffnWidth());
    EXPECT_EQ(back.shape.vocab, m.vocab);
    EXPECT_EQ(back.shape.maxPositions(), m.maxPositions());
    EXPECT_DOUBLE_EQ(back.shape.rope_theta, m.rope_theta);
    EXPECT_DOUBLE_EQ(back.shape.normEps(), m.normEps());
    EXPECT_EQ(back.shape.tiedEmbeddings(), m.tiedEmbeddings());
    EXPECT_EQ(back.shape.bos_token_id, m.bos_token_id);
    EXPECT_EQ(back.shape.eos_token_ids, m.eos_token_ids);
  }
}

TEST(ModelSpec, HfNamesMapToLayersAndParameters) {
  const ModelSpec gpt2 = parse("{kind: gpt2, layers: 2, hidden: 8, heads: 2, vocab: 10}").model;
  auto t = config::classifyHfName(gpt2, "h.1.attn.c_attn.weight");  // no prefix
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->layer, 2);
  EXPECT_EQ(t->param, "attn.c_attn.weight");
  EXPECT_EQ(t->shape, (std::vector<int64_t>{8, 24}));
  EXPECT_FALSE(config::classifyHfName(gpt2, "transformer.h.0.attn.bias").has_value());
  EXPECT_FALSE(config::classifyHfName(gpt2, "lm_head.weight").has_value());  // tied
  EXPECT_EQ(config::classifyHfName(gpt2, "h.5.mlp.c_fc.weight")->layer, -1);
  const ModelSpec llama =
      parse("{kind: llama, layers: 1, hidden: 8, heads: 2, num_key_value_heads: 1, vocab: 10}")
          .model;
  EXPECT_EQ(config::classifyHfName(llama, "lm_head.weight")->layer, 2);
  EXPECT_EQ(config::classifyHfName(llama, "model.layers.0.self_attn.k_proj.weight")->shape,
            (std::vector<int64_t>{4, 8}));
  EXPECT_EQ(config::hfTensors(llama).size(), 1u + 9u + 1u + 1u);
}

}  // namespace
