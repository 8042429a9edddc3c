// The public Election on its real threads, over natsmock (real steady
// clock, no server). Waits are for conditions with generous limits, never
// fixed sleeps.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <mutex>
#include <set>
#include <thread>

#include "leader/election.h"
#include "leader/error.h"
#include "natsmock/mock_kv.h"
#include "support/mock_election.h"
#include "support/wait.h"

namespace leader {
namespace {

using namespace std::chrono_literals;
using testing::eventually_spinning;
using testing::fast_config;

class ElectionDriverTest : public testing::MockServerTest {};

TEST_F(ElectionDriverTest, PromotesAndIsLeaderInsideOnPromoteOnly) {
  std::promise<bool> in_promote;
  std::promise<bool> in_demote;
  Callbacks cb;
  Election* self = nullptr;
  cb.on_promote = [&](const Term& t) {
    EXPECT_FALSE(t.lost());
    in_promote.set_value(self->is_leader());
  };
  cb.on_demote = [&](DemoteReason r) {
    EXPECT_EQ(r, DemoteReason::stopped);
    in_demote.set_value(self->is_leader());
  };
  Election e(connection("a"), fast_config("a"), cb);
  self = &e;
  e.start();
  ASSERT_TRUE(e.wait_for_leadership(5s));
  EXPECT_TRUE(in_promote.get_future().get());
  EXPECT_EQ(e.leader_id(), "a");
  ASSERT_TRUE(e.token().has_value());
  EXPECT_EQ(e.status().state, ElectionState::leading);
  EXPECT_GT(e.status().lease_remaining, 0ms);
  e.stop();
  EXPECT_FALSE(in_demote.get_future().get());
  EXPECT_FALSE(e.is_leader());
  EXPECT_FALSE(e.token().has_value());
  EXPECT_EQ(e.status().state, ElectionState::stopped);
}

TEST_F(ElectionDriverTest, StopFromInsideOnPromoteDoesNotDeadlock) {
  std::atomic<bool> demoted{false};
  std::promise<void> stop_returned;
  Election* self = nullptr;
  Callbacks cb;
  cb.on_promote = [&](const Term&) {
    self->stop();  // must return although on_demote needs this thread
    stop_returned.set_value();
  };
  cb.on_demote = [&](DemoteReason) { demoted = true; };
  Election a(connection("a"), fast_config("a"), cb);
  self = &a;
  a.start();
  ASSERT_EQ(stop_returned.get_future().wait_for(5s), std::future_status::ready);
  ASSERT_TRUE(eventually_spinning([&] { return demoted.load(); }));
  ASSERT_TRUE(eventually_spinning([&] { return a.status().state == ElectionState::stopped; }));
  // The key was released after on_demote: a newcomer leads at once.
  Election b(connection("b"), fast_config("b"));
  b.start();
  EXPECT_TRUE(b.wait_for_leadership(300ms)) << "well before a's 600 ms lease would have run out";
}

TEST_F(ElectionDriverTest, StopFromInsideOnDemoteDoesNotDeadlock) {
  std::promise<void> done;
  Election* self = nullptr;
  Callbacks cb;
  cb.on_demote = [&](DemoteReason r) {
    EXPECT_EQ(r, DemoteReason::stepped_down);
    self->stop();
    done.set_value();
  };
  Election a(connection("a"), fast_config("a"), cb);
  self = &a;
  a.start();
  ASSERT_TRUE(a.wait_for_leadership(5s));
  a.step_down();
  ASSERT_EQ(done.get_future().wait_for(5s), std::future_status::ready);
  ASSERT_TRUE(eventually_spinning([&] { return a.status().state == ElectionState::stopped; }));
}

TEST_F(ElectionDriverTest, CallbacksRunInOrderOnOneThreadThatIsNotTheCallers) {
  std::mutex mu;
  std::vector<std::string> seen;
  std::set<std::thread::id> threads;
  auto record = [&](std::string what) {
    std::lock_guard<std::mutex> lock(mu);
    seen.push_back(std::move(what));
    threads.insert(std::this_thread::get_id());
  };
  Callbacks cb;
  cb.on_promote = [&](const Term&) { record("promote"); };
  cb.on_demote = [&](DemoteReason r) { record(std::string("demote:") + to_string(r)); };
  cb.on_leader_change = [&](const std::optional<LeaderInfo>& l) {
    record("leader:" + (l ? l->instance_id : "none"));
  };
  {
    Election a(connection("a"), fast_config("a"), cb);
    a.start();
    ASSERT_TRUE(a.wait_for_leadership(5s));
    a.step_down();
    ASSERT_TRUE(eventually_spinning([&] {
      std::lock_guard<std::mutex> lock(mu);
      return std::count(seen.begin(), seen.end(), "promote") == 2;
    }));
  }  // the destructor stops and releases
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(threads.size(), 1u);
  EXPECT_EQ(threads.count(std::this_thread::get_id()), 0u);
  std::vector<std::string> terms;
  for (const auto& s : seen) {
    if (s == "promote" || s.rfind("demote:", 0) == 0) terms.push_back(s);
  }
  EXPECT_THAT(terms, ::testing::ElementsAre("promote", "demote:stepped_down", "promote", "demote:stopped"));
  EXPECT_EQ(seen.front(), "promote");
}

TEST_F(ElectionDriverTest, ThrowingCallbacksAreContained) {
  Callbacks cb;
  cb.on_promote = [](const Term&) { throw std::runtime_error("user bug"); };
  cb.on_leader_change = [](const std::optional<LeaderInfo>&) { throw 42; };
  Election a(connection("a"), fast_config("a"), cb);
  a.start();
  ASSERT_TRUE(a.wait_for_leadership(5s));
  const auto renewals = count("a", "update");
  ASSERT_TRUE(eventually_spinning([&] { return count("a", "update") >= renewals + 3; }));
  EXPECT_TRUE(a.is_leader());
}

TEST_F(ElectionDriverTest, SlowCallbackDelaysNeitherRenewalsNorTheDeadline) {
  std::promise<void> release;
  auto released = release.get_future().share();
  Callbacks cb;
  cb.on_promote = [released](const Term&) { released.wait(); };
  Election a(connection("a"), fast_config("a"), cb);
  a.start();
  ASSERT_TRUE(a.wait_for_leadership(5s));
  const auto renewals = count("a", "update");
  // Renewals go on while on_promote is stuck.
  EXPECT_TRUE(eventually_spinning([&] { return count("a", "update") >= renewals + 5; }));
  EXPECT_TRUE(a.is_leader());
  release.set_value();
}

TEST_F(ElectionDriverTest, HungRenewalsEndLeadershipOnTime) {
  auto client = server_.client("a");
  Election a(std::make_shared<Connection>(client, 2), fast_config("a"));
  a.start();
  ASSERT_TRUE(a.wait_for_leadership(5s));
  natsmock::Fault hang;
  hang.op = "*";
  hang.hang = true;
  hang.times = 0;
  client->inject(hang);
  const auto hung_at = std::chrono::steady_clock::now();
  // ttl 600 ms - margin 50 ms after the last renewal (<= 100 ms ago).
  ASSERT_TRUE(eventually_spinning([&] { return !a.is_leader(); }, 2000ms));
  EXPECT_LT(std::chrono::steady_clock::now() - hung_at, 700ms);
  // is_leader() turned false by itself; the loop's demotion follows.
  EXPECT_TRUE(eventually_spinning([&] { return a.status().state != ElectionState::leading; }));
  client->clear_faults();
  client->release_hangs();
}

TEST_F(ElectionDriverTest, StartFailsClearlyOnBucketMismatch) {
  detail::BucketSpec other;
  other.name = "unit";
  other.ttl = 5s;
  ASSERT_TRUE(server_.create_bucket(other));
  Election a(connection("a"), fast_config("a"));
  try {
    a.start();
    FAIL() << "start() accepted a bucket with another TTL";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), make_error_code(Errc::bucket_mismatch));
    EXPECT_NE(std::string(e.what()).find("unit"), std::string::npos) << e.what();
  }
}

