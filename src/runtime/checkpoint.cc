// Checkpoint manifests: commit, verify, find the newest good one.
#include "src/runtime/checkpoint.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "src/config/hf_config.h"
#include <sstream>

#include "compression/wire_format.h"
#include "geopipe/error.h"

namespace geopipe::runtime {
namespace fs = std::filesystem;

namespace {

constexpr const char* kManifest = "manifest.json";
constexpr const char* kLatest = "LATEST";
constexpr const char* kStepPrefix = "step-";

std::string readAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) GEOPIPE_THROW(IoError, "cannot read '", path, "': ", std::strerror(errno));
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

std::vector<std::string> stepDirectories(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (e.is_directory() && name.rfind(kStepPrefix, 0) == 0) out.push_back(name);
  }
  std::sort(out.rbegin(), out.rend());  // newest first (zero-padded names)
  return out;
}

}  // namespace

std::string stepDirectory(const std::string& dir, int64_t next_step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%s%08lld", kStepPrefix, static_cast<long long>(next_step));
  return (fs::path(dir) / buf).string();
}

CheckpointFile describeFile(const std::string& step_dir, const std::string& name) {
  std::string bytes = readAll((fs::path(step_dir) / name).string());
  CheckpointFile f;
  f.name = name;
  f.bytes = bytes.size();
  f.crc32c = compression::crc32c(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  return f;
}

void writeFileAtomic(const std::string& path, const std::string& content) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) GEOPIPE_THROW(IoError, "cannot write '", tmp, "': ", std::strerror(errno));
  size_t off = 0;
  while (off < content.size()) {
    ssize_t n = ::write(fd, content.data() + off, content.size() - off);
    if (n < 0) {
      int err = errno;
      ::close(fd);
      GEOPIPE_THROW(IoError, "cannot write '", tmp, "': ", std::strerror(err));
    }
    off += static_cast<size_t>(n);
  }
  ::fsync(fd);
  ::close(fd);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    GEOPIPE_THROW(IoError, "cannot rename '", tmp, "' to '", path, "': ", std::strerror(errno));
  }
}

void commitCheckpoint(const std::string& dir, CheckpointManifest manifest, int keep) {
  const std::string step_dir = stepDirectory(dir, manifest.next_step);
  nlohmann::json j;
  j["version"] = manifest.version;
  j["job"] = manifest.job;
  j["next_step"] = manifest.next_step;
  j["stages"] = manifest.stages;
  j["replicas"] = manifest.replicas;
  j["files"] = nlohmann::json::array();
  for (auto& f : manifest.files) {
    f = describeFile(step_dir, f.name);
    j["files"].push_back({{"name", f.name}, {"bytes", f.bytes}, {"crc32c", f.crc32c}});
  }
  if (manifest.version >= 2) {
    j["model"] = manifest.model_json.empty() ? nlohmann::json::object()
                                             : nlohmann::json::parse(manifest.model_json);
    j["layers"] = nlohmann::json::array();
    for (const auto& [first, last] : manifest.layers_of_stage) j["layers"].push_back({first, last});
  }
  writeFileAtomic((fs::path(step_dir) / kManifest).string(), j.dump(2) + "\n");
  writeFileAtomic((fs::path(dir) / kLatest).string(),
                  fs::path(step_dir).filename().string() + "\n");
  // Keep the newest `keep` committed checkpoints; uncommitted (no manifest)
  // directories older than this one are leftovers of a crash.
  int kept = 0;
  for (const auto& name : stepDirectories(dir)) {
    const fs::path p = fs::path(dir) / name;
    const bool committed = fs::exists(p / kManifest);
    if (committed && kept < keep) {
      ++kept;
      continue;
    }
    if (name > fs::path(step_dir).filename().string()) continue;  // newer, being written
    std::error_code ec;
    fs::remove_all(p, ec);
  }
}

std::string checkpointModelJson(const ModelSpec& m, const std::string& tokenizer_dir) {
  nlohmann::json j;
  j["kind"] = m.kind;
  if (m.isFamily()) {
    j["config"] = nlohmann::json::parse(config::hfConfigJson(m, config::torchDtypeName(m.dtype)));
  } else {
    j["shape"] = {{"layers", m.layers}, {"hidden", m.hidden}, {"heads", m.heads},
                  {"vocab", m.vocab}, {"ffn_mult", m.ffn_mult}, {"name", m.name}};
  }
  j["seq_len"] = m.seq_len;
  j["dtype"] = m.dtype;
  // Absolute, so `geopipe export` finds them from any working directory.
  auto absolute = [](const std::string& p) {
    return p.empty() ? p : fs::absolute(p).lexically_normal().string();
  };
  j["tokenizer"] = absolute(tokenizer_dir);
  j["from"] = absolute(m.from);
  return j.dump();
}

std::vector<int> savedBodySplit(const CheckpointManifest& m, int prologue_layers,
                                int epilogue_layers) {
  std::vector<int> out;
  const int n = static_cast<int>(m.layers_of_stage.size());
  for (int s = 0; s < n; ++s) {
    const auto [first, last] = m.layers_of_stage[static_cast<size_t>(s)];
    int body = last - first;
    if (s == 0) body -= prologue_layers;
    if (s == n - 1) body -= epilogue_layers;
    out.push_back(body);
  }
  return out;
}

