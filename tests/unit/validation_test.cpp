// validate_token() and Observer on their real threads over natsmock (real
// steady clock). Waits are for conditions with generous limits.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <future>
#include <mutex>
#include <thread>

#include "leader/election.h"
#include "leader/observer.h"
#include "natsmock/mock_kv.h"
#include "record.h"
#include "sim.h"
#include "support/mock_election.h"
#include "support/wait.h"

namespace leader {
namespace {

using namespace std::chrono_literals;
using testing::eventually_spinning;
using testing::fast_config;

class ValidationTest : public testing::MockServerTest {};

TEST_F(ValidationTest, ValidatesWithACompareAndSwapThatStaleReadsCannotFool) {
  auto client = server_.client("a");
  Election a(std::make_shared<Connection>(client, 2), fast_config("a"));
  a.start();
  ASSERT_TRUE(a.wait_for_leadership(5s));
  // Reads from this client now return the key's previous message, as a
  // lagging replica would: validation must not depend on them.
  client->set_stale_reads(true);
  const auto before = count("a", "update");
  EXPECT_TRUE(a.validate_token());
  EXPECT_GT(count("a", "update"), before) << "validated by a renewal, not a read";
  ASSERT_TRUE(a.fencing_token().has_value());
  EXPECT_TRUE(a.validate_token(*a.fencing_token()));

  // The key is taken away; the stale read would still show our record.
  client->set_watch_silent(true);
  server_.put_raw("unit", "role", testing::foreign_record());
  EXPECT_FALSE(a.validate_token());
  EXPECT_TRUE(eventually_spinning([&] { return !a.is_leader(); })) << "a failed validation demotes";
}

TEST_F(ValidationTest, CachedModeSkipsTheRoundTripWithinTheStaleness) {
  Election a(std::make_shared<Connection>(server_.client("a"), 2), fast_config("a"));
  a.start();
  ASSERT_TRUE(a.wait_for_leadership(5s));
  ASSERT_TRUE(a.validate_token());  // a fresh confirmation
  const auto before = count("a", "update");
  for (int i = 0; i < 100; ++i) EXPECT_TRUE(a.validate_token(10s));
  EXPECT_LE(count("a", "update"), before + 1) << "at most a scheduled renewal, no validation writes";
}

TEST_F(ValidationTest, WrongTokenOrNotLeadingIsInvalid) {
  Election a(std::make_shared<Connection>(server_.client("a"), 2), fast_config("a"));
  EXPECT_FALSE(a.validate_token());
  a.start();
  ASSERT_TRUE(a.wait_for_leadership(5s));
  FencingToken wrong = *a.fencing_token();
  wrong.revision += 1;
  EXPECT_FALSE(a.validate_token(wrong));
  EXPECT_FALSE(a.validate_token(FencingToken{}));
  a.stop();
  EXPECT_FALSE(a.validate_token());
}

TEST_F(ValidationTest, ObserverFollowsAHandoverAndAnExpiry) {
  std::mutex mu;
  std::vector<std::string> seen;
  Callbacks cb;
  cb.on_leader_change = [&](const std::optional<LeaderInfo>& l) {
    std::lock_guard<std::mutex> lock(mu);
    seen.push_back(l ? l->instance_id : "none");
  };
  cb.on_promote = [](const Term&) { FAIL() << "an observer never promotes"; };
  Config oc = fast_config("");
  Observer observer(std::make_shared<Connection>(server_.client("o"), 2), oc, cb);
  observer.start();
  auto a = std::make_unique<Election>(std::make_shared<Connection>(server_.client("a"), 2), fast_config("a"));
  Election b(std::make_shared<Connection>(server_.client("b"), 2), fast_config("b"));
  a->start();
  ASSERT_TRUE(a->wait_for_leadership(5s));
  b.start();
  ASSERT_TRUE(
      eventually_spinning([&] { return observer.leader() && observer.leader()->instance_id == "a"; }));
  EXPECT_GT(observer.leader()->lease_remaining, 0ms);
  EXPECT_LE(observer.leader()->lease_remaining, 600ms);
  a->stop();  // graceful: b takes over
  ASSERT_TRUE(
      eventually_spinning([&] { return observer.leader() && observer.leader()->instance_id == "b"; }));
  b.stop({/*release=*/false, 5s});  // b goes away without releasing: the key expires
  ASSERT_TRUE(eventually_spinning([&] { return !observer.leader().has_value(); }, 3s)) << "expiry noticed";
  EXPECT_EQ(count("o", "create"), 0u);
  // Callbacks run on their own thread, just after the state changed.
  EXPECT_TRUE(eventually_spinning([&] {
    std::lock_guard<std::mutex> lock(mu);
    return !seen.empty() && seen.back() == "none";
  }));
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_THAT(seen, ::testing::IsSupersetOf({"a", "b", "none"}));
  EXPECT_EQ(seen.back(), "none");
}

}  // namespace
}  // namespace leader
