// Typed, position-aware reading of YAML mappings into spec structs. Every
// read records its key, so finish() can reject unknown keys with a "did you
// mean" suggestion; every type or range error becomes a Diagnostic that names
// the file, line:column and field path.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "src/config/diagnostics.h"

namespace geopipe::config {

// Where the node being read comes from: the file (for messages) and the
// diagnostics sink shared by the whole file.
struct ReadContext {
  std::string file;
  Diagnostics* diagnostics = nullptr;
};

// Reads one YAML mapping. Each get*() leaves `out` untouched when the key is
// absent (so struct defaults stand) and records a diagnostic when the value is
// present but wrong. Not thread-safe; one reader per mapping.
class MapReader {
 public:
  // `path` is the dotted field path of `node` ("" for the document root).
  MapReader(const YAML::Node& node, std::string path, ReadContext ctx);

  // True when `node` is a mapping; otherwise a diagnostic was recorded and
  // every get*() is a no-op.
  bool ok() const { return ok_; }

  bool has(const std::string& key) const;
  // Marks `key` as known and returns its node (an undefined node if absent).
  YAML::Node child(const std::string& key);

  void getString(const std::string& key, std::string& out);
  // One of `allowed`; the message lists them and suggests the closest.
  void getEnum(const std::string& key, std::string& out,
               const std::vector<std::string>& allowed);
  void getBool(const std::string& key, bool& out);
  // Integers in [lo, hi].
  void getInt(const std::string& key, int& out, int64_t lo, int64_t hi);
  void getInt64(const std::string& key, int64_t& out, int64_t lo, int64_t hi);
  void getUint64(const std::string& key, uint64_t& out);
  // Finite numbers in [lo, hi]; with positive = true, strictly above lo.
  void getDouble(const std::string& key, double& out, double lo, double hi,
                 bool lo_exclusive = false);
  void getOptionalDouble(const std::string& key, std::optional<double>& out,
                         double lo, double hi, bool lo_exclusive = false);

  // Records a diagnostic at `node` (or at this mapping when node is null).
  void error(const std::string& key, const YAML::Node& node,
             const std::string& message);
  void error(const std::string& message);

  // Reports every key that no get*/child call asked for.
  void finish();

  std::string fieldPath(const std::string& key) const;
  const ReadContext& context() const { return ctx_; }

 private:
  YAML::Node node_;
  std::string path_;
  ReadContext ctx_;
  bool ok_ = true;
  std::vector<std::string> known_;
};

// Reads an integer as every field does: decimal digits with an optional
// sign (YAML 1.2's core schema). A leading zero ("010": octal 8 in YAML 1.1,
// 10 in YAML 1.2), 0x / 0o / 0b forms and exponents ("1e6") are refused, and
// `problem` then says how to write the number ("" when the text is no
// number at all). Beyond int64 the value is clamped, so the caller's range
// check names the field.
bool parseDecimalInteger(const std::string& text, int64_t& out, std::string& problem);

// A number as messages show it: 0.0003, 1e-6, 1e6.
std::string formatNumber(double v);

// A string field (a path, a name) holding a NUL byte: "\0" in a quoted YAML
// string. No file name can hold one, and C APIs would cut the string there.
inline constexpr char kNulByteMessage[] =
    "contains a NUL byte (\\0 in a quoted string), which no path or name can hold: remove it";

// A string field (a path, a name) that is not UTF-8; the problem
// (common::utf8Problem: the byte and its offset) follows.
inline constexpr char kNotUtf8Message[] =
    "names and paths must be UTF-8 text (save the file as UTF-8), but ";

// A diagnostic positioned at `node` (1-based line and column).
Diagnostic diagnosticAt(const ReadContext& ctx, const YAML::Node& node,
                        const std::string& field, const std::string& message);

// Human description of a node for "found ..." messages: the scalar in quotes,
// or "a mapping", "a sequence", "nothing".
std::string describeNode(const YAML::Node& node);

}  // namespace geopipe::config
