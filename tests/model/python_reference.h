// Running tests/model/hf_reference.py (the independent PyTorch reference of
// the gpt2 and llama families) from a test: Debian's /usr/bin/python3 with
// python3-torch, which scripts/install-deps installs for the tests.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <stdexcept>
#include <string>

namespace testing::python {

inline const char* kPython = "/usr/bin/python3";
inline const char* kScript = "tests/model/hf_reference.py";  // tests run in the source root

// True when Debian's python3 can import torch (checked once).
inline bool haveTorch() {
  static const bool ok =
      std::system((std::string(kPython) + " -c 'import torch' >/dev/null 2>&1").c_str()) == 0;
  return ok;
}

// Runs the reference script with `args`; its stdout. Throws with the
// command when it fails.
inline std::string run(const std::string& args) {
  const std::string cmd = std::string(kPython) + " " + kScript + " " + args;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) throw std::runtime_error("cannot run " + cmd);
  std::string out;
  std::array<char, 65536> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int rc = pclose(p);
  if (rc != 0) throw std::runtime_error("failed (" + std::to_string(rc) + "): " + cmd);
  return out;
}

struct TempDir {
  TempDir() {
    char tmpl[] = "/tmp/geopipe-hf-XXXXXX";
    path = mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string path;
};

}  // namespace testing::python

#define GEOPIPE_SKIP_WITHOUT_PYTHON_TORCH()                                              \
  do {                                                                                   \
    if (!testing::python::haveTorch())                                                   \
      GTEST_SKIP() << "needs Debian's python3-torch (/usr/bin/python3 -c 'import torch'); " \
                      "scripts/install-deps installs it";                                \
  } while (0)
