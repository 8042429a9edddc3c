// multi-role: one process campaigns for many roles through one
// leader::RoleManager over one connection. Several processes share the roles;
// each role is led by one of them at a time. The work of every role this
// process leads is done by one worker thread (never a thread per role), which
// checks the role's Term before each unit of work. Each transition is printed
// as one machine-readable line on stdout (the integration tests parse it):
//
//   <unix_time_ns> id=<id> event=<event> key=value...
//
// Events: started roles=<count>, promoted role=<r> term=<token>,
// demoted role=<r> reason=<reason>, leader role=<r> leader=<id|none|unknown>,
// error role=<r> code=<n> msg="<text>" (a role's on_error), added role=<r>,
// removed role=<r>, status leading=<n> roles=<m>, stopped; and for a bad
// --control-stdin command: error msg="<text>", or error role=<r> msg="<text>"
// when an add or a remove failed.
//
// With --table-interval the table of roles is printed between the events; its
// lines carry no timestamp, so parsers skip them.

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "leader/connection_flags.h"
#include "leader/leader.h"

namespace {

constexpr const char* kUsage =
    "usage: multi-role [flags]\n"
    "\n"
    "Campaigns for several roles through one leader::RoleManager over one\n"
    "connection. One worker thread does a unit of simulated work every\n"
    "--work-interval for each role this instance leads.\n"
    "\n"
    "flags:\n"
    "  --bucket NAME             KV bucket holding the roles (default: leaders)\n"
    "  --id ID                   this instance's id (default: <hostname>-<pid>)\n"
    "  --ttl DURATION            lease length, e.g. 10s, 3s, 500ms (default: 10s)\n"
    "  --heartbeat DURATION      renewal interval (default: derived from the TTL)\n"
    "  --roles A,B,C             the roles to campaign for\n"
    "                            (default: scheduler,compactor,notifier)\n"
    "  --role-count N            campaign for N numbered roles instead: <prefix>000,\n"
    "                            <prefix>001, ... (at least 3 digits; 0: none)\n"
    "  --role-prefix P           prefix of the numbered roles (default: role-)\n"
    "  --work-interval DURATION  period of the work while leading (default: 200ms)\n"
    "  --table-interval DURATION print the table of roles this often; 0: never\n"
    "                            (default: 2s when stdout is a terminal, else 0)\n"
    "  --callback-threads N      threads running the callbacks of all roles,\n"
    "                            1..64 (default: 2)\n"
    "  --io-threads N            threads running the KV calls of all roles on\n"
    "                            the connection, 1..64 (default: the library's)\n"
    "  --control-stdin           read commands from stdin, one per line:\n"
    "                            add ROLE, remove ROLE, status (EOF does not stop)\n"
    "  --help                    print this help and exit\n"
    "\n"
    "connection flags (server, credentials, TLS):\n";

constexpr const char* kUsageTail =
    "\n"
    "Exit status: 0 after SIGINT/SIGTERM (every role released), 1 when the\n"
    "connection or a role cannot start, 2 for bad flags or configuration.\n";

void print_usage(std::FILE* out) {
  std::fputs(kUsage, out);
  std::fputs(leader::connection_flags_help(), out);
  std::fputs(kUsageTail, out);
}

struct Options {
  /// --nats-url, credentials and TLS (leader/connection_flags.h).
  leader::ConnectionOptions connection;
  std::string bucket = "leaders";
  std::string id;
  std::chrono::milliseconds ttl{10000};
  std::chrono::milliseconds heartbeat{0};
  std::vector<std::string> roles;
  std::chrono::milliseconds work_interval{200};
  std::chrono::milliseconds table_interval{0};
  int callback_threads = 2;
  int io_threads = 0;  // 0: the library's default
  bool control_stdin = false;
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

int parse_int(const std::string& flag, const std::string& text, long min, long max) {
  errno = 0;
  char* end = nullptr;
  const long value = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno != 0 || value < min || value > max) {
    throw UsageError{flag + ": '" + text + "' is not a whole number in " + std::to_string(min) + ".." +
                     std::to_string(max)};
  }
  return static_cast<int>(value);
}

std::vector<std::string> split_roles(const std::string& text) {
  std::vector<std::string> roles;
  std::set<std::string> seen;
  std::size_t begin = 0;
  while (true) {
    const std::size_t comma = text.find(',', begin);
    std::string role = text.substr(begin, comma == std::string::npos ? std::string::npos : comma - begin);
    if (role.empty()) throw UsageError{"--roles: empty role name in '" + text + "'"};
    if (!seen.insert(role).second) throw UsageError{"--roles: '" + role + "' is given twice"};
    roles.push_back(std::move(role));
    if (comma == std::string::npos) return roles;
    begin = comma + 1;
  }
}

/// <prefix>000 .. <prefix><count - 1>, zero-padded to at least 3 digits.
std::vector<std::string> numbered_roles(const std::string& prefix, int count) {
  const int width = std::max<int>(3, static_cast<int>(std::to_string(std::max(count - 1, 0)).size()));
  std::vector<std::string> roles;
  for (int i = 0; i < count; ++i) {
    const std::string number = std::to_string(i);
    std::string role = prefix;
    role.append(width - number.size(), '0').append(number);
    roles.push_back(std::move(role));
  }
  return roles;
}

Options parse_args(int argc, char** argv) {
  Options options;
  try {
    options.connection = leader::consume_connection_flags(argc, argv);
  } catch (const leader::ConfigError& e) {
    throw UsageError{e.what()};
  }
  std::optional<std::string> id;
  std::optional<std::vector<std::string>> roles;
  std::optional<int> role_count;
  std::optional<std::string> role_prefix;
  std::optional<std::chrono::milliseconds> table_interval;
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
    } else if (name == "--id") {
      id = take_value();
    } else if (name == "--ttl") {
      options.ttl = take_duration("ttl");
    } else if (name == "--heartbeat") {
      options.heartbeat = take_duration("heartbeat_interval");
    } else if (name == "--roles") {
      roles = split_roles(take_value());
    } else if (name == "--role-count") {
      role_count = parse_int(name, take_value(), 0, 100000);
    } else if (name == "--role-prefix") {
      role_prefix = take_value();
    } else if (name == "--work-interval") {
      options.work_interval = take_duration("work-interval");
      if (options.work_interval.count() <= 0) throw UsageError{"--work-interval must be above 0"};
    } else if (name == "--table-interval") {
      table_interval = take_duration("table-interval");
    } else if (name == "--callback-threads") {
      options.callback_threads = parse_int(name, take_value(), 1, 64);
    } else if (name == "--io-threads") {
      options.io_threads = parse_int(name, take_value(), 1, 64);
    } else if (name == "--control-stdin") {
      if (value) throw UsageError{"--control-stdin takes no value"};
      options.control_stdin = true;
    } else {
      throw UsageError{"unknown flag '" + arg + "'"};
    }
  }
  if (roles && role_count) throw UsageError{"--roles and --role-count exclude each other"};
  if (role_prefix && !role_count) throw UsageError{"--role-prefix needs --role-count"};
  if (roles) {
    options.roles = std::move(*roles);
  } else if (role_count) {
    options.roles = numbered_roles(role_prefix.value_or("role-"), *role_count);
  } else {
    options.roles = {"scheduler", "compactor", "notifier"};
  }
  options.id = id ? *id : default_instance_id();
  // A live table helps a person watching, not a program reading the events.
  options.table_interval = table_interval.value_or(
      isatty(STDOUT_FILENO) != 0 ? std::chrono::milliseconds{2000} : std::chrono::milliseconds{0});
  return options;
}

