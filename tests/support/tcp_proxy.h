#pragma once

// A loopback TCP proxy of the tests' own, put between one client (a chaos
// candidate) and a server to cut that client off: a partition of one
// process while the others keep their connections. It listens on a free
// port of 127.0.0.1 and forwards every connection to 127.0.0.1:<upstream>,
// on one thread of its own.

#include <netinet/in.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

namespace leader::testing {

class TcpProxy {
 public:
  enum class Mode {
    /// Forward both ways.
    pass,
    /// Reset every open connection (RST) and every new one as soon as it is
    /// accepted: the client sees its connection fail and its reconnects
    /// refused.
    drop,
    /// Forward nothing and close nothing, like a network that loses every
    /// packet: the kernel keeps what was sent, and it flows again once the
    /// mode is pass (as TCP retransmits after a partition heals). New
    /// connections wait in the listen backlog.
    blackhole,
  };

  /// Starts forwarding (mode pass) to 127.0.0.1:`upstream_port`. Throws
  /// std::system_error when it cannot listen.
  explicit TcpProxy(int upstream_port);
  /// Closes every connection and stops the thread.
  ~TcpProxy();
  TcpProxy(const TcpProxy&) = delete;
  TcpProxy& operator=(const TcpProxy&) = delete;

  /// The port it listens on.
  int port() const { return port_; }
  /// "nats://127.0.0.1:<port>".
  std::string url() const;
  /// Switches the mode; returns once the proxy's thread applied it (open
  /// connections reset for drop).
  void set_mode(Mode mode);
  Mode mode() const { return mode_.load(); }
  /// Connections accepted so far (those reset by drop included).
  std::uint64_t accepted() const { return accepted_.load(); }

  /// Drops the next `count` PUB / HPUB operations whose subject starts with
  /// `prefix`, from clients that connect after this call (their bytes are
  /// then read as the NATS client protocol; earlier connections, and any
  /// other bytes, pass unparsed): a request the server never sees, so its
  /// reply never comes, on a connection that stays up.
  void drop_publishes(std::string prefix, int count);
  /// PUB / HPUB operations drop_publishes() has dropped so far.
  std::uint64_t dropped_publishes() const { return dropped_.load(); }

 private:
  void run();
  void wake();

  int upstream_port_;
  int port_ = 0;
  int listen_fd_ = -1;
  int wake_fds_[2] = {-1, -1};
  std::atomic<Mode> mode_{Mode::pass};
  std::atomic<bool> stopping_{false};
  std::atomic<std::uint64_t> accepted_{0};
  std::atomic<std::uint64_t> dropped_{0};
  std::mutex mu_;
  std::string drop_prefix_;  // under mu_
  int drop_budget_ = 0;      // under mu_
  bool parse_new_ = false;   // under mu_: parse connections accepted from now on
  std::condition_variable applied_cv_;
  std::uint64_t requested_ = 0;  // under mu_
  std::uint64_t applied_ = 0;    // under mu_
  std::thread thread_;
};

/// The address 127.0.0.1:`port`.
sockaddr_in loopback_address(int port);

/// Returns "pass", "drop" or "blackhole".
const char* to_string(TcpProxy::Mode mode) noexcept;

}  // namespace leader::testing
