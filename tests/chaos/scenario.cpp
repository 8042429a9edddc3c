#include "scenario.h"

#include <stdlib.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <system_error>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "integration_helpers.h"

#ifndef LEADER_CHAOS_CANDIDATE_BIN
#define LEADER_CHAOS_CANDIDATE_BIN ""
#endif

namespace leader::chaos {
namespace {

using namespace std::chrono_literals;
using testing::monotonic_ns;

std::string test_name() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return info == nullptr ? "chaos" : std::string(info->test_suite_name()) + "." + info->name();
}

/// A running candidate other than the leader, picked by `rng`; "" if none.
std::string some_follower(Stage& s, std::mt19937_64& rng) {
  const std::string leader = current_leader(s);
  std::vector<std::string> followers;
  for (const auto& id : s.fleet.running()) {
    if (id != leader) followers.push_back(id);
  }
  if (followers.empty()) return "";
  return followers[std::uniform_int_distribution<std::size_t>(0, followers.size() - 1)(rng)];
}

void sleep_until_ns(std::int64_t at_ns) {
  const std::int64_t left = at_ns - monotonic_ns();
  if (left > 0) std::this_thread::sleep_for(std::chrono::nanoseconds(left));
}

std::int64_t ns(std::chrono::milliseconds d) { return std::chrono::nanoseconds(d).count(); }

}  // namespace

std::string candidate_binary() { return LEADER_CHAOS_CANDIDATE_BIN; }

ScenarioDir::ScenarioDir() {
  std::string base = "/tmp";
  if (const char* tmp = std::getenv("TMPDIR"); tmp != nullptr && *tmp != '\0') base = tmp;
  std::string tmpl = base + "/leader-chaos-" + testing::bucket_safe(test_name(), 48) + "-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) throw std::system_error(errno, std::generic_category(), "mkdtemp");
  path_ = buf.data();
}

