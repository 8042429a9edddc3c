// tools/leaderctl against a real nats-server (started by the fixture on a
// free loopback port, killed by its PID), with an in-process Election as
// the holder. Every command, and every kind of bad input, by exit code.

#include <sys/wait.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "leader/leader.h"
#include "support/child_process.h"
#include "support/integration_helpers.h"
#include "support/nats_server.h"
#include "support/wait.h"

#ifndef LEADERCTL_BIN
#define LEADERCTL_BIN ""
#endif

namespace {

using namespace std::chrono_literals;
using leader::testing::ChildProcess;
using leader::testing::eventually;
using leader::testing::InheritedFds;
using leader::testing::NatsServer;

struct Result {
  int code = -1;  // exit code; -1 if it did not exit normally in time
  std::string out;
};

class LeaderctlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    binary_ = LEADERCTL_BIN;
    if (binary_.empty()) GTEST_SKIP() << "leaderctl not built (LEADER_BUILD_TOOLS=OFF)";
    bucket_ = leader::testing::bucket_for_current_test(48);
  }

  void TearDown() override {
    if (election_) election_->stop();
    election_.reset();
  }

  NatsServer& server() {
    if (!server_) server_ = std::make_unique<NatsServer>();
    return *server_;
  }

  std::vector<std::string> argv(const std::vector<std::string>& args, bool with_server = true) {
    std::vector<std::string> v{binary_};
    if (with_server) {
      v.insert(v.end(), {"--nats-url", server().url(), "--bucket", bucket_});
    }
    v.insert(v.end(), args.begin(), args.end());
    return v;
  }

  /// Runs leaderctl to completion (none of our sockets inherited).
  Result run(const std::vector<std::string>& args, bool with_server = true) {
    ChildProcess child(argv(args, with_server), InheritedFds::close);
    Result r;
    if (!child.running()) {
      r.out = child.error();
      return r;
    }
    std::optional<int> status;
    const auto end = std::chrono::steady_clock::now() + 20s;
    while (!(status = child.wait_exit(10ms)) && std::chrono::steady_clock::now() < end) child.output(1ms);
    r.out = child.output(50ms);
    if (status && WIFEXITED(*status)) r.code = WEXITSTATUS(*status);
    return r;
  }

  /// An in-process leader of `role` in the test's bucket.
  void elect(const std::string& role = "scheduler", const std::string& id = "node-a") {
    leader::ConnectionOptions co;
    co.url = server().url();
    co.reconnect_wait = 50ms;
    leader::Config cfg;
    cfg.bucket = bucket_;
    cfg.role = role;
    cfg.instance_id = id;
    cfg.ttl = 2s;
    cfg.heartbeat_interval = 200ms;
    leader::Callbacks cb;
    cb.on_demote = [this](leader::DemoteReason) { demotions_++; };
    election_ = std::make_unique<leader::Election>(leader::Connection::connect(co), cfg, cb);
    election_->start();
    ASSERT_TRUE(election_->wait_for_leadership(5s));
  }

  std::string token() const { return election_->fencing_token()->to_string(); }

  std::string binary_;
  std::string bucket_;
  std::unique_ptr<NatsServer> server_;
  std::unique_ptr<leader::Election> election_;
  std::atomic<int> demotions_{0};
};

