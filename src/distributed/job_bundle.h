// A job as it travels from the coordinator to workers on other hosts: the
// job file's YAML with its topology file inlined, so a worker needs no copy
// of the topology, plus the directory that resolves the job's relative paths
// (data, checkpoints), which must therefore exist on every worker's host.
// Torch-free.
#pragma once

#include <string>
#include <vector>

#include "geopipe/job_spec.h"

namespace geopipe::distributed {

struct JobBundle {
  std::string yaml;      // the job file's text, `topology:` replaced by the mapping
  std::string source;    // the job file's path on the coordinator (for messages)
  std::string base_dir;  // absolute directory of the job file
  // The job file's security section, for the coordinator's own use: it is
  // not in `yaml`, since paths of this host's TLS files mean nothing on a
  // worker's host (each worker names its own).
  SecuritySpec security;
};

// Reads the job file; IoError if unreadable, SpecError if its YAML or its
// topology file cannot be read.
// `overrides` (--set path=value) are applied to the job first and travel in
// the bundle's YAML.
JobBundle bundleJobFile(const std::string& path, const std::vector<std::string>& overrides = {});

// Parses a bundle back into a JobSpec (the same checks as loadJobFile).
JobSpec parseBundle(const JobBundle& bundle);

}  // namespace geopipe::distributed
