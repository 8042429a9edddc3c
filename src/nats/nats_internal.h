#pragma once

// Private to src/nats/: RAII for nats.c handles, outcome mapping, and the
// shared state behind the backend, its stores and their watches.

#include <nats/nats.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "kv.h"
#include "leader/connection.h"
#include "leader/types.h"

namespace leader::detail::nats {

struct OptionsDeleter {
  void operator()(natsOptions* p) const noexcept { natsOptions_Destroy(p); }
};
struct MsgDeleter {
  void operator()(natsMsg* p) const noexcept { natsMsg_Destroy(p); }
};
struct PubAckDeleter {
  void operator()(jsPubAck* p) const noexcept { jsPubAck_Destroy(p); }
};
struct StreamInfoDeleter {
  void operator()(jsStreamInfo* p) const noexcept { jsStreamInfo_Destroy(p); }
};
struct ConsumerInfoDeleter {
  void operator()(jsConsumerInfo* p) const noexcept { jsConsumerInfo_Destroy(p); }
};
struct MetaDataDeleter {
  void operator()(jsMsgMetaData* p) const noexcept { jsMsgMetaData_Destroy(p); }
};
struct KvStoreDeleter {
  void operator()(kvStore* p) const noexcept { kvStore_Destroy(p); }
};
struct JsCtxDeleter {
  void operator()(jsCtx* p) const noexcept { jsCtx_Destroy(p); }
};
struct SubscriptionDeleter {
  // Unsubscribes (one UNSUB, no round trip) but leaves the ephemeral
  // consumer to the server's inactivity cleanup: deleting it would be a
  // blocking request in a destructor. Only for subscriptions that never
  // received a message; a watch's subscription goes through Core::retire.
  void operator()(natsSubscription* p) const noexcept { natsSubscription_Destroy(p); }
};

using OptionsPtr = std::unique_ptr<natsOptions, OptionsDeleter>;
using MsgPtr = std::unique_ptr<natsMsg, MsgDeleter>;
using PubAckPtr = std::unique_ptr<jsPubAck, PubAckDeleter>;
using StreamInfoPtr = std::unique_ptr<jsStreamInfo, StreamInfoDeleter>;
using ConsumerInfoPtr = std::unique_ptr<jsConsumerInfo, ConsumerInfoDeleter>;
using MetaDataPtr = std::unique_ptr<jsMsgMetaData, MetaDataDeleter>;
using KvStorePtr = std::unique_ptr<kvStore, KvStoreDeleter>;
using JsCtxPtr = std::unique_ptr<jsCtx, JsCtxDeleter>;
using SubscriptionPtr = std::unique_ptr<natsSubscription, SubscriptionDeleter>;

/// A failed nats.c call: its status, JetStream error code and the calling
/// thread's last error text (captured right after the call).
struct Failure {
  natsStatus status = NATS_OK;
  int js_code = 0;
  std::string text;
};

/// Captures `status`, `js_code` and nats_GetLastError() of this thread.
Failure capture(natsStatus status, int js_code = 0);

/// The exact outcome class of a failure. `conn` is the connection status
/// right after the call: a failure while not connected is `disconnected`
/// (the request may sit in the reconnect buffer).
KvOutcome classify(const Failure& failure, natsConnStatus conn) noexcept;

/// "<outcome> (<status text>, jsErrCode N: <last error>)".
std::string describe(KvOutcome outcome, const Failure& failure);

/// The server reports a permission violation asynchronously (-ERR), and the
/// request then waits for an answer that never comes. A timeout is returned
/// as NATS_NOT_PERMITTED with the server's text (which classify() maps to
/// permission_denied) when the connection's last error is a violation on
/// what the call sent: for `op` "get" $JS.API.STREAM.MSG.GET.<stream>, for
/// "watch" a $JS.API.CONSUMER subject of <stream>, for "open" a
/// $JS.API.STREAM subject of <stream>, for any other op (a publish)
/// `subject`; or on the subscription of a reply inbox. The client keeps
/// only its last error, so a later timeout of a call refused before still
/// reads as refused. (nats_options.cpp)
Failure with_permission_violation(Failure failure, natsConnection* nc, std::string_view op,
                                  const std::string& subject, const std::string& stream);

/// Why natsConnection_Connect failed: the error class (permission_denied
/// for refused credentials and failed TLS handshakes) and a hint for a
/// person, " (...)", naming the options to check, never their values.
/// `text` is the client's last error. (nats_options.cpp)
struct ConnectFailure {
  Errc errc = Errc::other;
  std::string hint;
};
ConnectFailure explain_connect_failure(natsStatus status, const std::string& text,
                                       const ConnectionOptions& options);

/// Milliseconds left until `deadline`, rounded up; 0 when it has passed.
std::int64_t ms_left(std::chrono::steady_clock::time_point deadline) noexcept;

/// "5s", "1500ms", "250us" or "0s (no expiry)": for messages.
std::string format_ttl(std::int64_t ns);

class WatchCore;

/// Connection events fanned out to every state listener and live watch.
/// On a connection the library owns, this is the closure of the client's
/// callbacks (state changes, async errors); it owns itself (`self`) from
/// before the connect until the closed callback ran, because nats.c may run
/// that callback after natsConnection_Destroy returned. On an adopted
/// connection a StatePoller drives it instead.
class Events {
 public:
  /// `url`: for messages only, so already redacted (redact_url).
  explicit Events(std::string url) : url_(std::move(url)) {}

