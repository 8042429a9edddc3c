#include "nats/nats_backend.h"

#include <algorithm>
#include <cctype>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "nats/nats_internal.h"
#include "nats/nats_options.h"
#include "redact.h"

namespace leader::detail {
namespace nats {
namespace {

bool contains_ci(const std::string& haystack, const std::string& needle) {
  auto it = std::search(haystack.begin(), haystack.end(), needle.begin(), needle.end(), [](char a, char b) {
    return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
  });
  return it != haystack.end();
}

}  // namespace

Failure capture(natsStatus status, int js_code) {
  Failure f;
  f.status = status;
  f.js_code = js_code;
  if (status == NATS_OK) return f;
  // nats.c does not set the thread's last error on every failure (e.g. a
  // "no message found" from js_GetLastMsg): text of another status is
  // stale, from an earlier call.
  natsStatus last = NATS_OK;
  const char* text = nats_GetLastError(&last);
  if (text == nullptr || last != status) return f;
  f.text = text;
  // Drops the "(js.c:535): " source location.
  if (!f.text.empty() && f.text[0] == '(') {
    const auto end = f.text.find("): ");
    if (end != std::string::npos) f.text.erase(0, end + 3);
  }
  return f;
}

KvOutcome classify(const Failure& f, natsConnStatus conn) noexcept {
  if (f.status == NATS_OK) return KvOutcome::ok;
  // A JetStream error code is exact; the text is the fallback (kvStore_*
  // style errors carry none).
  if (f.js_code == JSStreamWrongLastSequenceErr) return KvOutcome::conflict;
  if (f.js_code == JSNoMessageFoundErr || f.js_code == JSStreamNotFoundErr || f.status == NATS_NOT_FOUND) {
    return KvOutcome::not_found;
  }
  if (f.js_code == 0 && contains_ci(f.text, "wrong last sequence")) return KvOutcome::conflict;
  if (f.status == NATS_CONNECTION_CLOSED || conn == NATS_CONN_STATUS_CLOSED) return KvOutcome::closed;
  if (f.status == NATS_NOT_PERMITTED || contains_ci(f.text, "permission")) {
    return KvOutcome::permission_denied;
  }
  if (f.status == NATS_CONNECTION_DISCONNECTED || conn == NATS_CONN_STATUS_RECONNECTING ||
      conn == NATS_CONN_STATUS_DISCONNECTED || conn == NATS_CONN_STATUS_CONNECTING) {
    return KvOutcome::disconnected;
  }
  if (f.status == NATS_TIMEOUT) return KvOutcome::timeout;
  if (f.status == NATS_NO_RESPONDERS) return KvOutcome::no_responders;
  return KvOutcome::other;
}

std::string describe(KvOutcome outcome, const Failure& f) {
  std::string out = to_string(outcome);
  out += " (";
  out += natsStatus_GetText(f.status);
  if (f.js_code != 0) out += ", jsErrCode " + std::to_string(f.js_code);
  if (!f.text.empty()) out += ": " + f.text;
  out += ")";
  return out;
}

std::int64_t ms_left(std::chrono::steady_clock::time_point deadline) noexcept {
  const auto left = deadline - std::chrono::steady_clock::now();
  if (left <= std::chrono::steady_clock::duration::zero()) return 0;
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
  return (ns + 999'999) / 1'000'000;
}

std::string format_ttl(std::int64_t ns) {
  if (ns == 0) return "0s (no expiry)";
  if (ns % 1'000'000'000 == 0) return std::to_string(ns / 1'000'000'000) + "s";
  if (ns % 1'000'000 == 0) return std::to_string(ns / 1'000'000) + "ms";
  if (ns % 1'000 == 0) return std::to_string(ns / 1'000) + "us";
  return std::to_string(ns) + "ns";
}

std::uint64_t Events::subscribe(std::function<void(ConnectionState)> listener) {
  std::lock_guard<std::mutex> lock(mu_);
  const auto id = next_id_++;
  listeners_.emplace(id, std::move(listener));
  return id;
}

void Events::unsubscribe(std::uint64_t id) {
  std::function<void(ConnectionState)> dropped;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = listeners_.find(id);
    if (it == listeners_.end()) return;
    dropped = std::move(it->second);
    listeners_.erase(it);
  }
  if (dispatching_.load() != std::this_thread::get_id()) {
    // Waits for a fan-out in progress; later ones no longer see `id`.
    std::lock_guard<std::mutex> wait(dispatch_mu_);
  }
}

void Events::notify(ConnectionState state) {
  std::lock_guard<std::mutex> dispatch(dispatch_mu_);
  dispatching_.store(std::this_thread::get_id());
  std::vector<std::uint64_t> ids;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& entry : listeners_) ids.push_back(entry.first);
  }
  for (auto id : ids) {
    std::function<void(ConnectionState)> listener;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = listeners_.find(id);
      if (it == listeners_.end()) continue;  // unsubscribed by an earlier listener
      listener = it->second;
    }
    try {
      listener(state);
    } catch (...) {
      // A listener must not throw; nothing can be reported from here.
    }
  }
  dispatching_.store(std::thread::id{});
}

