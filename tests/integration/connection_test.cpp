// Integration tests of leader::Connection against a real nats-server (one
// per test, killed by its PID): a connection the library owns fans its
// events out to every election on it, and a connection the application
// owns (Connection::adopt) keeps the application's callbacks, is never
// closed by the library, and still tells the elections about outages and
// reconnects. This file includes nats.h because the application's
// connection is made with nats.c directly. Time bounds are generous: they
// check that events arrive, not how fast.

#include <nats/nats.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "kv.h"
#include "leader/leader.h"
#include "nats/nats_backend.h"
#include "support/integration_helpers.h"
#include "support/nats_server.h"
#include "support/wait.h"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using leader::ConnectionState;
using leader::Errc;
using leader::detail::BucketSpec;
using leader::detail::KvOutcome;
using leader::detail::KvResult;
using leader::detail::KvStore;
using leader::detail::Watch;
using leader::detail::WatchEvent;
using leader::testing::bucket_for_current_test;
using leader::testing::eventually;
using leader::testing::NatsServer;

constexpr auto kCall = 2s;       // deadline of ordinary KV calls
constexpr auto kPoll = 20ms;     // state_poll of adopted connections, unless a test says otherwise
constexpr auto kWaitPoll = 2ms;  // how often eventually() checks its condition

/// A connection as an application would make it with nats.c, with its own
/// disconnected / reconnected / closed callbacks that count calls. The
/// destructor closes it and waits for the closed callback before
/// destroying it, so the counters (the callbacks' closure) outlive every
/// callback.
class AppConnection {
 public:
  struct Counters {
    std::atomic<int> disconnected{0};
    std::atomic<int> reconnected{0};
    std::atomic<int> closed{0};
  };

  explicit AppConnection(const std::string& url) {
    natsOptions* opts = nullptr;
    natsStatus s = natsOptions_Create(&opts);
    if (s == NATS_OK) s = natsOptions_SetURL(opts, url.c_str());
    if (s == NATS_OK) s = natsOptions_SetName(opts, "application");
    if (s == NATS_OK) s = natsOptions_SetMaxReconnect(opts, -1);
    if (s == NATS_OK) s = natsOptions_SetReconnectWait(opts, 50);
    if (s == NATS_OK)
      s = natsOptions_SetDisconnectedCB(opts, &AppConnection::on_disconnected, counters_.get());
    if (s == NATS_OK) s = natsOptions_SetReconnectedCB(opts, &AppConnection::on_reconnected, counters_.get());
    if (s == NATS_OK) s = natsOptions_SetClosedCB(opts, &AppConnection::on_closed, counters_.get());
    if (s == NATS_OK) s = natsConnection_Connect(&nc_, opts);
    natsOptions_Destroy(opts);
    status_ = s;
    if (s != NATS_OK) nc_ = nullptr;
  }

  ~AppConnection() { destroy(); }
  AppConnection(const AppConnection&) = delete;
  AppConnection& operator=(const AppConnection&) = delete;

  natsConnection* get() const { return nc_; }
  natsStatus connect_status() const { return status_; }
  const Counters& counters() const { return *counters_; }

  void close() {
    if (nc_ != nullptr) natsConnection_Close(nc_);
  }

  void destroy() {
    if (nc_ == nullptr) return;
    natsConnection_Close(nc_);
    eventually([this] { return counters_->closed.load() > 0; }, 5000ms, kWaitPoll);
    natsConnection_Destroy(nc_);
    nc_ = nullptr;
  }

 private:
  static void on_disconnected(natsConnection*, void* closure) {
    ++static_cast<Counters*>(closure)->disconnected;
  }
  static void on_reconnected(natsConnection*, void* closure) {
    ++static_cast<Counters*>(closure)->reconnected;
  }
  static void on_closed(natsConnection*, void* closure) { ++static_cast<Counters*>(closure)->closed; }

  std::unique_ptr<Counters> counters_ = std::make_unique<Counters>();
  natsConnection* nc_ = nullptr;
  natsStatus status_ = NATS_OK;
};

/// The states a backend's listener heard, in order; thread-safe.
class StateLog {
 public:
  std::function<void(ConnectionState)> listener() {
    return [this](ConnectionState s) {
      std::lock_guard<std::mutex> lock(mu_);
      states_.push_back(s);
    };
  }

  std::vector<ConnectionState> states() const {
    std::lock_guard<std::mutex> lock(mu_);
    return states_;
  }

  std::size_t size() const { return states().size(); }

