// leader-bench-candidate: one leader::Election in a process of its own, for
// the end-to-end harness (leader-bench-e2e), which starts several, stops or
// SIGKILLs the leader and times the handover. bench/etcd/election.go speaks
// the same protocol over an etcd election.
//
// stdout, one line per event, stamped with CLOCK_MONOTONIC (comparable across
// the processes of one host): `<event> <ns> key=value...`
//   ready <ns>                       start() returned: campaigning
//   promoted <ns> term=<token>       on_promote (stamped on entry)
//   demoted <ns> reason=<reason>     on_demote
//   leader <ns> id=<id|none>         on_leader_change
//   renewed <ns> sent=<ns>           a renewal was acknowledged; `sent` is its
//                                    send time, from which the lease runs
//   stop_called <ns>                 right before stop() (release)
//   stopped <ns>                     stop() returned
//   started <ns>                     start() returned again
//   error <ns> msg=<text>            on_error, or a command that failed
// stdin, one command per line: `stop`, `start`, `quit` (EOF is a quit).

#include <time.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "leader/leader.h"

namespace {

constexpr const char* kUsage =
    "usage: leader-bench-candidate --nats-url URL --role ROLE --id ID [flags]\n"
    "  --bucket NAME        KV bucket (default: bench)\n"
    "  --ttl DURATION       lease (default: 1s)\n"
    "  --jitter DURATION    acquire_jitter (default: the library's, 5ms)\n"
    "  --replicas N         replicas when the bucket is created (default: 1)\n"
    "  --io-threads N       the connection's I/O threads (default: the library's)\n";

std::int64_t mono_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}

/// One line at a time, flushed at once: the harness reads them as they come.
class Out {
 public:
  void line(const char* event, std::int64_t ns, const std::string& fields = {}) {
    std::lock_guard<std::mutex> lock(mu_);
    std::fprintf(stdout, "%s %lld%s%s\n", event, static_cast<long long>(ns), fields.empty() ? "" : " ",
                 fields.c_str());
    std::fflush(stdout);
  }

 private:
  std::mutex mu_;
};

struct Options {
  leader::ConnectionOptions connection;
  leader::Config config;
};

Options parse_args(int argc, char** argv) {
  Options o;
  o.config.bucket = "bench";
  o.config.ttl = std::chrono::seconds(1);
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (i + 1 >= argc) throw std::invalid_argument(flag + " needs a value");
    const std::string value = argv[++i];
    if (flag == "--nats-url") {
      o.connection.url = value;
    } else if (flag == "--bucket") {
      o.config.bucket = value;
    } else if (flag == "--role") {
      o.config.role = value;
    } else if (flag == "--id") {
      o.config.instance_id = value;
    } else if (flag == "--ttl") {
      o.config.ttl = leader::parse_duration(value, "ttl");
    } else if (flag == "--jitter") {
      o.config.acquire_jitter = leader::parse_duration(value, "acquire_jitter");
    } else if (flag == "--replicas") {
      o.config.replicas = std::stoi(value);
    } else if (flag == "--io-threads") {
      o.connection.io_threads = std::stoi(value);
    } else {
      throw std::invalid_argument("unknown flag " + flag);
    }
  }
  o.connection.name = "bench-candidate " + o.config.instance_id;
  // A hung server is noticed after about two pings: keep that inside the lease.
  o.connection.ping_interval = std::min(o.connection.ping_interval, o.config.ttl / 4);
  return o;
}

/// Prints a `renewed` line for each acknowledged renewal while leading. It
/// polls the election's status every millisecond, only while leading.
class RenewalReporter {
 public:
  RenewalReporter(const leader::Election& election, Out& out)
      : election_(election), out_(out), thread_([this] { run(); }) {}
  ~RenewalReporter() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      quit_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  RenewalReporter(const RenewalReporter&) = delete;
  RenewalReporter& operator=(const RenewalReporter&) = delete;

  void set_leading(bool leading) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      leading_ = leading;
    }
    cv_.notify_all();
  }

 private:
  void run() {
    std::optional<std::chrono::steady_clock::time_point> last;
    std::unique_lock<std::mutex> lock(mu_);
    while (!quit_) {
      if (!leading_) {
        cv_.wait(lock, [this] { return quit_ || leading_; });
        continue;
      }
      lock.unlock();
      const leader::Status status = election_.status();
      if (status.state == leader::ElectionState::leading && status.last_renewal &&
          status.last_renewal != last) {
        // steady_clock is CLOCK_MONOTONIC on Linux: the harness compares it
        // with the other processes' stamps.
        last = status.last_renewal;
        out_.line("renewed", mono_ns(), "sent=" + std::to_string(last->time_since_epoch().count()));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      lock.lock();
    }
  }

  const leader::Election& election_;
  Out& out_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool leading_ = false;
  bool quit_ = false;
  std::thread thread_;  // last: starts once the members above exist
};

int run(const Options& options) {
  Out out;
  auto connection = leader::Connection::connect(options.connection);
  // Set once the reporter exists (it needs the election); the callbacks run
  // on the election's thread.
  std::atomic<RenewalReporter*> reporter{nullptr};
  leader::Callbacks callbacks;
  callbacks.on_promote = [&](const leader::Term& term) {
    const std::int64_t now = mono_ns();
    out.line("promoted", now, "term=" + std::to_string(term.token()));
    if (RenewalReporter* r = reporter.load()) r->set_leading(true);
  };
  callbacks.on_demote = [&](leader::DemoteReason reason) {
    if (RenewalReporter* r = reporter.load()) r->set_leading(false);
    out.line("demoted", mono_ns(), std::string("reason=") + leader::to_string(reason));
  };
  callbacks.on_leader_change = [&](const std::optional<leader::LeaderInfo>& who) {
    out.line("leader", mono_ns(), "id=" + (who ? who->instance_id : std::string("none")));
  };
  callbacks.on_error = [&](const leader::ErrorInfo& error) {
    out.line("error", mono_ns(), "msg=" + error.message);
  };
  leader::Election election(connection, options.config, callbacks);
  RenewalReporter renewals(election, out);
  reporter.store(&renewals);
  election.start();
  out.line("ready", mono_ns());

  std::string command;
  while (std::getline(std::cin, command)) {
    try {
      if (command == "stop") {
        out.line("stop_called", mono_ns());
        election.stop();
        out.line("stopped", mono_ns());
      } else if (command == "start") {
        election.start();
        out.line("started", mono_ns());
      } else if (command == "quit") {
        break;
      } else {
        out.line("error", mono_ns(), "msg=unknown command " + command);
      }
    } catch (const std::exception& e) {
      out.line("error", mono_ns(), std::string("msg=") + e.what());
    }
  }
  election.stop();
  reporter.store(nullptr);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  try {
    options = parse_args(argc, argv);
    options.config.validate();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "leader-bench-candidate: %s\n\n%s", e.what(), kUsage);
    return 2;
  }
  try {
    return run(options);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "leader-bench-candidate: %s\n", e.what());
    return 1;
  }
}
