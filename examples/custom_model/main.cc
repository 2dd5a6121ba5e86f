// A user-defined model trained through geopipe's C++ API: not a GPT but a
// causal "shift-MLP" language model (shift_mlp.h), registered by name and
// cut into pipeline stages by geopipe. The same model is built as the
// plugin libgeopipe_example_model.so for `geopipe train/launch --plugin`.
//
//   custom_model_example [job.yaml] [--steps N]
#include <geopipe/error.h>
#include <geopipe/job_file.h>
#include <geopipe/model.h>
#include <geopipe/trainer.h>

#include "examples/custom_model/shift_mlp.h"

#include <cstdio>
#include <cstring>
#include <string>

int main(int argc, char** argv) {
  std::string job_path = "examples/custom_model/job.yaml";
  int steps = 0;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--steps") == 0 && i + 1 < argc) {
      steps = std::atoi(argv[++i]);
    } else {
      job_path = argv[i];
    }
  }
  try {
    // 1. Register the model so that `model: {kind: custom, name: shift-mlp}` finds it.
    geopipe::registerModel("shift-mlp", example::makeShiftMlp);
    // 2. Read the job (or build a geopipe::JobSpec in code).
    geopipe::JobSpec job = geopipe::config::loadJobFile(job_path);
    if (steps > 0) job.training.steps = steps;
    // 3. Train: geopipe cuts the model into the job's stages and replicas.
    geopipe::TrainerOptions options;
    options.on_step = [](const geopipe::StepMetrics& m) {
      std::printf("step %3lld  loss %.4f  %.0f tokens/s\n", static_cast<long long>(m.step + 1),
                  m.loss, m.tokens_per_second);
    };
    geopipe::TrainResult result =
        geopipe::Trainer(geopipe::makeModel(job.model), job, options).train();
    std::printf("trained %zu steps: loss %.4f -> %.4f\n", result.losses.size(),
                result.losses.front(), result.losses.back());
    return result.losses.back() < result.losses.front() ? 0 : 1;
  } catch (const geopipe::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
