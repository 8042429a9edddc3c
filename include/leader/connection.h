#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "leader/types.h"

namespace leader {

namespace detail {
class Backend;
class Runtime;
}  // namespace detail

/// Options of a connection the library creates.
struct ConnectionOptions {
  /// Server URL(s), comma-separated ("nats://127.0.0.1:4222"). Give every
  /// node of a cluster. Default "nats://127.0.0.1:4222".
  std::string url = "nats://127.0.0.1:4222";
  /// Connection name shown by the server (monitoring). Default "leader".
  std::string name = "leader";
  /// Timeout of the initial connect. Default 2 s.
  std::chrono::milliseconds connect_timeout{2000};
  /// Wait between reconnect attempts. Default 100 ms (nats.c's default of
  /// 2 s would add seconds to every recovery).
  std::chrono::milliseconds reconnect_wait{100};
  /// Interval of client pings; with 2 pings outstanding a hung server is
  /// noticed after about 2 x this. Default 1 s.
  std::chrono::milliseconds ping_interval{1000};
  /// How many background threads run KV calls for the elections on this
  /// connection (calls block; a hung call occupies one thread until the
  /// client's own timeout). 1..64. Default 4.
  int io_threads = 4;
};

/// A connection to NATS shared by any number of elections, with the threads
/// that drive them (one loop thread and `io_threads` for KV calls). Made by
/// `connect()`, which creates the client connection and owns its
/// disconnected / reconnected / closed callbacks (fanned out to every
/// election), or by `adopt()`, which uses the application's connection and
/// learns its state by polling, leaving its callbacks alone. Keep the
/// `shared_ptr` for as long as an election uses it (elections hold one too).
class Connection {
 public:
  /// Connects to `options.url`. Throws `leader::Error` when the server
  /// cannot be reached within `connect_timeout`, or `ConfigError` for bad
  /// options.
  static std::shared_ptr<Connection> connect(const ConnectionOptions& options);

  /// Uses a connection the application already has (a `natsConnection*`
  /// from nats.c, passed as `void*` so this header needs no nats.h). The
  /// library does not take over its callbacks: it learns the connection
  /// state by polling it every `state_poll` and never closes or destroys
  /// it; the application must keep it open until every election on it is
  /// destroyed. `options.io_threads` is used; the other options are not.
  static std::shared_ptr<Connection> adopt(void* nats_connection, const ConnectionOptions& options = {},
                                           std::chrono::milliseconds state_poll = std::chrono::milliseconds{
                                               50});

  /// For the library and its tests: wraps a backend; `io_threads` as in
  /// `ConnectionOptions`.
  explicit Connection(std::shared_ptr<detail::Backend> backend, int io_threads = 4);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  /// The connection state as last reported by the client.
  ConnectionState state() const noexcept;

  /// For the library: the backend behind this connection.
  const std::shared_ptr<detail::Backend>& backend() const noexcept { return backend_; }
  /// For the library: the threads that drive elections on this connection.
  const std::shared_ptr<detail::Runtime>& runtime() const noexcept { return runtime_; }

 private:
  std::shared_ptr<detail::Backend> backend_;
  std::shared_ptr<detail::Runtime> runtime_;
};

}  // namespace leader
