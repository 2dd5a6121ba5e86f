// Hugging Face config.json for the gpt2 and llama families.
#include "src/config/hf_config.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "geopipe/error.h"
#include "src/formats/safetensors.h"

namespace geopipe::config {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Typed access to one config.json object, every error naming file and key.
class ConfigReader {
 public:
  ConfigReader(const json& j, std::string path) : j_(j), path_(std::move(path)) {}

  bool has(const std::string& key) const { return j_.contains(key) && !j_.at(key).is_null(); }
  const std::string& path() const { return path_; }

  int64_t integer(const std::string& key, int64_t lo, int64_t hi) const {
    if (!has(key)) missing(key);
    const json& v = j_.at(key);
    if (!v.is_number_integer()) bad(key, "an integer", v);
    const int64_t x = v.get<int64_t>();
    if (x < lo || x > hi) {
      GEOPIPE_THROW(ConfigError, path_, ": key '", key, "' is ", x, ", outside ", lo, "..", hi);
    }
    return x;
  }
  int64_t integerOr(const std::string& key, int64_t fallback, int64_t lo, int64_t hi) const {
    return has(key) ? integer(key, lo, hi) : fallback;
  }
  double number(const std::string& key, double fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    if (!v.is_number()) bad(key, "a number", v);
    const double x = v.get<double>();
    if (!(x > 0) || !std::isfinite(x)) {
      GEOPIPE_THROW(ConfigError, path_, ": key '", key, "' is ", x, "; expected a positive number");
    }
    return x;
  }
  bool boolean(const std::string& key, bool fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    if (!v.is_boolean()) bad(key, "true or false", v);
    return v.get<bool>();
  }
  std::string string(const std::string& key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    if (!v.is_string()) bad(key, "a string", v);
    return v.get<std::string>();
  }
  // An id or a list of ids (Llama 3 lists several end-of-text ids).
  std::vector<int64_t> ids(const std::string& key) const {
    std::vector<int64_t> out;
    if (!has(key)) return out;
    const json& v = j_.at(key);
    if (v.is_number_integer()) {
      out.push_back(v.get<int64_t>());
    } else if (v.is_array()) {
      for (const auto& e : v) {
        if (!e.is_number_integer()) bad(key, "an integer or a list of integers", v);
        out.push_back(e.get<int64_t>());
      }
    } else {
      bad(key, "an integer or a list of integers", v);
    }
    return out;
  }
  // Refuses a key whose value would change the architecture, unless it
  // has the one value geopipe implements.
  void require(const std::string& key, const json& expected, const std::string& why) const {
    if (!has(key)) return;
    if (j_.at(key) != expected) {
      GEOPIPE_THROW(ConfigError, path_, ": key '", key, "' is ", j_.at(key).dump(),
                    "; geopipe implements only ", expected.dump(), " (", why, ")");
    }
  }

  [[noreturn]] void missing(const std::string& key) const {
    GEOPIPE_THROW(ConfigError, path_, ": required key '", key,
                  "' is missing; is this the config.json of a Hugging Face model?");
  }
  [[noreturn]] void bad(const std::string& key, const std::string& want, const json& v) const {
    GEOPIPE_THROW(ConfigError, path_, ": key '", key, "' should be ", want, ", found ",
                  v.dump().substr(0, 80));
  }

