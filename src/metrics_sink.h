#pragma once

// What an election reports for metrics. The core calls it on the loop
// thread as things happen (so unit tests on a fake clock see exact values);
// the driver adds callback timings from the callback thread. The Prometheus
// implementation lives in prometheus_metrics.h; `null_metrics()` does nothing.

#include <optional>
#include <string_view>

#include "clock.h"
#include "kv.h"
#include "leader/types.h"

namespace leader::detail {

class ElectionMetrics {
 public:
  virtual ~ElectionMetrics() = default;

  /// One acquire attempt ended: "won", "held" (someone else holds the key),
  /// "unknown" (no answer: it may still land), or "error".
  virtual void acquire_attempt(std::string_view result) = 0;
  /// This instance became leader with `term`. `failover`: time from when
  /// the previous holder was known gone (its delete seen, or its lease's
  /// expected expiry) to now; nullopt when no previous holder was known.
  virtual void promoted(std::uint64_t term, std::optional<Duration> failover) = 0;
  /// This instance stopped leading after holding the role for `held`.
  virtual void demoted(DemoteReason reason, Duration held) = 0;
  /// A successful renewal's round trip.
  virtual void heartbeat(Duration round_trip) = 0;
  /// A failed renewal: the outcome's name ("timeout", "conflict", ...).
  virtual void heartbeat_failure(std::string_view reason) = 0;
  /// The key's revisions went backwards (writes lost, bucket re-created).
  virtual void revision_regression() = 0;
  /// Connection state as the election last heard it.
  virtual void connection(ConnectionState state) = 0;
  /// Time left on this instance's lease (0 when not leading).
  virtual void lease_remaining(Duration remaining) = 0;
  /// A user callback ran for `took` ("on_promote", "on_demote",
  /// "on_leader_change", "on_error"); `threw`: it threw.
  virtual void callback(std::string_view name, Duration took, bool threw) = 0;
  /// A token validation ended: "valid", "invalid" or "error".
  virtual void token_validation(std::string_view result) = 0;
  /// A health check failed (or timed out).
  virtual void health_check_failure() = 0;
};

/// A sink that ignores everything.
ElectionMetrics& null_metrics() noexcept;

}  // namespace leader::detail
