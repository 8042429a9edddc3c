// The election state machine on natsmock and a fake clock (tests/support/
// sim.h): deterministic, no sleeps. Every simulation also checks, after
// every event, that at most one candidate believes it leads.

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "record.h"
#include "sim.h"

namespace leader::testing {
namespace {

using detail::KvOutcome;
using natsmock::CallRecord;
using natsmock::Fault;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::Not;

// Promote/demote events only, to check that they alternate.
std::vector<std::string> terms_of(const Sim::Candidate& c) {
  std::vector<std::string> out;
  for (const auto& e : c.events) {
    if (e.rfind("promote:", 0) == 0 || e.rfind("demote:", 0) == 0) out.push_back(e);
  }
  return out;
}

void expect_alternating(const Sim::Candidate& c) {
  const auto t = terms_of(c);
  for (std::size_t i = 0; i < t.size(); ++i) {
    EXPECT_EQ(t[i].rfind(i % 2 == 0 ? "promote:" : "demote:", 0), 0u)
        << c.id << " event " << i << ": " << t[i];
  }
}

TEST(CoreTest, AcquiresAFreeKeyWithOneCreate) {
  Sim sim;
  sim.add("a");
  sim.start("a");
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("a"); }, 50ms));
  const auto creates = calls_of(sim, "a", "create");
  ASSERT_EQ(creates.size(), 1u);
  EXPECT_FALSE(creates[0].expected.has_value());
  EXPECT_EQ(sim.get("a").core->term(), creates[0].revision) << "the token is the create's revision";
  EXPECT_THAT(sim.get("a").events, ElementsAre(fmt::format("promote:{}", creates[0].revision), "leader:a"));
}

TEST(CoreTest, SecondCandidateFollowsAndLearnsTheLeader) {
  Sim sim;
  sim.add("a");
  sim.add("b");
  sim.start("a");
  sim.run_for(10ms);
  sim.start("b");
  sim.run_for(3s);
  EXPECT_TRUE(sim.leads("a"));
  EXPECT_FALSE(sim.leads("b"));
  EXPECT_EQ(sim.get("b").core->state(), ElectionState::following);
  EXPECT_THAT(sim.get("b").events, ElementsAre("leader:a"));
  EXPECT_EQ(sim.get("b").core->status(sim.now()).leader->instance_id, "a");
}

TEST(CoreTest, LeaderRenewsEveryHeartbeatWithCompareAndSwap) {
  Sim sim;
  sim.add("a");
  sim.start("a");
  sim.run_for(10ms);
  sim.server().clear_calls();
  sim.run_for(2s);
  const auto updates = calls_of(sim, "a", "update");
  // heartbeat 200 ms over 2 s.
  EXPECT_GE(updates.size(), 9u);
  EXPECT_LE(updates.size(), 11u);
  for (std::size_t i = 1; i < updates.size(); ++i) {
    EXPECT_EQ(updates[i].expected, updates[i - 1].revision) << "each renewal expects the previous revision";
    EXPECT_EQ(updates[i].outcome, KvOutcome::ok);
  }
  EXPECT_TRUE(sim.leads("a"));
  // The deadline moved with the renewals: send time + ttl - margin.
  EXPECT_GT(sim.get("a").core->lease_deadline(), sim.now() + 700ms);
}

TEST(CoreTest, IsLeaderTurnsFalseAtTheDeadlineWhenRenewalsHang) {
  Sim sim;
  auto& a = sim.add("a");
  sim.start("a");
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("a"); }, 50ms));
  sim.run_for(100ms);
  // From now on every call hangs: no answer reaches the core for 100 s.
  a.result_latency = 100s;
  Fault hang;
  hang.outcome = KvOutcome::timeout;
  hang.times = 0;
  a.client->inject(hang);
  sim.run_for(1ms);  // the renewal in flight before the hang still lands
  const TimePoint deadline = a.core->lease_deadline();
  sim.run_for(deadline - 1ms - sim.now());
  EXPECT_TRUE(sim.leads("a")) << "still leader just before the deadline";
  EXPECT_THAT(a.events, Not(Contains("demote:lease_expired")));
  sim.run_for(1ms);
  EXPECT_FALSE(sim.leads("a")) << "not leader at the deadline";
  EXPECT_THAT(a.events, Contains("demote:lease_expired"));
  EXPECT_LE(a.core->term(), 0u);
}