TEST_F(LeaderctlTest, ListShowsHolderTermTokenAgeAndTtl) {
  elect();
  const Result human = run({"list"});
  ASSERT_EQ(human.code, 0) << human.out;
  EXPECT_NE(human.out.find("ROLE"), std::string::npos) << human.out;
  EXPECT_NE(human.out.find("scheduler"), std::string::npos) << human.out;
  EXPECT_NE(human.out.find("node-a"), std::string::npos) << human.out;
  EXPECT_NE(human.out.find(token()), std::string::npos) << human.out;

  const Result js = run({"list", "--json"});
  ASSERT_EQ(js.code, 0) << js.out;
  const auto doc = nlohmann::json::parse(js.out);
  EXPECT_EQ(doc["bucket"], bucket_);
  EXPECT_EQ(doc["ttl_ms"], 2000);
  EXPECT_EQ(doc["epoch"].get<std::uint64_t>(), election_->fencing_token()->epoch);
  ASSERT_EQ(doc["roles"].size(), 1u) << js.out;
  const auto& r = doc["roles"][0];
  EXPECT_EQ(r["role"], "scheduler");
  EXPECT_EQ(r["leader"], true);
  EXPECT_EQ(r["holder"], "node-a");
  EXPECT_EQ(r["term"].get<std::uint64_t>(), *election_->token());
  EXPECT_EQ(r["token"], token());
  EXPECT_GE(r["age_ms"].get<std::int64_t>(), 0);
  EXPECT_LE(r["age_ms"].get<std::int64_t>(), 2000);
  EXPECT_GT(r["ttl_left_ms"].get<std::int64_t>(), 0);
  EXPECT_LE(r["ttl_left_ms"].get<std::int64_t>(), 2000);

  // A released role is listed without a leader.
  election_->stop();
  const Result after = run({"list", "--json"});
  ASSERT_EQ(after.code, 0) << after.out;
  const auto doc2 = nlohmann::json::parse(after.out);
  ASSERT_EQ(doc2["roles"].size(), 1u) << after.out;
  EXPECT_EQ(doc2["roles"][0]["leader"], false);
  EXPECT_TRUE(doc2["roles"][0]["holder"].is_null());
  const Result human2 = run({"list"});
  EXPECT_NE(human2.out.find("(none)"), std::string::npos) << human2.out;
}

TEST_F(LeaderctlTest, WatchPrintsTheLeaderThenNoLeaderOnStop) {
  elect();
  ChildProcess child(argv({"watch", "scheduler", "--count", "2", "--json"}), InheritedFds::close);
  ASSERT_TRUE(child.running()) << child.error();
  const auto first = child.wait_for_line("\"event\":\"leader\"", 10s);
  ASSERT_TRUE(first.has_value()) << child.output();
  const auto e1 = nlohmann::json::parse(*first);
  EXPECT_EQ(e1["holder"], "node-a");
  EXPECT_EQ(e1["token"], token());
  EXPECT_FALSE(e1["time"].get<std::string>().empty());

  election_->stop();
  const auto second = child.wait_for_line("\"event\":\"no_leader\"", 10s);
  ASSERT_TRUE(second.has_value()) << child.output();
  const auto status = child.wait_exit(5s);
  ASSERT_TRUE(status.has_value()) << "watch --count 2 did not exit";
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0);
}

TEST_F(LeaderctlTest, WatchExitsZeroOnSigtermAndReportsExpiry) {
  elect();
  ChildProcess child(argv({"watch", "--all"}), InheritedFds::close);
  ASSERT_TRUE(child.running()) << child.error();
  ASSERT_TRUE(child.wait_for_line("scheduler: leader node-a", 10s).has_value()) << child.output();
  // A holder that stops renewing without releasing: the server sends no
  // event when its key expires; watch times the TTL itself.
  server().pause();
  ASSERT_TRUE(child.wait_for_line("expired?", 10s).has_value()) << child.output();
  server().resume();
  child.signal(SIGTERM);
  const auto status = child.wait_exit(5s);
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0);
}

TEST_F(LeaderctlTest, ResignNeedsForce) {
  elect();
  const Result r = run({"resign", "scheduler"});
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_TRUE(election_->is_leader());
}

TEST_F(LeaderctlTest, ResignForceDeletesTheKeyAndTheLeaderNotices) {
  elect();
  const auto old_token = *election_->fencing_token();
  const Result r = run({"resign", "scheduler", "--force", "--json"});
  ASSERT_EQ(r.code, 0) << r.out;
  const auto doc = nlohmann::json::parse(r.out);
  EXPECT_EQ(doc["resigned"], true);
  EXPECT_EQ(doc["holder"], "node-a");
  EXPECT_EQ(doc["token"], old_token.to_string());
  // The holder finds out at its next renewal (heartbeat 200 ms).
  EXPECT_TRUE(eventually([&] { return demotions_.load() > 0; }, 2s, 5ms));
  // It may campaign again and win, but only with a new, higher term.
  const auto now = election_->fencing_token();
  if (now) {
    EXPECT_GT(*now, old_token);
  }
  // Nobody leads a deleted role until someone creates it again.
  election_->stop();
  EXPECT_EQ(run({"resign", "scheduler", "--force"}).code, 5);
}

