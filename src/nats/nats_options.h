#pragma once

// Credentials and TLS of connections the library creates: what the fields
// of ConnectionOptions from `user` on do to nats.c's options. This header
// does not include nats.h (src/connection.cpp uses it); the failures these
// settings cause are classified in nats_internal.h.

#include <string>

#include "leader/connection.h"

// nats.c's options, the type nats.h names (which only the files under
// src/nats/ include).
using natsOptions = struct __natsOptions;  // NOLINT(bugprone-reserved-identifier): nats.c's name

namespace leader::detail {

/// What a NKey seed file holds, learnt without keeping its secret.
struct SeedFile {
  /// False when the file cannot be read; `error` then says why
  /// (strerror), never quoting the contents.
  bool readable = false;
  std::string error;
  /// A line holds a user seed ("SU" + 56 base32 characters).
  bool has_seed = false;
  /// The user public key of a line holding one ("U" + 55 base32
  /// characters), else empty. Not a secret.
  std::string public_key;
};

/// Reads `path` and wipes its contents from memory before returning.
SeedFile read_seed_file(const std::string& path);

/// True when `s` looks like a NKey public key of a user: 56 characters of
/// the base32 alphabet (A-Z, 2-7), the first 'U'. The checksum is left to
/// the server.
bool is_user_public_key(const std::string& s) noexcept;

/// True when the connection uses TLS: `tls`, a `tls_*` field, or a URL with
/// the tls:// scheme. (A server that requires TLS gets it anyway: nats.c
/// upgrades when the server asks.)
bool uses_tls(const ConnectionOptions& options);

/// Applies the credentials and TLS settings of `options` (already
/// validated) to `opts`. On failure returns false and sets `*error` to
/// "<field>: <reason>", where the reason is nats.c's (file names, OpenSSL
/// reasons; never a secret). Never throws.
bool apply_security(natsOptions* opts, const ConnectionOptions& options, std::string* error) noexcept;

}  // namespace leader::detail
