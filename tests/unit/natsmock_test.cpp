#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "natsmock/fake_clock.h"
#include "natsmock/mock_kv.h"

namespace leader::natsmock {
namespace {

using namespace std::chrono_literals;
using detail::BucketSpec;
using detail::Duration;
using detail::EntryOp;
using detail::KvOutcome;
using detail::KvResult;
using detail::KvStore;
using detail::WatchEvent;

constexpr Duration kTtl = std::chrono::seconds(1);
constexpr Duration kTimeout = std::chrono::milliseconds(100);
const char* const kBucket = "leaders";
// A real-time bound for handing a hung call over between threads; never
// reached when the mock works.
constexpr std::chrono::milliseconds kThreadLimit{10000};

BucketSpec spec(Duration ttl = kTtl, Storage storage = Storage::file, std::string name = kBucket) {
  BucketSpec s;
  s.name = std::move(name);
  s.ttl = ttl;
  s.storage = storage;
  return s;
}

std::shared_ptr<KvStore> open(MockClient& client, const BucketSpec& s = spec()) {
  detail::OpenResult r = client.open_bucket(s, kTimeout);
  EXPECT_FALSE(r.error) << r.message;
  return r.store;
}

// Records watch events; thread-safe.
class Recorder {
 public:
  detail::WatchHandler handler() {
    return [this](const WatchEvent& e) {
      std::lock_guard<std::mutex> lk(mu_);
      events_.push_back(e);
    };
  }
  std::vector<WatchEvent> events() const {
    std::lock_guard<std::mutex> lk(mu_);
    return events_;
  }
  std::size_t size() const { return events().size(); }
  void clear() {
    std::lock_guard<std::mutex> lk(mu_);
    events_.clear();
  }