 private:
  const json& j_;
  std::string path_;
};

constexpr int64_t kMaxDim = int64_t{1} << 24;

void readGpt2(const ConfigReader& c, ModelSpec& m) {
  m.layers = static_cast<int>(c.integer("n_layer", 1, 4096));
  m.hidden = static_cast<int>(c.integer("n_embd", 1, kMaxDim));
  m.heads = static_cast<int>(c.integer("n_head", 1, 4096));
  m.vocab = static_cast<int>(c.integer("vocab_size", 2, int64_t{1} << 26));
  m.max_positions = static_cast<int>(c.integer("n_positions", 1, kMaxDim));
  m.intermediate_size = static_cast<int>(c.integerOr("n_inner", 4 * int64_t{m.hidden}, 1, kMaxDim));
  m.norm_eps = c.number("layer_norm_epsilon", 1e-5);
  m.tie_embeddings = c.boolean("tie_word_embeddings", true) ? 1 : 0;
  const std::string act = c.string("activation_function", "gelu_new");
  if (act != "gelu_new" && act != "gelu_pytorch_tanh") {
    c.require("activation_function", "gelu_new", "GPT-2's tanh-approximated GELU");
  }
  c.require("scale_attn_weights", true, "attention scores scaled by 1/sqrt(head dim)");
  c.require("scale_attn_by_inverse_layer_idx", false, "no per-layer score scaling");
  c.require("add_cross_attention", false, "a decoder-only model");
}

void readLlama(const ConfigReader& c, ModelSpec& m) {
  m.layers = static_cast<int>(c.integer("num_hidden_layers", 1, 4096));
  m.hidden = static_cast<int>(c.integer("hidden_size", 1, kMaxDim));
  m.heads = static_cast<int>(c.integer("num_attention_heads", 1, 4096));
  m.num_key_value_heads = static_cast<int>(c.integerOr("num_key_value_heads", m.heads, 1, 4096));
  m.vocab = static_cast<int>(c.integer("vocab_size", 2, int64_t{1} << 26));
  m.intermediate_size = static_cast<int>(c.integer("intermediate_size", 1, kMaxDim));
  m.max_positions = static_cast<int>(c.integer("max_position_embeddings", 1, kMaxDim));
  m.norm_eps = c.number("rms_norm_eps", 1e-6);
  m.rope_theta = c.number("rope_theta", 10000.0);
  m.tie_embeddings = c.boolean("tie_word_embeddings", false) ? 1 : 0;
  c.require("hidden_act", "silu", "SwiGLU with SiLU");
  c.require("rope_scaling", nullptr, "plain rotary embeddings; scaled RoPE is not implemented");
  c.require("attention_bias", false, "attention projections without biases");
  c.require("mlp_bias", false, "MLP projections without biases");
  if (c.has("head_dim")) {
    const int64_t head_dim = c.integer("head_dim", 1, kMaxDim);
    if (m.hidden % m.heads != 0 || head_dim != m.hidden / m.heads) {
      GEOPIPE_THROW(ConfigError, c.path(), ": key 'head_dim' is ", head_dim,
                    " but hidden_size / num_attention_heads is ", m.hidden, " / ", m.heads,
                    "; geopipe implements head_dim = hidden_size / num_attention_heads");
    }
  }
}

}  // namespace

std::string torchDtypeName(const std::string& dtype) {
  if (dtype == "fp32") return "float32";
  if (dtype == "fp16") return "float16";
  if (dtype == "bf16") return "bfloat16";
  GEOPIPE_THROW(ConfigError, "dtype '", dtype, "' is not one of fp32, fp16, bf16");
}

HfModelConfig readHfConfig(const std::string& dir, const std::string& kind) {
  const std::string path = (fs::path(dir) / "config.json").string();
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    GEOPIPE_THROW(ConfigError, "model.from '", dir,
                  "' is not a directory; give a Hugging Face model folder holding config.json "
                  "and model.safetensors (paths are relative to the job file's directory)");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    GEOPIPE_THROW(ConfigError, "model folder '", dir,
                  "' has no config.json; a Hugging Face model folder holds config.json and "
                  "model.safetensors");
  }
  std::stringstream text;
  text << in.rdbuf();
  return parseHfConfig(text.str(), path, kind);
}