TEST(CoreTest, GracefulStopReleasesOnlyAfterOnDemoteReturned) {
  Sim sim;
  auto& a = sim.add("a");
  sim.add("b");
  sim.start("a");
  sim.run_for(10ms);
  sim.start("b");
  sim.run_for(500ms);
  a.auto_return_demote = false;
  sim.server().clear_calls();
  sim.stop("a");
  EXPECT_FALSE(sim.leads("a")) << "the term ends locally first";
  sim.run_for(200ms);
  EXPECT_TRUE(calls_of(sim, "a", "erase").empty()) << "no release while on_demote runs";
  EXPECT_FALSE(sim.leads("b"));
  const TimePoint returned = sim.now();
  sim.demote_returns("a");
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("b"); }, 1s));
  EXPECT_LT(sim.now() - returned, 20ms) << "graceful handover takes milliseconds";
  const auto erases = calls_of(sim, "a", "erase");
  ASSERT_EQ(erases.size(), 1u);
  EXPECT_EQ(erases[0].outcome, KvOutcome::ok);
  // b created over the delete marker in one round trip.
  const auto creates = calls_of(sim, "b", "create");
  ASSERT_FALSE(creates.empty());
  EXPECT_EQ(creates.back().expected, erases[0].revision);
  EXPECT_THAT(a.events, Contains("finished"));
  expect_alternating(a);
}

TEST(CoreTest, StopTimeoutWithoutOnDemoteReturnLeavesTheLeaseToExpire) {
  Sim sim;
  auto& a = sim.add("a");
  sim.add("b");
  sim.start("a");
  sim.run_for(10ms);
  sim.start("b");
  sim.run_for(100ms);
  a.auto_return_demote = false;
  sim.stop("a", true, 100ms);
  sim.run_for(200ms);
  EXPECT_THAT(a.events, Contains("finished"));
  EXPECT_TRUE(calls_of(sim, "a", "erase").empty()) << "never release while the leader may still work";
  // b takes over only when the lease runs out.
  sim.demote_returns("a");
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("b"); }, 2s));
  EXPECT_TRUE(calls_of(sim, "a", "erase").empty());
}

TEST(CoreTest, CrashedLeaderIsReplacedAfterTheTtlWithoutAWatchEvent) {
  Sim sim;
  sim.add("a");
  sim.add("b");
  sim.start("a");
  sim.run_for(10ms);
  sim.start("b");
  sim.run_for(1s);
  sim.crash("a");
  const auto updates = calls_of(sim, "a", "update");
  ASSERT_FALSE(updates.empty());
  const TimePoint last_write = updates.back().at;
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("b"); }, 3s));
  // Not before the key expired on the server, and only milliseconds after.
  EXPECT_GE(sim.now(), last_write + 1000ms);
  EXPECT_LE(sim.now(), last_write + 1000ms + 20ms);
  EXPECT_EQ(sim.max_leaders_seen(), 1);
}

TEST(CoreTest, LostAckOnCreateIsAdoptedWhenTheWatchShowsIt) {
  Sim sim;
  auto& a = sim.add("a");
  Fault lost;
  lost.op = "create";
  lost.outcome = KvOutcome::timeout;
  lost.applied = true;
  a.client->inject(lost);
  sim.start("a");
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("a"); }, 500ms));
  const auto creates = calls_of(sim, "a", "create");
  ASSERT_EQ(creates.size(), 1u);
  EXPECT_EQ(a.core->term(), creates[0].revision);
  sim.run_for(2s);
  EXPECT_TRUE(sim.leads("a"));
  EXPECT_EQ(a.promotions, 1);
}

