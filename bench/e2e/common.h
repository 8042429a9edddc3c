#pragma once

// What the series of leader-bench-e2e share: clocks, the candidates' line
// protocol, processes read line by line, flags, statistics and result files.

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace leader::testing {
class ChildProcess;
}  // namespace leader::testing

namespace leader::bench {

using Millis = std::chrono::milliseconds;

/// CLOCK_MONOTONIC in ns: the clock of every candidate's stamps.
std::int64_t mono_ns();
/// CLOCK_REALTIME in ns: the clock of examples/multi-role's event lines.
std::int64_t real_ns();
/// Milliseconds between two ns stamps.
inline double ms_between(std::int64_t from_ns, std::int64_t to_ns) {
  return static_cast<double>(to_ns - from_ns) / 1e6;
}

/// Progress for the person running the benchmark, on stderr.
void say(const std::string& text);

/// Thrown for a bad command line (exit status 2).
struct UsageError {
  std::string message;
};

/// `--name value` flags of a subcommand. Every flag read is consumed;
/// `finish()` rejects the ones left over.
class Flags {
 public:
  Flags(int argc, char** argv, int first);
  std::string text(const std::string& name, const std::string& fallback);
  std::optional<std::string> optional_text(const std::string& name);
  long number(const std::string& name, long fallback, long min, long max);
  Millis duration(const std::string& name, Millis fallback);
  std::optional<Millis> optional_duration(const std::string& name);
  void finish() const;

 private:
  std::map<std::string, std::string> values_;
};

/// One line of the candidates' protocol: `<event> <ns> key=value...`. The
/// rest of the line after `msg=` is one value.
struct Line {
  std::string event;
  std::int64_t ns = 0;
  std::map<std::string, std::string> fields;
  std::string text;

  std::string field(const std::string& key) const;
  std::int64_t number(const std::string& key) const;
};
std::optional<Line> parse_line(const std::string& text);

/// A child process whose stdout is read one line at a time; SIGKILLed and
/// reaped when destroyed.
class Process {
 public:
  Process(std::string id, const std::vector<std::string>& argv);
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  const std::string& id() const { return id_; }
  pid_t pid() const;
  bool running() const;
  /// The next raw line within about `timeout` (0: only one already read);
  /// nullopt if none came.
  std::optional<std::string> read_raw(Millis timeout);
  /// The next protocol line within about `timeout` (others are skipped).
  std::optional<Line> read(Millis timeout);
  /// Writes `command` and a newline to the child's stdin.
  bool send(const std::string& command);
  void signal(int sig);
  /// SIGKILL and reap.
  void kill();
  /// Waits up to `timeout` for the child to exit by itself.
  bool wait_exit(Millis timeout);

 private:
  std::string id_;
  std::unique_ptr<testing::ChildProcess> child_;
};

/// Reads the lines of several processes as they come.
class Fleet {
 public:
  using Handler = std::function<bool(Process& from, const Line& line)>;

  Process& add(std::unique_ptr<Process> process);
  /// Destroys (SIGKILLs) the process `id`.
  void remove(const std::string& id);
  Process* find(const std::string& id);
  std::vector<Process*> all();
  /// Hands every line from any process to `handler` until it returns true
  /// (then true) or `timeout` passes (then false).
  bool pump(const Handler& handler, Millis timeout);
  /// Reads and hands on lines for `duration`.
  void pump_for(const Handler& handler, Millis duration);

 private:
  std::vector<std::unique_ptr<Process>> processes_;
};

/// p50 / p90 / p99 (nearest rank), min, mean and max of samples.
struct Summary {
  std::size_t n = 0;
  double min = 0, mean = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;
};
Summary summarize(std::vector<double> samples);
nlohmann::json to_json(const Summary& summary);

/// The raw samples of one series, one row per run, written as CSV.
class Table {
 public:
  explicit Table(std::vector<std::string> columns) : columns_(std::move(columns)) {}
  void add(std::vector<double> row) { rows_.push_back(std::move(row)); }
  std::vector<double> column(const std::string& name) const;
  std::size_t size() const { return rows_.size(); }
  void write_csv(const std::string& path) const;

 private:
  std::vector<std::string> columns_;
  std::vector<std::vector<double>> rows_;
};

/// Writes `value` to `path` (pretty-printed).
void write_json(const std::string& path, const nlohmann::json& value);
nlohmann::json read_json(const std::string& path);

/// A random duration in [min, max].
Millis random_between(std::mt19937_64& rng, Millis min, Millis max);

/// `text` formatted as "1s", "500ms" (the candidates' duration flags).
std::string duration_flag(Millis d);

}  // namespace leader::bench
