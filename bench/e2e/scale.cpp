// scale: N roles through one RoleManager on one connection
// (examples/multi-role). Process A starts first and leads every role;
// process B follows them all. Over a steady window: CPU (from
// /proc/<pid>/stat), resident memory and threads (/proc/<pid>/status), and
// messages per second to the server (in_msgs deltas of the process's
// connection in the server's /connz). Then A is SIGKILLed and B takes over
// every role: how long until all have moved.

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.h"
#include "series.h"
#include "servers.h"

namespace leader::bench {
namespace {

/// One multi-role process and the events it printed
/// (`<unix_ns> id=<id> event=<event> ...`).
class MultiRole {
 public:
  MultiRole(const std::string& id, std::vector<std::string> argv) : process_(id, argv) {}

  Process& process() { return process_; }

  /// Reads what arrived within `timeout` and counts its events.
  void pump(Millis timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    do {
      while (auto raw = process_.read_raw(Millis(0))) count(*raw);
      if (auto raw = process_.read_raw(Millis(5))) count(*raw);
    } while (std::chrono::steady_clock::now() < deadline);
  }

  /// Reads until `done()` holds or `timeout` passes.
  template <typename Pred>
  bool pump_until(Pred done, Millis timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!done()) {
      if (std::chrono::steady_clock::now() >= deadline || !process_.running()) return done();
      pump(Millis(20));
    }
    return true;
  }

  std::vector<std::int64_t> promoted_ns;  // CLOCK_REALTIME, in order
  int demoted = 0;
  int leader_lines = 0;  // on_leader_change naming another holder
  int errors = 0;
  std::string first_error;

 private:
  void count(const std::string& line) {
    const auto space = line.find(' ');
    if (space == std::string::npos || line.find(" event=") == std::string::npos) return;
    std::int64_t ns = 0;
    try {
      ns = std::stoll(line.substr(0, space));
    } catch (const std::exception&) {
      return;  // a table line
    }
    if (line.find(" event=promoted ") != std::string::npos) promoted_ns.push_back(ns);
    if (line.find(" event=demoted ") != std::string::npos) ++demoted;
    if (line.find(" event=leader ") != std::string::npos && line.find(" leader=none") == std::string::npos &&
        line.find(" leader=" + process_.id()) == std::string::npos) {
      ++leader_lines;
    }
    if (line.find(" event=error ") != std::string::npos && errors++ == 0) first_error = line;
  }

  Process process_;
};

struct Usage {
  double cpu_pct = 0;
  double rss_mib = 0;
  double rss_max_mib = 0;
  long threads = 0;
  double msgs_in_per_s = 0;
  double msgs_out_per_s = 0;
};

nlohmann::json to_json(const Usage& u) {
  return {{"cpu_pct", u.cpu_pct},
          {"rss_mib", u.rss_mib},
          {"rss_max_mib", u.rss_max_mib},
          {"threads", u.threads},
          {"msgs_in_per_s", u.msgs_in_per_s},
          {"msgs_out_per_s", u.msgs_out_per_s}};
}

}  // namespace

