// End-to-end tests of leader::Election against a real nats-server (started
// per test by leader::testing::NatsServer, one bucket per test). Timing
// bounds derive from each test's config and are wide on purpose: they check
// behaviour (graceful handover far below the TTL, crash failover about one
// TTL), not performance; bench/ measures that.

#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "leader/leader.h"
#include "support/child_process.h"
#include "support/integration_helpers.h"
#include "support/nats_server.h"
#include "support/wait.h"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using leader::testing::bucket_for_current_test;
using leader::testing::ChildProcess;
using leader::testing::eventually;
using leader::testing::NatsServer;

#ifndef LEADER_CONTROL_MANAGER_BIN
#define LEADER_CONTROL_MANAGER_BIN ""
#endif

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

/// One candidate with its own connection, as a separate process would have.
struct Candidate {
  std::shared_ptr<leader::Connection> connection;
  std::unique_ptr<leader::Election> election;
};

class ElectionTest : public ::testing::Test {
 protected:
  void SetUp() override { bucket_ = bucket_for_current_test(); }

  /// The test's nats-server with JetStream, started on first use.
  NatsServer& server() {
    if (!server_) server_ = std::make_unique<NatsServer>();
    return *server_;
  }

  leader::Config make_config(const std::string& id, std::chrono::milliseconds ttl) const {
    leader::Config config;
    config.bucket = bucket_;
    config.role = "scheduler";
    config.instance_id = id;
    config.ttl = ttl;
    return config;
  }

  static std::shared_ptr<leader::Connection> connect(const std::string& url, const std::string& name) {
    leader::ConnectionOptions options;
    options.url = url;
    options.name = name;
    options.io_threads = 2;
    return leader::Connection::connect(options);
  }

  /// Builds `n` candidates "c-0".."c-<n-1>" with their own connections.
  std::vector<Candidate> make_candidates(int n, std::chrono::milliseconds ttl) {
    std::vector<Candidate> candidates;
    for (int i = 0; i < n; ++i) {
      const std::string id = "c-" + std::to_string(i);
      Candidate c;
      c.connection = connect(server().url(), id);
      c.election = std::make_unique<leader::Election>(c.connection, make_config(id, ttl));
      candidates.push_back(std::move(c));
    }
    return candidates;
  }

  static int count_leaders(const std::vector<Candidate>& candidates) {
    int n = 0;
    for (const auto& c : candidates) {
      if (c.election && c.election->is_leader()) ++n;
    }
    return n;
  }

  /// Index of the single leader, or -1 if there is none (or several).
  static int leader_index(const std::vector<Candidate>& candidates) {
    int index = -1;
    for (std::size_t i = 0; i < candidates.size(); ++i) {
      if (candidates[i].election && candidates[i].election->is_leader()) {
        if (index >= 0) return -1;
        index = static_cast<int>(i);
      }
    }
    return index;
  }

  /// Starts all, waits for a leader, checks that exactly one instance leads
  /// for a while and that every candidate names it as the leader.
  void expect_exactly_one_leader(std::vector<Candidate>& candidates) {
    for (auto& c : candidates) c.election->start();
    const auto ttl = candidates.front().election->config().ttl;
    ASSERT_TRUE(eventually([&] { return count_leaders(candidates) > 0; }, ttl + 5s)) << "nobody leads";

    // Sample for a while: never two leaders, and the leader keeps leading
    // across several renewals.
    const auto hb = candidates.front().election->config().heartbeat_interval;
    const auto observe_until = Clock::now() + std::max<std::chrono::milliseconds>(500ms, 2 * hb);
    int max_seen = 0;
    int min_seen = 1;
    while (Clock::now() < observe_until) {
      const int n = count_leaders(candidates);
      max_seen = std::max(max_seen, n);
      min_seen = std::min(min_seen, n);
      std::this_thread::sleep_for(2ms);
    }
    EXPECT_EQ(max_seen, 1) << "two candidates believed they lead at once";
    EXPECT_EQ(min_seen, 1) << "the leader lost its role without any fault";

    const int leader = leader_index(candidates);
    ASSERT_GE(leader, 0);
    const std::string leader_id = candidates[leader].election->config().instance_id;
    ASSERT_TRUE(candidates[leader].election->token().has_value());
    const bool all_agree = eventually(
        [&] {
          for (const auto& c : candidates) {
            if (c.election->leader_id() != std::optional<std::string>(leader_id)) return false;
          }
          return true;
        },
        5s);
    EXPECT_TRUE(all_agree);
    for (const auto& c : candidates) {
      EXPECT_EQ(c.election->leader_id().value_or("<none>"), leader_id)
          << "as seen by " << c.election->config().instance_id;
    }
  }