  /// True once `state` was heard at index `from` or later.
  bool heard(ConnectionState state, std::size_t from = 0) const {
    const auto s = states();
    return from <= s.size() &&
           std::find(s.begin() + static_cast<std::ptrdiff_t>(from), s.end(), state) != s.end();
  }

  /// True once `first` and later `second` were heard, from index `from` on.
  bool heard_in_order(ConnectionState first, ConnectionState second, std::size_t from = 0) const {
    const auto s = states();
    if (from > s.size()) return false;
    auto it = std::find(s.begin() + static_cast<std::ptrdiff_t>(from), s.end(), first);
    return it != s.end() && std::find(it + 1, s.end(), second) != s.end();
  }

  std::string dump() const {
    std::string out;
    for (auto s : states()) out += std::string(leader::to_string(s)) + " ";
    return out;
  }

 private:
  mutable std::mutex mu_;
  std::vector<ConnectionState> states_;
};

/// Collects a watch's events; thread-safe. Must outlive the watch.
class Recorder {
 public:
  leader::detail::WatchHandler handler() {
    return [this](const WatchEvent& e) {
      std::lock_guard<std::mutex> lock(mu_);
      events_.push_back(e);
      cv_.notify_all();
    };
  }

  bool wait_for(WatchEvent::Kind kind, std::chrono::milliseconds timeout = 5s) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] {
      return std::any_of(events_.begin(), events_.end(),
                         [kind](const WatchEvent& e) { return e.kind == kind; });
    });
  }

  /// The first event of `kind`, if any.
  std::optional<WatchEvent> first(WatchEvent::Kind kind) const {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& e : events_) {
      if (e.kind == kind) return e;
    }
    return std::nullopt;
  }

  /// True once a live or replayed entry with `value` arrived.
  bool wait_for_value(const std::string& value, std::chrono::milliseconds timeout = 5s) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] {
      return std::any_of(events_.begin(), events_.end(), [&](const WatchEvent& e) {
        return e.kind == WatchEvent::Kind::entry && e.entry.value == value;
      });
    });
  }

  std::size_t size() const {
    std::lock_guard<std::mutex> lock(mu_);
    return events_.size();
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<WatchEvent> events_;
};

class ConnectionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<NatsServer>();
    bucket_ = bucket_for_current_test();
  }

  std::unique_ptr<AppConnection> app_connection() {
    auto app = std::make_unique<AppConnection>(server_->url());
    EXPECT_EQ(app->connect_status(), NATS_OK) << natsStatus_GetText(app->connect_status());
    return app;
  }

  std::shared_ptr<KvStore> open(leader::Connection& connection, std::chrono::milliseconds ttl = 60s) {
    BucketSpec spec;
    spec.name = bucket_;
    spec.ttl = ttl;
    auto r = connection.backend()->open_bucket(spec, 5s);
    EXPECT_NE(r.store, nullptr) << r.error.message() << ": " << r.message;
    return r.store;
  }

  leader::Config config(const std::string& role, const std::string& id) const {
    leader::Config c;
    c.bucket = bucket_;
    c.role = role;
    c.instance_id = id;
    c.ttl = 3s;
    c.storage = leader::Storage::file;
    return c;
  }

  /// Waits until every election reports a connection that is not
  /// `connected`, then (after the caller's restart) `connected` again.
  static bool all_see(const std::vector<leader::Election*>& elections, bool connected,
                      std::chrono::milliseconds timeout) {
    return eventually(
        [&] {
          return std::all_of(elections.begin(), elections.end(), [&](leader::Election* e) {
            return (e->status().connection == ConnectionState::connected) == connected;
          });
        },
        timeout, kWaitPoll);
  }

  std::unique_ptr<NatsServer> server_;
  std::string bucket_;
};

TEST_F(ConnectionTest, AdoptLeavesTheApplicationsCallbacksInPlace) {
  auto app = app_connection();
  ASSERT_NE(app->get(), nullptr);
  auto connection = leader::Connection::adopt(app->get(), {}, kPoll);
  EXPECT_EQ(connection->state(), ConnectionState::connected);
  StateLog log;
  const auto id = connection->backend()->subscribe_state(log.listener());

  server_->kill();
  // The application's callback fires: the library did not replace it.
  ASSERT_TRUE(eventually([&] { return app->counters().disconnected.load() >= 1; }, 5s, kWaitPoll));
  ASSERT_TRUE(eventually([&] { return log.heard(ConnectionState::disconnected); }, 5s, kWaitPoll))
      << log.dump();
  EXPECT_NE(connection->state(), ConnectionState::connected);

  server_->restart();
  ASSERT_TRUE(eventually([&] { return app->counters().reconnected.load() >= 1; }, 10s, kWaitPoll));
  ASSERT_TRUE(eventually(
      [&] { return log.heard_in_order(ConnectionState::disconnected, ConnectionState::connected); }, 5s,
      kWaitPoll))
      << log.dump();
  EXPECT_EQ(connection->state(), ConnectionState::connected);
  EXPECT_EQ(app->counters().closed.load(), 0);
  connection->backend()->unsubscribe_state(id);
}

