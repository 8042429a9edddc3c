// RoleManager, its shared watch (WatchHub) and its shared callback threads
// (Strand), over natsmock on the real steady clock.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "leader/error.h"
#include "leader/role_manager.h"
#include "natsmock/mock_kv.h"
#include "runtime.h"
#include "support/mock_election.h"
#include "support/proc_status.h"
#include "support/wait.h"
#include "watch_hub.h"

namespace leader {
namespace {

using namespace std::chrono_literals;
using detail::WatchEvent;
using testing::eventually;
using testing::fast_config;

std::string role_name(int i) {
  const std::string n = std::to_string(i);
  return "r" + std::string(n.size() < 3 ? 3 - n.size() : 0, '0') + n;  // r000, r001, ...
}

std::vector<std::string> role_names(int n) {
  std::vector<std::string> out;
  out.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) out.push_back(role_name(i));
  return out;
}

// ---------------------------------------------------------------- Strand

TEST(StrandTest, TasksOfOneStrandRunInOrderAndNeverAtOnce) {
  auto pool = std::make_shared<detail::ThreadPool>(4);
  detail::Strand strand(pool);
  std::vector<int> order;  // touched only by the strand's tasks
  std::atomic<int> inside{0};
  std::atomic<bool> overlapped{false};
  for (int i = 0; i < 500; ++i) {
    strand.post([&, i] {
      if (inside.fetch_add(1) != 0) overlapped = true;
      order.push_back(i);
      inside.fetch_sub(1);
    });
  }
  strand.shutdown();  // waits for the queued tasks
  EXPECT_FALSE(overlapped.load());
  ASSERT_EQ(order.size(), 500u);
  for (int i = 0; i < 500; ++i) EXPECT_EQ(order[static_cast<std::size_t>(i)], i);
}

TEST(StrandTest, StrandsShareThePoolAndASlowOneDoesNotBlockTheOther) {
  auto pool = std::make_shared<detail::ThreadPool>(2);
  detail::Strand slow(pool);
  detail::Strand fast(pool);
  std::promise<void> release;
  auto released = release.get_future().share();
  slow.post([released] { released.wait(); });
  std::promise<void> fast_ran;
  fast.post([&] { fast_ran.set_value(); });
  EXPECT_EQ(fast_ran.get_future().wait_for(5s), std::future_status::ready);
  EXPECT_TRUE(slow.busy());
  release.set_value();
  slow.shutdown();
  EXPECT_FALSE(slow.busy());
}

TEST(StrandTest, InStrandOnlyInsideItsTasksAndShutdownFromInsideReturns) {
  auto pool = std::make_shared<detail::ThreadPool>(1);
  detail::Strand a(pool);
  detail::Strand b(pool);
  std::promise<std::pair<bool, bool>> seen;
  a.post([&] {
    const bool in_a = a.in_strand();
    const bool in_b = b.in_strand();
    a.shutdown();  // must not wait for itself
    seen.set_value({in_a, in_b});
  });
  auto f = seen.get_future();
  ASSERT_EQ(f.wait_for(5s), std::future_status::ready);
  EXPECT_EQ(f.get(), std::make_pair(true, false));
  EXPECT_FALSE(a.in_strand());
  bool ran = false;
  a.post([&] { ran = true; });  // after shutdown: dropped
  b.shutdown();
  EXPECT_FALSE(ran);
}

// -------------------------------------------------------------- WatchHub

class WatchHubTest : public testing::MockServerTest {
 protected:
  void SetUp() override {
    detail::BucketSpec spec;
    spec.name = "hub";
    spec.ttl = 10s;
    ASSERT_TRUE(server_.create_bucket(spec));
    client_ = server_.client("c");
    auto opened = client_->open_bucket(spec, 1s);
    ASSERT_TRUE(opened.store);
    hub_ = std::make_shared<detail::WatchHub>(opened.store);
  }

  struct Seen {
    std::mutex mu;
    std::vector<WatchEvent> events;
    void add(const WatchEvent& e) {
      std::lock_guard<std::mutex> lock(mu);
      events.push_back(e);
    }
    std::vector<WatchEvent> get() {
      std::lock_guard<std::mutex> lock(mu);
      return events;
    }
  };

  std::unique_ptr<detail::Watch> watch(const std::string& key, Seen& seen) {
    detail::KvResult error;
    auto w = hub_->watch(
        key, [&seen](const WatchEvent& e) { seen.add(e); }, &error);
    EXPECT_TRUE(w) << error.message;
    return w;
  }

