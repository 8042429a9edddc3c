// control-manager: a service whose reconcile loop must run on exactly one
// instance at a time. Every instance campaigns for the role; the one that
// leads runs the loop until its term ends. Each transition is printed as one
// machine-readable line (scripts/demo.sh and the integration tests parse it):
//
//   <unix_time_ns> id=<id> event=<event> key=value...
//
// Events: started, promoted term=<token>, demoted reason=<reason>,
// leader leader=<id|none|unknown> term=<t>, error code=<n> msg="<text>",
// reconcile term=<token> n=<count>, metrics addr=<host:port> (the /metrics
// endpoint listens; the actual port when 0 was asked for), stopped; and for
// the fenced writes: write token=<epoch.revision> n=<count>,
// fenced token=<mine> highest=<stored>, write_error token=<mine> msg="<text>",
// write_pending token=<mine> delay_ms=<d> (only with --write-delay).
//
// Fencing: each reconcile iteration writes its result to a state key (the
// role name, in the bucket --state-bucket) the way a downstream resource
// should be written: the value carries the writer's fencing token, and a
// write is accepted only if the key holds no higher token, atomically by
// compare-and-swap on the key's revision (fenced_store.h). The loop checks
// Term::lost() before each write (the normal path); the token check is the
// safety net for a leader that was paused between that check and its write
// (GC pause, SIGSTOP, a slow disk) while another instance took over: its
// write is rejected ("fenced") and it stops writing for that term.

#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>

#include <prometheus/exposer.h>
#include <prometheus/registry.h>

#include "fenced_store.h"
#include "leader/connection_flags.h"
#include "leader/leader.h"

namespace {

constexpr const char* kUsage =
    "usage: control-manager [flags]\n"
    "\n"
    "Runs a simulated reconcile loop only while this instance leads the role.\n"
    "Each iteration writes its result to a state key, fenced by the term's token:\n"
    "a write carrying a lower token than the key's is rejected (event=fenced)\n"
    "and the loop stops writing until the next term.\n"
    "\n"
    "flags:\n"
    "  --bucket NAME            KV bucket holding the roles (default: leaders)\n"
    "  --role NAME              role to lead (default: control-manager)\n"
    "  --id ID                  this instance's id (default: <hostname>-<pid>)\n"
    "  --ttl DURATION           lease length, e.g. 10s, 3s, 500ms (default: 10s)\n"
    "  --heartbeat DURATION     renewal interval (default: derived from the TTL)\n"
    "  --work-interval DURATION reconcile period while leading (default: 200ms)\n"
    "  --state-bucket NAME      KV bucket of the fenced state key (the key is the\n"
    "                           role name); created if missing\n"
    "                           (default: <bucket>-state)\n"
    "  --write-delay DURATION   sleep between the Term::lost() check and the\n"
    "                           fenced write of each iteration, to widen the window\n"
    "                           in which a paused leader may become stale; not cut\n"
    "                           short by a demotion or shutdown (default: 0)\n"
    "  --metrics-addr HOST:PORT serve Prometheus metrics at http://HOST:PORT/metrics\n"
    "                           (port 0: any free port; default: off)\n"
    "  --help                   print this help and exit\n"
    "\n"
    "connection flags (server, credentials, TLS):\n";

constexpr const char* kUsageTail =
    "\n"
    "Exit status: 0 after SIGINT/SIGTERM (leadership released), 1 when the\n"
    "connection or the election cannot start, 2 for bad flags or configuration.\n";

void print_usage(std::FILE* out) {
  std::fputs(kUsage, out);
  std::fputs(leader::connection_flags_help(), out);
  std::fputs(kUsageTail, out);
}

struct Options {
  /// --nats-url, credentials and TLS (leader/connection_flags.h).
  leader::ConnectionOptions connection;
  std::string bucket = "leaders";
  std::string role = "control-manager";
  std::string id;
  std::chrono::milliseconds ttl{10000};
  std::chrono::milliseconds heartbeat{0};
  std::chrono::milliseconds work_interval{200};
  std::string state_bucket;  // empty: <bucket>-state
  std::chrono::milliseconds write_delay{0};
  std::string metrics_addr;  // empty: no metrics
};

/// A bad command line: the message is printed with the usage, exit 2.
struct UsageError {
  std::string message;
};

std::string default_instance_id() {
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') {
    std::snprintf(host, sizeof(host), "localhost");
  }
  return std::string(host) + "-" + std::to_string(getpid());
}

