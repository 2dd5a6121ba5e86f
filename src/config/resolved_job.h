// A JobSpec written back as job YAML with every default filled in (`geopipe
// validate --print`): what a job file and its --set overrides resolve to.
#pragma once

#include <string>

#include "geopipe/job_spec.h"

namespace geopipe::config {

// The job as YAML that parseJobString reads back into the same job: every
// field at its value (defaults included), paths absolute as resolved, the
// model as its explicit shape (`preset: none`; with model.from only the
// job's own fields: config.json supplies the shape), fields the model kind
// or compression method does not take left out (the parser refuses them),
// and the topology inline with every site, device and directed link. Numbers
// print in their shortest form that reads back exactly.
// `emulate_links_set`: whether the job (or an override) set
// transport.emulate_links; when it did not, the field is left out (with a
// comment), since its default depends on the verb that runs the job.
std::string resolvedJobYaml(const JobSpec& job, bool emulate_links_set = true);

}  // namespace geopipe::config
