// A program built against an installed geopipe (tests/install): reads a job
// file, checks that a bad job is refused with a ConfigError, and trains the
// job's built-in GPT for its few steps through geopipe::Trainer.
//
//   geopipe_consumer job.yaml
#include <geopipe/error.h>
#include <geopipe/job_file.h>
#include <geopipe/model.h>
#include <geopipe/trainer.h>
#include <geopipe/version.h>

#include <cmath>
#include <cstdio>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s job.yaml\n", argv[0]);
    return 2;
  }
  try {
    std::printf("consumer: geopipe %s\n", GEOPIPE_VERSION_STRING);
    geopipe::JobSpec job = geopipe::config::loadJobFile(argv[1]);
    std::printf("consumer: job %s, %d stages x %d replicas\n", job.name.c_str(),
                job.parallelism.pipeline_stages, job.parallelism.data_parallel);

    try {
      geopipe::config::parseJobString("modle: {}\n", "bad.yaml", ".");
      std::printf("consumer: a misspelt key was accepted\n");
      return 1;
    } catch (const geopipe::ConfigError& e) {
      std::printf("consumer: misspelt key refused\n");
    }

    geopipe::TrainResult result = geopipe::Trainer(geopipe::makeModel(job.model), job).train();
    for (double loss : result.losses) {
      if (!std::isfinite(loss)) {
        std::printf("consumer: loss not finite\n");
        return 1;
      }
    }
    std::printf("consumer: trained %zu steps, loss %.4f -> %.4f\n", result.losses.size(),
                result.losses.front(), result.losses.back());
    return 0;
  } catch (const geopipe::Error& e) {
    std::fprintf(stderr, "consumer: error: %s\n", e.what());
    return 1;
  }
}