bool valid_bucket_name(const std::string& name) {
  if (name.empty()) return false;
  for (char c : name) {
    if (std::isalnum(static_cast<unsigned char>(c)) == 0 && c != '-' && c != '_') return false;
  }
  return true;
}

Options parse_args(int argc, char** argv) {
  Options options;
  try {
    options.connection = leader::consume_connection_flags(argc, argv);
  } catch (const leader::ConfigError& e) {
    throw UsageError{e.what()};
  }
  bool id_given = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      print_usage(stdout);
      std::exit(0);
    }
    if (arg.rfind("--", 0) != 0) throw UsageError{"unexpected argument '" + arg + "'"};
    std::string name = arg;
    std::optional<std::string> value;
    if (auto eq = arg.find('='); eq != std::string::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
    }
    auto take_value = [&]() -> std::string {
      if (value) return *value;
      if (i + 1 >= argc) throw UsageError{"flag " + name + " needs a value"};
      return argv[++i];
    };
    auto take_duration = [&](const char* field) {
      std::string text = take_value();
      try {
        return leader::parse_duration(text, field);
      } catch (const leader::ConfigError& e) {
        throw UsageError{name + ": " + e.what()};
      }
    };
    if (name == "--bucket") {
      options.bucket = take_value();
    } else if (name == "--role") {
      options.role = take_value();
    } else if (name == "--id") {
      options.id = take_value();
      id_given = true;
    } else if (name == "--ttl") {
      options.ttl = take_duration("ttl");
    } else if (name == "--heartbeat") {
      options.heartbeat = take_duration("heartbeat_interval");
    } else if (name == "--work-interval") {
      options.work_interval = take_duration("work-interval");
      if (options.work_interval.count() <= 0) throw UsageError{"--work-interval must be above 0"};
    } else if (name == "--metrics-addr") {
      options.metrics_addr = take_value();
      const auto colon = options.metrics_addr.rfind(':');
      if (colon == std::string::npos || colon == 0 || colon + 1 == options.metrics_addr.size()) {
        throw UsageError{"--metrics-addr must be HOST:PORT, e.g. 127.0.0.1:9464"};
      }
    } else if (name == "--state-bucket") {
      options.state_bucket = take_value();
      if (!valid_bucket_name(options.state_bucket)) {
        throw UsageError{"--state-bucket: '" + options.state_bucket +
                         "' is not a bucket name (letters, digits, '-' and '_')"};
      }
    } else if (name == "--write-delay") {
      options.write_delay = take_duration("write-delay");
      if (options.write_delay.count() < 0) throw UsageError{"--write-delay must not be negative"};
    } else {
      throw UsageError{"unknown flag '" + name + "'"};
    }
  }
  if (!id_given) options.id = default_instance_id();
  if (options.state_bucket.empty()) options.state_bucket = options.bucket + "-state";
  return options;
}

/// Writes one event line at a time, timestamped with CLOCK_REALTIME (so
/// lines of several processes can be compared), flushed at once.
class EventLog {
 public:
  explicit EventLog(std::string id) : id_(std::move(id)) {}

  void emit(const std::string& event, const std::string& fields = {}) {
    std::lock_guard<std::mutex> lock(mu_);
    // Taken under the lock so the lines of one process are in time order.
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    const long long ns = static_cast<long long>(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
    std::fprintf(stdout, "%lld id=%s event=%s%s%s\n", ns, id_.c_str(), event.c_str(),
                 fields.empty() ? "" : " ", fields.c_str());
    std::fflush(stdout);
  }

 private:
  std::mutex mu_;
  std::string id_;
};

/// Quotes `text` so a line stays one line and `msg="..."` stays parseable.
std::string quoted(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        out += c;
    }
  }
  return out + "\"";
}