 private:
  mutable std::mutex mu_;
  std::vector<WatchEvent> events_;
};

std::unique_ptr<detail::Watch> watch(KvStore& store, const std::string& key, Recorder& rec) {
  KvResult error;
  auto w = store.watch(key, rec.handler(), &error);
  EXPECT_NE(w, nullptr) << error.message;
  return w;
}

// One server, one client "a" with the bucket open.
struct Env {
  FakeClock clock;
  MockServer server{clock};
  std::shared_ptr<MockClient> a = server.client("a");
  std::shared_ptr<KvStore> store = open(*a);
};

TEST(NatsMockTest, OpenCreatesBucketAndAcceptsTheSameSpecAgain) {
  FakeClock clock;
  MockServer server(clock);
  auto client = server.client("a");
  EXPECT_FALSE(server.has_bucket(kBucket));
  auto r1 = client->open_bucket(spec(), kTimeout);
  ASSERT_FALSE(r1.error) << r1.message;
  ASSERT_NE(r1.store, nullptr);
  EXPECT_TRUE(server.has_bucket(kBucket));
  auto r2 = server.client("b")->open_bucket(spec(), kTimeout);
  EXPECT_FALSE(r2.error) << r2.message;
  EXPECT_NE(r2.store, nullptr);
}

TEST(NatsMockTest, OpenWithAnotherTtlOrStorageIsBucketMismatch) {
  FakeClock clock;
  MockServer server(clock);
  auto client = server.client("a");
  ASSERT_NE(open(*client, spec(2s, Storage::file)), nullptr);

  auto ttl = client->open_bucket(spec(1s, Storage::file), kTimeout);
  EXPECT_EQ(ttl.error, make_error_code(Errc::bucket_mismatch));
  EXPECT_EQ(ttl.store, nullptr);
  EXPECT_NE(ttl.message.find("leaders"), std::string::npos) << ttl.message;
  EXPECT_NE(ttl.message.find("2000ms"), std::string::npos) << ttl.message;
  EXPECT_NE(ttl.message.find("1000ms"), std::string::npos) << ttl.message;

  auto storage = client->open_bucket(spec(2s, Storage::memory), kTimeout);
  EXPECT_EQ(storage.error, make_error_code(Errc::bucket_mismatch));
  EXPECT_NE(storage.message.find("file"), std::string::npos) << storage.message;
  EXPECT_NE(storage.message.find("memory"), std::string::npos) << storage.message;

  EXPECT_FALSE(server.create_bucket(spec(3s)));
  EXPECT_TRUE(server.create_bucket(spec(2s)));
}

TEST(NatsMockTest, JetStreamOffFailsOpenAndCalls) {
  Env env;
  env.server.set_jetstream(false);
  auto r = env.a->open_bucket(spec(kTtl, Storage::file, "other"), kTimeout);
  EXPECT_EQ(r.error, make_error_code(Errc::jetstream_unavailable));
  EXPECT_EQ(r.store, nullptr);
  EXPECT_NE(r.message.find("other"), std::string::npos) << r.message;
  EXPECT_FALSE(env.server.has_bucket("other"));
  EXPECT_EQ(env.store->get("k", kTimeout).outcome, KvOutcome::no_responders);
  EXPECT_EQ(env.store->create("k", "v", std::nullopt, kTimeout).outcome, KvOutcome::no_responders);
  EXPECT_FALSE(env.server.peek(kBucket, "k"));

  env.server.set_jetstream(true);
  EXPECT_TRUE(env.store->create("k", "v", std::nullopt, kTimeout).ok());
}

TEST(NatsMockTest, RevisionsIncreaseAcrossKeysOfABucket) {
  Env env;
  auto r1 = env.store->create("x", "1", std::nullopt, kTimeout);
  auto r2 = env.store->create("y", "1", std::nullopt, kTimeout);
  auto r3 = env.store->update("x", "2", r1.revision, kTimeout);
  auto r4 = env.store->erase("y", r2.revision, kTimeout);
  auto r5 = env.server.put_raw(kBucket, "z", "1");
  ASSERT_TRUE(r1.ok() && r2.ok() && r3.ok() && r4.ok());
  EXPECT_EQ(r1.revision, 1u);
  EXPECT_EQ(r2.revision, 2u);
  EXPECT_EQ(r3.revision, 3u);
  EXPECT_EQ(r4.revision, 4u);
  EXPECT_EQ(r5, 5u);
  EXPECT_EQ(env.server.last_revision(kBucket), 5u);

  // Another bucket has its own sequence.
  auto other = open(*env.a, spec(kTtl, Storage::file, "other"));
  EXPECT_EQ(other->create("x", "1", std::nullopt, kTimeout).revision, 1u);
}

TEST(NatsMockTest, GetReturnsTheLatestMessageOrNotFound) {
  Env env;
  EXPECT_EQ(env.store->get("k", kTimeout).outcome, KvOutcome::not_found);
  auto c = env.store->create("k", "v1", std::nullopt, kTimeout);
  auto u = env.store->update("k", "v2", c.revision, kTimeout);
  auto g = env.store->get("k", kTimeout);
  ASSERT_TRUE(g.ok());
  ASSERT_TRUE(g.entry);
  EXPECT_EQ(g.entry->key, "k");
  EXPECT_EQ(g.entry->value, "v2");
  EXPECT_EQ(g.entry->revision, u.revision);
  EXPECT_EQ(g.entry->op, EntryOp::put);
  EXPECT_EQ(g.entry->created_ns, env.clock.now().time_since_epoch().count());

  auto e = env.store->erase("k", u.revision, kTimeout);
  g = env.store->get("k", kTimeout);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g.entry->op, EntryOp::del);
  EXPECT_EQ(g.entry->revision, e.revision);
  EXPECT_EQ(g.entry->value, "");
}

TEST(NatsMockTest, CreateConflictsWithALiveEntryAndCarriesIt) {
  Env env;
  auto first = env.store->create("k", "a", std::nullopt, kTimeout);
  ASSERT_TRUE(first.ok());
  auto b = env.server.client("b");
  auto store_b = open(*b);
  auto second = store_b->create("k", "b", std::nullopt, kTimeout);
  EXPECT_EQ(second.outcome, KvOutcome::conflict);
  EXPECT_EQ(second.revision, 0u);
  ASSERT_TRUE(second.entry);
  EXPECT_EQ(second.entry->value, "a");
  EXPECT_EQ(second.entry->revision, first.revision);
  EXPECT_NE(second.message.find("wrong last sequence: 1"), std::string::npos) << second.message;

  b->set_conflict_entry(false);
  auto third = store_b->create("k", "b", std::nullopt, kTimeout);
  EXPECT_EQ(third.outcome, KvOutcome::conflict);
  EXPECT_FALSE(third.entry);
  EXPECT_EQ(env.server.peek(kBucket, "k")->value, "a");
}

TEST(NatsMockTest, CreateWritesOverADeleteMarker) {
  Env env;
  auto c = env.store->create("k", "a", std::nullopt, kTimeout);
  auto e = env.store->erase("k", c.revision, kTimeout);
  ASSERT_TRUE(e.ok());
  // Without last_marker: the conflict on the marker is retried over it.
  auto again = env.store->create("k", "b", std::nullopt, kTimeout);
  ASSERT_TRUE(again.ok()) << again.message;
  EXPECT_GT(again.revision, e.revision);

  // With last_marker: one write expecting exactly that revision.
  auto e2 = env.store->erase("k", again.revision, kTimeout);
  auto stale = env.store->create("k", "c", e.revision, kTimeout);
  EXPECT_EQ(stale.outcome, KvOutcome::conflict);
  ASSERT_TRUE(stale.entry);
  EXPECT_EQ(stale.entry->op, EntryOp::del);
  EXPECT_EQ(stale.entry->revision, e2.revision);
  auto fresh = env.store->create("k", "c", e2.revision, kTimeout);
  ASSERT_TRUE(fresh.ok()) << fresh.message;
  EXPECT_EQ(env.server.peek(kBucket, "k")->value, "c");

  // A purge marker counts as a marker too.
  auto p = env.server.purge_raw(kBucket, "k");
  EXPECT_EQ(env.server.peek(kBucket, "k")->op, EntryOp::purge);
  auto over_purge = env.store->create("k", "d", std::nullopt, kTimeout);
  ASSERT_TRUE(over_purge.ok());
  EXPECT_EQ(over_purge.revision, p + 1);

  // With last_marker on a key without any message: conflict.
  auto missing = env.store->create("nothing", "x", 1, kTimeout);
  EXPECT_EQ(missing.outcome, KvOutcome::conflict);
  EXPECT_FALSE(missing.entry);
}

TEST(NatsMockTest, UpdateNeedsTheLatestRevision) {
  Env env;
  auto missing = env.store->update("k", "v", 7, kTimeout);
  EXPECT_EQ(missing.outcome, KvOutcome::conflict);
  EXPECT_NE(missing.message.find("wrong last sequence: 0"), std::string::npos) << missing.message;

  auto c = env.store->create("k", "v1", std::nullopt, kTimeout);
  auto u = env.store->update("k", "v2", c.revision, kTimeout);
  ASSERT_TRUE(u.ok());
  auto stale = env.store->update("k", "v3", c.revision, kTimeout);
  EXPECT_EQ(stale.outcome, KvOutcome::conflict);
  ASSERT_TRUE(stale.entry);
  EXPECT_EQ(stale.entry->revision, u.revision);
  EXPECT_EQ(env.server.peek(kBucket, "k")->value, "v2");

  // kvStore_Update(last = 0) publishes with ExpectNoMessage.
  EXPECT_EQ(env.store->update("k", "v4", 0, kTimeout).outcome, KvOutcome::conflict);
  EXPECT_TRUE(env.store->update("fresh", "v", 0, kTimeout).ok());

  // The expectation matches a marker's revision as well.
  auto e = env.store->erase("k", u.revision, kTimeout);
  EXPECT_TRUE(env.store->update("k", "v5", e.revision, kTimeout).ok());
}

TEST(NatsMockTest, EraseWritesAMarkerOnlyAtTheExpectedRevision) {
  Env env;
  auto c = env.store->create("k", "v1", std::nullopt, kTimeout);
  auto u = env.store->update("k", "v2", c.revision, kTimeout);
  auto stale = env.store->erase("k", c.revision, kTimeout);
  EXPECT_EQ(stale.outcome, KvOutcome::conflict);
  EXPECT_EQ(env.server.peek(kBucket, "k")->op, EntryOp::put);

  auto e = env.store->erase("k", u.revision, kTimeout);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e.revision, u.revision + 1);
  auto marker = env.server.peek(kBucket, "k");
  ASSERT_TRUE(marker);
  EXPECT_EQ(marker->op, EntryOp::del);
  EXPECT_EQ(marker->revision, e.revision);
  EXPECT_EQ(env.store->erase("k", u.revision, kTimeout).outcome, KvOutcome::conflict);
  EXPECT_EQ(env.store->erase("missing", 3, kTimeout).outcome, KvOutcome::conflict);
}

