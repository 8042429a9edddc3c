// Fencing epochs, disconnect grace, health-based demotion and the circuit
// breaker, on simulated candidates (tests/support/sim.h): deterministic,
// with the two-leader check after every event.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>

#include "record.h"
#include "sim.h"

namespace leader::testing {
namespace {

using detail::KvOutcome;
using natsmock::Fault;
using ::testing::Contains;
using ::testing::Not;

Config with(const std::string& id, const std::function<void(Config&)>& change) {
  Config c = sim_config(id);
  change(c);
  c.validate();
  return c.resolved();
}

TEST(GraceTest, DisconnectLongerThanTheGraceDemotes) {
  Sim sim;
  auto& a = sim.add(with("a", [](Config& c) { c.disconnect_grace = 200ms; }));
  sim.start("a");
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("a"); }, 50ms));
  const TimePoint cut = sim.now();
  a.client->set_disconnected(true);
  sim.run_for(150ms);
  EXPECT_TRUE(sim.leads("a")) << "within the grace the role is kept";
  sim.run_for(60ms);  // grace counted from when the disconnect was reported (1 ms later)
  EXPECT_FALSE(sim.leads("a"));
  EXPECT_THAT(a.events, Contains("demote:disconnected"));
  EXPECT_LE(sim.now() - cut, 215ms);
}

TEST(GraceTest, DefaultGraceKeepsTheRoleThroughABriefDisconnect) {
  Sim sim;
  auto& a = sim.add("a");
  sim.start("a");
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("a"); }, 50ms));
  sim.run_for(100ms);
  a.client->set_disconnected(true);
  sim.run_for(300ms);
  EXPECT_TRUE(sim.leads("a"));
  const TimePoint back = sim.now();
  a.client->set_disconnected(false);
  sim.run_for(50ms);
  EXPECT_GE(count_calls(sim, "a", "get", back), 1u) << "the key is verified on reconnect";
  EXPECT_GE(count_calls(sim, "a", "update", back), 1u) << "and renewed at once";
  sim.run_for(2s);
  EXPECT_TRUE(sim.leads("a"));
  EXPECT_EQ(a.promotions, 1);
}

TEST(GraceTest, ReconnectDemotesWhenTheKeyIsNoLongerOurs) {
  Sim sim;
  auto& a = sim.add("a");
  sim.start("a");
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("a"); }, 50ms));
  a.client->set_disconnected(true);
  sim.run_for(100ms);
  // An operator forced the key away meanwhile (resign + someone else).
  sim.server().put_raw(sim.bucket(), sim.key(), foreign_record("other"));
  const TimePoint deadline = a.core->lease_deadline();
  a.client->set_disconnected(false);
  ASSERT_TRUE(sim.run_until([&] { return !sim.leads("a"); }, 1s));
  EXPECT_LT(sim.now(), deadline) << "the verification demotes before the lease would have";
  EXPECT_THAT(a.events, Contains("demote:lost"));
  EXPECT_THAT(a.events, Contains("leader:other"));
}

TEST(GraceTest, GraceLongerThanTheLeaseIsClamped) {
  Config c = sim_config("a");
  c.disconnect_grace = 1h;
  EXPECT_NO_THROW(c.validate());
  EXPECT_EQ(c.resolved().disconnect_grace, c.ttl - c.safety_margin);
  c.disconnect_grace = -1ms;
  EXPECT_THROW(c.validate(), ConfigError);
}

TEST(HealthTest, OneFailureFewerThanTheLimitKeepsLeading) {
  Sim sim;
  auto& a = sim.add(with("a", [](Config& c) { c.max_health_failures = 3; }));
  int failures = 0;
  sim.set_health("a", [&failures] { return std::optional<bool>(++failures > 2); });  // fails twice
  sim.start("a");
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("a"); }, 50ms));
  sim.run_for(2s);
  EXPECT_TRUE(sim.leads("a"));
  EXPECT_THAT(a.events, Not(Contains("demote:unhealthy")));
  EXPECT_TRUE(a.core->status(sim.now()).healthy);
}