  std::string bucket_;
  std::unique_ptr<NatsServer> server_;
};

TEST_F(ElectionTest, TwoCandidatesElectExactlyOneLeader) {
  auto candidates = make_candidates(2, 5s);
  expect_exactly_one_leader(candidates);
}

TEST_F(ElectionTest, FiveCandidatesElectExactlyOneLeader) {
  auto candidates = make_candidates(5, 5s);
  expect_exactly_one_leader(candidates);
}

TEST_F(ElectionTest, GracefulStopHandsOverFarBelowTtl) {
  const auto ttl = 10s;
  auto candidates = make_candidates(3, ttl);
  for (auto& c : candidates) c.election->start();
  ASSERT_TRUE(eventually([&] { return count_leaders(candidates) == 1; }, 15s));
  const int old_leader = leader_index(candidates);
  ASSERT_GE(old_leader, 0);
  const auto old_token = candidates[old_leader].election->token();
  ASSERT_TRUE(old_token.has_value());
  // Let the followers learn the leader, so the handover is driven by the
  // release (delete event), not by a first acquire.
  const std::string old_id = candidates[old_leader].election->config().instance_id;
  ASSERT_TRUE(eventually(
      [&] {
        for (const auto& c : candidates) {
          if (c.election->leader_id() != std::optional<std::string>(old_id)) return false;
        }
        return true;
      },
      5s));

  // A release lets a follower take over within milliseconds; a bound of a
  // tenth of the TTL leaves room for a noisy machine and still fails if the
  // key were left to expire.
  const auto bound = std::chrono::duration_cast<std::chrono::milliseconds>(ttl) / 10;
  const auto start = Clock::now();
  candidates[old_leader].election->stop();
  const double stop_ms = ms_since(start);
  const bool taken_over = eventually(
      [&] {
        for (std::size_t i = 0; i < candidates.size(); ++i) {
          if (static_cast<int>(i) != old_leader && candidates[i].election->is_leader()) return true;
        }
        return false;
      },
      ttl + 5s);
  const double handover_ms = ms_since(start);
  std::printf("[ measured ] graceful handover %.2f ms (stop() returned after %.2f ms; bound %lld ms)\n",
              handover_ms, stop_ms, static_cast<long long>(bound.count()));
  RecordProperty("handover_us", static_cast<int>(handover_ms * 1000));
  ASSERT_TRUE(taken_over);
  EXPECT_LT(handover_ms, static_cast<double>(bound.count()));
  EXPECT_FALSE(candidates[old_leader].election->is_leader());
  EXPECT_EQ(count_leaders(candidates), 1);

  const int new_leader = leader_index(candidates);
  ASSERT_GE(new_leader, 0);
  const auto new_token = candidates[new_leader].election->token();
  ASSERT_TRUE(new_token.has_value());
  EXPECT_GT(*new_token, *old_token) << "fencing tokens must increase across terms";
}

