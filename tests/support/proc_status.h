#pragma once

// Reading this process's /proc/self/status, for tests that bound threads
// and memory.

#include <fstream>
#include <string>

namespace leader::testing {

/// The number in the "<name>:" line of /proc/self/status (e.g. "Threads",
/// "VmRSS" in KiB); -1 if absent.
inline long proc_status(const std::string& name) {
  std::ifstream status("/proc/self/status");
  std::string line;
  const std::string prefix = name + ":";
  while (std::getline(status, line)) {
    if (line.rfind(prefix, 0) == 0) return std::stol(line.substr(prefix.size()));
  }
  return -1;
}

}  // namespace leader::testing