TEST(NatsMockTest, EraseWithRevisionZeroIsUnconditionalLikeTheServer) {
  // ExpectLastSubjectSeq = 0 means "unset": the trap the adapter must avoid.
  Env env;
  auto c = env.store->create("k", "v", std::nullopt, kTimeout);
  ASSERT_TRUE(c.ok());
  auto e = env.store->erase("k", 0, kTimeout);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(env.server.peek(kBucket, "k")->op, EntryOp::del);
}

TEST(NatsMockTest, KeyExpiresExactlyAtTtlWithoutAWatchEvent) {
  Env env;
  Recorder rec;
  auto c = env.store->create("k", "v", std::nullopt, kTimeout);
  auto w = watch(*env.store, "k", rec);
  ASSERT_EQ(rec.size(), 2u);  // replay + replay_done

  env.clock.advance(kTtl - 1ns);
  EXPECT_TRUE(env.server.peek(kBucket, "k"));
  EXPECT_TRUE(env.store->get("k", kTimeout).ok());

  env.clock.advance(1ns);
  EXPECT_FALSE(env.server.peek(kBucket, "k"));
  EXPECT_EQ(env.store->get("k", kTimeout).outcome, KvOutcome::not_found);
  EXPECT_EQ(rec.size(), 2u) << "expiry must not send a watch event";

  auto u = env.store->update("k", "v2", c.revision, kTimeout);
  EXPECT_EQ(u.outcome, KvOutcome::conflict);
  EXPECT_NE(u.message.find("wrong last sequence: 0"), std::string::npos) << u.message;
  EXPECT_EQ(env.store->erase("k", c.revision, kTimeout).outcome, KvOutcome::conflict);
  auto again = env.store->create("k", "v3", std::nullopt, kTimeout);
  ASSERT_TRUE(again.ok());
  EXPECT_GT(again.revision, c.revision);  // the sequence keeps counting
  EXPECT_EQ(rec.size(), 3u);
}

TEST(NatsMockTest, EachWriteRestartsTheAge) {
  Env env;
  auto c = env.store->create("k", "v", std::nullopt, kTimeout);
  env.clock.advance(kTtl - 1ms);
  auto u = env.store->update("k", "v2", c.revision, kTimeout);
  ASSERT_TRUE(u.ok());
  env.clock.advance(kTtl - 1ms);
  EXPECT_EQ(env.server.peek(kBucket, "k")->revision, u.revision);
  env.clock.advance(1ms);
  EXPECT_FALSE(env.server.peek(kBucket, "k"));
}

TEST(NatsMockTest, DeleteMarkersExpireToo) {
  Env env;
  auto c = env.store->create("k", "v", std::nullopt, kTimeout);
  env.clock.advance(kTtl / 2);
  auto e = env.store->erase("k", c.revision, kTimeout);
  env.clock.advance(kTtl / 2);
  ASSERT_TRUE(env.server.peek(kBucket, "k"));
  EXPECT_EQ(env.server.peek(kBucket, "k")->revision, e.revision);
  env.clock.advance(kTtl / 2);
  EXPECT_FALSE(env.server.peek(kBucket, "k"));
  EXPECT_EQ(env.store->get("k", kTimeout).outcome, KvOutcome::not_found);
  // The expired marker's revision no longer matches.
  EXPECT_EQ(env.store->create("k", "v", e.revision, kTimeout).outcome, KvOutcome::conflict);
  EXPECT_TRUE(env.store->create("k", "v", std::nullopt, kTimeout).ok());
}

