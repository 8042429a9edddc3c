#pragma once

#include <chrono>

namespace leader::detail {

using SteadyClock = std::chrono::steady_clock;
using TimePoint = SteadyClock::time_point;

/// Source of steady time; injected so tests can drive time by hand.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual TimePoint now() const noexcept = 0;
};

/// The real steady clock.
class RealClock final : public Clock {
 public:
  TimePoint now() const noexcept override { return SteadyClock::now(); }
  static const RealClock& instance() noexcept {
    static const RealClock clock;
    return clock;
  }
};

}  // namespace leader::detail
