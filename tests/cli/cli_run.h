// Running the built `geopipe` binary from a test: a temporary folder, file
// helpers, and a command's exit code, stdout and stderr.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace cli_test {

namespace fs = std::filesystem;

struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "geopipe-cli-test-XXXXXX").string();
    path = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

inline std::string readAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

inline void writeFile(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

inline std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

struct CommandResult {
  int code;
  std::string out, err;
};

// Runs `geopipe ARGS` with stdout and stderr to files (stderr is no
// terminal, so progress comes as plain lines).
inline CommandResult runGeopipe(const TempDir& dir, const std::vector<std::string>& args) {
  std::string cmd = quote(GEOPIPE_BINARY);
  for (const auto& a : args) cmd += " " + quote(a);
  cmd += " >" + quote(dir.file("stdout")) + " 2>" + quote(dir.file("stderr"));
  const int status = std::system(cmd.c_str());
  CommandResult r{WIFEXITED(status) ? WEXITSTATUS(status) : -1, readAll(dir.file("stdout")),
                  readAll(dir.file("stderr"))};
  fs::remove(dir.file("stdout"));
  fs::remove(dir.file("stderr"));
  return r;
}

}  // namespace cli_test
