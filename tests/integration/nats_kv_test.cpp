// Integration tests of the nats.c KV adapter (src/nats/) against a real
// nats-server started per test (leader::testing::NatsServer), one bucket per
// test. Time bounds are generous on purpose: they check that calls end and
// events arrive, not how fast.

#include <nats/nats.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "kv.h"
#include "leader/error.h"
#include "nats/nats_backend.h"
#include "nats/nats_internal.h"
#include "support/integration_helpers.h"
#include "support/nats_server.h"
#include "support/tcp_proxy.h"
#include "support/wait.h"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using leader::ConnectionState;
using leader::Errc;
using leader::Storage;
using leader::detail::Backend;
using leader::detail::BucketSpec;
using leader::detail::EntryOp;
using leader::detail::KvOutcome;
using leader::detail::KvResult;
using leader::detail::KvStore;
using leader::detail::Watch;
using leader::detail::WatchEvent;
using leader::testing::eventually;
using leader::testing::NatsServer;

constexpr auto kCall = 2s;       // deadline of ordinary calls
constexpr auto kWaitPoll = 2ms;  // how often eventually() checks its condition

/// "kv-<test>", made bucket-safe.
std::string bucket_for_current_test() {
  return leader::testing::bucket_safe(
      std::string("kv-") + ::testing::UnitTest::GetInstance()->current_test_info()->name(), 60);
}

std::string str(KvOutcome o) { return leader::detail::to_string(o); }

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

  bool wait_for(const std::function<bool(const std::vector<WatchEvent>&)>& pred,
                std::chrono::milliseconds timeout = 5s) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return pred(events_); });
  }

  bool wait_for_count(std::size_t n, std::chrono::milliseconds timeout = 5s) {
    return wait_for([n](const auto& ev) { return ev.size() >= n; }, timeout);
  }

  bool wait_for_kind(WatchEvent::Kind kind, std::chrono::milliseconds timeout = 5s) {
    return wait_for(
        [kind](const auto& ev) {
          return std::any_of(ev.begin(), ev.end(), [kind](const WatchEvent& e) { return e.kind == kind; });
        },
        timeout);
  }

  /// The events so far, one per line, for failure messages.
  std::string dump() const {
    std::lock_guard<std::mutex> lock(mu_);
    std::string out;
    for (const auto& e : events_) {
      switch (e.kind) {
        case WatchEvent::Kind::entry:
          out += "entry rev=" + std::to_string(e.entry.revision) +
                 " op=" + std::to_string(static_cast<int>(e.entry.op)) + " value=" + e.entry.value + "\n";
          break;
        case WatchEvent::Kind::replay_done:
          out += "replay_done\n";
          break;
        case WatchEvent::Kind::error:
          out += std::string("error ") + leader::detail::to_string(e.error) + ": " + e.message + "\n";
          break;
      }
    }
    return out;
  }

  std::vector<WatchEvent> events() const {
    std::lock_guard<std::mutex> lock(mu_);
    return events_;
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<WatchEvent> events_;
};

leader::ConnectionOptions options_for(const std::string& url) {
  leader::ConnectionOptions o;
  o.url = url;
  o.name = "leader-nats-kv-test";
  o.connect_timeout = 2000ms;
  o.reconnect_wait = 50ms;
  o.ping_interval = 1000ms;
  return o;
}

/// A backend connected to `url`; null (and a failed expectation) if not.
std::shared_ptr<Backend> connect_backend(const std::string& url) {
  std::error_code ec;
  std::string message;
  auto backend = leader::detail::make_nats_backend(options_for(url), &ec, &message);
  EXPECT_NE(backend, nullptr) << message;
  return backend;
}

BucketSpec spec_of(const std::string& name, std::chrono::milliseconds ttl, Storage storage = Storage::file) {
  BucketSpec spec;
  spec.name = name;
  spec.ttl = ttl;
  spec.storage = storage;
  return spec;
}

class NatsKvTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<NatsServer>();
    backend_ = connect_backend(server_->url());
    ASSERT_NE(backend_, nullptr);
    bucket_ = bucket_for_current_test();
    store_ = open(bucket_, 10s);
    ASSERT_NE(store_, nullptr);
  }

  leader::detail::OpenResult open_result(const std::string& name, std::chrono::milliseconds ttl,
                                         Storage storage = Storage::file) {
    return backend_->open_bucket(spec_of(name, ttl, storage), 5s);
  }

  std::shared_ptr<KvStore> open(const std::string& name, std::chrono::milliseconds ttl,
                                Storage storage = Storage::file) {
    auto r = open_result(name, ttl, storage);
    EXPECT_TRUE(r.store != nullptr) << r.error.message() << ": " << r.message;
    return r.store;
  }

  std::uint64_t must_create(const std::string& key, const std::string& value) {
    auto r = store_->create(key, value, std::nullopt, kCall);
    EXPECT_EQ(r.outcome, KvOutcome::ok) << r.message;
    EXPECT_GT(r.revision, 0u);
    return r.revision;
  }

  std::unique_ptr<NatsServer> server_;
  std::shared_ptr<Backend> backend_;
  std::string bucket_;
  std::shared_ptr<KvStore> store_;
};