HfModelConfig parseHfConfig(const std::string& text, const std::string& origin,
                            const std::string& kind) {
  HfModelConfig out;
  out.path = origin;
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    GEOPIPE_THROW(ConfigError, out.path, ": not valid JSON (", e.what(), ")");
  }
  if (!j.is_object()) GEOPIPE_THROW(ConfigError, out.path, ": expected a JSON object");
  ConfigReader c(j, out.path);
  out.model_type = c.string("model_type", "");
  if (out.model_type.empty()) c.missing("model_type");
  if (out.model_type != kind) {
    GEOPIPE_THROW(ConfigError, out.path, ": model_type is '", out.model_type,
                  "' but the job says model.kind: ", kind,
                  (out.model_type == "gpt2" || out.model_type == "llama"
                       ? "; set model.kind: " + out.model_type
                       : "; geopipe imports gpt2 and llama models"));
  }
  out.torch_dtype = c.string("torch_dtype", "");
  ModelSpec& m = out.shape;
  m.kind = kind;
  m.preset = "none";
  if (kind == "gpt2") {
    readGpt2(c, m);
  } else {
    readLlama(c, m);
  }
  if (m.hidden % m.heads != 0) {
    GEOPIPE_THROW(ConfigError, out.path, ": hidden size ", m.hidden,
                  " is not divisible by the number of heads ", m.heads);
  }
  if (m.heads % m.kvHeads() != 0) {
    GEOPIPE_THROW(ConfigError, out.path, ": num_attention_heads ", m.heads,
                  " is not a multiple of num_key_value_heads ", m.kvHeads());
  }
  m.seq_len = m.max_positions;
  const auto bos = c.ids("bos_token_id");
  m.bos_token_id = bos.empty() ? -1 : bos[0];
  m.eos_token_ids = c.ids("eos_token_id");
  for (int64_t id : m.eos_token_ids) {
    if (id < 0 || id >= m.vocab) {
      GEOPIPE_THROW(ConfigError, out.path, ": eos_token_id ", id, " is outside the vocabulary of ",
                    m.vocab);
    }
  }
  return out;
}

HfModelConfig readHfConfig(const std::string& dir) {
  const std::string path = (fs::path(dir) / "config.json").string();
  std::ifstream in(path, std::ios::binary);
  std::string kind;
  if (in) {
    try {
      const json j = json::parse(in);
      if (j.is_object() && j.contains("model_type") && j["model_type"].is_string()) {
        kind = j["model_type"].get<std::string>();
      }
    } catch (const json::exception&) {
      // readHfConfig below reports it
    }
  }
  if (!kind.empty() && kind != "gpt2" && kind != "llama") {
    GEOPIPE_THROW(ConfigError, path, ": model_type is '", kind,
                  "'; geopipe reads gpt2 and llama models");
  }
  HfModelConfig cfg = readHfConfig(dir, kind.empty() ? "gpt2" : kind);
  cfg.shape.from = dir;
  return cfg;
}

std::string hfConfigJson(const ModelSpec& m, const std::string& torch_dtype) {
  json j;
  if (m.kind == "gpt2") {
    j["architectures"] = {"GPT2LMHeadModel"};
    j["model_type"] = "gpt2";
    j["n_layer"] = m.layers;
    j["n_embd"] = m.hidden;
    j["n_head"] = m.heads;
    j["n_inner"] = m.ffnWidth();
    j["n_positions"] = m.maxPositions();
    j["n_ctx"] = m.maxPositions();
    j["vocab_size"] = m.vocab;
    j["layer_norm_epsilon"] = m.normEps();
    j["activation_function"] = "gelu_new";
    j["resid_pdrop"] = m.dropout;
    j["embd_pdrop"] = m.dropout;
    j["attn_pdrop"] = m.dropout;
    j["scale_attn_weights"] = true;
    j["initializer_range"] = 0.02;
  } else if (m.kind == "llama") {
    j["architectures"] = {"LlamaForCausalLM"};
    j["model_type"] = "llama";
    j["num_hidden_layers"] = m.layers;
    j["hidden_size"] = m.hidden;
    j["num_attention_heads"] = m.heads;
    j["num_key_value_heads"] = m.kvHeads();
    j["intermediate_size"] = m.ffnWidth();
    j["max_position_embeddings"] = m.maxPositions();
    j["vocab_size"] = m.vocab;
    j["rms_norm_eps"] = m.normEps();
    j["rope_theta"] = m.rope_theta;
    j["rope_scaling"] = nullptr;
    j["hidden_act"] = "silu";
    j["attention_bias"] = false;
    j["mlp_bias"] = false;
    j["attention_dropout"] = m.dropout;
    j["initializer_range"] = 0.02;
  } else {
    GEOPIPE_THROW(ConfigError, "model.kind '", m.kind,
                  "' has no Hugging Face layout; export supports gpt2 and llama");
  }
  j["tie_word_embeddings"] = m.tiedEmbeddings();
  if (m.bos_token_id >= 0) j["bos_token_id"] = m.bos_token_id;
  if (m.eos_token_ids.size() == 1) {
    j["eos_token_id"] = m.eos_token_ids[0];
  } else if (!m.eos_token_ids.empty()) {
    j["eos_token_id"] = m.eos_token_ids;
  }
  j["torch_dtype"] = torch_dtype;
  j["use_cache"] = true;
  return j.dump(2) + "\n";
}

