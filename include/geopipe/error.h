// The geopipe error hierarchy and the macros that throw it with file:line.
// Every failure a user or a peer can cause surfaces as one of these types.
#pragma once

#include <exception>
#include <sstream>
#include <stdexcept>
#include <string>

namespace geopipe {

// Root of every exception geopipe throws on purpose. what() carries the
// whole message; location() the source file:line that raised it (empty when
// thrown without the macros).
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg, std::string location = "")
      : std::runtime_error(msg), location_(std::move(location)) {}
  const std::string& location() const { return location_; }

 private:
  std::string location_;
};

// A job spec, topology or CLI argument is wrong; the message names the file,
// field and fix.
class ConfigError : public Error {
  using Error::Error;
};

// A file could not be read or written, or its content is malformed.
class IoError : public Error {
  using Error::Error;
};

// A blocking operation did not finish in time.
class TimeoutError : public Error {
  using Error::Error;
};

// A peer or a file sent bytes that do not follow the wire format.
class ProtocolError : public Error {
  using Error::Error;
};

// A request that is well-formed but cannot be satisfied (too few devices,
// memory that cannot fit, a backend that lacks a capability).
class InfeasibleError : public Error {
  using Error::Error;
};

// What kind of failure an exception is. Code that decides what to do about
// a failure (retry, regroup, stop) reads this, never the message text, and
// failure reports carry it by kindName().
enum class ErrorKind {
  CONFIG,      // ConfigError
  IO,          // IoError
  TIMEOUT,     // TimeoutError
  PROTOCOL,    // ProtocolError
  INFEASIBLE,  // InfeasibleError
  OTHER,       // any other geopipe::Error
  INTERNAL,    // not a geopipe::Error: a bug, std::bad_alloc, a LibTorch error
};

// The most derived geopipe class of e, or INTERNAL.
inline ErrorKind kindOf(const std::exception& e) {
  if (dynamic_cast<const ConfigError*>(&e)) return ErrorKind::CONFIG;
  if (dynamic_cast<const IoError*>(&e)) return ErrorKind::IO;
  if (dynamic_cast<const TimeoutError*>(&e)) return ErrorKind::TIMEOUT;
  if (dynamic_cast<const ProtocolError*>(&e)) return ErrorKind::PROTOCOL;
  if (dynamic_cast<const InfeasibleError*>(&e)) return ErrorKind::INFEASIBLE;
  if (dynamic_cast<const Error*>(&e)) return ErrorKind::OTHER;
  return ErrorKind::INTERNAL;
}

// The class name, as failure reports carry it: "ConfigError", "IoError",
// "TimeoutError", "ProtocolError", "InfeasibleError", "Error",
// "InternalError".
inline const char* kindName(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::CONFIG: return "ConfigError";
    case ErrorKind::IO: return "IoError";
    case ErrorKind::TIMEOUT: return "TimeoutError";
    case ErrorKind::PROTOCOL: return "ProtocolError";
    case ErrorKind::INFEASIBLE: return "InfeasibleError";
    case ErrorKind::OTHER: return "Error";
    case ErrorKind::INTERNAL: break;
  }
  return "InternalError";
}

// kindName's inverse; false for a name that is not an error kind (failure
// reports also carry launcher verdicts such as "ProcessKilled").
inline bool kindFromName(const std::string& name, ErrorKind* kind) {
  for (ErrorKind k : {ErrorKind::CONFIG, ErrorKind::IO, ErrorKind::TIMEOUT, ErrorKind::PROTOCOL,
                      ErrorKind::INFEASIBLE, ErrorKind::OTHER, ErrorKind::INTERNAL}) {
    if (name == kindName(k)) {
      *kind = k;
      return true;
    }
  }
  return false;
}

// Failures of a link rather than of the job: a broken or reset connection,
// a peer gone silent, garbled bytes. Often the consequence of another
// tasklet's death, so a job with restarts left may regroup on them.
inline bool isLinkFailure(ErrorKind kind) {
  return kind == ErrorKind::IO || kind == ErrorKind::TIMEOUT || kind == ErrorKind::PROTOCOL;
}

// An exception of the given kind (Error for OTHER and INTERNAL).
inline std::exception_ptr makeError(ErrorKind kind, const std::string& message,
                                    const std::string& location = "") {
  switch (kind) {
    case ErrorKind::CONFIG: return std::make_exception_ptr(ConfigError(message, location));
    case ErrorKind::IO: return std::make_exception_ptr(IoError(message, location));
    case ErrorKind::TIMEOUT: return std::make_exception_ptr(TimeoutError(message, location));
    case ErrorKind::PROTOCOL: return std::make_exception_ptr(ProtocolError(message, location));
    case ErrorKind::INFEASIBLE: return std::make_exception_ptr(InfeasibleError(message, location));
    case ErrorKind::OTHER:
    case ErrorKind::INTERNAL: break;
  }
  return std::make_exception_ptr(Error(message, location));
}

// Throws e again as the same geopipe class with `context` put before its
// message and its location kept: the one way a layer says where a failure
// happened without losing what kind it is (callers still catch
// TimeoutError, and recovery still sees a link failure).
[[noreturn]] inline void rethrowWithContext(const Error& e, const std::string& context) {
  std::rethrow_exception(makeError(kindOf(e), context + e.what(), e.location()));
}

namespace detail {

inline void appendAll(std::ostringstream&) {}

template <typename T, typename... Rest>
void appendAll(std::ostringstream& os, const T& first, const Rest&... rest) {
  os << first;
  appendAll(os, rest...);
}

template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  appendAll(os, args...);
  return os.str();
}

}  // namespace detail
}  // namespace geopipe

#define GEOPIPE_STRINGIFY_IMPL(x) #x
#define GEOPIPE_STRINGIFY(x) GEOPIPE_STRINGIFY_IMPL(x)

// Throws ErrorType with the streamed arguments as its message and the
// current file:line as its location.
#define GEOPIPE_THROW(ErrorType, ...)                            \
  throw ErrorType(::geopipe::detail::concat(__VA_ARGS__),        \
                  __FILE__ ":" GEOPIPE_STRINGIFY(__LINE__))

// Throws ErrorType unless cond holds; the message says which condition failed.
#define GEOPIPE_CHECK(cond, ErrorType, ...)                                  \
  do {                                                                       \
    if (!(cond)) {                                                           \
      GEOPIPE_THROW(ErrorType, __VA_ARGS__, " [check failed: " #cond "]");   \
    }                                                                        \
  } while (0)

// Throws ErrorType unless a == b, printing both operands (Gloo's
// GLOO_ENFORCE_EQ).
#define GEOPIPE_CHECK_EQ(a, b, ErrorType, ...)                              \
  do {                                                                      \
    const auto& geopipe_a_ = (a);                                           \
    const auto& geopipe_b_ = (b);                                           \
    if (!(geopipe_a_ == geopipe_b_)) {                                      \
      GEOPIPE_THROW(ErrorType, __VA_ARGS__, " [expected " #a " == " #b      \
                    ", got ", geopipe_a_, " vs ", geopipe_b_, "]");         \
    }                                                                       \
  } while (0)