TEST_F(NatsKvTest, CreateOnEmptyKeySucceeds) {
  auto r = store_->create("role", "alice", std::nullopt, kCall);
  ASSERT_EQ(r.outcome, KvOutcome::ok) << r.message;
  EXPECT_GT(r.revision, 0u);

  auto g = store_->get("role", kCall);
  ASSERT_EQ(g.outcome, KvOutcome::ok) << g.message;
  ASSERT_TRUE(g.entry.has_value());
  EXPECT_EQ(g.entry->key, "role");
  EXPECT_EQ(g.entry->value, "alice");
  EXPECT_EQ(g.entry->op, EntryOp::put);
  EXPECT_EQ(g.entry->revision, r.revision);
  EXPECT_GT(g.entry->created_ns, 0);
}

TEST_F(NatsKvTest, GetOfMissingKeyIsNotFound) {
  auto g = store_->get("nobody", kCall);
  EXPECT_EQ(g.outcome, KvOutcome::not_found) << g.message;
  EXPECT_FALSE(g.entry.has_value());
  EXPECT_NE(g.message.find("nobody"), std::string::npos) << g.message;
}

TEST_F(NatsKvTest, CreateOnLiveKeyConflictsAndCarriesTheEntry) {
  const auto rev = must_create("role", "alice");
  auto r = store_->create("role", "bob", std::nullopt, kCall);
  ASSERT_EQ(r.outcome, KvOutcome::conflict) << r.message;
  ASSERT_TRUE(r.entry.has_value());
  EXPECT_EQ(r.entry->value, "alice");
  EXPECT_EQ(r.entry->revision, rev);
  EXPECT_EQ(r.entry->op, EntryOp::put);
  EXPECT_NE(r.message.find(bucket_), std::string::npos) << r.message;
}

TEST_F(NatsKvTest, CreateOverDeleteMarkerWithoutLastMarker) {
  const auto rev = must_create("role", "alice");
  auto del = store_->erase("role", rev, kCall);
  ASSERT_EQ(del.outcome, KvOutcome::ok) << del.message;
  EXPECT_GT(del.revision, rev);

  auto g = store_->get("role", kCall);
  ASSERT_EQ(g.outcome, KvOutcome::ok) << g.message;
  EXPECT_EQ(g.entry->op, EntryOp::del);
  EXPECT_EQ(g.entry->revision, del.revision);
  EXPECT_TRUE(g.entry->value.empty());

  auto r = store_->create("role", "bob", std::nullopt, kCall);
  ASSERT_EQ(r.outcome, KvOutcome::ok) << r.message;
  EXPECT_GT(r.revision, del.revision);
  EXPECT_EQ(store_->get("role", kCall).entry->value, "bob");
}

TEST_F(NatsKvTest, CreateOverDeleteMarkerWithLastMarker) {
  const auto rev = must_create("role", "alice");
  auto del = store_->erase("role", rev, kCall);
  ASSERT_EQ(del.outcome, KvOutcome::ok) << del.message;

  auto stale = store_->create("role", "carol", rev, kCall);  // not the marker's revision
  EXPECT_EQ(stale.outcome, KvOutcome::conflict) << stale.message;
  EXPECT_FALSE(stale.entry.has_value());  // the latest is a marker, not a live value

  auto r = store_->create("role", "bob", del.revision, kCall);
  ASSERT_EQ(r.outcome, KvOutcome::ok) << r.message;
  EXPECT_GT(r.revision, del.revision);

  auto again = store_->create("role", "dave", del.revision, kCall);
  ASSERT_EQ(again.outcome, KvOutcome::conflict) << again.message;
  ASSERT_TRUE(again.entry.has_value());
  EXPECT_EQ(again.entry->value, "bob");
}

TEST_F(NatsKvTest, CreateOverPurgeMarker) {
  must_create("role", "alice");
  {
    // A purge marker written by another client (nats.c's own KV API).
    natsConnection* nc = nullptr;
    ASSERT_EQ(natsConnection_ConnectTo(&nc, server_->url().c_str()), NATS_OK);
    jsCtx* js = nullptr;
    ASSERT_EQ(natsConnection_JetStream(&js, nc, nullptr), NATS_OK);
    kvStore* kv = nullptr;
    ASSERT_EQ(js_KeyValue(&kv, js, bucket_.c_str()), NATS_OK);
    EXPECT_EQ(kvStore_Purge(kv, "role", nullptr), NATS_OK);
    kvStore_Destroy(kv);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
  }
  auto g = store_->get("role", kCall);
  ASSERT_EQ(g.outcome, KvOutcome::ok) << g.message;
  EXPECT_EQ(g.entry->op, EntryOp::purge);

  auto r = store_->create("role", "bob", std::nullopt, kCall);
  ASSERT_EQ(r.outcome, KvOutcome::ok) << r.message;
  EXPECT_GT(r.revision, g.entry->revision);
}

TEST_F(NatsKvTest, UpdateWithRightRevisionSucceedsAndStaleConflicts) {
  const auto rev1 = must_create("role", "v1");
  auto u = store_->update("role", "v2", rev1, kCall);
  ASSERT_EQ(u.outcome, KvOutcome::ok) << u.message;
  EXPECT_GT(u.revision, rev1);

  auto stale = store_->update("role", "v3", rev1, kCall);
  EXPECT_EQ(stale.outcome, KvOutcome::conflict) << stale.message;

  auto g = store_->get("role", kCall);
  EXPECT_EQ(g.entry->value, "v2");
  EXPECT_EQ(g.entry->revision, u.revision);
}

TEST_F(NatsKvTest, UpdateOfMissingKeyConflicts) {
  auto u = store_->update("ghost", "v", 12345, kCall);
  EXPECT_EQ(u.outcome, KvOutcome::conflict) << u.message;
  EXPECT_EQ(store_->get("ghost", kCall).outcome, KvOutcome::not_found);
}