TEST(NatsMockTest, ZeroTtlNeverExpires) {
  FakeClock clock;
  MockServer server(clock);
  auto client = server.client("a");
  auto store = open(*client, spec(Duration::zero()));
  ASSERT_TRUE(store->create("k", "v", std::nullopt, kTimeout).ok());
  clock.advance(std::chrono::hours(24 * 365));
  EXPECT_TRUE(store->get("k", kTimeout).ok());
}

TEST(NatsMockTest, WatchReplaysThenMarksReplayDoneThenDeliversEveryWrite) {
  Env env;
  auto c = env.store->create("k", "v1", std::nullopt, kTimeout);
  env.store->create("other", "x", std::nullopt, kTimeout);
  Recorder rec;
  auto w = watch(*env.store, "k", rec);
  auto events = rec.events();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].kind, WatchEvent::Kind::entry);
  EXPECT_EQ(events[0].entry.value, "v1");
  EXPECT_EQ(events[0].entry.revision, c.revision);
  EXPECT_EQ(events[1].kind, WatchEvent::Kind::replay_done);

  // Live events from any client, delivered before the writing call returns.
  auto b = env.server.client("b");
  auto store_b = open(*b);
  auto u = store_b->update("k", "v2", c.revision, kTimeout);
  ASSERT_EQ(rec.size(), 3u);
  auto e = env.store->erase("k", u.revision, kTimeout);
  ASSERT_EQ(rec.size(), 4u);
  auto p = env.server.put_raw(kBucket, "k", "raw");
  ASSERT_EQ(rec.size(), 5u);
  env.store->update("other", "y", 2, kTimeout);  // another key: no event
  EXPECT_EQ(store_b->update("k", "nope", c.revision, kTimeout).outcome, KvOutcome::conflict);  // not applied
  events = rec.events();
  ASSERT_EQ(events.size(), 5u);
  EXPECT_EQ(events[2].entry.value, "v2");
  EXPECT_EQ(events[2].entry.revision, u.revision);
  EXPECT_EQ(events[3].entry.op, EntryOp::del);
  EXPECT_EQ(events[3].entry.revision, e.revision);
  EXPECT_EQ(events[4].entry.value, "raw");
  EXPECT_EQ(events[4].entry.revision, p);
}

TEST(NatsMockTest, WatchReplaysAMarkerAndAnEmptyKey) {
  Env env;
  auto c = env.store->create("k", "v", std::nullopt, kTimeout);
  auto e = env.store->erase("k", c.revision, kTimeout);
  Recorder marker;
  auto w1 = watch(*env.store, "k", marker);
  auto events = marker.events();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].entry.op, EntryOp::del);
  EXPECT_EQ(events[0].entry.revision, e.revision);
  EXPECT_EQ(events[1].kind, WatchEvent::Kind::replay_done);

  Recorder empty;
  auto w2 = watch(*env.store, "none", empty);
  events = empty.events();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].kind, WatchEvent::Kind::replay_done);
  EXPECT_EQ(env.server.watch_count(kBucket, "none"), 1u);
}

TEST(NatsMockTest, DestroyedWatchGetsNoMoreEvents) {
  Env env;
  Recorder rec;
  auto w = watch(*env.store, "k", rec);
  env.store->create("k", "v", std::nullopt, kTimeout);
  ASSERT_EQ(rec.size(), 2u);
  w.reset();
  EXPECT_EQ(env.server.watch_count(kBucket, "k"), 0u);
  env.server.put_raw(kBucket, "k", "v2");
  EXPECT_EQ(rec.size(), 2u);
}

TEST(NatsMockTest, WatchMayBeDestroyedFromItsOwnHandler) {
  Env env;
  std::unique_ptr<detail::Watch> w;
  int calls = 0;
  KvResult error;
  w = env.store->watch(
      "k",
      [&](const WatchEvent& e) {
        ++calls;
        if (e.kind == WatchEvent::Kind::entry) w.reset();
      },
      &error);
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(calls, 1);  // replay_done
  env.server.put_raw(kBucket, "k", "v");
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(w, nullptr);
  env.server.put_raw(kBucket, "k", "v2");
  EXPECT_EQ(calls, 2);
}

TEST(NatsMockTest, SilentWatchDeliversNothing) {
  Env env;
  env.store->create("k", "v", std::nullopt, kTimeout);
  env.a->set_watch_silent(true);
  Recorder rec;
  auto w = watch(*env.store, "k", rec);
  env.server.put_raw(kBucket, "k", "v2");
  EXPECT_EQ(rec.size(), 0u);
  EXPECT_EQ(env.server.watch_count(kBucket, "k"), 1u);

  // Another client's watch still works.
  auto b = env.server.client("b");
  auto store_b = open(*b);
  Recorder rec_b;
  auto wb = watch(*store_b, "k", rec_b);
  env.server.put_raw(kBucket, "k", "v3");
  EXPECT_EQ(rec_b.size(), 3u);

  // Dropped events are not held back.
  env.a->set_watch_silent(false);
  EXPECT_EQ(rec.size(), 0u);
  env.server.put_raw(kBucket, "k", "v4");
  auto events = rec.events();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].entry.value, "v4");
}

