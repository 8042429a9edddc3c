// The Prometheus metrics: scripted elections in the simulation (fake clock,
// exact values), then the public Election over natsmock for what the driver
// adds (callbacks, lease remaining) and for how registries are shared.

#include <gtest/gtest.h>
#include <prometheus/counter.h>
#include <prometheus/registry.h>

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "leader/election.h"
#include "leader/error.h"
#include "leader/role_manager.h"
#include "natsmock/mock_kv.h"
#include "prometheus_metrics.h"
#include "record.h"
#include "sim.h"
#include "support/mock_election.h"
#include "support/wait.h"

namespace leader {
namespace {

using namespace std::chrono_literals;
using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::Registry;
using Labels = std::map<std::string, std::string>;
using testing::eventually;
using testing::fast_config;

/// The series of family `name` whose labels include all of `want`, or null.
std::optional<ClientMetric> series(const Registry& registry, const std::string& name, const Labels& want) {
  for (const MetricFamily& family : registry.Collect()) {
    if (family.name != name) continue;
    for (const ClientMetric& m : family.metric) {
      bool all = true;
      for (const auto& [k, v] : want) {
        bool found = false;
        for (const auto& l : m.label) found = found || (l.name == k && l.value == v);
        all = all && found;
      }
      if (all) return m;
    }
  }
  return std::nullopt;
}

bool has_family(const Registry& registry, const std::string& name) {
  for (const MetricFamily& family : registry.Collect()) {
    if (family.name == name) return true;
  }
  return false;
}

double gauge(const Registry& r, const std::string& name, const Labels& want) {
  auto m = series(r, "leader_election_" + name, want);
  EXPECT_TRUE(m.has_value()) << name;
  return m ? m->gauge.value : -1;
}

double counter(const Registry& r, const std::string& name, const Labels& want) {
  auto m = series(r, "leader_election_" + name, want);
  return m ? m->counter.value : 0;  // an absent series has counted nothing
}

ClientMetric::Histogram histogram(const Registry& r, const std::string& name, const Labels& want) {
  auto m = series(r, "leader_election_" + name, want);
  return m ? m->histogram : ClientMetric::Histogram{};
}

Labels of(const std::string& instance, Labels extra = {}) {
  extra["bucket"] = "sim";
  extra["role"] = "role";
  extra["instance"] = instance;
  return extra;
}

class MetricsSimTest : public ::testing::Test {
 protected:
  /// Adds candidate `id` reporting to the shared registry.
  void add(const std::string& id) {
    sim_.add(id);
    sim_.set_metrics(id, detail::make_prometheus_metrics(registry_, "sim", "role", id));
  }
  std::shared_ptr<Registry> registry_ = std::make_shared<Registry>();
  testing::Sim sim_;
};

TEST_F(MetricsSimTest, PromotionAndRenewalsAreReported) {
  add("a");
  add("b");
  EXPECT_EQ(gauge(*registry_, "is_leader", of("a")), 0);
  EXPECT_EQ(gauge(*registry_, "connection_status", of("a")), 1);
  sim_.start("a");
  ASSERT_TRUE(sim_.run_until([&] { return sim_.leads("a"); }, 1s));
  EXPECT_EQ(gauge(*registry_, "is_leader", of("a")), 1);
  // The watch can show the create before its answer arrives: "won" counts
  // the answer.
  sim_.run_for(1ms);
  ASSERT_EQ(sim_.tokens().size(), 1u);
  EXPECT_EQ(gauge(*registry_, "term", of("a")), static_cast<double>(sim_.tokens()[0]));
  EXPECT_EQ(counter(*registry_, "transitions_total", of("a", {{"to", "leader"}})), 1);
  EXPECT_EQ(counter(*registry_, "transitions_total", of("a", {{"to", "follower"}})), 0);
  EXPECT_EQ(counter(*registry_, "acquire_attempts_total", of("a", {{"result", "won"}})), 1);
  // Every expected label value exists from the start, at 0.
  for (const char* r : {"held", "unknown", "error"}) {
    auto m = series(*registry_, "leader_election_acquire_attempts_total", of("a", {{"result", r}}));
    ASSERT_TRUE(m.has_value()) << r;
    EXPECT_EQ(m->counter.value, 0) << r;
  }
  // First leader of the role: nobody was known gone, so no failover.
  EXPECT_EQ(histogram(*registry_, "failover_seconds", of("a")).sample_count, 0u);

  sim_.start("b");
  sim_.run_for(100ms);
  EXPECT_GE(counter(*registry_, "acquire_attempts_total", of("b", {{"result", "held"}})), 1);
  EXPECT_EQ(gauge(*registry_, "is_leader", of("b")), 0);
  EXPECT_EQ(gauge(*registry_, "term", of("b")), 0);

  const auto before = histogram(*registry_, "heartbeat_duration_seconds", of("a")).sample_count;
  sim_.run_for(1s);  // heartbeat 200 ms: about five renewals
  const auto hb = histogram(*registry_, "heartbeat_duration_seconds", of("a"));
  EXPECT_GE(hb.sample_count, before + 4);
  EXPECT_LE(hb.sample_count, before + 6);
  // Round trips are the simulated result latency (300 us): the first bucket.
  ASSERT_FALSE(hb.bucket.empty());
  EXPECT_EQ(hb.bucket.front().upper_bound, 0.0005);
  EXPECT_EQ(hb.bucket.front().cumulative_count, hb.sample_count);
  EXPECT_EQ(histogram(*registry_, "heartbeat_duration_seconds", of("b")).sample_count, 0u);
}

TEST_F(MetricsSimTest, GracefulStopEndsTheTermAndTheFollowerFailsOverFast) {
  add("a");
  add("b");
  sim_.start("a");
  ASSERT_TRUE(sim_.run_until([&] { return sim_.leads("a"); }, 1s));
  const auto promoted_at = sim_.now();
  sim_.start("b");
  sim_.run_for(2s);
  ASSERT_TRUE(sim_.leads("a"));

  sim_.stop("a");
  ASSERT_TRUE(sim_.run_until([&] { return sim_.leads("b"); }, 1s));
  EXPECT_EQ(gauge(*registry_, "is_leader", of("a")), 0);
  EXPECT_EQ(gauge(*registry_, "term", of("a")), 0);
  EXPECT_EQ(counter(*registry_, "transitions_total", of("a", {{"to", "follower"}})), 1);
  const auto held = histogram(*registry_, "leader_duration_seconds", of("a"));
  ASSERT_EQ(held.sample_count, 1u);
  const double expected_held = std::chrono::duration<double>(sim_.now() - promoted_at).count();
  EXPECT_NEAR(held.sample_sum, expected_held, 0.05);

  EXPECT_EQ(gauge(*registry_, "is_leader", of("b")), 1);
  EXPECT_EQ(gauge(*registry_, "term", of("b")), static_cast<double>(sim_.tokens().back()));
  EXPECT_GT(sim_.tokens().back(), sim_.tokens().front());
  const auto failover = histogram(*registry_, "failover_seconds", of("b"));
  ASSERT_EQ(failover.sample_count, 1u);
  // From the delete (seen on the watch) to the create's answer: jitter
  // (<= 5 ms) plus simulated latencies.
  EXPECT_LT(failover.sample_sum, 0.010);
}

TEST_F(MetricsSimTest, CrashFailoverIsTimedFromTheLeasesExpectedExpiry) {
  add("a");
  add("b");
  sim_.start("a");
  ASSERT_TRUE(sim_.run_until([&] { return sim_.leads("a"); }, 1s));
  sim_.start("b");
  sim_.run_for(1s);
  const auto crashed_at = sim_.now();
  sim_.crash("a");
  ASSERT_TRUE(sim_.run_until([&] { return sim_.leads("b"); }, 3s));
  const double crash_to_promote = std::chrono::duration<double>(sim_.now() - crashed_at).count();
  // The role was leaderless for about a TTL (1 s) after a's last renewal...
  EXPECT_GT(crash_to_promote, 0.75);
  EXPECT_LT(crash_to_promote, 1.25);
  // ...but failover_seconds starts when the follower expected the lease to
  // end (it saw a's last renewal + ttl): a crash's failover is the
  // follower's own delay past the expiry, not the TTL.
  const auto failover = histogram(*registry_, "failover_seconds", of("b"));
  ASSERT_EQ(failover.sample_count, 1u);
  EXPECT_LT(failover.sample_sum, 0.1);
  EXPECT_EQ(counter(*registry_, "transitions_total", of("b", {{"to", "leader"}})), 1);
}

TEST_F(MetricsSimTest, RenewalTimeoutsCountAsHeartbeatFailures) {
  add("a");
  sim_.start("a");
  ASSERT_TRUE(sim_.run_until([&] { return sim_.leads("a"); }, 1s));
  const auto promoted_at = sim_.now();
  natsmock::Fault timeout;
  timeout.op = "update";
  timeout.outcome = detail::KvOutcome::timeout;
  timeout.times = 2;
  sim_.get("a").client->inject(timeout);
  sim_.run_for(600ms);
  EXPECT_EQ(counter(*registry_, "heartbeat_failures_total", of("a", {{"reason", "timeout"}})), 2);
  EXPECT_TRUE(sim_.leads("a")) << "two failed renewals are retried well within the lease";
  EXPECT_EQ(gauge(*registry_, "is_leader", of("a")), 1);

  // Renewals that fail until the lease ends: a demotion, its term observed.
  timeout.times = 0;
  sim_.get("a").client->inject(timeout);
  ASSERT_TRUE(sim_.run_until([&] { return gauge(*registry_, "is_leader", of("a")) == 0; }, 2s));
  EXPECT_FALSE(sim_.leads("a"));
  EXPECT_GE(counter(*registry_, "heartbeat_failures_total", of("a", {{"reason", "timeout"}})), 4);
  EXPECT_EQ(counter(*registry_, "transitions_total", of("a", {{"to", "follower"}})), 1);
  const auto held = histogram(*registry_, "leader_duration_seconds", of("a"));
  ASSERT_EQ(held.sample_count, 1u);
  EXPECT_NEAR(held.sample_sum, std::chrono::duration<double>(sim_.now() - promoted_at).count(), 0.001);
  sim_.get("a").client->clear_faults();
}

TEST_F(MetricsSimTest, ReCreatedBucketIsARevisionRegression) {
  add("a");
  add("b");
  sim_.start("a");
  ASSERT_TRUE(sim_.run_until([&] { return sim_.leads("a"); }, 1s));
  sim_.start("b");
  sim_.run_for(1s);  // renewals push the key's revision up
  EXPECT_EQ(counter(*registry_, "revision_regressions_total", of("a")), 0);

  // The bucket is deleted and re-created, and someone writes the key: its
  // revision restarts at 1. The watches fail; b (following) reads the key
  // at once, a reads it when its next renewal conflicts.
  ASSERT_TRUE(sim_.server().delete_bucket("sim"));
  detail::BucketSpec spec;
  spec.name = "sim";
  spec.ttl = sim_.get("a").config.ttl;
  ASSERT_TRUE(sim_.server().create_bucket(spec));
  detail::Record other;
  other.holder = "x";
  other.nonce = "n";
  other.term = 1;
  ASSERT_EQ(sim_.server().put_raw("sim", "role", detail::encode_record(other)), 1u);
  sim_.run_for(500ms);
  EXPECT_EQ(counter(*registry_, "revision_regressions_total", of("b")), 1);
  // a sees it on the read after its first conflicting renewal, once: the
  // core starts over from the lower revision, and the key is not a's.
  EXPECT_EQ(counter(*registry_, "revision_regressions_total", of("a")), 1);
  EXPECT_EQ(gauge(*registry_, "is_leader", of("a")), 0);
  EXPECT_EQ(counter(*registry_, "transitions_total", of("a", {{"to", "follower"}})), 1);
}

TEST_F(MetricsSimTest, ConnectionStatusFollowsTheConnection) {
  add("a");
  sim_.start("a");
  ASSERT_TRUE(sim_.run_until([&] { return sim_.leads("a"); }, 1s));
  EXPECT_EQ(gauge(*registry_, "connection_status", of("a")), 1);
  sim_.get("a").client->set_disconnected(true);
  sim_.run_for(10ms);
  EXPECT_EQ(gauge(*registry_, "connection_status", of("a")), 0);
  sim_.get("a").client->set_disconnected(false);
  sim_.run_for(10ms);
  EXPECT_EQ(gauge(*registry_, "connection_status", of("a")), 1);
}

TEST(PrometheusMetricsTest, ReportsEverySinkCallUnderTheElectionsLabels) {
  auto registry = std::make_shared<Registry>();
  auto m = detail::make_prometheus_metrics(registry, "b", "r", "i");
  const Labels l{{"bucket", "b"}, {"role", "r"}, {"instance", "i"}};
  auto with = [&](const char* k, const char* v) {
    Labels x = l;
    x[k] = v;
    return x;
  };
  m->lease_remaining(1500ms);
  m->callback("on_promote", 2ms, false);
  m->callback("on_promote", 3ms, true);
  m->token_validation("valid");
  m->token_validation("invalid");
  m->health_check_failure();
  m->heartbeat_failure("conflict");
  m->acquire_attempt("something-new");
  EXPECT_DOUBLE_EQ(gauge(*registry, "lease_remaining_seconds", l), 1.5);
  const auto cb = histogram(*registry, "callback_duration_seconds", with("callback", "on_promote"));
  EXPECT_EQ(cb.sample_count, 2u);
  EXPECT_NEAR(cb.sample_sum, 0.005, 1e-9);
  EXPECT_EQ(counter(*registry, "callback_errors_total", with("callback", "on_promote")), 1);
  EXPECT_TRUE(series(*registry, "leader_election_callback_errors_total", with("callback", "on_demote")));
  EXPECT_EQ(counter(*registry, "token_validations_total", with("result", "valid")), 1);
  EXPECT_EQ(counter(*registry, "token_validations_total", with("result", "invalid")), 1);
  EXPECT_EQ(counter(*registry, "token_validations_total", with("result", "error")), 0);
  EXPECT_EQ(counter(*registry, "health_check_failures_total", l), 1);
  EXPECT_EQ(counter(*registry, "heartbeat_failures_total", with("reason", "conflict")), 1);
  EXPECT_EQ(counter(*registry, "acquire_attempts_total", with("result", "something-new")), 1);

  // A leader that goes away without being demoted must not keep claiming
  // the role in the registry.
  m->promoted(7, std::nullopt);
  EXPECT_EQ(gauge(*registry, "is_leader", l), 1);
  m.reset();
  EXPECT_EQ(gauge(*registry, "is_leader", l), 0);
  EXPECT_EQ(gauge(*registry, "term", l), 0);
}

TEST(PrometheusMetricsTest, FamiliesAreRegisteredOncePerRegistryAndSeriesAreShared) {
  // InsertBehavior::Throw fails on a second registration of a name: the
  // library must register each family once per registry.
  auto registry = std::make_shared<Registry>(Registry::InsertBehavior::Throw);
  auto a = detail::make_prometheus_metrics(registry, "b", "r1", "i");
  auto b = detail::make_prometheus_metrics(registry, "b", "r2", "i");
  a->promoted(3, std::nullopt);
  b->promoted(4, std::nullopt);
  int families = 0;
  for (const auto& f : registry->Collect()) families += f.name == "leader_election_is_leader";
  EXPECT_EQ(families, 1);
  EXPECT_EQ(gauge(*registry, "term", {{"role", "r1"}}), 3);
  EXPECT_EQ(gauge(*registry, "term", {{"role", "r2"}}), 4);

  // The same identity again (an election re-created): the same series.
  a->demoted(DemoteReason::stopped, 1s);
  a.reset();
  auto again = detail::make_prometheus_metrics(registry, "b", "r1", "i");
  again->promoted(9, std::nullopt);
  EXPECT_EQ(counter(*registry, "transitions_total", {{"role", "r1"}, {"to", "leader"}}), 2);
  EXPECT_EQ(counter(*registry, "transitions_total", {{"role", "r1"}, {"to", "follower"}}), 1);

  // Another registry gets its own families and series.
  auto other = std::make_shared<Registry>(Registry::InsertBehavior::Throw);
  auto c = detail::make_prometheus_metrics(other, "b", "r1", "i");
  EXPECT_EQ(counter(*other, "transitions_total", {{"role", "r1"}, {"to", "leader"}}), 0);
}

class MetricsElectionTest : public testing::MockServerTest {};

TEST_F(MetricsElectionTest, WithoutARegistryNoMetricsExist) {
  const auto before = detail::prometheus_metrics_alive();
  Election a(connection("a"), fast_config("a"));
  EXPECT_EQ(detail::prometheus_metrics_alive(), before);
  a.start();
  ASSERT_TRUE(a.wait_for_leadership(5s));
  a.stop();
  EXPECT_EQ(detail::prometheus_metrics_alive(), before);

  Telemetry t;
  t.registry = std::make_shared<Registry>();
  {
    Election b(connection("b"), fast_config("b"), {}, t);
    EXPECT_EQ(detail::prometheus_metrics_alive(), before + 1);
    EXPECT_TRUE(has_family(*t.registry, "leader_election_is_leader"));
  }
  EXPECT_EQ(detail::prometheus_metrics_alive(), before);
}

TEST_F(MetricsElectionTest, ElectionReportsCallbacksLeaseAndTerm) {
  Telemetry t;
  t.registry = std::make_shared<Registry>();
  Callbacks cb;
  cb.on_promote = [](const Term&) { throw std::runtime_error("user bug"); };
  Election a(connection("a"), fast_config("a"), cb, t);
  const Labels l{{"bucket", "unit"}, {"role", "role"}, {"instance", "a"}};
  a.start();
  ASSERT_TRUE(a.wait_for_leadership(5s));
  const auto& r = *t.registry;
  ASSERT_TRUE(eventually([&] {
    return counter(r, "callback_errors_total", {{"callback", "on_promote"}}) == 1;
  }));
  EXPECT_EQ(histogram(r, "callback_duration_seconds", {{"callback", "on_promote"}}).sample_count, 1u);
  EXPECT_EQ(gauge(r, "is_leader", l), 1);
  EXPECT_EQ(gauge(r, "term", l), static_cast<double>(*a.token()));
  EXPECT_EQ(gauge(r, "connection_status", l), 1);
  const double lease = gauge(r, "lease_remaining_seconds", l);
  EXPECT_GT(lease, 0);
  EXPECT_LE(lease, 0.55);  // ttl - margin
  ASSERT_TRUE(eventually([&] { return histogram(r, "heartbeat_duration_seconds", l).sample_count >= 2; }));
  a.stop();
  EXPECT_EQ(gauge(r, "is_leader", l), 0);
  EXPECT_EQ(gauge(r, "lease_remaining_seconds", l), 0);
  EXPECT_EQ(histogram(r, "leader_duration_seconds", l).sample_count, 1u);
}

TEST_F(MetricsElectionTest, ElectionsShareARegistryAcrossRolesAndReCreation) {
  Telemetry t;
  t.registry = std::make_shared<Registry>();
  {
    Election x(connection("x"), fast_config("a", "role-x"), {}, t);
    Election y(connection("y"), fast_config("a", "role-y"), {}, t);
    x.start();
    y.start();
    ASSERT_TRUE(x.wait_for_leadership(5s));
    ASSERT_TRUE(y.wait_for_leadership(5s));
    EXPECT_EQ(gauge(*t.registry, "is_leader", {{"role", "role-x"}}), 1);
    EXPECT_EQ(gauge(*t.registry, "is_leader", {{"role", "role-y"}}), 1);
  }
  Election again(connection("x2"), fast_config("a", "role-x"), {}, t);
  again.start();
  ASSERT_TRUE(again.wait_for_leadership(5s));
  EXPECT_EQ(counter(*t.registry, "transitions_total", {{"role", "role-x"}, {"to", "leader"}}), 2);
  EXPECT_EQ(counter(*t.registry, "transitions_total", {{"role", "role-x"}, {"to", "follower"}}), 1);
  EXPECT_EQ(gauge(*t.registry, "is_leader", {{"role", "role-x"}}), 1);
  EXPECT_EQ(gauge(*t.registry, "is_leader", {{"role", "role-y"}}), 0);
}

TEST_F(MetricsElectionTest, RoleManagerReportsEveryRoleUnderItsOwnLabels) {
  Telemetry t;
  t.registry = std::make_shared<Registry>();
  Config defaults = fast_config("a");
  RoleManager m(connection("a"), defaults, {}, t);
  m.add("r1", {});
  m.add("r2", {});
  ASSERT_TRUE(eventually([&] { return m.leading().size() == 2; }));
  EXPECT_EQ(gauge(*t.registry, "is_leader", {{"role", "r1"}, {"instance", "a"}}), 1);
  EXPECT_EQ(gauge(*t.registry, "is_leader", {{"role", "r2"}, {"instance", "a"}}), 1);
  EXPECT_TRUE(m.remove("r2"));
  EXPECT_EQ(gauge(*t.registry, "is_leader", {{"role", "r1"}}), 1);
  EXPECT_EQ(gauge(*t.registry, "is_leader", {{"role", "r2"}}), 0);
  EXPECT_EQ(counter(*t.registry, "transitions_total", {{"role", "r2"}, {"to", "follower"}}), 1);
}

TEST_F(MetricsElectionTest, ANameTakenWithAnotherTypeIsAConfigError) {
  auto registry = std::make_shared<Registry>();
  prometheus::BuildCounter().Name("leader_election_is_leader").Register(*registry);
  Telemetry t;
  t.registry = registry;
  try {
    Election a(connection("a"), fast_config("a"), {}, t);
    FAIL() << "a registry with a clashing name was accepted";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.field(), "telemetry.registry");
  }
}

}  // namespace
}  // namespace leader