TEST_F(NatsKvTest, ZeroExpectedRevisionIsRejectedWithoutWriting) {
  const auto rev = must_create("role", "v1");
  EXPECT_EQ(store_->update("role", "v2", 0, kCall).outcome, KvOutcome::other);
  EXPECT_EQ(store_->erase("role", 0, kCall).outcome, KvOutcome::other);
  auto g = store_->get("role", kCall);
  EXPECT_EQ(g.entry->revision, rev);
  EXPECT_EQ(g.entry->op, EntryOp::put);
}

TEST_F(NatsKvTest, EraseWithRightRevisionWritesDeleteMarker) {
  const auto rev = must_create("role", "v1");
  auto del = store_->erase("role", rev, kCall);
  ASSERT_EQ(del.outcome, KvOutcome::ok) << del.message;
  auto g = store_->get("role", kCall);
  ASSERT_EQ(g.outcome, KvOutcome::ok);
  EXPECT_EQ(g.entry->op, EntryOp::del);
  EXPECT_EQ(g.entry->revision, del.revision);
}

TEST_F(NatsKvTest, EraseWithStaleRevisionDoesNotDelete) {
  const auto rev1 = must_create("role", "v1");
  auto u = store_->update("role", "v2", rev1, kCall);
  ASSERT_EQ(u.outcome, KvOutcome::ok) << u.message;

  auto del = store_->erase("role", rev1, kCall);
  EXPECT_EQ(del.outcome, KvOutcome::conflict) << del.message;

  auto g = store_->get("role", kCall);
  ASSERT_EQ(g.outcome, KvOutcome::ok);
  EXPECT_EQ(g.entry->op, EntryOp::put);
  EXPECT_EQ(g.entry->value, "v2");
  EXPECT_EQ(g.entry->revision, u.revision);
}

TEST_F(NatsKvTest, ConcurrentCreatesHaveExactlyOneWinner) {
  constexpr int kThreads = 8;
  std::vector<KvResult> results(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back(
        [&, i] { results[i] = store_->create("role", "c" + std::to_string(i), std::nullopt, kCall); });
  }
  for (auto& t : threads) t.join();
  int winners = 0;
  std::string winner;
  for (int i = 0; i < kThreads; ++i) {
    if (results[i].ok()) {
      ++winners;
      winner = "c" + std::to_string(i);
    } else {
      EXPECT_EQ(results[i].outcome, KvOutcome::conflict) << results[i].message;
    }
  }
  ASSERT_EQ(winners, 1);
  for (const auto& r : results) {
    if (r.outcome == KvOutcome::conflict && r.entry) {
      EXPECT_EQ(r.entry->value, winner);
    }
  }
}

TEST_F(NatsKvTest, GetAfterExpiryIsNotFound) {
  auto short_store = open(bucket_ + "-ttl", 1000ms);
  ASSERT_NE(short_store, nullptr);
  const auto written = Clock::now();
  auto c = short_store->create("role", "alice", std::nullopt, kCall);
  ASSERT_EQ(c.outcome, KvOutcome::ok) << c.message;

  KvResult g;
  ASSERT_TRUE(eventually(
      [&] {
        g = short_store->get("role", kCall);
        return g.outcome == KvOutcome::not_found;
      },
      10s, kWaitPoll))
      << str(g.outcome) << ": " << g.message;
  // Expired by the bucket's TTL, not earlier (wide margin for clocks).
  EXPECT_GE(Clock::now() - written, 900ms);

  // An update with the old revision fails; a create succeeds.
  EXPECT_EQ(short_store->update("role", "x", c.revision, kCall).outcome, KvOutcome::conflict);
  EXPECT_EQ(short_store->create("role", "bob", std::nullopt, kCall).outcome, KvOutcome::ok);
}

TEST_F(NatsKvTest, WatchReplaysExistingValueThenReplayDone) {
  const auto rev = must_create("role", "alice");
  Recorder rec;
  KvResult err;
  auto w = store_->watch("role", rec.handler(), &err);
  ASSERT_NE(w, nullptr) << err.message;
  ASSERT_TRUE(rec.wait_for_count(2));
  const auto ev = rec.events();
  ASSERT_EQ(ev[0].kind, WatchEvent::Kind::entry);
  EXPECT_EQ(ev[0].entry.key, "role");
  EXPECT_EQ(ev[0].entry.value, "alice");
  EXPECT_EQ(ev[0].entry.revision, rev);
  EXPECT_EQ(ev[0].entry.op, EntryOp::put);
  EXPECT_GT(ev[0].entry.created_ns, 0);
  EXPECT_EQ(ev[1].kind, WatchEvent::Kind::replay_done);
}

TEST_F(NatsKvTest, WatchReplaysOnlyTheLatestMessage) {
  const auto rev = must_create("role", "v1");
  auto u = store_->update("role", "v2", rev, kCall);
  ASSERT_TRUE(u.ok()) << u.message;
  must_create("other", "x");  // another key of the bucket is not replayed
  Recorder rec;
  KvResult err;
  auto w = store_->watch("role", rec.handler(), &err);
  ASSERT_NE(w, nullptr) << err.message;
  ASSERT_TRUE(rec.wait_for_kind(WatchEvent::Kind::replay_done));
  const auto ev = rec.events();
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(ev[0].entry.value, "v2");
  EXPECT_EQ(ev[0].entry.revision, u.revision);
}

