// Diagnostics for user-written specs.
#include "src/config/diagnostics.h"

#include <sstream>

#include "src/common/text.h"

namespace geopipe::config {

std::string Diagnostic::format() const {
  // One line per problem whatever the file holds: a key or value with a
  // newline or an escape sequence is shown escaped, never printed raw.
  std::ostringstream os;
  os << (file.empty() ? "<spec>" : common::printable(file));
  if (line > 0) os << ":" << line << ":" << column;
  os << ": ";
  if (!field.empty()) os << common::printable(field) << ": ";
  os << common::printable(message);
  return os.str();
}

namespace {

std::string formatAll(const std::vector<Diagnostic>& diagnostics) {
  std::ostringstream os;
  if (diagnostics.size() > 1) {
    os << diagnostics.size() << " problems in the spec:\n";
  }
  for (size_t i = 0; i < diagnostics.size(); ++i) {
    if (i) os << "\n";
    os << diagnostics[i].format();
  }
  return os.str();
}

}  // namespace

SpecError::SpecError(std::vector<Diagnostic> diagnostics)
    : ConfigError(formatAll(diagnostics)), diagnostics_(std::move(diagnostics)) {}

void Diagnostics::throwIfAny() const {
  if (!items_.empty()) throw SpecError(items_);
}

}  // namespace geopipe::config