/// Writes one event line (or the table) at a time, flushed at once. Event
/// lines are timestamped with CLOCK_REALTIME, so the lines of several
/// processes can be compared.
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

  /// Writes `lines` (each ending in '\n') with no event line in between.
  void write(const std::string& lines) {
    std::lock_guard<std::mutex> lock(mu_);
    std::fputs(lines.c_str(), stdout);
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

/// The leader-only work of every role. `on_promote` hands the role's term in,
/// `on_demote` takes it out, and one thread calls `tick()`. A unit of a role's
/// work is done only while its term is not lost(), under the lock `demoted()`
/// takes: no unit of a role runs once its `on_demote` has returned.
class Work {
 public:
  void promoted(const std::string& role, const leader::Term& term) {
    std::lock_guard<std::mutex> lock(mu_);
    terms_.insert_or_assign(role, term);
  }

  void demoted(const std::string& role) {
    std::lock_guard<std::mutex> lock(mu_);
    terms_.erase(role);
  }

  /// One unit of work for each role in `leading` whose term is current. The
  /// lock is taken per role, so a callback waits for one unit at most.
  void tick(const std::vector<std::string>& leading) {
    for (const std::string& role : leading) {
      std::lock_guard<std::mutex> lock(mu_);
      auto term = terms_.find(role);
      if (term == terms_.end() || term->second.lost()) continue;
      ++units_[role];
    }
  }

  /// Units of work done for `role` by this process, over all its terms.
  std::uint64_t units(const std::string& role) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = units_.find(role);
    return it == units_.end() ? 0 : it->second;
  }

 private:
  mutable std::mutex mu_;
  std::map<std::string, leader::Term> terms_;
  std::map<std::string, std::uint64_t> units_;
};