TEST_F(NatsKvTest, WatchReplaysDeleteMarker) {
  const auto rev = must_create("role", "alice");
  auto del = store_->erase("role", rev, kCall);
  ASSERT_TRUE(del.ok()) << del.message;
  Recorder rec;
  KvResult err;
  auto w = store_->watch("role", rec.handler(), &err);
  ASSERT_NE(w, nullptr) << err.message;
  ASSERT_TRUE(rec.wait_for_count(2));
  const auto ev = rec.events();
  EXPECT_EQ(ev[0].kind, WatchEvent::Kind::entry);
  EXPECT_EQ(ev[0].entry.op, EntryOp::del);
  EXPECT_EQ(ev[0].entry.revision, del.revision);
  EXPECT_EQ(ev[1].kind, WatchEvent::Kind::replay_done);
}

TEST_F(NatsKvTest, WatchOnEmptyKeyDeliversReplayDonePromptly) {
  must_create("other", "x");  // the bucket is not empty, the key is
  Recorder rec;
  std::atomic<bool> on_caller_thread{false};
  const auto caller = std::this_thread::get_id();
  auto record = rec.handler();
  KvResult err;
  const auto start = Clock::now();
  auto w = store_->watch(
      "role",
      [&](const WatchEvent& e) {
        if (std::this_thread::get_id() == caller) on_caller_thread = true;
        record(e);
      },
      &err);
  ASSERT_NE(w, nullptr) << err.message;
  ASSERT_TRUE(rec.wait_for_kind(WatchEvent::Kind::replay_done, 2s));
  EXPECT_LT(Clock::now() - start, 2s);
  EXPECT_FALSE(on_caller_thread) << "the handler must run on the store's threads";
  const auto ev = rec.events();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].kind, WatchEvent::Kind::replay_done);
}

TEST_F(NatsKvTest, WatchAllReplaysTheLatestOfEveryKeyThenGoesLive) {
  const auto a1 = must_create("a", "1");
  auto a2 = store_->update("a", "2", a1, kCall);
  ASSERT_EQ(a2.outcome, KvOutcome::ok) << a2.message;
  const auto b1 = must_create("b.dotted", "x");
  auto del = store_->erase("b.dotted", b1, kCall);
  ASSERT_EQ(del.outcome, KvOutcome::ok) << del.message;
  Recorder rec;
  KvResult err;
  auto w = store_->watch_all(rec.handler(), &err);
  ASSERT_NE(w, nullptr) << err.message;
  ASSERT_TRUE(rec.wait_for_kind(WatchEvent::Kind::replay_done));
  auto ev = rec.events();
  ASSERT_EQ(ev.size(), 3u);
  std::map<std::string, leader::detail::KvEntry> latest;
  for (std::size_t i = 0; i < 2; ++i) {
    ASSERT_EQ(ev[i].kind, WatchEvent::Kind::entry);
    latest[ev[i].entry.key] = ev[i].entry;
  }
  EXPECT_EQ(latest["a"].revision, a2.revision);
  EXPECT_EQ(latest["a"].value, "2");
  EXPECT_EQ(latest["b.dotted"].op, EntryOp::del) << "keys keep their dots";
  EXPECT_EQ(latest["b.dotted"].revision, del.revision);

  const auto c1 = must_create("c", "live");
  ASSERT_TRUE(rec.wait_for_count(4));
  ev = rec.events();
  EXPECT_EQ(ev[3].entry.key, "c");
  EXPECT_EQ(ev[3].entry.revision, c1);
}

TEST_F(NatsKvTest, WatchAllOfAnEmptyBucketDeliversReplayDonePromptly) {
  Recorder rec;
  KvResult err;
  const auto start = Clock::now();
  auto w = store_->watch_all(rec.handler(), &err);
  ASSERT_NE(w, nullptr) << err.message;
  ASSERT_TRUE(rec.wait_for_kind(WatchEvent::Kind::replay_done, 2s));
  EXPECT_LT(Clock::now() - start, 2s);
  EXPECT_EQ(rec.events().size(), 1u);
}

TEST_F(NatsKvTest, WatchDeliversLivePutsAndDeletesWithRevisions) {
  Recorder rec;
  KvResult err;
  auto w = store_->watch("role", rec.handler(), &err);
  ASSERT_NE(w, nullptr) << err.message;
  ASSERT_TRUE(rec.wait_for_kind(WatchEvent::Kind::replay_done));

  // Each write waits for its event: with History 1 a message superseded
  // before the consumer sent it is gone (see WatchAlwaysEndsWithTheLatest).
  const auto rev = must_create("role", "alice");
  ASSERT_TRUE(rec.wait_for_count(2)) << rec.dump();
  auto u = store_->update("role", "alice2", rev, kCall);
  ASSERT_TRUE(u.ok()) << u.message;
  ASSERT_TRUE(rec.wait_for_count(3)) << rec.dump();
  auto del = store_->erase("role", u.revision, kCall);
  ASSERT_TRUE(del.ok()) << del.message;
  ASSERT_TRUE(rec.wait_for_count(4)) << rec.dump();
  auto again = store_->create("role", "bob", std::nullopt, kCall);
  ASSERT_TRUE(again.ok()) << again.message;
  ASSERT_TRUE(rec.wait_for_count(5)) << rec.dump();

  const auto ev = rec.events();
  ASSERT_EQ(ev.size(), 5u) << rec.dump();
  EXPECT_EQ(ev[0].kind, WatchEvent::Kind::replay_done);
  for (std::size_t i = 1; i < ev.size(); ++i) EXPECT_EQ(ev[i].kind, WatchEvent::Kind::entry) << i;
  EXPECT_EQ(ev[1].entry.op, EntryOp::put);
  EXPECT_EQ(ev[1].entry.value, "alice");
  EXPECT_EQ(ev[1].entry.revision, rev);
  EXPECT_EQ(ev[2].entry.value, "alice2");
  EXPECT_EQ(ev[2].entry.revision, u.revision);
  EXPECT_EQ(ev[3].entry.op, EntryOp::del);
  EXPECT_EQ(ev[3].entry.revision, del.revision);
  EXPECT_TRUE(ev[3].entry.value.empty());
  EXPECT_EQ(ev[4].entry.op, EntryOp::put);
  EXPECT_EQ(ev[4].entry.value, "bob");
  EXPECT_EQ(ev[4].entry.revision, again.revision);
}

