// RoleManager against a real nats-server: many roles over several processes
// (examples/multi-role), a killed process, a role removed at run time, and
// the thread count of 1,000 roles in one process.

#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "leader/role_manager.h"
#include "support/child_process.h"
#include "support/integration_helpers.h"
#include "support/nats_server.h"
#include "support/proc_status.h"
#include "support/wait.h"

#ifndef LEADER_MULTI_ROLE_BIN
#define LEADER_MULTI_ROLE_BIN ""
#endif

namespace leader {
namespace {

using namespace std::chrono_literals;
using testing::ChildProcess;
using testing::eventually;

/// `key=value` from an event line ("" if absent).
std::string field(const std::string& line, const std::string& key) {
  const std::string needle = " " + key + "=";
  const auto at = line.find(needle);
  if (at == std::string::npos) return "";
  const auto begin = at + needle.size();
  return line.substr(begin, line.find(' ', begin) - begin);
}

struct Transition {
  long long ns = 0;  // CLOCK_REALTIME of the line
  bool promoted = false;
  std::uint64_t term = 0;
};

/// One multi-role process and what its lines say.
struct Candidate {
  std::string id;
  std::unique_ptr<ChildProcess> process;

  /// role -> its promotions and demotions in this process, in order.
  std::map<std::string, std::vector<Transition>> transitions() {
    std::map<std::string, std::vector<Transition>> out;
    std::istringstream lines(process->output());
    std::string line;
    while (std::getline(lines, line)) {
      const std::string event = field(line, "event");
      if (event != "promoted" && event != "demoted") continue;
      Transition t;
      t.ns = std::stoll(line.substr(0, line.find(' ')));
      t.promoted = event == "promoted";
      if (t.promoted) t.term = std::stoull(field(line, "term"));
      out[field(line, "role")].push_back(t);
    }
    return out;
  }

  /// The roles whose last transition here is a promotion.
  std::set<std::string> leading() {
    std::set<std::string> out;
    for (const auto& [role, ts] : transitions()) {
      if (ts.back().promoted) out.insert(role);
    }
    return out;
  }
};

std::string role_name(int i) {
  const std::string n = std::to_string(i);
  return "role-" + std::string(n.size() < 3 ? 3 - n.size() : 0, '0') + n;  // role-000, role-001, ...
}

class RoleManagerProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    binary_ = LEADER_MULTI_ROLE_BIN;
    if (binary_.empty()) GTEST_SKIP() << "multi-role example not built (LEADER_BUILD_EXAMPLES=OFF)";
    bucket_ = testing::bucket_for_current_test(48);
  }

  Candidate& spawn(const std::string& id, int roles) {
    Candidate c;
    c.id = id;
    c.process = std::make_unique<ChildProcess>(
        std::vector<std::string>{binary_, "--nats-url", server_.url(), "--bucket", bucket_, "--id", id,
                                 "--ttl", std::to_string(kTtl.count()) + "ms", "--role-count",
                                 std::to_string(roles), "--control-stdin", "--table-interval", "0"},
        testing::InheritedFds::close);
    EXPECT_TRUE(c.process->running()) << c.process->error();
    candidates_.push_back(std::move(c));
    return candidates_.back();
  }

  /// role -> ids of the live candidates that lead it now.
  std::map<std::string, std::vector<std::string>> leaders() {
    std::map<std::string, std::vector<std::string>> out;
    for (auto& c : candidates_) {
      if (!c.process->running()) continue;
      for (const auto& role : c.leading()) out[role].push_back(c.id);
    }
    return out;
  }

  /// True when each of `roles` roles is led by exactly one live candidate.
  bool one_leader_each(int roles) {
    auto l = leaders();
    if (static_cast<int>(l.size()) != roles) return false;
    for (const auto& [role, ids] : l) {
      if (ids.size() != 1) return false;
    }
    return true;
  }

  Candidate& by_id(const std::string& id) {
    for (auto& c : candidates_) {
      if (c.id == id) return c;
    }
    throw std::logic_error("no candidate " + id);
  }

  static constexpr std::chrono::milliseconds kTtl{2000};
  std::string binary_;
  std::string bucket_;
  testing::NatsServer server_;
  std::vector<Candidate> candidates_;
};

TEST_F(RoleManagerProcessTest, HundredRolesOnThreeProcessesOneLeaderEachAndTheyMoveWhenOneIsKilled) {
  constexpr int kRoles = 100;
  for (const char* id : {"p1", "p2", "p3"}) {
    ASSERT_TRUE(spawn(id, kRoles).process->wait_for_line("event=started", 10s)) << id;
  }
  ASSERT_TRUE(eventually([&] { return one_leader_each(kRoles); }, 10s));

  // Kill the process that leads the most roles.
  std::map<std::string, int> led;
  for (const auto& [role, ids] : leaders()) led[ids.front()]++;
  std::string victim;
  for (const auto& [id, n] : led) {
    if (victim.empty() || n > led[victim]) victim = id;
  }
  const auto victim_roles = by_id(victim).leading();
  const auto old_terms = by_id(victim).transitions();
  const auto killed_at = std::chrono::steady_clock::now();
  by_id(victim).process->kill();

  // Each of its roles moves to a survivor within about a TTL.
  ASSERT_TRUE(eventually([&] { return one_leader_each(kRoles); }, kTtl + 5s));
  const auto moved_after = std::chrono::steady_clock::now() - killed_at;
  EXPECT_LT(moved_after, kTtl + 2s) << "a crashed leader's roles move after its lease, not much later";
  std::cout << "[ figures  ] " << victim_roles.size() << " roles of the killed process moved within "
            << std::chrono::duration_cast<std::chrono::milliseconds>(moved_after).count() << " ms (ttl "
            << kTtl.count() << " ms)\n";
  auto now = leaders();
  for (const auto& role : victim_roles) {
    const std::string& heir = now[role].front();
    EXPECT_NE(heir, victim) << role;
    const auto heir_ts = by_id(heir).transitions()[role];
    EXPECT_GT(heir_ts.back().term, old_terms.at(role).back().term) << role << ": terms increase";
  }
}

