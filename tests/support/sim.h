#pragma once

// A discrete-event simulation of several candidates (ElectionCores) sharing
// one natsmock server on a fake clock. Deterministic: no threads, no
// sleeps. KV calls are applied on the mock when the core issues them; their
// results and watch events reach the core after configurable latencies.
// After every event it checks that at most one candidate believes it leads.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <queue>
#include <string>
#include <vector>

#include "core.h"
#include "natsmock/fake_clock.h"
#include "natsmock/mock_kv.h"

namespace leader::testing {

using namespace std::chrono_literals;
using detail::Duration;
using detail::TimePoint;

/// A record held by someone else (a foreign holder) for the role's key.
std::string foreign_record(const std::string& holder = "intruder");

class Sim;
/// The server's call log entries of `client` for `op` ("create", ...).
std::vector<natsmock::CallRecord> calls_of(Sim& sim, const std::string& client, const std::string& op);
/// How many of those happened at or after `after`.
std::size_t count_calls(Sim& sim, const std::string& client, const std::string& op, TimePoint after = {});

/// A config for simulations: ttl 1 s, heartbeat 200 ms, margin 50 ms,
/// call timeout 100 ms, jitter 5 ms.
Config sim_config(const std::string& id = "a");

class Sim {
 public:
  struct Candidate {
    std::string id;
    Config config;
    std::unique_ptr<detail::ElectionCore> core;
    std::shared_ptr<natsmock::MockClient> client;
    std::shared_ptr<detail::KvStore> store;
    std::unique_ptr<detail::Watch> watch;
    std::uint64_t watch_generation = 0;
    /// What the callbacks saw, in order: "promote:<token>",
    /// "demote:<reason>", "leader:<id>|none|?" (? = unknown holder),
    /// "error:<message>", "finished".
    std::vector<std::string> events;
    /// false: on_demote "runs" until the test calls demote_returns().
    bool auto_return_demote = true;
    bool demote_outstanding = false;
    /// Latency of this candidate's KV results; a result later than the
    /// call's deadline arrives late (the core has moved on).
    Duration result_latency = 300us;
    Duration watch_latency = 200us;
    /// How late the core hears of a connection state change (nats.c
    /// reports a disconnect after calls have started to fail).
    Duration state_latency = 1ms;
    std::uint64_t tick_generation = 0;
    std::optional<TimePoint> tick_at;
    int promotions = 0;
    /// Answers health checks: true/false, or nullopt to never answer (a
    /// hung check). Unset: checks are not enabled for the candidate.
    std::function<std::optional<bool>()> health;
    /// Answer to RefreshBucket: the bucket re-opened through the mock
    /// (it is re-created if gone), after result_latency.
    /// A crashed candidate gets no more events (its process is gone); its
    /// last lease still counts in the two-leader check until its deadline.
    bool crashed = false;
    /// What the core reports metrics to (none by default); see set_metrics.
    std::shared_ptr<detail::ElectionMetrics> metrics;
  };

  explicit Sim(std::uint64_t seed = 1);
  ~Sim();

  natsmock::FakeClock& clock() { return clock_; }
  natsmock::MockServer& server() { return *server_; }
  TimePoint now() const { return clock_.now(); }

  /// Adds a candidate (not started). `config` must be resolved and valid.
  Candidate& add(Config config);
  Candidate& add(const std::string& id) { return add(sim_config(id)); }
  Candidate& get(const std::string& id);

  /// Makes `id`'s core report to `metrics` (kept alive by the candidate).
  void set_metrics(const std::string& id, std::shared_ptr<detail::ElectionMetrics> metrics);

  void start(const std::string& id);
  /// Enables health checks on `id`'s core, answered by `health`.
  void set_health(const std::string& id, std::function<std::optional<bool>()> health);
  void stop(const std::string& id, bool release = true, Duration timeout = 5s);
  void step_down(const std::string& id, Duration cooldown = 0ms);
  void demote_returns(const std::string& id);
  /// The candidate's process dies: nothing reaches its core any more.
  void crash(const std::string& id);

  /// Runs events in time order until `d` has passed.
  void run_for(Duration d);
  /// Runs until `pred` holds (checked after each event) or `limit` passes.
  bool run_until(const std::function<bool()>& pred, Duration limit);

  /// Whether `id` believes it leads now (term held and before its deadline).
  bool leads(const std::string& id) const;
  /// Number of candidates that believe they lead now.
  int leaders() const;
  /// The id of the one leader, or "" if none.
  std::string leader() const;
  /// Highest number of simultaneous believers ever seen (must stay <= 1).
  int max_leaders_seen() const { return max_leaders_; }
  /// Every token promoted, in order, across candidates.
  const std::vector<std::uint64_t>& tokens() const { return tokens_; }
  /// Every fencing token promoted, in order.
  const std::vector<FencingToken>& fencing_tokens() const { return fencing_tokens_; }

  const std::string& bucket() const { return bucket_; }
  const std::string& key() const { return key_; }

 private:
  struct Event {
    TimePoint at;
    std::uint64_t seq;
    std::function<void()> fn;
    bool operator>(const Event& o) const { return at != o.at ? at > o.at : seq > o.seq; }
  };
  void schedule(TimePoint at, std::function<void()> fn);
  void dispatch(Candidate& c);
  void execute(Candidate& c, detail::Action& a);
  void check();

  natsmock::FakeClock clock_;
  std::unique_ptr<natsmock::MockServer> server_;
  std::map<std::string, std::unique_ptr<Candidate>> candidates_;
  std::priority_queue<Event, std::vector<Event>, std::greater<>> queue_;
  std::uint64_t seq_ = 0;
  std::uint64_t seed_;
  int max_leaders_ = 0;
  std::vector<std::uint64_t> tokens_;
  std::vector<FencingToken> fencing_tokens_;
  std::string bucket_ = "sim";
  std::string key_ = "role";
};

}  // namespace leader::testing
