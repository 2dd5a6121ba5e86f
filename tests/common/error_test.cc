// The error vocabulary of include/geopipe/error.h: kinds, their names as
// failure reports carry them, which kinds are link failures, and the rethrow
// that adds context without changing the kind.
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

#include "geopipe/error.h"

namespace geopipe {
namespace {

const ErrorKind kAll[] = {ErrorKind::CONFIG,     ErrorKind::IO,    ErrorKind::TIMEOUT,
                          ErrorKind::PROTOCOL,   ErrorKind::INFEASIBLE, ErrorKind::OTHER,
                          ErrorKind::INTERNAL};

TEST(ErrorKinds, KindOfIsTheMostDerivedGeopipeClass) {
  EXPECT_EQ(kindOf(ConfigError("x")), ErrorKind::CONFIG);
  EXPECT_EQ(kindOf(IoError("x")), ErrorKind::IO);
  EXPECT_EQ(kindOf(TimeoutError("x")), ErrorKind::TIMEOUT);
  EXPECT_EQ(kindOf(ProtocolError("x")), ErrorKind::PROTOCOL);
  EXPECT_EQ(kindOf(InfeasibleError("x")), ErrorKind::INFEASIBLE);
  EXPECT_EQ(kindOf(Error("x")), ErrorKind::OTHER);
  EXPECT_EQ(kindOf(std::runtime_error("x")), ErrorKind::INTERNAL);
  // Through a base reference, as a catch (const std::exception&) sees it.
  const TimeoutError t("late");
  const std::exception& base = t;
  EXPECT_EQ(kindOf(base), ErrorKind::TIMEOUT);
}

TEST(ErrorKinds, NamesRoundTripAndOtherNamesAreNotKinds) {
  for (ErrorKind k : kAll) {
    ErrorKind back = ErrorKind::INTERNAL;
    ASSERT_TRUE(kindFromName(kindName(k), &back)) << kindName(k);
    EXPECT_EQ(back, k);
  }
  // The names peers send: a change here breaks mixed-version jobs.
  EXPECT_STREQ(kindName(ErrorKind::TIMEOUT), "TimeoutError");
  EXPECT_STREQ(kindName(ErrorKind::IO), "IoError");
  EXPECT_STREQ(kindName(ErrorKind::PROTOCOL), "ProtocolError");
  EXPECT_STREQ(kindName(ErrorKind::INTERNAL), "InternalError");
  ErrorKind k;
  for (const char* other : {"ProcessKilled", "ProcessFailed", "Interrupted", "", "timeouterror"})
    EXPECT_FALSE(kindFromName(other, &k)) << other;
}

TEST(ErrorKinds, OnlyBrokenGarbledOrSilentLinksAreLinkFailures) {
  for (ErrorKind k : kAll) {
    const bool link = k == ErrorKind::IO || k == ErrorKind::TIMEOUT || k == ErrorKind::PROTOCOL;
    EXPECT_EQ(isLinkFailure(k), link) << kindName(k);
  }
}

TEST(ErrorKinds, RethrowWithContextKeepsKindAndLocation) {
  for (ErrorKind k : kAll) {
    try {
      std::rethrow_exception(makeError(k, "peer gone", "here.cc:7"));
    } catch (const Error& e) {
      EXPECT_EQ(kindOf(e), k == ErrorKind::INTERNAL ? ErrorKind::OTHER : k);
      try {
        rethrowWithContext(e, "stage 1 step 3: ");
      } catch (const Error& again) {
        EXPECT_EQ(kindOf(again), kindOf(e));
        EXPECT_EQ(std::string(again.what()), "stage 1 step 3: peer gone");
        EXPECT_EQ(again.location(), "here.cc:7");
      }
    }
  }
  // Callers keep catching by class.
  EXPECT_THROW(rethrowWithContext(TimeoutError("t"), "ctx: "), TimeoutError);
  EXPECT_THROW(rethrowWithContext(ProtocolError("p"), "ctx: "), ProtocolError);
}

}  // namespace
}  // namespace geopipe
