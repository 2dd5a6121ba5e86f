// Child processes of the launcher: spawned into one process group with
// PR_SET_PDEATHSIG, so that neither Ctrl-C in the terminal (which reaches
// only the launcher) nor the launcher's death (the kernel kills them) leaves
// a worker behind; polled, signalled and reaped with bounded waits.
// Torch-free.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace geopipe::distributed {

struct SpawnOptions {
  // The program (absolute path) and its arguments (argv[0] included).
  std::string program;
  std::vector<std::string> argv;
  // stdout and stderr of the child go here (created / truncated); empty
  // keeps the parent's.
  std::string log_file;
  // The process group to join; 0 starts a new group led by the child.
  pid_t process_group = 0;
};

// How a child ended.
struct ExitStatus {
  bool signaled = false;
  int code = 0;    // exit code when !signaled
  int signal = 0;  // terminating signal when signaled
  bool ok() const { return !signaled && code == 0; }
  // "exited with code 5", "killed by signal 9 (SIGKILL)".
  std::string str() const;
};

class ChildProcess {
 public:
  // fork + exec. Only async-signal-safe calls run between the two, so it is
  // safe from a multi-threaded parent. IoError when fork or exec fails (an
  // exec failure is reported as exit code 127).
  static ChildProcess spawn(const SpawnOptions& options);

  pid_t pid() const { return pid_; }
  // Non-blocking: the exit status once the child has ended (reaped).
  std::optional<ExitStatus> poll();
  // Sends a signal unless the child is already reaped.
  void signal(int sig);
  // Waits up to `timeout` for the child to end; reaps it.
  std::optional<ExitStatus> waitFor(std::chrono::milliseconds timeout);
  bool running() const { return !status_; }
  const std::optional<ExitStatus>& status() const { return status_; }

 private:
  pid_t pid_ = -1;
  std::optional<ExitStatus> status_;
};

// SIGTERM to every running child, up to `grace` for them to exit, then
// SIGKILL and reap. Returns when every child is reaped.
void stopAll(std::vector<ChildProcess>& children, std::chrono::milliseconds grace);

// The last `lines` lines of a text file ("" if unreadable).
std::string tailOfFile(const std::string& path, int lines);

// The path of this process's own executable (/proc/self/exe). IoError when
// it cannot be resolved; `purpose` says what it was needed for.
std::string selfExecutable(const std::string& purpose);

}  // namespace geopipe::distributed