TEST_F(ElectionDriverTest, StartFailsClearlyWithoutJetStream) {
  server_.set_jetstream(false);
  Election a(connection("a"), fast_config("a"));
  try {
    a.start();
    FAIL() << "start() succeeded without JetStream";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), make_error_code(Errc::jetstream_unavailable));
  }
}

TEST_F(ElectionDriverTest, FollowerWaitsAndSeesTheLeader) {
  Election a(connection("a"), fast_config("a"));
  a.start();
  ASSERT_TRUE(a.wait_for_leadership(5s));
  std::promise<std::string> saw;
  Callbacks cb;
  cb.on_leader_change = [&saw](const std::optional<LeaderInfo>& l) {
    if (l) saw.set_value(l->instance_id);
  };
  Election b(connection("b"), fast_config("b"), cb);
  b.start();
  EXPECT_EQ(saw.get_future().get(), "a");
  EXPECT_FALSE(b.wait_for_leadership(200ms));
  EXPECT_EQ(b.leader_id(), "a");
  EXPECT_EQ(b.status().state, ElectionState::following);
  a.stop();
  EXPECT_TRUE(b.wait_for_leadership(300ms));
}

TEST_F(ElectionDriverTest, StopIsIdempotentAndRestartable) {
  Election a(connection("a"), fast_config("a"));
  a.stop();  // never started
  a.start();
  ASSERT_TRUE(a.wait_for_leadership(5s));
  const auto first = *a.token();
  a.stop();
  a.stop();
  a.start();
  ASSERT_TRUE(a.wait_for_leadership(5s));
  EXPECT_GT(*a.token(), first);
}

