// `geopipe export CKPT_DIR --out DIR`: the newest committed checkpoint's
// tasklets (replica 0, every stage) merged into a Hugging Face model folder.
#include <torch/torch.h>

#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>

#include "geopipe/error.h"
#include "src/cli/model_commands.h"
#include "src/config/hf_config.h"
#include "src/formats/safetensors.h"
#include "src/runtime/checkpoint.h"
#include "src/tokenizer/tokenizer.h"

namespace geopipe::cli {
namespace fs = std::filesystem;

void addExportOptions(CLI::App& app, ExportArgs& a) {
  app.add_option("CKPT_DIR", a.checkpoint_dir, "the job's checkpoint.dir")->required();
  app.add_option("--out", a.out, "model folder to write (config.json + model.safetensors)")
      ->required();
  app.add_option("--dtype", a.dtype, "stored dtype: fp32, fp16 or bf16 (default: model.dtype)")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}));
  app.add_flag("--force", a.force, "write into a non-empty --out, replacing its files");
}

namespace {

// The files of the tokenizer in `dir` (what loadTokenizer reads) and the
// license files that travel with its vocabulary; none when `dir` holds no
// tokenizer.
std::vector<fs::path> tokenizerFilesIn(const std::string& dir) {
  std::vector<fs::path> out;
  if (dir.empty()) return out;
  try {
    for (const std::string& f : tokenizer::tokenizerFiles(dir)) out.emplace_back(f);
  } catch (const Error&) {
    return out;  // no tokenizer there
  }
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_regular_file() && name.rfind("LICENSE", 0) == 0) out.push_back(entry.path());
  }
  return out;
}

}  // namespace