  std::shared_ptr<natsmock::MockClient> client_;
  std::shared_ptr<detail::WatchHub> hub_;
};

TEST_F(WatchHubTest, ManyKeysShareOneBucketWatch) {
  server_.put_raw("hub", "a", "1");
  const auto rb = server_.put_raw("hub", "b", "2");
  Seen sa, sb, sc;
  auto wa = watch("a", sa);
  auto wb = watch("b", sb);
  auto wc = watch("c", sc);
  EXPECT_EQ(count("c", "watch_all"), 1u);
  EXPECT_EQ(count("c", "watch"), 0u);
  EXPECT_EQ(hub_->bucket_watches(), 1u);
  EXPECT_EQ(hub_->watchers(), 3u);

  // Each replay: the key's latest entry (if any), then replay_done.
  auto eb = sb.get();
  ASSERT_EQ(eb.size(), 2u);
  EXPECT_EQ(eb[0].kind, WatchEvent::Kind::entry);
  EXPECT_EQ(eb[0].entry.key, "b");
  EXPECT_EQ(eb[0].entry.revision, rb);
  EXPECT_EQ(eb[1].kind, WatchEvent::Kind::replay_done);
  auto ec = sc.get();
  ASSERT_EQ(ec.size(), 1u);
  EXPECT_EQ(ec[0].kind, WatchEvent::Kind::replay_done);

  // Live entries go to their key's watcher only.
  const auto rc = server_.put_raw("hub", "c", "3");
  ec = sc.get();
  ASSERT_EQ(ec.size(), 2u);
  EXPECT_EQ(ec[1].entry.revision, rc);
  EXPECT_EQ(sa.get().size(), 2u);
  EXPECT_EQ(sb.get().size(), 2u);

  // A watcher that joins late gets the latest entry at once.
  Seen sc2;
  auto wc2 = watch("c", sc2);
  auto ec2 = sc2.get();
  ASSERT_EQ(ec2.size(), 2u);
  EXPECT_EQ(ec2[0].entry.revision, rc);
  EXPECT_EQ(hub_->bucket_watches(), 1u);
}

TEST_F(WatchHubTest, ADestroyedWatcherHearsNothingMore) {
  Seen sa;
  auto wa = watch("a", sa);
  wa.reset();
  EXPECT_EQ(hub_->watchers(), 0u);
  server_.put_raw("hub", "a", "1");
  EXPECT_EQ(sa.get().size(), 1u);  // the replay_done only
}

TEST_F(WatchHubTest, AFailedBucketWatchFailsEveryWatcherAndTheNextJoinStartsANewOne) {
  Seen sa, sb;
  auto wa = watch("a", sa);
  auto wb = watch("b", sb);
  client_->set_disconnected(true);
  client_->set_disconnected(false);  // the mock fails every watch of a reconnected client
  ASSERT_EQ(sa.get().back().kind, WatchEvent::Kind::error);
  ASSERT_EQ(sb.get().back().kind, WatchEvent::Kind::error);
  EXPECT_EQ(hub_->watchers(), 0u);
  wa.reset();  // unregisters nothing, harmlessly
  const auto ra = server_.put_raw("hub", "a", "x");
  EXPECT_EQ(sa.get().size(), 2u) << "nothing after the error";
  Seen sa2;
  auto wa2 = watch("a", sa2);
  EXPECT_EQ(hub_->bucket_watches(), 2u);
  auto e = sa2.get();
  ASSERT_EQ(e.size(), 2u);
  EXPECT_EQ(e[0].entry.revision, ra);
}

// ----------------------------------------------------------- RoleManager

class RoleManagerTest : public testing::MockServerTest {
 protected:
  static Config defaults(const std::string& id) {
    Config c = fast_config(id);
    c.role.clear();
    return c;
  }
};

// Each role's leader as the managers see it: id -> roles it leads.
std::map<std::string, int> leaders_per_role(const std::vector<const RoleManager*>& managers,
                                            const std::vector<std::string>& roles) {
  std::map<std::string, int> n;
  for (const auto& r : roles) {
    n[r] = 0;
    for (const auto* m : managers) n[r] += m->is_leader(r) ? 1 : 0;
  }
  return n;
}

TEST_F(RoleManagerTest, EveryRoleHasExactlyOneLeaderAcrossManagers) {
  const std::vector<std::string> roles = role_names(40);
  RoleManager a(connection("a"), defaults("a"));
  RoleManager b(connection("b"), defaults("b"));
  for (const auto& r : roles) {
    a.add(r, {});
    b.add(r, {});
  }
  ASSERT_TRUE(eventually([&] {
    for (const auto& [r, n] : leaders_per_role({&a, &b}, roles)) {
      if (n != 1) return false;
    }
    // A loser learns the winner's name from the read its conflict sends
    // (or the watch), a moment after the winner promoted: wait for it too.
    for (const auto& s : a.status()) {
      if (!s.leader_id) return false;
    }
    return true;
  }));
  EXPECT_EQ(a.leading().size() + b.leading().size(), roles.size());
  EXPECT_EQ(a.roles(), roles);
  // One bucket watch per manager, none per role.
  EXPECT_EQ(count("a", "watch_all"), 1u);
  EXPECT_EQ(count("a", "watch"), 0u);
  // The aggregated status agrees with is_leader() and names the leader.
  const auto status = a.status();
  ASSERT_EQ(status.size(), roles.size());
  for (const auto& s : status) {
    ASSERT_TRUE(s.leader_id.has_value()) << s.role;
    EXPECT_EQ(*s.leader_id, s.leading ? "a" : "b") << s.role;
    EXPECT_EQ(s.term != 0, s.leading);
    EXPECT_GT(s.lease_remaining, 0ms) << s.role;
    if (s.leading) {
      EXPECT_EQ(s.fencing_token.revision, s.term);
    }
  }
}

TEST_F(RoleManagerTest, ThreadsDoNotGrowWithTheNumberOfRoles) {
  RoleManagerOptions opts;
  opts.callback_threads = 2;
  auto conn = connection("a");
  const int before = testing::proc_status("Threads");
  {
    RoleManager m(conn, defaults("a"), opts);
    std::atomic<int> promoted{0};
    for (int i = 0; i < 300; ++i) {
      Callbacks cb;
      cb.on_promote = [&](const Term&) { promoted++; };
      m.add(role_name(i), cb);
    }
    ASSERT_TRUE(eventually([&] { return promoted.load() == 300; }));
    const int during = testing::proc_status("Threads");
    // The manager's own: its callback threads only (the loop and I/O
    // threads belong to the connection, made before `before`).
    EXPECT_LE(during - before, opts.callback_threads) << "before " << before << ", with 300 roles " << during;
  }
  EXPECT_EQ(testing::proc_status("Threads"), before);
}

TEST_F(RoleManagerTest, RemovingARoleReleasesItAndTheOtherManagerTakesOverAtOnce) {
  RoleManager a(connection("a"), defaults("a"));
  std::atomic<int> a_demoted{0};
  Callbacks cb;
  cb.on_demote = [&](DemoteReason r) {
    EXPECT_EQ(r, DemoteReason::stopped);
    a_demoted++;
  };
  a.add("x", cb);
  ASSERT_TRUE(eventually([&] { return a.is_leader("x"); }));
  RoleManager b(connection("b"), defaults("b"));
  b.add("x", {});
  ASSERT_TRUE(eventually([&] { return b.status("x")->leader_id == std::optional<std::string>("a"); }));
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(a.remove("x"));
  EXPECT_EQ(a_demoted.load(), 1);
  EXPECT_FALSE(a.contains("x"));
  EXPECT_FALSE(a.status("x").has_value());
  ASSERT_TRUE(eventually([&] { return b.is_leader("x"); }, 2s));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 400ms) << "released, not expired (ttl 600 ms)";
  EXPECT_FALSE(a.remove("x"));
}

