#include "leader/observer.h"

#include "driver.h"

namespace leader {

namespace {

Config observer_config(Config config) {
  if (config.instance_id.empty()) config.instance_id = "observer";
  return config;
}

}  // namespace

Observer::Observer(std::shared_ptr<Connection> connection, Config config, Callbacks callbacks,
                   Telemetry telemetry) {
  Callbacks cb;
  cb.on_leader_change = std::move(callbacks.on_leader_change);
  cb.on_error = std::move(callbacks.on_error);
  driver_ = detail::make_driver(std::move(connection), observer_config(std::move(config)), std::move(cb),
                                std::move(telemetry), /*observe_only=*/true);
}

Observer::~Observer() { detail::release_driver(driver_); }

Observer::Observer(Observer&&) noexcept = default;

Observer& Observer::operator=(Observer&& other) noexcept {
  if (this != &other) {
    detail::release_driver(driver_);
    driver_ = std::move(other.driver_);
  }
  return *this;
}

void Observer::start() { driver_->start(); }

void Observer::stop() noexcept {
  if (driver_) driver_->stop(StopOptions{});
}

std::optional<LeaderInfo> Observer::leader() const { return driver_->status().leader; }

}  // namespace leader
