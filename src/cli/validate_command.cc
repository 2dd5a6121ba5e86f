// `geopipe validate`: check job specs and topology files and explain every
// problem.
#include <yaml-cpp/yaml.h>

#include <exception>
#include <filesystem>

#include "geopipe/error.h"
#include "src/cli/commands.h"
#include "src/config/diagnostics.h"
#include "src/config/job_overrides.h"
#include "src/config/job_parser.h"
#include "src/config/resolved_job.h"
#include "src/config/summary.h"
#include "src/config/topology_parser.h"

namespace geopipe::cli {
namespace {

// A topology file, not a job: its top level lists `sites` (or `devices`,
// a topology written without sites) and has neither `model` nor
// `topology`, which every job has or may have. A file that does not parse
// is read as a job, whose parser reports the syntax error.
bool isTopologyText(const std::string& text) {
  try {
    const YAML::Node root = YAML::Load(text);
    if (!root.IsMap()) return false;
    const YAML::Node& c = root;
    return (c["sites"].IsDefined() || c["devices"].IsDefined()) && !c["model"].IsDefined() &&
           !c["topology"].IsDefined();
  } catch (const YAML::Exception&) {
    return false;
  }
}

}  // namespace

int runValidate(const std::vector<std::string>& files, bool quiet, std::ostream& out,
                std::ostream& err, const std::vector<std::string>& overrides, bool print,
                const ModelCheck& check_model) {
  int invalid = 0;
  int unreadable = 0;
  for (const auto& file : files) {
    try {
      const std::string text = config::readTextFile(file, "job or topology file");
      if (isTopologyText(text) && (!overrides.empty() || print)) {
        ++invalid;
        err << file << ": " << (print ? "--print" : "--set")
            << " is for job files, but this is a topology file (its sites at the top level, "
            << "no model): validate it without " << (print ? "--print" : "--set") << "\n";
      } else if (isTopologyText(text)) {
        const TopologySpec topo = config::parseTopologyString(text, file);
        if (!quiet) out << config::formatTopologySummary(topo) << "  OK\n";
      } else {
        const std::string base = std::filesystem::path(file).parent_path().string();
        const JobSpec job = config::parseJobString(text, file, base, overrides);
        if (check_model) check_model(job);
        if (print) {
          if (files.size() > 1) out << "# " << file << "\n";
          // transport.emulate_links' default depends on the verb: printed
          // only when the job or an override set it.
          const YAML::Node root = YAML::Load(text);
          const YAML::Node transport = root.IsMap() ? root["transport"] : YAML::Node();
          bool emulate_set = transport && transport.IsMap() && transport["emulate_links"];
          for (const auto& o : overrides)
            emulate_set = emulate_set || o.rfind("transport.emulate_links=", 0) == 0;
          out << config::resolvedJobYaml(job, emulate_set);
        } else if (!quiet) {
          out << config::formatJobSummary(job) << "  OK\n";
        }
      }
    } catch (const config::SpecError& e) {
      ++invalid;
      err << e.what() << "\n";
    } catch (const ConfigError& e) {
      // The model's own check (a plugin that cannot be loaded): one line,
      // as train prints it.
      ++invalid;
      err << file << ": error: " << e.what() << "\n";
    } catch (const IoError& e) {
      // As every command: a file that cannot be read is exit 4, not 1.
      ++unreadable;
      err << "error: " << e.what() << "\n";
    }
  }
  if (files.size() > 1 && !quiet && !print) {
    out << files.size() - invalid - unreadable << " of " << files.size() << " file(s) valid\n";
  }
  if (unreadable > 0) return static_cast<int>(ExitCode::IO_ERROR);
  return invalid == 0 ? static_cast<int>(ExitCode::OK) : static_cast<int>(ExitCode::INVALID_SPEC);
}

}  // namespace geopipe::cli
