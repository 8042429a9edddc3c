// contention: many candidates of one role in this process, each on a
// connection of its own (as separate processes would be): the time from a
// simultaneous start to the first leader, then takeovers after the leader's
// stop(), with the creates (acquire attempts) each one cost, counted by the
// library's own metric.

#include <unistd.h>

#include <prometheus/registry.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common.h"
#include "leader/leader.h"
#include "series.h"
#include "servers.h"

namespace leader::bench {
namespace {

/// Acquire attempts of every candidate so far, by result.
struct Attempts {
  double won = 0, held = 0, other = 0;
  double total() const { return won + held + other; }
};

Attempts attempts(prometheus::Registry& registry) {
  Attempts a;
  for (const auto& family : registry.Collect()) {
    if (family.name != "leader_election_acquire_attempts_total") continue;
    for (const auto& metric : family.metric) {
      std::string result;
      for (const auto& label : metric.label) {
        if (label.name == "result") result = label.value;
      }
      const double v = metric.counter.value;
      if (result == "won") {
        a.won += v;
      } else if (result == "held") {
        a.held += v;
      } else {
        a.other += v;
      }
    }
  }
  return a;
}

/// Who was promoted last, and when.
class Promotions {
 public:
  void promoted(int who) {
    std::lock_guard<std::mutex> lock(mu_);
    leader_ = who;
    at_ns_ = mono_ns();
    ++count_;
    cv_.notify_all();
  }
  /// Waits until more than `seen` promotions happened; the last one's
  /// (candidate, ns), or nullopt after `timeout`.
  std::optional<std::pair<int, std::int64_t>> wait_beyond(int seen, Millis timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_for(lock, timeout, [&] { return count_ > seen; })) return std::nullopt;
    return std::make_pair(leader_, at_ns_);
  }
  int count() const {
    std::lock_guard<std::mutex> lock(mu_);
    return count_;
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  int leader_ = -1;
  std::int64_t at_ns_ = 0;
  int count_ = 0;
};

}  // namespace

int run_contention(Flags& flags) {
  const std::string out = flags.text("out", ".");
  const int candidates = static_cast<int>(flags.number("candidates", 100, 2, 1000));
  const int rounds = static_cast<int>(flags.number("rounds", 10, 1, 1000));
  const int takeovers = static_cast<int>(flags.number("takeovers", 10, 0, 1000));
  const Millis ttl = flags.duration("ttl", Millis(1000));
  const std::optional<Millis> jitter = flags.optional_duration("jitter");
  NatsTarget nats = nats_target(flags);
  const std::string name = flags.text("name", "contention-" + std::to_string(nats.servers));
  flags.finish();
  const int replicas = nats.servers > 1 ? 3 : 1;
  wait_for_jetstream(nats.urls, replicas, Millis(60000));
  say(name + ": " + std::to_string(candidates) + " candidates, " + std::to_string(rounds) + " rounds of " +
      std::to_string(takeovers) + " takeovers");

  std::vector<std::shared_ptr<Connection>> connections;
  for (int i = 0; i < candidates; ++i) {
    ConnectionOptions options;
    options.url = nats.urls;
    options.name = "bench-contention " + std::to_string(i);
    options.io_threads = 1;  // one call at a time per candidate, as a process with one election
    // A hung server is noticed after about two pings: keep that inside the lease.
    options.ping_interval = std::min(options.ping_interval, ttl / 4);
    connections.push_back(Connection::connect(options));
  }
  const std::string bucket =
      "bench-contention-" + std::to_string(::getpid()) + "-" + std::to_string(mono_ns() % 1000000);
  Table first_leader({"round", "first_leader_ms", "creates"});
  Table takeover({"round", "takeover_ms", "creates", "held"});

  for (int round = 0; round < rounds; ++round) {
    auto registry = std::make_shared<prometheus::Registry>();
    Promotions promotions;
    std::vector<std::unique_ptr<Election>> elections;
    for (int i = 0; i < candidates; ++i) {
      Config config;
      config.bucket = bucket;
      config.role = "round-" + std::to_string(round);
      config.instance_id = "c" + std::to_string(i);
      config.ttl = ttl;
      config.replicas = replicas;
      if (jitter) config.acquire_jitter = *jitter;
      Callbacks callbacks;
      callbacks.on_promote = [&promotions, i](const Term&) { promotions.promoted(i); };
      Telemetry telemetry;
      telemetry.registry = registry;
      elections.push_back(std::make_unique<Election>(connections[i], config, callbacks, telemetry));
    }

    // Every candidate starts at once: each thread waits at the gate.
    std::mutex gate_mu;
    std::condition_variable gate_cv;
    bool open = false;
    std::vector<std::thread> starters;
    starters.reserve(static_cast<std::size_t>(candidates));
    for (int i = 0; i < candidates; ++i) {
      starters.emplace_back([&, i] {
        {
          std::unique_lock<std::mutex> lock(gate_mu);
          gate_cv.wait(lock, [&] { return open; });
        }
        elections[i]->start();
      });
    }
    std::this_thread::sleep_for(Millis(100));  // every thread at the gate
    const std::int64_t t0 = mono_ns();
    {
      std::lock_guard<std::mutex> lock(gate_mu);
      open = true;
    }
    gate_cv.notify_all();
    const auto first = promotions.wait_beyond(0, 10 * ttl + Millis(10000));
    for (auto& t : starters) t.join();
    if (!first) throw std::runtime_error(name + ": no leader in round " + std::to_string(round));
    // Creates whose answers are still on their way are counted too.
    std::this_thread::sleep_for(Millis(200));
    first_leader.add(
        {static_cast<double>(round), ms_between(t0, first->second), attempts(*registry).total()});

    int leader = first->first;
    for (int t = 0; t < takeovers; ++t) {
      const Attempts before = attempts(*registry);
      const int seen = promotions.count();
      const std::int64_t t1 = mono_ns();
      elections[leader]->stop();
      const auto next = promotions.wait_beyond(seen, 10 * ttl);
      if (!next) throw std::runtime_error(name + ": no takeover in round " + std::to_string(round));
      std::this_thread::sleep_for(Millis(100));
      const Attempts after = attempts(*registry);
      takeover.add({static_cast<double>(round), ms_between(t1, next->second), after.total() - before.total(),
                    after.held - before.held});
      // The old leader campaigns again (its create meets the new holder)
      // before the next takeover counts.
      elections[leader]->start();
      std::this_thread::sleep_for(Millis(100));
      leader = next->first;
    }
    // Followers first, so the teardown causes no takeovers.
    for (int i = 0; i < candidates; ++i) {
      if (i != leader) elections[i]->stop();
    }
    elections[leader]->stop();
    elections.clear();
    say(name + ": round " + std::to_string(round + 1) + "/" + std::to_string(rounds) +
        ": first leader after " + std::to_string(ms_between(t0, first->second)) + " ms");
  }

  first_leader.write_csv(out + "/" + name + "-start.csv");
  takeover.write_csv(out + "/" + name + "-takeover.csv");
  nlohmann::json result = {
      {"series", name},
      {"kind", "contention"},
      {"impl", "leader"},
      {"servers", nats.servers},
      {"ttl_ms", ttl.count()},
      {"jitter_ms", jitter ? nlohmann::json(jitter->count()) : nlohmann::json("default")},
      {"candidates", candidates},
      {"rounds", rounds},
      {"takeovers", takeover.size()},
      {"metrics",
       {{"first_leader_ms", to_json(summarize(first_leader.column("first_leader_ms")))},
        {"creates_at_start", to_json(summarize(first_leader.column("creates")))},
        {"takeover_ms", to_json(summarize(takeover.column("takeover_ms")))},
        {"creates_per_takeover", to_json(summarize(takeover.column("creates")))},
        {"held_per_takeover", to_json(summarize(takeover.column("held")))}}}};
  write_json(out + "/" + name + ".json", result);
  say(name + ": " + result["metrics"].dump());
  return 0;
}

}  // namespace leader::bench