std::uint64_t Events::add_watch(const std::shared_ptr<WatchCore>& core) {
  std::lock_guard<std::mutex> lock(mu_);
  const auto id = next_id_++;
  watches_.emplace(id, WatchEntry{core, nullptr});
  return id;
}

void Events::bind_subscription(std::uint64_t id, natsSubscription* sub) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = watches_.find(id);
  if (it == watches_.end()) return;
  it->second.sub = sub;
  watch_by_sub_[sub] = id;
}

void Events::remove_watch(std::uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = watches_.find(id);
  if (it == watches_.end()) return;
  if (it->second.sub != nullptr) watch_by_sub_.erase(it->second.sub);
  watches_.erase(it);
}

void Events::bury(std::shared_ptr<WatchCore> core) {
  std::lock_guard<std::mutex> lock(mu_);
  graveyard_.push_back(std::move(core));
}

void Events::hold_self(std::shared_ptr<Events> self) {
  std::lock_guard<std::mutex> lock(mu_);
  self_ = std::move(self);
}

void Events::release_self() {
  std::shared_ptr<Events> self;
  {
    std::lock_guard<std::mutex> lock(mu_);
    self = std::move(self_);
  }
  // `self` may be the last reference: this object dies here, after mu_ is
  // released.
}

void Events::fail_all(KvOutcome outcome, const std::string& message) {
  std::vector<std::shared_ptr<WatchCore>> cores;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& entry : watches_) {
      if (auto core = entry.second.core.lock()) cores.push_back(std::move(core));
    }
  }
  for (const auto& core : cores) {
    core->fail(outcome,
               "watch of key \"" + core->key() + "\" in bucket \"" + core->bucket() + "\": " + message);
  }
}

void Events::disconnected() { notify(ConnectionState::disconnected); }

void Events::reconnected() {
  // Messages may have been lost while disconnected, and a restarted server
  // may have lost the watch's ephemeral consumer: every watch is recreated.
  fail_all(KvOutcome::disconnected,
           "the connection to " + url_ + " was lost and re-established; recreate the watch");
  notify(ConnectionState::connected);
}

void Events::close(const std::string& why) {
  closed_.store(true);
  fail_all(KvOutcome::closed, why);
  notify(ConnectionState::closed);
}

void Events::check_subscriptions() {
  std::vector<std::pair<std::shared_ptr<WatchCore>, std::string>> failed;
  {
    // Under mu_: a NatsWatch removes itself before destroying its
    // subscription, so every `sub` here is still alive.
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& entry : watches_) {
      natsSubscription* sub = entry.second.sub;
      if (sub == nullptr) continue;
      std::string why;
      std::int64_t dropped = 0;
      if (!natsSubscription_IsValid(sub)) {
        why = "the subscription was closed";
      } else if (natsSubscription_GetDropped(sub, &dropped) == NATS_OK && dropped > 0) {
        why = "slow consumer: " + std::to_string(dropped) + " message(s) dropped";
      } else {
        continue;
      }
      if (auto core = entry.second.core.lock()) failed.emplace_back(std::move(core), std::move(why));
    }
  }
  for (const auto& [core, why] : failed) {
    core->fail(KvOutcome::other,
               "watch of key \"" + core->key() + "\" in bucket \"" + core->bucket() + "\": " + why);
  }
}

void Events::on_disconnected(natsConnection*, void* closure) {
  static_cast<Events*>(closure)->disconnected();
}

void Events::on_reconnected(natsConnection*, void* closure) { static_cast<Events*>(closure)->reconnected(); }

void Events::on_closed(natsConnection*, void* closure) {
  auto* self = static_cast<Events*>(closure);
  self->close("the connection to " + self->url_ + " is closed");
  self->release_self();  // nats.c runs no callback of this connection after this one
}

