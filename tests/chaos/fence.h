#pragma once

// The downstream resource of the chaos candidates: a file holding the
// highest fencing token it ever accepted, read and written under an
// exclusive flock. A write carrying a lower token is rejected. Every write is
// stamped (CLOCK_MONOTONIC) while the lock is held, so the stamps of all
// writes, from every process, are in the fence's own order.

#include <cstdint>
#include <functional>
#include <string>

#include "leader/fencing.h"

namespace leader::chaos {

/// What one FenceFile::write did.
struct FenceOutcome {
  /// False when the guard said no: nothing was written.
  bool attempted = false;
  /// The token was written (no higher one was accepted before).
  bool accepted = false;
  /// The highest token accepted before this write (invalid: none).
  FencingToken highest;
  /// Taken under the lock, before the guard ran.
  std::int64_t at_ns = 0;
};

class FenceFile {
 public:
  /// Opens (creating) the fence at `path`. Throws std::system_error.
  explicit FenceFile(const std::string& path);
  ~FenceFile();
  FenceFile(const FenceFile&) = delete;
  FenceFile& operator=(const FenceFile&) = delete;

  /// Under the lock: stamps the time, runs `guard` (if any; false: nothing is
  /// written), then writes `token` unless the fence holds a higher one. An
  /// equal token is the same term writing again and is accepted.
  FenceOutcome write(const FencingToken& token, const std::function<bool()>& guard = {});

 private:
  int fd_ = -1;
};

}  // namespace leader::chaos
