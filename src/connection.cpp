#include "leader/connection.h"

#include "kv.h"
#include "leader/error.h"
#include "nats/nats_backend.h"
#include "runtime.h"

namespace leader {

std::shared_ptr<Connection> Connection::connect(const ConnectionOptions& options) {
  if (options.url.empty()) throw ConfigError("url", "must not be empty");
  if (options.io_threads < 1 || options.io_threads > 64) {
    throw ConfigError("io_threads", std::to_string(options.io_threads) + " must be between 1 and 64");
  }
  if (options.connect_timeout.count() <= 0) throw ConfigError("connect_timeout", "must be positive");
  if (options.reconnect_wait.count() <= 0) throw ConfigError("reconnect_wait", "must be positive");
  if (options.ping_interval.count() <= 0) throw ConfigError("ping_interval", "must be positive");
  std::error_code ec;
  std::string message;
  auto backend = detail::make_nats_backend(options, &ec, &message);
  if (!backend) throw Error(ec ? ec : make_error_code(Errc::other), message);
  return std::make_shared<Connection>(std::move(backend), options.io_threads);
}

std::shared_ptr<Connection> Connection::adopt(void* nats_connection, const ConnectionOptions& options,
                                              std::chrono::milliseconds state_poll) {
  if (nats_connection == nullptr) {
    throw ConfigError("nats_connection", "must not be null (pass the application's natsConnection*)");
  }
  if (options.io_threads < 1 || options.io_threads > 64) {
    throw ConfigError("io_threads", std::to_string(options.io_threads) + " must be between 1 and 64");
  }
  if (state_poll.count() <= 0) {
    throw ConfigError("state_poll", std::to_string(state_poll.count()) + "ms must be positive");
  }
  std::error_code ec;
  std::string message;
  auto backend = detail::make_adopted_nats_backend(static_cast<natsConnection*>(nats_connection), options,
                                                   state_poll, &ec, &message);
  if (!backend) throw Error(ec ? ec : make_error_code(Errc::other), message);
  return std::make_shared<Connection>(std::move(backend), options.io_threads);
}

Connection::Connection(std::shared_ptr<detail::Backend> backend, int io_threads)
    : backend_(std::move(backend)), runtime_(std::make_shared<detail::Runtime>(io_threads)) {}

// The runtime goes first: its threads may still use the backend.
Connection::~Connection() { runtime_.reset(); }

ConnectionState Connection::state() const noexcept { return backend_->state(); }

}  // namespace leader