TEST_F(NatsKvTest, WatchAlwaysEndsWithTheLatest) {
  // Back-to-back writes may skip intermediate revisions (History 1: the
  // stream drops a message once a newer one on its key arrives, possibly
  // before the push consumer sent it), but revisions only increase and the
  // last event is the latest write.
  Recorder rec;
  KvResult err;
  auto w = store_->watch("role", rec.handler(), &err);
  ASSERT_NE(w, nullptr) << err.message;
  ASSERT_TRUE(rec.wait_for_kind(WatchEvent::Kind::replay_done));
  auto rev = must_create("role", "v0");
  for (int i = 1; i < 50; ++i) {
    auto u = store_->update("role", "v" + std::to_string(i), rev, kCall);
    ASSERT_TRUE(u.ok()) << u.message;
    rev = u.revision;
  }
  ASSERT_TRUE(rec.wait_for([rev](const auto& ev) {
    return !ev.empty() && ev.back().kind == WatchEvent::Kind::entry && ev.back().entry.revision == rev;
  })) << rec.dump();
  const auto ev = rec.events();
  std::uint64_t last = 0;
  for (const auto& e : ev) {
    if (e.kind != WatchEvent::Kind::entry) continue;
    EXPECT_GT(e.entry.revision, last);
    last = e.entry.revision;
  }
  EXPECT_EQ(ev.back().entry.value, "v49");
}

TEST_F(NatsKvTest, WatchDestructorStopsDelivery) {
  Recorder first;
  Recorder second;
  KvResult err;
  auto w1 = store_->watch("role", first.handler(), &err);
  ASSERT_NE(w1, nullptr) << err.message;
  auto w2 = store_->watch("role", second.handler(), &err);
  ASSERT_NE(w2, nullptr) << err.message;
  ASSERT_TRUE(first.wait_for_kind(WatchEvent::Kind::replay_done));
  ASSERT_TRUE(second.wait_for_kind(WatchEvent::Kind::replay_done));

  w1.reset();
  const auto seen = first.events().size();
  must_create("role", "alice");
  // The surviving watch saw the write, so the destroyed one had its chance.
  ASSERT_TRUE(second.wait_for_count(2));
  EXPECT_EQ(first.events().size(), seen);
}

TEST_F(NatsKvTest, WatchMayBeDestroyedFromItsOwnHandler) {
  std::mutex mu;
  std::unique_ptr<Watch> w;
  std::atomic<int> calls_after{0};
  std::atomic<bool> destroyed{false};
  KvResult err;
  auto created = store_->watch(
      "role",
      [&](const WatchEvent& e) {
        if (destroyed) ++calls_after;
        if (e.kind == WatchEvent::Kind::entry && e.entry.value == "boom") {
          std::lock_guard<std::mutex> lock(mu);
          w.reset();
          destroyed = true;
        }
      },
      &err);
  ASSERT_NE(created, nullptr) << err.message;
  {
    std::lock_guard<std::mutex> lock(mu);
    w = std::move(created);
  }
  must_create("role", "boom");
  ASSERT_TRUE(eventually([&] { return destroyed.load(); }, 5s, kWaitPoll));
  EXPECT_EQ(calls_after.load(), 0);
}

TEST_F(NatsKvTest, ManyWatchesNeedNoThreadEach) {
  auto threads_now = [] {
    std::size_t n = 0;
    for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/task")) ++n;
    return n;
  };
  std::vector<std::unique_ptr<Recorder>> recs;
  std::vector<std::unique_ptr<Watch>> watches;
  // Warm-up: the global delivery pool starts its thread on first use.
  recs.push_back(std::make_unique<Recorder>());
  KvResult err;
  watches.push_back(store_->watch("warm", recs.back()->handler(), &err));
  ASSERT_NE(watches.back(), nullptr) << err.message;
  const auto before = threads_now();
  for (int i = 0; i < 50; ++i) {
    recs.push_back(std::make_unique<Recorder>());
    watches.push_back(store_->watch("k" + std::to_string(i), recs.back()->handler(), &err));
    ASSERT_NE(watches.back(), nullptr) << err.message;
  }
  EXPECT_LT(threads_now(), before + 5);
  for (auto& r : recs) EXPECT_TRUE(r->wait_for_kind(WatchEvent::Kind::replay_done));
  watches.clear();
}

TEST_F(NatsKvTest, OpenBucketTwiceWithSameConfig) {
  auto again = open_result(bucket_, 10s);
  EXPECT_FALSE(again.error) << again.message;
  ASSERT_NE(again.store, nullptr);
  must_create("role", "alice");
  auto g = again.store->get("role", kCall);
  EXPECT_EQ(g.outcome, KvOutcome::ok);
}