int run_scale(Flags& flags) {
  const std::string out = flags.text("out", ".");
  const int roles = static_cast<int>(flags.number("roles", 1000, 1, 100000));
  const Millis ttl = flags.duration("ttl", Millis(10000));
  // Whole heartbeat rounds: the roles renew in bursts, one per heartbeat.
  const Millis heartbeat = ttl / 5;
  const Millis window_flag = flags.duration("window", Millis(30000));
  const Millis window =
      std::max<long long>(1, (window_flag.count() + heartbeat.count() - 1) / heartbeat.count()) * heartbeat;
  const std::optional<std::string> io_threads = flags.optional_text("io-threads");
  const std::string binary = flags.text("multi-role", LEADER_MULTI_ROLE_BIN);
  NatsTarget nats = nats_target(flags);
  const std::string name = flags.text("name", "scale-" + std::to_string(roles));
  flags.finish();
  if (binary.empty()) throw UsageError{"--multi-role: path of examples/multi-role (not built here)"};
  if (nats.monitor_port == 0) {
    throw UsageError{"--nats-monitor: the server's monitoring port is needed for /connz"};
  }
  wait_for_jetstream(nats.urls, nats.servers > 1 ? 3 : 1, Millis(60000));

  const std::string bucket = "bench-scale-" + std::to_string(roles) + "-" + std::to_string(::getpid()) + "-" +
                             std::to_string(mono_ns() % 1000000);
  auto argv = [&](const std::string& id) {
    std::vector<std::string> a = {
        binary,         "--nats-url",          nats.urls, "--bucket",        bucket, "--id", id,
        "--role-count", std::to_string(roles), "--ttl",   duration_flag(ttl)};
    if (io_threads) a.insert(a.end(), {"--io-threads", *io_threads});
    return a;
  };
  const Millis startup_limit = Millis(60000) + Millis(roles * 10);
  say(name + ": " + std::to_string(roles) + " roles, ttl " + duration_flag(ttl) + ", window " +
      duration_flag(window));

  // A leads every role.
  const std::int64_t a_spawned = real_ns();
  MultiRole a("scale-a", argv("scale-a"));
  if (!a.pump_until([&] { return static_cast<int>(a.promoted_ns.size()) >= roles; }, startup_limit)) {
    throw std::runtime_error(name + ": A led " + std::to_string(a.promoted_ns.size()) + " of " +
                             std::to_string(roles) + " roles " + a.first_error);
  }
  const double all_led_ms = ms_between(a_spawned, a.promoted_ns.back());
  say(name + ": A leads all roles " + std::to_string(all_led_ms) + " ms after it started");

  // B follows every role.
  MultiRole b("scale-b", argv("scale-b"));
  auto pump_both = [&](Millis d) {
    a.pump(d / 2);
    b.pump(d / 2);
  };
  const auto follow_deadline = std::chrono::steady_clock::now() + startup_limit;
  while (b.leader_lines < roles && std::chrono::steady_clock::now() < follow_deadline) pump_both(Millis(40));
  if (b.leader_lines < roles) {
    throw std::runtime_error(name + ": B saw the leader of " + std::to_string(b.leader_lines) + " roles");
  }
  // Past the start-up: a full heartbeat round of every role.
  const auto settle_until = std::chrono::steady_clock::now() + ttl / 5 + Millis(1000);
  while (std::chrono::steady_clock::now() < settle_until) pump_both(Millis(100));

  // The steady window.
  struct Watched {
    pid_t pid;
    std::string connection;  // its name in /connz ("" : none)
    Usage usage;
    ProcSample start;
    ConnMessages msgs_start;
  };
  std::vector<Watched> watched = {{a.process().pid(), "multi-role scale-a", {}, {}, {}},
                                  {b.process().pid(), "multi-role scale-b", {}, {}, {}}};
  if (nats.pid > 0) watched.push_back({nats.pid, "", {}, {}, {}});
  const int a_demoted = a.demoted;
  const int b_promoted = static_cast<int>(b.promoted_ns.size());
  const int errors = a.errors + b.errors;
  const std::int64_t t0 = mono_ns();
  for (auto& w : watched) {
    w.start = sample_process(w.pid).value_or(ProcSample{});
    if (!w.connection.empty()) w.msgs_start = connection_messages(nats.monitor_port, w.connection);
  }
  const auto window_end = std::chrono::steady_clock::now() + window;
  while (std::chrono::steady_clock::now() < window_end) {
    pump_both(std::min(Millis(500),
                       std::chrono::duration_cast<Millis>(window_end - std::chrono::steady_clock::now())));
    for (auto& w : watched) {
      if (auto s = sample_process(w.pid)) {
        w.usage.rss_max_mib = std::max(w.usage.rss_max_mib, s->rss_kib / 1024.0);
      }
    }
  }
  const double seconds = static_cast<double>(mono_ns() - t0) / 1e9;
  for (auto& w : watched) {
    const ProcSample end = sample_process(w.pid).value_or(ProcSample{});
    w.usage.cpu_pct = (end.cpu_seconds - w.start.cpu_seconds) / seconds * 100.0;
    w.usage.rss_mib = end.rss_kib / 1024.0;
    w.usage.threads = end.threads;
    if (!w.connection.empty()) {
      const ConnMessages m = connection_messages(nats.monitor_port, w.connection);
      w.usage.msgs_in_per_s = (m.in_msgs - w.msgs_start.in_msgs) / seconds;
      w.usage.msgs_out_per_s = (m.out_msgs - w.msgs_start.out_msgs) / seconds;
    }
  }
  // A role that changed hands during the window means the leader could not
  // keep its leases: the figures above are then not a steady state.
  const int lost_in_window = a.demoted - a_demoted;
  const int taken_in_window = static_cast<int>(b.promoted_ns.size()) - b_promoted;
  say(name + ": A " + std::to_string(watched[0].usage.cpu_pct) + " % CPU, B " +
      std::to_string(watched[1].usage.cpu_pct) +
      " % CPU; roles lost in the window: " + std::to_string(lost_in_window));

  // SIGKILL A; B takes over every role.
  const std::size_t b_before = b.promoted_ns.size();
  const std::int64_t kill_ns = real_ns();
  a.process().kill();
  b.pump_until([&] { return b.promoted_ns.size() >= b_before + static_cast<std::size_t>(roles); },
               3 * ttl + startup_limit);
  std::vector<double> moves;
  for (std::size_t i = b_before; i < b.promoted_ns.size(); ++i) {
    moves.push_back(ms_between(kill_ns, b.promoted_ns[i]));
  }
  const Summary move = summarize(moves);
  say(name + ": " + std::to_string(moves.size()) + " roles moved; the last " + std::to_string(move.max) +
      " ms after the kill");
  // B releases every role on SIGTERM; its event lines must be read
  // meanwhile, or it blocks on a full pipe.
  b.process().signal(SIGTERM);
  const std::int64_t term_ns = mono_ns();
  bool exited = false;
  const auto exit_deadline = std::chrono::steady_clock::now() + Millis(30000);
  while (!exited && std::chrono::steady_clock::now() < exit_deadline) {
    b.pump(Millis(20));
    exited = b.process().wait_exit(Millis(0));
  }
  const double release_ms = ms_between(term_ns, mono_ns());

  nlohmann::json result = {
      {"series", name},
      {"kind", "scale"},
      {"impl", "leader"},
      {"servers", nats.servers},
      {"roles", roles},
      {"ttl_ms", ttl.count()},
      {"io_threads", io_threads ? nlohmann::json(std::stoi(*io_threads)) : nlohmann::json("default")},
      {"window_s", seconds},
      {"all_led_ms", all_led_ms},
      {"leader", to_json(watched[0].usage)},
      {"follower", to_json(watched[1].usage)},
      {"roles_lost_in_window", lost_in_window},
      {"roles_taken_in_window", taken_in_window},
      {"errors_before_window", errors},
      {"moved", moves.size()},
      {"move_ms", leader::bench::to_json(move)},
      {"follower_release_ms", exited ? nlohmann::json(release_ms) : nlohmann::json(nullptr)}};
  if (watched.size() > 2) result["server"] = to_json(watched[2].usage);
  Table table({"role", "move_ms"});
  for (std::size_t i = 0; i < moves.size(); ++i) table.add({static_cast<double>(i), moves[i]});
  table.write_csv(out + "/" + name + ".csv");
  write_json(out + "/" + name + ".json", result);
  return moves.size() == static_cast<std::size_t>(roles) ? 0 : 1;
}

}  // namespace leader::bench
