#include "leader/types.h"

#include "clock.h"
#include "lease_state.h"

namespace leader {

const char* to_string(DemoteReason reason) noexcept {
  switch (reason) {
    case DemoteReason::stopped:
      return "stopped";
    case DemoteReason::stepped_down:
      return "stepped_down";
    case DemoteReason::lease_expired:
      return "lease_expired";
    case DemoteReason::lost:
      return "lost";
    case DemoteReason::disconnected:
      return "disconnected";
    case DemoteReason::unhealthy:
      return "unhealthy";
    case DemoteReason::handover:
      return "handover";
  }
  return "unknown";
}

const char* to_string(ConnectionState state) noexcept {
  switch (state) {
    case ConnectionState::connected:
      return "connected";
    case ConnectionState::disconnected:
      return "disconnected";
    case ConnectionState::reconnecting:
      return "reconnecting";
    case ConnectionState::closed:
      return "closed";
  }
  return "unknown";
}

const char* to_string(ElectionState state) noexcept {
  switch (state) {
    case ElectionState::stopped:
      return "stopped";
    case ElectionState::campaigning:
      return "campaigning";
    case ElectionState::following:
      return "following";
    case ElectionState::leading:
      return "leading";
    case ElectionState::releasing:
      return "releasing";
    case ElectionState::cooling_down:
      return "cooling_down";
  }
  return "unknown";
}

bool Term::lost() const noexcept { return !lease_ || !lease_->holds(token_, detail::SteadyClock::now()); }

std::chrono::steady_clock::time_point Term::deadline() const noexcept {
  if (!lease_) return {};
  return std::chrono::steady_clock::time_point(
      std::chrono::nanoseconds(lease_->deadline_ns.load(std::memory_order_acquire)));
}

}  // namespace leader
