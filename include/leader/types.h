#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <system_error>

#include "leader/fencing.h"

namespace leader {

namespace detail {
struct LeaseState;
}  // namespace detail

/// State of the connection to NATS as the library sees it.
enum class ConnectionState { connected, disconnected, reconnecting, closed };

/// Why a leader stopped leading.
enum class DemoteReason {
  /// `stop()` was called.
  stopped,
  /// `step_down()` was called.
  stepped_down,
  /// The lease deadline passed without a successful renewal.
  lease_expired,
  /// The key is held by someone else (a renewal conflicted and the key
  /// does not carry our nonce), or it vanished, or a validation failed.
  lost,
  /// Disconnected from NATS for longer than `disconnect_grace`.
  disconnected,
  /// `max_health_failures` health checks in a row failed.
  unhealthy,
  /// Handed the role to a higher-priority candidate (priority_handover).
  handover,
};

/// Returns "stopped", "stepped_down", "lease_expired", "lost",
/// "disconnected", "unhealthy" or "handover".
const char* to_string(DemoteReason reason) noexcept;
/// Returns "connected", "disconnected", "reconnecting" or "closed".
const char* to_string(ConnectionState state) noexcept;

/// One term of leadership, given to `on_promote`. Cheap to copy; copies
/// share the same state. Long-running leader work polls `lost()` (or
/// compares `deadline()` with the steady clock) and stops when it is true.
class Term {
 public:
  /// The revision of the create that won this term. Strictly increasing
  /// across the terms of a role while its bucket is not re-created; use
  /// `fencing_token()` where the bucket may be re-created.
  std::uint64_t token() const noexcept { return token_; }
  /// The fencing token of this term: {bucket epoch, revision}.
  FencingToken fencing_token() const noexcept { return FencingToken{epoch_, token_}; }
  /// True once this term is over: demoted, stopped, or the lease deadline
  /// has passed (checked against the steady clock on every call).
  bool lost() const noexcept;
  /// The current lease deadline of this term on the steady clock; it moves
  /// forward with every renewal. Meaningless once `lost()`.
  std::chrono::steady_clock::time_point deadline() const noexcept;

  /// For the library (and tests): a term bound to shared lease state.
  Term(std::uint64_t token, std::uint64_t epoch, std::shared_ptr<const detail::LeaseState> lease) noexcept
      : token_(token), epoch_(epoch), lease_(std::move(lease)) {}

 private:
  std::uint64_t token_;
  std::uint64_t epoch_;
  std::shared_ptr<const detail::LeaseState> lease_;
};

/// Who holds a role, as last seen.
struct LeaderInfo {
  /// The holder's instance id; empty when the key holds a record this
  /// library cannot read (an unknown holder).
  std::string instance_id;
  /// The holder's term (create revision); 0 when unknown.
  std::uint64_t term = 0;
  /// The holder's priority from its record.
  int priority = 0;
  /// Observers: time until the holder's lease ends at the latest, as last
  /// seen (0 when unknown or no holder).
  std::chrono::milliseconds lease_remaining{0};
};

/// A background failure, given to `on_error`.
struct ErrorInfo {
  /// The `leader` error code.
  std::error_code code;
  /// What happened, for a person: names the bucket, key or subject.
  std::string message;
};

/// Callbacks of one election. They run in order on the election's callback
/// thread, never on a NATS thread and never while the library holds a lock.
/// A callback may call `stop()` or `step_down()`. Exceptions are caught and
/// logged. `on_demote` runs exactly once after each `on_promote`, and they
/// alternate. A slow callback delays later callbacks, never renewals or the
/// lease deadline (`is_leader()` turns false on time regardless).
struct Callbacks {
  /// This instance became leader for `term`.
  std::function<void(const Term& term)> on_promote;
  /// This instance stopped leading; stop leader-only work before returning.
  /// The key is released (on `stop`/`step_down`) only after this returns.
  std::function<void(DemoteReason reason)> on_demote;
  /// The leader changed as this instance sees it: another holder, this
  /// instance, or nobody (`std::nullopt`: the key was deleted or expired).
  std::function<void(const std::optional<LeaderInfo>& leader)> on_leader_change;
  /// A background failure worth a person's attention.
  std::function<void(const ErrorInfo& error)> on_error;
  /// Optional health check (the HealthChecker): true when this instance is
  /// fit to lead. Runs on a thread of its own before each renewal (and
  /// every heartbeat while following), bounded by `health_timeout`; a hung
  /// or throwing check counts as a failure and never delays a renewal.
  std::function<bool()> health_check;
};

/// Phase of an election.
enum class ElectionState {
  /// Not started, or stopped.
  stopped,
  /// Trying to acquire: no leader known, or an attempt in flight.
  campaigning,
  /// Another instance leads; waiting for its lease to end.
  following,
  /// This instance leads.
  leading,
  /// Ending a term: waiting for `on_demote`, then releasing the key.
  releasing,
  /// After `step_down(cooldown)`: following without campaigning.
  cooling_down,
};

/// Returns the lower-case name of `state`, e.g. "leading".
const char* to_string(ElectionState state) noexcept;

/// A snapshot of an election, for humans and health endpoints.
struct Status {
  /// Phase of this election.
  ElectionState state = ElectionState::stopped;
  /// The leader as last seen (this instance when leading); nullopt: none.
  std::optional<LeaderInfo> leader;
  /// This instance's current term when leading, else 0.
  std::uint64_t term = 0;
  /// Steady-clock time of the last successful acquire/renew send; nullopt
  /// if this instance never led.
  std::optional<std::chrono::steady_clock::time_point> last_renewal;
  /// Time left until this instance's lease deadline (0 when not leading).
  std::chrono::milliseconds lease_remaining{0};
  /// Connection state as last reported.
  ConnectionState connection = ConnectionState::connected;
  /// The last background error (empty code if none since start).
  ErrorInfo last_error;
  /// False while the health check fails (`max_health_failures` in a row);
  /// an unhealthy instance does not campaign.
  bool healthy = true;
  /// True while repeated failures keep campaigning paused (circuit
  /// breaker open); it half-opens after `breaker_open` to probe.
  bool circuit_open = false;
  /// The current term's fencing token while leading.
  FencingToken fencing_token;
};

/// Options of `Election::stop()`.
struct StopOptions {
  /// Delete the key (only if its revision is still ours) once `on_demote`
  /// has returned, so a follower takes over within milliseconds. With
  /// false the lease simply runs out. Default true.
  bool release = true;
  /// How long to wait for `on_demote` and the release. If `on_demote` has
  /// not returned by then the key is NOT released (the lease runs out), so
  /// no second leader can start while this one still works. Default 5 s.
  std::chrono::milliseconds timeout{5000};
};

}  // namespace leader
