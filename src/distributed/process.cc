// fork/exec, process groups, PR_SET_PDEATHSIG, bounded reaping.
#include "src/distributed/process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <deque>
#include <fstream>
#include <thread>

#include "geopipe/error.h"

namespace geopipe::distributed {

std::string ExitStatus::str() const {
  if (!signaled) return "exited with code " + std::to_string(code);
  const char* name = sigabbrev_np(signal);
  return "killed by signal " + std::to_string(signal) +
         (name ? std::string(" (SIG") + name + ")" : std::string());
}

namespace {

ExitStatus decode(int status) {
  ExitStatus s;
  if (WIFSIGNALED(status)) {
    s.signaled = true;
    s.signal = WTERMSIG(status);
  } else {
    s.code = WEXITSTATUS(status);
  }
  return s;
}

}  // namespace

ChildProcess ChildProcess::spawn(const SpawnOptions& options) {
  // Everything the child needs is prepared before fork: after it only
  // async-signal-safe calls are allowed.
  std::vector<char*> argv;
  for (const auto& a : options.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const char* program = options.program.c_str();
  const char* log = options.log_file.empty() ? nullptr : options.log_file.c_str();
  const pid_t group = options.process_group;
  const pid_t parent = ::getpid();

  const pid_t pid = ::fork();
  if (pid < 0) GEOPIPE_THROW(IoError, "cannot fork a worker process: ", std::strerror(errno));
  if (pid == 0) {
    ::setpgid(0, group);
    // Die with the launcher, whatever kills it.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(126);  // the launcher died before prctl
    // Default signal dispositions and an empty mask for the new program.
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::signal(SIGINT, SIG_DFL);
    ::signal(SIGTERM, SIG_DFL);
    ::signal(SIGPIPE, SIG_DFL);
    if (log) {
      const int fd = ::open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd >= 0) {
        ::dup2(fd, STDOUT_FILENO);
        ::dup2(fd, STDERR_FILENO);
      }
    }
    ::execv(program, argv.data());
    ::_exit(127);
  }
  // Also set the group from the parent: whichever runs first wins the race
  // and the other call is harmless.
  ::setpgid(pid, group == 0 ? pid : group);
  ChildProcess c;
  c.pid_ = pid;
  return c;
}

std::optional<ExitStatus> ChildProcess::poll() {
  if (status_) return status_;
  int status = 0;
  const pid_t r = ::waitpid(pid_, &status, WNOHANG);
  if (r == pid_) status_ = decode(status);
  if (r < 0 && errno == ECHILD) status_ = ExitStatus{false, 0, 0};  // reaped elsewhere
  return status_;
}

void ChildProcess::signal(int sig) {
  if (!status_ && pid_ > 0) ::kill(pid_, sig);
}

std::optional<ExitStatus> ChildProcess::waitFor(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!poll()) {
    if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return status_;
}

void stopAll(std::vector<ChildProcess>& children, std::chrono::milliseconds grace) {
  for (auto& c : children) c.signal(SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + grace;
  for (auto& c : children) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    c.waitFor(std::max(left, std::chrono::milliseconds(0)));
  }
  for (auto& c : children) {
    if (c.running()) {
      c.signal(SIGKILL);
      c.waitFor(std::chrono::seconds(5));
    }
  }
}

std::string tailOfFile(const std::string& path, int lines) {
  std::ifstream in(path);
  if (!in) return "";
  std::deque<std::string> last;
  std::string line;
  while (std::getline(in, line)) {
    last.push_back(line);
    if (static_cast<int>(last.size()) > lines) last.pop_front();
  }
  std::string out;
  for (const auto& l : last) out += l + "\n";
  return out;
}

std::string selfExecutable(const std::string& purpose) {
  char buf[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) GEOPIPE_THROW(IoError, "cannot resolve /proc/self/exe to ", purpose);
  return std::string(buf, static_cast<size_t>(n));
}

}  // namespace geopipe::distributed
