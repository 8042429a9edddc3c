// report: docs/BENCHMARKS.md from a results directory (the series' JSON
// summaries, Google Benchmark's JSON output micro.json, machine.txt and
// commands.txt from scripts/bench.sh), and the gnuplot script of the plot.

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.h"
#include "series.h"

namespace leader::bench {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  if (!in) return {};
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// A latency in ms, with the digits that matter.
std::string ms(double v) {
  if (v < 10) return fmt::format("{:.2f}", v);
  if (v < 100) return fmt::format("{:.1f}", v);
  return fmt::format("{:.0f}", v);
}

std::string ratio(double ours, double theirs) {
  if (theirs <= 0) return "-";
  return fmt::format("{:.2f}", ours / theirs);
}

std::string system_name(const json& s) { return s.value("impl", "") == "etcd" ? "etcd 3.4" : "leader"; }

std::string servers_name(const json& s) {
  if (s.value("impl", "") == "etcd") return "1 etcd";
  return s.value("servers", 1) > 1 ? "3-node cluster, R3" : "1 nats-server";
}

std::string jitter_name(const json& s) {
  if (!s.contains("jitter_ms") || s["jitter_ms"].is_null()) return "-";
  if (s["jitter_ms"].is_string()) return "0-5 ms (default)";
  const long jitter = s["jitter_ms"].get<long>();
  return jitter == 0 ? std::string("none") : fmt::format("0-{} ms", jitter);
}

class Results {
 public:
  explicit Results(const std::string& dir) {
    for (const auto& entry : fs::directory_iterator(dir)) {
      if (entry.path().extension() != ".json" || entry.path().filename() == "micro.json") continue;
      json j = read_json(entry.path().string());
      if (j.contains("series")) series_[j["series"].get<std::string>()] = j;
    }
    const std::string micro = dir + "/micro.json";
    if (fs::exists(micro)) micro_ = read_json(micro);
  }

  const json* get(const std::string& name) const {
    auto it = series_.find(name);
    return it == series_.end() ? nullptr : &it->second;
  }
  std::vector<const json*> of_kind(const std::string& kind) const {
    std::vector<const json*> out;
    for (const auto& [name, s] : series_) {
      if (s.value("kind", "") == kind) out.push_back(&s);
    }
    // Ours first, one server before the cluster.
    std::stable_sort(out.begin(), out.end(), [](const json* a, const json* b) {
      return std::make_pair(a->value("impl", "") == "etcd", a->value("servers", 1)) <
             std::make_pair(b->value("impl", "") == "etcd", b->value("servers", 1));
    });
    return out;
  }
  /// A summary of series `name`'s `metric`, if it ran.
  std::optional<Summary> metric(const std::string& name, const std::string& metric) const {
    const json* s = get(name);
    if (s == nullptr || !s->contains("metrics") || !(*s)["metrics"].contains(metric)) return std::nullopt;
    const json& m = (*s)["metrics"][metric];
    Summary out;
    out.n = m.value("n", std::size_t{0});
    out.min = m.value("min", 0.0);
    out.mean = m.value("mean", 0.0);
    out.p50 = m.value("p50", 0.0);
    out.p90 = m.value("p90", 0.0);
    out.p99 = m.value("p99", 0.0);
    out.max = m.value("max", 0.0);
    if (out.n == 0) return std::nullopt;
    return out;
  }
  /// Micro benchmarks: name -> (real time ns, cpu time ns, iterations); the
  /// median of the repetitions when there were several.
  std::map<std::string, std::vector<double>> micro() const {
    std::map<std::string, std::vector<double>> out;
    if (!micro_.contains("benchmarks")) return out;
    const bool aggregated =
        std::any_of(micro_["benchmarks"].begin(), micro_["benchmarks"].end(),
                    [](const json& b) { return b.value("aggregate_name", "") == "median"; });
    for (const auto& b : micro_["benchmarks"]) {
      if (aggregated && b.value("aggregate_name", "") != "median") continue;
      std::string name = b.value("run_name", b.value("name", ""));
      const double scale = b.value("time_unit", "ns") == "us"   ? 1e3
                           : b.value("time_unit", "ns") == "ms" ? 1e6
                                                                : 1;
      out[name] = {b.value("real_time", 0.0) * scale, b.value("cpu_time", 0.0) * scale,
                   b.value("iterations", 0.0)};
    }
    return out;
  }
  const json& micro_json() const { return micro_; }

