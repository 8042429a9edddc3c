// graceful and crash: a few candidates of one role, each a process of its
// own (leader-bench-candidate, or bench/etcd/election.go for etcd), and a
// leader that is stopped or SIGKILLed once per run.

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.h"
#include "series.h"
#include "servers.h"

namespace leader::bench {
namespace {

struct Setup {
  std::string kind;  // "graceful" or "crash"
  std::string name;  // of the result files
  std::string impl;  // "leader" or "etcd"
  std::string out;
  int runs = 100;
  int candidates = 3;
  Millis ttl{1000};
  std::optional<Millis> jitter;  // leader only; unset: the library's default
  int servers = 1;
  std::string urls;  // NATS URLs, or etcd endpoints
  std::string binary;
  std::string scope;  // bucket (leader) or key prefix (etcd)
};

/// The candidates of one role and what the harness knows of them.
class Bench {
 public:
  explicit Bench(Setup setup) : s_(std::move(setup)), rng_(static_cast<std::uint64_t>(mono_ns())) {}

  /// Starts the candidates: the first alone (it leads), then the others,
  /// until every one follows it.
  void start() {
    fleet_ = Fleet();
    known_.clear();
    const std::string first = spawn();
    if (!fleet_.pump([&](Process& p, const Line& l) { return track(p, l) && l.event == "promoted"; },
                     10 * s_.ttl + Millis(10000))) {
      throw std::runtime_error(s_.name + ": the first candidate did not lead");
    }
    for (int i = 1; i < s_.candidates; ++i) spawn();
    if (!wait_all_follow(leader_, Millis(10000) + 5 * s_.ttl)) {
      throw std::runtime_error(s_.name + ": the candidates did not all see the leader");
    }
  }

  /// One graceful handover: ms from the leader's stop() to the next
  /// on_promote; nullopt on a timeout.
  std::optional<double> graceful_run() {
    const std::string old = leader_;
    Process* stopping = fleet_.find(old);
    for (auto& [id, k] : known_) k.sees.clear();
    std::int64_t stop_called = 0;
    std::int64_t promoted = 0;
    bool stopped = false;
    stopping->send("stop");
    const bool handed = fleet_.pump(
        [&](Process& p, const Line& l) {
          track(p, l);
          if (p.id() == old && l.event == "stop_called") stop_called = l.ns;
          if (p.id() == old && l.event == "stopped") stopped = true;
          if (p.id() != old && l.event == "promoted") promoted = l.ns;
          return stop_called != 0 && stopped && promoted != 0;
        },
        10 * s_.ttl);
    if (!handed) return std::nullopt;
    // The old leader campaigns again and every follower learns the new
    // leader before the next run.
    stopping->send("start");
    if (!wait_all_follow(leader_, 10 * s_.ttl)) return std::nullopt;
    return ms_between(stop_called, promoted);
  }

  struct CrashSample {
    double latency_ms = 0;  // kill -> next on_promote
    double gap_ms = 0;      // next on_promote - (last renewal + ttl)
    double kill_after_renewal_ms = 0;
  };

  /// One crash failover; nullopt on a timeout.
  std::optional<CrashSample> crash_run() {
    const std::string old = leader_;
    Process* victim = fleet_.find(old);
    for (auto& [id, k] : known_) k.sees.clear();
    // Kill at a random point of a renewal interval, away from its ends: the
    // last renewal before the kill is then known (its line is out), never
    // one in flight whose send time the harness did not see.
    std::int64_t fresh_renewal = 0;
    if (!fleet_.pump(
            [&](Process& p, const Line& l) {
              if (track(p, l) && p.id() == old && l.event == "renewed") fresh_renewal = known_[old].renewal;
              return fresh_renewal != 0;
            },
            5 * s_.ttl)) {
      return std::nullopt;
    }
    const Known& k = known_[old];
    const Millis interval =
        k.previous_renewal != 0
            ? std::chrono::duration_cast<Millis>(std::chrono::nanoseconds(k.renewal - k.previous_renewal))
            : s_.ttl / 5;
    const Millis offset = random_between(rng_, Millis(10), std::max(Millis(20), interval - Millis(20)));
    const std::int64_t kill_at = fresh_renewal + std::chrono::nanoseconds(offset).count();
    fleet_.pump([&](Process& p, const Line& l) { return track(p, l) && mono_ns() >= kill_at; },
                std::chrono::duration_cast<Millis>(std::chrono::nanoseconds(kill_at - mono_ns())));
    const std::int64_t kill_ns = mono_ns();
    victim->kill();
    // What it printed before it died (a late renewal line included).
    while (auto l = victim->read(Millis(20))) track(*victim, *l);
    const std::int64_t last_renewal = known_[old].renewal;
    fleet_.remove(old);
    known_.erase(old);

    std::int64_t promoted = 0;
    if (!fleet_.pump(
            [&](Process& p, const Line& l) {
              track(p, l);
              if (l.event == "promoted") promoted = l.ns;
              return promoted != 0;
            },
            10 * s_.ttl)) {
      return std::nullopt;
    }
    CrashSample sample;
    sample.latency_ms = ms_between(kill_ns, promoted);
    sample.gap_ms = ms_between(last_renewal + std::chrono::nanoseconds(s_.ttl).count(), promoted);
    sample.kill_after_renewal_ms = ms_between(last_renewal, kill_ns);
    // A new process takes the dead one's place before the next run.
    spawn();
    if (!wait_all_follow(leader_, Millis(10000) + 5 * s_.ttl)) return std::nullopt;
    return sample;
  }

