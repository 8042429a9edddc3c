#pragma once

// A child process (e.g. examples/control-manager) whose stdout a test reads
// line by line through a pipe. The destructor SIGKILLs and reaps it by its
// PID, so nothing outlives a failed test (SIGKILL ends a SIGSTOPped child
// too).

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace leader::testing {

/// Which of the parent's descriptors above stderr a child inherits.
enum class InheritedFds {
  /// Every descriptor not marked close-on-exec.
  keep,
  /// None (so none of the test's NATS sockets, whatever their flags).
  close,
};

class ChildProcess {
 public:
  /// Spawns argv[0] (a path) with the rest as arguments; stderr is shared,
  /// stdin is a pipe from this object (write_stdin()).
  explicit ChildProcess(const std::vector<std::string>& argv, InheritedFds inherited = InheritedFds::keep);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }
  const std::string& error() const { return error_; }
  /// Everything printed so far, after reading what arrives within `wait`.
  const std::string& output(std::chrono::milliseconds wait = std::chrono::milliseconds(20));
  /// Sends `sig` to the child, by its PID.
  void signal(int sig);
  /// Waits up to `timeout` for the child to exit and reaps it; its wait
  /// status, or nullopt if it is still running.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout);
  /// SIGKILL and reap.
  void kill();
  /// Writes `text` to the child's stdin; false if it could not (the child
  /// exited).
  bool write_stdin(const std::string& text);
  /// Reads stdout until a complete line containing `needle` arrives (lines
  /// already read are searched too, each line is returned once); nullopt
  /// on timeout or end of output.
  std::optional<std::string> wait_for_line(const std::string& needle, std::chrono::milliseconds timeout);

 private:
  pid_t pid_ = -1;
  int read_fd_ = -1;
  int write_fd_ = -1;
  std::string output_;
  std::size_t scanned_ = 0;
  std::string error_;
};

}  // namespace leader::testing