TEST_F(ElectionTest, KilledLeaderProcessIsReplacedAfterTtl) {
  const std::string binary = LEADER_CONTROL_MANAGER_BIN;
  if (binary.empty()) GTEST_SKIP() << "control-manager example not built (LEADER_BUILD_EXAMPLES=OFF)";

  const auto ttl = 2000ms;
  const std::string url = server().url();
  // Spawned before this process opens any connection, so the child inherits
  // none of our sockets.
  ChildProcess child({binary, "--nats-url", url, "--bucket", bucket_, "--role", "scheduler", "--id",
                      "cm-child", "--ttl", std::to_string(ttl.count()) + "ms"});
  ASSERT_TRUE(child.running()) << child.error();
  const auto promoted = child.wait_for_line(" event=promoted ", 15s);
  ASSERT_TRUE(promoted.has_value()) << "the child never led; its output:\n" << child.output();

  Candidate follower;
  follower.connection = connect(url, "follower");
  follower.election = std::make_unique<leader::Election>(follower.connection, make_config("follower", ttl));
  follower.election->start();
  const auto hb = follower.election->config().heartbeat_interval;
  ASSERT_TRUE(eventually(
      [&] { return follower.election->leader_id() == std::optional<std::string>("cm-child"); }, 5s))
      << "the follower never saw the child lead; it sees "
      << follower.election->leader_id().value_or("<none>") << "; the child's output:\n"
      << child.output();
  ASSERT_FALSE(follower.election->is_leader());
  // Let the follower see a few renewals, so it times the expiry from the
  // child's last renewal rather than from its own start.
  std::this_thread::sleep_for(hb * 5 / 2);

  const auto killed_at = Clock::now();
  child.kill();
  const bool took_over = eventually([&] { return follower.election->is_leader(); }, ttl + 10s);
  const double failover_ms = ms_since(killed_at);
  std::printf("[ measured ] crash failover %.2f ms (ttl %lld ms, heartbeat %lld ms)\n", failover_ms,
              static_cast<long long>(ttl.count()), static_cast<long long>(hb.count()));
  RecordProperty("failover_us", static_cast<int>(failover_ms * 1000));
  ASSERT_TRUE(took_over) << "the follower never took over after the leader was killed";

  // The child's last write was at most one heartbeat before the kill, and
  // its key lives a full TTL after that write: taking over earlier would
  // mean two leaders. 100 ms covers a late renewal timer on a busy machine.
  // Expiry sends no watch event, so taking over at all shows the follower
  // timed it itself.
  const double lower_ms = static_cast<double>((ttl - hb).count()) - 100.0;
  const double upper_ms = static_cast<double>((ttl + 3s).count());
  EXPECT_GE(failover_ms, lower_ms) << "took over before the dead leader's lease could have expired";
  EXPECT_LE(failover_ms, upper_ms);
  EXPECT_EQ(follower.election->leader_id().value_or("<none>"), "follower");
}

TEST_F(ElectionTest, ControlManagerReleasesOnSigterm) {
  const std::string binary = LEADER_CONTROL_MANAGER_BIN;
  if (binary.empty()) GTEST_SKIP() << "control-manager example not built (LEADER_BUILD_EXAMPLES=OFF)";

  const auto ttl = 10000ms;
  const std::string url = server().url();
  ChildProcess child({binary, "--nats-url", url, "--bucket", bucket_, "--role", "scheduler", "--id",
                      "cm-child", "--ttl", std::to_string(ttl.count()) + "ms"});
  ASSERT_TRUE(child.running()) << child.error();
  ASSERT_TRUE(child.wait_for_line(" event=promoted ", 15s).has_value())
      << "the child never led; its output:\n"
      << child.output();

  Candidate follower;
  follower.connection = connect(url, "follower");
  follower.election = std::make_unique<leader::Election>(follower.connection, make_config("follower", ttl));
  follower.election->start();
  ASSERT_TRUE(eventually(
      [&] { return follower.election->leader_id() == std::optional<std::string>("cm-child"); }, 5s));

  // SIGTERM: the child stops its reconcile loop, releases the key and exits
  // 0; the follower takes over far below the TTL.
  const auto start = Clock::now();
  child.signal(SIGTERM);
  const bool took_over = eventually([&] { return follower.election->is_leader(); }, ttl + 5s);
  const double handover_ms = ms_since(start);
  std::printf("[ measured ] SIGTERM to takeover %.2f ms\n", handover_ms);
  ASSERT_TRUE(took_over);
  EXPECT_LT(handover_ms, static_cast<double>((ttl / 10).count()));

  const auto status = child.wait_exit(10s);
  ASSERT_TRUE(status.has_value()) << "the child did not exit after SIGTERM";
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << "wait status " << *status;
  const std::string& output = child.output();
  const auto demoted = output.find(" event=demoted reason=stopped");
  const auto stopped = output.find(" event=stopped");
  ASSERT_NE(demoted, std::string::npos) << output;
  ASSERT_NE(stopped, std::string::npos) << output;
  EXPECT_LT(demoted, stopped);
}