TEST(HealthTest, LimitOfFailuresStepsDownAndReleasesUntilHealthy) {
  Sim sim;
  auto& a = sim.add(with("a", [](Config& c) { c.max_health_failures = 3; }));
  sim.add("b");
  bool healthy = true;
  sim.set_health("a", [&healthy] { return std::optional<bool>(healthy); });
  sim.start("a");
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("a"); }, 50ms));
  sim.start("b");
  sim.run_for(100ms);
  healthy = false;
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("b"); }, 2s));
  EXPECT_THAT(a.events, Contains("demote:unhealthy"));
  EXPECT_GE(count_calls(sim, "a", "erase"), 1u) << "the key was released, not left to expire";
  EXPECT_FALSE(a.core->status(sim.now()).healthy);
  // Unhealthy: no campaign, even when the role is free.
  const TimePoint free_at = sim.now();
  sim.stop("b");
  sim.run_for(2s);
  EXPECT_EQ(count_calls(sim, "a", "create", free_at), 0u);
  EXPECT_EQ(sim.leaders(), 0);
  healthy = true;
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("a"); }, 1s)) << "healthy again: it campaigns";
}

TEST(HealthTest, HungCheckCountsAsFailureAndNeverDelaysRenewals) {
  Sim sim;
  auto& a = sim.add(with("a", [](Config& c) {
    c.max_health_failures = 3;
    c.health_timeout = 100ms;
  }));
  bool hang = false;
  sim.set_health("a", [&hang] { return hang ? std::nullopt : std::optional<bool>(true); });
  sim.start("a");
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("a"); }, 50ms));
  hang = true;
  const TimePoint hung_at = sim.now();
  sim.run_for(450ms);  // checks at ~200 and ~400 ms time out at ~300 and ~500 ms
  EXPECT_TRUE(sim.leads("a"));
  EXPECT_GE(count_calls(sim, "a", "update", hung_at), 2u) << "renewals go on at the heartbeat";
  ASSERT_TRUE(sim.run_until([&] { return !sim.leads("a"); }, 1s));
  EXPECT_THAT(a.events, Contains("demote:unhealthy"));
}

TEST(BreakerTest, OpensAfterTheThresholdThenAProbeClosesIt) {
  Sim sim;
  auto& a = sim.add(with("a", [](Config& c) {
    c.breaker_threshold = 4;
    c.breaker_open = 800ms;
  }));
  Fault down;  // an error the server keeps answering (no_responders backs off without the breaker)
  down.op = "create";
  down.outcome = KvOutcome::other;
  down.times = 0;
  a.client->inject(down);
  sim.start("a");
  ASSERT_TRUE(sim.run_until([&] { return a.core->status(sim.now()).circuit_open; }, 2s));
  EXPECT_EQ(count_calls(sim, "a", "create"), 4u);
  EXPECT_THAT(a.events, Contains(::testing::HasSubstr("paused for 800 ms after 4 failed attempts")));
  const TimePoint opened = sim.now();
  sim.run_for(700ms);
  EXPECT_EQ(count_calls(sim, "a", "create", opened), 0u) << "open: no attempts";
  sim.run_for(150ms);
  EXPECT_EQ(count_calls(sim, "a", "create", opened), 1u) << "half-open: one probe, which fails";
  EXPECT_TRUE(a.core->status(sim.now()).circuit_open);
  a.client->clear_faults();
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("a"); }, 1s)) << "the next probe succeeds";
  EXPECT_FALSE(a.core->status(sim.now()).circuit_open);
}

TEST(BreakerTest, AKeyHeldBySomeoneElseIsNotAFailure) {
  Sim sim;
  sim.add("a");
  auto& b = sim.add(with("b", [](Config& c) { c.breaker_threshold = 2; }));
  sim.start("a");
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("a"); }, 50ms));
  sim.start("b");
  b.client->set_watch_silent(true);  // b probes at every expected expiry, and conflicts
  sim.run_for(5s);
  EXPECT_FALSE(b.core->status(sim.now()).circuit_open);
}