/// Calls `fn` every `interval` on a thread of its own until `stop()`.
class Periodic {
 public:
  Periodic(std::chrono::milliseconds interval, std::function<void()> fn)
      : interval_(interval), fn_(std::move(fn)), thread_([this] { run(); }) {}
  ~Periodic() { stop(); }
  Periodic(const Periodic&) = delete;
  Periodic& operator=(const Periodic&) = delete;

  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_requested_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 private:
  void run() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!cv_.wait_for(lock, interval_, [this] { return stop_requested_; })) {
      lock.unlock();
      fn_();
      lock.lock();
    }
  }

  const std::chrono::milliseconds interval_;
  const std::function<void()> fn_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_requested_ = false;
  std::thread thread_;  // last: starts once the members above exist
};

/// Reads lines from stdin on a thread of its own and hands each to `handle`,
/// until EOF or `stop()`. `stop()` wakes a blocked read through a pipe.
class StdinReader {
 public:
  explicit StdinReader(std::function<void(const std::string&)> handle) : handle_(std::move(handle)) {
    if (pipe(wake_) != 0) throw std::runtime_error("pipe() failed");
    thread_ = std::thread([this] { run(); });
  }
  ~StdinReader() { stop(); }
  StdinReader(const StdinReader&) = delete;
  StdinReader& operator=(const StdinReader&) = delete;

  void stop() {
    if (!thread_.joinable()) return;
    const char byte = 0;
    while (::write(wake_[1], &byte, 1) < 0 && errno == EINTR) {
    }
    thread_.join();
    close(wake_[0]);
    close(wake_[1]);
  }

 private:
  void run() {
    std::string buffer;
    char chunk[4096];
    while (true) {
      pollfd fds[2] = {{STDIN_FILENO, POLLIN, 0}, {wake_[0], POLLIN, 0}};
      if (poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        return;
      }
      if (fds[1].revents != 0) return;
      if (fds[0].revents == 0) continue;
      const ssize_t n = read(STDIN_FILENO, chunk, sizeof(chunk));
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) {
        // EOF (or stdin unusable): stop reading; the process keeps running.
        if (!buffer.empty()) handle_(buffer);
        return;
      }
      buffer.append(chunk, static_cast<std::size_t>(n));
      for (auto eol = buffer.find('\n'); eol != std::string::npos; eol = buffer.find('\n')) {
        const std::string line = buffer.substr(0, eol);
        buffer.erase(0, eol + 1);
        handle_(line);
      }
    }
  }

  const std::function<void(const std::string&)> handle_;
  int wake_[2] = {-1, -1};
  std::thread thread_;
};

/// The callbacks of one role. Each is short: the callbacks of all roles share
/// `--callback-threads` threads.
leader::Callbacks role_callbacks(const std::string& role, EventLog& log, Work& work) {
  leader::Callbacks callbacks;
  callbacks.on_promote = [role, &log, &work](const leader::Term& term) {
    log.emit("promoted", "role=" + role + " term=" + std::to_string(term.token()));
    work.promoted(role, term);
  };
  callbacks.on_demote = [role, &log, &work](leader::DemoteReason reason) {
    // The library releases the key only after this returns: stop the work first.
    work.demoted(role);
    log.emit("demoted", "role=" + role + " reason=" + leader::to_string(reason));
  };
  callbacks.on_leader_change = [role, &log](const std::optional<leader::LeaderInfo>& info) {
    const std::string who = !info ? "none" : info->instance_id.empty() ? "unknown" : info->instance_id;
    log.emit("leader", "role=" + role + " leader=" + who);
  };
  callbacks.on_error = [role, &log](const leader::ErrorInfo& error) {
    log.emit("error", "role=" + role + " code=" + std::to_string(error.code.value()) +
                          " msg=" + quoted(error.message));
  };
  return callbacks;
}

