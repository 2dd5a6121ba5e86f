// Typed, position-aware reading of YAML mappings.
#include "src/config/yaml_fields.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "src/common/strings.h"

namespace geopipe::config {

Diagnostic diagnosticAt(const ReadContext& ctx, const YAML::Node& node,
                        const std::string& field, const std::string& message) {
  Diagnostic d;
  d.file = ctx.file;
  d.field = field;
  d.message = message;
  if (node.IsDefined() && node.Mark().line >= 0) {
    d.line = node.Mark().line + 1;
    d.column = node.Mark().column + 1;
  }
  return d;
}

std::string describeNode(const YAML::Node& node) {
  if (!node.IsDefined() || node.IsNull()) return "nothing";
  if (node.IsMap()) return "a mapping";
  if (node.IsSequence()) return "a list";
  return "'" + node.Scalar() + "'";
}

MapReader::MapReader(const YAML::Node& node, std::string path, ReadContext ctx)
    : node_(node), path_(std::move(path)), ctx_(std::move(ctx)) {
  if (!node_.IsMap()) {
    ok_ = false;
    ctx_.diagnostics->add(diagnosticAt(
        ctx_, node_, path_.empty() ? "<document>" : path_,
        "expected a mapping of key: value pairs, found " + describeNode(node_)));
  }
}

std::string MapReader::fieldPath(const std::string& key) const {
  return path_.empty() ? key : path_ + "." + key;
}

bool MapReader::has(const std::string& key) const {
  return ok_ && node_[key].IsDefined() && !node_[key].IsNull();
}

YAML::Node MapReader::child(const std::string& key) {
  known_.push_back(key);
  if (!ok_) return YAML::Node(YAML::NodeType::Undefined);
  // Look the key up on a const node so that absent keys are not inserted.
  const YAML::Node& cnode = node_;
  YAML::Node c = cnode[key];
  return c;
}

void MapReader::error(const std::string& key, const YAML::Node& node,
                      const std::string& message) {
  ctx_.diagnostics->add(diagnosticAt(ctx_, node.IsDefined() ? node : node_,
                                     fieldPath(key), message));
}

void MapReader::error(const std::string& message) {
  ctx_.diagnostics->add(
      diagnosticAt(ctx_, node_, path_.empty() ? "<document>" : path_, message));
}

namespace {

bool isScalar(const YAML::Node& n) { return n.IsDefined() && n.IsScalar(); }

// Parses a whole-string integer; rejects "1.5", "12abc", "".
bool parseInt64(const std::string& s, int64_t& out) {
  if (s.empty()) return false;
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(s.c_str(), &end, 0);
  if (errno != 0 || end != s.c_str() + s.size()) return false;
  out = v;
  return true;
}

bool parseDouble(const std::string& s, double& out) {
  if (s.empty()) return false;
  errno = 0;
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (errno != 0 || end != s.c_str() + s.size()) return false;
  out = v;
  return true;
}

std::string fmt(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

}  // namespace

void MapReader::getString(const std::string& key, std::string& out) {
  YAML::Node n = child(key);
  if (!n.IsDefined() || n.IsNull()) return;
  if (!isScalar(n)) {
    error(key, n, "expected a string, found " + describeNode(n));
    return;
  }
  out = n.Scalar();
}

void MapReader::getEnum(const std::string& key, std::string& out,
                        const std::vector<std::string>& allowed) {
  YAML::Node n = child(key);
  if (!n.IsDefined() || n.IsNull()) return;
  if (!isScalar(n)) {
    error(key, n, "expected one of " + common::joinOr(allowed) + ", found " +
                      describeNode(n));
    return;
  }
  const std::string& v = n.Scalar();
  if (std::find(allowed.begin(), allowed.end(), v) == allowed.end()) {
    std::string msg = "expected one of " + common::joinOr(allowed) +
                      ", found '" + v + "'";
    std::string guess = common::closestMatch(v, allowed);
    if (!guess.empty()) msg += " (did you mean '" + guess + "'?)";
    error(key, n, msg);
    return;
  }
  out = v;
}

void MapReader::getBool(const std::string& key, bool& out) {
  YAML::Node n = child(key);
  if (!n.IsDefined() || n.IsNull()) return;
  const std::string s = isScalar(n) ? n.Scalar() : "";
  if (s == "true" || s == "yes" || s == "on") {
    out = true;
  } else if (s == "false" || s == "no" || s == "off") {
    out = false;
  } else {
    error(key, n, "expected true or false, found " + describeNode(n));
  }
}

void MapReader::getInt64(const std::string& key, int64_t& out, int64_t lo,
                         int64_t hi) {
  YAML::Node n = child(key);
  if (!n.IsDefined() || n.IsNull()) return;
  int64_t v = 0;
  if (!isScalar(n) || !parseInt64(n.Scalar(), v)) {
    error(key, n, "expected an integer, found " + describeNode(n));
    return;
  }
  if (v < lo || v > hi) {
    std::string range = hi >= (int64_t{1} << 30)
                            ? ">= " + std::to_string(lo)
                            : "in " + std::to_string(lo) + ".." + std::to_string(hi);
    error(key, n, "expected an integer " + range + ", found " + std::to_string(v));
    return;
  }
  out = v;
}

void MapReader::getInt(const std::string& key, int& out, int64_t lo, int64_t hi) {
  int64_t v = out;
  getInt64(key, v, lo, std::min<int64_t>(hi, INT32_MAX));
  out = static_cast<int>(v);
}

void MapReader::getUint64(const std::string& key, uint64_t& out) {
  int64_t v = static_cast<int64_t>(out);
  getInt64(key, v, 0, INT64_MAX);
  out = static_cast<uint64_t>(v);
}

void MapReader::getDouble(const std::string& key, double& out, double lo,
                          double hi, bool lo_exclusive) {
  std::optional<double> v;
  getOptionalDouble(key, v, lo, hi, lo_exclusive);
  if (v) out = *v;
}

void MapReader::getOptionalDouble(const std::string& key,
                                  std::optional<double>& out, double lo,
                                  double hi, bool lo_exclusive) {
  YAML::Node n = child(key);
  if (!n.IsDefined() || n.IsNull()) return;
  double v = 0;
  if (!isScalar(n) || !parseDouble(n.Scalar(), v) || !std::isfinite(v)) {
    error(key, n, "expected a number, found " + describeNode(n));
    return;
  }
  bool below = lo_exclusive ? v <= lo : v < lo;
  if (below || v > hi) {
    std::string range;
    if (std::isinf(hi)) {
      range = (lo_exclusive ? "> " : ">= ") + fmt(lo);
    } else {
      range = std::string("in ") + (lo_exclusive ? "(" : "[") + fmt(lo) + ", " +
              fmt(hi) + "]";
    }
    error(key, n, "expected a number " + range + ", found " + n.Scalar());
    return;
  }
  out = v;
}

void MapReader::finish() {
  if (!ok_) return;
  for (auto it = node_.begin(); it != node_.end(); ++it) {
    // A copy: yaml-cpp's iterator returns its pair through a temporary
    // proxy, so a reference to it->first dangles (ASan: stack-use-after-scope).
    const YAML::Node k = it->first;
    std::string key = k.IsScalar() ? k.Scalar() : describeNode(k);
    if (std::find(known_.begin(), known_.end(), key) != known_.end()) continue;
    std::string msg = "unknown key '" + key + "'";
    std::string guess = common::closestMatch(key, known_);
    if (!guess.empty()) {
      msg += " (did you mean '" + guess + "'?)";
    } else {
      std::vector<std::string> sorted = known_;
      std::sort(sorted.begin(), sorted.end());
      sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
      msg += "; allowed keys here: " + common::join(sorted, ", ");
    }
    ctx_.diagnostics->add(diagnosticAt(ctx_, k, fieldPath(key), msg));
  }
}

}  // namespace geopipe::config
