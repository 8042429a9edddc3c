#pragma once

#include <memory>

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace spdlog {
class logger;
}  // namespace spdlog

namespace leader {

/// Where an election's metrics and logs go. Both optional.
struct Telemetry {
  /// Prometheus registry for the `leader_election_*` metrics (labels
  /// `bucket`, `role`, `instance`). None: no metrics, no cost.
  std::shared_ptr<prometheus::Registry> registry;
  /// Logger for this election. None: the library's logger named "leader"
  /// (stderr; level from LEADER_LOG_LEVEL, default info).
  std::shared_ptr<spdlog::logger> logger;
};

}  // namespace leader
