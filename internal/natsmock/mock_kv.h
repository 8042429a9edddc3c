#pragma once

// An in-memory JetStream KV behind the same boundary as the nats.c adapter
// (src/kv.h), for deterministic unit tests. It mirrors the server's measured
// behaviour (shared/NATS_FACTS.md), traps included: a per-bucket revision
// counter, lazy TTL expiry that sends no watch event, delete markers that
// expire too, writes buffered while disconnected and applied on reconnect.
// It owns no threads and never sleeps: watch events and state changes are
// delivered synchronously on the thread that caused them, never while the
// server's lock is held.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "clock.h"
#include "kv.h"

namespace leader::natsmock {

namespace impl {
struct ServerCore;
struct ClientCore;
}  // namespace impl

/// A one-shot fault, injected into one client with `MockClient::inject`.
struct Fault {
  /// The call it hits: "get", "create", "update", "erase", "open"
  /// (open_bucket), or "*" (any of get/create/update/erase, not open).
  std::string op = "*";
  /// What the caller gets. `ok` means the call runs normally (useful with
  /// `hang` for a slow call). Default timeout.
  detail::KvOutcome outcome = detail::KvOutcome::timeout;
  /// For writes with a non-ok outcome: true applies the write anyway (with
  /// its expectation checked) and the caller still gets `outcome`: a lost ack.
  bool applied = false;
  /// Blocks the calling thread until `MockClient::release_hangs()`, or the
  /// client or server is destroyed; then the call continues as set above
  /// (a write is applied, or not, at release time).
  bool hang = false;
  /// How many matching calls it hits before it is used up; <= 0: until
  /// `clear_faults()`.
  int times = 1;
  /// A lying server: the caller is told this revision instead of the real
  /// one, in a successful write's answer and in the entry of a get or of a
  /// conflict. The bucket and the call log keep the real revision. Unset:
  /// the truth.
  std::optional<std::uint64_t> revision = std::nullopt;
};

/// One call seen by the server, in the order the server processed them.
struct CallRecord {
  /// Clock time when the server finished the call (for a hung call: after
  /// its release; for a buffered write: when it was applied at reconnect).
  detail::TimePoint at;
  /// The client's name; empty for the test helpers (`put_raw`, ...).
  std::string client;
  /// "get", "create", "update", "erase", "watch", "open"; "put" and
  /// "purge" for the test helpers.
  std::string op;
  /// The key; the bucket name for "open".
  std::string key;
  /// create: last_marker; update/erase: the expected revision.
  std::optional<std::uint64_t> expected;
  /// What the caller got (for a buffered write at reconnect: what the
  /// server answered to nobody).
  detail::KvOutcome outcome = detail::KvOutcome::other;
  /// Revision of the written message when applied; get/watch: revision of
  /// the message returned or replayed; else 0.
  std::uint64_t revision = 0;
  /// True when a write changed the bucket (also for a lost ack).
  bool applied = false;
  /// The value written (writes only).
  std::string value;
  /// True for a write from the reconnect buffer, applied at reconnect.
  bool buffered = false;
};

/// One candidate's connection to a `MockServer`: a `detail::Backend` whose
/// stores carry this client's faults. Thread-safe. Create with
/// `MockServer::client`. After the client is destroyed (or `close()`d, or
/// its server destroyed) its stores answer `closed`.
class MockClient final : public detail::Backend {
 public:
  /// For `MockServer::client` only.
  MockClient(std::shared_ptr<impl::ServerCore> server, std::string name);
  /// Releases this client's hung calls; later calls on its stores return
  /// `closed`. State listeners are not called.
  ~MockClient() override;
  MockClient(const MockClient&) = delete;
  MockClient& operator=(const MockClient&) = delete;

  /// The name given to `MockServer::client`.
  const std::string& name() const noexcept;

  /// Opens `spec.name`, creating it with `spec` if missing. Errors:
  /// bucket_mismatch (TTL or storage differ; the message names the bucket
  /// and both values), jetstream_unavailable (`set_jetstream(false)`),
  /// disconnected, no_responders, closed, or an injected "open" fault. The
  /// timeout is ignored (only a `hang` fault blocks).
  detail::OpenResult open_bucket(const detail::BucketSpec& spec, detail::Duration timeout) override;
  /// connected, disconnected (`set_disconnected`), or closed (`close()`, or
  /// the server destroyed).
  ConnectionState state() const noexcept override;
  /// Listeners are called synchronously from `set_disconnected` / `close`.
  std::uint64_t subscribe_state(std::function<void(ConnectionState)> listener) override;
  /// After it returns the listener is never called again (also when called
  /// from inside the listener).
  void unsubscribe_state(std::uint64_t id) override;

  /// Appends a fault to this client's FIFO; each matching call consumes
  /// the first fault that matches it.
  void inject(Fault fault);
  /// Drops every pending fault.
  void clear_faults();
  /// Number of faults still queued.
  std::size_t pending_faults() const;

