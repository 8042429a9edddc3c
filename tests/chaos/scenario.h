#pragma once

// What the chaos scenarios share: a directory per scenario, the faults
// (each records itself in the history and waits for what it owes), and the
// final check of the history.
//
// Environment:
//   LEADER_CHAOS_KEEP=<dir>  copy every scenario's history (and the
//                            candidates' logs) there, passed or not
//   LEADER_CHAOS_ROUNDS, LEADER_CHAOS_SEED: see random_test.cpp

#include <chrono>
#include <random>
#include <string>

#include "fleet.h"
#include "history_checker.h"
#include "nats_server.h"

namespace leader::chaos {

/// The lease of the single-server scenarios, and the bound within which a
/// leader is owed after a heal there.
inline constexpr std::chrono::milliseconds kServerTtl{1000};
inline constexpr std::chrono::milliseconds kServerBound = kServerTtl + std::chrono::seconds(1);

/// The candidate binary (LEADER_CHAOS_CANDIDATE_BIN, set by CMake).
std::string candidate_binary();

/// A fresh directory for one scenario's files under $TMPDIR (or /tmp),
/// named after the running test. Removed when the test passed; kept, with
/// its path printed, when it failed.
class ScenarioDir {
 public:
  ScenarioDir();
  ~ScenarioDir();
  ScenarioDir(const ScenarioDir&) = delete;
  ScenarioDir& operator=(const ScenarioDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

/// What a fault needs: the fleet, the server (single-server scenarios), the
/// lease and the recovery bound owed after a heal.
struct Stage {
  Fleet& fleet;
  testing::NatsServer* server = nullptr;
  std::chrono::milliseconds ttl{1000};
  std::chrono::milliseconds bound{2000};
  /// How long a leader has led before a fault aimed at it (or at anything)
  /// strikes: long enough for renewals and fenced writes to happen.
  std::chrono::milliseconds settle{500};

  /// How long the harness itself waits for what the checker owes within
  /// `bound`: longer, so that a late leader is judged by the checker (with
  /// the history) rather than cut short here.
  std::chrono::milliseconds patience() const { return bound + ttl * 2 + std::chrono::seconds(5); }
};

/// Waits for a leader that has led for `settle` (patience()); ADD_FAILUREs
/// and returns "" if none.
std::string current_leader(Stage& s);

/// SIGKILL of the leader (fault and heal at once: the quorum is up); waits for
/// the next leader, then spawns a replacement candidate. `kind` names the
/// fault in the history.
void kill_leader(Stage& s, const std::string& kind = "sigkill_leader");
/// SIGKILL of a follower, then a replacement.
void kill_follower(Stage& s, std::mt19937_64& rng);
/// SIGSTOP of the leader for `pause` (beyond its TTL: a zombie); waits for the
/// next leader and its first fenced write, then SIGCONTs it and checks that
/// its zombie write was rejected (when the new leader had written first) and
/// that validate_token() of its old term said no.
void pause_leader(Stage& s, std::chrono::milliseconds pause, const std::string& kind = "sigstop_leader");
/// SIGSTOP of a follower for `pause`, then SIGCONT.
void pause_follower(Stage& s, std::chrono::milliseconds pause, std::mt19937_64& rng);
/// SIGSTOP of nats-server for `pause`, then SIGCONT (the heal).
void pause_server(Stage& s, std::chrono::milliseconds pause, const std::string& kind);
/// A partition of `target` ("" : the leader) through its proxy in `mode`
/// (drop or blackhole) for `hold`; heal 1 at once (the others keep a
/// quorum), heal 2 when it ends.
void partition(Stage& s, testing::TcpProxy::Mode mode, std::chrono::milliseconds hold,
               std::string target = "");
/// nats-server SIGKILLed, down for `down`, started again (the heal).
void restart_server(Stage& s, std::chrono::milliseconds down, const std::string& kind);

/// Checks the fleet's history, prints the summary (and copies the files with
/// LEADER_CHAOS_KEEP); the caller asserts on the report.
testing::CheckReport check_fleet(Fleet& fleet, const testing::CheckOptions& options,
                                 const std::string& title);

/// Stops the fleet (Fleet::finish), checks the history, and fails the test
/// on any violation.
testing::CheckReport finish_and_check(Fleet& fleet, const testing::CheckOptions& options);

/// A fleet option set for `dir`, a bucket named after the test, `ttl`.
FleetOptions fleet_options(const ScenarioDir& dir, std::chrono::milliseconds ttl);

}  // namespace leader::chaos
