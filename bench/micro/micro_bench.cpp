// The micro costs of the library: is_leader() and status() of an election
// (leading and following, over natsmock on the real clock), the record
// codec, and one step of the core state machine (events in, actions out, no
// threads). The clocks are measured too: is_leader() reads the steady clock
// on every call, which sets its floor.

#include <benchmark/benchmark.h>
#include <time.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "core.h"
#include "leader/leader.h"
#include "leader/role_manager.h"
#include "natsmock/mock_kv.h"
#include "record.h"

namespace {

using namespace std::chrono_literals;
using leader::detail::TimePoint;

/// A long lease: nothing expires or changes hands while a benchmark runs.
leader::Config bench_config(const std::string& id) {
  leader::Config c;
  c.bucket = "micro";
  c.role = "role";
  c.instance_id = id;
  c.ttl = 60s;
  return c;
}

/// Two elections over natsmock: "a" leads, "b" follows it.
class Pair {
 public:
  Pair() : server_(leader::detail::RealClock::instance()) {
    leader_ = std::make_unique<leader::Election>(connection("a"), bench_config("a"));
    leader_->start();
    if (!leader_->wait_for_leadership(5s)) throw std::runtime_error("micro: a did not lead");
    follower_ = std::make_unique<leader::Election>(connection("b"), bench_config("b"));
    follower_->start();
    const auto give_up = std::chrono::steady_clock::now() + 5s;
    while (follower_->status().state != leader::ElectionState::following) {
      if (std::chrono::steady_clock::now() > give_up) throw std::runtime_error("micro: b did not follow");
      std::this_thread::sleep_for(1ms);
    }
  }
  leader::Election& get(bool leading) { return leading ? *leader_ : *follower_; }

 private:
  std::shared_ptr<leader::Connection> connection(const std::string& name) {
    return std::make_shared<leader::Connection>(server_.client(name), 1);
  }
  leader::natsmock::MockServer server_;
  std::unique_ptr<leader::Election> leader_;
  std::unique_ptr<leader::Election> follower_;
};

void BM_IsLeader(benchmark::State& state, bool leading) {
  Pair pair;
  leader::Election& election = pair.get(leading);
  for (auto _ : state) benchmark::DoNotOptimize(election.is_leader());
  if (election.is_leader() != leading) state.SkipWithError("the election changed hands");
}
BENCHMARK_CAPTURE(BM_IsLeader, leading, true);
BENCHMARK_CAPTURE(BM_IsLeader, following, false);

void BM_TermLost(benchmark::State& state) {
  leader::natsmock::MockServer server(leader::detail::RealClock::instance());
  std::optional<leader::Term> term;
  std::mutex mu;
  leader::Callbacks callbacks;
  callbacks.on_promote = [&](const leader::Term& t) {
    std::lock_guard<std::mutex> lock(mu);
    term = t;
  };
  leader::Election election(std::make_shared<leader::Connection>(server.client("a"), 1), bench_config("a"),
                            callbacks);
  election.start();
  const auto give_up = std::chrono::steady_clock::now() + 5s;
  while (true) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (term) break;
    }
    if (std::chrono::steady_clock::now() > give_up) {
      state.SkipWithError("no promotion");
      return;
    }
    std::this_thread::sleep_for(1ms);
  }
  const leader::Term t = *term;
  for (auto _ : state) benchmark::DoNotOptimize(t.lost());
}
BENCHMARK(BM_TermLost);

void BM_Status(benchmark::State& state, bool leading) {
  Pair pair;
  leader::Election& election = pair.get(leading);
  for (auto _ : state) benchmark::DoNotOptimize(election.status());
}
BENCHMARK_CAPTURE(BM_Status, leading, true);
BENCHMARK_CAPTURE(BM_Status, following, false);

/// RoleManager::is_leader(role): a lookup by name among state.range(0) roles.
void BM_RoleManagerIsLeader(benchmark::State& state) {
  leader::natsmock::MockServer server(leader::detail::RealClock::instance());
  leader::RoleManager manager(std::make_shared<leader::Connection>(server.client("a"), 2), bench_config("a"));
  const auto roles = static_cast<int>(state.range(0));
  for (int i = 0; i < roles; ++i) manager.add("role-" + std::to_string(i), {});
  const std::string probe = "role-" + std::to_string(roles / 2);
  const auto give_up = std::chrono::steady_clock::now() + 10s;
  while (!manager.is_leader(probe)) {
    if (std::chrono::steady_clock::now() > give_up) {
      state.SkipWithError("the role was not led");
      return;
    }
    std::this_thread::sleep_for(1ms);
  }
  for (auto _ : state) benchmark::DoNotOptimize(manager.is_leader(probe));
}
BENCHMARK(BM_RoleManagerIsLeader)->Arg(1000);

void BM_SteadyClockNow(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(std::chrono::steady_clock::now());
}
BENCHMARK(BM_SteadyClockNow);

/// The coarse clock (a jiffy's resolution) for comparison: what a cheaper
/// is_leader() could read.
void BM_ClockMonotonicCoarse(benchmark::State& state) {
  timespec ts{};
  for (auto _ : state) {
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    benchmark::DoNotOptimize(ts);
  }
}
BENCHMARK(BM_ClockMonotonicCoarse);

