#pragma once

// Waiting for a condition in a test: poll it, with a limit, never a fixed
// sleep.

#include <chrono>
#include <thread>

namespace leader::testing {

/// How long eventually() waits when the test does not say.
inline constexpr std::chrono::milliseconds kDefaultWaitLimit{5000};

/// Checks `pred` until it holds or `limit` passes, sleeping `poll` between
/// checks (only yielding the thread when `poll` is zero); true if it held.
/// It is checked once more at the limit.
template <typename Pred>
bool eventually(Pred&& pred, std::chrono::milliseconds limit = kDefaultWaitLimit,
                std::chrono::milliseconds poll = std::chrono::milliseconds(1)) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    if (poll.count() > 0) {
      std::this_thread::sleep_for(poll);
    } else {
      std::this_thread::yield();
    }
  }
  return pred();
}

/// eventually() that only yields between checks, so that it also sees a
/// state which holds for a moment only.
template <typename Pred>
bool eventually_spinning(Pred&& pred, std::chrono::milliseconds limit = kDefaultWaitLimit) {
  return eventually(pred, limit, std::chrono::milliseconds::zero());
}

}  // namespace leader::testing