 private:
  struct Known {
    std::string sees;  // the leader it reported last ("" since the run began)
    std::int64_t renewal = 0;
    std::int64_t previous_renewal = 0;
    bool ready = false;
  };

  std::string spawn() {
    std::string id = "c" + std::to_string(next_id_++);
    std::vector<std::string> argv = {s_.binary};
    if (s_.impl == "etcd") {
      const long seconds =
          static_cast<long>(std::chrono::duration_cast<std::chrono::seconds>(s_.ttl).count());
      argv.insert(argv.end(), {"--endpoints", s_.urls, "--prefix", s_.scope, "--id", id, "--ttl",
                               std::to_string(seconds)});
    } else {
      argv.insert(argv.end(),
                  {"--nats-url", s_.urls, "--bucket", s_.scope, "--role", "role", "--id", id, "--ttl",
                   duration_flag(s_.ttl), "--replicas", std::to_string(s_.servers > 1 ? 3 : 1)});
      if (s_.jitter) argv.insert(argv.end(), {"--jitter", duration_flag(*s_.jitter)});
    }
    fleet_.add(std::make_unique<Process>(id, argv));
    known_[id] = Known{};
    return id;
  }

  /// Updates what is known from `line`; always true (so it can stand
  /// first in a condition).
  bool track(Process& p, const Line& line) {
    Known& k = known_[p.id()];
    if (line.event == "promoted") leader_ = p.id();
    if (line.event == "leader") k.sees = line.field("id");
    if (line.event == "ready" || line.event == "started") k.ready = true;
    if (line.event == "renewed") {
      // Ours report the send time; etcd's client only the answer's arrival.
      const std::int64_t at = line.fields.count("sent") ? line.number("sent") : line.number("acked");
      k.previous_renewal = k.renewal;
      k.renewal = at;
    }
    if (line.event == "error") say(s_.name + ": " + p.id() + ": " + line.text);
    return true;
  }

  bool wait_all_follow(const std::string& leader, Millis timeout) {
    auto all_follow = [&] {
      for (Process* p : fleet_.all()) {
        const Known& k = known_[p->id()];
        if (!k.ready || (p->id() != leader && k.sees != leader)) return false;
      }
      return leader_ == leader;
    };
    if (all_follow()) return true;
    return fleet_.pump([&](Process& p, const Line& l) { return track(p, l) && all_follow(); }, timeout);
  }

