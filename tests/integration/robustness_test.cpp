// Disconnect grace and the Observer against a real nats-server (started by
// the fixture on a free loopback port, killed by PID in teardown).

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <thread>

#include "leader/leader.h"
#include "nats_server.h"
#include "wait.h"

namespace leader {
namespace {

using namespace std::chrono_literals;
using testing::eventually;

constexpr auto kWaitPoll = 5ms;  // how often eventually() checks its condition

std::string bucket_name() {
  std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
  return "rb_" + name.substr(0, 40);
}

Config config_for(const std::string& id) {
  Config c;
  c.bucket = bucket_name();
  c.role = "role";
  c.instance_id = id;
  c.ttl = 6s;
  c.heartbeat_interval = 1s;
  return c;
}

std::shared_ptr<Connection> connect_to(const testing::NatsServer& server) {
  ConnectionOptions o;
  o.url = server.url();
  o.reconnect_wait = 50ms;
  return Connection::connect(o);
}

struct Recorder {
  std::mutex mu;
  std::vector<std::string> events;
  Callbacks callbacks() {
    Callbacks cb;
    cb.on_promote = [this](const Term& t) { add("promote:" + std::to_string(t.token())); };
    cb.on_demote = [this](DemoteReason r) { add(std::string("demote:") + to_string(r)); };
    return cb;
  }
  void add(std::string e) {
    std::lock_guard<std::mutex> lock(mu);
    events.push_back(std::move(e));
  }
  std::vector<std::string> snapshot() {
    std::lock_guard<std::mutex> lock(mu);
    return events;
  }
};

TEST(RobustnessTest, ServerRestartInsideTheGraceKeepsTheLeader) {
  testing::NatsServer server;
  Recorder rec;
  Election a(connect_to(server), config_for("a"), rec.callbacks());
  a.start();
  ASSERT_TRUE(a.wait_for_leadership(5s));
  const auto token = a.fencing_token();
  server.kill();
  ASSERT_TRUE(eventually([&] { return a.status().connection != ConnectionState::connected; }, 5s, kWaitPoll));
  EXPECT_TRUE(a.is_leader()) << "within the grace (here: the lease) the role is kept";
  server.restart();
  ASSERT_TRUE(
      eventually([&] { return a.status().connection == ConnectionState::connected; }, 10s, kWaitPoll));
  // Verified on reconnect, renewed, and still the same term.
  ASSERT_TRUE(eventually([&] { return a.validate_token(); }, 5s, kWaitPoll));
  EXPECT_EQ(a.fencing_token(), token);
  EXPECT_THAT(rec.snapshot(), ::testing::ElementsAre("promote:" + std::to_string(token->revision)));
}

TEST(RobustnessTest, ServerDownPastTheGraceDemotesAndLeadsAgainAfter) {
  testing::NatsServer server;
  Recorder rec;
  Config c = config_for("a");
  c.disconnect_grace = 500ms;
  Election a(connect_to(server), c, rec.callbacks());
  a.start();
  ASSERT_TRUE(a.wait_for_leadership(5s));
  const auto token = *a.fencing_token();
  const auto killed = std::chrono::steady_clock::now();
  server.kill();
  ASSERT_TRUE(eventually([&] { return !a.is_leader(); }, 5s, kWaitPoll));
  const auto took = std::chrono::steady_clock::now() - killed;
  EXPECT_LT(took, 3s) << "the grace (500 ms) ended it, not the 6 s lease";
  ASSERT_TRUE(eventually([&] { return rec.snapshot().size() >= 2; }, 5s, kWaitPoll));
  EXPECT_EQ(rec.snapshot()[1], "demote:disconnected");
  server.restart();
  ASSERT_TRUE(a.wait_for_leadership(20s)) << "campaigns again once reconnected (after its old lease ran out)";
  EXPECT_GT(*a.fencing_token(), token);
}

TEST(RobustnessTest, ObserverSeesAHandoverAndAnExpiry) {
  testing::NatsServer server;
  auto connection = connect_to(server);
  std::mutex mu;
  std::vector<std::string> seen;
  Callbacks cb;
  cb.on_leader_change = [&](const std::optional<LeaderInfo>& l) {
    std::lock_guard<std::mutex> lock(mu);
    seen.push_back(l ? l->instance_id : "none");
  };
  Config oc = config_for("observer");
  oc.ttl = 2s;
  oc.heartbeat_interval = 400ms;
  Observer observer(connection, oc, cb);
  observer.start();
  Config ac = oc;
  ac.instance_id = "a";
  Config bc = oc;
  bc.instance_id = "b";
  Election a(connection, ac);
  Election b(connection, bc);
  a.start();
  ASSERT_TRUE(a.wait_for_leadership(5s));
  b.start();
  ASSERT_TRUE(
      eventually([&] { return observer.leader() && observer.leader()->instance_id == "a"; }, 5s, kWaitPoll));
  EXPECT_GT(observer.leader()->lease_remaining, 0ms);
  a.stop();
  ASSERT_TRUE(
      eventually([&] { return observer.leader() && observer.leader()->instance_id == "b"; }, 5s, kWaitPoll));
  const auto stopped = std::chrono::steady_clock::now();
  b.stop({/*release=*/false, 5s});
  ASSERT_TRUE(eventually([&] { return !observer.leader(); }, 10s, kWaitPoll));
  const auto after = std::chrono::steady_clock::now() - stopped;
  EXPECT_LT(after, 2s + 1500ms)
      << "the expiry (no watch event) is noticed about a TTL after the last renewal";
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_THAT(seen, ::testing::IsSupersetOf({"a", "b", "none"}));
  EXPECT_EQ(seen.back(), "none");
}

TEST(RobustnessTest, PriorityHandoverOnARealServer) {
  testing::NatsServer server;
  auto connection = connect_to(server);
  Config ac = config_for("a");
  ac.ttl = 3s;
  ac.heartbeat_interval = 300ms;
  ac.priority_handover = true;
  Config bc = ac;
  bc.instance_id = "b";
  bc.priority = 10;
  Recorder ra;
  Election a(connection, ac, ra.callbacks());
  a.start();
  ASSERT_TRUE(a.wait_for_leadership(5s));
  const auto first = *a.fencing_token();
  Election b(connection, bc);
  const auto started = std::chrono::steady_clock::now();
  b.start();
  ASSERT_TRUE(b.wait_for_leadership(5s));
  EXPECT_LT(std::chrono::steady_clock::now() - started, 2s) << "at a's next renewal, not after its lease";
  EXPECT_FALSE(a.is_leader());
  EXPECT_GT(*b.fencing_token(), first);
  ASSERT_TRUE(eventually([&] { return ra.snapshot().size() >= 2; }, 5s, kWaitPoll));
  EXPECT_EQ(ra.snapshot()[1], "demote:handover");
}

}  // namespace
}  // namespace leader