void Events::on_error(natsConnection*, natsSubscription* sub, natsStatus err, void* closure) {
  auto* self = static_cast<Events*>(closure);
  if (sub == nullptr) return;  // connection-level: surfaces through the calls and state callbacks
  std::shared_ptr<WatchCore> core;
  {
    std::lock_guard<std::mutex> lock(self->mu_);
    auto it = self->watch_by_sub_.find(sub);
    if (it == self->watch_by_sub_.end()) return;
    auto w = self->watches_.find(it->second);
    if (w != self->watches_.end()) core = w->second.core.lock();
  }
  if (!core) return;
  KvOutcome outcome = KvOutcome::other;
  if (err == NATS_NOT_PERMITTED) outcome = KvOutcome::permission_denied;
  if (err == NATS_MISSED_HEARTBEAT) outcome = KvOutcome::timeout;
  std::string text = natsStatus_GetText(err);
  if (err == NATS_MISSED_HEARTBEAT) text += " (the server hosting the watch's consumer went silent)";
  core->fail(outcome, "watch of key \"" + core->key() + "\" in bucket \"" + core->bucket() +
                          "\": subscription error: " + text);
}

void Deferred::shutdown() noexcept {
  decltype(state_->tasks) dropped;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->stop = true;
    dropped.swap(state_->tasks);
  }
  state_->cv.notify_all();
  dropped.clear();  // outside the lock: closures may hold the last reference of a watch
  std::thread thread;
  {
    // Taken out under the lock, joined outside it: a running task may
    // post(), which takes this lock too.
    std::lock_guard<std::mutex> lock(start_mu_);
    stopped_ = true;
    thread = std::move(thread_);
  }
  if (!thread.joinable()) return;
  if (thread.get_id() == std::this_thread::get_id()) {
    thread.detach();  // the loop only touches its own State, which it co-owns
  } else {
    thread.join();
  }
}

void Deferred::post(std::function<void()> task, Duration delay) {
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (state_->stop) return;
    const auto due = std::chrono::steady_clock::now() + delay;
    state_->tasks.emplace(std::make_pair(due, state_->next_seq++), std::move(task));
  }
  state_->cv.notify_one();
  std::lock_guard<std::mutex> lock(start_mu_);
  if (!stopped_ && !thread_.joinable()) thread_ = std::thread(&Deferred::run, state_);
}

void Deferred::run(const std::shared_ptr<State>& state) {
  std::unique_lock<std::mutex> lock(state->mu);
  while (!state->stop) {
    if (state->tasks.empty()) {
      state->cv.wait(lock);
      continue;
    }
    auto first = state->tasks.begin();
    const auto due = first->first.first;  // a copy: the node may go while waiting
    if (due > std::chrono::steady_clock::now()) {
      state->cv.wait_until(lock, due);
      continue;
    }
    auto task = std::move(first->second);
    state->tasks.erase(first);
    lock.unlock();
    try {
      task();
    } catch (...) {
      // Tasks do not throw; nothing could report it here.
    }
    task = nullptr;  // releases captures outside the lock
    lock.lock();
  }
  lock.unlock();
  nats_ReleaseThreadMemory();
}

Core::~Core() {
  deferred.shutdown();  // its tasks use the handles below
  std::vector<natsSubscription*> left;
  {
    std::lock_guard<std::mutex> lock(retired_mu_);
    left.swap(retired_);
  }
  // An adopted connection may still be up, its reader running: free only
  // what it has provably passed (while `js` still keeps `nc` valid).
  bool reader_done = owns_connection || nc == nullptr || natsConnection_IsClosed(nc);
  if (!reader_done && !left.empty()) reader_done = unsubscribe_and_flush(left);
  if (js != nullptr) jsCtx_Destroy(js);
  // Closing joins the reader (an owned connection was closed by its
  // backend already). A subscription holds a reference on its connection.
  if (nc != nullptr && owns_connection) natsConnection_Destroy(nc);
  if (reader_done) {
    for (natsSubscription* sub : left) natsSubscription_Destroy(sub);
  }
  // Otherwise they stay allocated: the application's reader may be inside
  // one, and nothing can tell when it is not.
}

void Core::retire(natsSubscription* sub) {
  if (sub == nullptr) return;
  bool post = false;
  {
    std::lock_guard<std::mutex> lock(retired_mu_);
    retired_.push_back(sub);
    post = !std::exchange(reap_posted_, true);
  }
  if (post) deferred.post([this] { reap(); });
}

void Core::reap() {
  // Runs on the Deferred thread, which ~Core stops before anything else.
  std::vector<natsSubscription*> batch;
  {
    std::lock_guard<std::mutex> lock(retired_mu_);
    batch.swap(retired_);
  }
  const bool done = natsConnection_IsClosed(nc) || unsubscribe_and_flush(batch);
  if (done) {
    for (natsSubscription* sub : batch) natsSubscription_Destroy(sub);
    batch.clear();
  }
  std::lock_guard<std::mutex> lock(retired_mu_);
  retired_.insert(retired_.end(), batch.begin(), batch.end());
  if (retired_.empty()) {
    reap_posted_ = false;
    return;
  }
  // Down (retry in a second), or more were retired meanwhile (now).
  deferred.post([this] { reap(); },
                done ? Deferred::Duration::zero() : Deferred::Duration(std::chrono::seconds(1)));
}

