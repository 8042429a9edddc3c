#pragma once

#include <stdexcept>
#include <string>
#include <system_error>

namespace leader {

/// Error codes of the library, in the `leader` error category.
///
/// Background failures are reported as values (`on_error`, `status()`),
/// never thrown across threads. Only bad configuration and misuse throw.
enum class Errc {
  ok = 0,
  /// The server did not answer in time; the operation may still be applied.
  timeout = 1,
  /// No JetStream responder (a stream-leader election, or JetStream off).
  no_responders = 2,
  /// The client is disconnected from the server.
  disconnected = 3,
  /// The connection is closed for good.
  closed = 4,
  /// The server refused the operation for lack of permission.
  permission_denied = 5,
  /// The bucket exists with a configuration that disagrees with ours.
  bucket_mismatch = 6,
  /// JetStream is not enabled on the server (or not reachable).
  jetstream_unavailable = 7,
  /// A revision conflict: the key changed under us.
  conflict = 8,
  /// The key or bucket does not exist.
  not_found = 9,
  /// Any other failure; the message says what it was.
  other = 10,
  /// The bucket's stream is gone and cannot be re-created.
  bucket_missing = 11,
};

/// The `leader` error category.
const std::error_category& error_category() noexcept;

/// Makes an error code of the `leader` category.
std::error_code make_error_code(Errc e) noexcept;

/// True for errors worth retrying (timeouts, no responders, disconnected).
bool is_transient(std::error_code ec) noexcept;

/// Thrown by constructors and `start()` for bad configuration: names the
/// field, the value and the rule it breaks.
class ConfigError : public std::invalid_argument {
 public:
  /// `field` is the name of the offending configuration field.
  ConfigError(std::string field, const std::string& message);
  /// The offending configuration field, e.g. "ttl".
  const std::string& field() const noexcept { return field_; }

 private:
  std::string field_;
};

/// Thrown by foreground calls that cannot do what they were asked
/// (`Connection::connect`, `Election::start`): carries a `leader` error code
/// and a message a person can act on.
class Error : public std::system_error {
 public:
  /// Wraps `ec` with a human-readable `message`.
  Error(std::error_code ec, const std::string& message);
};

}  // namespace leader

namespace std {
template <>
struct is_error_code_enum<leader::Errc> : true_type {};
}  // namespace std
