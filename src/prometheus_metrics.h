#pragma once

// The Prometheus implementation of ElectionMetrics (prometheus-cpp core).
// Only built into an election when the application passes a registry in
// `Telemetry::registry`; without one no prometheus object is ever created.

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "metrics_sink.h"

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace leader::detail {

/// Histogram bucket upper bounds, in seconds (README, "Metrics").
/// heartbeat_duration_seconds: 0.5 ms .. 5 s (a renewal's round trip is
/// bounded by call_timeout, usually far below a second).
const std::vector<double>& heartbeat_buckets();
/// failover_seconds: 1 ms .. 60 s (a graceful handover takes milliseconds;
/// the crash path is bounded by the TTL, 10 s by default).
const std::vector<double>& failover_buckets();
/// leader_duration_seconds: 100 ms .. 7 days (flapping to stable terms).
const std::vector<double>& leader_duration_buckets();
/// callback_duration_seconds: 100 us .. 60 s (callbacks should be quick;
/// on_demote may wait for leader-only work to stop).
const std::vector<double>& callback_buckets();

/// Metrics of one election, labelled `bucket`, `role`, `instance`, in
/// `registry`. The `leader_election_*` families are registered once per
/// registry (also for a registry built with InsertBehavior::Throw), and the
/// series of one label set are shared by every election that has it, e.g.
/// one re-created with the same identity: counters keep counting. Keeps the
/// registry alive. Thread-safe.
///
/// Throws `std::invalid_argument` when the registry already holds one of
/// the names with another type or other constant labels.
std::shared_ptr<ElectionMetrics> make_prometheus_metrics(std::shared_ptr<prometheus::Registry> registry,
                                                         const std::string& bucket, const std::string& role,
                                                         const std::string& instance);

/// Number of live objects made by `make_prometheus_metrics` (for tests:
/// an election without a registry makes none).
std::size_t prometheus_metrics_alive() noexcept;

}  // namespace leader::detail
