// What a path names, for messages about files a user gave: a job, a
// topology, a data file. "No such file" for /dev/zero or a directory sends
// the user looking for a typo; this says what is there instead.
#pragma once

#include <string>

namespace geopipe::common {

// "" when `path` names a regular file (directly or through symbolic links);
// else what it is instead, as a predicate that follows the quoted path:
// "does not exist", "is a directory, not a regular file", "is a device, not
// a regular file", "is a FIFO (named pipe), not a regular file", "is a
// socket, not a regular file", "is a symbolic link to '/dev/zero', a device,
// not a regular file", "cannot be read: Permission denied". Never opens the
// path, so a FIFO or a device is not touched.
std::string regularFileProblem(const std::string& path);

}  // namespace geopipe::common
