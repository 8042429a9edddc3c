#include "leader/election.h"

#include <thread>

#include "driver.h"
#include "leader/error.h"
#include "prometheus_metrics.h"

namespace leader {

namespace detail {

std::shared_ptr<ElectionDriver> make_driver(std::shared_ptr<Connection> connection, Config config,
                                            Callbacks callbacks, Telemetry telemetry, bool observe_only,
                                            DriverShared shared) {
  if (!connection) throw ConfigError("connection", "must not be null");
  config.validate();
  const auto requested_grace = config.disconnect_grace;
  Config resolved = config.resolved();
  std::shared_ptr<ElectionMetrics> metrics;
  if (telemetry.registry) {
    try {
      metrics =
          make_prometheus_metrics(telemetry.registry, resolved.bucket, resolved.role, resolved.instance_id);
    } catch (const std::exception& e) {
      // A name of ours already registered with another type or labels.
      throw ConfigError("telemetry.registry",
                        std::string("cannot register the leader_election_* metrics: ") + e.what());
    }
  }
  return std::make_shared<ElectionDriver>(std::move(connection), std::move(resolved), std::move(callbacks),
                                          std::move(telemetry), std::move(metrics), observe_only,
                                          requested_grace, std::move(shared));
}

void release_driver(std::shared_ptr<ElectionDriver>& driver) noexcept {
  if (!driver) return;
  driver->shutdown();
  // The loop thread briefly holds a driver while it runs one of its events.
  // Waiting for those to end lets the driver (and maybe its connection, with
  // the threads) die here, on the owner's thread, rather than on a thread of
  // the runtime it would have to join.
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (driver.use_count() > 1 && std::chrono::steady_clock::now() < give_up) std::this_thread::yield();
  driver.reset();
}

}  // namespace detail

Election::Election(std::shared_ptr<Connection> connection, Config config, Callbacks callbacks,
                   Telemetry telemetry)
    : driver_(detail::make_driver(std::move(connection), std::move(config), std::move(callbacks),
                                  std::move(telemetry), /*observe_only=*/false)) {}

Election::~Election() { detail::release_driver(driver_); }

Election::Election(Election&&) noexcept = default;

Election& Election::operator=(Election&& other) noexcept {
  if (this != &other) {
    detail::release_driver(driver_);
    driver_ = std::move(other.driver_);
  }
  return *this;
}

void Election::start() { driver_->start(); }

void Election::stop(StopOptions options) noexcept {
  if (driver_) driver_->stop(options);
}

void Election::step_down(std::chrono::milliseconds cooldown) {
  if (cooldown.count() < 0) throw ConfigError("cooldown", "must not be negative");
  driver_->step_down(cooldown);
}

bool Election::is_leader() const noexcept { return driver_ && driver_->is_leader(); }

bool Election::wait_for_leadership(std::chrono::milliseconds timeout) const {
  return driver_->wait_for_leadership(timeout);
}

std::optional<std::string> Election::leader_id() const {
  auto s = driver_->status();
  if (!s.leader) return std::nullopt;
  return s.leader->instance_id;
}

std::optional<std::uint64_t> Election::token() const noexcept {
  return driver_ ? driver_->token() : std::nullopt;
}

std::optional<FencingToken> Election::fencing_token() const noexcept {
  return driver_ ? driver_->fencing_token() : std::nullopt;
}

bool Election::validate_token(std::chrono::milliseconds max_staleness) const {
  return driver_ && driver_->validate_token(std::nullopt, max_staleness);
}

bool Election::validate_token(const FencingToken& token, std::chrono::milliseconds max_staleness) const {
  return driver_ && driver_->validate_token(token, max_staleness);
}

Status Election::status() const { return driver_->status(); }

const Config& Election::config() const noexcept { return driver_->config(); }

}  // namespace leader
