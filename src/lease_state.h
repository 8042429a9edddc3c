#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

#include "clock.h"

namespace leader::detail {

/// What `is_leader()` and `Term::lost()` read, lock-free, from any thread.
/// Written only by the election's loop thread.
struct LeaseState {
  std::atomic<std::uint64_t> term{0};        // term currently held; 0: none
  std::atomic<std::int64_t> deadline_ns{0};  // steady clock, since epoch

  bool holds(std::uint64_t t, TimePoint now) const noexcept {
    return t != 0 && term.load(std::memory_order_acquire) == t &&
           now.time_since_epoch().count() < deadline_ns.load(std::memory_order_acquire);
  }
  /// Whether a term is held now. Reads the clock only while one is held:
  /// a follower's answer costs one atomic load.
  bool leading() const noexcept {
    const std::uint64_t t = term.load(std::memory_order_acquire);
    return t != 0 && holds(t, SteadyClock::now());
  }
};

}  // namespace leader::detail
