#include "leader/role_manager.h"

#include <algorithm>
#include <map>
#include <mutex>
#include <utility>

#include "driver.h"
#include "leader/error.h"
#include "watch_hub.h"

namespace leader {
namespace detail {

class RoleManagerImpl {
 public:
  RoleManagerImpl(std::shared_ptr<Connection> connection, Config defaults, RoleManagerOptions options,
                  Telemetry telemetry)
      : connection_(std::move(connection)),
        defaults_(std::move(defaults)),
        options_(options),
        telemetry_(std::move(telemetry)) {
    if (!connection_) throw ConfigError("connection", "must not be null");
    if (options_.callback_threads < 1 || options_.callback_threads > 64) {
      throw ConfigError("callback_threads", "must be 1..64");
    }
    if (options_.health_threads < 1 || options_.health_threads > 64) {
      throw ConfigError("health_threads", "must be 1..64");
    }
    // The defaults must be valid for any role name.
    Config probe = defaults_;
    probe.role = "role";
    probe.validate();
    callback_pool_ = std::make_shared<ThreadPool>(options_.callback_threads);
  }

  ~RoleManagerImpl() {
    stop_all(StopOptions{});
    // Roles removed from their own callbacks finish here.
    reaper_.reset();
  }

  void add(Config config, Callbacks callbacks) {
    const std::string role = config.role;
    std::uint64_t stops = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (roles_.count(role) != 0) throw ConfigError("role", "\"" + role + "\" is already added");
      roles_.emplace(role, nullptr);  // reserved while it starts
      stops = stops_;
    }
    try {
      const bool health = static_cast<bool>(callbacks.health_check);
      DriverShared shared;
      shared.callback_pool = callback_pool_;
      if (health) shared.health_pool = health_pool();
      config.validate();
      const Config resolved = config.resolved();
      Bucket& bucket = open(resolved);
      shared.wrap_store = [hub = bucket.hub](std::shared_ptr<KvStore> inner) -> std::shared_ptr<KvStore> {
        return std::make_shared<HubStore>(std::move(inner), hub);
      };
      auto driver = make_driver(connection_, std::move(config), std::move(callbacks), telemetry_,
                                /*observe_only=*/false, std::move(shared));
      driver->start(bucket.opened);
      std::unique_lock<std::mutex> lock(mu_);
      if (stops_ == stops) {
        roles_[role] = std::move(driver);
        return;
      }
      // stop() ran while this role started: it must not outlive the stop.
      roles_.erase(role);
      lock.unlock();
      driver->stop(StopOptions{});
      release_driver(driver);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      roles_.erase(role);
      throw;
    }
  }

  void add(const std::string& role, Callbacks callbacks) {
    Config config = defaults_;
    config.role = role;
    add(std::move(config), std::move(callbacks));
  }

  bool remove(const std::string& role, const StopOptions& options) {
    std::shared_ptr<ElectionDriver> driver;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = roles_.find(role);
      if (it == roles_.end() || !it->second) return false;
      driver = std::move(it->second);
      roles_.erase(it);
    }
    if (!driver->in_callback()) driver->stop(options);
    retire(std::move(driver), options);
    return true;
  }