TEST(FencingTest, TokensKeepIncreasingWhenTheBucketIsRecreated) {
  Sim sim;
  auto& a = sim.add("a");
  sim.add("b");
  sim.start("a");
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("a"); }, 50ms));
  sim.start("b");
  sim.run_for(500ms);
  sim.step_down("a", 0ms);  // b's term comes after a few revisions
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("b"); }, 1s));
  sim.run_for(500ms);
  const FencingToken first = sim.fencing_tokens().back();
  ASSERT_GT(first.epoch, 0u);
  ASSERT_GT(first.revision, 1u);
  sim.crash("b");
  const TimePoint b_deadline = sim.get("b").core->lease_deadline();
  // The bucket is deleted and re-created: revisions restart at 1.
  ASSERT_TRUE(sim.server().delete_bucket(sim.bucket()));
  detail::BucketSpec spec;
  spec.name = sim.bucket();
  spec.ttl = a.config.ttl;
  ASSERT_TRUE(sim.server().create_bucket(spec));
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("a"); }, 3s));
  EXPECT_GE(sim.now(), b_deadline) << "the vanished holder's lease ran out first";
  const FencingToken second = sim.fencing_tokens().back();
  EXPECT_LT(second.revision, first.revision) << "the revision alone went backwards";
  EXPECT_GT(second, first) << "the fencing token did not";
  EXPECT_GT(second.epoch, first.epoch);
  EXPECT_EQ(sim.max_leaders_seen(), 1);
}

TEST(FencingTest, ColdStartLearnsTheEpochBeforePromoting) {
  Sim sim;
  auto& a = sim.add("a");
  sim.start("a");
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("a"); }, 50ms));
  EXPECT_EQ(a.core->fencing_token().epoch, sim.fencing_tokens().back().epoch);
  EXPECT_EQ(count_calls(sim, "a", "open"), 2u) << "start + the epoch check of a first promotion";
}

TEST(FencingTest, ValidationLoopDemotesOnAMismatchBeforeTheNextRenewal) {
  Sim sim;
  auto& a = sim.add(with("a", [](Config& c) { c.validation_interval = 20ms; }));
  sim.start("a");
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("a"); }, 50ms));
  sim.run_for(210ms);  // just after a renewal
  a.client->set_watch_silent(true);
  sim.server().put_raw(sim.bucket(), sim.key(), foreign_record("intruder"));
  const TimePoint stolen = sim.now();
  ASSERT_TRUE(sim.run_until([&] { return !sim.leads("a"); }, 1s));
  EXPECT_LT(sim.now() - stolen, 60ms) << "the next validation read, not the next renewal (200 ms)";
  EXPECT_THAT(a.events, Contains("demote:lost"));
}

TEST(FencingTest, RevisionsGoingBackwardsAreReported) {
  Sim sim;
  sim.add("a");
  auto& b = sim.add("b");
  sim.start("a");
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("a"); }, 50ms));
  sim.start("b");
  sim.run_for(1s);
  ASSERT_TRUE(sim.server().delete_bucket(sim.bucket()));
  detail::BucketSpec spec;
  spec.name = sim.bucket();
  spec.ttl = b.config.ttl;
  ASSERT_TRUE(sim.server().create_bucket(spec));
  sim.server().put_raw(sim.bucket(), sim.key(), foreign_record("x"));
  sim.run_for(500ms);
  EXPECT_THAT(b.events, Contains(::testing::HasSubstr("went backwards")));
  EXPECT_FALSE(sim.leads("a"));
}

}  // namespace
}  // namespace leader::testing

namespace leader::testing {
namespace {

Config prio(const std::string& id, int priority, bool handover = true) {
  return with(id, [&](Config& c) {
    c.priority = priority;
    c.priority_handover = handover;
  });
}

TEST(PriorityTest, HigherPriorityFollowerGetsTheKeyHandedOver) {
  Sim sim;
  auto& a = sim.add(prio("a", 0));
  auto& c = sim.add(prio("c", 5));
  sim.start("a");
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("a"); }, 50ms));
  sim.start("c");
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("c"); }, 1s)) << "c (5) outranks a (0)";
  const std::uint64_t c_term = c.core->term();
  auto& b = sim.add(prio("b", 10));
  b.auto_return_demote = true;
  c.auto_return_demote = false;  // c's leader work takes a while to stop
  sim.start("b");
  sim.run_for(400ms);
  EXPECT_TRUE(sim.leads("c") || c.demote_outstanding);
  EXPECT_FALSE(sim.leads("b")) << "not before c's on_demote returned";
  if (c.demote_outstanding) sim.demote_returns("c");
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("b"); }, 1s));
  EXPECT_THAT(c.events, Contains("demote:handover"));
  EXPECT_THAT(a.events, Contains("demote:handover"));
  EXPECT_GT(b.core->term(), c_term);
  EXPECT_EQ(count_calls(sim, "c", "erase"), 0u) << "handed over, not released";
  EXPECT_EQ(sim.max_leaders_seen(), 1);
  sim.run_for(3s);
  EXPECT_TRUE(sim.leads("b")) << "the top priority keeps it";
  const auto& t = sim.tokens();
  EXPECT_TRUE(std::adjacent_find(t.begin(), t.end(), std::greater_equal<>()) == t.end());
}