  Setup s_;
  std::mt19937_64 rng_;
  Fleet fleet_;
  std::map<std::string, Known> known_;
  std::string leader_;
  int next_id_ = 0;
};

Setup read_setup(const std::string& kind, Flags& flags, std::optional<NatsTarget>& nats) {
  Setup s;
  s.kind = kind;
  s.impl = flags.text("impl", "leader");
  if (s.impl != "leader" && s.impl != "etcd") throw UsageError{"--impl: leader or etcd"};
  s.out = flags.text("out", ".");
  s.runs = static_cast<int>(flags.number("runs", 100, 1, 100000));
  s.candidates = static_cast<int>(flags.number("candidates", 3, 2, 50));
  s.ttl = flags.duration("ttl", Millis(1000));
  if (s.impl == "etcd") {
    if (s.ttl.count() % 1000 != 0) throw UsageError{"--ttl: etcd leases are whole seconds"};
    s.urls = flags.text("etcd-endpoint", "127.0.0.1:2379");
    const auto binary = flags.optional_text("etcd-candidate");
    if (!binary) throw UsageError{"--impl etcd needs --etcd-candidate (bench/etcd/election.go, built)"};
    s.binary = *binary;
    s.scope = "/bench/" + kind + "/" + std::to_string(::getpid());
  } else {
    s.jitter = flags.optional_duration("jitter");
    nats.emplace(nats_target(flags));
    s.servers = nats->servers;
    s.urls = nats->urls;
    s.binary = flags.text("candidate", LEADER_BENCH_CANDIDATE_BIN);
    s.scope = "bench-" + kind + "-" + std::to_string(s.servers) + "-" + std::to_string(::getpid()) + "-" +
              std::to_string(mono_ns() % 1000000);
  }
  s.name = flags.text("name", kind + "-" + s.impl + "-" + std::to_string(s.servers));
  flags.finish();
  if (nats) wait_for_jetstream(s.urls, s.servers > 1 ? 3 : 1, Millis(60000));
  say(s.name + ": " + std::to_string(s.runs) + " runs, " + std::to_string(s.candidates) +
      " candidates, ttl " + duration_flag(s.ttl));
  return s;
}

nlohmann::json describe(const Setup& s, std::size_t ok, int failed) {
  return {{"series", s.name},
          {"kind", s.kind},
          {"impl", s.impl},
          {"servers", s.servers},
          {"ttl_ms", s.ttl.count()},
          {"jitter_ms", s.jitter             ? nlohmann::json(s.jitter->count())
                        : s.impl == "leader" ? nlohmann::json("default")
                                             : nlohmann::json(nullptr)},
          {"candidates", s.candidates},
          {"runs", ok},
          {"failed", failed}};
}

/// <name>.csv with the samples, <name>.json with the setup and a summary of
/// each of `metrics` (columns of `table`).
void write_results(const Setup& s, const Table& table, int failed, const std::vector<std::string>& metrics) {
  table.write_csv(s.out + "/" + s.name + ".csv");
  nlohmann::json result = describe(s, table.size(), failed);
  for (const auto& metric : metrics) result["metrics"][metric] = to_json(summarize(table.column(metric)));
  write_json(s.out + "/" + s.name + ".json", result);
  say(s.name + ": " + result["metrics"].dump());
}

/// Runs `one` s.runs times; a run that times out is counted, and the
/// candidates are started afresh.
template <typename RunOne>
int repeat(Bench& bench, const Setup& s, RunOne&& one) {
  int failed = 0;
  bench.start();
  for (int i = 0; i < s.runs; ++i) {
    if (!one(i)) {
      ++failed;
      say(s.name + ": run " + std::to_string(i) + " timed out; restarting the candidates");
      if (failed > s.runs / 10 + 2) throw std::runtime_error(s.name + ": too many failed runs");
      bench.start();
    }
    if ((i + 1) % 25 == 0) say(s.name + ": " + std::to_string(i + 1) + "/" + std::to_string(s.runs));
  }
  return failed;
}

}  // namespace

int run_graceful(Flags& flags) {
  std::optional<NatsTarget> nats;
  const Setup s = read_setup("graceful", flags, nats);
  Bench bench(s);
  Table table({"run", "handover_ms"});
  const int failed = repeat(bench, s, [&](int i) {
    const auto ms = bench.graceful_run();
    if (ms) table.add({static_cast<double>(i), *ms});
    return ms.has_value();
  });
  write_results(s, table, failed, {"handover_ms"});
  return 0;
}

int run_crash(Flags& flags) {
  std::optional<NatsTarget> nats;
  const Setup s = read_setup("crash", flags, nats);
  Bench bench(s);
  Table table({"run", "latency_ms", "gap_ms", "kill_after_renewal_ms"});
  const int failed = repeat(bench, s, [&](int i) {
    const auto sample = bench.crash_run();
    if (sample) {
      table.add({static_cast<double>(i), sample->latency_ms, sample->gap_ms, sample->kill_after_renewal_ms});
    }
    return sample.has_value();
  });
  write_results(s, table, failed, {"latency_ms", "gap_ms", "kill_after_renewal_ms"});
  return 0;
}

}  // namespace leader::bench
