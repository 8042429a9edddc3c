#pragma once

// The history of a chaos run: what every candidate process believed and did,
// and what the harness did to it, one line per event in one file shared by
// all of them (tests/chaos). Jepsen-style: the run records, the checker
// (history_checker.h) judges afterwards.
//
// A line is "<at_ns> <source> <event> key=value ...": `at_ns` is
// CLOCK_MONOTONIC in nanoseconds (the clock of std::chrono::steady_clock, one
// clock for every process on the host), `source` the candidate's instance id
// or "harness". Values are escaped (escape_value) so that they hold no space.
//
// Events of a candidate (every one carries role=):
//   start pid=              campaigning
//   promote token= deadline=   on_promote ran (deadline: Term::deadline(), ns)
//   lease token= deadline=  its lease deadline moved (a renewal)
//   act token= deadline= accepted= highest=
//                           a leader-only act: a fenced write made after
//                           Term::lost() said false; stamped under the
//                           fence's lock, when lost() was checked
//   demote token= reason=   on_demote ran
//   resume                  it was SIGCONTed
//   zombie token= accepted= highest=
//                           after SIGCONT, a fenced write with its last term's
//                           token made without checking first (work that was
//                           in flight); stamped under the fence's lock
//   validate token= valid=  validate_token() of that term, stamped before it
//   leader who= term=       on_leader_change ("none": nobody)
//   error code= msg=        on_error
//   exit code=              it stopped on request and exits
// Events of the harness:
//   fault kind= target=     a fault begins
//   kill instance=          the candidate died (stamped once it was reaped)
//   exit instance= status=  a candidate exited without being asked to
//   heal kind= quorum= expect= [bound_ms=]
//                           a fault is over; with quorum=1 and expect=1 a
//                           leader is owed within the bound from here
//   resume instance=        a paused candidate was SIGCONTed
//   note text=              free text
//   finish                  every candidate was stopped; the run is over

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace leader::testing {

/// CLOCK_MONOTONIC now, in nanoseconds.
std::int64_t monotonic_ns();

/// The fields of an event, in the order they are written.
using HistoryFields = std::vector<std::pair<std::string, std::string>>;

/// `value` with '%', ' ', '=' and control characters written as %XX, so it
/// is one word of a history line; unescape_value() reverses it.
std::string escape_value(std::string_view value);
std::string unescape_value(std::string_view value);

/// One parsed line of a history.
struct HistoryEvent {
  std::int64_t at_ns = 0;
  std::string source;
  std::string event;
  std::map<std::string, std::string> fields;
  /// 1-based line number in its file (0 when not read from a file).
  std::size_t line_no = 0;

  /// The field `key`, unescaped; `fallback` when absent.
  std::string get(const std::string& key, const std::string& fallback = "") const;
  /// The field `key` as an integer; `fallback` when absent or not a number.
  std::int64_t number(const std::string& key, std::int64_t fallback = 0) const;
  /// The line as written (for messages).
  std::string to_line() const;
};

/// Parses one line (without its newline); nullopt when it is not a history
/// line.
std::optional<HistoryEvent> parse_history_line(std::string_view line);

/// Appends events to a history file shared by several processes. Each event
/// is one write(2) of one whole line to an O_APPEND descriptor: lines of
/// concurrent writers never interleave, and a SIGKILL loses no line whose
/// write returned. Thread-safe.
class HistoryWriter {
 public:
  /// Opens (creating) `path` for appending; `source` starts every line.
  /// Throws std::system_error when it cannot.
  HistoryWriter(const std::string& path, std::string source);
  ~HistoryWriter();
  HistoryWriter(const HistoryWriter&) = delete;
  HistoryWriter& operator=(const HistoryWriter&) = delete;

  /// Appends `event` stamped now; returns the stamp.
  std::int64_t append(std::string_view event, const HistoryFields& fields = {});
  /// Appends `event` with the stamp `at_ns` (taken earlier, e.g. under a
  /// lock). False when the write failed.
  bool append_at(std::int64_t at_ns, std::string_view event, const HistoryFields& fields = {});

 private:
  int fd_ = -1;
  std::string source_;
};

/// Reads a history file as it grows. Not thread-safe.
class HistoryReader {
 public:
  explicit HistoryReader(std::string path) : path_(std::move(path)) {}
  /// The complete lines added since the last call, parsed; a line that does
  /// not parse is kept as an event "malformed" with field text=.
  std::vector<HistoryEvent> poll();

 private:
  std::string path_;
  std::size_t offset_ = 0;
  std::size_t line_no_ = 0;
  std::string partial_;
};

/// Every line of the history at `path` (see HistoryReader::poll()).
std::vector<HistoryEvent> read_history(const std::string& path);

}  // namespace leader::testing