TEST_F(NatsKvTest, OpenBucketWithOtherTtlIsBucketMismatch) {
  auto r = open_result(bucket_, 5s);
  EXPECT_EQ(r.store, nullptr);
  EXPECT_EQ(r.error, leader::make_error_code(Errc::bucket_mismatch)) << r.message;
  EXPECT_NE(r.message.find("bucket \"" + bucket_ + "\" exists with ttl 10s, config wants 5s"),
            std::string::npos)
      << r.message;
}

TEST_F(NatsKvTest, OpenBucketWithOtherStorageIsBucketMismatch) {
  auto r = open_result(bucket_, 10s, Storage::memory);
  EXPECT_EQ(r.store, nullptr);
  EXPECT_EQ(r.error, leader::make_error_code(Errc::bucket_mismatch)) << r.message;
  EXPECT_NE(r.message.find("file storage, config wants memory"), std::string::npos) << r.message;
}

TEST_F(NatsKvTest, MemoryBucketWorks) {
  auto mem = open(bucket_ + "-mem", 10s, Storage::memory);
  ASSERT_NE(mem, nullptr);
  auto c = mem->create("role", "alice", std::nullopt, kCall);
  EXPECT_EQ(c.outcome, KvOutcome::ok) << c.message;
  EXPECT_EQ(open_result(bucket_ + "-mem", 10s, Storage::file).error,
            leader::make_error_code(Errc::bucket_mismatch));
}

TEST(NatsBackendTest, ServerWithoutJetStreamIsJetstreamUnavailable) {
  NatsServer::Options o;
  o.jetstream = false;
  NatsServer server(o);
  auto backend = connect_backend(server.url());
  ASSERT_NE(backend, nullptr);
  const auto start = Clock::now();
  auto r = backend->open_bucket(spec_of("nojs", 10s), 2s);
  EXPECT_LT(Clock::now() - start, 4s);
  EXPECT_EQ(r.store, nullptr);
  EXPECT_EQ(r.error, leader::make_error_code(Errc::jetstream_unavailable)) << r.message;
  EXPECT_NE(r.message.find("JetStream is not available at nats://127.0.0.1:" + std::to_string(server.port())),
            std::string::npos)
      << r.message;
  EXPECT_NE(r.message.find("-js"), std::string::npos) << r.message;
}

// Found by the chaos cluster test: a stream-info or create request that
// the cluster never answered (another candidate was creating the stream)
// used to take the whole open timeout with it. A proxy drops exactly that
// request on a connection that stays up; the open must try again within
// its timeout (attempts of at most 2 s) and succeed.
void expect_open_survives_one_unanswered(const std::string& subject_prefix, bool create_first) {
  NatsServer server;
  const std::string bucket = "unanswered";
  if (create_first) {
    auto direct = connect_backend(server.url());
    ASSERT_NE(direct, nullptr);
    auto r = direct->open_bucket(spec_of(bucket, 10s), 5s);
    ASSERT_NE(r.store, nullptr) << r.message;
  }
  leader::testing::TcpProxy proxy(server.port());
  proxy.drop_publishes(subject_prefix + "KV_" + bucket, 1);
  auto backend = connect_backend(proxy.url());
  ASSERT_NE(backend, nullptr);
  constexpr auto kTimeout = 8s;
  const auto start = Clock::now();
  auto r = backend->open_bucket(spec_of(bucket, 10s), kTimeout);
  const auto took = Clock::now() - start;
  EXPECT_NE(r.store, nullptr) << r.error.message() << ": " << r.message;
  EXPECT_EQ(proxy.dropped_publishes(), 1u) << "the request was not dropped: the test tests nothing";
  // One attempt (2 s) lost, then answered at once; far less than the timeout.
  EXPECT_GE(took, 1900ms);
  EXPECT_LT(took, kTimeout - 2s) << "the unanswered request took the whole open timeout";
}

TEST(NatsBackendTest, AnUnansweredStreamInfoRequestIsTriedAgainWithinTheOpenTimeout) {
  expect_open_survives_one_unanswered("$JS.API.STREAM.INFO.", /*create_first=*/true);
}

TEST(NatsBackendTest, AnUnansweredStreamCreateRequestIsTriedAgainWithinTheOpenTimeout) {
  expect_open_survives_one_unanswered("$JS.API.STREAM.CREATE.", /*create_first=*/false);
}

TEST(NatsBackendTest, ConnectWithoutServerFailsNamingTheUrl) {
  const std::string url = "nats://127.0.0.1:" + std::to_string(leader::testing::free_port());
  std::error_code ec;
  std::string message;
  const auto start = Clock::now();
  auto backend = leader::detail::make_nats_backend(options_for(url), &ec, &message);
  EXPECT_LT(Clock::now() - start, 5s);
  EXPECT_EQ(backend, nullptr);
  EXPECT_EQ(ec, leader::make_error_code(Errc::disconnected)) << message;
  EXPECT_NE(message.find(url), std::string::npos) << message;
}

TEST_F(NatsKvTest, CallsEndWithinTheirTimeoutWhenServerIsKilled) {
  const auto rev = must_create("role", "alice");
  server_->kill();
  constexpr auto kTimeout = 1s;
  constexpr auto kBound = kTimeout + 4s;
  auto check = [&](const char* what, const std::function<KvResult()>& call) {
    const auto start = Clock::now();
    const auto r = call();
    const auto took = Clock::now() - start;
    EXPECT_NE(r.outcome, KvOutcome::ok) << what;
    EXPECT_LT(took, kBound) << what;
    EXPECT_FALSE(r.message.empty()) << what;
  };
  check("get", [&] { return store_->get("role", kTimeout); });
  check("create", [&] { return store_->create("other", "x", std::nullopt, kTimeout); });
  check("update", [&] { return store_->update("role", "y", rev, kTimeout); });
  check("erase", [&] { return store_->erase("role", rev, kTimeout); });
  // Once the client noticed, calls fail at once as disconnected.
  ASSERT_TRUE(eventually([&] { return backend_->state() != ConnectionState::connected; }, 5s, kWaitPoll));
  auto r = store_->get("role", kTimeout);
  EXPECT_EQ(r.outcome, KvOutcome::disconnected) << r.message;
  EXPECT_TRUE(backend_->open_bucket(spec_of(bucket_, 10s), kTimeout).error);
  Recorder rec;
  KvResult err;
  auto w = store_->watch("role", rec.handler(), &err);
  EXPECT_EQ(w, nullptr);
  EXPECT_EQ(err.outcome, KvOutcome::disconnected) << err.message;
}