TEST(NatsMockTest, FailWatchCreateFailsTheNextWatchOnly) {
  Env env;
  env.a->fail_watch_create(KvOutcome::timeout);
  Recorder rec;
  KvResult error;
  EXPECT_EQ(env.store->watch("k", rec.handler(), &error), nullptr);
  EXPECT_EQ(error.outcome, KvOutcome::timeout);
  EXPECT_FALSE(error.message.empty());
  EXPECT_EQ(rec.size(), 0u);
  EXPECT_EQ(env.server.watch_count(kBucket, "k"), 0u);
  EXPECT_NE(env.store->watch("k", rec.handler(), &error), nullptr);
}

TEST(NatsMockTest, LostAckAppliesTheWriteButReportsTheFault) {
  Env env;
  Recorder rec;
  auto w = watch(*env.store, "k", rec);
  env.a->inject({"create", KvOutcome::timeout, /*applied=*/true});
  auto c = env.store->create("k", "mine", std::nullopt, kTimeout);
  EXPECT_EQ(c.outcome, KvOutcome::timeout);
  EXPECT_EQ(c.revision, 0u);
  auto stored = env.server.peek(kBucket, "k");
  ASSERT_TRUE(stored);
  EXPECT_EQ(stored->value, "mine");
  EXPECT_EQ(rec.size(), 2u);  // replay_done + the applied write
  auto log = env.server.calls();
  ASSERT_FALSE(log.empty());
  EXPECT_EQ(log.back().outcome, KvOutcome::timeout);
  EXPECT_TRUE(log.back().applied);
  EXPECT_EQ(log.back().revision, stored->revision);

  // A lost-ack write whose expectation fails is not applied.
  env.a->inject({"update", KvOutcome::timeout, /*applied=*/true});
  EXPECT_EQ(env.store->update("k", "x", 99, kTimeout).outcome, KvOutcome::timeout);
  EXPECT_EQ(env.server.peek(kBucket, "k")->value, "mine");
  EXPECT_FALSE(env.server.calls().back().applied);
}

TEST(NatsMockTest, FaultsAreConsumedInOrderByMatchingCalls) {
  Env env;
  env.a->inject({"update", KvOutcome::no_responders});
  env.a->inject({"*", KvOutcome::other, false, false, 2});
  EXPECT_EQ(env.a->pending_faults(), 2u);
  // get skips the update fault and takes the first of two "*" hits.
  EXPECT_EQ(env.store->get("k", kTimeout).outcome, KvOutcome::other);
  auto c = env.store->create("k", "v", std::nullopt, kTimeout);
  EXPECT_EQ(c.outcome, KvOutcome::other);
  EXPECT_FALSE(env.server.peek(kBucket, "k"));  // not applied
  EXPECT_EQ(env.a->pending_faults(), 1u);
  c = env.store->create("k", "v", std::nullopt, kTimeout);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(env.store->update("k", "v2", c.revision, kTimeout).outcome, KvOutcome::no_responders);
  EXPECT_EQ(env.a->pending_faults(), 0u);
  EXPECT_TRUE(env.store->update("k", "v2", c.revision, kTimeout).ok());

  // Faults are per client.
  auto b = env.server.client("b");
  auto store_b = open(*b);
  env.a->inject({"get", KvOutcome::timeout});
  EXPECT_TRUE(store_b->get("k", kTimeout).ok());
  EXPECT_EQ(env.store->get("k", kTimeout).outcome, KvOutcome::timeout);

  // times <= 0 lasts until cleared; "*" does not hit open.
  env.a->inject({"*", KvOutcome::timeout, false, false, 0});
  for (int i = 0; i < 3; ++i) EXPECT_EQ(env.store->get("k", kTimeout).outcome, KvOutcome::timeout);
  EXPECT_NE(open(*env.a), nullptr);
  env.a->clear_faults();
  EXPECT_TRUE(env.store->get("k", kTimeout).ok());

  env.a->inject({"open", KvOutcome::timeout});
  auto r = env.a->open_bucket(spec(), kTimeout);
  EXPECT_EQ(r.error, make_error_code(Errc::timeout));
}

TEST(NatsMockTest, NoRespondersFailsEverythingWithoutApplying) {
  Env env;
  auto c = env.store->create("k", "v", std::nullopt, kTimeout);
  env.a->set_no_responders(true);
  EXPECT_EQ(env.store->get("k", kTimeout).outcome, KvOutcome::no_responders);
  EXPECT_EQ(env.store->update("k", "v2", c.revision, kTimeout).outcome, KvOutcome::no_responders);
  EXPECT_EQ(env.store->erase("k", c.revision, kTimeout).outcome, KvOutcome::no_responders);
  EXPECT_EQ(env.store->create("k2", "v", std::nullopt, kTimeout).outcome, KvOutcome::no_responders);
  Recorder rec;
  KvResult error;
  EXPECT_EQ(env.store->watch("k", rec.handler(), &error), nullptr);
  EXPECT_EQ(error.outcome, KvOutcome::no_responders);
  EXPECT_EQ(env.a->open_bucket(spec(), kTimeout).error, make_error_code(Errc::no_responders));
  EXPECT_EQ(env.server.peek(kBucket, "k")->revision, c.revision);
  EXPECT_FALSE(env.server.peek(kBucket, "k2"));
  EXPECT_EQ(env.a->buffered_writes(), 0u);

  env.a->set_no_responders(false);
  EXPECT_TRUE(env.store->update("k", "v2", c.revision, kTimeout).ok());
}