std::vector<HfTensor> hfTensors(const ModelSpec& m) {
  std::vector<HfTensor> out;
  const int64_t d = m.hidden, v = m.vocab, f = m.ffnWidth(), head = m.layers + 1;
  auto add = [&](std::string name, std::vector<int64_t> shape, int layer, std::string param) {
    out.push_back({std::move(name), std::move(shape), layer, std::move(param)});
  };
  if (m.kind == "gpt2") {
    const std::string p = "transformer.";
    add(p + "wte.weight", {v, d}, 0, "wte.weight");
    add(p + "wpe.weight", {m.maxPositions(), d}, 0, "wpe.weight");
    for (int i = 0; i < m.layers; ++i) {
      const std::string b = p + "h." + std::to_string(i) + ".";
      const std::vector<std::pair<std::string, std::vector<int64_t>>> params = {
          {"ln_1.weight", {d}},
          {"ln_1.bias", {d}},
          {"attn.c_attn.weight", {d, 3 * d}},
          {"attn.c_attn.bias", {3 * d}},
          {"attn.c_proj.weight", {d, d}},
          {"attn.c_proj.bias", {d}},
          {"ln_2.weight", {d}},
          {"ln_2.bias", {d}},
          {"mlp.c_fc.weight", {d, f}},
          {"mlp.c_fc.bias", {f}},
          {"mlp.c_proj.weight", {f, d}},
          {"mlp.c_proj.bias", {d}}};
      for (const auto& [name, shape] : params) add(b + name, shape, i + 1, name);
    }
    add(p + "ln_f.weight", {d}, static_cast<int>(head), "ln_f.weight");
    add(p + "ln_f.bias", {d}, static_cast<int>(head), "ln_f.bias");
  } else if (m.kind == "llama") {
    const int64_t kv = int64_t{m.kvHeads()} * (d / m.heads);
    add("model.embed_tokens.weight", {v, d}, 0, "embed_tokens.weight");
    for (int i = 0; i < m.layers; ++i) {
      const std::string b = "model.layers." + std::to_string(i) + ".";
      const std::vector<std::pair<std::string, std::vector<int64_t>>> params = {
          {"input_layernorm.weight", {d}},      {"self_attn.q_proj.weight", {d, d}},
          {"self_attn.k_proj.weight", {kv, d}}, {"self_attn.v_proj.weight", {kv, d}},
          {"self_attn.o_proj.weight", {d, d}},  {"post_attention_layernorm.weight", {d}},
          {"mlp.gate_proj.weight", {f, d}},     {"mlp.up_proj.weight", {f, d}},
          {"mlp.down_proj.weight", {d, f}}};
      for (const auto& [name, shape] : params) add(b + name, shape, i + 1, name);
    }
    add("model.norm.weight", {d}, static_cast<int>(head), "norm.weight");
  } else {
    GEOPIPE_THROW(ConfigError, "model.kind '", m.kind, "' has no Hugging Face layout");
  }
  if (!m.tiedEmbeddings()) add("lm_head.weight", {v, d}, static_cast<int>(head), "lm_head.weight");
  return out;
}

