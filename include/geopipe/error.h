// The geopipe error hierarchy and the macros that throw it with file:line.
// Every failure a user or a peer can cause surfaces as one of these types.
#pragma once

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