TEST(NatsMockTest, DisconnectedBuffersWritesAndAppliesThemOnReconnect) {
  Env env;
  auto b = env.server.client("b");
  auto store_b = open(*b);
  auto c = env.store->create("k", "v1", std::nullopt, kTimeout);
  auto c2 = env.store->create("k2", "x", std::nullopt, kTimeout);

  std::vector<ConnectionState> states;
  env.a->subscribe_state([&](ConnectionState s) { states.push_back(s); });
  Recorder mine;
  Recorder theirs;
  Recorder mine3;
  auto wa = watch(*env.store, "k", mine);
  auto wb = watch(*store_b, "k", theirs);
  auto wa3 = watch(*env.store, "k3", mine3);
  mine.clear();
  theirs.clear();
  mine3.clear();

  env.a->set_disconnected(true);
  EXPECT_EQ(env.a->state(), ConnectionState::disconnected);
  EXPECT_EQ(env.store->get("k", kTimeout).outcome, KvOutcome::disconnected);
  // Buffered, not applied: a renewal that "timed out", a stale one, a delete.
  EXPECT_EQ(env.store->update("k", "renew", c.revision, kTimeout).outcome, KvOutcome::disconnected);
  EXPECT_EQ(env.store->update("k", "stale", c.revision, kTimeout).outcome, KvOutcome::disconnected);
  EXPECT_EQ(env.store->erase("k2", c2.revision, kTimeout).outcome, KvOutcome::disconnected);
  EXPECT_EQ(env.a->buffered_writes(), 3u);
  EXPECT_EQ(env.server.peek(kBucket, "k")->value, "v1");
  KvResult error;
  EXPECT_EQ(env.store->watch("k", mine.handler(), &error), nullptr);
  EXPECT_EQ(error.outcome, KvOutcome::disconnected);
  EXPECT_EQ(env.a->open_bucket(spec(), kTimeout).error, make_error_code(Errc::disconnected));

  // Events for the disconnected client are dropped.
  ASSERT_TRUE(store_b->create("k3", "b", std::nullopt, kTimeout).ok());
  EXPECT_EQ(mine3.size(), 0u);

  env.a->set_disconnected(false);
  EXPECT_EQ(env.a->state(), ConnectionState::connected);
  EXPECT_EQ(env.a->buffered_writes(), 0u);
  auto k = env.server.peek(kBucket, "k");
  ASSERT_TRUE(k);
  EXPECT_EQ(k->value, "renew");  // the first applied, the stale one failed at apply time
  EXPECT_EQ(env.server.peek(kBucket, "k2")->op, EntryOp::del);

  // The other client's watch saw the applied write; ours got an error and stops.
  auto their_events = theirs.events();
  ASSERT_EQ(their_events.size(), 1u);
  EXPECT_EQ(their_events[0].entry.value, "renew");
  auto my_events = mine.events();
  ASSERT_EQ(my_events.size(), 1u);
  EXPECT_EQ(my_events[0].kind, WatchEvent::Kind::error);
  EXPECT_EQ(my_events[0].error, KvOutcome::disconnected);
  auto my_events3 = mine3.events();
  ASSERT_EQ(my_events3.size(), 1u);
  EXPECT_EQ(my_events3[0].kind, WatchEvent::Kind::error);
  EXPECT_EQ(env.server.watch_count(kBucket, "k"), 1u);
  env.server.put_raw(kBucket, "k", "later");
  EXPECT_EQ(mine.size(), 1u);

  EXPECT_EQ(states,
            (std::vector<ConnectionState>{ConnectionState::disconnected, ConnectionState::connected}));

  std::vector<CallRecord> replayed;
  for (const auto& r : env.server.calls()) {
    if (r.buffered) replayed.push_back(r);
  }
  ASSERT_EQ(replayed.size(), 3u);
  EXPECT_EQ(replayed[0].op, "update");
  EXPECT_EQ(replayed[0].outcome, KvOutcome::ok);
  EXPECT_TRUE(replayed[0].applied);
  EXPECT_EQ(replayed[1].outcome, KvOutcome::conflict);
  EXPECT_FALSE(replayed[1].applied);
  EXPECT_EQ(replayed[2].op, "erase");
  EXPECT_TRUE(replayed[2].applied);
}

TEST(NatsMockTest, BufferedCreateDoesNotRetryOverAMarker) {
  Env env;
  auto c = env.store->create("k", "v", std::nullopt, kTimeout);
  env.store->erase("k", c.revision, kTimeout);
  env.a->set_disconnected(true);
  EXPECT_EQ(env.store->create("k", "mine", std::nullopt, kTimeout).outcome, KvOutcome::disconnected);
  env.a->set_disconnected(false);
  EXPECT_EQ(env.server.peek(kBucket, "k")->op, EntryOp::del);
}

TEST(NatsMockTest, WritesAreDroppedWhenBufferingIsOff) {
  Env env;
  env.a->set_buffer_writes(false);
  env.a->set_disconnected(true);
  EXPECT_EQ(env.store->create("k", "v", std::nullopt, kTimeout).outcome, KvOutcome::disconnected);
  EXPECT_EQ(env.a->buffered_writes(), 0u);
  env.a->set_disconnected(false);
  EXPECT_FALSE(env.server.peek(kBucket, "k"));
}