TEST_F(RoleManagerProcessTest, ARoleRemovedAtRunTimeIsReleasedAndTakenOverAtOnce) {
  constexpr int kRoles = 10;
  for (const char* id : {"p1", "p2"}) {
    ASSERT_TRUE(spawn(id, kRoles).process->wait_for_line("event=started", 10s)) << id;
  }
  ASSERT_TRUE(eventually([&] { return one_leader_each(kRoles); }, 10s));
  const std::string role = role_name(4);
  const std::string holder = leaders()[role].front();
  const std::string other = holder == "p1" ? "p2" : "p1";

  ASSERT_TRUE(by_id(holder).process->write_stdin("remove " + role + "\n"));
  auto removed = by_id(holder).process->wait_for_line("event=removed role=" + role, 5s);
  ASSERT_TRUE(removed);
  ASSERT_TRUE(eventually([&] { return by_id(other).leading().count(role) == 1; }, kTtl + 2s));
  const auto demoted = by_id(holder).transitions()[role].back();
  const auto promoted = by_id(other).transitions()[role].back();
  EXPECT_FALSE(demoted.promoted);
  EXPECT_GE(promoted.ns, demoted.ns) << "never two leaders";
  EXPECT_LT(promoted.ns - demoted.ns, std::chrono::nanoseconds(kTtl / 2).count())
      << "released, not left to expire";

  // The holder no longer campaigns for it; the others are untouched.
  ASSERT_TRUE(by_id(holder).process->write_stdin("status\n"));
  auto status = by_id(holder).process->wait_for_line("event=status", 5s);
  ASSERT_TRUE(status);
  EXPECT_EQ(field(*status, "roles"), std::to_string(kRoles - 1));
  EXPECT_TRUE(one_leader_each(kRoles));

  // Bad input through the same channel: a clear error, nothing changes.
  ASSERT_TRUE(by_id(holder).process->write_stdin("remove no-such-role\n"));
  EXPECT_TRUE(by_id(holder).process->wait_for_line("msg=\"no such role\"", 5s));

  // Graceful stop releases everything the holder still leads.
  by_id(holder).process->signal(SIGTERM);
  ASSERT_TRUE(by_id(holder).process->wait_for_line("event=stopped", 10s));
  EXPECT_TRUE(eventually([&] { return by_id(other).leading().size() == kRoles; }, kTtl / 2));
}

/// The names of this process's threads, for a failure message.
std::string thread_names() {
  std::string out;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream comm(task.path() / "comm");
    std::string name;
    std::getline(comm, name);
    out += name + " ";
  }
  return out;
}

TEST(RoleManagerScaleTest, ThousandRolesOnOneConnectionUseNoMoreThreadsThanTen) {
  testing::NatsServer server;
  ConnectionOptions copts;
  copts.url = server.url();
  auto connection = Connection::connect(copts);
  const int threads_before = static_cast<int>(testing::proc_status("Threads"));
  const long rss_before = testing::proc_status("VmRSS");
  Config defaults;
  defaults.bucket = testing::bucket_for_current_test(48);
  defaults.instance_id = "scale";
  defaults.ttl = 10s;
  RoleManagerOptions options;
  options.callback_threads = 2;
  RoleManager manager(connection, defaults, options);
  auto add_up_to = [&](int n) {
    for (int i = static_cast<int>(manager.roles().size()); i < n; ++i) manager.add(role_name(i), {});
    return eventually([&] { return static_cast<int>(manager.leading().size()) == n; }, 60s);
  };
  ASSERT_TRUE(add_up_to(10));
  const int threads_10 = static_cast<int>(testing::proc_status("Threads"));
  const std::string names_10 = thread_names();
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(add_up_to(1000)) << manager.leading().size() << " of 1000 leading";
  const auto all_leading = std::chrono::steady_clock::now() - start;
  const int threads_1000 = static_cast<int>(testing::proc_status("Threads"));
  const long rss = testing::proc_status("VmRSS");
  std::cout << "[ figures  ] 990 more roles all leading after "
            << std::chrono::duration_cast<std::chrono::milliseconds>(all_leading).count()
            << " ms; threads: connection only " << threads_before << ", 10 roles " << threads_10
            << ", 1000 roles " << threads_1000 << "; RSS " << rss_before << " -> " << rss << " KiB\n";
  EXPECT_EQ(threads_1000, threads_10) << "10 roles: " << names_10 << "\n1000 roles: " << thread_names();
  // What roles add at all: the callback threads, and the client's lazily
  // started helpers (nats.c's message delivery thread, the adapter's
  // deferred-task thread), each once per process or connection.
  EXPECT_LE(threads_10 - threads_before, options.callback_threads + 3);
  EXPECT_EQ(manager.status().size(), 1000u);
  manager.stop();
  EXPECT_TRUE(manager.leading().empty());
}

}  // namespace
}  // namespace leader
