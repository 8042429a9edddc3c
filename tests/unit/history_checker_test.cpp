// The chaos history checker (tests/support/history_checker.h) on made-up
// histories: one that keeps every rule, then one per kind of violation, and
// the history file's writer and reader.

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "history.h"
#include "history_checker.h"

namespace leader::testing {
namespace {

using namespace std::chrono_literals;

constexpr std::int64_t kMs = 1000000;

/// A history written by hand, times in ms.
class Story {
 public:
  Story& add(std::int64_t ms, const std::string& source, const std::string& event,
             std::map<std::string, std::string> fields = {}) {
    HistoryEvent e;
    e.at_ns = ms * kMs;
    e.source = source;
    e.event = event;
    e.fields = std::move(fields);
    if (source != "harness") e.fields.emplace("role", "r");
    e.line_no = events_.size() + 1;
    events_.push_back(std::move(e));
    return *this;
  }
  Story& promote(std::int64_t ms, const std::string& who, const std::string& token,
                 std::int64_t deadline_ms) {
    return add(ms, who, "promote", {{"token", token}, {"deadline", std::to_string(deadline_ms * kMs)}});
  }
  Story& lease(std::int64_t ms, const std::string& who, const std::string& token, std::int64_t deadline_ms) {
    return add(ms, who, "lease", {{"token", token}, {"deadline", std::to_string(deadline_ms * kMs)}});
  }
  Story& act(std::int64_t ms, const std::string& who, const std::string& token, bool accepted = true) {
    return add(ms, who, "act", {{"token", token}, {"accepted", accepted ? "1" : "0"}});
  }
  Story& demote(std::int64_t ms, const std::string& who, const std::string& token,
                const std::string& reason = "stopped") {
    return add(ms, who, "demote", {{"token", token}, {"reason", reason}});
  }
  Story& heal(std::int64_t ms, bool expect = true, std::int64_t bound_ms = 2000) {
    return add(ms, "harness", "heal",
               {{"kind", "k"},
                {"quorum", "1"},
                {"expect", expect ? "1" : "0"},
                {"bound_ms", std::to_string(bound_ms)}});
  }
  Story& finish(std::int64_t ms) { return add(ms, "harness", "finish"); }

  CheckReport check() const { return check_history(events_, CheckOptions{1000ms, 0ms}); }

