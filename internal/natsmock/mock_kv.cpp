#include "natsmock/mock_kv.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <utility>

namespace leader::natsmock {

using detail::Duration;
using detail::EntryOp;
using detail::KvEntry;
using detail::KvOutcome;
using detail::KvResult;
using detail::TimePoint;
using detail::WatchEvent;

namespace impl {

namespace {

// How many messages per key are kept: the latest and the one before it
// (what a lagging follower replica may still serve).
constexpr std::size_t kKeptMessages = 2;

}  // namespace

struct Message {
  KvEntry entry;
  TimePoint written;
};

struct Bucket {
  detail::BucketSpec spec;
  std::uint64_t epoch = 0;  // "stream creation time": grows with each (re-)creation
  std::uint64_t last_seq = 0;
  std::map<std::string, std::deque<Message>> keys;  // oldest first
};

// One watch's delivery state. `handler` runs only with `delivery` held and
// `alive` true, so once the watch's destructor has set `alive` under
// `delivery`, the handler is never called again. Events are queued under the
// server lock (so a watch's queue is in revision order) and delivered after
// it is released by whichever writing thread gets `delivery` first.
struct WatchCore {
  std::string bucket;
  std::string key;   // empty with `all`
  bool all = false;  // every key of the bucket
  std::shared_ptr<ClientCore> client;
  detail::WatchHandler handler;

  std::recursive_mutex delivery;  // recursive: the handler may destroy its watch
  bool alive = true;              // guarded by delivery
  std::thread::id delivering;     // guarded by delivery: thread inside handler

  std::mutex queue_mu;  // leaf lock
  std::deque<WatchEvent> queue;
};

using Drains = std::vector<std::shared_ptr<WatchCore>>;

enum class Expect {
  any,             // unconditional (also ExpectLastSubjectSeq = 0: "unset")
  none,            // ExpectNoMessage
  none_or_marker,  // kvStore_Create: no message, or retry once over a marker
  revision,        // ExpectLastSubjectSeq = rev
};

struct PendingWrite {
  std::string op;
  std::string bucket;
  std::string key;
  std::string value;
  EntryOp entry_op = EntryOp::put;
  Expect expect = Expect::any;
  std::uint64_t rev = 0;
  std::optional<std::uint64_t> expected;  // as logged
};

struct ServerCore {
  explicit ServerCore(const detail::Clock& c) : clock(c) {}

  const detail::Clock& clock;
  mutable std::mutex mu;
  mutable std::condition_variable cv;  // hangs and hang counts
  std::atomic<bool> shutdown{false};
  bool jetstream = true;
  std::uint64_t next_epoch = 1700000000000;  // ms; each bucket creation takes a later one
  std::map<std::string, Bucket> buckets;
  std::vector<std::shared_ptr<WatchCore>> watches;
  std::vector<CallRecord> log;
};

struct ClientCore {
  ClientCore(std::shared_ptr<ServerCore> s, std::string n) : server(std::move(s)), name(std::move(n)) {}

  const std::shared_ptr<ServerCore> server;
  const std::string name;

  // Guarded by server->mu.
  std::deque<Fault> faults;
  bool disconnected = false;
  bool buffer_writes = true;
  bool no_responders = false;
  bool stale_reads = false;
  bool watch_silent = false;
  bool conflict_entry = true;
  bool closed = false;
  std::optional<KvOutcome> fail_watch;
  std::uint64_t hang_gen = 0;
  std::size_t hung = 0;
  std::vector<PendingWrite> buffer;

  std::atomic<ConnectionState> state{ConnectionState::connected};