  std::uint64_t subscribe(std::function<void(ConnectionState)> listener);
  /// After it returns the listener is never called again (unless called
  /// from that listener itself, which then is not called again either).
  void unsubscribe(std::uint64_t id);

  std::uint64_t add_watch(const std::shared_ptr<WatchCore>& core);
  void bind_subscription(std::uint64_t id, natsSubscription* sub);
  void remove_watch(std::uint64_t id);
  /// Keeps a watch closure alive until this object dies, for when nats.c
  /// could not take responsibility for releasing it.
  void bury(std::shared_ptr<WatchCore> core);

  bool closed() const noexcept { return closed_.load(); }
  const std::string& url() const noexcept { return url_; }

  /// The connection was lost (not closed): tells every listener.
  void disconnected();
  /// The connection is back: fails every watch (messages may have been
  /// lost, and a restarted server may have lost the watch's consumer), then
  /// tells every listener `connected`.
  void reconnected();
  /// The connection is closed for good (`why` ends the watches' message):
  /// calls see `closed` from now on, every watch fails, every listener
  /// hears `closed`.
  void close(const std::string& why);
  /// Calls see `closed` from now on; watches and listeners hear of it only
  /// from a later close().
  void mark_closed() noexcept { closed_.store(true); }
  /// Fails every watch whose subscription lost messages (slow consumer) or
  /// was closed: what the error callback reports when the library owns it.
  void check_subscriptions();

  void hold_self(std::shared_ptr<Events> self);
  void release_self();

  static void on_disconnected(natsConnection* nc, void* closure);
  static void on_reconnected(natsConnection* nc, void* closure);
  static void on_closed(natsConnection* nc, void* closure);
  static void on_error(natsConnection* nc, natsSubscription* sub, natsStatus err, void* closure);

 private:
  void notify(ConnectionState state);
  void fail_all(KvOutcome outcome, const std::string& message);

  const std::string url_;
  std::atomic<bool> closed_{false};

  std::mutex mu_;  // guards everything below except dispatch_mu_
  std::map<std::uint64_t, std::function<void(ConnectionState)>> listeners_;
  std::uint64_t next_id_ = 1;
  struct WatchEntry {
    std::weak_ptr<WatchCore> core;
    natsSubscription* sub = nullptr;
  };
  std::map<std::uint64_t, WatchEntry> watches_;
  std::unordered_map<natsSubscription*, std::uint64_t> watch_by_sub_;
  std::vector<std::shared_ptr<WatchCore>> graveyard_;
  std::shared_ptr<Events> self_;

  // Held while listeners are called, so that unsubscribe() can wait for a
  // fan-out in progress; the thread doing it may unsubscribe without waiting.
  std::mutex dispatch_mu_;
  std::atomic<std::thread::id> dispatching_{};
};

/// One lazily started thread per connection for the little watch work that
/// no nats.c callback carries: replay_done of a key without messages (so a
/// handler never runs on the thread calling watch()) and re-checks of a
/// replay whose last message expired before it was delivered.
class Deferred {
 public:
  using Duration = std::chrono::steady_clock::duration;

  Deferred() = default;
  Deferred(const Deferred&) = delete;
  Deferred& operator=(const Deferred&) = delete;
  ~Deferred() { shutdown(); }

  /// Runs `task` on the thread after `delay` (in order of due time).
  void post(std::function<void()> task, Duration delay = Duration::zero());
  /// Drops pending tasks and joins the thread (detaches it when called from
  /// a task). Idempotent; later posts are dropped.
  void shutdown() noexcept;

