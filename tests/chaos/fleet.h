#pragma once

// The candidates of a chaos scenario: leader_chaos_candidate processes
// (ChildProcess, killed and reaped by PID when the fleet is destroyed), each
// optionally behind a TcpProxy of its own, all appending to one history. The
// fleet follows who leads from that history, and records what the harness
// does (faults, kills, heals, the finish) in it too.

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "child_process.h"
#include "history.h"
#include "leader/fencing.h"
#include "tcp_proxy.h"

namespace leader::chaos {

struct FleetOptions {
  /// Path of leader_chaos_candidate.
  std::string candidate_binary;
  /// Directory for the history, the fence and each candidate's log.
  std::string dir;
  /// Server URL(s) given to candidates that have no proxy.
  std::string url;
  /// When > 0, each candidate connects through a TcpProxy of its own to
  /// 127.0.0.1:<this port> instead of `url`.
  int proxy_upstream_port = 0;
  std::string bucket = "chaos";
  std::string role = "role";
  std::chrono::milliseconds ttl{1000};
  /// "file" or "memory".
  std::string storage = "file";
  int replicas = 1;
  /// More flags for every candidate.
  std::vector<std::string> extra_args;
};

class Fleet {
 public:
  explicit Fleet(FleetOptions options);
  /// SIGKILLs and reaps every candidate still running.
  ~Fleet();
  Fleet(const Fleet&) = delete;
  Fleet& operator=(const Fleet&) = delete;

  /// Starts one more candidate; returns its instance id ("c<n>", never
  /// reused). Throws std::runtime_error when it cannot be spawned.
  std::string spawn();
  /// Starts `count` more; returns their ids.
  std::vector<std::string> spawn(int count);
  /// Waits until every running candidate's start() has returned (its
  /// bucket is open, it campaigns): faults come only after that. False on
  /// timeout, or as soon as one has exited before it got there.
  bool wait_started(std::chrono::milliseconds timeout);

  const FleetOptions& options() const { return options_; }
  const std::string& history_path() const { return history_path_; }
  /// The harness's own writer of the history.
  testing::HistoryWriter& harness() { return harness_; }
  /// Records "fault kind= target=".
  void fault(const std::string& kind, const std::string& target);
  /// Records "heal kind= quorum= expect= bound_ms=" (bound 0: left out, the
  /// checker's default applies).
  void heal(const std::string& kind, bool quorum, bool expect,
            std::chrono::milliseconds bound = std::chrono::milliseconds{0});

  /// Reads what the history gained and records exits nobody asked for.
  void refresh();
  /// Every event so far.
  const std::vector<testing::HistoryEvent>& events();
  /// The candidate that leads now as the history shows it (a term with no
  /// demotion or death whose last recorded deadline is ahead), the one
  /// promoted last if several; nullopt if none.
  std::optional<std::string> leader();
  /// The fencing token of `instance`'s open term; nullopt if none.
  std::optional<FencingToken> term_of(const std::string& instance);
  /// When `instance`'s open term began (CLOCK_MONOTONIC ns); nullopt if none.
  std::optional<std::int64_t> term_start(const std::string& instance);
  /// Waits for a leader whose term began at or after `since_ns` and that is
  /// not `not_this`; nullopt on timeout.
  std::optional<std::string> wait_for_leader(std::chrono::milliseconds timeout, std::int64_t since_ns = 0,
                                             const std::string& not_this = "");
  /// Waits for an event `event` from `source` stamped at or after
  /// `since_ns`, with field `key` equal to `value` when `key` is given.
  std::optional<testing::HistoryEvent> wait_for_event(const std::string& source, const std::string& event,
                                                      std::int64_t since_ns,
                                                      std::chrono::milliseconds timeout,
                                                      const std::string& key = "",
                                                      const std::string& value = "");

  /// SIGKILL, reap, and record "kill" (stamped once reaped).
  void kill(const std::string& instance);
  /// SIGSTOP; returns once the process is stopped.
  void pause(const std::string& instance);
  /// SIGCONT; records "resume instance=".
  void resume(const std::string& instance);
  /// The proxy of `instance` (options().proxy_upstream_port > 0).
  testing::TcpProxy& proxy(const std::string& instance);
  /// The candidates running now, in the order they were spawned.
  std::vector<std::string> running() const;
  pid_t pid_of(const std::string& instance) const;

  /// Ends the run: records "finish", resumes paused candidates and heals
  /// every proxy, SIGTERMs every running candidate and waits up to
  /// `timeout` for them to exit (SIGKILL, recorded as a kill, after that).
  void finish(std::chrono::milliseconds timeout);

 private:
  struct Member {
    std::string id;
    std::unique_ptr<testing::TcpProxy> proxy;
    std::unique_ptr<testing::ChildProcess> process;
    bool paused = false;
    bool stopping = false;
  };
  struct Belief {
    FencingToken token;
    std::int64_t start_ns = 0;
    std::int64_t deadline_ns = 0;
    bool open = false;
  };
  Member& member(const std::string& instance);
  const Member* find(const std::string& instance) const;
  void follow(const testing::HistoryEvent& e);

  FleetOptions options_;
  std::string history_path_;
  std::string fence_path_;
  testing::HistoryWriter harness_;
  testing::HistoryReader reader_;
  std::vector<testing::HistoryEvent> events_;
  std::map<std::string, Belief> beliefs_;
  std::vector<std::unique_ptr<Member>> members_;
  int next_id_ = 1;
};

}  // namespace leader::chaos