  /// While disconnected every call returns `disconnected`; writes are not
  /// applied but buffered (unless `set_buffer_writes(false)`), this
  /// client's watches get no events, and listeners hear `disconnected`. On
  /// reconnect the buffered writes are applied in order, each with its
  /// expectation checked then (a buffered create only expects no message: it
  /// does not retry over a delete marker); then listeners hear `connected`;
  /// then every watch of this client gets a `WatchEvent::Kind::error`
  /// (outcome `disconnected`) and delivers nothing more: recreate it.
  void set_disconnected(bool disconnected);
  /// Whether writes made while disconnected are buffered. Default true, as
  /// in nats.c, where the buffer cannot be turned off.
  void set_buffer_writes(bool buffer);
  /// Number of writes waiting in the reconnect buffer.
  std::size_t buffered_writes() const;
  /// While set every call (and open_bucket and watch) returns
  /// `no_responders` and nothing is applied: a stream-leader election.
  void set_no_responders(bool no_responders);
  /// While set, get returns the key's previous message (or not_found if
  /// it has none): a follower replica serving stale data.
  void set_stale_reads(bool stale);
  /// While set this client's watches deliver nothing, errors included: a
  /// stalled consumer. Events are dropped, not held back.
  void set_watch_silent(bool silent);
  /// Whether a create/update/erase conflict carries the current message
  /// (as when the adapter learned it with a leader-routed read). Default
  /// true; false exercises callers on the "entry unknown" path.
  void set_conflict_entry(bool include);
  /// The next watch() call on this client fails with `outcome`.
  void fail_watch_create(detail::KvOutcome outcome);
  /// Wakes every call of this client blocked in a `hang` fault.
  void release_hangs();
  /// Number of this client's calls blocked in a `hang` fault right now.
  std::size_t hung_calls() const;
  /// Waits (real time, at most `limit`) until at least `n` calls of this
  /// client are blocked in a hang; returns whether they are. For tests
  /// that hang a call on another thread.
  bool wait_for_hung_calls(std::size_t n, std::chrono::milliseconds limit) const;
  /// Closes the connection for good: calls return `closed`, hangs are
  /// released, the buffer is dropped, listeners hear `closed`.
  void close();

 private:
  std::shared_ptr<impl::ClientCore> core_;
};

/// An in-memory NATS server with JetStream KV. One per test; thread-safe.
/// Time comes from `clock` (a `FakeClock` in tests), which must outlive
/// the server and every client and store made from it.
class MockServer {
 public:
  /// A server with JetStream on and no buckets.
  explicit MockServer(const detail::Clock& clock);
  /// Releases every hung call; clients and stores that outlive it answer
  /// `closed`, and no watch gets another event.
  ~MockServer();
  MockServer(const MockServer&) = delete;
  MockServer& operator=(const MockServer&) = delete;

  /// A new connection named `name` (names need not be unique; they label
  /// the call log).
  std::shared_ptr<MockClient> client(std::string name);

  /// Creates a bucket as `open_bucket` would; false if it exists with
  /// another TTL or storage.
  bool create_bucket(const detail::BucketSpec& spec);
  /// Deletes a bucket with its keys; its watches get an error (not_found)
  /// and stop. Re-creating it restarts revisions at 1, as on the server.
  /// False if it did not exist.
  bool delete_bucket(const std::string& bucket);
  /// Whether the bucket exists.
  bool has_bucket(const std::string& bucket) const;

  /// An outside writer: an unconditional put. Notifies watchers; returns
  /// the new revision, 0 if the bucket does not exist.
  std::uint64_t put_raw(const std::string& bucket, const std::string& key, const std::string& value);
  /// An outside writer: an unconditional delete marker. Returns its
  /// revision, 0 if the bucket does not exist.
  std::uint64_t erase_raw(const std::string& bucket, const std::string& key);
  /// An outside writer: an unconditional purge marker. Returns its
  /// revision, 0 if the bucket does not exist.
  std::uint64_t purge_raw(const std::string& bucket, const std::string& key);
  /// The key's latest message (put or marker) after expiry, as a
  /// leader-routed read sees it; nullopt if none or no such bucket.
  std::optional<detail::KvEntry> peek(const std::string& bucket, const std::string& key) const;
  /// The bucket's last assigned revision (0 if none or no such bucket).
  std::uint64_t last_revision(const std::string& bucket) const;
  /// Number of live watches on the key (for checking that one was
  /// recreated).
  std::size_t watch_count(const std::string& bucket, const std::string& key) const;

  /// false: open_bucket fails with jetstream_unavailable and KV calls
  /// return no_responders. Default true.
  void set_jetstream(bool enabled);

  /// Every call so far, in processing order.
  std::vector<CallRecord> calls() const;
  /// Forgets the call log.
  void clear_calls();

  /// The clock given to the constructor.
  const detail::Clock& clock() const noexcept;

 private:
  std::shared_ptr<impl::ServerCore> core_;
};

}  // namespace leader::natsmock
