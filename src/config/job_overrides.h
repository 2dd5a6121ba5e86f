// `--set path.to.field=value` on the command line: edits of a job's YAML
// tree made before the job is read, so an override is checked exactly as
// the file is, and each problem it causes names it.
#pragma once

#include <yaml-cpp/yaml.h>

#include <string>
#include <vector>

#include "geopipe/job_file.h"  // the same without overrides
#include "geopipe/job_spec.h"

namespace geopipe::config {

// Puts each override's value at its dotted path in `root` (made a mapping
// when it is empty), creating the mappings on the way. The value is YAML: a
// scalar (`--set training.optimizer.lr=1e-3`), or a flow sequence or
// mapping (`--set data={kind: synthetic}`); an empty value is null. Throws
// SpecError naming the override when it is not `path=value`, its value is
// not YAML, or its path runs through a value that is no mapping.
void applyOverrides(YAML::Node& root, const std::vector<std::string>& overrides);

// The same as geopipe/job_file.h's loadJobFile and parseJobString with
// `overrides` applied to the tree first. A problem of an overridden field (an
// unknown key with its "did you mean", a wrong value, a range) is reported
// as `--set PATH=VALUE: FIELD: message` instead of at a line of the file.
JobSpec loadJobFile(const std::string& path, const std::vector<std::string>& overrides);
JobSpec parseJobString(const std::string& yaml, const std::string& source,
                       const std::string& base_dir, const std::vector<std::string>& overrides);

}  // namespace geopipe::config