bool Core::unsubscribe_and_flush(const std::vector<natsSubscription*>& subs) {
  // The connection's own state, not gate(): an adopted connection the
  // library has closed for itself is still the application's, up, and its
  // reader still runs past these subscriptions.
  if (natsConnection_Status(nc) != NATS_CONN_STATUS_CONNECTED) return false;
  for (natsSubscription* sub : subs) {
    // At or below the count already delivered, an auto-unsubscribe removes
    // the subscription from the connection at once and sends UNSUB,
    // without deleting the consumer. One that never delivered a message
    // stays until its Destroy (the narrow window nats.c 3.4.1 leaves).
    std::int64_t delivered = 0;
    if (natsSubscription_IsValid(sub) && natsSubscription_GetDelivered(sub, &delivered) == NATS_OK &&
        delivered > 0) {
      natsSubscription_AutoUnsubscribe(sub, 1);
    }
  }
  return natsConnection_FlushTimeout(nc, 1000) == NATS_OK;
}

KvOutcome Core::gate() const noexcept {
  if (events->closed()) return KvOutcome::closed;
  switch (natsConnection_Status(nc)) {
    case NATS_CONN_STATUS_CONNECTED:
    case NATS_CONN_STATUS_DRAINING_SUBS:
    case NATS_CONN_STATUS_DRAINING_PUBS:
      return KvOutcome::ok;
    case NATS_CONN_STATUS_CLOSED:
      return KvOutcome::closed;
    default:
      return KvOutcome::disconnected;
  }
}

std::string Core::server_url() const {
  char buf[512] = {0};
  if (natsConnection_GetConnectedUrl(nc, buf, sizeof(buf)) == NATS_OK && buf[0] != '\0')
    return redact_url(buf);
  return events->url();
}

namespace {

std::vector<std::string> split_urls(const std::string& text) {
  std::vector<std::string> out;
  std::string current;
  auto flush = [&] {
    auto b = current.find_first_not_of(" \t");
    auto e = current.find_last_not_of(" \t");
    if (b != std::string::npos) out.push_back(current.substr(b, e - b + 1));
    current.clear();
  };
  for (char c : text) {
    if (c == ',') {
      flush();
    } else {
      current += c;
    }
  }
  flush();
  return out;
}

std::int64_t to_ms(std::chrono::milliseconds d) { return std::max<std::int64_t>(1, d.count()); }

struct StatisticsDeleter {
  void operator()(natsStatistics* p) const noexcept { natsStatistics_Destroy(p); }
};
using StatisticsPtr = std::unique_ptr<natsStatistics, StatisticsDeleter>;

/// Learns the state of an adopted connection, whose callbacks belong to the
/// application, by polling it on the core's Deferred thread (no thread of
/// its own), and drives the core's Events as the callbacks would.
///
/// A reconnect is seen either as a poll that finds the connection down and
/// a later one that finds it up, or, when both happened between two polls,
/// as a change of the client's reconnect counter. The status is read before
/// the counter: nats.c increments the counter before it marks the
/// connection connected, under the same lock, so a poll that sees the
/// connection up also sees the counter of that reconnect.
class StatePoller : public std::enable_shared_from_this<StatePoller> {
 public:
  StatePoller(std::weak_ptr<Core> core, std::chrono::milliseconds every, StatisticsPtr stats)
      : core_(std::move(core)), every_(every), stats_(std::move(stats)) {}

  /// Takes the connection's current state as the baseline and schedules
  /// the first poll.
  void start(Core& core) {
    phase_ = phase_of(natsConnection_Status(core.nc));
    reconnects_ = reconnect_count(core.nc, 0);
    schedule(core);
  }

  /// The backend is gone: the next poll tells the watches and listeners
  /// that are left that the connection is closed for them, then polling
  /// ends.
  void detach() noexcept { detached_.store(true); }

 private:
  enum class Phase { up, down, closed };

  static Phase phase_of(natsConnStatus status) noexcept {
    switch (status) {
      case NATS_CONN_STATUS_CONNECTED:
      case NATS_CONN_STATUS_DRAINING_SUBS:
      case NATS_CONN_STATUS_DRAINING_PUBS:
        return Phase::up;
      case NATS_CONN_STATUS_CLOSED:
        return Phase::closed;
      default:
        return Phase::down;
    }
  }