TEST(PriorityTest, OffByDefault) {
  Sim sim;
  sim.add(prio("a", 0, false));
  sim.add(prio("b", 10, false));
  sim.start("a");
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("a"); }, 50ms));
  sim.start("b");
  sim.run_for(3s);
  EXPECT_TRUE(sim.leads("a"));
  EXPECT_FALSE(sim.server().peek(sim.bucket(), "_leader.handover.role").has_value());
}

TEST(PriorityTest, LowerOrEqualPriorityDoesNotAsk) {
  Sim sim;
  sim.add(prio("a", 3));
  sim.add(prio("b", 3));
  sim.add(prio("c", -1));
  sim.start("a");
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("a"); }, 50ms));
  sim.start("b");
  sim.start("c");
  sim.run_for(3s);
  EXPECT_TRUE(sim.leads("a"));
  EXPECT_FALSE(sim.server().peek(sim.bucket(), "_leader.handover.role").has_value());
}

TEST(PriorityTest, ReservedRolePrefixIsRejected) {
  Config c = sim_config("a");
  c.role = "_leader.handover.x";
  EXPECT_THROW(c.validate(), ConfigError);
}

}  // namespace
}  // namespace leader::testing

namespace leader::testing {
namespace {

TEST(RetryTest, PermanentErrorsSurfaceWithAnActionableMessageAndNoStorm) {
  Sim sim;
  auto& a = sim.add("a");
  Fault denied;
  denied.op = "create";
  denied.outcome = KvOutcome::permission_denied;
  denied.times = 0;
  a.client->inject(denied);
  sim.start("a");
  sim.run_for(2s);
  const auto st = a.core->status(sim.now());
  EXPECT_EQ(st.last_error.code, make_error_code(Errc::permission_denied));
  EXPECT_THAT(st.last_error.message, ::testing::HasSubstr("bucket \"sim\""));
  EXPECT_THAT(st.last_error.message, ::testing::HasSubstr("key \"role\""));
  EXPECT_THAT(a.events, Contains(::testing::StartsWith("error:acquire of key \"role\" in bucket \"sim\"")));
  // Backoff capped at retry_max (100 ms), then the breaker (5 in a row)
  // pauses for breaker_open (= ttl, 1 s): a handful of attempts, no storm.
  EXPECT_LE(count_calls(sim, "a", "create"), 8u);
  EXPECT_TRUE(st.circuit_open);
}

TEST(RetryTest, TransientFailuresBackOffWithJitterAndRecover) {
  Sim sim;
  auto& a = sim.add("a");
  Fault blip;
  blip.op = "create";
  blip.outcome = KvOutcome::no_responders;  // a stream-leader election
  blip.times = 3;
  a.client->inject(blip);
  sim.start("a");
  ASSERT_TRUE(sim.run_until([&] { return sim.leads("a"); }, 1s));
  const auto creates = [&] {
    std::vector<TimePoint> at;
    for (const auto& c : sim.server().calls()) {
      if (c.client == "a" && c.op == "create") at.push_back(c.at);
    }
    return at;
  }();
  ASSERT_EQ(creates.size(), 4u);
  for (std::size_t i = 1; i < creates.size(); ++i) {
    EXPECT_GE(creates[i] - creates[i - 1], 1ms) << "never an immediate retry";
    EXPECT_LE(creates[i] - creates[i - 1], 100ms) << "capped at retry_max";
  }
  EXPECT_FALSE(a.core->status(sim.now()).circuit_open);
  EXPECT_TRUE(a.core->status(sim.now()).last_error.message.empty()) << "transient: no on_error";
}

}  // namespace
}  // namespace leader::testing