TEST(CoreTest, LostAckOnCreateIsReconciledByItsNonce) {
  Sim sim;
  auto& a = sim.add("a");
  a.client->set_watch_silent(true);  // learn it from the next create's conflict
  Fault lost;
  lost.op = "create";
  lost.outcome = KvOutcome::timeout;
  lost.applied = true;
  a.client->inject(lost);
  sim.start("a");
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("a"); }, 500ms));
  const auto creates = calls_of(sim, "a", "create");
  ASSERT_GE(creates.size(), 2u);
  EXPECT_TRUE(creates[0].applied);
  EXPECT_EQ(creates[0].outcome, KvOutcome::timeout);
  EXPECT_EQ(a.core->term(), creates[0].revision) << "the applied create is adopted, not duplicated";
  EXPECT_EQ(a.promotions, 1);
  sim.run_for(2s);
  EXPECT_TRUE(sim.leads("a"));
}

TEST(CoreTest, CreatesWaitWhileDisconnected) {
  Sim sim;
  sim.add("a");
  sim.start("a");
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("a"); }, 50ms));
  auto& b = sim.add("b");
  b.client->set_disconnected(true);
  sim.run_for(10ms);  // the disconnect has been reported
  sim.start("b");
  sim.run_for(10ms);
  sim.stop("a");
  sim.run_for(3s);
  EXPECT_EQ(b.client->buffered_writes(), 0u) << "no create is sent into the reconnect buffer";
  b.client->set_disconnected(false);
  EXPECT_TRUE(sim.run_until([&] { return sim.leads("b"); }, 100ms)) << "the reconnect triggers a campaign";
}

TEST(CoreTest, StaleCreateAppliedLaterIsReleasedNotAdopted) {
  Sim sim;
  auto& a = sim.add("a");
  a.state_latency = 100ms;  // calls fail before the disconnect is reported
  a.client->set_disconnected(true);
  sim.start("a");
  sim.run_for(3s);  // creates wait in the reconnect buffer
  ASSERT_GT(a.client->buffered_writes(), 0u);
  EXPECT_FALSE(sim.leads("a"));
  a.client->set_disconnected(false);  // the oldest buffered create lands now, 3 s stale
  const auto first = calls_of(sim, "a", "create");
  std::uint64_t stale_rev = 0;
  for (const auto& c : first) {
    if (c.buffered && c.applied) stale_rev = c.revision;
  }
  ASSERT_NE(stale_rev, 0u);
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("a"); }, 3s));
  EXPECT_GT(a.core->term(), stale_rev) << "leads with a fresh term, not the stale one";
  bool released = false;
  for (const auto& e : calls_of(sim, "a", "erase"))
    released |= e.expected == stale_rev && e.outcome == KvOutcome::ok;
  EXPECT_TRUE(released) << "the stale key was deleted by revision";
}

TEST(CoreTest, LostAckOnRenewIsAdoptedAndLeadershipContinues) {
  Sim sim;
  auto& a = sim.add("a");
  sim.start("a");
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("a"); }, 50ms));
  a.client->set_watch_silent(true);  // else the watch shows the applied renewal first
  Fault lost;
  lost.op = "update";
  lost.outcome = KvOutcome::timeout;
  lost.applied = true;
  a.client->inject(lost);
  sim.run_for(3s);
  EXPECT_TRUE(sim.leads("a"));
  EXPECT_EQ(a.promotions, 1);
  EXPECT_THAT(a.events, Not(Contains(::testing::StartsWith("demote:"))));
  const auto updates = calls_of(sim, "a", "update");
  EXPECT_TRUE(std::any_of(updates.begin(), updates.end(), [](const CallRecord& c) {
    return c.outcome == KvOutcome::conflict;
  })) << "the next renewal conflicted and was resolved by the nonce";
}