 private:
  std::vector<HistoryEvent> events_;
};

std::vector<std::string> kinds(const CheckReport& r) {
  std::vector<std::string> out;
  for (const auto& v : r.violations) out.push_back(v.kind);
  return out;
}

TEST(HistoryCheckerTest, AHistoryThatKeepsEveryRulePasses) {
  Story s;
  s.promote(0, "c1", "7.1", 950)
      .act(10, "c1", "7.1")
      .lease(200, "c1", "7.1", 1150)
      .act(300, "c1", "7.1")
      .add(500, "harness", "fault", {{"kind", "sigkill_leader"}, {"target", "c1"}})
      .add(501, "harness", "kill", {{"instance", "c1"}})
      .heal(501)
      .promote(1500, "c2", "7.2", 2450)
      .act(1510, "c2", "7.2")
      .finish(2000)
      .demote(2001, "c2", "7.2")
      .add(2002, "c2", "exit");
  const CheckReport r = s.check();
  EXPECT_TRUE(r.ok()) << r.summary();
  ASSERT_EQ(r.intervals.size(), 2u);
  EXPECT_EQ(r.intervals[0].end_ns, 501 * kMs) << "ended by the death of its process";
  EXPECT_EQ(r.intervals[0].ended_by, "death");
  EXPECT_EQ(r.intervals[1].ended_by, "demote:stopped");
  EXPECT_EQ(r.acts, 3u);
  EXPECT_THAT(r.by_kind.at("sigkill_leader").takeover_ms, ::testing::ElementsAre(1000.0));
  EXPECT_THAT(r.by_kind.at("k").heal_to_leader_ms, ::testing::ElementsAre(999.0));
}

TEST(HistoryCheckerTest, OverlappingIntervalsAreFound) {
  Story s;
  s.promote(0, "c1", "7.1", 950)
      .promote(500, "c2", "7.2", 1450)
      .demote(2000, "c1", "7.1")
      .demote(2000, "c2", "7.2");
  const CheckReport r = s.check();
  EXPECT_THAT(kinds(r), ::testing::ElementsAre("overlap"));
  EXPECT_EQ(r.count("overlap"), 1u);
}

TEST(HistoryCheckerTest, AnIntervalEndsAtItsLastRecordedDeadline) {
  // A paused leader demotes only when it resumes, long after its lease.
  Story s;
  s.promote(0, "c1", "7.1", 950).lease(200, "c1", "7.1", 1150).promote(1200, "c2", "7.2", 2150);
  s.demote(3000, "c1", "7.1", "lease_expired").finish(3100).demote(3101, "c2", "7.2");
  const CheckReport r = s.check();
  EXPECT_TRUE(r.ok()) << r.summary();
  EXPECT_EQ(r.intervals[0].end_ns, 1150 * kMs);
  EXPECT_EQ(r.intervals[0].ended_by, "deadline");

  // A renewal moved the deadline past the other's promotion: two leaders.
  Story t;
  t.promote(0, "c1", "7.1", 950).lease(900, "c1", "7.1", 1850).promote(1200, "c2", "7.2", 2150);
  t.demote(3000, "c1", "7.1", "lost").demote(3000, "c2", "7.2");
  EXPECT_THAT(kinds(t.check()), ::testing::ElementsAre("overlap"));
}

TEST(HistoryCheckerTest, WithoutARecordedDeadlineTheDemotionEndsTheInterval) {
  Story s;
  s.add(0, "c1", "promote", {{"token", "7.1"}})
      .promote(500, "c2", "7.2", 1450)
      .demote(600, "c1", "7.1", "lost");
  s.demote(700, "c2", "7.2");
  EXPECT_THAT(kinds(s.check()), ::testing::ElementsAre("overlap"));
}

TEST(HistoryCheckerTest, TokensMustStrictlyIncrease) {
  Story same;
  same.promote(0, "c1", "7.5", 950).demote(100, "c1", "7.5").promote(200, "c2", "7.5", 1150);
  same.demote(300, "c2", "7.5");
  EXPECT_THAT(kinds(same.check()), ::testing::ElementsAre("token_order"));

  Story lower;
  lower.promote(0, "c1", "7.5", 950).demote(100, "c1", "7.5").promote(200, "c2", "7.4", 1150);
  lower.demote(300, "c2", "7.4");
  EXPECT_THAT(kinds(lower.check()), ::testing::ElementsAre("token_order"));

  // A re-created bucket: a later epoch with a lower revision is higher.
  Story epoch;
  epoch.promote(0, "c1", "7.5", 950).demote(100, "c1", "7.5").promote(200, "c2", "8.1", 1150);
  epoch.demote(300, "c2", "8.1");
  EXPECT_TRUE(epoch.check().ok()) << epoch.check().summary();
}

TEST(HistoryCheckerTest, EveryIntervalMustEndOnceTheRunFinished) {
  Story running;
  running.promote(0, "c1", "7.1", 950).lease(200, "c1", "7.1", 1150);
  EXPECT_TRUE(running.check().ok()) << "a history still being written may have a leader";

  Story finished = running;
  finished.finish(1000);
  EXPECT_THAT(kinds(finished.check()), ::testing::ElementsAre("unended"));

  Story exited = running;
  exited.finish(1000).add(1001, "harness", "exit", {{"instance", "c1"}, {"status", "9"}});
  EXPECT_TRUE(exited.check().ok()) << "the death of its process ends it";
}

TEST(HistoryCheckerTest, ActsMustLieInsideTheirOwnTerm) {
  Story before;
  before.act(0, "c1", "7.1").promote(10, "c1", "7.1", 950).demote(100, "c1", "7.1");
  EXPECT_THAT(kinds(before.check()), ::testing::ElementsAre("act_outside_term"));

  Story after;
  after.promote(0, "c1", "7.1", 950).demote(100, "c1", "7.1").act(101, "c1", "7.1");
  EXPECT_THAT(kinds(after.check()), ::testing::ElementsAre("act_outside_term"));

  Story past_deadline;
  past_deadline.promote(0, "c1", "7.1", 950).act(960, "c1", "7.1").demote(1000, "c1", "7.1", "lease_expired");
  EXPECT_THAT(kinds(past_deadline.check()), ::testing::ElementsAre("act_outside_term"));

  Story other_term;
  other_term.promote(0, "c1", "7.1", 950).act(10, "c1", "7.9").demote(100, "c1", "7.1");
  EXPECT_THAT(kinds(other_term.check()), ::testing::ElementsAre("act_outside_term"));
}

TEST(HistoryCheckerTest, AnActTheFenceRejectedIsAViolation) {
  Story s;
  s.promote(0, "c1", "7.1", 950).act(10, "c1", "7.1", /*accepted=*/false).demote(100, "c1", "7.1");
  EXPECT_THAT(kinds(s.check()), ::testing::ElementsAre("act_rejected"));
}

TEST(HistoryCheckerTest, AZombieWriteMustBeRejectedOnceANewerTermWrote) {
  auto story = [](std::int64_t zombie_at, bool accepted) {
    Story s;
    s.promote(0, "c1", "7.1", 950)
        .act(10, "c1", "7.1")
        .promote(1000, "c2", "7.2", 1950)
        .act(1010, "c2", "7.2");
    s.add(zombie_at, "c1", "resume")
        .add(zombie_at, "c1", "zombie", {{"token", "7.1"}, {"accepted", accepted ? "1" : "0"}})
        .demote(zombie_at + 1, "c1", "7.1", "lease_expired")
        .demote(3000, "c2", "7.2");
    return s.check();
  };
  const CheckReport rejected = story(2000, false);
  EXPECT_TRUE(rejected.ok()) << rejected.summary();
  EXPECT_EQ(rejected.zombies, 1u);
  EXPECT_EQ(rejected.zombies_rejected, 1u);
  EXPECT_THAT(kinds(story(2000, true)), ::testing::ElementsAre("zombie_accepted"));
  // Before the new term's first write the fence cannot know better.
  EXPECT_TRUE(story(1005, true).ok());
}

TEST(HistoryCheckerTest, AValidationAfterANewerTermBeganMustFail) {
  auto story = [](bool valid) {
    Story s;
    s.promote(0, "c1", "7.1", 950).promote(1000, "c2", "7.2", 1950);
    s.add(2000, "c1", "validate", {{"token", "7.1"}, {"valid", valid ? "1" : "0"}});
    s.demote(2001, "c1", "7.1", "lease_expired").demote(3000, "c2", "7.2");
    return s.check();
  };
  EXPECT_TRUE(story(false).ok());
  EXPECT_EQ(story(false).validations_refused, 1u);
  EXPECT_THAT(kinds(story(true)), ::testing::ElementsAre("stale_validation"));
}

TEST(HistoryCheckerTest, ALeaderIsOwedWithinTheBoundOfAHeal) {
  Story late;
  late.heal(1000).promote(3500, "c1", "7.1", 4450).finish(4000).demote(4001, "c1", "7.1");
  EXPECT_THAT(kinds(late.check()), ::testing::ElementsAre("no_leader"));

  Story in_time;
  in_time.heal(1000).promote(2500, "c1", "7.1", 3450).finish(3000).demote(3001, "c1", "7.1");
  const CheckReport r = in_time.check();
  EXPECT_TRUE(r.ok()) << r.summary();
  EXPECT_THAT(r.by_kind.at("k").heal_to_leader_ms, ::testing::ElementsAre(1500.0));

  Story not_owed;
  not_owed.heal(1000, /*expect=*/false)
      .promote(3500, "c1", "7.1", 4450)
      .finish(4000)
      .demote(4001, "c1", "7.1");
  const CheckReport n = not_owed.check();
  EXPECT_TRUE(n.ok()) << n.summary();
  EXPECT_THAT(n.by_kind.at("k").heal_to_leader_ms, ::testing::ElementsAre(2500.0)) << "measured all the same";

  Story pending;
  pending.heal(1000).add(1500, "c1", "leader", {{"who", "none"}});
  EXPECT_TRUE(pending.check().ok()) << "the window is still open where the history ends";
}

TEST(HistoryCheckerTest, ALeaderFromBeforeTheHealCountsOnlyIfItLastsThroughTheWindow) {
  Story lasting;
  lasting.promote(0, "c1", "7.1", 950).lease(400, "c1", "7.1", 1350).heal(500);
  for (int t = 600; t <= 3000; t += 200) lasting.lease(t, "c1", "7.1", t + 950);
  lasting.finish(3100).demote(3101, "c1", "7.1");
  const CheckReport r = lasting.check();
  EXPECT_TRUE(r.ok()) << r.summary();
  EXPECT_THAT(r.by_kind.at("k").heal_to_leader_ms, ::testing::ElementsAre(0.0));

  // It believed for a moment after the heal, then found its key gone.
  Story fleeting;
  fleeting.promote(0, "c1", "7.1", 950).heal(500).demote(600, "c1", "7.1", "lost").finish(3000);
  EXPECT_THAT(kinds(fleeting.check()), ::testing::ElementsAre("no_leader"));

  // The next fault closes the window early: lasting until then is enough.
  Story cut;
  cut.promote(0, "c1", "7.1", 950).lease(400, "c1", "7.1", 1350).heal(500);
  cut.add(1000, "harness", "fault", {{"kind", "sigkill_leader"}, {"target", "c1"}});
  cut.add(1001, "harness", "kill", {{"instance", "c1"}}).finish(1002);
  EXPECT_TRUE(cut.check().ok()) << cut.check().summary();
}

TEST(HistoryCheckerTest, PromotionsAndDemotionsMustAlternate) {
  Story s;
  s.demote(0, "c1", "7.1");
  EXPECT_THAT(kinds(s.check()), ::testing::ElementsAre("sequence"));

  Story twice;
  twice.promote(0, "c1", "7.1", 950).promote(100, "c1", "7.2", 1050).demote(200, "c1", "7.2");
  EXPECT_THAT(kinds(twice.check()), ::testing::ElementsAre("sequence"));
}

TEST(HistoryCheckerTest, QuantileIsTheNearestRank) {
  EXPECT_EQ(quantile({}, 0.5), 0);
  EXPECT_EQ(quantile({3, 1, 2}, 0.5), 2);
  EXPECT_EQ(quantile({4, 1, 3, 2}, 0.5), 2);
  EXPECT_EQ(quantile({4, 1, 3, 2}, 1.0), 4);
  EXPECT_EQ(quantile({5}, 0.0), 5);
}

class HistoryFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = (std::filesystem::temp_directory_path() /
             ("leader-history-" + std::to_string(::getpid()) + "-" +
              ::testing::UnitTest::GetInstance()->current_test_info()->name()))
                .string();
    std::filesystem::remove(path_);
  }
  void TearDown() override { std::filesystem::remove(path_); }
  std::string path_;
};