TEST_F(RoleManagerTest, StopReleasesEveryRole) {
  const std::vector<std::string> roles = role_names(20);
  RoleManager a(connection("a"), defaults("a"));
  for (const auto& r : roles) a.add(r, {});
  ASSERT_TRUE(eventually([&] { return a.leading().size() == roles.size(); }));
  RoleManager b(connection("b"), defaults("b"));
  for (const auto& r : roles) b.add(r, {});
  a.stop();
  EXPECT_TRUE(a.roles().empty());
  ASSERT_TRUE(eventually([&] { return b.leading().size() == roles.size(); }, 400ms))
      << "released, so well before the 600 ms ttl";
  // Roles can be added again after stop().
  a.add(roles[0], {});
  EXPECT_TRUE(a.contains(roles[0]));
}

TEST_F(RoleManagerTest, ARoleStillStartingWhenStopRunsDoesNotOutliveTheStop) {
  auto client = server_.client("a");
  RoleManager a(std::make_shared<Connection>(client, 2), defaults("a"));
  natsmock::Fault slow_open;
  slow_open.op = "open";
  slow_open.outcome = detail::KvOutcome::ok;
  slow_open.hang = true;
  client->inject(slow_open);
  auto adding = std::async(std::launch::async, [&] { a.add("x", {}); });
  ASSERT_TRUE(client->wait_for_hung_calls(1, 5s));
  a.stop();  // while "x" is still opening its bucket
  client->release_hangs();
  adding.get();
  EXPECT_FALSE(a.contains("x"));
  // It may have led for a moment; it must not lead now.
  EXPECT_FALSE(a.is_leader("x"));
  const auto key = server_.peek("unit", "x");
  EXPECT_TRUE(!key || key->op != detail::EntryOp::put) << "released";
}