  std::uint64_t reconnect_count(natsConnection* nc, std::uint64_t fallback) const {
    std::uint64_t count = fallback;
    if (natsConnection_GetStats(nc, stats_.get()) != NATS_OK ||
        natsStatistics_GetCounts(stats_.get(), nullptr, nullptr, nullptr, nullptr, &count) != NATS_OK) {
      return fallback;
    }
    return count;
  }

  void schedule(Core& core) {
    core.deferred.post([self = shared_from_this()] { self->poll(); }, every_);
  }

  void poll() {
    // Strong for the whole poll: a watch handler or listener called below
    // may drop what were the last other references.
    auto core = core_.lock();
    if (!core) return;
    Events& events = *core->events;
    if (detached_.load()) {
      events.close("the leader::Connection that adopted the connection to " + events.url() +
                   " was destroyed");
      return;
    }
    const Phase now = phase_of(natsConnection_Status(core->nc));
    if (now == Phase::closed) {
      events.close("the application closed its connection to " + events.url());
      return;
    }
    const std::uint64_t reconnects = reconnect_count(core->nc, reconnects_);
    const bool reconnected_between_polls = reconnects != reconnects_;
    reconnects_ = reconnects;
    if (now == Phase::down) {
      if (phase_ == Phase::up) events.disconnected();
    } else if (phase_ == Phase::down) {
      events.reconnected();
    } else if (reconnected_between_polls) {
      // Down and up again between two polls: the listeners hear both.
      events.disconnected();
      events.reconnected();
    }
    phase_ = now;
    if (now == Phase::up) events.check_subscriptions();
    schedule(*core);
  }

  const std::weak_ptr<Core> core_;
  const std::chrono::milliseconds every_;
  // Used by the Deferred thread only, after start().
  StatisticsPtr stats_;
  Phase phase_ = Phase::up;
  std::uint64_t reconnects_ = 0;
  std::atomic<bool> detached_{false};
};

/// The Backend over a connection the library created (`poller_` null) or
/// adopted. Everything but the connection's lifetime and the source of its
/// events is shared.
class NatsBackend final : public Backend {
 public:
  NatsBackend(std::shared_ptr<Core> core, std::shared_ptr<StatePoller> poller,
              std::chrono::milliseconds ping_interval = std::chrono::milliseconds{0})
      : core_(std::move(core)), poller_(std::move(poller)), ping_interval_(ping_interval) {}

  std::chrono::milliseconds ping_interval() const noexcept override { return ping_interval_; }

  ~NatsBackend() override {
    // Stores and watches still alive keep the handles valid and see
    // `closed` from now on; live watches get one error.
    if (core_->owns_connection) {
      natsConnection_Close(core_->nc);
    } else {
      // The application's connection stays open: the library just stops
      // using it.
      core_->events->mark_closed();
      if (poller_) poller_->detach();
    }
  }

  OpenResult open_bucket(const BucketSpec& spec, Duration timeout) override;

  ConnectionState state() const noexcept override {
    switch (core_->gate()) {
      case KvOutcome::ok:
        return ConnectionState::connected;
      case KvOutcome::closed:
        return ConnectionState::closed;
      default:
        break;
    }
    return natsConnection_Status(core_->nc) == NATS_CONN_STATUS_DISCONNECTED ? ConnectionState::disconnected
                                                                             : ConnectionState::reconnecting;
  }

  std::uint64_t subscribe_state(std::function<void(ConnectionState)> listener) override {
    return core_->events->subscribe(std::move(listener));
  }

  void unsubscribe_state(std::uint64_t id) override { core_->events->unsubscribe(id); }

 private:
  OpenResult fail(Errc errc, std::string message) const {
    OpenResult r;
    r.error = make_error_code(errc);
    r.message = std::move(message);
    return r;
  }
  OpenResult fail_call(const BucketSpec& spec, const char* what, const Failure& f) const;
  /// Checks an existing bucket's stream against `spec`.
  OpenResult check_existing(const BucketSpec& spec, const jsStreamInfo& info) const;

