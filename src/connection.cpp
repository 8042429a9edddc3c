#include "leader/connection.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "kv.h"
#include "leader/error.h"
#include "nats/nats_backend.h"
#include "nats/nats_options.h"
#include "runtime.h"

namespace leader {
namespace {

/// Throws unless `path` (the value of `field`) can be opened for reading.
/// The path is named (it is not a secret), the contents never are.
void check_readable(const char* field, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(field, "cannot read \"" + path + "\": " + std::strerror(errno));
}

void validate_credentials(const ConnectionOptions& o) {
  if (!o.password.empty() && o.user.empty()) throw ConfigError("password", "requires user");
  // One kind of credentials: nats.c would send several and the server
  // would pick one, which hides a mistake.
  std::vector<const char*> given;
  if (!o.user.empty()) given.push_back("user");
  if (!o.token.empty()) given.push_back("token");
  if (!o.nkey.empty() || !o.nkey_seed_file.empty()) {
    given.push_back(o.nkey.empty() ? "nkey_seed_file" : "nkey");
  }
  if (!o.creds_file.empty()) given.push_back("creds_file");
  if (given.size() > 1) {
    throw ConfigError(given[1], std::string("cannot be combined with ") + given[0] +
                                    " (give one kind of credentials: user and password, token, NKey or "
                                    "creds file)");
  }
  if (!o.nkey.empty() && !detail::is_user_public_key(o.nkey)) {
    throw ConfigError("nkey",
                      "must be a user's NKey public key: 56 characters of A-Z and 2-7, starting with 'U'");
  }
  if (!o.nkey.empty() && o.nkey_seed_file.empty()) {
    throw ConfigError("nkey_seed_file", "is required with nkey (its seed signs the server's challenge)");
  }
  if (!o.nkey_seed_file.empty()) {
    const detail::SeedFile seed = detail::read_seed_file(o.nkey_seed_file);
    if (!seed.readable) {
      throw ConfigError("nkey_seed_file", "cannot read \"" + o.nkey_seed_file + "\": " + seed.error);
    }
    if (!seed.has_seed) {
      throw ConfigError("nkey_seed_file", "\"" + o.nkey_seed_file +
                                              "\" holds no user seed (a line of 58 characters starting "
                                              "with \"SU\")");
    }
    if (o.nkey.empty() && seed.public_key.empty()) {
      throw ConfigError("nkey", "is required: \"" + o.nkey_seed_file +
                                    "\" holds no line with the user's public key (\"U...\", as `nk -gen user "
                                    "-pubout` writes it)");
    }
  }
  if (!o.creds_file.empty()) check_readable("creds_file", o.creds_file);
}

void validate_tls(const ConnectionOptions& o) {
  if (o.tls_cert_file.empty() != o.tls_key_file.empty()) {
    throw ConfigError(o.tls_cert_file.empty() ? "tls_cert_file" : "tls_key_file",
                      "tls_cert_file and tls_key_file go together (a client certificate and its key)");
  }
  if (!o.tls_ca_file.empty()) check_readable("tls_ca_file", o.tls_ca_file);
  if (!o.tls_cert_file.empty()) check_readable("tls_cert_file", o.tls_cert_file);
  if (!o.tls_key_file.empty()) check_readable("tls_key_file", o.tls_key_file);
}

void validate_io_threads(int io_threads) {
  if (io_threads < 1 || io_threads > 64) {
    throw ConfigError("io_threads", std::to_string(io_threads) + " must be between 1 and 64");
  }
}

}  // namespace

void ConnectionOptions::validate() const {
  if (url.empty()) throw ConfigError("url", "must not be empty");
  validate_io_threads(io_threads);
  if (connect_timeout.count() <= 0) throw ConfigError("connect_timeout", "must be positive");
  if (reconnect_wait.count() <= 0) throw ConfigError("reconnect_wait", "must be positive");
  if (ping_interval.count() <= 0) throw ConfigError("ping_interval", "must be positive");
  validate_credentials(*this);
  validate_tls(*this);
}

std::shared_ptr<Connection> Connection::connect(const ConnectionOptions& options) {
  options.validate();
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
  validate_io_threads(options.io_threads);
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
