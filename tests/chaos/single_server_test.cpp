// Chaos scenarios against one real nats-server (started on a free loopback
// port, killed by PID in teardown): candidates in processes of their own
// (leader_chaos_candidate), faults injected by the harness, and the whole
// history checked at the end (history_checker.h). TTL 1 s; the recovery
// bound owed after each heal is TTL + 1 s (TTL + 4 s with 50 candidates on
// the shared 2-core machine).

#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <string>

#include <gtest/gtest.h>

#include "fleet.h"
#include "nats_server.h"
#include "scenario.h"

namespace leader::chaos {
namespace {

using namespace std::chrono_literals;
using testing::NatsServer;
using testing::TcpProxy;

constexpr std::chrono::milliseconds kTtl = kServerTtl;
constexpr std::chrono::milliseconds kBound = kServerBound;
constexpr auto kStartLimit = 30s;

class ChaosTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (candidate_binary().empty()) GTEST_SKIP() << "leader_chaos_candidate not built";
  }

  /// `count` candidates on `server`, started and campaigning.
  std::unique_ptr<Fleet> start_fleet(NatsServer& server, int count, bool proxied = false,
                                     const std::string& storage = "file") {
    FleetOptions o = fleet_options(dir_, kTtl);
    o.url = server.url();
    if (proxied) o.proxy_upstream_port = server.port();
    o.storage = storage;
    auto fleet = std::make_unique<Fleet>(o);
    fleet->spawn(count);
    EXPECT_TRUE(fleet->wait_started(kStartLimit)) << "candidates did not start";
    return fleet;
  }

  ScenarioDir dir_;
};

TEST_F(ChaosTest, SigkillOfTheLeader) {
  NatsServer server;
  auto fleet = start_fleet(server, 3);
  Stage s{*fleet, &server, kTtl, kBound};
  for (int i = 0; i < 5; ++i) kill_leader(s);
  auto report = finish_and_check(*fleet, {kTtl, kBound});
  EXPECT_EQ(report.by_kind["sigkill_leader"].takeover_ms.size(), 5u);
}

TEST_F(ChaosTest, SigstopOfTheLeaderPastItsTtl) {
  NatsServer server;
  auto fleet = start_fleet(server, 3);
  Stage s{*fleet, &server, kTtl, kBound};
  for (int i = 0; i < 2; ++i) pause_leader(s, kTtl * 5 / 2);
  auto report = finish_and_check(*fleet, {kTtl, kBound});
  EXPECT_EQ(report.by_kind["sigstop_leader"].takeover_ms.size(), 2u);
  EXPECT_GE(report.zombies, 2u);
  EXPECT_GE(report.validations_refused, 2u);
}

TEST_F(ChaosTest, SigstopOfTheServer) {
  NatsServer server;
  auto fleet = start_fleet(server, 3);
  Stage s{*fleet, &server, kTtl, kBound};
  for (int i = 0; i < 2; ++i) {
    pause_server(s, kTtl / 2, "sigstop_server_half_ttl");
    pause_server(s, kTtl * 3, "sigstop_server_3ttl");
  }
  finish_and_check(*fleet, {kTtl, kBound});
}

TEST_F(ChaosTest, PartitionOfTheLeader) {
  NatsServer server;
  auto fleet = start_fleet(server, 3, /*proxied=*/true);
  Stage s{*fleet, &server, kTtl, kBound};
  for (int i = 0; i < 2; ++i) {
    partition(s, TcpProxy::Mode::drop, kTtl * 3);
    // Long enough for the client's pings (TTL / 4 apart, 2 outstanding) to
    // give up on the silent connection and reconnect through the proxy.
    partition(s, TcpProxy::Mode::blackhole, kTtl * 3);
  }
  auto report = finish_and_check(*fleet, {kTtl, kBound});
  EXPECT_EQ(report.by_kind["partition_drop"].takeover_ms.size(), 2u);
  EXPECT_EQ(report.by_kind["partition_blackhole"].takeover_ms.size(), 2u);
}

TEST_F(ChaosTest, ServerRestartWithFileStorage) {
  NatsServer server;
  auto fleet = start_fleet(server, 3);
  Stage s{*fleet, &server, kTtl, kBound};
  // At once (inside the disconnect grace), and down for half and twice the TTL.
  for (const auto down : {0ms, kTtl / 2, kTtl * 2}) restart_server(s, down, "restart_server_file");
  finish_and_check(*fleet, {kTtl, kBound});
}

TEST_F(ChaosTest, ServerRestartWithMemoryStorage) {
  NatsServer server;
  auto fleet = start_fleet(server, 3, /*proxied=*/false, "memory");
  Stage s{*fleet, &server, kTtl, kBound};
  const std::int64_t first_fault = testing::monotonic_ns();
  for (const auto down : {0ms, kTtl / 2, kTtl * 2}) restart_server(s, down, "restart_server_memory");
  auto report = finish_and_check(*fleet, {kTtl, kBound});
  // A restart loses a memory bucket: what did the candidates hear of it?
  std::map<std::string, int> heard;
  for (const auto& e : fleet->events()) {
    if (e.at_ns < first_fault || e.source == "harness") continue;
    if (e.event == "error") ++heard["error code=" + e.get("code") + ": " + e.get("msg").substr(0, 120)];
    if (e.event == "demote") ++heard["demote reason=" + e.get("reason")];
  }
  for (const auto& [what, n] : heard) std::printf("[ memory   ] %3dx %s\n", n, what.c_str());
}

TEST_F(ChaosTest, ThunderingHerd) {
  NatsServer server;
  FleetOptions o = fleet_options(dir_, kTtl);
  o.url = server.url();
  Fleet fleet(o);
  // In batches, so that 50 processes connecting at once on two cores do not
  // push a start past its start_timeout.
  for (int batch = 0; batch < 5; ++batch) {
    fleet.spawn(10);
    ASSERT_TRUE(fleet.wait_started(60s)) << "the herd did not start";
  }
  const auto bound = kTtl + 4s;
  Stage s{fleet, &server, kTtl, bound};
  for (int i = 0; i < 5; ++i) kill_leader(s, "herd_sigkill_leader");
  auto report = finish_and_check(fleet, {kTtl, bound});
  EXPECT_EQ(report.by_kind["herd_sigkill_leader"].takeover_ms.size(), 5u);
}

}  // namespace
}  // namespace leader::chaos