  std::shared_ptr<Core> core_;
  std::shared_ptr<StatePoller> poller_;
  std::chrono::milliseconds ping_interval_{0};
};

OpenResult NatsBackend::fail_call(const BucketSpec& spec, const char* what, const Failure& failure) const {
  const Failure f = with_permission_violation(failure, core_->nc, "open", {}, "KV_" + spec.name);
  if (f.status == NATS_NO_RESPONDERS || f.js_code == JSNotEnabledForAccountErr ||
      f.js_code == JSNotEnabledErr) {
    return fail(Errc::jetstream_unavailable,
                "JetStream is not available at " + core_->server_url() +
                    " (is the server started with -js?): " + what + " of bucket \"" + spec.name +
                    "\" failed: " + describe(classify(f, natsConnection_Status(core_->nc)), f));
  }
  const auto outcome = classify(f, natsConnection_Status(core_->nc));
  OpenResult r;
  r.error = to_error_code(outcome == KvOutcome::ok ? KvOutcome::other : outcome);
  r.message = std::string(what) + " of bucket \"" + spec.name + "\" at " + core_->server_url() + ": " +
              describe(outcome, f);
  return r;
}

OpenResult NatsBackend::check_existing(const BucketSpec& spec, const jsStreamInfo& info) const {
  if (info.Config == nullptr) {
    return fail(Errc::other, "bucket \"" + spec.name + "\": the server returned no stream configuration");
  }
  const std::int64_t want_ttl = spec.ttl.count();
  if (info.Config->MaxAge != want_ttl) {
    return fail(Errc::bucket_mismatch, "bucket \"" + spec.name + "\" exists with ttl " +
                                           format_ttl(info.Config->MaxAge) + ", config wants " +
                                           format_ttl(want_ttl) +
                                           " (all elections of a bucket share its TTL: use another bucket, "
                                           "or delete this one)");
  }
  const jsStorageType want_storage = spec.storage == Storage::memory ? js_MemoryStorage : js_FileStorage;
  if (info.Config->Storage != want_storage) {
    auto name = [](jsStorageType t) { return t == js_MemoryStorage ? "memory" : "file"; };
    return fail(Errc::bucket_mismatch, "bucket \"" + spec.name + "\" exists with " +
                                           name(info.Config->Storage) + " storage, config wants " +
                                           name(want_storage) + " (use another bucket, or delete this one)");
  }
  OpenResult r;
  r.store = make_store(core_, spec.name);
  r.epoch = info.Created > 0 ? static_cast<std::uint64_t>(info.Created / 1000000) : 0;
  return r;
}

OpenResult NatsBackend::open_bucket(const BucketSpec& spec, Duration timeout) {
  try {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    const std::string stream = "KV_" + spec.name;

    const auto gate = core_->gate();
    if (gate != KvOutcome::ok) {
      return fail(gate == KvOutcome::closed ? Errc::closed : Errc::disconnected,
                  "cannot open bucket \"" + spec.name + "\": not connected to " + core_->server_url() + " (" +
                      to_string(gate) + ")");
    }

    // In a cluster, requests about a stream that is being created (by
    // another candidate starting at the same moment) or that is electing
    // its leader can go unanswered: seen with three candidates starting
    // together on an R3 bucket, where one waited out its whole
    // start_timeout on a single stream info or create. So every request is
    // bounded by an attempt, and one that timed out is tried again while
    // the deadline allows.
    constexpr std::int64_t kAttemptMs = 2000;
    auto attempt_ms = [&] { return std::max<std::int64_t>(1, std::min(kAttemptMs, ms_left(deadline))); };
    auto retry = [&](const Failure& f) { return f.status == NATS_TIMEOUT && ms_left(deadline) > 0; };
    auto read_info = [&](StreamInfoPtr* out) {
      Failure f;
      do {
        jsOptions jo;
        jsOptions_Init(&jo);
        jo.Wait = attempt_ms();
        jsStreamInfo* si = nullptr;
        jsErrCode jerr = static_cast<jsErrCode>(0);
        natsStatus s = js_GetStreamInfo(&si, core_->js, stream.c_str(), &jo, &jerr);
        out->reset(si);
        f = capture(s, static_cast<int>(jerr));
      } while (retry(f));
      return f;
    };

    kvConfig cfg;
    kvConfig_Init(&cfg);
    cfg.Bucket = spec.name.c_str();
    cfg.History = 1;
    cfg.TTL = spec.ttl.count();
    cfg.StorageType = spec.storage == Storage::memory ? js_MemoryStorage : js_FileStorage;
    cfg.Replicas = spec.replicas;

    for (;;) {
      StreamInfoPtr info;
      Failure f = read_info(&info);
      if (f.status == NATS_OK && info) return check_existing(spec, *info);
      if (f.status != NATS_NOT_FOUND && f.js_code != JSStreamNotFoundErr) {
        return fail_call(spec, "reading the configuration", f);
      }
      if (ms_left(deadline) == 0) {
        return fail(Errc::timeout, "creating bucket \"" + spec.name + "\": no time left");
      }

      // Missing: create it. js_CreateKeyValue waits as long as its context
      // says: a context of its own, bounded by the attempt. Creating an
      // existing bucket with the same configuration succeeds.
      jsOptions jo;
      jsOptions_Init(&jo);
      jo.Wait = attempt_ms();
      jsCtx* raw_js = nullptr;
      natsStatus s = natsConnection_JetStream(&raw_js, core_->nc, &jo);
      JsCtxPtr js(raw_js);
      if (s != NATS_OK) return fail_call(spec, "creating a JetStream context for", capture(s));
      kvStore* raw_kv = nullptr;
      s = js_CreateKeyValue(&raw_kv, js.get(), &cfg);
      KvStorePtr kv(raw_kv);
      if (s == NATS_OK) {
        // The stream's creation time is the fencing epoch: read it back.
        f = read_info(&info);
        if (f.status == NATS_OK && info) return check_existing(spec, *info);
        return fail_call(spec, "reading the new bucket's creation time for", f);
      }
      const Failure created = capture(s);
      if (retry(created)) continue;  // look again: it may exist now
      if (created.status == NATS_NO_RESPONDERS || ms_left(deadline) == 0) {
        return fail_call(spec, "creating", created);
      }
      // Someone else may have created it meanwhile, possibly with another
      // configuration ("Existing configuration is different"): report what
      // is there.
      f = read_info(&info);
      if (f.status == NATS_OK && info) return check_existing(spec, *info);
      return fail_call(spec, "creating", created);
    }
  } catch (const std::exception& e) {
    return fail(Errc::other, "opening bucket \"" + spec.name + "\": " + e.what());
  } catch (...) {
    return fail(Errc::other, "opening bucket \"" + spec.name + "\": unknown error");
  }
}

// Lock spin count 0: nats.c's default spins on a contended mutex before it
// sleeps, and the I/O threads' blocking requests contend on the connection's
// mutex all the time; on a small machine the spinning takes the CPU the
// holder needs (10,000 roles at TTL 10 s: 47 % of a core with the default,
// 42 % without, medians of 3 runs of leader-bench-e2e scale). A no-op when
// the application opened nats.c first.
natsStatus open_library() {
  static std::once_flag once;
  static natsStatus status = NATS_OK;
  std::call_once(once, [] { status = nats_Open(0); });
  return status;
}

}  // namespace
}  // namespace nats