TEST_F(RoleManagerTest, CallbacksOfEachRoleAlternateInOrderOnSharedThreads) {
  RoleManagerOptions opts;
  opts.callback_threads = 1;
  RoleManager a(connection("a"), defaults("a"), opts);
  std::mutex mu;
  std::map<std::string, std::string> trace;
  for (int i = 0; i < 10; ++i) {
    const std::string r = role_name(i);
    Callbacks cb;
    cb.on_promote = [&, r](const Term&) {
      std::lock_guard<std::mutex> lock(mu);
      trace[r] += "P";
    };
    cb.on_demote = [&, r](DemoteReason) {
      std::lock_guard<std::mutex> lock(mu);
      trace[r] += "D";
    };
    a.add(r, cb);
  }
  ASSERT_TRUE(eventually([&] { return a.leading().size() == 10; }));
  for (int i = 0; i < 10; ++i) a.step_down(role_name(i), 0ms);
  ASSERT_TRUE(eventually([&] {
    std::lock_guard<std::mutex> lock(mu);
    for (const auto& [r, t] : trace) {
      if (t.size() < 3) return false;
    }
    return trace.size() == 10;
  }));
  a.stop();
  std::lock_guard<std::mutex> lock(mu);
  for (const auto& [r, t] : trace) {
    for (std::size_t i = 0; i < t.size(); ++i) EXPECT_EQ(t[i], i % 2 == 0 ? 'P' : 'D') << r << ": " << t;
    EXPECT_EQ(t.back(), 'D') << r;
  }
}

TEST_F(RoleManagerTest, RemoveFromInsideTheRolesOwnCallbackDoesNotDeadlock) {
  RoleManager a(connection("a"), defaults("a"));
  std::promise<void> removed;
  std::atomic<bool> demoted{false};
  Callbacks cb;
  cb.on_promote = [&](const Term&) {
    EXPECT_TRUE(a.remove("x"));
    removed.set_value();
  };
  cb.on_demote = [&](DemoteReason) { demoted = true; };
  a.add("x", cb);
  ASSERT_EQ(removed.get_future().wait_for(5s), std::future_status::ready);
  ASSERT_TRUE(eventually([&] { return demoted.load(); }));
  EXPECT_FALSE(a.contains("x"));
  // Released once on_demote returned.
  ASSERT_TRUE(eventually([&] {
    auto e = server_.peek("unit", "x");
    return !e || e->op != detail::EntryOp::put;
  }));
}

TEST_F(RoleManagerTest, BadRolesAndOptionsAreRejected) {
  RoleManager a(connection("a"), defaults("a"));
  a.add("x", {});
  EXPECT_THROW(a.add("x", {}), ConfigError);
  EXPECT_THROW(a.add("", {}), ConfigError);
  EXPECT_THROW(a.add("has space", {}), ConfigError);
  EXPECT_THROW(a.add("_leader.handover.x", {}), ConfigError);
  EXPECT_EQ(a.roles(), std::vector<std::string>{"x"});
  // Same bucket name, another TTL: refused, and the manager is unharmed.
  Config other = defaults("a");
  other.role = "y";
  other.ttl = 900ms;
  EXPECT_THROW(a.add(other, {}), Error);
  EXPECT_FALSE(a.contains("y"));

  EXPECT_FALSE(a.is_leader("nope"));
  EXPECT_FALSE(a.status("nope").has_value());
  EXPECT_FALSE(a.fencing_token("nope").has_value());
  EXPECT_FALSE(a.step_down("nope"));
  EXPECT_FALSE(a.validate_token("nope", FencingToken{}));

  RoleManagerOptions bad;
  bad.callback_threads = 0;
  EXPECT_THROW(RoleManager(connection("b"), defaults("b"), bad), ConfigError);
  Config invalid = defaults("b");
  invalid.ttl = 0ms;
  EXPECT_THROW(RoleManager(connection("b"), invalid), ConfigError);
}

TEST_F(RoleManagerTest, RolesInSeveralBucketsAndTokensValidate) {
  RoleManager a(connection("a"), defaults("a"));
  Config other = defaults("a");
  other.bucket = "unit2";
  other.role = "y";
  a.add("x", {});
  a.add(other, {});
  ASSERT_TRUE(eventually([&] { return a.is_leader("x") && a.is_leader("y"); }));
  EXPECT_EQ(count("a", "watch_all"), 2u) << "one per bucket";
  const auto token = a.fencing_token("y");
  ASSERT_TRUE(token.has_value());
  EXPECT_TRUE(a.validate_token("y", *token));
  EXPECT_FALSE(a.validate_token("x", *token)) << "another role's token";
}

}  // namespace
}  // namespace leader
