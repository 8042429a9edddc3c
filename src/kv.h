#pragma once

// The one narrow boundary between the election logic and a key-value store.
// Implemented by the nats.c adapter (src/nats/) and by internal/natsmock/.
// Nothing here may throw: every failure is a KvResult.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "leader/config.h"
#include "leader/error.h"
#include "leader/types.h"

namespace leader::detail {

using Duration = std::chrono::nanoseconds;

/// Exact outcome classes of a KV call.
enum class KvOutcome {
  ok,
  conflict,           // expectation failed (jsErrCode 10071 / wrong last sequence)
  not_found,          // no message for the key (get), or bucket missing
  timeout,            // no answer in time: the write MAY still be applied
  no_responders,      // nobody answered the request (not applied)
  disconnected,       // client disconnected: a write may sit in the reconnect buffer
  closed,             // connection closed for good
  permission_denied,  // the server refused the subject
  other,              // anything else; see message
};

const char* to_string(KvOutcome o) noexcept;
/// Maps an outcome to the library's public error code.
std::error_code to_error_code(KvOutcome o) noexcept;

/// What a message on the key's subject did.
enum class EntryOp { put, del, purge };

/// One message of a key: a value, or a delete / purge marker.
struct KvEntry {
  std::string key;
  std::string value;           // empty for markers
  std::uint64_t revision = 0;  // stream sequence of this message
  EntryOp op = EntryOp::put;
  std::int64_t created_ns = 0;  // server wall clock (UTC ns); for humans only
};

struct KvResult {
  KvOutcome outcome = KvOutcome::other;
  /// For successful writes: the revision of the new message.
  std::uint64_t revision = 0;
  /// get: the latest message (put or marker) when ok.
  /// create/update conflict: the current message if the adapter learned it
  /// with a leader-routed read (optional: may be empty).
  std::optional<KvEntry> entry;
  /// Human-readable detail on failure (names the subject/bucket).
  std::string message;

  bool ok() const noexcept { return outcome == KvOutcome::ok; }
};

/// What a watch delivers.
struct WatchEvent {
  enum class Kind {
    entry,        // a message on the key (replayed or live)
    replay_done,  // the initial replay ended: later entries are live
    error,        // the watch failed; the watcher must be recreated
  };
  Kind kind = Kind::entry;
  KvEntry entry;                       // for Kind::entry
  KvOutcome error = KvOutcome::other;  // for Kind::error
  std::string message;                 // for Kind::error
};

/// Called from a store's own thread; must be quick and must not call back
/// into the store synchronously.
using WatchHandler = std::function<void(const WatchEvent&)>;

/// An active watch. Destroying it stops the watch; once the destructor
/// returns, the handler is never called again.
class Watch {
 public:
  virtual ~Watch() = default;
};

/// One bucket. Every call blocks for at most about `timeout` (callers bound
/// it themselves too: a client call can overrun). Thread-safe.
class KvStore {
 public:
  virtual ~KvStore() = default;

  /// Leader-routed read of the latest message of `key` (never served by a
  /// follower replica). ok + entry (which may be a delete/purge marker), or
  /// not_found when the key has no message at all.
  virtual KvResult get(const std::string& key, Duration timeout) = 0;

  /// Create-if-absent. With `last_marker` (the revision of a delete/purge
  /// marker the caller saw) it is one write expecting that revision; else
  /// it expects no message, and if that conflicts because the latest
  /// message is a marker, it retries once over that marker. On conflict the
  /// result carries the live entry when known.
  virtual KvResult create(const std::string& key, const std::string& value,
                          std::optional<std::uint64_t> last_marker, Duration timeout) = 0;

  /// Put only if the key's latest revision is `expected`.
  virtual KvResult update(const std::string& key, const std::string& value, std::uint64_t expected,
                          Duration timeout) = 0;

  /// Delete (write a delete marker) only if the key's latest revision is
  /// `expected`. ok carries the marker's revision.
  virtual KvResult erase(const std::string& key, std::uint64_t expected, Duration timeout) = 0;

  /// Watches `key`: replays its latest message (markers included), then
  /// `replay_done`, then every new message. Returns nullptr and fills
  /// `error` if the watch cannot be created.
  virtual std::unique_ptr<Watch> watch(const std::string& key, WatchHandler handler, KvResult* error) = 0;

  /// Watches every key of the bucket, as `watch()` does one: replays each
  /// key's latest message, then `replay_done`, then every new message.
  /// Default: fails with `other` (not supported).
  virtual std::unique_ptr<Watch> watch_all(WatchHandler handler, KvResult* error);
};

/// How an election wants its bucket.
struct BucketSpec {
  std::string name;
  Duration ttl{0};
  Storage storage = Storage::file;
  int replicas = 1;
};

/// Outcome of opening a bucket.
struct OpenResult {
  std::shared_ptr<KvStore> store;  // set on success
  /// Creation time of the bucket's stream (ms since the Unix epoch, server
  /// clock): the fencing epoch. Changes when the bucket is re-created.
  std::uint64_t epoch = 0;
  std::error_code error;  // leader::Errc on failure
  std::string message;    // actionable, names the bucket
};

/// A connection to a KV service: the nats.c adapter or the mock.
class Backend {
 public:
  virtual ~Backend() = default;

  /// Opens `spec.name`, creating it (History 1) if missing. Fails with
  /// Errc::bucket_mismatch when it exists with another TTL or storage,
  /// Errc::jetstream_unavailable when JetStream does not answer.
  virtual OpenResult open_bucket(const BucketSpec& spec, Duration timeout) = 0;

  /// Current connection state.
  virtual ConnectionState state() const noexcept = 0;

  /// The client's ping interval when known (a hung server is noticed after
  /// about two of them); 0 when unknown.
  virtual std::chrono::milliseconds ping_interval() const noexcept { return std::chrono::milliseconds{0}; }

  /// Registers a listener for connection state changes; called from a
  /// backend thread, must be quick. Returns an id for `unsubscribe_state`.
  virtual std::uint64_t subscribe_state(std::function<void(ConnectionState)> listener) = 0;
  /// After this returns the listener is never called again.
  virtual void unsubscribe_state(std::uint64_t id) = 0;
};

}  // namespace leader::detail