leader::detail::Record sample_record() {
  leader::detail::Record r;
  r.holder = "scheduler-7f9c-node-a";
  r.nonce = "3f1c2b9a8d7e6f50a1b2c3d4e5f60718";
  r.term = 1795305738;
  r.priority = 10;
  r.metadata = {{"zone", "eu-west-1a"}, {"version", "1.4.2"}};
  r.acquired_at = "2024-05-01T12:00:00.000Z";
  r.renewed_at = "2024-05-01T12:00:02.000Z";
  return r;
}

void BM_RecordEncode(benchmark::State& state) {
  const leader::detail::Record r = sample_record();
  for (auto _ : state) benchmark::DoNotOptimize(leader::detail::encode_record(r));
}
BENCHMARK(BM_RecordEncode);

void BM_RecordDecode(benchmark::State& state) {
  const std::string value = leader::detail::encode_record(sample_record());
  for (auto _ : state) benchmark::DoNotOptimize(leader::detail::decode_record(value));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * value.size()));
}
BENCHMARK(BM_RecordDecode);

void BM_RecordDecodeGarbage(benchmark::State& state) {
  const std::string value(512, '{');
  for (auto _ : state) benchmark::DoNotOptimize(leader::detail::decode_record(value));
}
BENCHMARK(BM_RecordDecodeGarbage);

/// Drives a core without threads: every KV call is answered at once (writes
/// succeed with the next revision; a create by `foreign` conflicts with it),
/// every callback returns at once.
class CoreDriver {
 public:
  explicit CoreDriver(const std::string& id)
      : core_(bench_config(id).resolved(), /*seed=*/1, /*logger=*/nullptr) {
    core_.set_epoch(1);
  }

  leader::detail::ElectionCore& core() { return core_; }
  /// Starts the core and answers what that sends; true when it then is in
  /// `want`.
  bool start(TimePoint now, leader::ElectionState want) {
    core_.start(now);
    core_.on_tick(now);
    settle(now);
    return core_.state() == want;
  }
  /// Answers the pending actions, and those they cause.
  void settle(TimePoint now) {
    for (auto actions = core_.take_actions(); !actions.empty(); actions = core_.take_actions()) {
      for (auto& action : actions) answer(action, now);
    }
  }
  /// A put of the key by another holder, as its watch delivers it.
  leader::detail::WatchEvent foreign_put() {
    leader::detail::WatchEvent e;
    e.entry.key = "role";
    e.entry.value = foreign_value_;
    e.entry.revision = ++revision_;
    return e;
  }
  void set_foreign_holder(bool foreign) { foreign_ = foreign; }

 private:
  void answer(leader::detail::Action& action, TimePoint now) {
    using leader::detail::HealthCheck;
    using leader::detail::KvCall;
    using leader::detail::KvEntry;
    using leader::detail::KvOutcome;
    using leader::detail::KvResult;
    using leader::detail::Notify;
    using leader::detail::OpKind;
    using leader::detail::RefreshBucket;
    if (auto* call = std::get_if<KvCall>(&action)) {
      KvResult r;
      if (call->kind == OpKind::get) {
        r.outcome = KvOutcome::not_found;
      } else if (call->kind == OpKind::create && foreign_) {
        r.outcome = KvOutcome::conflict;
        KvEntry held = foreign_put().entry;
        r.entry = held;
      } else {
        r.outcome = KvOutcome::ok;
        r.revision = ++revision_;
      }
      core_.on_kv_result(call->id, r, now);
    } else if (auto* notify = std::get_if<Notify>(&action)) {
      if (notify->kind == Notify::Kind::demote) core_.on_demote_returned(now);
    } else if (std::holds_alternative<RefreshBucket>(action)) {
      core_.on_bucket(1, {}, {}, now);
    } else if (auto* health = std::get_if<HealthCheck>(&action)) {
      core_.on_health(health->id, true, now);
    }
  }

  leader::detail::ElectionCore core_;
  std::uint64_t revision_ = 0;
  bool foreign_ = false;
  std::string foreign_value_ = [] {
    leader::detail::Record r = sample_record();
    r.holder = "other";
    return leader::detail::encode_record(r);
  }();
};

/// One renewal of a leader: the timer fires, the compare-and-swap goes out,
/// its answer comes back.
void BM_CoreLeaderRenewal(benchmark::State& state) {
  CoreDriver d("a");
  TimePoint now{std::chrono::hours(1)};
  if (!d.start(now, leader::ElectionState::leading)) {
    state.SkipWithError("the core did not lead");
    return;
  }
  for (auto _ : state) {
    now = d.core().next_wakeup().value_or(now + 1s);
    d.core().on_tick(now);
    d.settle(now);
  }
  if (d.core().state() != leader::ElectionState::leading) state.SkipWithError("the core stopped leading");
}
BENCHMARK(BM_CoreLeaderRenewal);

/// A follower sees the leader's renewal on its watch.
void BM_CoreFollowerSeesRenewal(benchmark::State& state) {
  CoreDriver d("b");
  d.set_foreign_holder(true);
  TimePoint now{std::chrono::hours(1)};
  if (!d.start(now, leader::ElectionState::following)) {
    state.SkipWithError("the core did not follow");
    return;
  }
  for (auto _ : state) {
    now += 1s;
    d.core().on_watch(d.foreign_put(), now);
    d.settle(now);
  }
}
BENCHMARK(BM_CoreFollowerSeesRenewal);

}  // namespace

int main(int argc, char** argv) {
  // The elections' transitions, logged at info, would drown the results.
  setenv("LEADER_LOG_LEVEL", "error", /*overwrite=*/0);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