TEST_F(ElectionDriverTest, ConstructorValidatesTheConfig) {
  Config bad = fast_config("a");
  bad.role = "bad role";
  EXPECT_THROW(Election(connection("a"), bad), ConfigError);
  EXPECT_THROW(Election(nullptr, fast_config("a")), ConfigError);
}

TEST_F(ElectionDriverTest, ACallThatWaitedPastItsTimeoutForAnIoThreadIsNotSent) {
  // With every I/O thread busy, calls waited in the queue past their
  // deadline and were still sent: at 10,000 roles renewals and creates
  // landed stale, leases lapsed and two processes fought over the roles.
  auto client = server_.client("a");
  auto conn = std::make_shared<Connection>(client, /*io_threads=*/1);
  Election first(conn, fast_config("a", "r1"));
  Election second(conn, fast_config("a", "r2"));
  Election third(conn, fast_config("a", "r3"));
  struct Release {  // destroyed first: no thread stays blocked in a hang
    std::shared_ptr<natsmock::MockClient> client;
    ~Release() { client->release_hangs(); }
  } release{client};
  first.start();
  second.start();
  ASSERT_TRUE(first.wait_for_leadership(5s));
  ASSERT_TRUE(second.wait_for_leadership(5s));
  natsmock::Fault hang;
  hang.op = "create";
  hang.outcome = detail::KvOutcome::ok;
  hang.hang = true;
  client->inject(hang);
  third.start();
  ASSERT_TRUE(client->wait_for_hung_calls(1, 5s)) << "r3's create holds the only I/O thread";
  // r1's and r2's renewals (every 100 ms, 80 ms deadline) queue behind it
  // and time out there.
  std::this_thread::sleep_for(300ms);
  client->release_hangs();
  std::this_thread::sleep_for(300ms);
  std::size_t stale = 0;
  for (const auto& c : server_.calls()) {
    if (c.op == "update" && c.key != "r3" && c.outcome == detail::KvOutcome::conflict) ++stale;
  }
  EXPECT_EQ(stale, 0u) << "renewals that had timed out in the queue reached the server";
  EXPECT_TRUE(first.wait_for_leadership(1s));
  EXPECT_TRUE(second.wait_for_leadership(1s));
}

}  // namespace
}  // namespace leader
