// Diagnostics for user-written specs: each names the file, line:column, the
// field path and what is wrong; a whole file's diagnostics are reported at once.
#pragma once

#include <string>
#include <vector>

#include "geopipe/error.h"

namespace geopipe::config {

// One problem in a spec file. line and column are 1-based; 0 when unknown
// (a cross-field check has no single position).
struct Diagnostic {
  std::string file;
  int line = 0;
  int column = 0;
  std::string field;    // dotted path, e.g. training.micro_batch
  std::string message;  // what was expected, what was found, what to do

  // "job.yaml:12:5: training.micro_batch: <message>"
  std::string format() const;
};

// A spec with one or more problems. what() lists every diagnostic, one per
// line, so a user fixes them all in one pass.
class SpecError : public ConfigError {
 public:
  explicit SpecError(std::vector<Diagnostic> diagnostics);
  const std::vector<Diagnostic>& diagnostics() const { return diagnostics_; }

 private:
  std::vector<Diagnostic> diagnostics_;
};

// Collects diagnostics while a file is read; throwIfAny() raises them as one
// SpecError.
class Diagnostics {
 public:
  void add(Diagnostic d) { items_.push_back(std::move(d)); }
  bool empty() const { return items_.empty(); }
  size_t size() const { return items_.size(); }
  const std::vector<Diagnostic>& items() const { return items_; }
  void append(const std::vector<Diagnostic>& more) {
    items_.insert(items_.end(), more.begin(), more.end());
  }
  void throwIfAny() const;

 private:
  std::vector<Diagnostic> items_;
};

}  // namespace geopipe::config
