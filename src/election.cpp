#include "leader/election.h"

#include <thread>

#include "driver.h"
#include "leader/error.h"

namespace leader {
namespace {

Config checked(Config config) {
  config.validate();
  return config.resolved();
}

}  // namespace

Election::Election(std::shared_ptr<Connection> connection, Config config, Callbacks callbacks,
                   Telemetry telemetry) {
  if (!connection) throw ConfigError("connection", "must not be null");
  driver_ = std::make_shared<detail::ElectionDriver>(std::move(connection), checked(std::move(config)),
                                                     std::move(callbacks), std::move(telemetry));
}

namespace {

// The loop thread briefly holds a driver while it runs one of its events.
// Waiting for those to end lets the driver (and maybe its connection, with
// the threads) die here, on the owner's thread, rather than on a thread of
// the runtime it would have to join.
void release(std::shared_ptr<detail::ElectionDriver>& driver) noexcept {
  if (!driver) return;
  driver->shutdown();
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (driver.use_count() > 1 && std::chrono::steady_clock::now() < give_up) std::this_thread::yield();
  driver.reset();
}

}  // namespace

Election::~Election() { release(driver_); }

Election::Election(Election&&) noexcept = default;

Election& Election::operator=(Election&& other) noexcept {
  if (this != &other) {
    release(driver_);
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

Status Election::status() const { return driver_->status(); }

const Config& Election::config() const noexcept { return driver_->config(); }

}  // namespace leader