bool checkpointDue(const CheckpointSpec& c, int64_t step, int64_t steps) {
  if (c.dir.empty()) return false;
  return step + 1 == steps || (c.every_steps > 0 && (step + 1) % c.every_steps == 0);
}

CheckpointManifest readAndVerify(const std::string& step_dir) {
  const std::string path = (fs::path(step_dir) / kManifest).string();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(readAll(path));
  } catch (const nlohmann::json::exception& e) {
    GEOPIPE_THROW(IoError, "checkpoint manifest '", path, "' is not valid JSON: ", e.what());
  }
  CheckpointManifest m;
  try {
    m.version = j.at("version").get<int>();
    m.job = j.at("job").get<std::string>();
    m.next_step = j.at("next_step").get<int64_t>();
    m.stages = j.at("stages").get<int>();
    m.replicas = j.at("replicas").get<int>();
    for (const auto& f : j.at("files")) {
      m.files.push_back({f.at("name").get<std::string>(), f.at("bytes").get<uint64_t>(),
                         f.at("crc32c").get<uint32_t>()});
    }
    if (m.version >= 2) {
      m.model_json = j.at("model").dump();
      for (const auto& l : j.at("layers")) {
        m.layers_of_stage.emplace_back(l.at(0).get<int>(), l.at(1).get<int>());
      }
    }
  } catch (const nlohmann::json::exception& e) {
    GEOPIPE_THROW(IoError, "checkpoint manifest '", path, "' lacks a field: ", e.what());
  }
  if (m.version != 1 && m.version != 2) {
    GEOPIPE_THROW(IoError, "checkpoint manifest '", path, "' has version ", m.version,
                  "; this build reads versions 1 and 2");
  }
  // The directory's name is the step it resumes at; a manifest that says
  // otherwise (copied or edited by hand) would resume the wrong step, and
  // every restart of the job would hit the same error.
  fs::path where = fs::path(step_dir);
  if (where.filename().empty()) where = where.parent_path();  // "dir/step-00000008/"
  const std::string dir_name = where.filename().string();
  const std::string expected = fs::path(stepDirectory("", m.next_step)).filename().string();
  if (m.next_step < 0 || dir_name != expected) {
    GEOPIPE_THROW(IoError, "checkpoint manifest '", path, "' says next_step ", m.next_step,
                  " but lives in '", dir_name, "' (step ", m.next_step, "'s directory is '",
                  expected, "'): the manifest does not belong to its directory");
  }
  for (const auto& f : m.files) {
    CheckpointFile actual;
    try {
      actual = describeFile(step_dir, f.name);
    } catch (const IoError& e) {
      GEOPIPE_THROW(IoError, "checkpoint '", step_dir, "' is missing '", f.name, "'");
    }
    if (actual.bytes != f.bytes || actual.crc32c != f.crc32c) {
      GEOPIPE_THROW(IoError, "checkpoint '", step_dir, "': '", f.name, "' is corrupt (",
                    actual.bytes, " bytes, crc ", actual.crc32c, "; manifest says ", f.bytes,
                    " bytes, crc ", f.crc32c, ")");
    }
  }
  return m;
}

std::optional<CheckpointManifest> findLatestCheckpoint(const std::string& dir) {
  std::vector<std::string> candidates;
  try {
    std::string latest = readAll((fs::path(dir) / kLatest).string());
    latest.erase(latest.find_last_not_of(" \n\r\t") + 1);
    if (!latest.empty()) candidates.push_back(latest);
  } catch (const IoError&) {
  }
  for (const auto& name : stepDirectories(dir)) {
    if (std::find(candidates.begin(), candidates.end(), name) == candidates.end()) {
      candidates.push_back(name);
    }
  }
  for (const auto& name : candidates) {
    const std::string step_dir = (fs::path(dir) / name).string();
    if (!fs::exists(fs::path(step_dir) / kManifest)) continue;  // never committed
    try {
      return readAndVerify(step_dir);
    } catch (const IoError& e) {
      spdlog::warn("skipping checkpoint: {}", e.what());
    }
  }
  return std::nullopt;
}

CheckpointManifest resumePoint(const std::string& dir, int stages, int replicas) {
  GEOPIPE_CHECK(!dir.empty(), ConfigError,
                "resume needs checkpoint.dir in the job, where the checkpoints are");
  std::optional<CheckpointManifest> found = findLatestCheckpoint(dir);
  if (!found) {
    GEOPIPE_THROW(ConfigError, "no committed checkpoint in '", dir,
                  "' (checkpoint.dir): nothing to resume; run without --resume to start over");
  }
  const CheckpointManifest& manifest = *found;
  if (manifest.stages != stages) {
    GEOPIPE_THROW(ConfigError, "the checkpoint in '", dir, "' was written by ", manifest.stages,
                  " pipeline stages x ", manifest.replicas, " replicas, the job has ", stages,
                  " stages: resume with parallelism.pipeline_stages: ", manifest.stages,
                  " (the replica count may differ)");
  }
  if (manifest.replicas != replicas) {
    spdlog::info("the checkpoint in '{}' was written by {} replicas, the job has {}: resharding "
                 "(weights of one replica, error-feedback residuals summed, AC-SGD buffers merged)",
                 dir, manifest.replicas, replicas);
  }
  return manifest;
}

}  // namespace geopipe::runtime