 private:
  std::map<std::string, json> series_;
  json micro_;
};

struct Target {
  std::string what;
  std::optional<double> measured;
  double limit;
  std::string unit;
};

std::string target_row(const Target& t) {
  if (!t.measured) return fmt::format("| {} | not run | |\n", t.what);
  const std::string value = t.unit == "ns"  ? fmt::format("{:.1f} ns", *t.measured)
                            : t.unit == "%" ? fmt::format("{:.1f} %", *t.measured)
                                            : ms(*t.measured) + " ms";
  return fmt::format("| {} | {} | {} |\n", t.what, value, *t.measured <= t.limit ? "met" : "**missed**");
}

std::string latency_table(const Results& r, const std::string& kind, const std::string& metric) {
  std::string out =
      "| series | system | servers | jitter | runs (failed) | p50 | p90 | p99 | max |\n"
      "|---|---|---|---|---|---|---|---|---|\n";
  for (const json* s : r.of_kind(kind)) {
    const auto m = r.metric(s->value("series", ""), metric);
    if (!m) continue;
    out += fmt::format("| `{}` | {} | {} | {} | {} ({}) | {} | {} | {} | {} |\n", s->value("series", ""),
                       system_name(*s), servers_name(*s), jitter_name(*s), m->n, s->value("failed", 0),
                       ms(m->p50), ms(m->p90), ms(m->p99), ms(m->max));
  }
  return out;
}

std::string ratio_row(const Results& r, const std::string& what, const std::string& ours,
                      const std::string& theirs, const std::string& metric) {
  const auto a = r.metric(ours, metric);
  const auto b = r.metric(theirs, metric);
  if (!a || !b) return fmt::format("| {} | not run | | | | | |\n", what);
  return fmt::format("| {} | {} | {} | **{}** | {} | {} | **{}** |\n", what, ms(a->p50), ms(b->p50),
                     ratio(a->p50, b->p50), ms(a->p99), ms(b->p99), ratio(a->p99, b->p99));
}

std::string scale_section(const Results& r) {
  std::string out =
      "| roles | process | CPU (% of one core) | RSS (MiB) | threads | msgs/s to the server | msgs/s from it "
      "|\n"
      "|---|---|---|---|---|---|---|\n";
  std::string moves =
      "| roles | all led after start | roles moved | first move | p50 | all moved | roles lost in the window "
      "|\n"
      "|---|---|---|---|---|---|---|\n";
  std::vector<const json*> scale = r.of_kind("scale");
  std::sort(scale.begin(), scale.end(),
            [](const json* a, const json* b) { return a->value("roles", 0) < b->value("roles", 0); });
  for (const json* s : scale) {
    const int roles = s->value("roles", 0);
    auto row = [&](const char* who, const json& u) {
      out += fmt::format("| {} | {} | {:.1f} | {:.1f} | {} | {:.0f} | {:.0f} |\n", roles, who,
                         u.value("cpu_pct", 0.0), u.value("rss_mib", 0.0), u.value("threads", 0),
                         u.value("msgs_in_per_s", 0.0), u.value("msgs_out_per_s", 0.0));
    };
    row("leader of all (A)", (*s)["leader"]);
    row("follower of all (B)", (*s)["follower"]);
    if (s->contains("server")) {
      const json& u = (*s)["server"];
      out += fmt::format("| {} | nats-server | {:.1f} | {:.1f} | {} | | |\n", roles, u.value("cpu_pct", 0.0),
                         u.value("rss_mib", 0.0), u.value("threads", 0));
    }
    const json& m = (*s)["move_ms"];
    moves +=
        fmt::format("| {} | {} ms | {} | {} ms | {} ms | {} ms | {} |\n", roles,
                    ms(s->value("all_led_ms", 0.0)), s->value("moved", 0), ms(m.value("min", 0.0)),
                    ms(m.value("p50", 0.0)), ms(m.value("max", 0.0)), s->value("roles_lost_in_window", 0));
  }
  if (scale.empty()) return "Not run.\n";
  const json& first = *scale.front();
  return fmt::format(
      "TTL {} ms (heartbeat {} ms), I/O threads: {}, steady window {:.0f} s. Process A starts first and "
      "leads every role; B starts next and follows them all.\n\n{}\nThen A is SIGKILLed; B takes "
      "over every role (times from the kill):\n\n{}",
      first.value("ttl_ms", 0), first.value("ttl_ms", 0) / 5,
      first["io_threads"].is_string() ? "the library's default" : first["io_threads"].dump(),
      first.value("window_s", 0.0), out, moves);
}

std::string contention_section(const Results& r) {
  std::string out;
  for (const json* s : r.of_kind("contention")) {
    const std::string name = s->value("series", "");
    const auto first = r.metric(name, "first_leader_ms");
    const auto start_creates = r.metric(name, "creates_at_start");
    const auto takeover = r.metric(name, "takeover_ms");
    const auto creates = r.metric(name, "creates_per_takeover");
    const auto held = r.metric(name, "held_per_takeover");
    out += fmt::format(
        "{} candidates, each on a connection of its own, {}, TTL {} ms, jitter {}; {} rounds.\n\n",
        s->value("candidates", 0), servers_name(*s), s->value("ttl_ms", 0), jitter_name(*s),
        s->value("rounds", 0));
    out += "| | n | p50 | p90 | max | mean |\n|---|---|---|---|---|---|\n";
    auto row = [&](const std::string& what, const std::optional<Summary>& m, bool latency) {
      if (!m) return;
      auto v = [&](double x) { return latency ? ms(x) + " ms" : fmt::format("{:.1f}", x); };
      out += fmt::format("| {} | {} | {} | {} | {} | {} |\n", what, m->n, v(m->p50), v(m->p90), v(m->max),
                         v(m->mean));
    };
    row("all start at once: time to the first leader", first, true);
    row("creates sent in that start", start_creates, false);
    row("takeover after the leader's stop()", takeover, true);
    row("creates per takeover (all candidates)", creates, false);
    row("of which met the new holder (held)", held, false);
    out += "\n";
  }
  return out.empty() ? "Not run.\n" : out;
}

std::string micro_section(const Results& r) {
  const auto micro = r.micro();
  if (micro.empty()) return "Not run.\n";
  std::string out = "| benchmark | time (ns) | CPU (ns) | iterations |\n|---|---|---|---|\n";
  for (const auto& [name, v] : micro) {
    out += fmt::format("| `{}` | {:.1f} | {:.1f} | {:.0f} |\n", name, v[0], v[1], v[2]);
  }
  return out;
}

std::optional<double> micro_ns(const Results& r, const std::string& name) {
  const auto micro = r.micro();
  auto it = micro.find(name);
  if (it == micro.end()) return std::nullopt;
  return it->second[0];
}

std::optional<double> scale_cpu(const Results& r, int roles) {
  for (const json* s : r.of_kind("scale")) {
    if (s->value("roles", 0) == roles) return (*s)["leader"].value("cpu_pct", 0.0);
  }
  return std::nullopt;
}

/// One color per setup, the same in every panel.
std::string color(const json& s) {
  if (s.value("impl", "") == "etcd") return "#e69f00";
  if (s.value("servers", 1) > 1) return "#56b4e9";
  if (s.contains("jitter_ms") && s["jitter_ms"].is_number() && s["jitter_ms"].get<long>() == 0) {
    return "#009e73";
  }
  return "#9400d3";
}

std::string plot_script(const std::string& dir, const std::string& png, const Results& r) {
  auto csv = [&](const std::string& name) { return fs::absolute(dir + "/" + name + ".csv").string(); };
  auto curves = [&](const std::string& kind, int column) {
    std::vector<std::string> parts;
    for (const json* s : r.of_kind(kind)) {
      const std::string name = s->value("series", "");
      if (!fs::exists(csv(name))) continue;
      const std::string title = system_name(*s) + ", " + servers_name(*s) +
                                (s->value("impl", "") == "leader" ? ", jitter " + jitter_name(*s) : "");
      parts.push_back(
          fmt::format("'{}' every ::1 using {}:(1.0) smooth cnormal with lines lw 2 lc rgb '{}' title '{}'",
                      csv(name), column, color(*s), title));
    }
    std::string out;
    for (std::size_t i = 0; i < parts.size(); ++i) out += (i ? ", \\\n     " : "plot ") + parts[i];
    return out.empty() ? std::string("plot NaN notitle") : out;
  };
  return fmt::format(
      "# Written by leader-bench-e2e report; run by scripts/bench.sh.\n"
      "set terminal pngcairo size 1800,560 font 'sans,10'\n"
      "set output '{}'\n"
      "set datafile separator ','\n"
      "set grid\n"
      "set key bottom right\n"
      "set ylabel 'fraction of runs'\n"
      "set yrange [0:1]\n"
      "set multiplot layout 1,3\n"
      "set logscale x\n"
      "set title 'Graceful handover: stop() -> next on\\_promote'\n"
      "set xlabel 'ms (log)'\n"
      "{}\n"
      "set title 'Crash: next on\\_promote - (last renewal + TTL)'\n"
      "{}\n"
      "unset logscale x\n"
      "set title 'Crash: SIGKILL -> next on\\_promote'\n"
      "set xlabel 'ms'\n"
      "{}\n"
      "unset multiplot\n",
      png, curves("graceful", 2), curves("crash", 3), curves("crash", 2));
}

}  // namespace

