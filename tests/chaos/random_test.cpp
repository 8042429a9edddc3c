// Randomized chaos: rounds of faults drawn from a seeded generator against
// one nats-server, four candidates each behind a proxy of its own, TTL 1 s.
// The whole history so far is checked after every round, so a violation
// names the round (and the seed) that made it.
//
//   LEADER_CHAOS_ROUNDS=N  rounds to run (default 12, what CI runs)
//   LEADER_CHAOS_SEED=S    the seed (default: random); every run prints it,
//                          and the same seed replays the same faults

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <thread>

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
constexpr int kCandidates = 4;
constexpr int kDefaultRounds = 12;

std::uint64_t env_number(const char* name, std::uint64_t fallback) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  return std::strtoull(text, nullptr, 10);
}

/// A duration drawn uniformly from [lo, hi].
std::chrono::milliseconds between(std::mt19937_64& rng, std::chrono::milliseconds lo,
                                  std::chrono::milliseconds hi) {
  return std::chrono::milliseconds(std::uniform_int_distribution<std::int64_t>(lo.count(), hi.count())(rng));
}

TEST(ChaosRandom, SeededRounds) {
  if (candidate_binary().empty()) GTEST_SKIP() << "leader_chaos_candidate not built";
  const std::uint64_t seed = env_number("LEADER_CHAOS_SEED", std::random_device{}());
  const auto rounds = static_cast<int>(env_number("LEADER_CHAOS_ROUNDS", kDefaultRounds));
  std::printf(
      "[ chaos    ] ChaosRandom seed=%llu rounds=%d (replay: LEADER_CHAOS_SEED=%llu "
      "LEADER_CHAOS_ROUNDS=%d)\n",
      static_cast<unsigned long long>(seed), rounds, static_cast<unsigned long long>(seed), rounds);
  std::fflush(stdout);
  std::mt19937_64 rng(seed);

  ScenarioDir dir;
  NatsServer server;
  FleetOptions o = fleet_options(dir, kTtl);
  o.url = server.url();
  o.proxy_upstream_port = server.port();
  Fleet fleet(o);
  fleet.spawn(kCandidates);
  ASSERT_TRUE(fleet.wait_started(30s));
  Stage s{fleet, &server, kTtl, kBound};
  const testing::CheckOptions check{kTtl, kBound};

  for (int round = 1; round <= rounds; ++round) {
    const int pick = std::uniform_int_distribution<int>(0, 8)(rng);
    fleet.harness().append("note",
                           {{"text", "round " + std::to_string(round) + " pick " + std::to_string(pick)}});
    switch (pick) {
      case 0:
        kill_leader(s);
        break;
      case 1:
        kill_follower(s, rng);
        break;
      case 2:
        pause_leader(s, between(rng, kTtl * 3 / 2, kTtl * 3));
        break;
      case 3:
        pause_follower(s, between(rng, kTtl / 4, kTtl * 3), rng);
        break;
      case 4:
        pause_server(s, between(rng, kTtl / 4, kTtl * 3), "sigstop_server");
        break;
      case 5:
      case 6: {
        const auto mode = pick == 5 ? TcpProxy::Mode::drop : TcpProxy::Mode::blackhole;
        // Mostly the leader; now and then a follower (or all but one).
        const auto running = fleet.running();
        std::string target;
        if (std::uniform_int_distribution<int>(0, 3)(rng) == 0) {
          target = running[std::uniform_int_distribution<std::size_t>(0, running.size() - 1)(rng)];
        }
        partition(s, mode, between(rng, kTtl / 2, kTtl * 3), target);
        break;
      }
      case 7:
        restart_server(s, between(rng, 0ms, kTtl * 2), "restart_server_file");
        break;
      default:
        // Two in a row: a server restart, then the leader's SIGKILL.
        restart_server(s, between(rng, 0ms, kTtl), "restart_server_file");
        kill_leader(s);
        break;
    }
    EXPECT_TRUE(fleet.wait_for_leader(s.patience()))
        << "round " << round << ": no leader (seed " << seed << ")";
    // A quiet spell between rounds: renewals, fenced writes, the followers
    // settling.
    std::this_thread::sleep_for(between(rng, kTtl / 4, kTtl));
    const auto report = testing::check_history(fleet.events(), check);
    std::printf("[ round    ] %d/%d pick %d: %zu terms, %zu acts, violations %zu\n", round, rounds, pick,
                report.intervals.size(), report.acts, report.violations.size());
    std::fflush(stdout);
    ASSERT_TRUE(report.ok()) << "round " << round << " (replay: LEADER_CHAOS_SEED=" << seed
                             << " LEADER_CHAOS_ROUNDS=" << round << "):\n"
                             << report.summary();
    if (::testing::Test::HasFailure()) break;
  }
  finish_and_check(fleet, check);
}

}  // namespace
}  // namespace leader::chaos
