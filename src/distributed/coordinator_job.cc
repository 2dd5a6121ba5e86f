// The coordinator's job: read, resolved, planned when `auto`, resumed.
#include "src/distributed/coordinator_job.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>

#include "geopipe/error.h"
#include "geopipe/model.h"
#include "src/common/text.h"
#include "src/runtime/checkpoint.h"
#include "src/runtime/placement.h"
#include "src/runtime/precision.h"

namespace geopipe::distributed {
namespace {

using Event = std::function<void(const std::string&)>;

// transport.emulate_links: the job's, or when it does not say, the default
// of how the job runs (CoordinatorOptions). Said loudly either way, since
// emulated links on real hosts throttle every transfer to numbers someone
// typed into a topology.
void resolveEmulateLinks(const CoordinatorOptions& opt, const JobBundle& bundle, JobSpec& job,
                         const Event& event) {
  const YAML::Node root = YAML::Load(bundle.yaml);
  const bool set = root.IsMap() && root["transport"] && root["transport"].IsMap() &&
                   root["transport"]["emulate_links"];
  if (!set) job.transport.emulate_links = opt.emulate_links_by_default;
  if (job.transport.emulate_links && !opt.emulate_links_by_default) {
    event(detail::concat(
        "links are EMULATED (transport.emulate_links: true): every transfer between workers is "
        "slowed to the topology's bandwidth and latency, as on one machine; for real hosts set "
        "transport.emulate_links: false"));
  } else if (!set) {
    event(job.transport.emulate_links
              ? "links are emulated (transport.emulate_links not set; the default on one machine)"
              : "links are real, not emulated (transport.emulate_links not set; the default "
                "across hosts)");
  }
}

// --resume: the newest committed checkpoint in checkpoint.dir.
void findResumePoint(const ModelDef& model, CoordinatorJob& cj, const Event& event) {
  const JobSpec& job = cj.job;
  const std::string& dir = job.checkpoint.dir;
  const runtime::CheckpointManifest manifest =
      runtime::resumePoint(dir, job.parallelism.pipeline_stages, job.parallelism.data_parallel,
                           job.training.steps);
  cj.resume_replicas = manifest.replicas;
  cj.first_step = manifest.next_step;
  // Keep the layer split the checkpoint was written with (version 2) when
  // the stage count is the same; another count is planned afresh, and the
  // workers gather their layers from the saved stages.
  if (manifest.stages == job.parallelism.pipeline_stages) {
    cj.resume_body_split =
        runtime::savedBodySplit(manifest, model.prologue_layers, model.epilogue_layers);
  }
  cj.resume_dir = runtime::stepDirectory(dir, cj.first_step);
  event(detail::concat("resuming from '", common::printable(cj.resume_dir), "' at step ",
                       cj.first_step));
}

}  // namespace

CoordinatorJob readCoordinatorJob(const CoordinatorOptions& opt, ModelDef* model,
                                  const Event& event) {
  CoordinatorJob cj;
  cj.bundle = bundleJobFile(opt.job_path, opt.overrides);
  JobSpec& job = cj.job;
  job = parseBundle(cj.bundle);
  job.security = cj.bundle.security;
  resolveEmulateLinks(opt, cj.bundle, job, event);
  if (opt.steps) job.training.steps = static_cast<int>(*opt.steps);
  runtime::checkComputeDtype(job);
  // Built (a plugin loaded) before any planning: a model that gives its own
  // cost is priced by it.
  *model = makeModel(job.model);
  job.model.cost = modelCost(*model);
  if (const std::string chosen = runtime::resolveAutoDataParallel(job); !chosen.empty())
    event(chosen);
  const int stages = job.parallelism.pipeline_stages;
  const int replicas = job.parallelism.data_parallel;
  GEOPIPE_CHECK(model->bodyLayers() >= stages, ConfigError, "model '", model->name, "' has ",
                model->bodyLayers(), " layers to split but parallelism.pipeline_stages is ",
                stages);
  cj.resume_replicas = replicas;
  const FaultToleranceSpec& ft = job.fault_tolerance;
  cj.min_replicas = ft.min_replicas > 0 ? std::min(ft.min_replicas, replicas) : replicas;
  if (ft.min_replicas > 0 && (ft.max_restarts == 0 || ft.min_replicas >= replicas)) {
    event(detail::concat("note: fault_tolerance.min_replicas ", ft.min_replicas, " has no effect: ",
                         ft.max_restarts == 0
                             ? std::string("max_restarts is 0, so a failure ends the job")
                             : detail::concat("the job has ", replicas,
                                              " replica(s), it cannot shrink below that")));
  }
  if (opt.resume) findResumePoint(*model, cj, event);
  return cj;
}

}  // namespace geopipe::distributed
