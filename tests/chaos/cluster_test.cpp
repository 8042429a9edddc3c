// Chaos on a 3-node JetStream cluster (NatsCluster: free ports, temporary
// store dirs) with an R3 bucket: the node the leader's client is on, the
// bucket stream's leader and the meta leader are each killed by PID and
// restarted. A kill "heals" once a live node leads the bucket's stream again
// (polled on /jsz): a stream-leader election takes seconds (5-35 s on the
// shared machine), and only from then is a leader owed. With a TTL above
// that election time the role must stay available; with a TTL below it
// availability may suffer, safety may not.

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include <gtest/gtest.h>

#include "fleet.h"
#include "nats_cluster.h"
#include "scenario.h"
#include "wait.h"

namespace leader::chaos {
namespace {

using namespace std::chrono_literals;
using testing::NatsCluster;

constexpr auto kClusterLimit = 60s;

class ChaosClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (candidate_binary().empty()) GTEST_SKIP() << "leader_chaos_candidate not built";
  }

  /// Three candidates on the R3 bucket; every node killed and restarted in
  /// turn. `owed`: whether a leader is owed after each heal.
  void run(std::chrono::milliseconds ttl, bool owed) {
    NatsCluster cluster;
    ASSERT_TRUE(cluster.wait_until_ready(kClusterLimit)) << "the cluster elected no meta leader";
    FleetOptions o = fleet_options(dir_, ttl);
    o.url = cluster.urls();
    o.replicas = 3;
    Fleet fleet(o);
    fleet.spawn(3);
    ASSERT_TRUE(fleet.wait_started(kClusterLimit)) << "candidates did not start";
    const std::string stream = "KV_" + o.bucket;
    const auto bound = ttl + 4s;
    Stage s{fleet, nullptr, ttl, bound};
    ASSERT_FALSE(current_leader(s).empty());
    ASSERT_TRUE(cluster.wait_until_stream_current(stream, kClusterLimit));

    for (const std::string what : {"client_server", "stream_leader", "meta_leader"}) {
      const std::string kind = "cluster_kill_" + what;
      const std::string leader = current_leader(s);
      if (leader.empty()) break;
      int node = -1;
      if (what == "client_server") {
        node = cluster.node_of_client(leader);
      } else if (what == "stream_leader") {
        node = cluster.index_of(cluster.stream_leader(stream).value_or(""));
      } else {
        node = cluster.index_of(cluster.meta_leader().value_or(""));
      }
      ASSERT_GE(node, 0) << "cannot tell the node for " << what;
      const std::string also =
          std::string(cluster.meta_leader() == cluster.name(node) ? " meta_leader" : "") +
          (cluster.stream_leader(stream) == cluster.name(node) ? " stream_leader" : "") +
          (cluster.node_of_client(leader) == node ? " client_server" : "");
      fleet.fault(kind, cluster.name(node));
      fleet.harness().append("note", {{"text", cluster.name(node) + " is" + also}});
      const auto killed = std::chrono::steady_clock::now();
      cluster.kill(node);
      // Healed once a live node leads the stream.
      ASSERT_TRUE(testing::eventually(
          [&] {
            const auto l = cluster.stream_leader(stream);
            return l && cluster.index_of(*l) >= 0 && cluster.running(cluster.index_of(*l));
          },
          kClusterLimit, 100ms))
          << "no live node leads " << stream << " after " << kind;
      const auto elected =
          std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - killed);
      fleet.heal(kind, /*quorum=*/true, owed, bound);
      std::printf("[ cluster  ] %s: %s killed (%s), stream led again after %lld ms\n", kind.c_str(),
                  cluster.name(node).c_str(), also.c_str(), static_cast<long long>(elected.count()));
      const auto after = fleet.wait_for_leader(owed ? s.patience() : kClusterLimit);
      EXPECT_TRUE(!owed || after) << "no leader after " << kind;

      cluster.restart(node);
      ASSERT_TRUE(cluster.wait_until_ready(kClusterLimit)) << cluster.name(node) << " did not rejoin";
      ASSERT_TRUE(cluster.wait_until_stream_current(stream, kClusterLimit))
          << cluster.name(node) << " did not catch up on " << stream;
      fleet.heal(kind + "_restarted", /*quorum=*/true, owed, bound);
      if (owed) {
        EXPECT_TRUE(fleet.wait_for_leader(s.patience())) << "no leader after the restart of a node";
      }
    }
    // And a takeover on the R3 bucket: the leader's process dies.
    kill_leader(s, "cluster_sigkill_leader");
    finish_and_check(fleet, {ttl, bound});
  }

  ScenarioDir dir_;
};

// Above the stream-leader election time: the leader keeps its lease
// through every kill, or a follower takes over within TTL + slack.
TEST_F(ChaosClusterTest, NodeLossWithTtlAboveTheStreamLeaderElection) { run(12s, /*owed=*/true); }

// Below it: the lease may run out while the stream elects a leader, and the
// role may be leaderless for a while; never led twice.
TEST_F(ChaosClusterTest, NodeLossWithTtlBelowTheStreamLeaderElection) { run(2s, /*owed=*/false); }

}  // namespace
}  // namespace leader::chaos