  // Held while notifying, so notifications keep the order of the changes
  // and unsubscribe_state waits for a notification in progress.
  std::recursive_mutex listeners_mu;
  std::map<std::uint64_t, std::function<void(ConnectionState)>> listeners;
  std::uint64_t next_listener = 1;
};

namespace {

std::string describe(Duration d) {
  if (d % std::chrono::milliseconds(1) == Duration::zero()) {
    return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) + "ms";
  }
  return std::to_string(d.count()) + "ns";
}

const char* describe(Storage s) { return s == Storage::file ? "file" : "memory"; }

std::string where(const std::string& bucket, const std::string& key) {
  return "key '" + key + "' in bucket '" + bucket + "'";
}

KvResult failure(KvOutcome outcome, std::string message) {
  KvResult r;
  r.outcome = outcome;
  r.message = "natsmock: " + std::move(message);
  return r;
}

std::int64_t wall_ns(TimePoint t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

Bucket* find_bucket(ServerCore& s, const std::string& name) {
  auto it = s.buckets.find(name);
  return it == s.buckets.end() ? nullptr : &it->second;
}

// Drops the key's expired messages (lazy MaxAge); nullptr when none is left.
std::deque<Message>* live_messages(const ServerCore& s, Bucket& b, const std::string& key) {
  auto it = b.keys.find(key);
  if (it == b.keys.end()) return nullptr;
  if (b.spec.ttl > Duration::zero()) {
    const TimePoint now = s.clock.now();
    auto& msgs = it->second;
    while (!msgs.empty() && now >= msgs.front().written + b.spec.ttl) msgs.pop_front();
  }
  if (it->second.empty()) {
    b.keys.erase(it);
    return nullptr;
  }
  return &it->second;
}

bool deliverable(const ServerCore& s, const ClientCore& c) {
  return !s.shutdown && !c.closed && !c.disconnected && !c.watch_silent;
}

void push_event(WatchCore& w, WatchEvent event) {
  std::lock_guard<std::mutex> q(w.queue_mu);
  w.queue.push_back(std::move(event));
}

void enqueue_entry(ServerCore& s, const std::string& bucket, const KvEntry& entry, Drains& drains) {
  for (const auto& w : s.watches) {
    if (w->bucket != bucket || (!w->all && w->key != entry.key) || !deliverable(s, *w->client)) continue;
    WatchEvent ev;
    ev.kind = WatchEvent::Kind::entry;
    ev.entry = entry;
    push_event(*w, std::move(ev));
    drains.push_back(w);
  }
}

// Ends the watches selected by `pred` with an error event (when their
// client can receive one) and unregisters them. The removed references go
// to `dead`, to be released after the server lock.
template <typename Pred>
void fail_watches(ServerCore& s, Pred pred, KvOutcome outcome, const std::string& message, Drains& drains,
                  Drains& dead) {
  auto keep = s.watches.begin();
  for (auto it = s.watches.begin(); it != s.watches.end(); ++it) {
    if (!pred(**it)) {
      if (keep != it) *keep = std::move(*it);
      ++keep;
      continue;
    }
    if (deliverable(s, *(*it)->client)) {
      WatchEvent ev;
      ev.kind = WatchEvent::Kind::error;
      ev.error = outcome;
      ev.message = "natsmock: " + message;
      push_event(**it, std::move(ev));
      drains.push_back(*it);
    }
    dead.push_back(std::move(*it));
  }
  s.watches.erase(keep, s.watches.end());
}

void drain(WatchCore& w) {
  std::lock_guard<std::recursive_mutex> d(w.delivery);
  while (w.alive) {
    WatchEvent ev;
    {
      std::lock_guard<std::mutex> q(w.queue_mu);
      if (w.queue.empty()) break;
      ev = std::move(w.queue.front());
      w.queue.pop_front();
    }
    if (!w.handler) continue;
    const std::thread::id outer = w.delivering;
    w.delivering = std::this_thread::get_id();
    try {
      w.handler(ev);
    } catch (...) {
      // A handler must not throw; the boundary never lets it escape.
    }
    w.delivering = outer;
  }
}

// Called without the server lock.
void drain_all(const Drains& drains) {
  std::vector<WatchCore*> seen;
  for (const auto& w : drains) {
    if (std::find(seen.begin(), seen.end(), w.get()) != seen.end()) continue;
    seen.push_back(w.get());
    drain(*w);
  }
}

struct WriteOutcome {
  KvOutcome outcome = KvOutcome::other;
  std::uint64_t revision = 0;
  std::optional<KvEntry> current;  // the latest message, on conflict
  std::string message;
};

WriteOutcome apply_write(ServerCore& s, Bucket& b, const std::string& key, EntryOp op,
                         const std::string& value, Expect expect, std::uint64_t rev, Drains& drains) {
  WriteOutcome out;
  std::deque<Message>* msgs = live_messages(s, b, key);
  const Message* latest = msgs ? &msgs->back() : nullptr;
  bool pass = false;
  switch (expect) {
    case Expect::any:
      pass = true;
      break;
    case Expect::none:
      pass = latest == nullptr;
      break;
    case Expect::none_or_marker:
      pass = latest == nullptr || latest->entry.op != EntryOp::put;
      break;
    case Expect::revision:
      pass = latest != nullptr && latest->entry.revision == rev;
      break;
  }
  if (!pass) {
    const std::uint64_t current = latest ? latest->entry.revision : 0;
    out.outcome = KvOutcome::conflict;
    if (latest) out.current = latest->entry;
    out.message =
        "natsmock: wrong last sequence: " + std::to_string(current) + " (" + where(b.spec.name, key) + ")";
    return out;
  }
  const TimePoint now = s.clock.now();
  Message m;
  m.entry.key = key;
  m.entry.value = op == EntryOp::put ? value : std::string();
  m.entry.revision = ++b.last_seq;
  m.entry.op = op;
  m.entry.created_ns = wall_ns(now);
  m.written = now;
  auto& stored = b.keys[key];
  if (op == EntryOp::purge) stored.clear();  // a purge rolls up the key's history
  stored.push_back(m);
  while (stored.size() > kKeptMessages) stored.pop_front();
  enqueue_entry(s, b.spec.name, m.entry, drains);
  out.outcome = KvOutcome::ok;
  out.revision = m.entry.revision;
  return out;
}

std::optional<std::string> spec_mismatch(const detail::BucketSpec& have, const detail::BucketSpec& want) {
  if (have.ttl == want.ttl && have.storage == want.storage) return std::nullopt;
  return "bucket '" + have.name + "' exists with ttl " + describe(have.ttl) + " and " +
         describe(have.storage) + " storage, but ttl " + describe(want.ttl) + " and " +
         describe(want.storage) + " storage were requested";
}

// The connection-level answer to a call, if it does not reach the bucket.
std::optional<KvOutcome> gate(const ServerCore& s, const ClientCore& c) {
  if (s.shutdown || c.closed) return KvOutcome::closed;
  if (c.disconnected) return KvOutcome::disconnected;
  if (c.no_responders || !s.jetstream) return KvOutcome::no_responders;
  return std::nullopt;
}

std::optional<Fault> take_fault(ClientCore& c, const std::string& op) {
  for (auto it = c.faults.begin(); it != c.faults.end(); ++it) {
    if (it->op != op && !(it->op == "*" && op != "open")) continue;
    Fault f = *it;
    if (it->times > 0 && --it->times == 0) c.faults.erase(it);
    return f;
  }
  return std::nullopt;
}

void wait_hang(std::unique_lock<std::mutex>& lk, ServerCore& s, ClientCore& c) {
  const std::uint64_t gen = c.hang_gen;
  ++c.hung;
  s.cv.notify_all();
  s.cv.wait(lk, [&] { return c.hang_gen != gen || c.closed || s.shutdown; });
  --c.hung;
  s.cv.notify_all();
}

void record(ServerCore& s, CallRecord rec) {
  if (s.shutdown) return;  // the clock may be gone with the server's owner
  rec.at = s.clock.now();
  s.log.push_back(std::move(rec));
}

void notify(ClientCore& c, ConnectionState state) {
  // Copies: a listener may unsubscribe (destroying its own function).
  const auto listeners = c.listeners;
  for (const auto& [id, fn] : listeners) {
    if (c.listeners.count(id) == 0 || !fn) continue;
    try {
      fn(state);
    } catch (...) {
      // Listeners must not throw; the backend never lets it escape.
    }
  }
}

class MockWatch final : public detail::Watch {
 public:
  MockWatch(std::shared_ptr<ServerCore> server, std::shared_ptr<WatchCore> core)
      : server_(std::move(server)), core_(std::move(core)) {}

  ~MockWatch() override {
    std::shared_ptr<WatchCore> registered;
    {
      std::lock_guard<std::mutex> lk(server_->mu);
      auto& ws = server_->watches;
      auto it = std::find(ws.begin(), ws.end(), core_);
      if (it != ws.end()) {
        registered = std::move(*it);
        ws.erase(it);
      }
    }
    detail::WatchHandler doomed;
    {
      std::lock_guard<std::recursive_mutex> d(core_->delivery);
      core_->alive = false;
      {
        std::lock_guard<std::mutex> q(core_->queue_mu);
        core_->queue.clear();
      }
      // From inside its own handler the handler is still running: keep it.
      if (core_->delivering != std::this_thread::get_id()) doomed = std::move(core_->handler);
    }
  }

 private:
  std::shared_ptr<ServerCore> server_;
  std::shared_ptr<WatchCore> core_;
};

class MockStore final : public detail::KvStore {
 public:
  MockStore(std::shared_ptr<ClientCore> client, std::string bucket)
      : client_(std::move(client)), bucket_(std::move(bucket)) {}

  KvResult get(const std::string& key, Duration) override { return run("get", key, {}, std::nullopt); }

  KvResult create(const std::string& key, const std::string& value, std::optional<std::uint64_t> last_marker,
                  Duration) override {
    return run("create", key, value, last_marker);
  }

  KvResult update(const std::string& key, const std::string& value, std::uint64_t expected,
                  Duration) override {
    return run("update", key, value, expected);
  }

  KvResult erase(const std::string& key, std::uint64_t expected, Duration) override {
    return run("erase", key, {}, expected);
  }

  std::unique_ptr<detail::Watch> watch(const std::string& key, detail::WatchHandler handler,
                                       KvResult* error) override {
    return watch_impl(key, false, std::move(handler), error);
  }

  std::unique_ptr<detail::Watch> watch_all(detail::WatchHandler handler, KvResult* error) override {
    return watch_impl("", true, std::move(handler), error);
  }

 private:
  std::unique_ptr<detail::Watch> watch_impl(const std::string& key, bool all, detail::WatchHandler handler,
                                            KvResult* error) {
    ServerCore& s = *client_->server;
    ClientCore& c = *client_;
    Drains drains;
    std::shared_ptr<WatchCore> w;
    KvResult fail;
    {
      std::lock_guard<std::mutex> lk(s.mu);
      CallRecord rec;
      rec.client = c.name;
      rec.op = all ? "watch_all" : "watch";
      rec.key = key;
      if (auto g = gate(s, c)) {
        fail = failure(*g, std::string("watch of ") + where(bucket_, key) + ": " + detail::to_string(*g));
      } else if (c.fail_watch) {
        fail = failure(*c.fail_watch, std::string("injected ") + detail::to_string(*c.fail_watch) +
                                          " on watch of " + where(bucket_, key));
        c.fail_watch.reset();
      } else if (Bucket* b = find_bucket(s, bucket_); b == nullptr) {
        fail = failure(KvOutcome::not_found, "bucket '" + bucket_ + "' not found");
      } else {
        w = std::make_shared<WatchCore>();
        w->bucket = bucket_;
        w->key = key;
        w->all = all;
        w->client = client_;
        w->handler = std::move(handler);
        std::vector<const std::deque<Message>*> replay;
        if (all) {
          std::vector<std::string> names;  // live_messages() may erase expired keys
          for (const auto& kv : b->keys) names.push_back(kv.first);
          for (const auto& k : names) {
            if (const std::deque<Message>* msgs = live_messages(s, *b, k)) replay.push_back(msgs);
          }
        } else if (const std::deque<Message>* msgs = live_messages(s, *b, key)) {
          replay.push_back(msgs);
          rec.revision = msgs->back().entry.revision;
        }
        if (deliverable(s, c)) {
          for (const auto* msgs : replay) {
            WatchEvent ev;
            ev.entry = msgs->back().entry;
            push_event(*w, std::move(ev));
          }
          WatchEvent done;
          done.kind = WatchEvent::Kind::replay_done;
          push_event(*w, std::move(done));
          drains.push_back(w);
        }
        s.watches.push_back(w);
      }
      rec.outcome = w ? KvOutcome::ok : fail.outcome;
      record(s, std::move(rec));
    }
    if (!w) {
      if (error) *error = std::move(fail);
      return nullptr;
    }
    drain_all(drains);
    return std::make_unique<MockWatch>(client_->server, std::move(w));
  }

  KvResult run(const std::string& op, const std::string& key, const std::string& value,
               std::optional<std::uint64_t> expected) {
    Drains drains;
    KvResult result;
    {
      std::unique_lock<std::mutex> lk(client_->server->mu);
      result = run_locked(lk, op, key, value, expected, drains);
    }
    drain_all(drains);
    return result;
  }

  PendingWrite pending(const std::string& op, const std::string& key, const std::string& value,
                       std::optional<std::uint64_t> expected, bool first_attempt_only) const {
    PendingWrite p;
    p.op = op;
    p.bucket = bucket_;
    p.key = key;
    p.expected = expected;
    if (op == "create") {
      p.entry_op = EntryOp::put;
      p.value = value;
      if (expected) {
        p.expect = Expect::revision;
        p.rev = *expected;
      } else {
        // The reconnect buffer holds only the first publish (ExpectNoMessage);
        // the retry over a marker never happened.
        p.expect = first_attempt_only ? Expect::none : Expect::none_or_marker;
      }
    } else if (op == "update") {
      p.entry_op = EntryOp::put;
      p.value = value;
      // kvStore_Update(last = 0) publishes with ExpectNoMessage.
      p.expect = *expected == 0 ? Expect::none : Expect::revision;
      p.rev = *expected;
    } else {
      p.entry_op = EntryOp::del;
      // ExpectLastSubjectSeq = 0 means "unset": an unconditional delete.
      p.expect = *expected == 0 ? Expect::any : Expect::revision;
      p.rev = *expected;
    }
    return p;
  }

  KvResult run_locked(std::unique_lock<std::mutex>& lk, const std::string& op, const std::string& key,
                      const std::string& value, std::optional<std::uint64_t> expected, Drains& drains) {
    ServerCore& s = *client_->server;
    ClientCore& c = *client_;
    const bool write = op != "get";
    CallRecord rec;
    rec.client = c.name;
    rec.op = op;
    rec.key = key;
    rec.expected = expected;
    if (write && op != "erase") rec.value = value;

    auto done = [&](KvResult r, std::uint64_t logged_rev, bool applied) {
      rec.outcome = r.outcome;
      rec.revision = logged_rev;
      rec.applied = applied;
      record(s, std::move(rec));
      return r;
    };

    if (auto g = gate(s, c)) {
      if (*g == KvOutcome::disconnected && write && c.buffer_writes) {
        c.buffer.push_back(pending(op, key, value, expected, true));
      }
      return done(failure(*g, op + " of " + where(bucket_, key) + ": " + detail::to_string(*g)), 0, false);
    }

    const std::optional<Fault> fault = take_fault(c, op);
    // What the caller is told; the log keeps what the server did.
    auto told = [&fault](KvResult r) {
      if (!fault || !fault->revision) return r;
      if (r.ok() && r.revision != 0) r.revision = *fault->revision;
      if (r.entry) r.entry->revision = *fault->revision;
      return r;
    };
    if (fault && fault->hang) wait_hang(lk, s, c);
    if (fault && fault->outcome != KvOutcome::ok) {
      KvResult r = failure(fault->outcome, std::string("injected ") + detail::to_string(fault->outcome) +
                                               " on " + op + " of " + where(bucket_, key));
      std::uint64_t rev = 0;
      bool applied = false;
      if (write && fault->applied) {
        if (Bucket* b = find_bucket(s, bucket_)) {
          const PendingWrite p = pending(op, key, value, expected, false);
          const WriteOutcome w = apply_write(s, *b, key, p.entry_op, p.value, p.expect, p.rev, drains);
          applied = w.outcome == KvOutcome::ok;
          rev = w.revision;
        }
      }
      return done(std::move(r), rev, applied);
    }

    Bucket* b = find_bucket(s, bucket_);
    if (b == nullptr) {
      return done(failure(KvOutcome::not_found, "bucket '" + bucket_ + "' not found"), 0, false);
    }

    if (!write) {
      const std::deque<Message>* msgs = live_messages(s, *b, key);
      const Message* m = nullptr;
      if (msgs && !c.stale_reads) m = &msgs->back();
      if (msgs && c.stale_reads && msgs->size() >= 2) m = &(*msgs)[msgs->size() - 2];
      if (m == nullptr)
        return done(failure(KvOutcome::not_found, where(bucket_, key) + " not found"), 0, false);
      KvResult r;
      r.outcome = KvOutcome::ok;
      r.entry = m->entry;
      return done(told(std::move(r)), m->entry.revision, false);
    }

    const PendingWrite p = pending(op, key, value, expected, false);
    WriteOutcome w = apply_write(s, *b, key, p.entry_op, p.value, p.expect, p.rev, drains);
    KvResult r;
    r.outcome = w.outcome;
    r.revision = w.revision;
    r.message = std::move(w.message);
    if (w.outcome == KvOutcome::conflict && c.conflict_entry) r.entry = std::move(w.current);
    return done(told(std::move(r)), w.revision, w.outcome == KvOutcome::ok);
  }

  std::shared_ptr<ClientCore> client_;
  std::string bucket_;
};

}  // namespace
}  // namespace impl

using impl::ClientCore;
using impl::Drains;
using impl::ServerCore;

MockClient::MockClient(std::shared_ptr<impl::ServerCore> server, std::string name)
    : core_(std::make_shared<ClientCore>(std::move(server), std::move(name))) {}

MockClient::~MockClient() {
  std::map<std::uint64_t, std::function<void(ConnectionState)>> listeners;
  {
    std::lock_guard<std::recursive_mutex> ll(core_->listeners_mu);
    listeners.swap(core_->listeners);
  }
  ServerCore& s = *core_->server;
  std::lock_guard<std::mutex> lk(s.mu);
  core_->closed = true;
  core_->state = ConnectionState::closed;
  core_->buffer.clear();
  ++core_->hang_gen;
  s.cv.notify_all();
}

const std::string& MockClient::name() const noexcept { return core_->name; }

detail::OpenResult MockClient::open_bucket(const detail::BucketSpec& spec, Duration) {
  ServerCore& s = *core_->server;
  ClientCore& c = *core_;
  detail::OpenResult result;
  std::unique_lock<std::mutex> lk(s.mu);
  CallRecord rec;
  rec.client = c.name;
  rec.op = "open";
  rec.key = spec.name;
  auto fail = [&](KvOutcome logged, Errc code, std::string message) {
    rec.outcome = logged;
    impl::record(s, std::move(rec));
    result.error = make_error_code(code);
    result.message = "natsmock: " + std::move(message);
    return result;
  };

  if (s.shutdown || c.closed) return fail(KvOutcome::closed, Errc::closed, "connection closed");
  if (c.disconnected) {
    return fail(KvOutcome::disconnected, Errc::disconnected,
                "cannot open bucket '" + spec.name + "': disconnected");
  }
  if (c.no_responders) {
    return fail(KvOutcome::no_responders, Errc::no_responders,
                "cannot open bucket '" + spec.name + "': no responders");
  }
  if (!s.jetstream) {
    return fail(KvOutcome::no_responders, Errc::jetstream_unavailable,
                "cannot open bucket '" + spec.name + "': JetStream not enabled");
  }
  const std::optional<Fault> fault = impl::take_fault(c, "open");
  if (fault && fault->hang) impl::wait_hang(lk, s, c);
  if (fault && fault->outcome != KvOutcome::ok) {
    const std::error_code ec = detail::to_error_code(fault->outcome);
    return fail(
        fault->outcome, static_cast<Errc>(ec.value()),
        std::string("injected ") + detail::to_string(fault->outcome) + " opening bucket '" + spec.name + "'");
  }
  if (impl::Bucket* b = impl::find_bucket(s, spec.name)) {
    if (auto mismatch = impl::spec_mismatch(b->spec, spec)) {
      return fail(KvOutcome::other, Errc::bucket_mismatch, *mismatch);
    }
  } else {
    impl::Bucket& created = s.buckets[spec.name];
    created.spec = spec;
    created.epoch = s.next_epoch++;
  }
  rec.outcome = KvOutcome::ok;
  result.epoch = impl::find_bucket(s, spec.name)->epoch;
  impl::record(s, std::move(rec));
  result.store = std::make_shared<impl::MockStore>(core_, spec.name);
  return result;
}

ConnectionState MockClient::state() const noexcept {
  if (core_->server->shutdown) return ConnectionState::closed;
  return core_->state.load();
}

std::uint64_t MockClient::subscribe_state(std::function<void(ConnectionState)> listener) {
  std::lock_guard<std::recursive_mutex> ll(core_->listeners_mu);
  const std::uint64_t id = core_->next_listener++;
  core_->listeners.emplace(id, std::move(listener));
  return id;
}

void MockClient::unsubscribe_state(std::uint64_t id) {
  std::function<void(ConnectionState)> doomed;
  std::lock_guard<std::recursive_mutex> ll(core_->listeners_mu);
  auto it = core_->listeners.find(id);
  if (it == core_->listeners.end()) return;
  doomed = std::move(it->second);
  core_->listeners.erase(it);
}

void MockClient::inject(Fault fault) {
  std::lock_guard<std::mutex> lk(core_->server->mu);
  core_->faults.push_back(std::move(fault));
}

void MockClient::clear_faults() {
  std::lock_guard<std::mutex> lk(core_->server->mu);
  core_->faults.clear();
}

std::size_t MockClient::pending_faults() const {
  std::lock_guard<std::mutex> lk(core_->server->mu);
  return core_->faults.size();
}

void MockClient::set_disconnected(bool disconnected) {
  ServerCore& s = *core_->server;
  ClientCore& c = *core_;
  std::unique_lock<std::recursive_mutex> ll(c.listeners_mu);
  Drains drains;
  Drains dead;
  {
    std::lock_guard<std::mutex> lk(s.mu);
    if (c.closed || c.disconnected == disconnected) return;
    if (disconnected) {
      c.disconnected = true;
      c.state = ConnectionState::disconnected;
    } else {
      std::vector<impl::PendingWrite> buffered;
      buffered.swap(c.buffer);
      for (const auto& p : buffered) {
        CallRecord rec;
        rec.client = c.name;
        rec.op = p.op;
        rec.key = p.key;
        rec.expected = p.expected;
        rec.value = p.value;
        rec.buffered = true;
        if (impl::Bucket* b = impl::find_bucket(s, p.bucket)) {
          const impl::WriteOutcome w =
              impl::apply_write(s, *b, p.key, p.entry_op, p.value, p.expect, p.rev, drains);
          rec.outcome = w.outcome;
          rec.revision = w.revision;
          rec.applied = w.outcome == KvOutcome::ok;
        } else {
          rec.outcome = KvOutcome::not_found;
        }
        impl::record(s, std::move(rec));
      }
      c.disconnected = false;
      c.state = ConnectionState::connected;
      impl::fail_watches(
          s, [&](const impl::WatchCore& w) { return w.client == core_; }, KvOutcome::disconnected,
          "watch lost by a reconnect of client '" + c.name + "': recreate it", drains, dead);
    }
  }
  impl::notify(c, disconnected ? ConnectionState::disconnected : ConnectionState::connected);
  ll.unlock();
  impl::drain_all(drains);
}

void MockClient::set_buffer_writes(bool buffer) {
  std::lock_guard<std::mutex> lk(core_->server->mu);
  core_->buffer_writes = buffer;
}

std::size_t MockClient::buffered_writes() const {
  std::lock_guard<std::mutex> lk(core_->server->mu);
  return core_->buffer.size();
}

void MockClient::set_no_responders(bool no_responders) {
  std::lock_guard<std::mutex> lk(core_->server->mu);
  core_->no_responders = no_responders;
}

void MockClient::set_stale_reads(bool stale) {
  std::lock_guard<std::mutex> lk(core_->server->mu);
  core_->stale_reads = stale;
}

void MockClient::set_watch_silent(bool silent) {
  std::lock_guard<std::mutex> lk(core_->server->mu);
  core_->watch_silent = silent;
}

void MockClient::set_conflict_entry(bool include) {
  std::lock_guard<std::mutex> lk(core_->server->mu);
  core_->conflict_entry = include;
}

void MockClient::fail_watch_create(KvOutcome outcome) {
  std::lock_guard<std::mutex> lk(core_->server->mu);
  core_->fail_watch = outcome;
}

void MockClient::release_hangs() {
  std::lock_guard<std::mutex> lk(core_->server->mu);
  ++core_->hang_gen;
  core_->server->cv.notify_all();
}

std::size_t MockClient::hung_calls() const {
  std::lock_guard<std::mutex> lk(core_->server->mu);
  return core_->hung;
}

bool MockClient::wait_for_hung_calls(std::size_t n, std::chrono::milliseconds limit) const {
  std::unique_lock<std::mutex> lk(core_->server->mu);
  return core_->server->cv.wait_for(lk, limit, [&] { return core_->hung >= n; });
}

void MockClient::close() {
  ServerCore& s = *core_->server;
  ClientCore& c = *core_;
  std::unique_lock<std::recursive_mutex> ll(c.listeners_mu);
  Drains drains;
  Drains dead;
  {
    std::lock_guard<std::mutex> lk(s.mu);
    if (c.closed) return;
    // Error events first: fail_watches skips clients already closed.
    impl::fail_watches(
        s, [&](const impl::WatchCore& w) { return w.client == core_; }, KvOutcome::closed,
        "connection of client '" + c.name + "' closed", drains, dead);
    c.closed = true;
    c.state = ConnectionState::closed;
    c.buffer.clear();
    ++c.hang_gen;
    s.cv.notify_all();
  }
  impl::notify(c, ConnectionState::closed);
  ll.unlock();
  impl::drain_all(drains);
}

MockServer::MockServer(const detail::Clock& clock) : core_(std::make_shared<ServerCore>(clock)) {}

MockServer::~MockServer() {
  Drains dead;
  std::lock_guard<std::mutex> lk(core_->mu);
  core_->shutdown = true;
  dead.swap(core_->watches);
  core_->cv.notify_all();
}

std::shared_ptr<MockClient> MockServer::client(std::string name) {
  return std::make_shared<MockClient>(core_, std::move(name));
}

bool MockServer::create_bucket(const detail::BucketSpec& spec) {
  std::lock_guard<std::mutex> lk(core_->mu);
  if (impl::Bucket* b = impl::find_bucket(*core_, spec.name)) return !impl::spec_mismatch(b->spec, spec);
  impl::Bucket& created = core_->buckets[spec.name];
  created.spec = spec;
  created.epoch = core_->next_epoch++;
  return true;
}

bool MockServer::delete_bucket(const std::string& bucket) {
  Drains drains;
  Drains dead;
  {
    std::lock_guard<std::mutex> lk(core_->mu);
    if (core_->buckets.erase(bucket) == 0) return false;
    impl::fail_watches(
        *core_,
        // A watch of a disconnected client stays: it gets its error on reconnect.
        [&](const impl::WatchCore& w) { return w.bucket == bucket && impl::deliverable(*core_, *w.client); },
        KvOutcome::not_found, "bucket '" + bucket + "' deleted", drains, dead);
  }
  impl::drain_all(drains);
  return true;
}

bool MockServer::has_bucket(const std::string& bucket) const {
  std::lock_guard<std::mutex> lk(core_->mu);
  return core_->buckets.count(bucket) != 0;
}

namespace {

std::uint64_t raw_write(ServerCore& s, const std::string& op, const std::string& bucket,
                        const std::string& key, const std::string& value, EntryOp entry_op) {
  Drains drains;
  std::uint64_t rev = 0;
  {
    std::lock_guard<std::mutex> lk(s.mu);
    impl::Bucket* b = impl::find_bucket(s, bucket);
    if (b == nullptr) return 0;
    rev = impl::apply_write(s, *b, key, entry_op, value, impl::Expect::any, 0, drains).revision;
    CallRecord rec;
    rec.op = op;
    rec.key = key;
    rec.value = value;
    rec.outcome = KvOutcome::ok;
    rec.revision = rev;
    rec.applied = true;
    impl::record(s, std::move(rec));
  }
  impl::drain_all(drains);
  return rev;
}

}  // namespace

std::uint64_t MockServer::put_raw(const std::string& bucket, const std::string& key,
                                  const std::string& value) {
  return raw_write(*core_, "put", bucket, key, value, EntryOp::put);
}

std::uint64_t MockServer::erase_raw(const std::string& bucket, const std::string& key) {
  return raw_write(*core_, "erase", bucket, key, {}, EntryOp::del);
}

std::uint64_t MockServer::purge_raw(const std::string& bucket, const std::string& key) {
  return raw_write(*core_, "purge", bucket, key, {}, EntryOp::purge);
}

std::optional<KvEntry> MockServer::peek(const std::string& bucket, const std::string& key) const {
  std::lock_guard<std::mutex> lk(core_->mu);
  impl::Bucket* b = impl::find_bucket(*core_, bucket);
  if (b == nullptr) return std::nullopt;
  const std::deque<impl::Message>* msgs = impl::live_messages(*core_, *b, key);
  if (msgs == nullptr) return std::nullopt;
  return msgs->back().entry;
}

std::uint64_t MockServer::last_revision(const std::string& bucket) const {
  std::lock_guard<std::mutex> lk(core_->mu);
  auto it = core_->buckets.find(bucket);
  return it == core_->buckets.end() ? 0 : it->second.last_seq;
}

std::size_t MockServer::watch_count(const std::string& bucket, const std::string& key) const {
  std::lock_guard<std::mutex> lk(core_->mu);
  return static_cast<std::size_t>(std::count_if(
      core_->watches.begin(), core_->watches.end(),
      [&](const auto& w) { return w->bucket == bucket && w->key == key && !w->client->closed; }));
}

void MockServer::set_jetstream(bool enabled) {
  std::lock_guard<std::mutex> lk(core_->mu);
  core_->jetstream = enabled;
}

std::vector<CallRecord> MockServer::calls() const {
  std::lock_guard<std::mutex> lk(core_->mu);
  return core_->log;
}

void MockServer::clear_calls() {
  std::lock_guard<std::mutex> lk(core_->mu);
  core_->log.clear();
}

const detail::Clock& MockServer::clock() const noexcept { return core_->clock; }

}  // namespace leader::natsmock
