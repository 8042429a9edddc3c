#pragma once

// Credentials made at test time (OpenSSL's C API) for servers that
// authenticate: a small PKI for TLS, NATS NKeys (ed25519), and the
// operator / account / user JWTs and creds file of a decentralized setup.
// Nothing is read from disk or the network; every key is new per call.
// Each material lists its secrets (`Secrets`), so that a test can assert
// that none of them reaches a log line, an error message or an output.

#include <array>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace leader::testing {

/// A directory under $TMPDIR (or /tmp), removed with its contents by the
/// destructor.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  /// Writes `contents` to `<path>/<name>` (mode 0600) and returns that path.
  std::string write(const std::string& name, const std::string& contents) const;

 private:
  std::string path_;
};

/// Text that must never appear in a log line, error message or output:
/// whole secrets (passwords, tokens, seeds) and fragments of private keys.
/// A PEM key is not searched as a whole: its first characters are the
/// ASN.1 header every key of its kind shares, so only the characters that
/// encode the private key's own bytes are, in pieces, along with their hex
/// form.
class Secrets {
 public:
  /// A secret that must not appear as a whole (nor its tail when it has a
  /// well-known prefix, as NKey seeds do: `skip` characters).
  void add(const std::string& secret, std::size_t skip = 0);
  /// A private key: `raw` are its secret bytes, `pem` its PEM encoding.
  void add_private_key(const std::string& raw, const std::string& pem);
  void add(const Secrets& other);

  /// The first secret (or fragment) found in `text`, if any.
  std::optional<std::string> find_in(std::string_view text) const;
  std::size_t size() const { return needles_.size(); }

 private:
  std::vector<std::string> needles_;
};

/// An NKey pair: ed25519, encoded as NATS does (base32 of a prefix byte,
/// the 32-byte key and a CRC16).
struct NKey {
  enum class Type { operator_key, account, user };

  /// 56 characters: 'O', 'A' or 'U', then base32.
  std::string public_key;
  /// 58 characters: "SO", "SA" or "SU", then base32. Secret.
  std::string seed;
  /// The 32-byte ed25519 seed itself. Secret.
  std::string raw_seed;

  /// A new random key.
  static NKey generate(Type type);
  /// The ed25519 signature of `data`, base64url without padding (JWT).
  std::string sign_base64url(std::string_view data) const;
  /// The seed and its raw bytes.
  Secrets secrets() const;
};

/// A CA, a server certificate for 127.0.0.1 and localhost, and a client
/// certificate signed by that CA; and a second CA with a client
/// certificate of its own, which the server does not trust. EC P-256 keys,
/// valid for a day. Files in `dir`.
struct TlsMaterial {
  std::string ca_file;
  std::string server_cert_file;
  std::string server_key_file;
  std::string client_cert_file;
  std::string client_key_file;
  std::string other_ca_file;
  std::string other_client_cert_file;
  std::string other_client_key_file;
  /// Every private key's bytes.
  Secrets secrets;

  static TlsMaterial generate(const TempDir& dir);
  /// nats-server config: TLS with these files; `verify_clients` requires
  /// a client certificate signed by the CA.
  std::string server_config(bool verify_clients) const;
};

/// A decentralized (operator mode) setup: an operator, a system account,
/// an account with JetStream and a user of it with full permissions, and
/// the user's creds file; also a creds file of a user signed by an account
/// the server does not know. The server resolves accounts from memory
/// (resolver_preload).
struct OperatorMaterial {
  std::string creds_file;
  std::string foreign_creds_file;
  /// Lines for the server's config (NatsServer::Options::extra_config).
  std::string server_config;
  /// The seeds (the JWTs are not secret).
  Secrets secrets;

  static OperatorMaterial generate(const TempDir& dir);
};

}  // namespace leader::testing