TEST_F(LeaderctlTest, ResignOfATermThatEndedIsAConflictAndDeletesNothing) {
  elect();
  const auto token = *election_->fencing_token();
  const std::string stale = std::to_string(token.revision + 1000);
  const Result r = run({"resign", "scheduler", "--force", "--term", stale, "--json"});
  EXPECT_EQ(r.code, 7) << r.out;
  EXPECT_EQ(nlohmann::json::parse(r.out)["exit_code"], 7);
  EXPECT_NE(r.out.find("nothing deleted"), std::string::npos) << r.out;
  EXPECT_EQ(demotions_.load(), 0);
  EXPECT_EQ(election_->fencing_token(), token) << "the key is untouched";
  for (const char* bad : {"0", "-3", "x", "12x", ""}) {
    EXPECT_EQ(run({"resign", "scheduler", "--force", "--term", bad}).code, 2) << bad;
  }
  EXPECT_EQ(run({"list", "--term", "3"}).code, 2) << "--term is for resign";
  // The right term resigns it.
  const Result ok = run({"resign", "scheduler", "--force", "--term", std::to_string(token.revision)});
  EXPECT_EQ(ok.code, 0) << ok.out;
  EXPECT_TRUE(eventually([&] { return demotions_.load() > 0; }, 2s, 5ms));
}

TEST_F(LeaderctlTest, ValidateAcceptsOnlyTheCurrentTerm) {
  elect();
  const auto t = *election_->fencing_token();
  EXPECT_EQ(run({"validate", "scheduler", t.to_string()}).code, 0);
  EXPECT_EQ(run({"validate", "scheduler", std::to_string(t.revision)}).code, 0);
  const Result wrong = run({"validate", "scheduler", std::to_string(t.revision + 1000), "--json"});
  EXPECT_EQ(wrong.code, 6) << wrong.out;
  EXPECT_EQ(nlohmann::json::parse(wrong.out)["valid"], false);
  const leader::FencingToken other_epoch{t.epoch + 1, t.revision};
  EXPECT_EQ(run({"validate", "scheduler", other_epoch.to_string()}).code, 6);
  EXPECT_EQ(run({"validate", "nosuchrole", t.to_string()}).code, 5);
  EXPECT_EQ(run({"validate", "scheduler", "not-a-token"}).code, 2);
}

TEST_F(LeaderctlTest, MissingBucketIsExitCode4) {
  server();
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"list"}, {"watch", "x"}, {"resign", "x", "--force"}, {"validate", "x", "1"}}) {
    EXPECT_EQ(run(args).code, 4) << args[0];
  }
}

TEST_F(LeaderctlTest, NoServerIsExitCode3) {
  const std::string url = "nats://127.0.0.1:" + std::to_string(leader::testing::free_port());
  const Result r = run({"--nats-url", url, "list", "--json"}, /*with_server=*/false);
  EXPECT_EQ(r.code, 3) << r.out;
  EXPECT_EQ(nlohmann::json::parse(r.out)["exit_code"], 3);
  EXPECT_EQ(run({"--nats-url", url, "validate", "x", "1"}, false).code, 3);
}

TEST_F(LeaderctlTest, SecretsInTheUrlAreNeverPrinted) {
  const std::string url = "nats://alice:s3cr3t-pw@127.0.0.1:" + std::to_string(leader::testing::free_port());
  const Result r = run({"--nats-url", url, "list", "--json"}, /*with_server=*/false);
  EXPECT_EQ(r.code, 3);
  EXPECT_EQ(r.out.find("s3cr3t-pw"), std::string::npos) << r.out;
}

TEST_F(LeaderctlTest, BadUsageIsExitCode2) {
  const std::vector<std::vector<std::string>> bad = {
      {},
      {"frobnicate"},
      {"list", "--no-such-flag"},
      {"list", "extra"},
      {"watch"},
      {"watch", "a", "--all"},
      {"watch", "a", "--count", "zero"},
      {"resign"},
      {"validate", "scheduler"},
      {"validate", "scheduler", "1.2.3"},
      {"list", "--bucket"},
      {"list", "--bucket", "bad.name"},
      {"validate", "bad role", "1"},
  };
  for (const auto& args : bad) {
    std::string joined;
    for (const auto& a : args) joined += a + " ";
    EXPECT_EQ(run(args, /*with_server=*/false).code, 2) << joined;
  }
  const Result help = run({"--help"}, false);
  EXPECT_EQ(help.code, 0);
  EXPECT_NE(help.out.find("Exit codes"), std::string::npos);
  const Result resign_help = run({"resign", "--help"}, false);
  EXPECT_EQ(resign_help.code, 0);
  EXPECT_NE(resign_help.out.find("--force"), std::string::npos);
}

}  // namespace