std::optional<HfTensor> classifyHfName(const ModelSpec& m, const std::string& name) {
  auto endsWith = [&](const std::string& suffix) {
    return name.size() >= suffix.size() &&
           name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  if (m.kind == "gpt2" && (endsWith(".attn.bias") || endsWith(".attn.masked_bias"))) {
    return std::nullopt;
  }
  if (m.kind == "llama" && endsWith(".rotary_emb.inv_freq")) return std::nullopt;
  if (name == "lm_head.weight" && m.tiedEmbeddings()) return std::nullopt;
  std::string canonical = name;
  if (m.kind == "gpt2" && name != "lm_head.weight" && name.rfind("transformer.", 0) != 0) {
    canonical = "transformer." + name;
  }
  for (HfTensor& t : hfTensors(m)) {
    if (t.name == canonical) return t;
  }
  HfTensor unknown;
  unknown.name = name;
  unknown.layer = -1;
  return unknown;
}

std::vector<HfImportItem> planHfImport(const ModelSpec& m, const formats::SafetensorsFolder& folder,
                                       int first_layer, int last_layer) {
  const std::vector<std::string> names = folder.names();
  std::map<std::string, std::string> file_name_of;  // canonical HF name -> name in the files
  std::vector<std::string> unknown;
  for (const std::string& name : names) {
    const std::optional<HfTensor> t = classifyHfName(m, name);
    if (!t) continue;
    if (t->layer < 0) {
      unknown.push_back(name);
    } else {
      file_name_of[t->name] = name;
    }
  }
  auto list = [](const std::vector<std::string>& v) {
    std::string s;
    for (size_t i = 0; i < v.size() && i < 12; ++i) s += (i ? ", " : "") + v[i];
    if (v.size() > 12) s += ", ... (" + std::to_string(v.size()) + " in all)";
    return s;
  };
  if (!unknown.empty()) {
    GEOPIPE_THROW(ConfigError, "model folder '", folder.dir(), "' holds ", unknown.size(),
                  " tensor(s) that a ", m.kind, " model of this config.json (", m.layers,
                  " layers) does not have: ", list(unknown),
                  "; does config.json describe these weights?");
  }
  std::vector<HfImportItem> out;
  std::vector<std::string> missing, problems;
  const std::vector<HfTensor> all = hfTensors(m);
  auto want = [&](const HfTensor& t) {
    auto it = file_name_of.find(t.name);
    if (it == file_name_of.end()) {
      missing.push_back(t.name);
      return;
    }
    const formats::TensorInfo info = folder.info(it->second);
    if (info.shape != t.shape) {
      auto shape = [](const std::vector<int64_t>& s) {
        std::string o = "[";
        for (size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
        return o + "]";
      };
      problems.push_back(it->second + " has shape " + shape(info.shape) + " but the model needs " +
                         shape(t.shape));
    } else if (info.dtype == formats::DType::OTHER) {
      problems.push_back(it->second + " is stored as " + info.dtype_name +
                         "; geopipe reads F32, F16 and BF16");
    }
    out.push_back({t, it->second});
  };
  const int head = m.layers + 1;
  for (const HfTensor& t : all) {
    if (t.layer >= first_layer && t.layer < last_layer) want(t);
  }
  // A tied head on this slice whose embedding is elsewhere reads the
  // embedding's tensor into its own copy.
  if (m.tiedEmbeddings() && first_layer <= head && head < last_layer && first_layer > 0) {
    HfTensor emb = all.front();
    emb.layer = head;
    emb.param = "lm_head.weight";
    want(emb);
  }
  if (!missing.empty() || !problems.empty()) {
    std::string msg = "model folder '" + folder.dir() + "' does not fit model.kind " + m.kind +
                      " as its config.json describes it:";
    if (!missing.empty()) {
      msg += " " + std::to_string(missing.size()) + " tensor(s) missing: " + list(missing) + ";";
    }
    for (const std::string& p : problems) msg += " " + p + ";";
    msg.pop_back();
    GEOPIPE_THROW(ConfigError, msg);
  }
  return out;
}

void checkHfTensors(const ModelSpec& m) {
  const formats::SafetensorsFolder folder(m.from);
  planHfImport(m, folder, 0, m.layers + 2);
}

}  // namespace geopipe::config