 private:
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    std::multimap<std::pair<std::chrono::steady_clock::time_point, std::uint64_t>, std::function<void()>>
        tasks;
    std::uint64_t next_seq = 0;
    bool stop = false;
  };
  static void run(const std::shared_ptr<State>& state);

  std::shared_ptr<State> state_ = std::make_shared<State>();
  std::mutex start_mu_;  // guards thread_ and stopped_
  std::thread thread_;
  bool stopped_ = false;
};

/// The nats.c connection and JetStream context shared by the backend, its
/// stores and watches; destroyed with the last of them. The jsCtx holds a
/// reference of its own on the connection, so `nc` stays valid memory while
/// `js` lives, even after the application destroyed an adopted connection.
struct Core {
  Core() = default;
  Core(const Core&) = delete;
  Core& operator=(const Core&) = delete;
  ~Core();

  natsConnection* nc = nullptr;
  /// False for an adopted connection: the application closes and destroys
  /// it, never the library.
  bool owns_connection = true;
  jsCtx* js = nullptr;
  std::shared_ptr<Events> events;
  Deferred deferred;

  /// Fast path for calls while not connected: ok when connected, else
  /// disconnected or closed, so that no request is queued into the
  /// reconnect buffer (it could be applied long after the call failed).
  KvOutcome gate() const noexcept;
  /// The URL connected to, or the configured URL(s), credentials redacted
  /// (for messages).
  std::string server_url() const;

  /// Takes the subscription of a watch that ended and frees it once the
  /// client's reader can no longer be inside it. nats.c 3.4.1 looks an
  /// inbound message's subscription up and then locks it without holding a
  /// reference (nats.c issue 637, fixed in 3.6.0): destroying it in that
  /// window makes the reader lock freed memory. So the Deferred thread
  /// removes it from the connection (an auto-unsubscribe at the count it
  /// already delivered: no consumer deletion, which has a use-after-free of
  /// its own in nats.c), then flushes: the reader parses in order, so after
  /// the PONG it is past every message it could have been handing over, and
  /// the subscription is destroyed. While the connection is down it retries
  /// every second; ~Core frees what is left once the reader has stopped.
  void retire(natsSubscription* sub);

 private:
  void reap();
  /// Removes every retired subscription from the connection and waits for
  /// the reader to pass them; false if the flush failed (connection down).
  bool unsubscribe_and_flush(const std::vector<natsSubscription*>& subs);

  std::mutex retired_mu_;
  std::vector<natsSubscription*> retired_;
  bool reap_posted_ = false;
};

/// State shared by a watch and the nats.c callbacks of its subscription.
/// nats.c releases `self` in the subscription's completion callback, after
/// its last message callback returned.
class WatchCore {
 public:
  /// `key` empty: a watch of every key of the bucket.
  WatchCore(std::string bucket, std::string key, WatchHandler handler)
      : bucket_(std::move(bucket)), key_(std::move(key)), handler_(std::move(handler)) {}

  /// Message callback (nats.c delivery thread).
  static void on_message(natsConnection* nc, natsSubscription* sub, natsMsg* msg, void* closure);
  /// Subscription completion callback: drops `self`.
  static void on_complete(void* closure);

  /// The consumer had nothing to replay: report replay_done (once).
  void replay_was_empty();
  /// True once replay_done was delivered, or the watch failed or stopped.
  bool settled();
  /// Reports one error event; nothing is delivered after it.
  void fail(KvOutcome outcome, const std::string& message);
  /// After it returns the handler is never called again.
  void stop() noexcept;

  const std::string& key() const noexcept { return key_; }
  const std::string& bucket() const noexcept { return bucket_; }

  std::shared_ptr<WatchCore> self;

 private:
  void handle(natsMsg* msg);
  /// Calls the handler; `mu_` must be held.
  void deliver(const WatchEvent& event) noexcept;

  const std::string bucket_;
  const std::string key_;
  std::mutex mu_;
  WatchHandler handler_;
  bool stopped_ = false;
  bool failed_ = false;
  bool replay_done_ = false;
  std::uint64_t last_revision_ = 0;
  std::atomic<std::thread::id> delivering_{};
};

/// A KvStore on `bucket` sharing `core`.
std::shared_ptr<KvStore> make_store(std::shared_ptr<Core> core, std::string bucket);

}  // namespace leader::detail::nats
