// Typed, position-aware reading of YAML mappings.
#include "src/config/yaml_fields.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <sstream>

#include "src/common/strings.h"
#include "src/common/text.h"

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
  return "'" + common::printable(node.Scalar()) + "'";
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

// A decimal number as YAML 1.2 writes it (strtod alone would also take hex
// "0x10" and leading blanks). Out of double's range (ERANGE), an underflow
// keeps its tiny value and an overflow is infinite: the callers' range and
// finiteness checks then name the field.
bool parseDouble(const std::string& s, double& out) {
  if (s.empty() || s.find_first_of("xXpP \t") != std::string::npos) return false;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size()) return false;
  out = v;
  return true;
}

// A number written in range of strtod's syntax but below the smallest
// normal double (1e-400): strtod gives 0 or a denormal with ERANGE, and the
// field would silently read 0 (grad_clip: 1e-400 turning clipping off).
bool underflows(const std::string& s) {
  double v = 0;
  if (!parseDouble(s, v)) return false;
  errno = 0;
  v = std::strtod(s.c_str(), nullptr);
  return errno == ERANGE && std::fabs(v) < std::numeric_limits<double>::min();
}

// "nan", ".inf", "-Infinity": the spellings of a number that is not one
// (YAML's and strtod's).
bool spellsNonFinite(const std::string& s) {
  std::string lower;
  for (char c : s) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  size_t i = !lower.empty() && (lower[0] == '+' || lower[0] == '-') ? 1 : 0;
  if (i < lower.size() && lower[i] == '.') ++i;
  const std::string word = lower.substr(i);
  return word == "nan" || word == "inf" || word == "infinity";
}

}  // namespace

// 1e-06 -> 1e-6, 1e+06 -> 1e6: bounds in messages read as written.
std::string formatNumber(double v) {
  std::ostringstream os;
  os << v;
  std::string s = os.str();
  const size_t e = s.find('e');
  if (e == std::string::npos) return s;
  std::string mantissa = s.substr(0, e), exponent = s.substr(e + 1);
  const bool negative = exponent[0] == '-';
  exponent = exponent.substr(exponent[0] == '-' || exponent[0] == '+' ? 1 : 0);
  exponent.erase(0, std::min(exponent.find_first_not_of('0'), exponent.size() - 1));
  return mantissa + "e" + (negative ? "-" : "") + exponent;
}

bool parseDecimalInteger(const std::string& s, int64_t& out, std::string& problem) {
  problem.clear();
  const size_t sign = !s.empty() && (s[0] == '+' || s[0] == '-') ? 1 : 0;
  const std::string digits = s.substr(sign);
  if (digits.empty()) return false;
  if (digits.size() > 1 && digits[0] == '0' &&
      std::string("xXoObB").find(digits[1]) != std::string::npos) {
    problem = "hexadecimal, octal and binary forms are not read here: write the number in decimal";
    errno = 0;
    char* end = nullptr;
    const int base = digits[1] == 'x' || digits[1] == 'X'   ? 16
                     : digits[1] == 'b' || digits[1] == 'B' ? 2
                                                            : 8;
    const long long v = std::strtoll(digits.c_str() + 2, &end, base);
    if (errno == 0 && *end == '\0' && digits.size() > 2) {
      problem += " (" + s.substr(0, sign) + std::to_string(v) + ")";
    }
    return false;
  }
  if (digits.find_first_not_of("0123456789") != std::string::npos) {
    double d = 0;
    if (parseDouble(s, d) && std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e18) {
      problem = "write an integer in digits: " + std::to_string(static_cast<int64_t>(d));
    }
    return false;
  }
  if (digits.size() > 1 && digits[0] == '0') {
    const std::string decimal =
        digits.substr(std::min(digits.find_first_not_of('0'), digits.size() - 1));
    problem = "a leading zero is ambiguous (YAML 1.1 reads '" + s +
              "' as octal, YAML 1.2 as decimal): write " + s.substr(0, sign) + decimal;
    if (digits.find_first_not_of("01234567") == std::string::npos && digits.size() <= 20) {
      problem += " (or " + s.substr(0, sign) +
                 std::to_string(std::strtoll(digits.c_str(), nullptr, 8)) + " if you meant octal)";
    }
    return false;
  }
  errno = 0;
  const long long v = std::strtoll(s.c_str(), nullptr, 10);
  // Beyond int64: clamped, so the caller's range check names the field.
  out = errno == ERANGE ? (sign && s[0] == '-' ? INT64_MIN : INT64_MAX) : v;
  return true;
}

void MapReader::getString(const std::string& key, std::string& out) {
  YAML::Node n = child(key);
  if (!n.IsDefined() || n.IsNull()) return;
  if (!isScalar(n)) {
    error(key, n, "expected a string, found " + describeNode(n));
    return;
  }
  if (n.Scalar().find('\0') != std::string::npos) {
    error(key, n, std::string(kNulByteMessage));
    return;
  }
  if (const std::string problem = common::utf8Problem(n.Scalar()); !problem.empty()) {
    error(key, n, std::string(kNotUtf8Message) + problem);
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
  std::string problem;
  if (!isScalar(n) || !parseDecimalInteger(n.Scalar(), v, problem)) {
    error(
        key, n,
        "expected an integer, found " + describeNode(n) + (problem.empty() ? "" : ": " + problem));
    return;
  }
  if (v < lo || v > hi) {
    // "in 1..65536"; ">= 1" when the top is only a guard against overflow
    // and the number is below the bottom.
    std::string range = v < lo && hi >= (int64_t{1} << 30)
                            ? ">= " + std::to_string(lo)
                            : "in " + std::to_string(lo) + ".." + std::to_string(hi);
    error(key, n, "expected an integer " + range + ", found " + n.Scalar());
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
  if (isScalar(n) &&
      (spellsNonFinite(n.Scalar()) || (parseDouble(n.Scalar(), v) && !std::isfinite(v)))) {
    error(key, n,
          "expected a finite number, found " + describeNode(n) +
              ": NaN and infinity are not accepted here");
    return;
  }
  if (!isScalar(n) || !parseDouble(n.Scalar(), v)) {
    error(key, n, "expected a number, found " + describeNode(n));
    return;
  }
  std::string range;
  if (std::isinf(hi)) {
    range = (lo_exclusive ? "> " : ">= ") + formatNumber(lo);
  } else {
    range = std::string("in ") + (lo_exclusive ? "(" : "[") + formatNumber(lo) + ", " +
            formatNumber(hi) + "]";
  }
  if (underflows(n.Scalar())) {
    error(key, n,
          "expected a number " + range + ", found " + describeNode(n) +
              ", which underflows: it is too small to represent (below about 2.2e-308) and "
              "would read as 0; write 0 if you mean zero, or a number in the range");
    return;
  }
  bool below = lo_exclusive ? v <= lo : v < lo;
  if (below || v > hi) {
    error(key, n, "expected a number " + range + ", found " + common::printable(n.Scalar()));
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
