#pragma once

// The election as a deterministic state machine: events in (start, tick, KV
// results, watch events, connection changes, "on_demote returned", stop,
// step-down), actions out (KV calls, watch control, callbacks). No threads,
// no clocks of its own, no I/O: the driver (driver.h) runs the actions and
// feeds the results back; unit tests drive it with natsmock and a fake clock.

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <variant>
#include <vector>

#include "clock.h"
#include "kv.h"
#include "leader/config.h"
#include "leader/types.h"
#include "metrics_sink.h"
#include "record.h"

namespace spdlog {
class logger;
}

namespace leader::detail {

using OpId = std::uint64_t;

enum class OpKind { get, create, update, erase };
const char* to_string(OpKind k) noexcept;

/// Run a KV call on the role's key and report the result with `on_kv_result`.
struct KvCall {
  OpId id = 0;
  OpKind kind = OpKind::get;
  std::string value;                      // create / update
  std::optional<std::uint64_t> expected;  // update / erase: expected revision; create: last marker
  Duration timeout{0};
};

/// Start (true) or stop (false) the watch on the role's key.
struct WatchControl {
  bool start = true;
};

/// Run a user callback (in order, on the callback thread). A demote must be
/// answered with `on_demote_returned` once the callback has returned.
struct Notify {
  enum class Kind { promote, demote, leader_change, error };
  Kind kind = Kind::error;
  std::uint64_t token = 0;                   // promote
  DemoteReason reason = DemoteReason::lost;  // demote
  std::optional<LeaderInfo> leader;          // leader_change
  ErrorInfo error;                           // error
};

/// The election has fully stopped (after `request_stop`).
struct Finished {};

using Action = std::variant<KvCall, WatchControl, Notify, Finished>;

class ElectionCore {
 public:
  /// `config` must be validated and resolved. `seed` drives jitter and
  /// nonces (tests pass a fixed one).
  ElectionCore(Config config, std::uint64_t seed, std::shared_ptr<spdlog::logger> logger);
  ~ElectionCore();

  /// Where metrics go (default: nowhere). Must outlive the core.
  void set_metrics(ElectionMetrics* metrics) noexcept { metrics_ = metrics ? metrics : &null_metrics(); }

  // Events.
  void start(TimePoint now);
  void on_tick(TimePoint now);
  void on_kv_result(OpId id, const KvResult& result, TimePoint now);
  void on_watch(const WatchEvent& event, TimePoint now);
  void on_connection(ConnectionState state, TimePoint now);
  void on_demote_returned(TimePoint now);
  void request_stop(bool release, Duration timeout, TimePoint now);
  void request_step_down(Duration cooldown, TimePoint now);

  // Outputs.
  std::vector<Action> take_actions();
  /// When `on_tick` must be called next; nullopt: no timer pending.
  std::optional<TimePoint> next_wakeup() const;

  // Queries (loop thread only).
  bool running() const noexcept { return running_; }
  /// Term held now (0: none) and its lease deadline.
  std::uint64_t term() const noexcept { return lease_ ? lease_->term : 0; }
  TimePoint lease_deadline() const noexcept { return lease_ ? lease_->deadline : TimePoint{}; }
  ElectionState state() const noexcept { return state_; }
  Status status(TimePoint now) const;
  const Config& config() const noexcept { return cfg_; }

 private:
  struct Lease {
    std::uint64_t term = 0;
    std::uint64_t revision = 0;  // latest revision of ours
    std::string nonce;
    std::string acquired_at;
    TimePoint deadline{};
    TimePoint last_send{};
    TimePoint confirmed_at{};  // when we last learned the key was ours
    TimePoint promoted_at{};
  };
  struct Known {  // newest message of the key we have seen
    std::uint64_t revision = 0;
    EntryOp op = EntryOp::put;
    bool mine = false;
    std::optional<LeaderInfo> holder;
    TimePoint first_seen{};
  };
  struct PendingOp {
    OpKind kind = OpKind::get;
    TimePoint sent{};
    TimePoint deadline{};
    std::string nonce;
    std::uint64_t expected = 0;
    bool timed_out = false;
  };
  struct ReleaseTarget {
    std::string nonce;
    std::uint64_t revision = 0;
  };