TEST_F(ConnectionTest, AdoptedConnectionServesBucketsAndWatches) {
  auto app = app_connection();
  ASSERT_NE(app->get(), nullptr);
  auto connection = leader::Connection::adopt(app->get(), {}, kPoll);
  auto store = open(*connection);
  ASSERT_NE(store, nullptr);

  auto created = store->create("role", "alice", std::nullopt, kCall);
  ASSERT_EQ(created.outcome, KvOutcome::ok) << created.message;
  auto got = store->get("role", kCall);
  ASSERT_EQ(got.outcome, KvOutcome::ok) << got.message;
  ASSERT_TRUE(got.entry.has_value());
  EXPECT_EQ(got.entry->value, "alice");
  EXPECT_EQ(got.entry->revision, created.revision);

  Recorder rec;
  KvResult err;
  auto watch = store->watch("role", rec.handler(), &err);
  ASSERT_NE(watch, nullptr) << err.message;
  ASSERT_TRUE(rec.wait_for(WatchEvent::Kind::replay_done));
  EXPECT_TRUE(rec.wait_for_value("alice"));
  auto updated = store->update("role", "bob", created.revision, kCall);
  ASSERT_EQ(updated.outcome, KvOutcome::ok) << updated.message;
  EXPECT_TRUE(rec.wait_for_value("bob"));

  // A reconnect must end the watch (it may have missed messages), as it
  // does on a connection the library owns.
  server_->kill();
  server_->restart();
  ASSERT_TRUE(rec.wait_for(WatchEvent::Kind::error, 15s));
  EXPECT_EQ(rec.first(WatchEvent::Kind::error)->error, KvOutcome::disconnected)
      << rec.first(WatchEvent::Kind::error)->message;
  watch.reset();

  // File storage: the value survived, and a new watch replays it.
  Recorder again;
  std::unique_ptr<Watch> watch2;
  ASSERT_TRUE(eventually(
      [&] {
        watch2 = store->watch("role", again.handler(), &err);
        return watch2 != nullptr;
      },
      10s, kWaitPoll))
      << err.message;
  EXPECT_TRUE(again.wait_for_value("bob"));
  EXPECT_TRUE(again.wait_for(WatchEvent::Kind::replay_done));
  EXPECT_EQ(app->counters().reconnected.load(), 1);
}

TEST_F(ConnectionTest, AdoptedConnectionNoticesAReconnectBetweenTwoPolls) {
  // The poll is slower than the outage: only the client's reconnect
  // counter can tell that the connection went away and came back.
  constexpr auto kSlowPoll = 4000ms;
  auto app = app_connection();
  ASSERT_NE(app->get(), nullptr);
  const auto adopted_at = Clock::now();
  auto connection = leader::Connection::adopt(app->get(), {}, kSlowPoll);
  auto store = open(*connection);
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->create("role", "alice", std::nullopt, kCall).ok());
  StateLog log;
  const auto id = connection->backend()->subscribe_state(log.listener());
  Recorder rec;
  KvResult err;
  auto watch = store->watch("role", rec.handler(), &err);
  ASSERT_NE(watch, nullptr) << err.message;
  ASSERT_TRUE(rec.wait_for(WatchEvent::Kind::replay_done));

  server_->kill();
  server_->restart();
  ASSERT_TRUE(eventually([&] { return app->counters().reconnected.load() >= 1; }, 10s, kWaitPoll));
  const bool before_first_poll = Clock::now() - adopted_at < kSlowPoll - 500ms && log.size() == 0;

  ASSERT_TRUE(rec.wait_for(WatchEvent::Kind::error, kSlowPoll + 5s));
  EXPECT_EQ(rec.first(WatchEvent::Kind::error)->error, KvOutcome::disconnected);
  ASSERT_TRUE(eventually(
      [&] { return log.heard_in_order(ConnectionState::disconnected, ConnectionState::connected); }, 5s,
      kWaitPoll))
      << log.dump();
  if (!before_first_poll) {
    std::cout << "note: the restart outlasted the first poll; the status, not the counter, saw it\n";
  }
  EXPECT_EQ(connection->state(), ConnectionState::connected);
  connection->backend()->unsubscribe_state(id);
}

