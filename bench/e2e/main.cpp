// leader-bench-e2e: the end-to-end benchmarks of docs/BENCHMARKS.md.
// scripts/bench.sh runs every series and then `report`.

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <set>
#include <string>

#include "common.h"
#include "series.h"
#include "support/nats_server.h"

namespace {

constexpr const char* kUsage =
    "usage: leader-bench-e2e <command> [--flag value ...]\n"
    "\n"
    "commands (each writes <out>/<name>.csv and <out>/<name>.json):\n"
    "  graceful    stop() of the leader -> the next on_promote\n"
    "  crash       SIGKILL of the leader -> the next on_promote; gap past lease expiry\n"
    "  contention  many candidates: first leader, creates per takeover\n"
    "  scale       N roles of examples/multi-role: CPU, memory, threads, msgs/s, moves\n"
    "  report      docs/BENCHMARKS.md and the plot's gnuplot script from a results dir\n"
    "  ports N     print N free loopback TCP ports\n"
    "\n"
    "common flags:\n"
    "  --out DIR            where results go (default: .)\n"
    "  --name NAME          series name, the result files' stem\n"
    "  --servers 1|3        NATS servers started here (3: a JetStream cluster, R3 bucket)\n"
    "  --nats-url URL       use this server instead (one server)\n"
    "  --nats-monitor PORT  its monitoring port on 127.0.0.1 (scale needs it)\n"
    "  --nats-pid PID       its process, for its CPU and memory in the scale series\n"
    "  --ttl DURATION       lease (default: 1s; scale: 10s)\n"
    "graceful / crash:\n"
    "  --impl leader|etcd   whose election (default: leader)\n"
    "  --runs N             handovers (default: 100)\n"
    "  --candidates N       processes campaigning (default: 3)\n"
    "  --jitter DURATION    acquire_jitter (leader; default: the library's)\n"
    "  --candidate PATH     leader-bench-candidate (default: the one built with this)\n"
    "  --etcd-endpoint H:P  etcd's client endpoint (etcd)\n"
    "  --etcd-candidate PATH  bench/etcd/election.go, built (etcd)\n"
    "contention:\n"
    "  --candidates N       (default: 100)  --rounds N (default: 10)  --takeovers N (default: 10)\n"
    "scale:\n"
    "  --roles N            (default: 1000)  --window DURATION (default: 30s)\n"
    "  --io-threads N       passed to multi-role  --multi-role PATH\n"
    "report:\n"
    "  --results DIR        --out FILE (BENCHMARKS.md)  --plot-script FILE  --png FILE\n"
    "  --analysis FILE      markdown included as the analysis section\n";

}  // namespace

int main(int argc, char** argv) {
  using leader::bench::Flags;
  using leader::bench::UsageError;
  namespace bench = leader::bench;
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  // The candidates inherit this: their transitions are what is measured,
  // not logged.
  setenv("LEADER_LOG_LEVEL", "error", /*overwrite=*/0);
  const std::string command = argv[1];
  try {
    if (command == "ports") {
      const std::size_t n = argc > 2 ? static_cast<std::size_t>(std::atoi(argv[2])) : 1;
      std::set<int> ports;  // distinct, though each was free on its own
      while (ports.size() < n) ports.insert(leader::testing::free_port());
      for (int port : ports) std::printf("%d\n", port);
      return 0;
    }
    Flags flags(argc, argv, 2);
    if (command == "graceful") return bench::run_graceful(flags);
    if (command == "crash") return bench::run_crash(flags);
    if (command == "contention") return bench::run_contention(flags);
    if (command == "scale") return bench::run_scale(flags);
    if (command == "report") return bench::run_report(flags);
    throw UsageError{"unknown command '" + command + "'"};
  } catch (const UsageError& e) {
    std::fprintf(stderr, "leader-bench-e2e: %s\n\n%s", e.message.c_str(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "leader-bench-e2e %s: %s\n", command.c_str(), e.what());
    return 1;
  }
}
