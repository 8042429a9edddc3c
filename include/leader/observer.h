#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "leader/config.h"
#include "leader/connection.h"
#include "leader/telemetry.h"
#include "leader/types.h"

namespace leader {

namespace detail {
class ElectionDriver;
}  // namespace detail

/// Watches a role without campaigning: who leads, their term, how long
/// their lease has left at most, and every change (including "nobody
/// leads", from a delete or an expiry). Uses `config.bucket`, `config.role`,
/// `config.ttl` and the timing fields; `instance_id` only names it in logs
/// (default "observer").
class Observer {
 public:
  /// Validates `config` (throws `ConfigError`). `on_leader_change` is
  /// called as in `Election`; the other callbacks are not used.
  Observer(std::shared_ptr<Connection> connection, Config config, Callbacks callbacks = {},
           Telemetry telemetry = {});
  ~Observer();
  Observer(Observer&&) noexcept;
  Observer& operator=(Observer&&) noexcept;
  Observer(const Observer&) = delete;
  Observer& operator=(const Observer&) = delete;

  /// Opens the bucket (as `Election::start`) and starts watching.
  void start();
  /// Stops watching (idempotent, noexcept).
  void stop() noexcept;
  /// The leader as last seen, with `lease_remaining` as of now; nullopt
  /// when nobody leads.
  std::optional<LeaderInfo> leader() const;

 private:
  std::shared_ptr<detail::ElectionDriver> driver_;
};

}  // namespace leader