TEST_F(ConnectionTest, ElectionsOnAnAdoptedConnectionSurviveAServerRestart) {
  auto app = app_connection();
  ASSERT_NE(app->get(), nullptr);
  auto connection = leader::Connection::adopt(app->get(), {}, kPoll);
  leader::Election a(connection, config("role-a", "a"));
  leader::Election b(connection, config("role-b", "b"));
  a.start();
  b.start();
  ASSERT_TRUE(a.wait_for_leadership(10s));
  ASSERT_TRUE(b.wait_for_leadership(10s));
  const std::vector<leader::Election*> both = {&a, &b};

  server_->kill();
  // One poll of the connection reaches every election on it.
  ASSERT_TRUE(all_see(both, false, 5s));
  server_->restart();
  ASSERT_TRUE(all_see(both, true, 15s));
  for (auto* e : both) {
    ASSERT_TRUE(eventually([&] { return e->is_leader() && e->validate_token(); }, 15s, kWaitPoll))
        << e->config().role << ": " << leader::to_string(e->status().state) << ", last error "
        << e->status().last_error.message;
  }
  EXPECT_GE(app->counters().disconnected.load(), 1);
  EXPECT_GE(app->counters().reconnected.load(), 1);

  // And keeps leading through further renewals.
  std::this_thread::sleep_for(2 * a.config().heartbeat_interval);
  EXPECT_TRUE(a.is_leader());
  EXPECT_TRUE(b.is_leader());
  a.stop();
  b.stop();
}

TEST_F(ConnectionTest, DestroyingTheConnectionLeavesTheApplicationsConnectionOpen) {
  auto app = app_connection();
  ASSERT_NE(app->get(), nullptr);
  auto connection = leader::Connection::adopt(app->get(), {}, kPoll);
  auto store = open(*connection, config("role", "a").ttl);  // the election's bucket
  ASSERT_NE(store, nullptr);
  Recorder rec;
  KvResult err;
  auto watch = store->watch("role", rec.handler(), &err);
  ASSERT_NE(watch, nullptr) << err.message;
  {
    leader::Election e(connection, config("role", "a"));
    e.start();
    ASSERT_TRUE(e.wait_for_leadership(10s));
  }
  std::weak_ptr<leader::Connection> weak = connection;
  connection.reset();
  ASSERT_TRUE(eventually([&] { return weak.expired(); }, 5s, kWaitPoll))
      << "something still holds the Connection";

  // The application's connection is open and works.
  EXPECT_EQ(natsConnection_Status(app->get()), NATS_CONN_STATUS_CONNECTED);
  EXPECT_EQ(natsConnection_PublishString(app->get(), "app.subject", "hello"), NATS_OK);
  EXPECT_EQ(natsConnection_FlushTimeout(app->get(), 2000), NATS_OK);
  jsCtx* js = nullptr;
  ASSERT_EQ(natsConnection_JetStream(&js, app->get(), nullptr), NATS_OK);
  jsAccountInfo* info = nullptr;
  EXPECT_EQ(js_GetAccountInfo(&info, js, nullptr, nullptr), NATS_OK) << nats_GetLastError(nullptr);
  jsAccountInfo_Destroy(info);
  jsCtx_Destroy(js);
  EXPECT_EQ(app->counters().closed.load(), 0);

  // What the library left behind is closed for the library only.
  auto r = store->get("role", kCall);
  EXPECT_EQ(r.outcome, KvOutcome::closed) << r.message;
  ASSERT_TRUE(rec.wait_for(WatchEvent::Kind::error));
  EXPECT_EQ(rec.first(WatchEvent::Kind::error)->error, KvOutcome::closed);
  watch.reset();
  store.reset();
  EXPECT_EQ(natsConnection_Status(app->get()), NATS_CONN_STATUS_CONNECTED);

  // The application's callbacks still work.
  server_->kill();
  server_->restart();
  EXPECT_TRUE(eventually([&] { return app->counters().reconnected.load() >= 1; }, 10s, kWaitPoll));
}