  // Sending.
  OpId send(OpKind kind, std::string value, std::optional<std::uint64_t> expected, std::string nonce,
            TimePoint now, TimePoint deadline);
  void send_create(TimePoint now);
  void send_renew(TimePoint now);
  void send_read(TimePoint now);
  void queue_release(const std::string& nonce, std::uint64_t revision, TimePoint now);
  void pump_release(TimePoint now);

  // Results.
  void on_create_result(const PendingOp& op, const KvResult& r, TimePoint now);
  void on_renew_result(const PendingOp& op, const KvResult& r, TimePoint now);
  void on_read_result(const PendingOp& op, const KvResult& r, TimePoint now);
  void on_erase_result(const PendingOp& op, const KvResult& r, TimePoint now);
  void on_op_timeout(OpId id, PendingOp& op, TimePoint now);

  // Knowledge.
  void observe(const KvEntry& entry, TimePoint now, std::optional<TimePoint> read_sent);
  void observe_absent(TimePoint now, TimePoint read_sent);
  void follow(const KvEntry& entry, const std::optional<Record>& record, TimePoint now);
  void no_leader(TimePoint now);
  void report_leader(const std::optional<LeaderInfo>& leader);

  // Transitions.
  void become_leader(std::uint64_t revision, const std::string& nonce, TimePoint sent, TimePoint now);
  void demote(DemoteReason reason, bool release, TimePoint now);
  void after_release(TimePoint now);
  void maybe_finish(TimePoint now);
  void finish();
  void campaign_now(TimePoint now, bool jitter);
  void set_state(ElectionState s);

  // Helpers.
  bool can_campaign(TimePoint now) const;
  Duration backoff(int failures);
  Duration jitter();
  std::string new_nonce();
  std::string make_record(const std::string& nonce, std::uint64_t term, const std::string& acquired_at) const;
  void error(std::error_code code, std::string message);
  void remember_ended(const std::string& nonce);
  bool is_ended(const std::string& nonce) const;
  std::string who() const;

  Config cfg_;
  std::mt19937_64 rng_;
  std::shared_ptr<spdlog::logger> log_;
  ElectionMetrics* metrics_ = &null_metrics();
  std::vector<Action> actions_;

  bool running_ = false;
  ElectionState state_ = ElectionState::stopped;
  ConnectionState connection_ = ConnectionState::connected;

  // Stop / step-down.
  bool stopping_ = false;
  bool stop_release_ = true;
  TimePoint stop_deadline_{};
  TimePoint cooldown_until_{};

  // Leadership.
  std::optional<Lease> lease_;
  bool demote_pending_ = false;  // on_demote emitted, not yet returned
  std::optional<TimePoint> last_renewal_;
  TimePoint next_renew_at_{};
  int renew_failures_ = 0;

  // Following / campaigning.
  std::optional<Known> known_;
  std::uint64_t newest_rev_ = 0;
  TimePoint newest_rev_at_{};
  std::optional<TimePoint> acquire_at_;
  int acquire_failures_ = 0;
  int expiry_retries_ = 0;
  std::optional<LeaderInfo> reported_leader_;
  std::optional<TimePoint> gone_since_;  // when the last holder was known gone (failover metric)
  bool leader_reported_ = false;

  // In-flight work.
  OpId next_op_ = 1;
  std::map<OpId, PendingOp> ops_;
  std::optional<OpId> create_op_, renew_op_, read_op_, erase_op_;
  std::deque<ReleaseTarget> release_queue_;
  int erase_attempts_ = 0;
  TimePoint erase_retry_at_{};

  // Reconciliation by nonce.
  std::map<std::string, TimePoint> unresolved_creates_;  // nonce -> send time
  std::deque<std::string> ended_nonces_;

  // Watch.
  bool watch_active_ = false;
  std::optional<TimePoint> watch_retry_at_;
  int watch_failures_ = 0;

  ErrorInfo last_error_;
};

}  // namespace leader::detail