TEST(CoreTest, RenewalConflictWithAForeignHolderDemotesAtOnce) {
  Sim sim;
  auto& a = sim.add("a");
  sim.start("a");
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("a"); }, 50ms));
  a.client->set_watch_silent(true);  // learn it from the renewal, not the watch
  const std::uint64_t foreign = sim.server().put_raw(sim.bucket(), sim.key(), foreign_record("intruder"));
  ASSERT_TRUE(sim.run_until([&] { return !sim.leads("a"); }, 1s));
  EXPECT_THAT(a.events, Contains("demote:lost"));
  EXPECT_THAT(a.events, Contains("leader:intruder"));
  EXPECT_EQ(sim.server().peek(sim.bucket(), sim.key())->revision, foreign)
      << "someone else's key is never deleted";
  EXPECT_TRUE(calls_of(sim, "a", "erase").empty());
}

TEST(CoreTest, ForeignWriteSeenOnTheWatchDemotesWithoutWaitingForARenewal) {
  Sim sim;
  auto& a = sim.add("a");
  sim.start("a");
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("a"); }, 50ms));
  sim.server().put_raw(sim.bucket(), sim.key(), foreign_record("intruder"));
  sim.run_for(1ms);
  EXPECT_FALSE(sim.leads("a"));
  EXPECT_THAT(a.events, Contains("demote:lost"));
}

TEST(CoreTest, ReleaseDeletesOnlyItsOwnRevision) {
  Sim sim;
  auto& a = sim.add("a");
  sim.start("a");
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("a"); }, 50ms));
  const std::uint64_t ours = a.core->term();
  a.auto_return_demote = false;
  a.client->set_watch_silent(true);
  sim.stop("a");
  // While on_demote runs, the key changes hands.
  const std::uint64_t foreign = sim.server().put_raw(sim.bucket(), sim.key(), foreign_record("other"));
  sim.demote_returns("a");
  sim.run_for(100ms);
  const auto erases = calls_of(sim, "a", "erase");
  ASSERT_EQ(erases.size(), 1u);
  EXPECT_EQ(erases[0].expected, ours);
  EXPECT_EQ(erases[0].outcome, KvOutcome::conflict);
  const auto now = sim.server().peek(sim.bucket(), sim.key());
  ASSERT_TRUE(now.has_value());
  EXPECT_EQ(now->revision, foreign);
  EXPECT_EQ(now->op, detail::EntryOp::put);
}

TEST(CoreTest, TokensStrictlyIncreaseAcrossHandovers) {
  Sim sim;
  for (const char* id : {"a", "b", "c"}) sim.add(id);
  for (const char* id : {"a", "b", "c"}) sim.start(id);
  for (int round = 0; round < 6; ++round) {
    ASSERT_TRUE(sim.run_until([&] { return sim.leaders() == 1; }, 3s));
    const std::string l = sim.leader();
    if (round % 2 == 0) {
      sim.stop(l);
      sim.run_for(10ms);
      sim.start(l);
    } else {
      sim.step_down(l, 0ms);
    }
    sim.run_for(50ms);
  }
  ASSERT_GE(sim.tokens().size(), 6u);
  EXPECT_TRUE(std::is_sorted(sim.tokens().begin(), sim.tokens().end(), std::less_equal<>()) &&
              std::adjacent_find(sim.tokens().begin(), sim.tokens().end()) == sim.tokens().end());
  for (const char* id : {"a", "b", "c"}) expect_alternating(sim.get(id));
}