int runExportCommand(const ExportArgs& a, std::ostream& out) {
  const auto latest = runtime::findLatestCheckpoint(a.checkpoint_dir);
  GEOPIPE_CHECK(latest.has_value(), ConfigError, "no committed checkpoint in '", a.checkpoint_dir,
                "' (a job's checkpoint.dir; training writes one after its "
                "last step)");
  const runtime::CheckpointManifest& m = *latest;
  const std::string step_dir = runtime::stepDirectory(a.checkpoint_dir, m.next_step);
  GEOPIPE_CHECK(m.version >= 2, ConfigError, "checkpoint '", step_dir,
                "' has a version 1 manifest, which does not record the model; resume the job "
                "with this build for at least one more step (`geopipe train JOB --resume --steps "
                "N+1`, N its last step), which writes a version 2 checkpoint, and export that");
  const nlohmann::json model = nlohmann::json::parse(m.model_json);
  const std::string kind = model.at("kind").get<std::string>();
  GEOPIPE_CHECK(kind == "gpt2" || kind == "llama", ConfigError, "checkpoint '", step_dir,
                "' holds a model of kind '", kind,
                "', which has no Hugging Face layout; export takes gpt2 and llama models");

  // The model's shape from the config the manifest recorded.
  ModelSpec spec = config::parseHfConfig(model.at("config").dump(),
                                         step_dir + "/manifest.json (model.config)", kind)
                       .shape;
  spec.dtype = model.value("dtype", std::string("fp32"));
  const std::string dtype = a.dtype.empty() ? spec.dtype : a.dtype;

  if (fs::exists(a.out) && !fs::is_empty(a.out) && !a.force) {
    GEOPIPE_THROW(ConfigError, "--out '", a.out,
                  "' exists and is not empty; choose another folder or pass --force");
  }
  fs::create_directories(a.out);

  // Every parameter of replica 0's stages, by (global layer, name).
  std::map<std::pair<int, std::string>, torch::Tensor> params;
  for (int s = 0; s < m.stages; ++s) {
    const auto [first, last] = m.layers_of_stage.at(static_cast<size_t>(s));
    const std::string path =
        (fs::path(step_dir) / ("tasklet-" + std::to_string(s) + ".pt")).string();
    torch::serialize::InputArchive archive, model_archive;
    try {
      archive.load_from(path);
      archive.read("model", model_archive);
    } catch (const c10::Error& e) {
      GEOPIPE_THROW(IoError, "cannot read checkpoint file '", path,
                    "': ", e.what_without_backtrace());
    }
    // The module archive nests one archive per child: "0" .. "n-1" are
    // the slice's layers, below them the layers' own modules.
    std::function<void(torch::serialize::InputArchive&, int, const std::string&)> walk =
        [&](torch::serialize::InputArchive& ar, int layer, const std::string& prefix) {
          for (const std::string& key : ar.keys()) {
            torch::Tensor t;
            if (ar.try_read(key, t)) {
              if (layer >= 0) params[{layer, prefix + key}] = t;
              continue;
            }
            torch::serialize::InputArchive sub;
            if (!ar.try_read(key, sub)) continue;
            if (layer < 0) {
              walk(sub, first + std::stoi(key), "");
            } else {
              walk(sub, layer, prefix + key + ".");
            }
          }
        };
    walk(model_archive, -1, "");
    GEOPIPE_CHECK(last - first >= 1, IoError, "manifest of '", step_dir, "' gives stage ", s,
                  " no layers");
  }

  std::vector<config::HfTensor> tensors = config::hfTensors(spec);
  std::vector<torch::Tensor> keep;  // contiguous float copies the writer reads
  std::vector<formats::TensorToWrite> write;
  for (const config::HfTensor& t : tensors) {
    auto it = params.find({t.layer, t.param});
    GEOPIPE_CHECK(it != params.end(), IoError, "checkpoint '", step_dir, "' lacks layer ", t.layer,
                  " parameter '", t.param, "' (", t.name, ")");
    torch::Tensor f = it->second.to(torch::kCPU, torch::kFloat32).contiguous();
    GEOPIPE_CHECK(f.sizes().vec() == t.shape, IoError, "checkpoint '", step_dir, "': ", t.name,
                  " has shape ", f.sizes(), ", the model needs another");
    keep.push_back(f);
    write.emplace_back(t.name, t.shape, keep.back().data_ptr<float>());
  }
  const formats::DType stored = dtype == "fp32"   ? formats::DType::F32
                                : dtype == "fp16" ? formats::DType::F16
                                                  : formats::DType::BF16;
  formats::writeSafetensors((fs::path(a.out) / "model.safetensors").string(), write, stored,
                            {{"format", "pt"}});
  // The tokenizer the job trained with, or the one of the imported folder.
  const std::string tok_dir = model.value("tokenizer", std::string());
  std::vector<fs::path> tok = tokenizerFilesIn(tok_dir);
  if (!tok_dir.empty() && tok.empty()) {
    out << "warning: the job's tokenizer '" << tok_dir
        << "' cannot be read any more; the export has no tokenizer files\n";
  }
  if (tok.empty()) tok = tokenizerFilesIn(model.value("from", std::string()));
  // A job trained on a tokenizer's documents without ids of its own: the
  // tokenizer's end-of-text (and beginning) ids, so generation stops there.
  if (!tok.empty() && spec.eos_token_ids.empty()) {
    try {
      const auto t = tokenizer::loadTokenizer(tok.front().parent_path().string());
      if (t->eosId() && *t->eosId() < spec.vocab)
        spec.eos_token_ids = {static_cast<int64_t>(*t->eosId())};
      if (spec.bos_token_id < 0 && t->bosId() && *t->bosId() < spec.vocab) {
        spec.bos_token_id = *t->bosId();
      }
    } catch (const Error&) {
      // no usable tokenizer: config.json goes without the ids
    }
  }
  runtime::writeFileAtomic((fs::path(a.out) / "config.json").string(),
                           config::hfConfigJson(spec, config::torchDtypeName(dtype)));
  for (const fs::path& p : tok) {
    fs::copy_file(p, fs::path(a.out) / p.filename(), fs::copy_options::overwrite_existing);
  }
  out << "exported step " << m.next_step << " of '" << a.checkpoint_dir << "' (" << kind << ", "
      << spec.layers << " layers, " << tensors.size() << " tensors, " << dtype << ") to " << a.out
      << "/";
  if (!tok.empty()) out << " with " << tok.size() << " tokenizer file(s)";
  out << "\n";
  return 0;
}

}  // namespace geopipe::cli