/// The leader-only work: a loop that runs on its own thread for one term.
/// It checks `Term::lost()` every interval, so it ends by itself when the
/// lease runs out even if `on_demote` is late; `stop()` ends it at once
/// (after a write in progress, and after a --write-delay in progress).
/// Each iteration writes its result to the fenced state key.
class Reconciler {
 public:
  Reconciler(EventLog& log, std::chrono::milliseconds interval, std::chrono::milliseconds write_delay)
      : log_(log), interval_(interval), write_delay_(write_delay) {}
  ~Reconciler() { stop(); }
  Reconciler(const Reconciler&) = delete;
  Reconciler& operator=(const Reconciler&) = delete;

  /// The state key to write to; set before the first `start()`.
  void set_store(control_manager::FencedStore* store) { store_ = store; }

  void start(const leader::Term& term) {
    stop();
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_requested_ = false;
    }
    thread_ = std::thread([this, term] { run(term); });
  }

  /// Returns once the loop has ended: no leader-only work runs after it.
  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_requested_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 private:
  void run(const leader::Term& term) {
    std::uint64_t n = 0;
    while (true) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        if (cv_.wait_for(lock, interval_, [this] { return stop_requested_; })) return;
      }
      if (term.lost()) return;
      ++n;
      if (n % 5 == 0) {
        log_.emit("reconcile", "term=" + std::to_string(term.token()) + " n=" + std::to_string(n));
      }
      if (!write_state(term)) return;
    }
  }

  /// Writes this iteration's result to the state key, fenced by the term's
  /// token. Returns false when the write was fenced: this term is stale
  /// (another instance leads with a higher token), so stop writing.
  bool write_state(const leader::Term& term) {
    if (store_ == nullptr) return true;
    const leader::FencingToken token = term.fencing_token();
    const std::string mine = token.to_string();
    if (write_delay_.count() > 0) {
      // Deliberately not interruptible: it stands for a pause of the whole
      // process (GC, SIGSTOP, swapping) right after the lost() check.
      log_.emit("write_pending", "token=" + mine + " delay_ms=" + std::to_string(write_delay_.count()));
      std::this_thread::sleep_for(write_delay_);
    }
    const control_manager::WriteOutcome outcome = store_->write(token);
    switch (outcome.kind) {
      case control_manager::WriteOutcome::Kind::written:
        log_.emit("write", "token=" + mine + " n=" + std::to_string(outcome.n));
        return true;
      case control_manager::WriteOutcome::Kind::fenced:
        log_.emit("fenced", "token=" + mine + " highest=" + outcome.highest.to_string());
        return false;
      case control_manager::WriteOutcome::Kind::failed:
        break;
    }
    // Not written (or unknown); the next iteration reads and tries again.
    log_.emit("write_error", "token=" + mine + " msg=" + quoted(outcome.error));
    return true;
  }

  EventLog& log_;
  const std::chrono::milliseconds interval_;
  const std::chrono::milliseconds write_delay_;
  control_manager::FencedStore* store_ = nullptr;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_requested_ = false;
  std::thread thread_;
};