TEST_F(NatsKvTest, CallsOnHungServerTimeOut) {
  must_create("role", "alice");
  server_->pause();
  const auto start = Clock::now();
  auto r = store_->get("role", 500ms);
  const auto took = Clock::now() - start;
  server_->resume();
  EXPECT_TRUE(r.outcome == KvOutcome::timeout || r.outcome == KvOutcome::disconnected)
      << str(r.outcome) << ": " << r.message;
  EXPECT_LT(took, 500ms + 4s);
}

TEST_F(NatsKvTest, StateListenerSeesDisconnectedThenConnected) {
  std::mutex mu;
  std::vector<ConnectionState> seen;
  auto has = [&](ConnectionState s, std::size_t from) {
    std::lock_guard<std::mutex> lock(mu);
    return std::find(seen.begin() + static_cast<std::ptrdiff_t>(std::min(from, seen.size())), seen.end(),
                     s) != seen.end();
  };
  const auto id = backend_->subscribe_state([&](ConnectionState s) {
    std::lock_guard<std::mutex> lock(mu);
    seen.push_back(s);
  });
  EXPECT_EQ(backend_->state(), ConnectionState::connected);
  server_->kill();
  ASSERT_TRUE(eventually([&] { return has(ConnectionState::disconnected, 0); }, 5s, kWaitPoll));
  EXPECT_NE(backend_->state(), ConnectionState::connected);
  std::size_t after_disconnect = 0;
  {
    std::lock_guard<std::mutex> lock(mu);
    after_disconnect = seen.size();
  }
  server_->restart();
  ASSERT_TRUE(eventually([&] { return has(ConnectionState::connected, after_disconnect); }, 10s, kWaitPoll));
  EXPECT_EQ(backend_->state(), ConnectionState::connected);
  // Data survives (file storage) and calls work again.
  ASSERT_TRUE(
      eventually([&] { return store_->create("role", "alice", std::nullopt, kCall).ok(); }, 10s, kWaitPoll));

  backend_->unsubscribe_state(id);
  std::size_t count = 0;
  {
    std::lock_guard<std::mutex> lock(mu);
    count = seen.size();
  }
  server_->kill();
  ASSERT_TRUE(eventually([&] { return backend_->state() != ConnectionState::connected; }, 5s, kWaitPoll));
  // A second listener proves the event was dispatched.
  std::atomic<int> other{0};
  const auto id2 = backend_->subscribe_state([&](ConnectionState) { ++other; });
  server_->restart();
  ASSERT_TRUE(eventually([&] { return other.load() > 0; }, 10s, kWaitPoll));
  backend_->unsubscribe_state(id2);
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(seen.size(), count);
}

// nats.c 3.4.1 looks up an inbound message's subscription and then locks it
// without a reference (nats.c issue 637): a subscription destroyed in that
// window made the reader lock freed memory (SEGV or heap corruption within a
// few hundred rounds). Watches hand their subscription to Core::retire
// instead, which frees it only once the reader is past it.
TEST_F(NatsKvTest, AWatchDestroyedWhileItsMessagesArriveDoesNotCrashTheReader) {
  natsConnection* raw_nc = nullptr;
  ASSERT_EQ(natsConnection_ConnectTo(&raw_nc, server_->url().c_str()), NATS_OK);
  std::unique_ptr<natsConnection, void (*)(natsConnection*)> publisher(raw_nc, &natsConnection_Destroy);
  const std::string subject = "$KV." + bucket_ + ".burst";
  constexpr int kRounds = 300;
  constexpr int kBurst = 200;
  for (int round = 0; round < kRounds; ++round) {
    std::mutex mu;
    std::condition_variable cv;
    bool live = false;
    bool replayed = false;
    KvResult err;
    auto watch = store_->watch(
        "burst",
        [&](const WatchEvent& e) {
          std::lock_guard<std::mutex> lock(mu);
          if (e.kind == WatchEvent::Kind::replay_done) replayed = true;
          if (e.kind == WatchEvent::Kind::entry && replayed) live = true;
          cv.notify_all();
        },
        &err);
    ASSERT_NE(watch, nullptr) << "round " << round << ": " << err.message;
    {
      std::unique_lock<std::mutex> lock(mu);
      ASSERT_TRUE(cv.wait_for(lock, 5s, [&] { return replayed; })) << "round " << round;
    }
    std::thread burst([&] {
      for (int i = 0; i < kBurst; ++i) natsConnection_PublishString(publisher.get(), subject.c_str(), "x");
      natsConnection_FlushTimeout(publisher.get(), 5000);
    });
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait_for(lock, 5s, [&] { return live; });
    }
    watch.reset();  // while the rest of the burst arrives
    burst.join();
  }
  // The connection and its reader survived: calls and new watches work.
  EXPECT_EQ(store_->get("burst", kCall).outcome, KvOutcome::ok);
  Recorder after;
  KvResult err;
  auto watch = store_->watch("burst", after.handler(), &err);
  ASSERT_NE(watch, nullptr) << err.message;
  EXPECT_TRUE(after.wait_for_kind(WatchEvent::Kind::replay_done));
}