TEST_F(HistoryFileTest, WrittenEventsReadBackWithTheirFields) {
  HistoryWriter w(path_, "c 1");
  const std::int64_t at = w.append("error", {{"code", "10"}, {"msg", "a=b 100% \"x\"\nnext"}});
  const auto events = read_history(path_);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].at_ns, at);
  EXPECT_EQ(events[0].source, "c 1");
  EXPECT_EQ(events[0].event, "error");
  EXPECT_EQ(events[0].number("code"), 10);
  EXPECT_EQ(events[0].get("msg"), "a=b 100% \"x\"\nnext");
  EXPECT_EQ(events[0].line_no, 1u);
  EXPECT_EQ(parse_history_line(events[0].to_line())->get("msg"), events[0].get("msg"));
}

TEST_F(HistoryFileTest, ConcurrentWritersNeverInterleaveAndTheReaderFollows) {
  constexpr int kPerThread = 2000;
  HistoryReader reader(path_);
  std::size_t seen = 0;
  {
    HistoryWriter a(path_, "a");
    HistoryWriter b(path_, "b");
    const std::string filler(300, 'x');
    std::thread ta([&] {
      for (int i = 0; i < kPerThread; ++i) a.append("act", {{"i", std::to_string(i)}, {"pad", filler}});
    });
    std::thread tb([&] {
      for (int i = 0; i < kPerThread; ++i) b.append("act", {{"i", std::to_string(i)}, {"pad", filler}});
    });
    seen += reader.poll().size();  // while they write: only whole lines
    ta.join();
    tb.join();
  }
  const auto rest = reader.poll();
  seen += rest.size();
  EXPECT_EQ(seen, 2u * kPerThread);
  const auto all = read_history(path_);
  ASSERT_EQ(all.size(), 2u * kPerThread);
  std::map<std::string, int> next;
  for (const auto& e : all) {
    ASSERT_NE(e.event, "malformed") << e.get("text");
    EXPECT_EQ(e.number("i"), next[e.source]++) << "each writer's lines in its order";
    EXPECT_EQ(e.get("pad").size(), 300u);
  }
}

TEST_F(HistoryFileTest, AMalformedLineIsReportedByTheChecker) {
  {
    std::ofstream out(path_);
    out << "12 c1 promote role=r token=7.1\n"
        << "garbage\n"
        << "13 c1 demote role=r token=7.1 reason=stopped\n"
        << "14 c1 partial";  // no newline yet: not read
  }
  const auto events = read_history(path_);
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[1].event, "malformed");
  EXPECT_EQ(events[1].get("text"), "garbage");
  EXPECT_THAT(kinds(check_history(events)), ::testing::ElementsAre("malformed"));
}

}  // namespace
}  // namespace leader::testing