/// The table of roles: one row per role, `*` where this process leads, and a
/// summary line.
std::string render_table(const std::vector<leader::RoleStatus>& roles, const Work& work) {
  std::vector<std::vector<std::string>> rows = {{"", "ROLE", "LEADER", "TERM", "LEASE_MS", "UNITS"}};
  std::size_t leading = 0;
  for (const leader::RoleStatus& role : roles) {
    const std::uint64_t term = role.leading ? role.term : role.status.leader ? role.status.leader->term : 0;
    std::string who = "-";
    if (role.leader_id) who = role.leader_id->empty() ? "unknown" : *role.leader_id;
    rows.push_back({role.leading ? "*" : "", role.role, who, term == 0 ? "-" : std::to_string(term),
                    role.leader_id ? std::to_string(role.lease_remaining.count()) : "-",
                    std::to_string(work.units(role.role))});
    if (role.leading) ++leading;
  }
  std::vector<std::size_t> widths(rows.front().size(), 1);
  for (const auto& row : rows) {
    for (std::size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (std::size_t i = 0; i < row.size(); ++i) {
      line += row[i] + std::string(widths[i] - row[i].size() + 2, ' ');
    }
    out += line.substr(0, line.find_last_not_of(' ') + 1) + "\n";
  }
  return out + "leading " + std::to_string(leading) + " of " + std::to_string(roles.size()) + " roles\n";
}

/// The --control-stdin commands: `add ROLE`, `remove ROLE`, `status`.
/// `close()` waits for a command in progress and turns later ones away, so
/// none runs during or after the shutdown.
class Commands {
 public:
  Commands(EventLog& log, Work& work, leader::RoleManager& manager)
      : log_(log), work_(work), manager_(manager) {}

  void handle(const std::string& line) {
    std::istringstream words(line);
    std::string command;
    std::string role;
    std::string extra;
    words >> command >> role >> extra;
    if (command.empty()) return;
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    if (command == "status" && role.empty()) {
      log_.emit("status", "leading=" + std::to_string(manager_.leading().size()) +
                              " roles=" + std::to_string(manager_.roles().size()));
    } else if ((command == "add" || command == "remove") && !role.empty() && extra.empty()) {
      if (command == "add") {
        add(role);
      } else {
        remove(role);
      }
    } else {
      log_.emit("error",
                "msg=" + quoted("bad command '" + line + "' (commands: add ROLE, remove ROLE, status)"));
    }
  }

  void close() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
  }

 private:
  void add(const std::string& role) {
    try {
      manager_.add(role, role_callbacks(role, log_, work_));
    } catch (const std::exception& e) {
      log_.emit("error", "role=" + role + " msg=" + quoted(e.what()));
      return;
    }
    log_.emit("added", "role=" + role);
  }

  void remove(const std::string& role) {
    // Returns once the role's on_demote has run and its key is released.
    if (manager_.remove(role)) {
      log_.emit("removed", "role=" + role);
    } else {
      log_.emit("error", "role=" + role + " msg=" + quoted("no such role"));
    }
  }

  EventLog& log_;
  Work& work_;
  leader::RoleManager& manager_;
  std::mutex mu_;
  bool closed_ = false;
};

int run(const Options& options, const sigset_t& stop_signals) {
  EventLog log(options.id);
  Work work;

  leader::Config defaults;
  defaults.bucket = options.bucket;
  defaults.instance_id = options.id;
  defaults.ttl = options.ttl;
  defaults.heartbeat_interval = options.heartbeat;
  // Bad configuration (role names included) is reported before connecting.
  for (const std::string& role : options.roles) {
    leader::Config config = defaults;
    config.role = role;
    config.validate();
  }
  if (options.roles.empty()) {
    leader::Config config = defaults;
    config.role = "placeholder";
    config.validate();
  }

  leader::ConnectionOptions connection_options = options.connection;
  connection_options.name = "multi-role " + options.id;
  // A hung server is noticed after about two pings: keep that inside the lease.
  connection_options.ping_interval = std::min(connection_options.ping_interval, options.ttl / 4);
  if (options.io_threads > 0) connection_options.io_threads = options.io_threads;
  auto connection = leader::Connection::connect(connection_options);

  leader::RoleManagerOptions manager_options;
  manager_options.callback_threads = options.callback_threads;
  leader::RoleManager manager(connection, defaults, manager_options);

  // Started before the roles, so a role promoted at once starts working.
  Periodic worker(options.work_interval, [&] { work.tick(manager.leading()); });
  for (const std::string& role : options.roles) manager.add(role, role_callbacks(role, log, work));
  log.emit("started", "roles=" + std::to_string(options.roles.size()));

  std::optional<Periodic> table;
  if (options.table_interval.count() > 0) {
    table.emplace(options.table_interval, [&] { log.write(render_table(manager.status(), work)); });
  }
  Commands commands(log, work, manager);
  std::optional<StdinReader> stdin_reader;
  if (options.control_stdin) {
    stdin_reader.emplace([&commands](const std::string& line) { commands.handle(line); });
  }

  int signal_number = 0;
  while (sigwait(&stop_signals, &signal_number) != 0) {
  }
  // No command may add a role back once the manager has stopped.
  commands.close();
  if (stdin_reader) stdin_reader->stop();
  manager.stop();
  worker.stop();
  if (table) table->stop();
  log.emit("stopped");
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
    std::fprintf(stderr, "multi-role: %s\n\n", e.message.c_str());
    print_usage(stderr);
    return 2;
  }

  try {
    return run(options, stop_signals);
  } catch (const leader::ConfigError& e) {
    std::fprintf(stderr, "multi-role: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "multi-role: %s\n", e.what());
    return 1;
  }
}
