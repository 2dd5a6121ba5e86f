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
#include <regex>

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

// The step of a name stepDirectory() makes ("step-" and at least 8 digits),
// or -1 for any other name: a folder geopipe did not make is never pruned
// or overwritten.
int64_t stepOfName(const std::string& name) {
  const size_t prefix = std::strlen(kStepPrefix);
  if (name.rfind(kStepPrefix, 0) != 0 || name.size() < prefix + 8 || name.size() > prefix + 18) {
    return -1;
  }
  int64_t step = 0;
  for (size_t i = prefix; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

// The step directories in `dir`, newest first.
std::vector<std::string> stepDirectories(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (e.is_directory() && stepOfName(name) >= 0) out.push_back(name);
  }
  std::sort(out.begin(), out.end(), [](const std::string& a, const std::string& b) {
    return stepOfName(a) > stepOfName(b);
  });
  return out;
}

// The names tasklets and the committer write into a step directory.
bool isCheckpointFileName(std::string name) {
  static const std::regex kFile(
      "manifest\\.json|tasklet-[0-9]+\\.(pt|gradsync|acsgd-send|acsgd-recv)");
  const std::string tmp = ".tmp";
  if (name.size() > tmp.size() && name.compare(name.size() - tmp.size(), tmp.size(), tmp) == 0) {
    name.resize(name.size() - tmp.size());
  }
  return std::regex_match(name, kFile);
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

namespace {

// The rank in "tasklet-<rank>.<kind>", -1 for another name.
int taskletRankOf(const std::string& name) {
  static const std::regex re(R"(tasklet-([0-9]{1,9})\..+)");
  std::smatch m;
  return std::regex_match(name, m, re) ? std::stoi(m[1].str()) : -1;
}

}  // namespace

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
    nlohmann::json entry = {{"name", f.name}, {"bytes", f.bytes}, {"crc32c", f.crc32c}};
    // Which tasklet wrote it, and the global layers [first, last) it holds
    // (informational: readers find a file from the stage's layer range).
    const int rank = taskletRankOf(f.name);
    if (rank >= 0 && manifest.stages > 0) {
      const int stage = rank % manifest.stages;
      entry["stage"] = stage;
      entry["replica"] = rank / manifest.stages;
      if (stage < static_cast<int>(manifest.layers_of_stage.size())) {
        const auto [first, last] = manifest.layers_of_stage[static_cast<size_t>(stage)];
        entry["layers"] = {first, last};
      }
    }
    j["files"].push_back(std::move(entry));
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
  // Keep this checkpoint and the newest `keep` - 1 committed ones before
  // it; uncommitted (no manifest) directories older than this one are
  // leftovers of a crash. Later steps are skipped, not counted: tasklets
  // may be writing them, and a committed one can only be an earlier run's,
  // which must not push out the checkpoint LATEST now names.
  int kept = 0;
  for (const auto& name : stepDirectories(dir)) {
    const int64_t step = stepOfName(name);
    if (step > manifest.next_step) continue;
    const fs::path p = fs::path(dir) / name;
    if (step == manifest.next_step || (fs::exists(p / kManifest) && kept < keep)) {
      ++kept;
      continue;
    }
    std::error_code ec;
    fs::remove_all(p, ec);
  }
}

int prepareFreshCheckpointDir(const std::string& dir, bool overwrite) {
  std::error_code ec;
  if (dir.empty() || !fs::is_directory(dir, ec)) return 0;
  const fs::path latest = fs::path(dir) / kLatest;
  const fs::path latest_tmp = fs::path(dir) / (std::string(kLatest) + ".tmp");
  const bool has_latest = fs::exists(latest, ec) || fs::exists(latest_tmp, ec);
  const std::vector<std::string> steps = stepDirectories(dir);
  if (!has_latest && steps.empty()) return 0;
  if (!overwrite) {
    std::string named;
    if (fs::exists(latest, ec)) {
      try {
        named = readAll(latest.string());
        named.erase(named.find_last_not_of(" \n\r\t") + 1);
      } catch (const IoError&) {
      }
    }
    std::ostringstream what;
    if (!named.empty()) what << "LATEST names " << named << ", ";
    what << steps.size() << " step director" << (steps.size() == 1 ? "y" : "ies");
    if (!steps.empty()) what << ", the newest " << steps.front();
    GEOPIPE_THROW(ConfigError, "checkpoint.dir '", dir,
                  "' holds the checkpoints of an earlier run (", what.str(),
                  "); a run from step 0 would write its own beside them. Continue that run with "
                  "--resume, or start over with --overwrite (removes LATEST and the "
                  "step-NNNNNNNN directories, nothing else), or set checkpoint.dir to another "
                  "directory");
  }
  // Check everything before removing anything: a file geopipe did not write
  // stops the whole overwrite.
  for (const auto& name : steps) {
    for (const auto& e : fs::directory_iterator(fs::path(dir) / name, ec)) {
      const std::string file = e.path().filename().string();
      if (!e.is_regular_file() || !isCheckpointFileName(file)) {
        GEOPIPE_THROW(ConfigError, "--overwrite: '", e.path().string(),
                      "' is not a checkpoint file geopipe writes, so nothing was removed; move "
                      "it out of checkpoint.dir '",
                      dir, "' and run again");
      }
    }
  }
  // LATEST first: from here on no reader resumes from what is being removed.
  for (const fs::path& p : {latest, latest_tmp}) {
    if (fs::exists(p, ec) && !fs::remove(p, ec)) {
      GEOPIPE_THROW(IoError, "--overwrite: cannot remove '", p.string(), "': ", ec.message());
    }
  }
  for (const auto& name : steps) {
    const fs::path step_dir = fs::path(dir) / name;
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(step_dir, ec)) files.push_back(e.path());
    files.push_back(step_dir);  // empty by then
    for (const auto& p : files) {
      if (!fs::remove(p, ec)) {
        GEOPIPE_THROW(IoError, "--overwrite: cannot remove '", p.string(), "': ", ec.message());
      }
    }
  }
  return static_cast<int>(steps.size());
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

std::vector<int> bodySplit(const std::vector<std::pair<int, int>>& layers_of_stage,
                           int prologue_layers, int epilogue_layers) {
  std::vector<int> out;
  const int n = static_cast<int>(layers_of_stage.size());
  for (int s = 0; s < n; ++s) {
    const auto [first, last] = layers_of_stage[static_cast<size_t>(s)];
    int body = last - first;
    if (s == 0) body -= prologue_layers;
    if (s == n - 1) body -= epilogue_layers;
    out.push_back(body);
  }
  return out;
}

std::vector<int> savedBodySplit(const CheckpointManifest& m, int prologue_layers,
                                int epilogue_layers) {
  return bodySplit(m.layers_of_stage, prologue_layers, epilogue_layers);
}

bool holdsOuterState(const CheckpointManifest& m) {
  return std::any_of(m.files.begin(), m.files.end(), [](const CheckpointFile& f) {
    return fs::path(f.name).extension() == ".outer";
  });
}

bool checkpointDue(const CheckpointSpec& c, int64_t step, int64_t steps) {
  if (c.dir.empty()) return false;
  return step + 1 == steps || (c.every_steps > 0 && (step + 1) % c.every_steps == 0);
}

CheckpointManifest readManifest(const std::string& step_dir) {
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
  return m;
}

CheckpointManifest readAndVerify(const std::string& step_dir) {
  CheckpointManifest m = readManifest(step_dir);
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

CheckpointManifest resumePoint(const std::string& dir, int stages, int replicas, int64_t steps) {
  GEOPIPE_CHECK(!dir.empty(), ConfigError,
                "resume needs checkpoint.dir in the job, where the checkpoints are");
  std::optional<CheckpointManifest> found = findLatestCheckpoint(dir);
  if (!found) {
    GEOPIPE_THROW(ConfigError, "no committed checkpoint in '", dir,
                  "' (checkpoint.dir): nothing to resume; run without --resume to start over");
  }
  const CheckpointManifest& manifest = *found;
  if (manifest.stages != stages) {
    // Another stage count: the tasklets gather their layers from the saved
    // stages' files (Tasklet::loadCheckpoint), which needs the layer ranges
    // (version 2) and weights that are the same on every saved replica.
    GEOPIPE_CHECK(!manifest.layers_of_stage.empty(), ConfigError, "the checkpoint in '", dir,
                  "' was written by ", manifest.stages, " pipeline stages x ", manifest.replicas,
                  " replicas, the job has ", stages,
                  " stages, and its manifest (version 1) does not say which layers each stage "
                  "held: resume with parallelism.pipeline_stages: ",
                  manifest.stages);
    GEOPIPE_CHECK(!holdsOuterState(manifest), ConfigError, "the checkpoint in '", dir,
                  "' was written by ", manifest.stages,
                  " pipeline stages under "
                  "parallelism.data_parallel_sync kind diloco, the job has ",
                  stages,
                  " stages: a DiLoCo checkpoint resumes only with its own layer split; "
                  "resume with parallelism.pipeline_stages: ",
                  manifest.stages);
    spdlog::info(
        "the checkpoint in '{}' was written by {} stages, the job has {}: every tasklet "
        "gathers its layers from the saved stages (docs/operations.md, \"Resuming with "
        "another shape\")",
        dir, manifest.stages, stages);
  }
  if (manifest.next_step >= steps) {
    const bool last = manifest.next_step == steps;
    GEOPIPE_THROW(ConfigError, "the checkpoint in '", dir, "' is at step ", manifest.next_step,
                  last ? ", the job's last" : ", past the job's last", " (training.steps: ", steps,
                  "): nothing left to train; raise training.steps (or "
                  "--steps) above ",
                  manifest.next_step,
                  " to train on from it, or start over with --overwrite instead of --resume");
  }
  if (manifest.replicas != replicas) {
    spdlog::info("the checkpoint in '{}' was written by {} replicas, the job has {}: resharding "
                 "(weights of one replica, error-feedback residuals summed, AC-SGD buffers merged)",
                 dir, manifest.replicas, replicas);
  }
  return manifest;
}

}  // namespace geopipe::runtime