TEST_F(ConnectionTest, AdoptedConnectionClosedByTheApplicationIsClosed) {
  auto app = app_connection();
  ASSERT_NE(app->get(), nullptr);
  auto connection = leader::Connection::adopt(app->get(), {}, kPoll);
  auto store = open(*connection);
  ASSERT_NE(store, nullptr);
  StateLog log;
  const auto id = connection->backend()->subscribe_state(log.listener());
  Recorder rec;
  KvResult err;
  auto watch = store->watch("role", rec.handler(), &err);
  ASSERT_NE(watch, nullptr) << err.message;
  ASSERT_TRUE(rec.wait_for(WatchEvent::Kind::replay_done));

  app->close();
  ASSERT_TRUE(eventually([&] { return log.heard(ConnectionState::closed); }, 5s, kWaitPoll)) << log.dump();
  EXPECT_EQ(connection->state(), ConnectionState::closed);
  ASSERT_TRUE(rec.wait_for(WatchEvent::Kind::error));
  EXPECT_EQ(rec.first(WatchEvent::Kind::error)->error, KvOutcome::closed);
  EXPECT_EQ(store->get("role", kCall).outcome, KvOutcome::closed);

  // The application may even destroy it before the library lets go: the
  // library's JetStream context keeps the memory valid (run under ASan).
  app->destroy();
  EXPECT_EQ(connection->state(), ConnectionState::closed);
  EXPECT_EQ(store->get("role", kCall).outcome, KvOutcome::closed);
  connection->backend()->unsubscribe_state(id);
  watch.reset();
  store.reset();
  connection.reset();
}

TEST_F(ConnectionTest, AdoptRejectsNullClosedAndBadArguments) {
  try {
    leader::Connection::adopt(nullptr);
    FAIL() << "adopt(nullptr) did not throw";
  } catch (const leader::ConfigError& e) {
    EXPECT_EQ(e.field(), "nats_connection") << e.what();
  }

  auto app = app_connection();
  ASSERT_NE(app->get(), nullptr);
  try {
    leader::Connection::adopt(app->get(), {}, 0ms);
    FAIL() << "state_poll 0 did not throw";
  } catch (const leader::ConfigError& e) {
    EXPECT_EQ(e.field(), "state_poll") << e.what();
  }
  leader::ConnectionOptions bad_threads;
  bad_threads.io_threads = 0;
  try {
    leader::Connection::adopt(app->get(), bad_threads);
    FAIL() << "io_threads 0 did not throw";
  } catch (const leader::ConfigError& e) {
    EXPECT_EQ(e.field(), "io_threads") << e.what();
  }

  app->close();
  ASSERT_TRUE(eventually([&] { return app->counters().closed.load() > 0; }, 5s, kWaitPoll));
  try {
    leader::Connection::adopt(app->get());
    FAIL() << "adopting a closed connection did not throw";
  } catch (const leader::ConfigError& e) {
    FAIL() << "a closed connection is not a configuration error: " << e.what();
  } catch (const leader::Error& e) {
    EXPECT_EQ(e.code(), leader::make_error_code(Errc::closed)) << e.what();
  }
}

TEST_F(ConnectionTest, OneOwnedConnectionFansOutToEveryElection) {
  leader::ConnectionOptions options;
  options.url = server_->url();
  options.reconnect_wait = 50ms;
  auto connection = leader::Connection::connect(options);
  leader::Election a(connection, config("role-a", "a"));
  leader::Election b(connection, config("role-b", "b"));
  a.start();
  b.start();
  ASSERT_TRUE(a.wait_for_leadership(10s));
  ASSERT_TRUE(b.wait_for_leadership(10s));
  const std::vector<leader::Election*> both = {&a, &b};

  server_->kill();
  // One disconnected callback of the connection reaches every election.
  ASSERT_TRUE(all_see(both, false, 5s));
  server_->restart();
  ASSERT_TRUE(all_see(both, true, 15s));
  for (auto* e : both) {
    EXPECT_TRUE(eventually([&] { return e->is_leader() && e->validate_token(); }, 15s, kWaitPoll))
        << e->config().role << ": " << leader::to_string(e->status().state);
  }
  a.stop();
  b.stop();
}

TEST_F(ConnectionTest, OwnedBackendCallbacksOutliveTheBackend) {
  // nats.c runs the closed callback after natsConnection_Destroy returned:
  // its closure must still be alive then (run under ASan to see it).
  for (int i = 0; i < 5; ++i) {
    leader::ConnectionOptions options;
    options.url = server_->url();
    std::error_code ec;
    std::string message;
    auto backend = leader::detail::make_nats_backend(options, &ec, &message);
    ASSERT_NE(backend, nullptr) << message;
    auto log = std::make_shared<StateLog>();
    backend->subscribe_state([log](ConnectionState s) { log->listener()(s); });
    backend.reset();
    EXPECT_TRUE(eventually([&] { return log->heard(ConnectionState::closed); }, 5s, kWaitPoll))
        << log->dump();
  }
}

}  // namespace