std::shared_ptr<Backend> make_nats_backend(const ConnectionOptions& options, std::error_code* error,
                                           std::string* message) {
  using namespace nats;
  auto set_error = [&](Errc errc, std::string text) -> std::shared_ptr<Backend> {
    if (error != nullptr) *error = make_error_code(errc);
    if (message != nullptr) *message = std::move(text);
    return nullptr;
  };
  try {
    // Messages name the URL; credentials in it never leave this function.
    const std::string where = "\"" + redact_url(options.url) + "\"";
    natsStatus s = open_library();
    if (s != NATS_OK) {
      return set_error(Errc::other,
                       std::string("cannot initialize the NATS client library: ") + natsStatus_GetText(s));
    }

    const auto urls = split_urls(options.url);
    if (urls.empty())
      return set_error(Errc::other, "no NATS server URL given (ConnectionOptions::url is empty)");

    natsOptions* raw_opts = nullptr;
    s = natsOptions_Create(&raw_opts);
    OptionsPtr opts(raw_opts);
    auto events = std::make_shared<Events>(redact_url(options.url));
    std::vector<const char*> url_ptrs;
    for (const auto& u : urls) url_ptrs.push_back(u.c_str());
    if (s == NATS_OK)
      s = natsOptions_SetServers(opts.get(), url_ptrs.data(), static_cast<int>(url_ptrs.size()));
    if (s == NATS_OK) s = natsOptions_SetName(opts.get(), options.name.c_str());
    if (s == NATS_OK) s = natsOptions_SetTimeout(opts.get(), to_ms(options.connect_timeout));
    if (s == NATS_OK) s = natsOptions_SetReconnectWait(opts.get(), to_ms(options.reconnect_wait));
    if (s == NATS_OK) s = natsOptions_SetMaxReconnect(opts.get(), -1);
    if (s == NATS_OK) s = natsOptions_SetPingInterval(opts.get(), to_ms(options.ping_interval));
    if (s == NATS_OK) s = natsOptions_SetMaxPingsOut(opts.get(), 2);
    if (s == NATS_OK) s = natsOptions_SetRetryOnFailedConnect(opts.get(), false, nullptr, nullptr);
    // One shared delivery pool instead of a thread per subscription (watch).
    if (s == NATS_OK) s = natsOptions_UseGlobalMessageDelivery(opts.get(), true);
    if (s == NATS_OK) s = natsOptions_SetDisconnectedCB(opts.get(), &Events::on_disconnected, events.get());
    if (s == NATS_OK) s = natsOptions_SetReconnectedCB(opts.get(), &Events::on_reconnected, events.get());
    if (s == NATS_OK) s = natsOptions_SetClosedCB(opts.get(), &Events::on_closed, events.get());
    if (s == NATS_OK) s = natsOptions_SetErrorHandler(opts.get(), &Events::on_error, events.get());
    if (s != NATS_OK) {
      const auto f = capture(s);
      return set_error(Errc::other,
                       "invalid connection options for " + where + ": " + describe(KvOutcome::other, f));
    }
    if (std::string rejected; !apply_security(opts.get(), options, &rejected)) {
      return set_error(Errc::other, "invalid connection options for " + where + ": " + rejected);
    }

    auto core = std::make_shared<Core>();
    core->events = events;
    // Held before the connect, so that no callback can find it gone, not
    // even one that runs before natsConnection_Connect returns; released by
    // the closed callback.
    events->hold_self(events);
    s = natsConnection_Connect(&core->nc, opts.get());
    if (s != NATS_OK) {
      const auto f = capture(s);
      // No callback runs for a connection that never connected (nats.c
      // releases it without closing it).
      core->nc = nullptr;
      events->release_self();
      const ConnectFailure why = explain_connect_failure(s, f.text, options);
      const std::string status_text = natsStatus_GetText(f.status);
      const std::string detail = f.text.empty() || f.text == status_text ? "" : " (" + f.text + ")";
      return set_error(why.errc,
                       "cannot connect to NATS at " + where + ": " + status_text + detail + why.hint);
    }

    jsOptions jo;
    jsOptions_Init(&jo);
    s = natsConnection_JetStream(&core->js, core->nc, &jo);
    if (s != NATS_OK) {
      const auto f = capture(s);
      core->js = nullptr;
      natsConnection_Close(core->nc);
      return set_error(Errc::other, "cannot create a JetStream context on " + where + ": " +
                                        describe(KvOutcome::other, f));
    }
    return std::make_shared<NatsBackend>(std::move(core), nullptr, options.ping_interval);
  } catch (const std::exception& e) {
    return set_error(Errc::other, std::string("cannot connect to NATS: ") + e.what());
  } catch (...) {
    return set_error(Errc::other, "cannot connect to NATS: unknown error");
  }
}

