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
  /// client's own timeout). Needs about (calls per second) x (call latency)
  /// threads: 10,000 roles at TTL 10 s renew 5,000 times a second. A call
  /// that waits past its deadline for a thread is not sent and counts as a
  /// timeout. 1..64. Default 16.
  int io_threads = 16;

  // Credentials: at most one of user (+ password), token, NKey and creds
  // file. Credentials in `url` (nats://user:password@host) also work; nats.c
  // prefers them to `user`, `password` and `token`. Secrets (password,
  // token, the contents of the seed, creds and key files) never appear in a
  // log line, an error message or `status()`; file paths may.

  /// User name for user/password authentication. Default empty (none).
  std::string user;
  /// Password of `user`; requires `user`. Secret. Prefer the environment
  /// (NATS_PASSWORD, see connection_flags.h) to a command line, which
  /// other local users can read. Default empty.
  std::string password;
  /// Authentication token. Secret. Default empty (none).
  std::string token;
  /// The user's NKey public key: 56 characters starting with 'U'. Default
  /// empty: taken from a line of `nkey_seed_file` that holds it (as
  /// `nk -gen user -pubout` writes); one of the two is required with a seed.
  std::string nkey;
  /// File holding the user's NKey seed ("SU...", 58 characters), read at
  /// every (re)connect to sign the server's nonce. Secret contents; the
  /// path is not. Default empty (no NKey authentication).
  std::string nkey_seed_file;
  /// Credentials file of a decentralized (JWT) setup: the user JWT and its
  /// NKey seed, as `nsc` writes it; read at every (re)connect. Secret
  /// contents. Default empty (none).
  std::string creds_file;

  // TLS. nats.c checks the server's certificate chain and that it names
  // the host of the URL (or `tls_server_name`).

  /// Use TLS. Default false; TLS is also on when any `tls_*` field below is
  /// set or a URL has the tls:// scheme (and when the server requires it).
  bool tls = false;
  /// PEM file of the CA certificates to trust for the server's certificate.
  /// Default empty: the system's trust store (OpenSSL's default paths;
  /// SSL_CERT_FILE and SSL_CERT_DIR override them).
  std::string tls_ca_file;
  /// PEM file of the client certificate (chain), for servers that verify
  /// clients. Requires `tls_key_file`. Default empty (none).
  std::string tls_cert_file;
  /// PEM file of the client certificate's private key (unencrypted).
  /// Secret contents. Requires `tls_cert_file`. Default empty (none).
  std::string tls_key_file;
  /// Host name the server's certificate must name, instead of the host of
  /// the URL connected to (for a URL by IP address, or a certificate
  /// issued for a service name). Also sent as SNI. Default empty.
  std::string tls_server_name;

  /// Checks every field as `Connection::connect()` does and throws
  /// `ConfigError` naming the field and the rule, never the value of a
  /// secret. Checks that the credential and TLS files can be read and, for
  /// an NKey without `nkey`, that the seed file holds the public key.
  void validate() const;
};

/// Applies the credentials and TLS settings of `options` (the fields from
/// `user` on) to `nats_options`, a nats.c `natsOptions*` (passed as
/// `void*`, so that this header needs no nats.h), for an application that
/// makes its own nats.c connections to the same servers (for `adopt()`, or
/// for work of its own). Validates `options` first (throws `ConfigError`);
/// throws `Error` (`Errc::other`, naming the field) when nats.c refuses a
/// setting, e.g. a file that is not PEM.
void apply_connection_security(void* nats_options, const ConnectionOptions& options);

/// A connection to NATS shared by any number of elections, with the threads
/// that drive them (one loop thread and `io_threads` for KV calls). Made by
/// `connect()`, which creates the client connection and owns its
/// disconnected / reconnected / closed callbacks (fanned out to every
/// election), or by `adopt()`, which uses the application's connection and
/// learns its state by polling, leaving its callbacks alone. Keep the
/// `shared_ptr` for as long as an election uses it (elections hold one too).
class Connection {
 public:
  /// Connects to `options.url`. Throws `ConfigError` for bad options
  /// (`options.validate()`), or `leader::Error` when no connection is made:
  /// `disconnected` when no server could be reached, `timeout` after
  /// `connect_timeout`, `permission_denied` when the server refuses the
  /// credentials or the TLS handshake fails (the message names the URL,
  /// credentials redacted, and the reason), `other` otherwise.
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