TEST(NatsMockTest, StaleReadsServeThePreviousMessage) {
  Env env;
  env.a->set_stale_reads(true);
  auto c = env.store->create("k", "v1", std::nullopt, kTimeout);
  EXPECT_EQ(env.store->get("k", kTimeout).outcome, KvOutcome::not_found);
  auto u = env.store->update("k", "v2", c.revision, kTimeout);
  auto g = env.store->get("k", kTimeout);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g.entry->value, "v1");
  EXPECT_EQ(g.entry->revision, c.revision);

  // Other clients read the latest.
  auto b = env.server.client("b");
  EXPECT_EQ(open(*b)->get("k", kTimeout).entry->revision, u.revision);

  env.a->set_stale_reads(false);
  EXPECT_EQ(env.store->get("k", kTimeout).entry->revision, u.revision);
}

TEST(NatsMockTest, HungCallIsReleasedFromAnotherThread) {
  Env env;
  auto c = env.store->create("k", "v", std::nullopt, kTimeout);
  Fault f;
  f.op = "update";
  f.outcome = KvOutcome::timeout;
  f.applied = true;
  f.hang = true;
  env.a->inject(f);
  KvResult result;
  std::thread t([&] { result = env.store->update("k", "late", c.revision, kTimeout); });
  ASSERT_TRUE(env.a->wait_for_hung_calls(1, kThreadLimit));
  EXPECT_EQ(env.a->hung_calls(), 1u);
  EXPECT_EQ(env.server.peek(kBucket, "k")->value, "v");  // applied at release
  env.clock.advance(kTtl / 2);
  env.a->release_hangs();
  t.join();
  EXPECT_EQ(result.outcome, KvOutcome::timeout);
  EXPECT_EQ(env.a->hung_calls(), 0u);
  auto k = env.server.peek(kBucket, "k");
  ASSERT_TRUE(k);
  EXPECT_EQ(k->value, "late");
  EXPECT_EQ(env.server.calls().back().at, env.clock.now());
}

TEST(NatsMockTest, SlowCallCompletesNormallyAfterRelease) {
  Env env;
  env.a->inject({"create", KvOutcome::ok, false, true});
  KvResult result;
  std::thread t([&] { result = env.store->create("k", "v", std::nullopt, kTimeout); });
  ASSERT_TRUE(env.a->wait_for_hung_calls(1, kThreadLimit));
  env.a->release_hangs();
  t.join();
  EXPECT_TRUE(result.ok());
  EXPECT_EQ(env.server.peek(kBucket, "k")->revision, result.revision);
}

TEST(NatsMockTest, HungCallIsReleasedWhenItsClientGoes) {
  FakeClock clock;
  MockServer server(clock);
  auto client = server.client("a");
  auto store = open(*client);
  client->inject({"get", KvOutcome::timeout, false, true});
  KvResult result;
  std::thread t([&] { result = store->get("k", kTimeout); });
  ASSERT_TRUE(client->wait_for_hung_calls(1, kThreadLimit));
  client.reset();
  t.join();
  EXPECT_EQ(result.outcome, KvOutcome::timeout);
  EXPECT_EQ(store->get("k", kTimeout).outcome, KvOutcome::closed);
}

TEST(NatsMockTest, HungCallIsReleasedWhenTheServerGoes) {
  FakeClock clock;
  auto server = std::make_unique<MockServer>(clock);
  auto client = server->client("a");
  auto store = open(*client);
  client->inject({"erase", KvOutcome::timeout, false, true});
  KvResult result;
  std::thread t([&] { result = store->erase("k", 1, kTimeout); });
  ASSERT_TRUE(client->wait_for_hung_calls(1, kThreadLimit));
  server.reset();
  t.join();
  EXPECT_EQ(result.outcome, KvOutcome::timeout);
  EXPECT_EQ(client->state(), ConnectionState::closed);
  EXPECT_EQ(store->get("k", kTimeout).outcome, KvOutcome::closed);
}

TEST(NatsMockTest, CallLogRecordsEveryCall) {
  Env env;  // "open" by a
  auto b = env.server.client("b");
  auto store_b = open(*b);
  env.clock.advance(1s);
  auto c = env.store->create("k", "v", std::nullopt, kTimeout);
  env.clock.advance(1ms);
  store_b->update("k", "x", c.revision + 5, kTimeout);
  env.store->get("k", kTimeout);
  Recorder rec;
  auto w = watch(*store_b, "k", rec);
  env.store->erase("k", c.revision, kTimeout);
  env.server.put_raw(kBucket, "k", "raw");

  auto log = env.server.calls();
  ASSERT_EQ(log.size(), 8u);
  EXPECT_EQ(log[0].op, "open");
  EXPECT_EQ(log[0].client, "a");
  EXPECT_EQ(log[0].key, kBucket);
  EXPECT_EQ(log[1].op, "open");
  EXPECT_EQ(log[1].client, "b");

  EXPECT_EQ(log[2].op, "create");
  EXPECT_EQ(log[2].client, "a");
  EXPECT_EQ(log[2].key, "k");
  EXPECT_EQ(log[2].value, "v");
  EXPECT_FALSE(log[2].expected);
  EXPECT_EQ(log[2].outcome, KvOutcome::ok);
  EXPECT_EQ(log[2].revision, c.revision);
  EXPECT_TRUE(log[2].applied);
  EXPECT_EQ(log[2].at, env.clock.now() - 1ms);

  EXPECT_EQ(log[3].op, "update");
  EXPECT_EQ(log[3].client, "b");
  EXPECT_EQ(log[3].expected, c.revision + 5);
  EXPECT_EQ(log[3].outcome, KvOutcome::conflict);
  EXPECT_FALSE(log[3].applied);
  EXPECT_EQ(log[3].at, env.clock.now());

  EXPECT_EQ(log[4].op, "get");
  EXPECT_EQ(log[4].revision, c.revision);
  EXPECT_FALSE(log[4].applied);
  EXPECT_EQ(log[5].op, "watch");
  EXPECT_EQ(log[5].client, "b");
  EXPECT_EQ(log[5].revision, c.revision);
  EXPECT_EQ(log[6].op, "erase");
  EXPECT_EQ(log[6].expected, c.revision);
  EXPECT_TRUE(log[6].applied);
  EXPECT_EQ(log[7].op, "put");
  EXPECT_EQ(log[7].client, "");
  EXPECT_EQ(log[7].value, "raw");

  env.server.clear_calls();
  EXPECT_TRUE(env.server.calls().empty());
}

