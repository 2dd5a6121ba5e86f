// `geopipe validate`: check job specs and explain every problem.
#include <exception>

#include "src/cli/commands.h"
#include "src/config/diagnostics.h"
#include "src/config/job_parser.h"
#include "src/config/summary.h"

namespace geopipe::cli {

int runValidate(const std::vector<std::string>& files, bool quiet,
                std::ostream& out, std::ostream& err) {
  int invalid = 0;
  for (const auto& file : files) {
    try {
      JobSpec job = config::loadJobFile(file);
      if (!quiet) out << config::formatJobSummary(job) << "  OK\n";
    } catch (const config::SpecError& e) {
      ++invalid;
      err << e.what() << "\n";
    } catch (const IoError& e) {
      ++invalid;
      err << "error: " << e.what() << "\n";
    }
  }
  if (files.size() > 1 && !quiet) {
    out << files.size() - invalid << " of " << files.size() << " job(s) valid\n";
  }
  return invalid == 0 ? static_cast<int>(ExitCode::OK)
                      : static_cast<int>(ExitCode::INVALID_SPEC);
}

}  // namespace geopipe::cli
