// Job bundles: inline the topology so the job travels as one text.
#include "src/distributed/job_bundle.h"

#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "geopipe/error.h"
#include "src/common/text.h"
#include "src/config/job_overrides.h"
#include "src/config/job_parser.h"

namespace geopipe::distributed {
namespace fs = std::filesystem;

namespace {

std::string readText(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    GEOPIPE_THROW(IoError, "cannot read ", what, " '", common::printable(path),
                  "': ", std::strerror(errno));
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

}  // namespace

JobBundle bundleJobFile(const std::string& path, const std::vector<std::string>& overrides) {
  JobBundle b;
  b.source = path;
  std::error_code ec;
  fs::path abs = fs::absolute(path, ec);
  b.base_dir = abs.parent_path().string();
  const std::string text = readText(path, "job file");
  // Check the job as loadJobFile would (every problem at once, with lines
  // and columns of the original file) before rewriting it.
  b.security = config::loadJobFile(path, overrides).security;
  YAML::Node root = YAML::Load(text);
  config::applyOverrides(root, overrides);
  YAML::Node topo = root["topology"];
  if (topo && topo.IsScalar()) {
    fs::path tpath = topo.Scalar();
    if (tpath.is_relative()) tpath = fs::path(b.base_dir) / tpath;
    root["topology"] = YAML::Load(readText(tpath.string(), "topology file"));
  }
  // Credentials are each host's own business: the coordinator's file paths
  // mean nothing on a worker's host (its flags name its own files).
  root.remove("security");
  YAML::Emitter out;
  out << root;
  b.yaml = out.c_str();
  b.yaml += "\n";
  return b;
}

JobSpec parseBundle(const JobBundle& bundle) {
  JobSpec job = config::parseJobString(bundle.yaml, bundle.source, bundle.base_dir);
  job.source = bundle.source;
  return job;
}

}  // namespace geopipe::distributed