TEST_F(ElectionTest, BucketTtlMismatchFailsStart) {
  {
    auto connection = connect(server().url(), "creator");
    leader::Election creator(connection, make_config("creator", 2s));
    creator.start();
    creator.stop();
  }
  auto connection = connect(server().url(), "other");
  leader::Election other(connection, make_config("other", 3s));
  try {
    other.start();
    ADD_FAILURE() << "start() accepted a bucket whose TTL differs from the config";
  } catch (const leader::Error& e) {
    EXPECT_EQ(e.code(), leader::make_error_code(leader::Errc::bucket_mismatch)) << e.what();
    EXPECT_NE(std::string(e.what()).find(bucket_), std::string::npos)
        << "the message should name the bucket: " << e.what();
  }
  EXPECT_FALSE(other.is_leader());
}

TEST_F(ElectionTest, ServerWithoutJetStreamFailsStart) {
  NatsServer::Options options;
  options.jetstream = false;
  NatsServer plain(options);
  auto connection = connect(plain.url(), "no-js");
  auto config = make_config("no-js", 2s);
  config.start_timeout = 2s;
  leader::Election election(connection, config);
  const auto start = Clock::now();
  try {
    election.start();
    ADD_FAILURE() << "start() succeeded on a server without JetStream";
  } catch (const leader::Error& e) {
    EXPECT_EQ(e.code(), leader::make_error_code(leader::Errc::jetstream_unavailable)) << e.what();
  }
  EXPECT_LT(ms_since(start), static_cast<double>((config.start_timeout + 3s).count()))
      << "start() must give up within start_timeout";
  EXPECT_FALSE(election.is_leader());
}

TEST_F(ElectionTest, CallbacksRunInOrderAndStopReleasesTheKey) {
  const auto ttl = 10s;
  std::mutex mu;
  std::vector<std::string> events;
  std::uint64_t promoted_token = 0;
  leader::Callbacks callbacks;
  callbacks.on_promote = [&](const leader::Term& term) {
    std::lock_guard<std::mutex> lock(mu);
    events.emplace_back("promote");
    promoted_token = term.token();
  };
  callbacks.on_demote = [&](leader::DemoteReason reason) {
    std::lock_guard<std::mutex> lock(mu);
    events.push_back(std::string("demote:") + leader::to_string(reason));
  };
  auto snapshot = [&] {
    std::lock_guard<std::mutex> lock(mu);
    return events;
  };

  auto connection_a = connect(server().url(), "a");
  leader::Election a(connection_a, make_config("a", ttl), callbacks);
  a.start();
  ASSERT_TRUE(a.wait_for_leadership(10s));
  ASSERT_TRUE(eventually([&] { return !snapshot().empty(); }, 5s)) << "on_promote never ran";
  const auto token = a.token();
  ASSERT_TRUE(token.has_value());
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_EQ(promoted_token, *token);
  }

  a.stop();
  // stop() returns after on_demote returned.
  EXPECT_EQ(snapshot(), (std::vector<std::string>{"promote", "demote:stopped"}));
  EXPECT_FALSE(a.is_leader());
  EXPECT_FALSE(a.token().has_value());

  // The key is gone: a new candidate leads at once instead of waiting for
  // the TTL.
  auto connection_b = connect(server().url(), "b");
  leader::Election b(connection_b, make_config("b", ttl));
  const auto start = Clock::now();
  b.start();
  const bool leads = b.wait_for_leadership(std::chrono::duration_cast<std::chrono::milliseconds>(ttl) / 10);
  const double acquire_ms = ms_since(start);
  std::printf("[ measured ] start() to leadership after a release: %.2f ms\n", acquire_ms);
  EXPECT_TRUE(leads) << "the released key still blocked a new candidate";
  ASSERT_TRUE(b.token().has_value());
  EXPECT_GT(*b.token(), *token);

  // Nothing more arrives for `a`: each callback ran exactly once.
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(snapshot(), (std::vector<std::string>{"promote", "demote:stopped"}));
}

}  // namespace
