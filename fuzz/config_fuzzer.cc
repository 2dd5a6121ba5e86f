// Fuzz target: the job and topology YAML parsers, fed from bytes. Input:
// one selector byte (even: topology, odd: job), then the YAML text. A
// parser may only return a spec or throw a geopipe::Error (SpecError,
// IoError); anything else (a crash, a sanitizer report, another exception,
// a hang) is a bug.
#include <cstddef>
#include <cstdint>
#include <string>

#include "geopipe/error.h"
#include "src/config/job_parser.h"
#include "src/config/topology_parser.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    if (data[0] % 2 == 0) {
      geopipe::config::parseTopologyString(text, "<fuzz>");
    } else {
      // Relative topology and data paths resolve against the examples, so
      // that the seeds (copies of examples/jobs) reach the later checks.
      geopipe::config::parseJobString(text, "<fuzz>", GEOPIPE_SOURCE_DIR "/examples/jobs");
    }
  } catch (const geopipe::Error&) {
    // A clear refusal is the expected outcome for most inputs.
  }
  return 0;
}
