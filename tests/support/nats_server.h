#pragma once

// A nats-server started by a test on a free loopback port, with a temporary
// store directory; killed by its PID when the object is destroyed (also when
// the test fails). Nothing is left running.

#include <sys/types.h>

#include <chrono>
#include <string>

namespace leader::testing {

class NatsServer {
 public:
  struct Options {
    bool jetstream = true;
    /// Extra lines appended to the generated config file.
    std::string extra_config;
  };

  NatsServer();  // starts with default options
  explicit NatsServer(Options options);
  ~NatsServer();
  NatsServer(const NatsServer&) = delete;
  NatsServer& operator=(const NatsServer&) = delete;

  /// "nats://127.0.0.1:<port>"
  std::string url() const;
  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0; }
  /// SIGKILL and reap.
  void kill();
  /// SIGTERM, wait for exit (SIGKILL after 5 s).
  void stop();
  /// Starts again on the same port and store dir; waits until it accepts.
  void restart();
  /// SIGSTOP / SIGCONT the server process.
  void pause();
  void resume();

 private:
  void launch();
  Options options_;
  std::string dir_;
  int port_ = 0;
  pid_t pid_ = -1;
};

/// A free TCP port on 127.0.0.1 (bind to port 0, read it, close).
int free_port();

/// Path of the nats-server binary (env NATS_SERVER_BIN, else from PATH).
std::string nats_server_binary();

}  // namespace leader::testing
