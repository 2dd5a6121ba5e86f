// Running a test body in a child process under a heap limit, for the tests
// that a large input is never read whole (issue 18: a 40 GB text file ended
// in exit 70), and sparse files to be such inputs without disk or time.
#pragma once

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <exception>
#include <fstream>
#include <functional>
#include <string>

#if defined(__SANITIZE_ADDRESS__)
#define GEOPIPE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GEOPIPE_ASAN 1
#endif
#endif

namespace geopipe::test_support {

// A sparse file of `bytes` zero bytes at `path`: no disk, no time.
inline bool makeSparseFile(const std::string& path, int64_t bytes) {
  std::ofstream(path, std::ios::binary).flush();
  return ::truncate(path.c_str(), bytes) == 0;
}

// The process's private writable memory now (VmData), in bytes.
inline int64_t dataBytes() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmData:", 0) == 0) return std::stoll(line.substr(7)) * 1024;  // kB
  }
  return 0;
}

// Runs `body` in a child process that may allocate `limit` bytes of heap
// and other private writable memory beyond what it inherits (RLIMIT_DATA
// set to VmData + limit; file mappings do not count), so the tests run
// before in the same process do not matter; the child's exit status (0:
// `body` returned true). A body that reads a file whole into memory fails
// there with bad_alloc, whatever the machine's RAM. (Under ASan, whose
// shadow memory counts against the limit, skip such tests: GEOPIPE_ASAN.)
inline int underDataLimit(int64_t limit, const std::function<bool()>& body) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    const auto cap = static_cast<rlim_t>(dataBytes() + limit);
    rlimit r{cap, cap};
    ::setrlimit(RLIMIT_DATA, &r);
    bool ok = false;
    try {
      ok = body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "under a %lld MiB data limit: %s\n", static_cast<long long>(limit >> 20),
                   e.what());
    }
    std::fflush(stderr);
    ::_exit(ok ? 0 : 1);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace geopipe::test_support
