// What a path names, for messages.
#include "src/common/file_kind.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

namespace geopipe::common {
namespace {

// What a stat mode is, when it is not a regular file.
std::string kindOf(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISCHR(mode) || S_ISBLK(mode)) return "a device";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

}  // namespace

std::string regularFileProblem(const std::string& path) {
  struct stat link {};
  if (::lstat(path.c_str(), &link) != 0) {
    const int err = errno;
    if (err == ENOENT) return "does not exist";
    if (err == ENOTDIR) return "does not exist (a part of the path is not a directory)";
    return std::string("cannot be read: ") + std::strerror(err);
  }
  struct stat target {};
  const bool is_link = S_ISLNK(link.st_mode);
  std::string via;
  if (is_link) {
    std::vector<char> buf(4096);
    const ssize_t n = ::readlink(path.c_str(), buf.data(), buf.size() - 1);
    via = "is a symbolic link to '" + std::string(buf.data(), n > 0 ? size_t(n) : 0) + "', ";
    if (::stat(path.c_str(), &target) != 0) {
      return via + (errno == ENOENT ? "which does not exist"
                                    : std::string("which cannot be read: ") + std::strerror(errno));
    }
  } else {
    target = link;
  }
  if (S_ISREG(target.st_mode)) return "";
  const std::string kind = kindOf(target.st_mode);
  if (kind == "not a regular file") return is_link ? via + "not a regular file" : kind;
  return (is_link ? via : "is ") + kind + ", not a regular file";
}

}  // namespace geopipe::common
