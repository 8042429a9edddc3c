// Regression: a follower whose create was in flight when the delete marker
// arrived, and whose create then conflicted with the older put, armed no
// timer and never took over (seen as a 15 s stall in an integration test).
// Driven event by event, without the simulator, to pin the interleaving.

#include <gtest/gtest.h>

#include "core.h"
#include "natsmock/fake_clock.h"
#include "sim.h"

namespace leader::testing {
namespace {

std::optional<detail::KvCall> find_call(std::vector<detail::Action>& actions, detail::OpKind kind) {
  for (auto& a : actions) {
    if (auto* c = std::get_if<detail::KvCall>(&a); c && c->kind == kind) return *c;
  }
  return std::nullopt;
}

detail::KvEntry put(std::uint64_t rev) {
  detail::Record r;
  r.holder = "other";
  r.nonce = "n1";
  detail::KvEntry e;
  e.key = "role";
  e.value = detail::encode_record(r);
  e.revision = rev;
  return e;
}

TEST(CoreLivenessTest, StaleConflictAfterADeleteStillLeadsToATakeover) {
  natsmock::FakeClock clock;
  detail::ElectionCore core(sim_config("b"), 7, nullptr);
  core.set_epoch(1);
  core.start(clock.now());
  core.on_tick(clock.now());  // the first create goes out on the first tick
  auto actions = core.take_actions();
  auto first = find_call(actions, detail::OpKind::create);
  ASSERT_TRUE(first);
  // The first create conflicts with a live holder at revision 5.
  detail::KvResult held;
  held.outcome = detail::KvOutcome::conflict;
  held.entry = put(5);
  core.on_kv_result(first->id, held, clock.now());
  actions = core.take_actions();
  ASSERT_EQ(core.state(), ElectionState::following);
  // At the holder's expected expiry the follower tries again...
  clock.set(*core.next_wakeup());
  core.on_tick(clock.now());
  actions = core.take_actions();
  auto second = find_call(actions, detail::OpKind::create);
  ASSERT_TRUE(second);
  // ...meanwhile the holder releases: the delete marker arrives first,
  detail::WatchEvent del;
  del.entry.key = "role";
  del.entry.revision = 6;
  del.entry.op = detail::EntryOp::del;
  core.on_watch(del, clock.now());
  core.take_actions();
  // ...then the create's answer: a conflict carrying the older put.
  core.on_kv_result(second->id, held, clock.now());
  core.take_actions();
  // It must not be stuck: a timer is armed and leads to a create over the marker.
  ASSERT_TRUE(core.next_wakeup().has_value());
  for (int i = 0; i < 5 && core.term() == 0; ++i) {
    clock.set(std::max(clock.now(), *core.next_wakeup()));
    core.on_tick(clock.now());
    actions = core.take_actions();
    if (auto c = find_call(actions, detail::OpKind::create)) {
      EXPECT_EQ(c->expected, std::optional<std::uint64_t>(6)) << "one round trip over the marker";
      detail::KvResult won;
      won.outcome = detail::KvOutcome::ok;
      won.revision = 7;
      core.on_kv_result(c->id, won, clock.now());
      core.take_actions();
    }
  }
  EXPECT_EQ(core.term(), 7u);
}

}  // namespace
}  // namespace leader::testing