TEST_F(NatsKvTest, WatchReportsErrorAfterReconnectAndCanBeRecreated) {
  const auto rev = must_create("role", "alice");
  Recorder rec;
  KvResult err;
  auto w = store_->watch("role", rec.handler(), &err);
  ASSERT_NE(w, nullptr) << err.message;
  ASSERT_TRUE(rec.wait_for_kind(WatchEvent::Kind::replay_done));
  server_->kill();
  server_->restart();
  ASSERT_TRUE(rec.wait_for_kind(WatchEvent::Kind::error, 15s));
  w.reset();

  Recorder again;
  std::unique_ptr<Watch> w2;
  ASSERT_TRUE(eventually(
      [&] {
        w2 = store_->watch("role", again.handler(), &err);
        return w2 != nullptr;
      },
      10s, kWaitPoll))
      << err.message;
  ASSERT_TRUE(again.wait_for_count(2));
  const auto ev = again.events();
  EXPECT_EQ(ev[0].entry.revision, rev);
  EXPECT_EQ(ev[1].kind, WatchEvent::Kind::replay_done);
}

TEST_F(NatsKvTest, WatchReportsErrorAfterServerHang) {
  must_create("role", "alice");
  Recorder rec;
  KvResult err;
  auto w = store_->watch("role", rec.handler(), &err);
  ASSERT_NE(w, nullptr) << err.message;
  ASSERT_TRUE(rec.wait_for_kind(WatchEvent::Kind::replay_done));
  server_->pause();
  // Pings every 1 s, 2 outstanding: the client gives up after about 3 s.
  const bool noticed =
      eventually([&] { return backend_->state() != ConnectionState::connected; }, 15s, kWaitPoll);
  server_->resume();
  ASSERT_TRUE(noticed);
  ASSERT_TRUE(rec.wait_for_kind(WatchEvent::Kind::error, 20s)) << rec.dump();
  ASSERT_TRUE(eventually([&] { return store_->get("role", kCall).ok(); }, 20s, kWaitPoll));
}

TEST_F(NatsKvTest, BackendMayBeDestroyedBeforeStoresAndWatches) {
  must_create("role", "alice");
  Recorder rec;
  KvResult err;
  auto w = store_->watch("role", rec.handler(), &err);
  ASSERT_NE(w, nullptr) << err.message;
  ASSERT_TRUE(rec.wait_for_kind(WatchEvent::Kind::replay_done));

  backend_.reset();
  ASSERT_TRUE(rec.wait_for_kind(WatchEvent::Kind::error));
  const auto ev = rec.events();
  EXPECT_EQ(ev.back().error, KvOutcome::closed) << ev.back().message;
  auto g = store_->get("role", kCall);
  EXPECT_EQ(g.outcome, KvOutcome::closed) << g.message;
  w.reset();
  store_.reset();
}

TEST(NatsOutcomeTest, ClassifiesExactly) {
  using leader::detail::nats::classify;
  using leader::detail::nats::Failure;
  const auto up = NATS_CONN_STATUS_CONNECTED;
  EXPECT_EQ(classify(Failure{NATS_OK, 0, ""}, up), KvOutcome::ok);
  EXPECT_EQ(classify(Failure{NATS_ERR, 10071, ""}, up), KvOutcome::conflict);
  EXPECT_EQ(classify(Failure{NATS_ERR, 0, "wrong last sequence: 5"}, up), KvOutcome::conflict);
  EXPECT_EQ(classify(Failure{NATS_NOT_FOUND, 10037, "no message found"}, up), KvOutcome::not_found);
  EXPECT_EQ(classify(Failure{NATS_ERR, 10037, ""}, up), KvOutcome::not_found);
  // A stale last-error text must not override an exact code.
  EXPECT_EQ(classify(Failure{NATS_NOT_FOUND, 10037, "wrong last sequence: 0"}, up), KvOutcome::not_found);
  EXPECT_EQ(classify(Failure{NATS_TIMEOUT, 0, ""}, up), KvOutcome::timeout);
  EXPECT_EQ(classify(Failure{NATS_TIMEOUT, 0, ""}, NATS_CONN_STATUS_RECONNECTING), KvOutcome::disconnected);
  EXPECT_EQ(classify(Failure{NATS_CONNECTION_DISCONNECTED, 0, ""}, up), KvOutcome::disconnected);
  EXPECT_EQ(classify(Failure{NATS_NO_RESPONDERS, 0, ""}, up), KvOutcome::no_responders);
  EXPECT_EQ(classify(Failure{NATS_CONNECTION_CLOSED, 0, ""}, up), KvOutcome::closed);
  EXPECT_EQ(classify(Failure{NATS_TIMEOUT, 0, ""}, NATS_CONN_STATUS_CLOSED), KvOutcome::closed);
  EXPECT_EQ(classify(Failure{NATS_ERR, 0, "Permissions Violation for Publish to \"x\""}, up),
            KvOutcome::permission_denied);
  EXPECT_EQ(classify(Failure{NATS_NOT_PERMITTED, 0, ""}, up), KvOutcome::permission_denied);
  EXPECT_EQ(classify(Failure{NATS_ERR, 10999, "something else"}, up), KvOutcome::other);
}

}  // namespace