ScenarioDir::~ScenarioDir() {
  if (::testing::Test::HasFailure()) {
    std::printf("[ chaos    ] kept %s (history, fence, candidate logs)\n", path_.c_str());
    return;
  }
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

FleetOptions fleet_options(const ScenarioDir& dir, std::chrono::milliseconds ttl) {
  FleetOptions o;
  o.candidate_binary = candidate_binary();
  o.dir = dir.path();
  o.bucket = testing::bucket_for_current_test(48);
  o.ttl = ttl;
  return o;
}

std::string current_leader(Stage& s) {
  const auto give_up = std::chrono::steady_clock::now() + s.patience();
  while (std::chrono::steady_clock::now() < give_up) {
    const auto leader = s.fleet.wait_for_leader(s.patience());
    const auto started = leader ? s.fleet.term_start(*leader) : std::nullopt;
    if (!started) break;
    sleep_until_ns(*started + ns(s.settle));
    if (s.fleet.leader() == leader && s.fleet.term_start(*leader) == started) return *leader;
  }
  ADD_FAILURE() << "no leader that led for " << s.settle.count() << " ms within " << s.patience().count()
                << " ms (" << s.fleet.history_path() << ")";
  return "";
}

void kill_leader(Stage& s, const std::string& kind) {
  const std::string leader = current_leader(s);
  if (leader.empty()) return;
  s.fleet.fault(kind, leader);
  const std::int64_t at = monotonic_ns();
  s.fleet.kill(leader);
  s.fleet.heal(kind, /*quorum=*/true, /*expect=*/true, s.bound);
  EXPECT_TRUE(s.fleet.wait_for_leader(s.patience(), at, leader)) << "nobody took over from " << leader;
  s.fleet.spawn();
  EXPECT_TRUE(s.fleet.wait_started(s.patience())) << "the replacement of " << leader << " did not start";
}

void kill_follower(Stage& s, std::mt19937_64& rng) {
  const std::string follower = some_follower(s, rng);
  if (follower.empty()) return;
  s.fleet.fault("sigkill_follower", follower);
  s.fleet.kill(follower);
  s.fleet.heal("sigkill_follower", /*quorum=*/true, /*expect=*/true, s.bound);
  s.fleet.spawn();
  EXPECT_TRUE(s.fleet.wait_started(s.patience())) << "the replacement of " << follower << " did not start";
}

void pause_leader(Stage& s, std::chrono::milliseconds pause, const std::string& kind) {
  const std::string leader = current_leader(s);
  if (leader.empty()) return;
  s.fleet.fault(kind, leader);
  const std::int64_t at = monotonic_ns();
  s.fleet.pause(leader);
  // To the others it is as good as dead: a leader is owed.
  s.fleet.heal(kind, /*quorum=*/true, /*expect=*/true, s.bound);
  const auto next = s.fleet.wait_for_leader(s.patience(), at, leader);
  EXPECT_TRUE(next) << "nobody took over from the paused " << leader;
  bool next_wrote = false;
  if (next) {
    // The new term's first fenced write, so the zombie's must be rejected.
    // It can wait on the fence's lock if the pause caught the zombie holding
    // it: then the zombie's in-flight write may land first, legitimately.
    next_wrote = s.fleet.wait_for_event(*next, "act", at, s.ttl * 3, "accepted", "1").has_value();
  }
  sleep_until_ns(at + ns(pause));
  const std::int64_t resumed = monotonic_ns();
  s.fleet.resume(leader);
  const auto zombie = s.fleet.wait_for_event(leader, "zombie", resumed, s.patience());
  const auto validate = s.fleet.wait_for_event(leader, "validate", resumed, s.patience());
  ASSERT_TRUE(zombie) << leader << " recorded no zombie write after SIGCONT";
  ASSERT_TRUE(validate) << leader << " recorded no validation after SIGCONT";
  if (next_wrote) {
    EXPECT_EQ(zombie->get("accepted"), "0") << zombie->to_line();
  }
  EXPECT_EQ(validate->get("valid"), "0") << validate->to_line();
}

void pause_follower(Stage& s, std::chrono::milliseconds pause, std::mt19937_64& rng) {
  const std::string follower = some_follower(s, rng);
  if (follower.empty()) return;
  s.fleet.fault("sigstop_follower", follower);
  s.fleet.pause(follower);
  s.fleet.heal("sigstop_follower", /*quorum=*/true, /*expect=*/true, s.bound);
  std::this_thread::sleep_for(pause);
  s.fleet.resume(follower);
}

void pause_server(Stage& s, std::chrono::milliseconds pause, const std::string& kind) {
  if (current_leader(s).empty()) return;
  s.fleet.fault(kind, "server");
  s.server->pause();
  std::this_thread::sleep_for(pause);
  s.server->resume();
  s.fleet.heal(kind, /*quorum=*/true, /*expect=*/true, s.bound);
  EXPECT_TRUE(s.fleet.wait_for_leader(s.patience())) << "no leader after the server resumed";
}

void partition(Stage& s, testing::TcpProxy::Mode mode, std::chrono::milliseconds hold, std::string target) {
  const std::string kind = std::string("partition_") + testing::to_string(mode);
  const std::string leader = current_leader(s);
  if (target.empty()) target = leader;
  if (target.empty()) return;
  s.fleet.fault(kind, target);
  const std::int64_t at = monotonic_ns();
  s.fleet.proxy(target).set_mode(mode);
  // The others keep their connections: a leader is owed meanwhile.
  s.fleet.heal(kind, /*quorum=*/true, /*expect=*/true, s.bound);
  if (target == leader) {
    EXPECT_TRUE(s.fleet.wait_for_leader(s.patience(), at, target))
        << "nobody took over from the cut-off " << target;
  }
  sleep_until_ns(at + ns(hold));
  s.fleet.proxy(target).set_mode(testing::TcpProxy::Mode::pass);
  s.fleet.heal(kind + "_healed", /*quorum=*/true, /*expect=*/true, s.bound);
  EXPECT_TRUE(s.fleet.wait_for_leader(s.patience())) << "no leader after the partition healed";
}

void restart_server(Stage& s, std::chrono::milliseconds down, const std::string& kind) {
  if (current_leader(s).empty()) return;
  s.fleet.fault(kind, "server");
  s.server->kill();
  std::this_thread::sleep_for(down);
  s.server->restart();
  s.fleet.heal(kind, /*quorum=*/true, /*expect=*/true, s.bound);
  EXPECT_TRUE(s.fleet.wait_for_leader(s.patience())) << "no leader after the server restarted";
}

testing::CheckReport check_fleet(Fleet& fleet, const testing::CheckOptions& options,
                                 const std::string& title) {
  testing::CheckReport report = testing::check_history(fleet.events(), options);
  std::printf("[ chaos    ] %s: %s", title.c_str(), report.summary().c_str());
  std::fflush(stdout);
  if (const char* keep = std::getenv("LEADER_CHAOS_KEEP"); keep != nullptr && *keep != '\0') {
    std::error_code ec;
    const std::filesystem::path to = std::filesystem::path(keep) / test_name();
    std::filesystem::create_directories(to, ec);
    std::filesystem::copy(
        std::filesystem::path(fleet.history_path()).parent_path(), to,
        std::filesystem::copy_options::recursive | std::filesystem::copy_options::overwrite_existing, ec);
  }
  return report;
}

testing::CheckReport finish_and_check(Fleet& fleet, const testing::CheckOptions& options) {
  fleet.finish(std::chrono::seconds(20));
  testing::CheckReport report = check_fleet(fleet, options, test_name());
  EXPECT_TRUE(report.ok()) << report.summary();
  EXPECT_EQ(report.count("overlap"), 0u);
  return report;
}

}  // namespace leader::chaos