int run_report(Flags& flags) {
  const std::string dir = flags.text("results", ".");
  const std::string out_path = flags.text("out", "BENCHMARKS.md");
  const std::string plot = flags.text("plot-script", dir + "/latency.gp");
  const std::string png = flags.text("png", "benchmarks-latency.png");
  const std::string analysis = flags.text("analysis", "");
  flags.finish();
  const Results r(dir);

  const std::string graceful = "graceful-leader-1";
  const std::string crash = "crash-leader-1";
  std::vector<Target> targets = {
      {"graceful handover p50 <= 2 ms (one server, default config)",
       r.metric(graceful, "handover_ms") ? std::optional<double>(r.metric(graceful, "handover_ms")->p50)
                                         : std::nullopt,
       2, "ms"},
      {"graceful handover p99 <= 10 ms",
       r.metric(graceful, "handover_ms") ? std::optional<double>(r.metric(graceful, "handover_ms")->p99)
                                         : std::nullopt,
       10, "ms"},
      {"crash: gap past lease expiry p50 <= 5 ms",
       r.metric(crash, "gap_ms") ? std::optional<double>(r.metric(crash, "gap_ms")->p50) : std::nullopt, 5,
       "ms"},
      {"crash: gap past lease expiry p99 <= 25 ms",
       r.metric(crash, "gap_ms") ? std::optional<double>(r.metric(crash, "gap_ms")->p99) : std::nullopt, 25,
       "ms"},
      {"`is_leader()` <= 5 ns, leading", micro_ns(r, "BM_IsLeader/leading"), 5, "ns"},
      {"`is_leader()` <= 5 ns, following", micro_ns(r, "BM_IsLeader/following"), 5, "ns"},
      {"10,000 roles under 10 % of one core at TTL 10 s (leader process)", scale_cpu(r, 10000), 10, "%"},
  };
  std::string target_rows;
  for (const auto& t : targets) target_rows += target_row(t);

  std::string machine;
  {
    std::istringstream in(read_text(dir + "/machine.txt"));
    std::string line;
    while (std::getline(in, line)) {
      const auto colon = line.find(':');
      if (colon == std::string::npos) continue;
      const auto value = line.find_first_not_of(' ', colon + 1);
      machine += fmt::format("| {} | {} |\n", line.substr(0, colon),
                             value == std::string::npos ? std::string() : line.substr(value));
    }
  }
  const std::string commands = read_text(dir + "/commands.txt");
  const std::string analysis_text = analysis.empty() ? std::string() : read_text(analysis);

  std::ofstream md(out_path, std::ios::trunc);
  md << "# Benchmarks\n\n"
     << "Everything on this page, the plot included, is written by `scripts/bench.sh`, which installs what "
        "it "
        "needs, builds, starts the servers, runs every series and rewrites this file. Do not edit it by "
        "hand: "
        "the analysis at the end comes from `bench/ANALYSIS.md`.\n\n"
     << "## Machine\n\n| | |\n|---|---|\n"
     << machine << "\n"
     << "## Targets\n\nLoopback, one server, TTL 1 s unless said otherwise.\n\n"
     << "| target | measured | |\n|---|---|---|\n"
     << target_rows << "\n"
     << "## Failover latency\n\n"
     << "Each run has "
     << (r.of_kind("graceful").empty() ? 3 : r.of_kind("graceful").front()->value("candidates", 3))
     << " candidates of one role, each a process of its own, with the same TTL (1 s) for both systems. "
        "Percentiles are nearest-rank over the runs.\n\n"
     << "![Latency distributions](" << fs::path(png).filename().string() << ")\n\n"
     << "### Graceful handover: the leader's `stop()` (release) -> the next candidate's `on_promote`\n\n"
     << latency_table(r, "graceful", "handover_ms") << "\n"
     << "### Crash failover: SIGKILL of the leader -> the next `on_promote`\n\n"
     << latency_table(r, "crash", "latency_ms") << "\n"
     << "### Crash failover: the gap past the lease's expiry, next `on_promote` - (last renewal + TTL)\n\n"
     << latency_table(r, "crash", "gap_ms") << "\n"
     << "### Ours / etcd (same machine, same TTL, one server each; below 1: ours is faster)\n\n"
     << "| | ours p50 | etcd p50 | ratio p50 | ours p99 | etcd p99 | ratio p99 "
        "|\n|---|---|---|---|---|---|---|\n"
     << ratio_row(r, "graceful handover, default jitter", graceful, "graceful-etcd-1", "handover_ms")
     << ratio_row(r, "graceful handover, jitter 0", "graceful-leader-1-j0", "graceful-etcd-1", "handover_ms")
     << ratio_row(r, "crash: kill -> new leader", crash, "crash-etcd-1", "latency_ms")
     << ratio_row(r, "crash: gap past lease expiry", crash, "crash-etcd-1", "gap_ms") << "\n"
     << "## Contention\n\n"
     << contention_section(r) << "## Scale: many roles through one RoleManager on one connection\n\n"
     << scale_section(r) << "\n## Micro benchmarks (Google Benchmark, median of the repetitions)\n\n"
     << micro_section(r) << "\n"
     << "## Method\n\n"
     << "- Candidates stamp every event with `CLOCK_MONOTONIC` (`std::chrono::steady_clock` in C++), so the "
        "stamps of different processes on one host compare directly. `leader-bench-candidate` runs one "
        "`leader::Election`; `bench/etcd/election.go` runs one `concurrency.Election` over a `Session` with "
        "the "
        "same TTL, built against Debian's etcd 3.4 client sources.\n"
     << "- Graceful: the harness tells the leader to `stop()`; the sample runs from the stamp taken right "
        "before `stop()` (etcd: `Resign()`) to the next leader's stamp on entry to `on_promote` (etcd: "
        "`Campaign()` returning). The old leader then campaigns again, and the next run starts once every "
        "candidate has reported the new leader.\n"
     << "- Crash: the harness waits for a renewal of the leader, SIGKILLs it at a random point of its "
        "renewal "
        "interval (10 ms from either end, so no renewal is in flight), and starts a new candidate in its "
        "place. The gap is measured from the last renewal + TTL: for ours the renewal's send time (from "
        "`status().last_renewal`; the lease runs from no earlier than that), for etcd the arrival of the "
        "keep-alive answer (its client exposes no send time). Both are within a round trip of when the "
        "server renewed the lease; the difference favours etcd by under a millisecond.\n"
     << "- etcd's lease TTL is whole seconds and at least 1.5 election timeouts, so etcd runs with "
        "`--heartbeat-interval 50 --election-timeout 500` (default: 100 / 1000, which would round a 1 s TTL "
        "up to 2 s). etcd fsyncs every write; nats-server's file store does not (its default "
        "`sync_interval`).\n"
     << "- Scale: CPU from `/proc/<pid>/stat` (utime + stime) over the window, memory and threads from "
        "`/proc/<pid>/status` at its end, messages from the `in_msgs` / `out_msgs` of the process's "
        "connection "
        "in the server's `/connz`.\n"
     << "- The machine is shared and small: run to run, expect the tails (p99, max) to move more than the "
        "medians.\n\n"
     << "## Commands\n\n```sh\n"
     << commands << "```\n";
  if (!analysis_text.empty()) md << "\n" << analysis_text;
  if (!md) throw std::runtime_error("cannot write " + out_path);

  std::ofstream gp(plot, std::ios::trunc);
  gp << plot_script(dir, png, r);
  if (!gp) throw std::runtime_error("cannot write " + plot);
  say("wrote " + out_path + " and " + plot);
  return 0;
}

}  // namespace leader::bench