std::shared_ptr<Backend> make_adopted_nats_backend(natsConnection* nc, const ConnectionOptions& /*options*/,
                                                   std::chrono::milliseconds state_poll,
                                                   std::error_code* error, std::string* message) {
  using namespace nats;
  auto set_error = [&](Errc errc, std::string text) -> std::shared_ptr<Backend> {
    if (error != nullptr) *error = make_error_code(errc);
    if (message != nullptr) *message = std::move(text);
    return nullptr;
  };
  try {
    if (nc == nullptr)
      return set_error(Errc::other, "no NATS connection given to adopt (null natsConnection*)");
    if (state_poll.count() <= 0) {
      return set_error(Errc::other,
                       "state_poll " + std::to_string(state_poll.count()) + "ms must be positive");
    }
    if (natsConnection_Status(nc) == NATS_CONN_STATUS_CLOSED) {
      return set_error(Errc::closed,
                       "cannot adopt a closed NATS connection (the application closed it, or it gave up "
                       "reconnecting)");
    }
    char buf[512] = {0};
    std::string url = "the application's NATS server";
    if (natsConnection_GetConnectedUrl(nc, buf, sizeof(buf)) == NATS_OK && buf[0] != '\0') {
      url = redact_url(buf);
    }

    natsStatistics* raw_stats = nullptr;
    natsStatus s = natsStatistics_Create(&raw_stats);
    StatisticsPtr stats(raw_stats);
    if (s != NATS_OK) {
      const auto f = capture(s);
      return set_error(Errc::other,
                       "cannot adopt the NATS connection to " + url + ": " + describe(KvOutcome::other, f));
    }

    auto core = std::make_shared<Core>();
    core->nc = nc;
    core->owns_connection = false;
    core->events = std::make_shared<Events>(url);
    jsOptions jo;
    jsOptions_Init(&jo);
    s = natsConnection_JetStream(&core->js, nc, &jo);
    if (s != NATS_OK) {
      const auto f = capture(s);
      core->js = nullptr;
      return set_error(Errc::other, "cannot create a JetStream context on the adopted connection to " + url +
                                        ": " + describe(KvOutcome::other, f));
    }
    auto poller = std::make_shared<StatePoller>(core, state_poll, std::move(stats));
    poller->start(*core);
    return std::make_shared<NatsBackend>(std::move(core), std::move(poller));
  } catch (const std::exception& e) {
    return set_error(Errc::other, std::string("cannot adopt the NATS connection: ") + e.what());
  } catch (...) {
    return set_error(Errc::other, "cannot adopt the NATS connection: unknown error");
  }
}

}  // namespace leader::detail