int run(const Options& options, const sigset_t& stop_signals) {
  EventLog log(options.id);
  // Declared before the reconciler, so it outlives the reconcile thread.
  std::unique_ptr<control_manager::FencedStore> store;
  Reconciler reconciler(log, options.work_interval, options.write_delay);

  leader::Config config;
  config.bucket = options.bucket;
  config.role = options.role;
  config.instance_id = options.id;
  config.ttl = options.ttl;
  config.heartbeat_interval = options.heartbeat;
  // Bad configuration is reported before any connection attempt.
  config.validate();

  // Optional /metrics endpoint. The election reports to the registry only
  // when one is passed; without --metrics-addr it creates no metrics at all.
  std::shared_ptr<prometheus::Registry> registry;
  std::unique_ptr<prometheus::Exposer> exposer;
  if (!options.metrics_addr.empty()) {
    registry = std::make_shared<prometheus::Registry>();
    try {
      exposer = std::make_unique<prometheus::Exposer>(options.metrics_addr, 1);
    } catch (const std::exception& e) {
      throw std::runtime_error("cannot serve metrics at " + options.metrics_addr + ": " + e.what());
    }
    exposer->RegisterCollectable(registry);
    const auto ports = exposer->GetListeningPorts();
    const std::string host = options.metrics_addr.substr(0, options.metrics_addr.rfind(':'));
    log.emit("metrics", "addr=" + host + ":" + std::to_string(ports.empty() ? 0 : ports.front()));
  }

  leader::Callbacks callbacks;
  callbacks.on_promote = [&](const leader::Term& term) {
    log.emit("promoted", "term=" + std::to_string(term.token()));
    reconciler.start(term);
  };
  callbacks.on_demote = [&](leader::DemoteReason reason) {
    // The library releases the key only after this returns: stop the work first.
    reconciler.stop();
    log.emit("demoted", std::string("reason=") + leader::to_string(reason));
  };
  callbacks.on_leader_change = [&](const std::optional<leader::LeaderInfo>& info) {
    std::string who = "none";
    std::uint64_t term = 0;
    if (info) {
      who = info->instance_id.empty() ? "unknown" : info->instance_id;
      term = info->term;
    }
    log.emit("leader", "leader=" + who + " term=" + std::to_string(term));
  };
  callbacks.on_error = [&](const leader::ErrorInfo& error) {
    log.emit("error", "code=" + std::to_string(error.code.value()) + " msg=" + quoted(error.message));
  };

  leader::ConnectionOptions connection_options = options.connection;
  connection_options.name = "control-manager " + options.id;
  auto connection = leader::Connection::connect(connection_options);

  // The downstream resource the reconcile loop writes to (its own
  // connection and bucket; see fenced_store.h).
  control_manager::FencedStore::Options store_options;
  store_options.url = options.connection.url;
  store_options.security = options.connection;
  store_options.name = "control-manager " + options.id + " state";
  store_options.bucket = options.state_bucket;
  store_options.key = config.role;
  store_options.holder = options.id;
  store = control_manager::FencedStore::open(store_options);
  reconciler.set_store(store.get());

  leader::Telemetry telemetry;
  telemetry.registry = registry;
  leader::Election election(connection, config, callbacks, telemetry);
  election.start();
  const leader::Config& resolved = election.config();
  log.emit("started", "bucket=" + resolved.bucket + " role=" + resolved.role +
                          " ttl_ms=" + std::to_string(resolved.ttl.count()) +
                          " heartbeat_ms=" + std::to_string(resolved.heartbeat_interval.count()));

  int signal_number = 0;
  while (sigwait(&stop_signals, &signal_number) != 0) {
  }
  election.stop();
  log.emit("stopped", std::string("signal=") + (signal_number == SIGINT ? "SIGINT" : "SIGTERM"));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // A shell starts background jobs with SIGINT ignored; sigwait() needs the
  // default disposition to see it.
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  // Blocked before any thread exists, so every thread inherits the mask and
  // only the sigwait() in run() sees these signals: no work in a handler.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  // A reader that went away must not kill us in the middle of a release.
  signal(SIGPIPE, SIG_IGN);

  Options options;
  try {
    options = parse_args(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "control-manager: %s\n\n", e.message.c_str());
    print_usage(stderr);
    return 2;
  }

  try {
    return run(options, stop_signals);
  } catch (const leader::ConfigError& e) {
    std::fprintf(stderr, "control-manager: %s\n", e.what());
    return 2;
  } catch (const leader::Error& e) {
    std::fprintf(stderr, "control-manager: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "control-manager: %s\n", e.what());
    return 1;
  }
}
