// Checks of numeric command-line options: finite numbers and integers in a
// range, with the bounds written as a person would. CLI11's own Range lets
// NaN through (every comparison with NaN is false) and prints its bounds
// with std::to_string: PositiveNumber's top is a 309-digit number.
#pragma once

#include <CLI/CLI.hpp>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "src/config/yaml_fields.h"

namespace geopipe::cli {

// `--set path.to.field=value`, repeatable: an edit of the job's YAML made
// before it is read and checked like the file (src/config/job_overrides.h).
inline CLI::Option* addSetOption(CLI::App& app, std::vector<std::string>& overrides) {
  return app
      .add_option("--set", overrides,
                  "override a field of the job: path.to.field=value (YAML, e.g. "
                  "training.optimizer.lr=1e-3); repeatable, checked like the file")
      ->allow_extra_args(false)
      ->type_name("PATH=VALUE");
}

// `--plugin PATH`: model.plugin from the command line (relative to the
// current directory), added as one more override after --set's (so it
// travels with the job to every worker). Add it after addSetOption: CLI11
// assigns --set's vector before this option's callback appends to it.
inline CLI::Option* addPluginOption(CLI::App& app, std::vector<std::string>& overrides) {
  return app
      .add_option_function<std::string>(
          "--plugin",
          [&overrides](const std::string& path) {
            const std::string abs = std::filesystem::absolute(path).lexically_normal().string();
            std::string quoted = "\"";
            for (char c : abs)
              quoted += (c == '"' || c == '\\') ? std::string("\\") + c : std::string(1, c);
            overrides.push_back("model.plugin=" + quoted + "\"");
          },
          "load a model plugin (a shared library registering models; sets model.plugin, "
          "docs/cpp-api.md)")
      ->type_name("PATH");
}

// --resume and --overwrite (which exclude each other), as every verb that
// trains takes them.
inline void addCheckpointStartOptions(CLI::App& app, bool& resume, bool& overwrite) {
  auto* r = app.add_flag("--resume", resume,
                         "continue from the newest committed checkpoint in checkpoint.dir");
  app.add_flag("--overwrite", overwrite,
               "start over in a checkpoint.dir that holds an earlier run's checkpoints, "
               "removing them (its LATEST and step-NNNNNNNN directories only)")
      ->excludes(r);
}

// A finite number in [lo, hi] ((lo, hi] with lo_exclusive). CLI11 prefixes
// the message with the flag: "--budget: expected a number in [0, 86400],
// found 'nan' ...".
inline CLI::Validator finiteNumberIn(double lo, double hi, bool lo_exclusive = false) {
  const std::string range = std::string(lo_exclusive ? "(" : "[") + config::formatNumber(lo) +
                            ", " + config::formatNumber(hi) + "]";
  return CLI::Validator(
      [=](std::string& input) -> std::string {
        char* end = nullptr;
        errno = 0;
        const double v = std::strtod(input.c_str(), &end);
        const bool parsed = !input.empty() && end == input.c_str() + input.size();
        if (parsed && !std::isfinite(v)) {
          return "expected a finite number in " + range + ", found '" + input +
                 "' (NaN and infinity are not accepted)";
        }
        // 1e-400 reads as 0 (ERANGE): "--budget 1e-400" would mean "no limit".
        if (parsed && errno == ERANGE && std::fabs(v) < 2.3e-308) {
          return "expected a number in " + range + ", found '" + input +
                 "', which underflows (too small to represent: it would read as 0)";
        }
        if (!parsed || (lo_exclusive ? v <= lo : v < lo) || v > hi) {
          return "expected a number in " + range + ", found '" + input + "'";
        }
        return std::string();
      },
      "NUMBER in " + range);
}

// A decimal integer of at least lo ("--steps: expected an integer >= 1,
// found '0'").
inline CLI::Validator integerAtLeast(int64_t lo) {
  return CLI::Validator(
      [=](std::string& input) -> std::string {
        errno = 0;
        char* end = nullptr;
        const long long v = std::strtoll(input.c_str(), &end, 10);
        if (input.empty() || end != input.c_str() + input.size() || errno != 0 || v < lo) {
          return "expected an integer >= " + std::to_string(lo) + ", found '" + input + "'";
        }
        return std::string();
      },
      "INT >= " + std::to_string(lo));
}

}  // namespace geopipe::cli