TEST(NatsMockTest, DeletedBucketFailsWatchesAndRestartsRevisions) {
  Env env;
  env.store->create("k", "v", std::nullopt, kTimeout);
  env.store->create("k2", "v", std::nullopt, kTimeout);
  Recorder rec;
  auto w = watch(*env.store, "k", rec);
  EXPECT_TRUE(env.server.delete_bucket(kBucket));
  EXPECT_FALSE(env.server.delete_bucket(kBucket));
  auto events = rec.events();
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[2].kind, WatchEvent::Kind::error);
  EXPECT_EQ(events[2].error, KvOutcome::not_found);
  EXPECT_EQ(env.store->get("k", kTimeout).outcome, KvOutcome::not_found);
  EXPECT_EQ(env.store->create("k", "v", std::nullopt, kTimeout).outcome, KvOutcome::not_found);
  EXPECT_EQ(env.server.put_raw(kBucket, "k", "v"), 0u);

  ASSERT_NE(open(*env.a), nullptr);
  EXPECT_EQ(env.store->create("k", "v", std::nullopt, kTimeout).revision, 1u);
}

TEST(NatsMockTest, StateListenersAndClose) {
  Env env;
  std::vector<ConnectionState> seen;
  const auto id = env.a->subscribe_state([&](ConnectionState s) { seen.push_back(s); });
  std::uint64_t self_id = 0;
  int self_calls = 0;
  self_id = env.a->subscribe_state([&](ConnectionState) {
    ++self_calls;
    env.a->unsubscribe_state(self_id);
  });
  env.a->set_disconnected(true);
  env.a->set_disconnected(true);  // no change, no call
  env.a->set_disconnected(false);
  EXPECT_EQ(self_calls, 1);
  env.a->unsubscribe_state(id);
  env.a->set_disconnected(true);
  EXPECT_EQ(seen, (std::vector<ConnectionState>{ConnectionState::disconnected, ConnectionState::connected}));
  env.a->set_disconnected(false);

  Recorder rec;
  auto w = watch(*env.store, "k", rec);
  std::vector<ConnectionState> closing;
  env.a->subscribe_state([&](ConnectionState s) { closing.push_back(s); });
  env.a->close();
  EXPECT_EQ(env.a->state(), ConnectionState::closed);
  EXPECT_EQ(closing, std::vector<ConnectionState>{ConnectionState::closed});
  auto events = rec.events();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[1].kind, WatchEvent::Kind::error);
  EXPECT_EQ(events[1].error, KvOutcome::closed);
  EXPECT_EQ(env.store->get("k", kTimeout).outcome, KvOutcome::closed);
  EXPECT_EQ(env.a->open_bucket(spec(), kTimeout).error, make_error_code(Errc::closed));
  env.a->set_disconnected(true);  // ignored once closed
  EXPECT_EQ(env.a->state(), ConnectionState::closed);
}

TEST(NatsMockTest, ConcurrentWritersDeliverEachWatchInRevisionOrder) {
  Env env;
  constexpr int kThreads = 4;
  constexpr int kWrites = 200;
  std::mutex mu;
  std::vector<std::uint64_t> seen;
  KvResult error;
  auto w = env.store->watch(
      "k",
      [&](const WatchEvent& e) {
        if (e.kind != WatchEvent::Kind::entry) return;
        std::lock_guard<std::mutex> lk(mu);
        seen.push_back(e.entry.revision);
      },
      &error);
  ASSERT_NE(w, nullptr);
  std::atomic<int> missing{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      auto client = env.server.client("w" + std::to_string(i));
      auto store = client->open_bucket(spec(), kTimeout).store;
      for (int n = 0; n < kWrites; ++n) {
        auto r = store->create("k", "v", std::nullopt, kTimeout);
        if (r.ok()) {
          // Delivered before the writing call returned.
          std::lock_guard<std::mutex> lk(mu);
          if (std::find(seen.begin(), seen.end(), r.revision) == seen.end()) ++missing;
        }
        store->erase("k", 0, kTimeout);
      }
    });
  }
  for (auto& t : threads) t.join();
  w.reset();
  EXPECT_EQ(missing.load(), 0);
  std::lock_guard<std::mutex> lk(mu);
  ASSERT_EQ(seen.size(), env.server.last_revision(kBucket));
  for (std::size_t i = 1; i < seen.size(); ++i) ASSERT_LT(seen[i - 1], seen[i]);
}

}  // namespace
}  // namespace leader::natsmock
