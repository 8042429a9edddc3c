#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "leader/config.h"
#include "leader/connection.h"
#include "leader/fencing.h"
#include "leader/telemetry.h"
#include "leader/types.h"

namespace leader {

namespace detail {
class RoleManagerImpl;
}  // namespace detail

/// Options of a `RoleManager`.
struct RoleManagerOptions {
  /// Threads that run the callbacks of all roles. Each role's callbacks
  /// still run one at a time and in order (a strand per role); a slow
  /// callback holds one of these threads, so keep callbacks short or give
  /// more threads. 1..64. Default 2.
  int callback_threads = 2;
  /// Threads that run the roles' health checks (only created when a role
  /// has one). A hung check holds one thread until it returns; the role
  /// counts it as failed after `health_timeout`. 1..64. Default 1.
  int health_threads = 1;
};

/// One role's line in `RoleManager::status()`.
struct RoleStatus {
  std::string role;
  /// This instance leads the role (lease not expired).
  bool leading = false;
  /// This instance's term (the key's revision) while leading, else 0.
  std::uint64_t term = 0;
  /// The fencing token while leading.
  FencingToken fencing_token;
  /// The leader as last seen: this instance, another one, or none.
  std::optional<std::string> leader_id;
  /// Time left on this instance's lease while leading, else the
  /// estimated time left on the other leader's lease.
  std::chrono::milliseconds lease_remaining{0};
  /// The full status of the role's election.
  Status status;
};

/// Many roles (one election each) over one connection, driven by the
/// connection's loop thread and I/O pool, with callbacks on a small shared
/// pool (`RoleManagerOptions`) and one bucket watch per bucket instead of
/// one per role. Thread count does not grow with the number of roles.
///
/// Each role behaves exactly like an `Election` with the same `Config`:
/// the same guarantees, callbacks, fencing tokens and metrics.
///
/// Thread safety: every member may be called from any thread, including
/// from inside a role's callbacks (`remove()` and `stop()` then do not wait
/// for that role's own `on_demote`, which cannot run before the callback
/// returns).
class RoleManager {
 public:
  /// `defaults`: the configuration each added role starts from (bucket,
  /// instance_id, ttl, ...); its `role` is ignored. Validated here except
  /// for the role name. Throws `ConfigError`.
  RoleManager(std::shared_ptr<Connection> connection, Config defaults, RoleManagerOptions options = {},
              Telemetry telemetry = {});
  /// Stops every role (releasing the keys it holds), like `stop()`.
  ~RoleManager();
  RoleManager(const RoleManager&) = delete;
  RoleManager& operator=(const RoleManager&) = delete;

  /// Adds `role` with the default configuration and starts campaigning.
  /// Throws `ConfigError` for an invalid or duplicate role name, and
  /// `leader::Error` when its bucket cannot be opened (see
  /// `Election::start()`).
  void add(const std::string& role, Callbacks callbacks);
  /// Adds a role with its own configuration (another bucket, TTL,
  /// priority...). `config.role` names it. Throws as above.
  void add(Config config, Callbacks callbacks);
  /// Stops the role (releasing its key if held, once its `on_demote`
  /// returned) and forgets it. False if there is no such role.
  bool remove(const std::string& role, StopOptions options = {});
  /// Stops every role, in parallel, and forgets them. Roles can be added
  /// again afterwards.
  void stop(StopOptions options = {});

  /// The roles, sorted by name.
  std::vector<std::string> roles() const;
  bool contains(const std::string& role) const;
  /// True while this instance leads `role`. False for an unknown role.
  bool is_leader(const std::string& role) const noexcept;
  /// The roles this instance leads, sorted.
  std::vector<std::string> leading() const;
  /// As `Election::fencing_token()`; nullopt for an unknown role.
  std::optional<FencingToken> fencing_token(const std::string& role) const;
  /// As `Election::validate_token()`; false for an unknown role.
  bool validate_token(const std::string& role, const FencingToken& token,
                      std::chrono::milliseconds max_staleness = std::chrono::milliseconds{0}) const;
  /// Gives up `role` as `Election::step_down()`. False for an unknown role.
  bool step_down(const std::string& role, std::chrono::milliseconds cooldown = std::chrono::milliseconds{0});
  /// One role's status; nullopt for an unknown role.
  std::optional<RoleStatus> status(const std::string& role) const;
  /// Every role's status, sorted by role.
  std::vector<RoleStatus> status() const;

 private:
  std::unique_ptr<detail::RoleManagerImpl> impl_;
};

}  // namespace leader