  void stop_all(const StopOptions& options) {
    std::map<std::string, std::shared_ptr<ElectionDriver>> roles;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++stops_;
      for (auto it = roles_.begin(); it != roles_.end();) {
        if (it->second) {
          roles.emplace(it->first, std::move(it->second));
          it = roles_.erase(it);
        } else {
          ++it;  // still starting: its add() sees stops_ and stops it
        }
      }
    }
    // Every stop is asked for first, so the roles stop in parallel.
    std::vector<std::pair<std::shared_ptr<ElectionDriver>, std::optional<std::uint64_t>>> stopping;
    stopping.reserve(roles.size());
    for (auto& [name, driver] : roles) {
      auto ticket = driver->begin_stop(options);
      stopping.emplace_back(std::move(driver), ticket);
    }
    for (auto& [driver, ticket] : stopping) {
      if (ticket && !driver->in_callback()) driver->wait_stopped(*ticket, options);
    }
    for (auto& [driver, ticket] : stopping) retire(std::move(driver), options);
  }

  std::vector<std::string> roles() const {
    std::vector<std::string> out;
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [name, driver] : roles_) {
      if (driver) out.push_back(name);
    }
    return out;
  }

  std::shared_ptr<ElectionDriver> find(const std::string& role) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = roles_.find(role);
    return it == roles_.end() ? nullptr : it->second;
  }

  std::vector<std::pair<std::string, std::shared_ptr<ElectionDriver>>> all() const {
    std::vector<std::pair<std::string, std::shared_ptr<ElectionDriver>>> out;
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [name, driver] : roles_) {
      if (driver) out.emplace_back(name, driver);
    }
    return out;
  }

  static RoleStatus status_of(const std::string& role, const ElectionDriver& driver) {
    RoleStatus r;
    r.role = role;
    r.status = driver.status();
    r.leading = driver.is_leader();
    r.term = r.leading ? r.status.term : 0;
    if (r.leading) r.fencing_token = r.status.fencing_token;
    if (r.status.leader) r.leader_id = r.status.leader->instance_id;
    if (r.leading) {
      r.lease_remaining = r.status.lease_remaining;
    } else if (r.status.leader) {
      r.lease_remaining = r.status.leader->lease_remaining;
    }
    return r;
  }

 private:
  struct Bucket {
    BucketSpec spec;
    OpenResult opened;
    std::shared_ptr<WatchHub> hub;
  };

  // The bucket of `config`, opened once per manager. A role asking for a
  // bucket of the same name with another TTL, storage or replication is
  // refused: with the server's bucket_mismatch when it disagrees, else
  // with a ConfigError (one manager keeps one spec per bucket).
  Bucket& open(const Config& config) {
    std::lock_guard<std::mutex> lock(open_mu_);
    const BucketSpec spec = bucket_spec(config);
    auto it = buckets_.find(spec.name);
    if (it != buckets_.end()) {
      const BucketSpec& have = it->second.spec;
      if (have.ttl == spec.ttl && have.storage == spec.storage && have.replicas == spec.replicas) {
        return it->second;
      }
      open_bucket_or_throw(*connection_, config);  // throws unless the server agrees
      throw ConfigError(
          "bucket", "\"" + spec.name + "\" is used by this manager with another ttl, storage or replicas");
    }
    OpenResult opened = open_bucket_or_throw(*connection_, config);
    Bucket b;
    b.spec = spec;
    b.hub = std::make_shared<WatchHub>(opened.store);
    b.opened = std::move(opened);
    return buckets_.emplace(spec.name, std::move(b)).first->second;
  }

  // Releases a stopped driver. From inside its own callback its on_demote
  // cannot run before the callback returns, so the stop is waited for and
  // the driver released on the reaper thread instead.
  void retire(std::shared_ptr<ElectionDriver> driver, const StopOptions& options) {
    if (!driver->in_callback()) {
      release_driver(driver);
      return;
    }
    reaper()->post([driver = std::move(driver), options]() mutable {
      driver->stop(options);
      release_driver(driver);
    });
  }

  std::shared_ptr<ThreadPool> health_pool() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!health_pool_) health_pool_ = std::make_shared<ThreadPool>(options_.health_threads);
    return health_pool_;
  }

  ThreadPool* reaper() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!reaper_) reaper_ = std::make_unique<ThreadPool>(1);
    return reaper_.get();
  }

  const std::shared_ptr<Connection> connection_;
  const Config defaults_;
  const RoleManagerOptions options_;
  const Telemetry telemetry_;
  std::shared_ptr<ThreadPool> callback_pool_;

  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<ElectionDriver>> roles_;  // null: starting
  std::uint64_t stops_ = 0;                                       // stop_all() calls so far
  std::shared_ptr<ThreadPool> health_pool_;
  std::unique_ptr<ThreadPool> reaper_;

  std::mutex open_mu_;
  std::map<std::string, Bucket> buckets_;
};

}  // namespace detail

RoleManager::RoleManager(std::shared_ptr<Connection> connection, Config defaults, RoleManagerOptions options,
                         Telemetry telemetry)
    : impl_(std::make_unique<detail::RoleManagerImpl>(std::move(connection), std::move(defaults), options,
                                                      std::move(telemetry))) {}

RoleManager::~RoleManager() = default;

void RoleManager::add(const std::string& role, Callbacks callbacks) {
  impl_->add(role, std::move(callbacks));
}

void RoleManager::add(Config config, Callbacks callbacks) {
  impl_->add(std::move(config), std::move(callbacks));
}

bool RoleManager::remove(const std::string& role, StopOptions options) {
  return impl_->remove(role, options);
}

void RoleManager::stop(StopOptions options) { impl_->stop_all(options); }

std::vector<std::string> RoleManager::roles() const { return impl_->roles(); }

bool RoleManager::contains(const std::string& role) const { return impl_->find(role) != nullptr; }

bool RoleManager::is_leader(const std::string& role) const noexcept {
  try {
    auto d = impl_->find(role);
    return d && d->is_leader();
  } catch (...) {
    return false;
  }
}

std::vector<std::string> RoleManager::leading() const {
  std::vector<std::string> out;
  for (const auto& [name, driver] : impl_->all()) {
    if (driver->is_leader()) out.push_back(name);
  }
  return out;
}

std::optional<FencingToken> RoleManager::fencing_token(const std::string& role) const {
  auto d = impl_->find(role);
  return d ? d->fencing_token() : std::nullopt;
}

bool RoleManager::validate_token(const std::string& role, const FencingToken& token,
                                 std::chrono::milliseconds max_staleness) const {
  auto d = impl_->find(role);
  return d && d->validate_token(token, max_staleness);
}

bool RoleManager::step_down(const std::string& role, std::chrono::milliseconds cooldown) {
  if (cooldown.count() < 0) throw ConfigError("cooldown", "must not be negative");
  auto d = impl_->find(role);
  if (!d) return false;
  d->step_down(cooldown);
  return true;
}

std::optional<RoleStatus> RoleManager::status(const std::string& role) const {
  auto d = impl_->find(role);
  if (!d) return std::nullopt;
  return detail::RoleManagerImpl::status_of(role, *d);
}

std::vector<RoleStatus> RoleManager::status() const {
  std::vector<RoleStatus> out;
  for (const auto& [name, driver] : impl_->all()) {
    out.push_back(detail::RoleManagerImpl::status_of(name, *driver));
  }
  return out;
}

}  // namespace leader
