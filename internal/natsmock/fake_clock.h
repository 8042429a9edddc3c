#pragma once

#include <atomic>
#include <chrono>

#include "clock.h"

namespace leader::natsmock {

/// A steady clock that moves only when a test says so. Thread-safe.
class FakeClock final : public detail::Clock {
 public:
  FakeClock() : ns_(std::chrono::nanoseconds(std::chrono::hours(1)).count()) {}
  detail::TimePoint now() const noexcept override {
    return detail::TimePoint(std::chrono::nanoseconds(ns_.load(std::memory_order_acquire)));
  }
  void advance(std::chrono::nanoseconds d) noexcept { ns_.fetch_add(d.count(), std::memory_order_acq_rel); }
  void set(detail::TimePoint t) noexcept {
    ns_.store(t.time_since_epoch().count(), std::memory_order_release);
  }

 private:
  std::atomic<long long> ns_;
};

}  // namespace leader::natsmock