TEST(CoreTest, FiveCandidatesElectExactlyOneLeader) {
  Sim sim;
  const std::vector<std::string> ids = {"a", "b", "c", "d", "e"};
  for (const auto& id : ids) sim.add(id);
  for (const auto& id : ids) sim.start(id);
  ASSERT_TRUE(sim.run_until([&] { return sim.leaders() == 1; }, 100ms));
  sim.run_for(2s);
  EXPECT_EQ(sim.leaders(), 1);
  const std::string first = sim.leader();
  for (const auto& id : ids) {
    if (id != first) {
      EXPECT_THAT(sim.get(id).events, Contains("leader:" + first)) << id;
    }
  }
  sim.stop(first);
  ASSERT_TRUE(sim.run_until([&] { return sim.leaders() == 1; }, 100ms));
  EXPECT_EQ(sim.max_leaders_seen(), 1);
}

TEST(CoreTest, StepDownHandsOverAndCoolsDown) {
  Sim sim;
  auto& a = sim.add("a");
  sim.add("b");
  sim.start("a");
  sim.run_for(10ms);
  sim.start("b");
  sim.run_for(100ms);
  sim.step_down("a", 2s);
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("b"); }, 100ms));
  EXPECT_THAT(a.events, Contains("demote:stepped_down"));
  sim.run_for(200ms);
  EXPECT_EQ(a.core->state(), ElectionState::cooling_down);
  // b leaves during a's cooldown: a does not campaign until it is over.
  sim.stop("b");
  sim.run_for(1s);
  EXPECT_EQ(sim.leaders(), 0);
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("a"); }, 2s));
  expect_alternating(a);
}

TEST(CoreTest, StepDownWithoutCooldownLetsAFollowerWin) {
  Sim sim;
  sim.add("a");
  sim.add("b");
  sim.start("a");
  sim.run_for(10ms);
  sim.start("b");
  sim.run_for(100ms);
  sim.step_down("a", 0ms);
  ASSERT_TRUE(sim.run_until([&] { return sim.leaders() == 1; }, 100ms));
  EXPECT_EQ(sim.leader(), "b");
}

TEST(CoreTest, SilentWatchFollowerTakesOverByItsExpiryTimer) {
  Sim sim;
  sim.add("a");
  auto& b = sim.add("b");
  sim.start("a");
  sim.run_for(10ms);
  sim.start("b");
  sim.run_for(50ms);
  b.client->set_watch_silent(true);
  sim.run_for(3s);  // b sees no renewals: it probes at each expected expiry
  EXPECT_FALSE(sim.leads("b"));
  sim.stop("a");
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("b"); }, 2s));
  EXPECT_EQ(sim.max_leaders_seen(), 1);
}

TEST(CoreTest, WatchIsRecreatedAfterAnError) {
  Sim sim;
  auto& a = sim.add("a");
  sim.add("b");
  sim.start("a");
  sim.run_for(10ms);
  sim.start("b");
  sim.run_for(10ms);
  ASSERT_EQ(sim.server().watch_count(sim.bucket(), sim.key()), 2u);
  a.client->set_disconnected(true);
  sim.run_for(50ms);
  a.client->set_disconnected(false);  // the mock fails a's watch on reconnect
  sim.run_for(200ms);
  EXPECT_EQ(sim.server().watch_count(sim.bucket(), sim.key()), 2u);
  EXPECT_TRUE(sim.leads("a"));
}

TEST(CoreTest, FollowerCreatesOverTheDeleteMarkerInOneRoundTrip) {
  Sim sim;
  auto& b = sim.add("b");
  sim.add("a");
  sim.start("a");
  sim.run_for(10ms);
  sim.start("b");
  sim.run_for(100ms);
  b.client->set_conflict_entry(false);
  sim.server().clear_calls();
  sim.stop("a");
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("b"); }, 100ms));
  const auto creates = calls_of(sim, "b", "create");
  ASSERT_EQ(creates.size(), 1u);
  EXPECT_TRUE(creates[0].expected.has_value());
  EXPECT_EQ(creates[0].outcome, KvOutcome::ok);
}

class GarbageRecordTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GarbageRecordTest, ReadsAsAnUnknownHolderAndExpires) {
  Sim sim;
  auto& b = sim.add("b");
  sim.server().put_raw(sim.bucket(), sim.key(), GetParam());
  sim.start("b");
  sim.run_for(100ms);
  EXPECT_FALSE(sim.leads("b"));
  EXPECT_THAT(b.events, Contains("leader:?"));
  const auto st = b.core->status(sim.now());
  ASSERT_TRUE(st.leader.has_value());
  EXPECT_EQ(st.leader->instance_id, "");
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("b"); }, 2s)) << "the unknown holder's key expires";
}

INSTANTIATE_TEST_SUITE_P(CoreTest, GarbageRecordTest,
                         ::testing::Values("", "not json", "{}", "[]", "null",
                                           "{\"holder\":5,\"nonce\":\"x\"}",
                                           "{\"holder\":\"\",\"nonce\":\"x\"}", std::string(100000, 'x'),
                                           std::string(5000, '[') + std::string(5000, ']'),
                                           std::string("{\"holder\":\"a\xff\",\"nonce\":") + "\"n\"}",
                                           "{\"holder\":\"z\",\"nonce\":\"n\",\"term\":-1}"));

TEST(CoreTest, RandomFaultsNeverMakeTwoLeaders) {
  // A property test over seeds: random stops, step-downs, crashes,
  // disconnects, lost acks and slow answers; the checker runs after every
  // event and tokens must increase.
  for (std::uint64_t seed = 1; seed <= 30; ++seed) {
    SCOPED_TRACE(seed);
    Sim sim(seed);
    std::mt19937_64 rng(seed);
    std::vector<std::string> ids = {"a", "b", "c", "d"};
    for (const auto& id : ids) {
      // Odd seeds also hand over between random priorities.
      Config c = sim_config(id);
      c.priority = static_cast<int>(rng() % 3);
      c.priority_handover = seed % 2 == 1;
      sim.add(c);
    }
    for (const auto& id : ids) sim.start(id);
    for (int step = 0; step < 60; ++step) {
      sim.run_for(std::chrono::milliseconds(rng() % 400));
      const std::string& id = ids[rng() % ids.size()];
      auto& c = sim.get(id);
      if (c.crashed) continue;
      switch (rng() % 8) {
        case 0:
          sim.stop(id);
          sim.run_for(20ms);
          sim.start(id);
          break;
        case 1:
          sim.step_down(id, std::chrono::milliseconds(rng() % 500));
          break;
        case 2:
          c.client->set_disconnected(true);
          sim.run_for(std::chrono::milliseconds(rng() % 1500));
          c.client->set_disconnected(false);
          break;
        case 3: {
          Fault f;
          f.op = rng() % 2 ? "update" : "create";
          f.outcome = KvOutcome::timeout;
          f.applied = rng() % 2;
          c.client->inject(f);
          break;
        }
        case 4:
          c.result_latency = std::chrono::milliseconds(rng() % 300);
          break;
        case 5:
          c.result_latency = 300us;
          break;
        case 6:
          if (step > 40) sim.crash(id);
          break;
        default:
          c.client->set_watch_silent(rng() % 2);
          break;
      }
    }
    bool any_alive = false;
    for (const auto& id : ids) {
      auto& c = sim.get(id);
      any_alive |= !c.crashed;
      c.result_latency = 300us;
      c.client->set_watch_silent(false);
    }
    if (any_alive) {
      EXPECT_TRUE(sim.run_until([&] { return sim.leaders() == 1; }, 5s)) << "a live candidate leads again";
    }
    sim.run_for(2s);
    EXPECT_LE(sim.max_leaders_seen(), 1);
    const auto& t = sim.tokens();
    EXPECT_TRUE(std::adjacent_find(t.begin(), t.end(), std::greater_equal<>()) == t.end())
        << "tokens must strictly increase";
    for (const auto& id : ids) expect_alternating(sim.get(id));
  }
}

}  // namespace
}  // namespace leader::testing
